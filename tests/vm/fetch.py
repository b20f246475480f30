"""Download a Debian kernel image package with apt and unpack it (never install it).

apt runs against a private configuration under the cache directory (its own
sources, lists and archives), so the host's apt setup is neither used nor
changed; signatures are checked against Debian's archive keyring as usual.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.vm.matrix import Kernel

MIRROR = "http://deb.debian.org"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _apt_root(cache: Path, suites: tuple[str, ...]) -> Path:
    root = (cache / ("apt-" + suites[0])).resolve()
    for sub in ("lists/partial", "archives/partial", "etc/preferences.d", "etc/sources.list.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for suite in suites:
        base = f"{MIRROR}/debian-security" if suite.endswith("-security") else f"{MIRROR}/debian"
        lines.append(f"deb [arch=amd64 signed-by={KEYRING}] {base} {suite} main")
    (root / "sources.list").write_text("\n".join(lines) + "\n")
    return root


def _apt(root: Path, *args: str, cwd: Path | None = None) -> str:
    opts = [
        f"-oDir::Etc::SourceList={root / 'sources.list'}", f"-oDir::Etc::SourceParts={root / 'etc/sources.list.d'}",
        f"-oDir::Etc::Preferences={root / 'etc/preferences'}",
        f"-oDir::Etc::PreferencesParts={root / 'etc/preferences.d'}",
        f"-oDir::State::Lists={root / 'lists'}", f"-oDir::Cache={root}", f"-oDir::Cache::Archives={root / 'archives'}",
        "-oAPT::Sandbox::User=root", "-oAcquire::Retries=3", "-oAPT::Architecture=amd64",
        "-oDebug::NoLocking=1", "-qq",
    ]
    tool = "apt-cache" if args[0] in ("pkgnames", "policy", "show") else "apt-get"
    proc = subprocess.run([tool, *opts, *args], capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _version_key(name: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", name)]


def resolve(kernel: Kernel, cache: Path, update: bool = True) -> tuple[Path, str]:
    """The apt root and the package to use: the pinned one, or the newest of its series."""
    root = _apt_root(cache, kernel.suites)
    if update or not any((root / "lists").glob("*Packages*")):
        _apt(root, "update")
    names = _apt(root, "pkgnames", kernel.series).split()
    flavour = re.compile(re.escape(kernel.series) + r".*-cloud-amd64-unsigned$")
    candidates = sorted((n for n in names if flavour.match(n)), key=_version_key)
    if kernel.package in candidates:
        return root, kernel.package
    if not candidates:
        raise RuntimeError(f"no {kernel.series}*-cloud-amd64-unsigned package in {', '.join(kernel.suites)}")
    return root, candidates[-1]


def fetch(kernel: Kernel, cache: Path) -> Path:
    """Unpack the kernel's package under cache/<package>/ and return that directory
    (boot/vmlinuz-*, lib/modules/<release>/). Reused when already unpacked."""
    cache.mkdir(parents=True, exist_ok=True)
    for update in (False, True):
        root, package = resolve(kernel, cache, update=update)
        out = cache / package
        if (out / ".unpacked").exists():
            return out
        try:
            debs = _download(root, package)
            break
        except RuntimeError:
            if update:
                raise
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    subprocess.run(["dpkg-deb", "-x", str(debs), str(tmp)], check=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".unpacked").write_text(package + "\n")
    return out


def _download(root: Path, package: str) -> Path:
    dest = root / "archives"
    existing = sorted(dest.glob(package.replace("+", "?") + "_*.deb"))
    if existing:
        return existing[-1]
    _apt(root, "download", package, cwd=dest)
    found = sorted(dest.glob(package.replace("+", "?") + "_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no .deb in {dest}")
    return found[-1]


def release_of(unpacked: Path) -> str:
    """The kernel release (uname -r) of an unpacked package."""
    releases = [p.name for p in (unpacked / "lib" / "modules").iterdir() if p.is_dir()]
    if len(releases) != 1:
        raise RuntimeError(f"expected one module tree in {unpacked}, found {releases}")
    return releases[0]
