#!/bin/bash
# demo/demo.sh - berth end to end: bundle -> install -> a real podman container with a
# published port, inside throwaway namespaces -> traffic -> nft table -> teardown.
#
# usage (root): make demo            or   demo/demo.sh [--keep-work]
# BERTH_DEMO_REBUILD=1 forces `make bundle` even when dist/berth is newer than the sources.
#
# Nothing touches the host's network namespace: the "node" (where podman runs and the
# plugins put the bridge, veths and `table inet berth`) and an "outside" host are two
# namespaces made here and linked to each other; podman runs in its own mount namespace
# so its container netns bind mounts never show on the host. Leases, journals, podman's
# storage and the CNI install all live under one temp dir. Everything is removed at the
# end, also on failure or Ctrl-C (trap).
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
SELF=$ROOT/demo/demo.sh
NODE_IP=198.51.100.1 OUT_IP=198.51.100.2 HOST_PORT=8080
CONFLIST=$ROOT/conf/87-berth-podman.conflist
REFERENCE_DIR=/usr/lib/cni   # only for podman's VERSION probes of plugins it might chain; berth needs none

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# ------------------------------------------------------------------ inner: in the node netns
inner() {
  export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf BERTH_STATE_DIR=$WORK/state
  P() { podman "$@"; }
  # crun refuses hybrid cgroups (v1 + a cgroup2 "unified" mount with controllers): hide the
  # unified mount, in this private mount namespace only
  if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] && mountpoint -q /sys/fs/cgroup/unified; then
    umount /sys/fs/cgroup/unified
  fi
  trap 'P rm -af -t 0 >/dev/null 2>&1 || true' EXIT
  step "podman import: a busybox-static image (no registry needed)"
  P import --change 'CMD ["/bin/sh"]' "$WORK/rootfs.tar" localhost/berth-demo:latest > "$WORK/import.log" 2>&1 \
    || { cat "$WORK/import.log"; exit 1; }

  step "podman run -d --network berth-podman -p $HOST_PORT:80 ... httpd   (podman execs berth-bridge, berth-portmap)"
  P run -d --name berth-demo-web --network berth-podman -p "$HOST_PORT:80" localhost/berth-demo:latest \
    httpd -f -p 80 -h /www >/dev/null
  local ip
  ip=$(P inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' berth-demo-web)
  note "container address: $ip"

  step "curl http://127.0.0.1:$HOST_PORT/ on the node"
  note "$(curl -sS -m 3 --retry 5 --retry-delay 0 --retry-connrefused "http://127.0.0.1:$HOST_PORT/")"
  step "curl http://$NODE_IP:$HOST_PORT/ from the outside namespace"
  note "$(ip netns exec "$OUT_NS" curl -sS -m 3 "http://$NODE_IP:$HOST_PORT/")"
  step "the container reaches its own published port (hairpin) and the outside (masqueraded)"
  note "hairpin: $(P exec berth-demo-web sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $NODE_IP $HOST_PORT" | tail -1)"
  ip netns exec "$OUT_NS" busybox httpd -f -vv -p "$OUT_IP:9000" -h "$WORK/outwww" 2> "$WORK/out-httpd.log" &
  local outpid=$!
  sleep 0.2
  P exec berth-demo-web sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $OUT_IP 9000" >/dev/null || true
  kill "$outpid" 2>/dev/null || true
  note "outside server saw the request from: $(grep -o '^[0-9.]*' "$WORK/out-httpd.log" | head -1) (the node, not $ip)"

  step "nft list table inet berth   (in the node namespace; counters count the requests above)"
  nft list table inet berth 2>&1 | sed "s/^/    /" || true
  # TODO: `berth list` once the runner has it; until then the journal files are the listing.
  if "$CNI_DIR/berth" list --help >/dev/null 2>&1; then
    step "berth list"
    "$CNI_DIR/berth" list | sed 's/^/    /'
  else
    step "berth's attachment journal ($BERTH_STATE_DIR; 'berth list' is not there yet)"
    find "$BERTH_STATE_DIR" -name '*.json' | while read -r f; do
      note "${f#"$BERTH_STATE_DIR"/}"; python3 -m json.tool < "$f" | sed 's/^/      /'
    done
  fi

  step "podman rm -f berth-demo-web   (DEL)"
  P rm -f -t 0 berth-demo-web 2>&1 >/dev/null | sed 's/^/    podman: /'
  step "nothing left of the container"
  local veths chains jumps journals leases
  veths=$(ip -o link show type veth 2>/dev/null | grep -cv o-node || true)
  chains=$(nft list table inet berth 2>/dev/null | grep -Ec 'chain CNI-(DN-)?[0-9a-f]{20}' || true)
  jumps=$(nft list table inet berth 2>/dev/null | grep -Ec '(jump|goto) CNI-(DN-)?[0-9a-f]{20}' || true)
  journals=$(find "$BERTH_STATE_DIR" -name '*.json' | wc -l)
  leases=$(find "$WORK/ipam" -type f ! -name lock ! -name 'last_reserved_ip*' | wc -l)
  note "veths on the node:     $veths"
  note "attachment chains:     $chains"
  note "jumps to them:         $jumps"
  note "journal files:         $journals"
  note "leases:                $leases"
  if [ "$veths$chains$jumps$journals$leases" != 00000 ]; then
    echo "    LEFT BEHIND (see above); plugin logs: podman's own log"; nft list table inet berth | sed 's/^/    /'; exit 1
  fi
  note "port $HOST_PORT:           closed"
}

if [ "${1:-}" = --inner ]; then inner; exit $?; fi

