#!/usr/bin/env bash
# Builds the pinned node components other than Kubernetes from source into _out/components/bin (CNI plugins
# into _out/components/cni): etcd, CoreDNS, pause, containerd, runc and the CNI plugins. Each comes from its own
# Go module under build/ (their dependency graphs conflict with Kubernetes'); build/README.md says what each
# pins. pause is compiled from the C source in the pinned Kubernetes module (build/kubernetes).
#
# Needs gcc, static glibc (libc6-dev), pkg-config and libseccomp-dev (runc links libseccomp statically).
# Idempotent: a binary whose inputs did not change is not relinked, so a second run takes seconds; with an empty
# build cache it takes about 5 minutes on two cores. Reproducible: -trimpath, -buildvcs=false, fixed version
# strings; two builds with separate build caches give identical bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="$root/_out/components/bin"
cni="$root/_out/components/cni"
mkdir -p "$bin" "$cni"
log="$(mktemp)"
trap 'rm -f "$log" "$bin/.pause.tmp"' EXIT

begin=$SECONDS
start=0
# step COMPONENT BINARY VERSION: the progress line of one binary, finished by done_step with its time.
step() { printf 'build-components: %-10s %-24s %-8s ' "$1" "$2" "$3"; start=$SECONDS; current="$1 ($2)"; }
done_step() { echo "$((SECONDS - start))s"; }
fail() {
  echo "FAILED"
  cat "$log" >&2
  echo "build-components: error: building $current failed${1:+: $1}" >&2
  exit 1
}

# modversion MODULE_DIR MODULE: the version the module under build/ pins.
modversion() { (cd "build/$1" && go list -m -f '{{.Version}}' "$2"); }

# gobuild COMPONENT MODULE_DIR OUTPUT PACKAGE VERSION [go build flags]: builds one binary. CGO_ENABLED comes from
# the caller (0 unless it says otherwise). go build does not relink an output whose build ID is current.
gobuild() {
  local comp="$1" dir="$2" out="$3" pkg="$4" version="$5"
  shift 5
  step "$comp" "$(basename "$out")" "$version"
  (cd "build/$dir" && CGO_ENABLED="${CGO_ENABLED:-0}" go build -trimpath -buildvcs=false "$@" -o "$out" "$pkg") \
    >"$log" 2>&1 || fail
  done_step
}

# The Kubernetes source, for pause.c and to check the pins against what kubeadm deploys.
k8s_version="$(modversion kubernetes k8s.io/kubernetes)"
k8s_dir="$(cd build/kubernetes && go mod download -json k8s.io/kubernetes | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$k8s_dir" ] || { echo "build-components: error: no source of k8s.io/kubernetes $k8s_version" >&2; exit 1; }
kubeadm_constants="$k8s_dir/cmd/kubeadm/app/constants/constants.go"
# expect NAME PINNED CONSTANT: warns when a pin differs from the version kubeadm deploys.
expect() {
  local want
  want="$(sed -n "s/^[[:space:]]*$3 = \"v\{0,1\}\([0-9.]*\)\(-0\)\{0,1\}\"$/\1/p" "$kubeadm_constants")"
  [ "${2#v}" = "$want" ] ||
    echo "build-components: warning: $1 is pinned at $2, kubeadm $k8s_version deploys ${want:-(unknown)} ($3)" >&2
}

# etcd: the server's main package is the root of go.etcd.io/etcd/server/v3 (upstream builds it from server/).
etcd_version="$(modversion etcd go.etcd.io/etcd/server/v3)"
expect etcd "$etcd_version" DefaultEtcdVersion
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"
gobuild etcd etcd "$bin/etcd" go.etcd.io/etcd/server/v3 "$etcd_version" -ldflags "$etcd_ldflags"
gobuild etcd etcd "$bin/etcdctl" go.etcd.io/etcd/etcdctl/v3 "$etcd_version" -ldflags "$etcd_ldflags"
gobuild etcd etcd "$bin/etcdutl" go.etcd.io/etcd/etcdutl/v3 "$etcd_version" -ldflags "$etcd_ldflags"

