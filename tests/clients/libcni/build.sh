#!/bin/sh
# Build berth-libcni (main.go) against Debian's libcni, offline, in GOPATH mode:
#   tests/clients/libcni/build.sh [OUTPUT]   (default build/libcni-driver/berth-libcni)
# Needs golang-go and golang-github-appc-cni-dev (`make client-deps`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$root/build/libcni-driver/berth-libcni}
gocode=/usr/share/gocode
if ! command -v go >/dev/null 2>&1 || [ ! -d "$gocode/src/github.com/containernetworking/cni/libcni" ]; then
  echo "build.sh: need golang-go and golang-github-appc-cni-dev (run 'make client-deps')" >&2
  exit 3
fi
version=$(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev 2>/dev/null || echo unknown)
work=$root/build/libcni-driver
mkdir -p "$work" "$(dirname "$out")"
# Debian's Go sources only; no module download, no module mode, caches kept under build/
env -u GOFLAGS GO111MODULE=off GOPROXY=off GOPATH="$gocode" GOCACHE="$work/gocache" \
  go build -trimpath -ldflags "-X main.libcniVersion=$version" -o "$out.tmp" "$here/main.go"
mv -f "$out.tmp" "$out"
