#!/usr/bin/env bash
# Build Helm from the Go module proxy and cache it by version outside the repo (as
# build-control-plane.sh does for the control plane), so tests render the chart with real
# `helm template` instead of an imitation. Prints the directory holding `helm` on its last line.
# HELM_BINARY may name a ready binary instead; then nothing is built.
set -euo pipefail
source "$(dirname "$0")/lib/go-cache.sh"

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}

if [ -n "${HELM_BINARY:-}" ] && [ -x "$HELM_BINARY" ]; then dirname "$HELM_BINARY"; exit 0; fi

build_helm() {
  GOBIN="$1" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}
go_cached_build "$CACHE_ROOT/helm/$HELM_VERSION" "helm $HELM_VERSION" build_helm helm
