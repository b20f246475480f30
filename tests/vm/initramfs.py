"""Build the VM's whole root filesystem as one initramfs (newc cpio, uncompressed).

The guest runs berth's namespace tests exactly as the host does, so it gets
the host's own userland for them, copied at the same paths: Debian's python3
and its standard library, the project's venv (test tools only), iproute2,
nftables, conntrack, iptables-nft, the reference plugins in /usr/lib/cni,
this checkout with its bundle (dist/berth), and every shared library those
need (ldd closure). busybox provides the init, modprobe and the small tools;
the kernel's own modules (net, netfilter, crypto, drivers/net) are copied
uncompressed with a depmod index so the kernel can autoload them.
Everything lives in RAM: no disk, no host share, no network device.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

# the host tools the tests call, and what they need at run time
BINARIES = (
    "/usr/bin/python3.11", "/usr/sbin/ip", "/usr/sbin/bridge", "/usr/sbin/tc", "/usr/sbin/nft",
    "/usr/sbin/conntrack", "/usr/sbin/xtables-nft-multi", "/usr/bin/setpriv", "/usr/bin/curl",
    "/usr/bin/ss",
)
LINKS = {  # name -> target, as Debian has them
    "/usr/bin/python3": "python3.11",
    "/usr/sbin/iptables": "xtables-nft-multi", "/usr/sbin/ip6tables": "xtables-nft-multi",
    "/usr/sbin/iptables-nft": "xtables-nft-multi", "/usr/sbin/ip6tables-nft": "xtables-nft-multi",
    "/usr/sbin/iptables-save": "xtables-nft-multi", "/usr/sbin/iptables-nft-save": "xtables-nft-multi",
    "/usr/sbin/ip6tables-save": "xtables-nft-multi",
}
# xtables: iptables' match and target extensions (`-m comment`), which the reference plugins' rules use
TREES = ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages/nftables", "/usr/lib/cni",
         "/etc/python3.11", "/usr/share/iproute2", "/etc/iproute2", "/usr/lib/x86_64-linux-gnu/xtables")
# stdlib parts no test imports (large, or GUI)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "config-3.11-x86_64-linux-gnu"}
# venv packages for building and linting, never imported by a test
VENV_SKIP_PREFIXES = ("mypy", "mypyc", "pip", "PyInstaller", "pyinstaller", "_pyinstaller", "setuptools",
                      "ruff", "altgraph", "librt", "ast_serialize", "pathspec",
                      "6ec57f84c680d3a3778b__mypyc")
ETC_FILES = ("/etc/protocols", "/etc/services", "/etc/nsswitch.conf", "/etc/ethertypes")
MODULE_DIRS = ("kernel/net", "kernel/lib", "kernel/crypto", "kernel/drivers/net", "kernel/arch")
# loaded at boot: what the tests need before the first autoload could happen
BOOT_MODULES = ("veth", "bridge", "dummy", "ifb", "nf_tables", "nf_conntrack", "nf_nat", "nft_chain_nat",
                "nft_nat", "nft_masq", "nft_ct", "nft_fib_inet", "nft_fib_ipv4", "nft_fib_ipv6",
                "nf_conntrack_netlink", "nft_compat", "sch_tbf", "sch_ingress", "cls_u32", "act_mirred",
                "inet_diag", "tcp_diag", "udp_diag")


class Builder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.copied: set[str] = set()

    def dest(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def copy_file(self, src: str, dst: str | None = None) -> None:
        dst = _merged_usr(dst or src)
        if dst in self.copied:
            return
        self.copied.add(dst)
        out = self.dest(dst)
        if out.exists() or out.is_symlink():
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(src) and dst == src:
            target = os.readlink(src)
            out.symlink_to(target)
            resolved = os.path.join(os.path.dirname(src), target) if not target.startswith("/") else target
            self.copy_file(os.path.normpath(resolved))
            return
        shutil.copy2(src, out, follow_symlinks=True)
        if _is_elf(src):
            for lib in _needed(src):
                self.copy_file(lib)

    def copy_tree(self, src: str, skip: set[str] | None = None, skip_prefixes: tuple[str, ...] = ()) -> None:
        if not os.path.exists(src):
            return
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in (skip or set()) and not d.startswith(skip_prefixes)]
                filenames = [f for f in filenames if not f.startswith(skip_prefixes)]
            for name in filenames:
                self.copy_file(os.path.join(dirpath, name))
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    self.copy_file(full)
            self.dest(dirpath).mkdir(parents=True, exist_ok=True)

    def link(self, path: str, target: str) -> None:
        out = self.dest(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists() and not out.is_symlink():
            out.symlink_to(target)


def _merged_usr(path: str) -> str:
    """/lib/x and /usr/lib/x are one file on Debian 12 (and in the guest)."""
    for top in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if path.startswith(top):
            return "/usr" + path
    return path


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _needed(path: str) -> list[str]:
    proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    libs = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            i = parts.index("=>")
            if i + 1 < len(parts) and parts[i + 1].startswith("/"):
                libs.append(parts[i + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the dynamic loader
    return libs


def _modules(b: Builder, unpacked: Path, release: str) -> None:
    src = unpacked / "lib" / "modules" / release
    dst = b.dest(f"/usr/lib/modules/{release}")
    for sub in MODULE_DIRS:
        for path in (src / sub).rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(src)
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".xz":
                out.with_suffix("").write_bytes(lzma.decompress(path.read_bytes()))
            elif path.suffix == ".zst":
                subprocess.run(["zstd", "-q", "-d", "-o", str(out.with_suffix("")), str(path)], check=True)
            else:
                shutil.copy2(path, out)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / name).exists():
            text = (src / name).read_bytes()
            if name == "modules.order":
                text = text.replace(b".ko.xz", b".ko").replace(b".ko.zst", b".ko")
            (dst / name).write_bytes(text)
    subprocess.run(["depmod", "-b", str(b.root / "usr"), release], check=True)


def _busybox(b: Builder) -> None:
    b.copy_file("/usr/bin/busybox", "/usr/local/bbin/busybox")
    applets = subprocess.run(["/usr/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        for d in ("/usr/bin", "/usr/sbin"):
            if b.dest(f"{d}/{applet}").exists() or b.dest(f"{d}/{applet}").is_symlink():
                break
        else:
            b.link(f"/usr/bin/{applet}", "/usr/local/bbin/busybox")
    # the kernel's module helper path
    b.link("/usr/sbin/modprobe", "/usr/local/bbin/busybox")


def _checkout(b: Builder, repo: Path) -> None:
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=False)
    if listed.returncode == 0:
        for rel in listed.stdout.decode().split("\0"):
            full = repo / rel
            if rel and full.is_file():
                b.copy_file(str(full))
        # compiled modules the host already has: under emulation compiling is slow
        for cached in repo.glob("**/__pycache__/*.pyc"):
            if ".venv" not in cached.parts and "build" not in cached.parts:
                b.copy_file(str(cached))
    else:
        b.copy_tree(str(repo), skip={".git", "build", "dist", ".venv", ".mypy_cache", ".ruff_cache"})
    bundle = repo / "dist" / "berth"
    if bundle.is_dir():
        b.copy_tree(str(bundle))
    venv = repo / ".venv"
    for name in ("pyvenv.cfg",):
        b.copy_file(str(venv / name))
    for name in ("python", "python3", "python3.11", "berth"):
        if (venv / "bin" / name).exists() or (venv / "bin" / name).is_symlink():
            b.copy_file(str(venv / "bin" / name))
    site = venv / "lib" / "python3.11" / "site-packages"
    b.copy_tree(str(site), skip_prefixes=VENV_SKIP_PREFIXES)
    lib64 = venv / "lib64"
    if lib64.is_symlink():
        b.copy_file(str(lib64))


def build(root: Path, out: Path, unpacked: Path, release: str, repo: Path, init_script: Path,
          args: list[str], script: Path | None = None, env: dict[str, str] | None = None) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # Debian's merged /usr
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    for d in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "var/lib", "var/run", "etc", "root", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    b = Builder(root)
    for path in BINARIES:
        if os.path.exists(path):
            b.copy_file(path)
    for path, target in LINKS.items():
        b.link(path, target)
    for tree in TREES:
        b.copy_tree(tree, skip=STDLIB_SKIP if tree.endswith("python3.11") else None)
    # what python loads by name at run time (ctypes: libc, libnftables)
    for lib in ("/usr/lib/x86_64-linux-gnu/libnftables.so.1",):
        if os.path.exists(lib):
            b.copy_file(lib)
    for so in b.dest("/usr/lib/python3.11/lib-dynload").glob("*.so"):
        for lib in _needed("/usr/lib/python3.11/lib-dynload/" + so.name):
            b.copy_file(lib)
    for path in ETC_FILES:
        if os.path.exists(path):
            b.copy_file(path)
    _busybox(b)
    _checkout(b, repo)
    _modules(b, unpacked, release)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    (root / "etc/hostname").write_text("berth-vm\n")
    (root / "etc/modules-boot").write_text("\n".join(BOOT_MODULES) + "\n")
    (root / "etc/berth-vm-args").write_text("".join(a + "\n" for a in args))
    exports = {"BERTH_VM_REPO": str(repo), **(env or {})}
    (root / "etc/berth-vm-env").write_text("".join(f"export {k}={_quote(v)}\n" for k, v in exports.items()))
    if script is not None:
        shutil.copy2(script, root / "etc/berth-vm-script")
    init = root / "init"
    shutil.copy2(init_script, init)
    init.chmod(init.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (root / "var/run").rmdir()
    (root / "var/run").symlink_to("../run")
    return _pack(root, out)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _pack(root: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True).stdout
    with open(tmp, "wb") as f:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root, input=names, stdout=f,
                       check=True)
    tmp.rename(out)
    return out
