# berth — everything a user or CI needs, starting from a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PY_SYS := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
PREFIX ?= /opt/cni/bin
DESTDIR ?=
ALIASES ?= 0
PYTEST_ARGS ?=

DEB_PACKAGES := nftables libnftables1 python3-nftables python3-venv libpython3.11 iproute2 conntrack \
	iptables containernetworking-plugins gcc libc6-dev zlib1g-dev patchelf curl
CLIENT_PACKAGES := podman crun conmon containerd runc busybox-static uidmap golang-go golang-github-appc-cni-dev
# the kernel matrix (tests/vm): qemu boots Debian's kernel packages, unpacked, never installed
KERNEL_PACKAGES := qemu-system-x86 cpio busybox-static kmod

.PHONY: all deps client-deps kernel-deps venv lint test test-unit test-netns test-long test-kernels bundle install \
	demo bench clean

all: bundle

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

client-deps: deps
	@missing=""; for p in $(CLIENT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "client-deps: all present"; fi

kernel-deps:
	@missing=""; for p in $(KERNEL_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "kernel-deps: all present"; fi

# A cnitool-like driver over the real libcni (Debian's golang-github-appc-cni-dev, built offline in GOPATH
# mode) for tests/clients/test_libcni.py, which also builds it when it runs: build/libcni-driver/berth-libcni.
.PHONY: libcni-driver
libcni-driver: client-deps
	tests/clients/libcni/build.sh

# The venv is made from Debian's python so it sees python3-nftables (matching libnftables1).
$(VENV)/.stamp: pyproject.toml
	@test -x $(PY_SYS) || { echo "need $(PY_SYS): run 'make deps'"; exit 1; }
	$(PY_SYS) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

venv: deps $(VENV)/.stamp

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check cni ipam portmap tests bench
	$(VENV)/bin/mypy

# CI's entry point: lint, build the bundle, then every test not marked slow with the plugins exec'd from
# the bundle (the product form; BERTH_BIN_DIR= runs against the venv entry point instead).
TEST_JOBS ?= 2
BERTH_BIN_DIR ?= dist/berth
# Then the kernel users of Debian 12 run (tests/vm/matrix.py: CI_KERNEL), booted under qemu
# with the CI subset of the namespace tests inside (tests/vm/run.py).
test: venv client-deps kernel-deps lint bundle
	BERTH_BIN_DIR=$(BERTH_BIN_DIR) $(PY) -m pytest -q -n $(TEST_JOBS) -m "not slow" $(PYTEST_ARGS)
	$(PY) -m tests.vm.run --ci --quiet

test-unit: $(VENV)/.stamp
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

test-netns: venv
	$(PY) -m pytest -q -m "netns and not slow" $(PYTEST_ARGS)

test-long: venv
	BERTH_LONG=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# Every kernel of the matrix (tests/vm/matrix.py) in a qemu VM, each running the namespace and
# parity tests that exercise the kernel (tests/vm/run.py: KERNEL_SUBSET) against the bundle;
# KERNELS=6.1,6.12 picks some, KERNEL_SUBSET=ci the CI subset, KERNEL_SUBSET=full every test.
KERNELS ?=
KERNEL_SUBSET ?= kernel
test-kernels: venv kernel-deps bundle
	$(PY) -m tests.vm.run $(if $(KERNELS),--kernels $(KERNELS)) --subset $(KERNEL_SUBSET) --quiet

# One onedir bundle, one multi-call executable; the plugins are links to it (see packaging/berth.spec).
BUNDLE_LINKS := berth-bridge berth-host-local berth-portmap berth-loopback berth-tuning berth-firewall berth-bandwidth
# with ALIASES=1 also the upstream names, replacing reference plugins of those names
ALIAS_LINKS := bridge host-local portmap loopback tuning firewall bandwidth
# `berth` (and every link to it) is a small C launcher that execs the bundle's own copy of the
# build machine's python binary (packaging/launcher.c; see docs/design.md, "The bundle").
# `make bundle BERTH_LAUNCHER=0` keeps PyInstaller's bootloader as the executable instead, built from
# its sources without the onedir restart (packaging/bootloader.py, cached in build/bootloader), or
# its prebuilt one with STOCK_BOOTLOADER=1.
BERTH_LAUNCHER ?= 1
bundle: venv
	boot=$$($(if $(filter 0,$(BERTH_LAUNCHER)),$(if $(STOCK_BOOTLOADER),true,$(PY) packaging/bootloader.py build/bootloader),true)) || { boot=; \
	  echo "WARNING: building the bootloader failed (see above); PyInstaller's stock one restarts once per exec"; } && \
	  BERTH_PYI_BOOTLOADER=$$boot BERTH_LAUNCHER=$(BERTH_LAUNCHER) \
	  $(PY) -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/onedir packaging/berth.spec
	cd dist/berth && for n in $(BUNDLE_LINKS); do ln -sfn berth $$n; done
	@cd / && out=$$(env -i $(CURDIR)/dist/berth/berth-bridge </dev/null 2>&1) && echo "bundle: dist/berth ($$(du -sh $(CURDIR)/dist/berth | cut -f1)): $${out%%$$'\n'*}"

# For measurement only (start-up unpacks to /tmp on every exec): dist/berth-onefile.
.PHONY: bundle-onefile test-bundle
bundle-onefile: venv
	BERTH_ONEFILE=1 $(PY) -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/onefile packaging/berth.spec

# Build the bundle and run the tests that exec it (plugins via links, the runner) against it.
test-bundle: bundle
	BERTH_BIN_DIR=dist/berth $(PY) -m pytest -q $(PYTEST_ARGS) tests/netns/test_bundle.py tests/netns/test_runner.py \
	  tests/netns/test_harness.py

# Installs the bundle as $(PREFIX)/.berth-<stamp>/ behind an atomically switched .berth link,
# so a plugin exec'd during an upgrade sees either the old or the new bundle; the previous
# bundle is kept (a running plugin may still load files from it), older ones are removed.
INSTALL_STAMP := $(shell date +%Y%m%d%H%M%S%N)
install:
	@test -x dist/berth/berth || { echo "run 'make bundle' first"; exit 1; }
	@set -e; dir="$(DESTDIR)$(PREFIX)"; install -d "$$dir"; \
	new=".berth-$(INSTALL_STAMP)"; rm -rf "$$dir/$$new"; cp -a dist/berth "$$dir/$$new"; \
	if [ -d "$$dir/.berth" ] && [ ! -L "$$dir/.berth" ]; then mv "$$dir/.berth" "$$dir/.berth-0-unversioned"; fi; \
	prev=$$(readlink "$$dir/.berth" 2>/dev/null || true); \
	ln -sfn "$$new" "$$dir/.berth.tmp"; mv -Tf "$$dir/.berth.tmp" "$$dir/.berth"; \
	names="berth $(BUNDLE_LINKS)"; if [ "$(ALIASES)" = "1" ]; then names="$$names $(ALIAS_LINKS)"; fi; \
	for n in $$names; do ln -sfn .berth/berth "$$dir/$$n.tmp"; mv -Tf "$$dir/$$n.tmp" "$$dir/$$n"; done; \
	for old in "$$dir"/.berth-*; do b=$$(basename "$$old"); \
	  if [ "$$b" != "$$new" ] && [ "$$b" != "$$prev" ]; then rm -rf "$$old"; fi; done; \
	echo "installed into $$dir ($$names)"

# demo/demo.sh runs `make bundle` itself when dist/berth is missing or older than the sources
# (falls back to the venv entry point if that fails), then `make install` into a temp dir.
demo: venv client-deps
	./demo/demo.sh

bench: venv
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build dist $(VENV) .pytest_cache .mypy_cache .ruff_cache