# ------------------------------------------------------------------ outer
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it makes network namespaces)"; exit 2; }
for c in podman crun conmon busybox curl nft ip; do
  command -v "$c" >/dev/null || { echo "demo: $c missing: run 'make client-deps'"; exit 2; }
done
KEEP_WORK=0; [ "${1:-}" = --keep-work ] && KEEP_WORK=1
T0=$(date +%s%N)
TAG=$$
NODE_NS=berth-demo-$TAG-node OUT_NS=berth-demo-$TAG-out
WORK=$(mktemp -d /tmp/berth-demo.XXXXXX)
CNI_DIR=$WORK/root/opt/cni/bin
export WORK NODE_NS OUT_NS CNI_DIR NODE_IP OUT_IP HOST_PORT

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for ns in "$NODE_NS" "$OUT_NS"; do
    [ -e "/run/netns/$ns" ] || continue
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null
  done
  [ "$KEEP_WORK" = 1 ] || rm -rf "$WORK"
  step "removed namespaces $NODE_NS, $OUT_NS and $WORK"
  note "host namespaces named berth-demo-*: $(ip netns list 2>/dev/null | grep -c '^berth-demo-' || true)"
  note "done in $(( ($(date +%s%N) - T0) / 1000000 )) ms"
  exit $rc
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

# 1. bundle: rebuilt only when a source is newer than it (PyInstaller takes a while)
cd "$ROOT"
stale_source() {
  [ -x dist/berth/berth ] || { echo "no dist/berth"; return; }
  find cni ipam portmap packaging -newer dist/berth/berth \( -name '*.py' -o -name '*.spec' \) | head -1
}
stale=$(stale_source)
[ "${BERTH_DEMO_REBUILD:-0}" = 1 ] && [ -z "$stale" ] && stale="BERTH_DEMO_REBUILD=1"
if [ -n "$stale" ]; then
  step "make bundle   (dist/berth is out of date: $stale)"
  make -s bundle > "$WORK/bundle.log" 2>&1 || { tail -5 "$WORK/bundle.log" | sed 's/^/    /'; step "make bundle failed"; }
else
  step "dist/berth is up to date with the sources (make bundle would rebuild it)"
fi
if [ -z "$(stale_source)" ]; then
  step "make install DESTDIR=$WORK/root PREFIX=/opt/cni/bin"
  make -s install DESTDIR="$WORK/root" PREFIX=/opt/cni/bin | sed 's/^/    /'
else
  step "no usable bundle: falling back to the venv entry point, links in $CNI_DIR -> $ROOT/.venv/bin/berth"
  mkdir -p "$CNI_DIR"
  for n in berth berth-bridge berth-host-local berth-portmap; do ln -s "$ROOT/.venv/bin/berth" "$CNI_DIR/$n"; done
fi
note "$(ls "$CNI_DIR" | tr '\n' ' ')"

# 2. namespaces: node <-veth-> outside; the veth is made inside the node, never in the host
step "ip netns add $NODE_NS (the node: podman, bridge, nft) and $OUT_NS (an outside host)"
ip netns add "$NODE_NS"; ip netns add "$OUT_NS"
ip -n "$NODE_NS" link add o-node type veth peer name o-out netns "$OUT_NS"
ip -n "$NODE_NS" addr add "$NODE_IP/24" dev o-node
ip -n "$OUT_NS" addr add "$OUT_IP/24" dev o-out
for ns in "$NODE_NS" "$OUT_NS"; do ip -n "$ns" link set lo up; done
ip -n "$NODE_NS" link set o-node up; ip -n "$OUT_NS" link set o-out up
ip -n "$NODE_NS" route add default via "$OUT_IP"
note "node $NODE_IP/24 <-> outside $OUT_IP/24; node's default route via outside"

# 3. podman (CNI backend) configured to use the install dir and conf/87-berth-podman.conflist
step "podman: network_backend=cni, cni_plugin_dirs=[$CNI_DIR], network berth-podman from conf/"
mkdir -p "$WORK/net.d" "$WORK/ipam" "$WORK/state" "$WORK/outwww" "$WORK/rootfs"/{bin,www,etc,tmp,proc,sys,dev}
python3 - "$CONFLIST" "$WORK/net.d/87-berth-podman.conflist" "$WORK/ipam" <<'PY'
import json, sys
conf = json.load(open(sys.argv[1]))
conf["plugins"][0]["ipam"]["dataDir"] = sys.argv[3]  # leases in the demo dir, not /var/lib/cni
json.dump(conf, open(sys.argv[2], "w"), indent=2)
PY
echo "hello from a berth pod" > "$WORK/rootfs/www/index.html"
echo "hello from outside" > "$WORK/outwww/index.html"
cp /bin/busybox "$WORK/rootfs/bin/"
for a in sh httpd nc; do ln -s busybox "$WORK/rootfs/bin/$a"; done
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
# podman asks for RLIMIT_NOFILE/NPROC it may not be allowed to raise: ask for what we have
NOFILE=$(ulimit -Hn); NPROC=$(ulimit -Hu)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
{ [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; } && NPROC=32768
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$CNI_DIR", "$REFERENCE_DIR"]
network_config_dir = "$WORK/net.d"
default_network = "berth-podman"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/podman-tmp"
runtime = "crun"
# podman's cleanup process (started by conmon when the container exits) may do the DEL with a
# trimmed environment: keep berth's journal in the demo dir for it too
env = ["BERTH_STATE_DIR=$WORK/state"]
EOF
cat > "$WORK/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF

# 4. everything else happens inside the node netns, in a private mount namespace
nsenter --net="/run/netns/$NODE_NS" unshare --mount --propagation private bash "$SELF" --inner
