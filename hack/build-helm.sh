#!/usr/bin/env bash
# Build Helm from the Go module proxy and cache it by version outside the repo (as
# build-control-plane.sh does for the control plane), so tests render the chart with real
# `helm template` instead of an imitation. Prints the directory holding `helm` on its last line.
# HELM_BINARY may name a ready binary instead; then nothing is built.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}
OUT="$CACHE_ROOT/helm/$HELM_VERSION"

if [ -n "${HELM_BINARY:-}" ] && [ -x "$HELM_BINARY" ]; then dirname "$HELM_BINARY"; exit 0; fi
if [ -x "$OUT/helm" ]; then echo "$OUT"; exit 0; fi

export CGO_ENABLED=0
# A go.mod that asks for a newer Go than the installed one gets that toolchain from the proxy.
export GOTOOLCHAIN=auto
start=$(date +%s)
mkdir -p "$OUT"
tmp=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building helm $HELM_VERSION" >&2
GOBIN="$tmp" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$tmp/helm" "$OUT/helm"  # only a complete binary counts as cached
echo "helm built in $(( $(date +%s) - start ))s" >&2
echo "$OUT"
