"""PyInstaller entry script: the multi-call `berth` executable (see cni/main.py).

Kept tiny on purpose: everything else is imported lazily by cni.main, so a
VERSION call in the bundle costs little more than the interpreter start.
"""

import sys

from cni.main import main

sys.exit(main())
