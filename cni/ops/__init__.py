"""Operator commands: list, explain, reconcile, doctor, over the joined view of journals and berth's table."""
