# Sourced by the hack/build-*.sh scripts: a Go binary built once and kept in a cache directory
# outside the repo. Only a complete set of binaries counts as cached, so an interrupted build is
# redone instead of leaving a half-written binary that later runs would trust.

# go_cached_build OUT LABEL BUILD_FN BINARY...
#   Prints OUT and returns at once when every BINARY is already an executable in OUT. Otherwise calls
#   BUILD_FN with a fresh temporary directory inside OUT (same filesystem, so the moves are atomic),
#   which must leave every BINARY there, moves them into OUT in the order given (so the last one
#   present means all are) and prints OUT on its last line. Progress goes to stderr.
go_cached_build() {
  local out=$1 label=$2 build=$3 bin start
  shift 3
  if go_cache_has "$out" "$@"; then echo "$out"; return 0; fi
  export CGO_ENABLED=0
  # A go.mod that asks for a newer Go than the installed one gets that toolchain from the proxy.
  export GOTOOLCHAIN=auto
  start=$(date +%s)
  mkdir -p "$out"
  _go_cache_tmp=$(mktemp -d "$out/.build.XXXXXX")
  trap 'rm -rf "$_go_cache_tmp"' EXIT
  echo "building $label" >&2
  "$build" "$_go_cache_tmp"
  for bin in "$@"; do mv "$_go_cache_tmp/$bin" "$out/$bin"; done
  echo "$label built in $(( $(date +%s) - start ))s" >&2
  echo "$out"
}

# go_cache_has OUT BINARY...: every BINARY is an executable in OUT.
go_cache_has() {
  local out=$1 bin
  shift
  for bin in "$@"; do [ -x "$out/$bin" ] || return 1; done
}
