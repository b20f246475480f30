"""Kernel matrix: boot Debian's own kernels under qemu and run berth's namespace tests inside (make test-kernels)."""
