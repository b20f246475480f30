"""Bundle start-up: PyInstaller's ctypes hooks, installed when ctypes is first imported.

berth.spec puts this module in the bundle under PyInstaller's own name
`pyimod03_ctypes` (its bootstrap calls `pyimod03_ctypes.install()` on every
exec) and PyInstaller's original under `pyimod03_ctypes_eager`. The original
imports ctypes at once (with _ctypes, libffi, struct, types: ~2 ms per exec
here), although only the agent and the standalone ADD/DEL paths load a library
through ctypes (libnftables). This defers the same hooks (ctypes.CDLL & co.
look in sys._MEIPASS first) to the first `import ctypes`: behaviour unchanged.
"""

import sys


class _CtypesLoader:
    """Runs the real loader, then PyInstaller's hooks, before anyone sees ctypes."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        import pyimod03_ctypes_eager  # PyInstaller's original, in the bundle's PKG

        pyimod03_ctypes_eager.install()  # imports ctypes: already in sys.modules


class _CtypesFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "ctypes":
            return None
        sys.meta_path.remove(self)  # once is enough, and never twice
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _CtypesLoader(spec.loader)
                return spec
        return None


def install():
    if "ctypes" in sys.modules:  # someone imported it first: hook it now
        import pyimod03_ctypes_eager

        pyimod03_ctypes_eager.install()
        return
    sys.meta_path.insert(0, _CtypesFinder())
