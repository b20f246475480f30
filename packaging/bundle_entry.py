"""PyInstaller entry script: the multi-call `berth` executable (see cni/main.py).

Kept tiny on purpose: everything else is imported lazily by cni.main, so a
VERSION call in the bundle costs little more than the interpreter start, and a
call answered by the node agent ends without the interpreter's finalization.
"""

import sys

from cni.main import main

sys.exit(main(fast_exit=True))
