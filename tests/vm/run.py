"""Boot kernels of the matrix under qemu and run berth's namespace tests inside.

    python -m tests.vm.run [--kernels 6.1,6.12] [--subset ci|full] [--script FILE] [-- PYTEST-ARGS]

Each kernel gets a root filesystem built from this checkout (tests/vm/initramfs.py),
boots with no network device (the tests' traffic stays between the guest's own
namespaces), runs the selection, and powers off; the report is one line per
kernel, the guest's whole console is in build/vm/<kernel>.log. Nothing is
created on the host but files under build/.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.vm import fetch, initramfs, matrix

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
INIT = Path(__file__).resolve().parent / "init.sh"

# What CI boots on every submission (the matrix's Debian 12 kernel): the feature
# probes and ADD/DEL churn of every map kind, bridge egress and dual-stack, ipMasq,
# published ports by traffic (outside, localhost, hairpin, ranges, IPv6, the
# 127/8 guard), isolation both ways, DEL cleanup, a kill in the middle of
# each plugin's nft step, the [::1] proxy and the host-listener check (sock_diag).
# Plain emulation runs Python some 20x slower than the host, so this is a few
# minutes; `make test-kernels` runs everything.
CI_SUBSET = (
    "tests/netns/test_kernel_features.py",
    "tests/netns/test_bridge.py::test_masquerade_outside_sees_node_address",
    "tests/netns/test_ipmasq.py::test_one_rule_per_subnet_one_element_per_attachment",
    "tests/netns/test_portmap.py::test_tcp_udp_outside_localhost_hairpin",
    "tests/netns/test_portmap.py::test_ipv6_and_port_range",
    "tests/netns/test_portmap.py::test_localnet_guard_cve_2020_8558",
    "tests/netns/test_isolation.py::test_strict_network_refuses_open_and_isolated_ones",
    "tests/netns/test_bridge_lifecycle.py::test_del_with_empty_netns_and_twice",
    "tests/netns/test_rel_crash.py::test_kill_after_step_then_del_gc_leave_nothing[masq]",
    "tests/netns/test_rel_crash.py::test_kill_after_step_then_del_gc_leave_nothing[portmap-nft]",
    "tests/netns/test_proxy.py::test_curl_on_loopback_v6_reaches_the_container_then_del_leaves_nothing",
    "tests/netns/test_host_listeners.py::test_addresses_match_as_the_kernel_delivers",
)
# ADD/DEL loops of the churn test (tests/netns/test_kernel_features.py) per subset
CHURN_LOOPS = {"ci": 10, "kernel": 100, "full": 100}
# `make test-kernels`: every test that exercises the kernel's networking and
# nftables, leaving out what does not depend on the kernel (input validation,
# locks, the agent, the runner, the bundle) and the load tests (storms, scale,
# a hundred networks), which emulation would stretch to hours.
KERNEL_SUBSET = (
    "tests/netns/test_kernel_features.py",
    "tests/netns/test_bridge.py",
    "tests/netns/test_bridge_lifecycle.py",
    "tests/netns/test_ipmasq.py",
    "tests/netns/test_portmap.py",
    "tests/netns/test_portmap_upgrade.py",
    "tests/netns/test_isolation.py",
    "tests/netns/test_rel_crash.py",
    "tests/netns/test_rel_flush_reboot.py",
    "tests/netns/test_rel_ipv6.py",
    "tests/netns/test_rel_naming.py",
    "tests/netns/test_nft_generation.py",
    "tests/netns/test_ops_tools.py",
    "tests/netns/test_veth_delete.py",
    "tests/netns/test_rel_lock_security.py::test_off_node_packets_to_loopback_are_dropped",
    "tests/netns/test_rel_lock_security.py::test_foreign_tables_are_never_modified",
    "tests/parity/test_bridge_parity.py",
    "tests/parity/test_portmap_parity.py",
    "tests/netns/test_meta_plugins.py",
    "tests/parity/test_meta_parity.py",
    "tests/netns/test_proxy.py",
    "tests/netns/test_host_listeners.py",
    "--deselect", "tests/netns/test_bridge_lifecycle.py::test_32_concurrent_adds_then_dels",
    # emulated (TCG) guests are too slow for a rate to mean anything
    "--deselect", "tests/netns/test_meta_plugins.py::test_bandwidth_shapes_to_the_configured_rates",
    "--deselect", "tests/netns/test_isolation.py::test_hundred_networks_constant_rule_count",
)
# everything that runs against the kernel; the real-client tests need container
# runtimes and cgroups the guest does not have (they run on the host)
FULL_SUBSET = ("tests/netns", "tests/parity")
SUBSETS = {"ci": CI_SUBSET, "kernel": KERNEL_SUBSET, "full": FULL_SUBSET}
RESULT = re.compile(r"BERTH-VM-RESULT rc=(\d+)")
SUMMARY = re.compile(r"=+ (.*(?:passed|failed|error|skipped).*) in [\d.]+s")


def accelerator() -> str:
    """VM_ACCEL=kvm|tcg; by default plain emulation (TCG), which boots Debian's
    stock kernels everywhere; a nested /dev/kvm often cannot (a CPU feature it
    does not pass through makes the guest kernel die early)."""
    return os.environ.get("VM_ACCEL", "tcg")


def ensure_bundle() -> None:
    """The guest runs the bundle (dist/berth): rebuild it when a source is newer."""
    exe = REPO / "dist" / "berth" / "berth"
    built = exe.stat().st_mtime if exe.exists() else 0.0
    sources = [p for d in ("cni", "ipam", "portmap", "packaging") for p in (REPO / d).rglob("*.py")]
    if not exe.exists() or any(p.stat().st_mtime > built for p in sources):
        print("tests/vm: dist/berth is older than the sources: make bundle", flush=True)
        subprocess.run(["make", "-C", str(REPO), "bundle"], check=True)


def prepare(kernel: matrix.Kernel, args: list[str], script: Path | None = None,
            env: dict[str, str] | None = None) -> tuple[str, Path, Path]:
    """Fetch the kernel and build its root filesystem from this checkout: (package, vmlinuz, image)."""
    cache = BUILD / "kernels"
    unpacked = fetch.fetch(kernel, cache)
    package = (unpacked / ".unpacked").read_text().strip()
    release = fetch.release_of(unpacked)
    image = initramfs.build(BUILD / "vm" / f"root-{kernel.name}", BUILD / "vm" / f"{kernel.name}.cpio",
                            unpacked, release, REPO, INIT, args, script, env)
    return package, unpacked / "boot" / f"vmlinuz-{release}", image


def boot(kernel: matrix.Kernel, vmlinuz: Path, image: Path, *, timeout: float, echo: bool) -> tuple[int, str, float]:
    """Boot and wait: (guest rc or -1, summary line, seconds)."""
    log_path = BUILD / "vm" / f"{kernel.name}.log"
    cpus = str(max(1, min(2, os.cpu_count() or 1)))
    argv = ["qemu-system-x86_64", "-accel", accelerator(), "-m", os.environ.get("VM_MEMORY", "3072"),
            "-smp", cpus, "-nographic", "-no-reboot", "-nic", "none", "-kernel", str(vmlinuz),
            "-initrd", str(image), "-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]
    start = time.monotonic()
    rc = -1
    summary = ""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            deadline = start + timeout
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace")
                log.write(line)
                log.flush()
                if echo:
                    sys.stdout.write(f"[{kernel.name}] {line}")
                    sys.stdout.flush()
                m = RESULT.search(line)
                if m:
                    rc = int(m.group(1))
                s = SUMMARY.search(line)
                if s:
                    summary = s.group(1)
                if time.monotonic() > deadline:
                    log.write(f"\n*** timed out after {timeout:.0f} s\n")
                    summary = summary or f"timed out after {timeout:.0f} s"
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return rc, summary, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", default=",".join(k.name for k in matrix.MATRIX),
                        help="comma-separated names from tests/vm/matrix.py (default: all)")
    parser.add_argument("--subset", choices=tuple(SUBSETS), default="kernel")
    parser.add_argument("--ci", action="store_true", help="what CI runs: the CI kernel, the CI subset")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("VM_TIMEOUT", "7200")),
                        help="seconds per kernel")
    parser.add_argument("--script", type=Path, help="run this shell script in the guest instead of pytest")
    parser.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    parser.add_argument("pytest_args", nargs="*")
    opts = parser.parse_args(argv)
    if opts.ci:
        opts.kernels, opts.subset = matrix.CI_KERNEL, "ci"
    selection = list(SUBSETS[opts.subset])
    # no xdist in the guest: under emulation two workers importing the suite cost more than they gain
    # one line per failure (--tb=line): under emulation the report must not outlast the run;
    # one line per test (-v), so the console shows how far a slow guest has come
    args = ["-v", "--color=no", "-p", "no:xdist", "--tb=line", "-rfE", "--durations=15",
            "-m", "not slow and not clients", *(opts.pytest_args or selection)]
    env = {"BERTH_CHURN_LOOPS": str(CHURN_LOOPS[opts.subset])}
    ensure_bundle()
    kernels = [matrix.by_name(name.strip()) for name in opts.kernels.split(",")]
    # every image first: the guests test the checkout as it is now, whatever happens to it meanwhile
    prepared = [prepare(k, args, opts.script, env) for k in kernels]
    results = []
    for kernel, (package, vmlinuz, image) in zip(kernels, prepared, strict=True):
        rc, summary, seconds = boot(kernel, vmlinuz, image, timeout=opts.timeout, echo=not opts.quiet)
        results.append((kernel, rc, package, summary, seconds))
    print("\nkernel matrix:")
    failed = 0
    for kernel, rc, package, summary, seconds in results:
        verdict = "PASS" if rc == 0 else "FAIL"
        failed += rc != 0
        print(f"  {verdict}  {kernel.name:<5} {package:<50} {summary or 'no result'} ({seconds:.0f} s; "
              f"build/vm/{kernel.name}.log)")
        if rc != 0 and opts.quiet:
            tail = (BUILD / "vm" / f"{kernel.name}.log").read_text(errors="replace").splitlines()[-120:]
            print("\n".join(f"    [{kernel.name}] {line}" for line in tail))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
