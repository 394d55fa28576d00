#!/usr/bin/env bash
# Build Prometheus and promtool from the Go module proxy and cache them by version outside the repo
# (as build-helm.sh does for Helm), so the test bed discovers pods through kubernetes_sd_configs as a
# real cluster's Prometheus does; Debian's package is built without it. Prints the directory holding
# `prometheus` and `promtool` on its last line. PROMETHEUS_BINARY + PROMTOOL_BINARY may name ready
# binaries (in one directory) instead; then nothing is built.
#
# The module github.com/prometheus/prometheus is versioned v0.3MM.P for Prometheus 3.MM.P.
# Build tags, from the module's plugins/ directory: remove_all_sd leaves out every service discovery
# but file and http, enable_kubernetes_sd puts Kubernetes back (the only one the test bed uses): 1,284
# packages to compile instead of 1,527 (the cloud SDKs stay, remote write's authentication uses them).
# Without the builtinassets tag the web UI is not embedded; the HTTP API, all the tests and the
# operator use, is unaffected. netgo as upstream's release builds.
set -euo pipefail
source "$(dirname "$0")/lib/go-cache.sh"

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
BUILD_TAGS="netgo remove_all_sd enable_kubernetes_sd"
CACHE_ROOT=${NORIA_CACHE:-$HOME/.cache/noria}

if [ -n "${PROMETHEUS_BINARY:-}" ] && [ -x "$PROMETHEUS_BINARY" ] \
  && [ -x "$(dirname "$PROMETHEUS_BINARY")/promtool" ]; then
  dirname "$PROMETHEUS_BINARY"; exit 0
fi

# v0.316.0 -> 3.16.0, what `prometheus --version` reports (upstream's release builds set the same).
minor=${PROMETHEUS_VERSION#v0.}; minor=${minor%%.*}
patch=${PROMETHEUS_VERSION##*.}
release="$(( minor / 100 )).$(( minor % 100 )).$patch"

# The module has no replace directives, so `go install pkg@version` builds it as released.
build_prometheus() {
  GOBIN="$1" go install -trimpath -tags "$BUILD_TAGS" \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Branch=$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}
# promtool first, so `prometheus` present means both are.
go_cached_build "$CACHE_ROOT/prometheus/$PROMETHEUS_VERSION" \
  "prometheus $release (module $PROMETHEUS_VERSION, tags: $BUILD_TAGS)" build_prometheus promtool prometheus
