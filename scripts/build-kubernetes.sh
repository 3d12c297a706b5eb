#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries from source into <out>/bin.
#
#   scripts/build-kubernetes.sh [module-dir [out-dir]]
#
# module-dir defaults to build/kubernetes (the release the node image ships) and out-dir to _out/kubernetes;
# `make kubernetes-previous` builds build/kubernetes-previous (the release a cluster upgrades from in the
# Kubernetes-upgrade end-to-end test) into _out/kubernetes-previous. The Go build cache makes a rebuild without
# changes take seconds; the first build takes about 11 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
module="${1:-build/kubernetes}"
out="$PWD/${2:-_out/kubernetes}/bin"
if [[ ! -f "$module/go.mod" ]]; then
  echo "build-kubernetes: $module/go.mod not found; pass a module directory under build/" >&2
  exit 1
fi
mkdir -p "$out"
cd "$module"
version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
major="${version#v}"; major="${major%%.*}"
minor="${version#v*.}"; minor="${minor%%.*}"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kubectl kube-proxy)
for b in "${bins[@]}"; do
  echo "build-kubernetes: $b $version"
  # Write next to the target and rename, so a binary in use (hard-linked, or run by a node) is never changed in place.
  CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$out/.$b.new" "k8s.io/kubernetes/cmd/$b"
  mv -f "$out/.$b.new" "$out/$b"
done
echo "build-kubernetes: binaries in $out"
