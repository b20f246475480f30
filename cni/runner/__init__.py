"""The cnitool-compatible runner: add, check, del, gc, status of a network list, as libcni runs them."""
