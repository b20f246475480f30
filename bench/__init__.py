"""`make bench`: berth against the reference Go plugins, side by side, in one run.

Run as `python -m bench` from the repository root (root needed: it builds its
own network namespaces, named `bb-<run>-...`, and removes them at the end).
"""
