#!/usr/bin/env bash
# Build a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) and kubectl from the Go module proxy, and cache the binaries by version outside the repo.
#
# Why a wrapper module: k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
# them with local paths, which a dependent module does not inherit, so `go install ...@vX`
# fails. We generate a module that requires kubernetes and replaces every staging module with
# its published v0.Y.Z, then build the three commands from it. etcd's server module has the same
# problem with its sibling modules.
#
# Prints the directory holding the binaries on its last line. Honours KUBEBUILDER_ASSETS (the
# envtest convention): when it already holds all the binaries, nothing is built. Only the
# binaries missing from the cache are built, so adding one to the list is cheap.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
BINARIES=(etcd "${K8S_COMMANDS[@]}")

have_all() { local d=$1; for b in "${BINARIES[@]}"; do [ -x "$d/$b" ] || return 1; done; }
missing_k8s() { for b in "${K8S_COMMANDS[@]}"; do [ -x "$OUT/$b" ] || echo "$b"; done; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi

OUT="$CACHE_ROOT/k8s/$K8S_VERSION-etcd-$ETCD_VERSION"
if have_all "$OUT"; then echo "$OUT"; exit 0; fi

export GOFLAGS=-mod=mod CGO_ENABLED=0
# A module whose go.mod asks for a newer Go than the installed one gets that toolchain from the
# module proxy instead of failing (v1.36.3 and etcd v3.6.16 ask for go 1.26.0: the local Go is used).
export GOTOOLCHAIN=auto
WORK="$CACHE_ROOT/build"
mkdir -p "$WORK" "$OUT"
start=$(date +%s)

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ----------------------
todo=$(missing_k8s)
if [ -n "$todo" ]; then
kmod="$WORK/k8s-$K8S_VERSION"; mkdir -p "$kmod"
upstream_mod=$(cd "$kmod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
staging_version="v0.${K8S_VERSION#v1.}"
go_line=$(grep -m1 '^go ' "$upstream_mod")
godebug_line=$(grep -m1 '^godebug ' "$upstream_mod" || true)
{
  echo "module noria.dev/controlplane"
  echo
  echo "$go_line"
  [ -n "$godebug_line" ] && echo "$godebug_line"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$upstream_mod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
  echo
  echo "tool ("
  echo "	k8s.io/kubernetes/cmd/kube-apiserver"
  echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
  echo "	k8s.io/kubernetes/cmd/kube-scheduler"
  echo "	k8s.io/kubernetes/cmd/kubectl"
  echo ")"
} > "$kmod/go.mod"
(cd "$kmod" && go mod tidy)

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
for cmd in $todo; do
  echo "building $cmd $K8S_VERSION" >&2
  (cd "$kmod" && go build -trimpath -ldflags "$ldflags" -o "$OUT/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  mv "$OUT/$cmd.tmp" "$OUT/$cmd"  # only complete binaries count as cached
done
fi

# --- etcd -------------------------------------------------------------------------------------
if [ ! -x "$OUT/etcd" ]; then
emod="$WORK/etcd-$ETCD_VERSION"; mkdir -p "$emod"
cat > "$emod/go.mod" <<MOD
module noria.dev/etcd

go 1.24

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)

tool go.etcd.io/etcd/server/v3
MOD
(cd "$emod" && go mod tidy)
echo "building etcd $ETCD_VERSION" >&2
(cd "$emod" && go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3)
mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

echo "control plane built in $(( $(date +%s) - start ))s" >&2
have_all "$OUT"
echo "$OUT"
