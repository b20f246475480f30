"""The bundle's entry module under its own interpreter (packaging/launcher.c execs it).

argv: [this file, the launcher's resolved path, the name it was run as, args...].
The launcher is what the bundle is to everyone else: sys.executable names it
(berth compares delegated plugins' paths with it), and sys.frozen /
sys._MEIPASS say "a bundle, with its files here", as PyInstaller's runtime does.
"""

import sys

sys.frozen = True  # type: ignore[attr-defined]
sys._MEIPASS = __file__.rpartition("/")[0]  # type: ignore[attr-defined]
sys.executable = sys.argv[1]
sys.argv = sys.argv[2:]

from cni.main import main  # noqa: E402  (sys.argv must be the caller's first)

sys.exit(main(fast_exit=True))
