"""The `berth` operator CLI: cnitool-compatible verbs plus list/explain/reconcile."""
