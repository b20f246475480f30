"""Build PyInstaller's Linux bootloader without its onedir restart (used by berth.spec).

PyInstaller's onedir bootloader re-execs itself on Linux so that its second
life starts with _internal/ on LD_LIBRARY_PATH. That second exec (dynamic
loader, relocations, a second bootloader start) costs ~1.7 ms here, on every
plugin exec, twice per pod (bridge, portmap). This builds the same bootloader
from the same PyInstaller release's sources with the onedir case taking the
branch PyInstaller already uses on macOS and Windows (no restart); berth.spec
then gives every bundled library RUNPATH=$ORIGIN, so they find each other
without LD_LIBRARY_PATH.

    python packaging/bootloader.py OUT_DIR     -> OUT_DIR/run (prints its path)

Needs a C compiler, zlib headers and network access to PyPI for the sdist
(`make deps` installs gcc, libc6-dev, zlib1g-dev). The source is checked for
the exact line it changes; a PyInstaller release that moved it fails here
loudly instead of building something else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

DEFINE = "PYI_ONEDIR_NO_RESTART"
# pyi_main.c, where the entry-point process of a onedir build picks its process level
ONEDIR_BRANCH = "                /* Onedir mode */\n#if defined(_WIN32) || defined(__APPLE__) || defined(__CYGWIN__)\n"
PATCHED_BRANCH = ONEDIR_BRANCH.rstrip("\n") + f" || defined({DEFINE})\n"


def pyinstaller_version() -> str:
    import PyInstaller

    return str(PyInstaller.__version__)


def fetch_sdist(version: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    wanted = into / f"pyinstaller-{version}.tar.gz"
    if not wanted.exists():
        # --no-binary for pyinstaller alone: its build requirements may come as wheels
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "pyinstaller",
                        f"pyinstaller=={version}", "-d", str(into)], check=True)
    return wanted


def unpack(sdist: Path, into: Path) -> Path:
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]  # no links, devices
        for member in members:
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise SystemExit(f"{sdist}: unsafe path {member.name!r}")
        tar.extractall(into, members=members)
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top


def patch(source: Path) -> None:
    main_c = source / "bootloader" / "src" / "pyi_main.c"
    text = main_c.read_text()
    if text.count(ONEDIR_BRANCH) != 1:
        raise SystemExit(f"{main_c}: the onedir restart branch is not where berth expects it; "
                         "check packaging/bootloader.py against this PyInstaller release")
    main_c.write_text(text.replace(ONEDIR_BRANCH, PATCHED_BRANCH))


def build(source: Path) -> Path:
    bootloader = source / "bootloader"
    env = {**os.environ, "CFLAGS": f"{os.environ.get('CFLAGS', '')} -D{DEFINE}".strip()}
    subprocess.run([sys.executable, "./waf", "configure", "build_release"], cwd=bootloader, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    built = bootloader / "build" / "release" / "run"
    if not built.is_file():
        raise SystemExit(f"waf finished but {built} is missing")
    return built


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve()
    version = pyinstaller_version()
    target = out / version / "run"
    if not target.is_file():
        source = unpack(fetch_sdist(version, out / "sdist"), out / "src")
        patch(source)
        built = build(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        shutil.rmtree(out / "src", ignore_errors=True)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
