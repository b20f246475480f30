"""The PyInstaller bundle as a runtime would meet it: exec'd through its links,
with an empty environment, from /, with no Python anywhere on PATH.

Runs when BERTH_BIN_DIR is set or dist/berth/berth exists (`make bundle`);
`make test-bundle` builds it and runs these.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import harness

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
PLUGINS = ("berth-bridge", "berth-host-local", "berth-portmap")
DIST = harness.ROOT / "dist" / "berth"
# what a bundle may take from the host: glibc's objects and the bootloader's zlib
HOST_LIBRARIES = {"libc", "libm", "libz", "ld-linux-x86-64", "ld-linux-aarch64", "libpthread", "libdl", "librt",
                  "libgcc_s"}


def bundle_dir() -> Path | None:
    given = os.environ.get("BERTH_BIN_DIR")
    if given:
        return Path(given).resolve()
    return DIST if (DIST / "berth").exists() else None


def stale(bundle: Path) -> bool:
    """dist/berth older than the code it was built from (a forgotten `make bundle`)."""
    built = (bundle / "berth").stat().st_mtime
    sources: list[Path] = []
    for package in ("cni", "ipam", "portmap", "packaging"):
        sources += (harness.ROOT / package).rglob("*.py")
    return any(p.stat().st_mtime > built for p in sources if p.exists())


BUNDLE = bundle_dir()
pytestmark = [
    pytest.mark.skipif(BUNDLE is None, reason="no bundle: run 'make bundle' or set BERTH_BIN_DIR"),
    pytest.mark.skipif(not os.environ.get("BERTH_BIN_DIR") and BUNDLE is not None and stale(BUNDLE),
                       reason="dist/berth is older than the sources: run 'make bundle' (or make test-bundle)"),
]


def is_frozen() -> bool:
    assert BUNDLE is not None
    return (Path(os.path.realpath(BUNDLE / "berth")).parent / "_internal").is_dir()


def bare(exe: Path | str, *argv: str, env: dict[str, str] | None = None,
         stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Exec with exactly `env` (env -i style), from /."""
    return subprocess.run([str(exe), *argv], input=stdin, env=env or {}, cwd="/", capture_output=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_version_through_each_link_with_empty_env(plugin: str) -> None:
    assert BUNDLE is not None
    proc = bare(BUNDLE / plugin, env={"CNI_COMMAND": "VERSION"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"cniVersion": "1.1.0", "supportedVersions": VERSIONS}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_about_text(plugin: str) -> None:
    assert BUNDLE is not None
    proc = bare(BUNDLE / plugin)
    assert proc.returncode == 0 and proc.stdout == b""
    text = proc.stderr.decode()
    assert f"CNI {plugin} plugin (berth " in text and ", ".join(VERSIONS) in text


def test_drop_in_alias_names_dispatch(tmp_path: Path) -> None:
    assert BUNDLE is not None
    aliases = (("bridge", "berth-bridge"), ("host-local", "berth-host-local"), ("portmap", "berth-portmap"))
    for alias, canonical in aliases:
        (tmp_path / alias).symlink_to(os.path.realpath(BUNDLE / "berth"))
        proc = bare(tmp_path / alias)
        assert proc.returncode == 0 and f"CNI {canonical} plugin" in proc.stderr.decode()
        version = bare(tmp_path / alias, env={"CNI_COMMAND": "VERSION"})
        assert json.loads(version.stdout)["supportedVersions"] == VERSIONS


@pytest.mark.parametrize("env,stdin,code", [
    ({"CNI_COMMAND": "BOGUS"}, b"{}", 4),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
      "CNI_PATH": "/nonexistent"}, b"{not json", 6),
    ({"CNI_COMMAND": "ADD"}, b"{}", 4),  # required variables missing
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"},
     json.dumps({"cniVersion": "9.9.9", "name": "n", "type": "berth-bridge"}).encode(), 1),
])
def test_bad_calls_answer_cni_error_json(env: dict[str, str], stdin: bytes, code: int) -> None:
    assert BUNDLE is not None
    proc = bare(BUNDLE / "berth-bridge", env=env, stdin=stdin)
    assert proc.returncode != 0
    answer = json.loads(proc.stdout)
    assert answer["code"] == code and answer["msg"] and answer["cniVersion"] in VERSIONS


def test_berth_cli_help_and_version() -> None:
    assert BUNDLE is not None
    top = bare(BUNDLE / "berth", "--help")
    assert top.returncode == 0 and b"add" in top.stdout and b"status" in top.stdout
    sub = bare(BUNDLE / "berth", "add", "--help")
    assert sub.returncode == 0 and b"NETCONFPATH" in sub.stdout
    assert bare(BUNDLE / "berth", "--version").stdout.startswith(b"berth ")
    plugin = bare(BUNDLE / "berth", "plugin", "berth-portmap", env={"CNI_COMMAND": "VERSION"})
    assert json.loads(plugin.stdout)["supportedVersions"] == VERSIONS


