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
	iptables containernetworking-plugins
CLIENT_PACKAGES := podman crun conmon containerd runc busybox-static curl uidmap

.PHONY: all deps client-deps venv lint test test-unit test-netns test-long bundle install demo bench clean

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

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) -m "not slow"

test-unit: $(VENV)/.stamp
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

test-netns: venv
	$(PY) -m pytest -q -m "netns and not slow" $(PYTEST_ARGS)

test-long: venv
	BERTH_LONG=1 $(PY) -m pytest -q $(PYTEST_ARGS)

bundle: venv
	$(PY) -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build berth.spec
	cd dist/berth && for n in berth-bridge berth-host-local berth-portmap; do ln -sf berth $$n; done
	@echo "bundle: dist/berth"

install:
	@test -x dist/berth/berth || { echo "run 'make bundle' first"; exit 1; }
	install -d $(DESTDIR)$(PREFIX) $(DESTDIR)$(PREFIX)/.berth
	cp -a dist/berth/. $(DESTDIR)$(PREFIX)/.berth/
	for n in berth berth-bridge berth-host-local berth-portmap; do ln -sfn .berth/berth $(DESTDIR)$(PREFIX)/$$n; done
	if [ "$(ALIASES)" = "1" ]; then for n in bridge host-local portmap; do ln -sfn .berth/berth $(DESTDIR)$(PREFIX)/$$n; done; fi
	@echo "installed into $(DESTDIR)$(PREFIX)"

demo: bundle client-deps
	./demo/demo.sh

bench: venv
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build dist $(VENV) .pytest_cache .mypy_cache .ruff_cache