# CoreDNS with its default plugin set (core/plugin/zplugin.go as released).
coredns_version="$(modversion coredns github.com/coredns/coredns)"
expect CoreDNS "$coredns_version" CoreDNSVersion
gobuild coredns coredns "$bin/coredns" github.com/coredns/coredns "$coredns_version" \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version"

# pause: the static C program of the Kubernetes source, built as its Makefile does (build/pause/Makefile).
pause_version="$(sed -n 's/^TAG ?= *//p' "$k8s_dir/build/pause/Makefile")"
expect pause "$pause_version" PauseVersion
step pause pause "v$pause_version"
command -v gcc >/dev/null || { echo >"$log"; fail "gcc not found (Debian package gcc)"; }
[ -e "$(gcc -print-file-name=libc.a)" ] || { echo >"$log"; fail "no static glibc (Debian package libc6-dev)"; }
gcc -Os -Wall -Werror -static "-DVERSION=v$pause_version-$k8s_version" -o "$bin/.pause.tmp" \
  "$k8s_dir/build/pause/linux/pause.c" >"$log" 2>&1 || fail
strip "$bin/.pause.tmp" >"$log" 2>&1 || fail
if cmp -s "$bin/.pause.tmp" "$bin/pause"; then rm "$bin/.pause.tmp"; else mv "$bin/.pause.tmp" "$bin/pause"; fi
done_step

# containerd: the tags of its Makefile for a static release (STATIC=1); without cgo the btrfs snapshotter is
# left out anyway (it needs the btrfs headers), no_btrfs says so. The shim adds no_grpc as upstream does.
containerd_version="$(modversion containerd github.com/containerd/containerd/v2)"
pkg=github.com/containerd/containerd/v2
containerd_ldflags="-s -w -X $pkg/version.Version=$containerd_version -X $pkg/version.Revision=$containerd_version"
containerd_ldflags+=" -X $pkg/version.Package=$pkg"
containerd_tags="urfave_cli_no_docs osusergo netgo static_build no_btrfs"
for b in containerd ctr; do
  gobuild containerd containerd "$bin/$b" "$pkg/cmd/$b" "$containerd_version" \
    -tags "$containerd_tags" -ldflags "$containerd_ldflags"
done
gobuild containerd containerd "$bin/containerd-shim-runc-v2" "$pkg/cmd/containerd-shim-runc-v2" \
  "$containerd_version" -tags "$containerd_tags no_grpc" -ldflags "$containerd_ldflags"

# runc needs cgo (libcontainer/nsenter) and libseccomp; linked as a static PIE like its `make static`. The
# libpathrs tag of its default set is left out: libpathrs is a Rust library no Debian package provides, and
# without it runc uses its pure-Go fallback (pathrs-lite).
runc_version="$(modversion runc github.com/opencontainers/runc)"
if ! pkg-config --exists libseccomp 2>/dev/null; then
  step runc runc "$runc_version"
  echo >"$log"
  fail "libseccomp not found by pkg-config (Debian packages libseccomp-dev, pkg-config)"
fi
CGO_ENABLED=1 gobuild runc runc "$bin/runc" github.com/opencontainers/runc "$runc_version" \
  -buildmode=pie -tags "seccomp urfave_cli_no_docs netgo osusergo" \
  -ldflags "-s -w -X main.gitCommit=$runc_version -linkmode external -extldflags -static-pie"

# CNI plugins, as their release workflow builds them.
cni_version="$(modversion cni github.com/containernetworking/plugins)"
for p in main/bridge ipam/host-local main/loopback meta/portmap main/ptp; do
  gobuild cni cni "$cni/${p#*/}" "github.com/containernetworking/plugins/plugins/$p" "$cni_version" \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version"
done

echo "build-components: binaries in $bin and $cni ($((SECONDS - begin))s)"