def test_arguments_and_python_variables_never_reach_the_interpreter() -> None:
    """Python's own options and PYTHON* variables do nothing to a bundle: the launcher puts
    every argument after the entry module, and the interpreter runs isolated."""
    assert BUNDLE is not None
    env = {"CNI_COMMAND": "VERSION", "PYTHONPATH": "/nonexistent", "PYTHONINSPECT": "1", "PYTHONSTARTUP": "/x",
           "PYTHONHOME": "/nonexistent", "PYTHONVERBOSE": "1"}
    proc = bare(BUNDLE / "berth-bridge", "-S", "-c", "print('python ran this')", env=env, stdin=b"print('and this')")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == VERSIONS and proc.stderr == b""
    top = bare(BUNDLE / "berth", "-c", "print(1)", env=env)
    assert top.returncode == 2 and b"python ran" not in top.stdout + top.stderr


def test_a_broken_bundle_still_answers_in_cni_format(tmp_path: Path) -> None:
    """Without its interpreter the launcher answers with a CNI error, on stdout."""
    if not is_frozen():
        pytest.skip("BERTH_BIN_DIR is not a bundle")
    assert BUNDLE is not None
    copy = tmp_path / "b"
    subprocess.run(["cp", "-a", str(Path(os.path.realpath(BUNDLE / "berth")).parent), str(copy)], check=True)
    interpreters = list((copy / "_internal" / "bin").glob("python3*[0-9]"))
    if not interpreters:
        pytest.skip("the bundle runs on PyInstaller's bootloader (BERTH_LAUNCHER=0)")
    for path in interpreters:
        path.unlink()
    proc = bare(copy / "berth-bridge", env={"CNI_COMMAND": "ADD"})
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == 999 and "interpreter" in err["msg"] and "No such file" in err["details"], err


def test_bundle_carries_libnftables_and_pyroute2() -> None:
    """The binding loads the bundled libnftables (and its dependencies), not the host's."""
    if not is_frozen():
        pytest.skip("BERTH_BIN_DIR is not a PyInstaller bundle")
    assert BUNDLE is not None
    proc = bare(BUNDLE / "berth", "doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(proc.stdout)
    internal = str(Path(os.path.realpath(BUNDLE / "berth")).parent / "_internal")
    assert info["executable"] == str(BUNDLE / "berth")
    if (Path(internal) / "bin").is_dir():  # the launcher's layout; else PyInstaller's bootloader is the interpreter
        assert info["interpreter"].startswith(internal + "/bin/")
    else:
        assert info["interpreter"] == info["executable"]
    assert info["frozen"] and info["pyroute2"]["ok"] and info["pyroute2"]["version"] == "0.9.7"
    libraries = info["nftables"]["libraries"]
    names = {os.path.basename(p).split(".so")[0] for p in libraries}
    assert {"libnftables", "libnftnl", "libmnl", "libjansson"} <= names
    assert all(p.startswith(internal + "/") for p in libraries), libraries
    # and so is every other shared library, the host's C library (and the zlib the
    # bootloader itself links) aside: the bundle's own find each other without
    # LD_LIBRARY_PATH (RUNPATH=$ORIGIN; the bootloader no longer restarts to set it)
    host = [p for p in info["shared_libraries"] if not p.startswith(internal + "/")]
    assert {os.path.basename(p).split(".so")[0] for p in host} <= HOST_LIBRARIES, host


def test_plugin_runs_inside_a_namespace(node: harness.Node) -> None:
    res = node.plugin("berth-host-local", "VERSION", "{}")
    assert res.ok()["supportedVersions"] == VERSIONS


def test_make_install_into_destdir(tmp_path: Path) -> None:
    if BUNDLE != DIST:
        pytest.skip("make install installs dist/berth; BERTH_BIN_DIR points elsewhere")
    make = ["make", "-s", "-C", str(harness.ROOT), "install", f"DESTDIR={tmp_path}", "PREFIX=/opt/cni/bin"]
    harness.run([*make, "ALIASES=1"])
    harness.run([*make, "ALIASES=1"])  # an upgrade: switch to the new copy, keep the previous one
    harness.run(make)
    bindir = tmp_path / "opt" / "cni" / "bin"
    copies = sorted(p.name for p in bindir.glob(".berth-*"))
    assert len(copies) == 2 and os.readlink(bindir / ".berth") == copies[-1]
    for name in ("berth", *PLUGINS, "bridge", "host-local", "portmap"):
        assert os.readlink(bindir / name) == ".berth/berth"
    for name in ("berth-bridge", "host-local"):
        proc = bare(bindir / name, env={"CNI_COMMAND": "VERSION"})
        assert json.loads(proc.stdout)["supportedVersions"] == VERSIONS, name
