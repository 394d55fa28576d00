#!/usr/bin/env bash
# Debian's redis-server and redis-cli for the test bed's Feast online store (issue 18;
# testbed/noria_testbed/redis.py), unpacked into a cache outside the repo and NEVER installed
# system-wide: no container engine here, and `apt-get install redis-server` would register and start
# a system service on port 6379 that the test bed does not want (it runs its own redis-server on a
# free port, without persistence, and stops it). So the packages are fetched with
# `apt-get download` and unpacked with `dpkg -x` into ~/.cache/noria/redis/<version>/, together
# with the shared libraries they need that the machine lacks (libjemalloc2, liblzf1 on a clean
# Debian 12); two small wrappers there (redis-server, redis-cli) point the loader at them.
#
# Prints the directory holding the wrappers on its last line. Cached by Debian version: a run with
# a complete cached version asks apt nothing (the newest cached one, or REDIS_DEB_VERSION's).
#   REDIS_DEB_VERSION   a Debian version to fetch, e.g. 5:7.0.15-1~deb12u10 (default: apt's candidate)
#   NORIA_TESTBED_REDIS a ready redis-server to use instead; then nothing is fetched
# `apt-get update` runs only when the download fails (a machine whose package lists are missing or
# stale). Delete ~/.cache/noria/redis to take Debian's newest version again.
set -euo pipefail

CACHE=${NORIA_CACHE:-$HOME/.cache/noria}/redis
WANT=${REDIS_DEB_VERSION:-}

if [ -n "${NORIA_TESTBED_REDIS:-}" ] && [ -x "$NORIA_TESTBED_REDIS" ]; then
  dirname "$NORIA_TESTBED_REDIS"; exit 0
fi

complete() { [ -x "$1/redis-server" ] && [ -x "$1/redis-cli" ]; }

# A version is one directory, moved into place whole: present means complete.
if [ -n "$WANT" ]; then
  if complete "$CACHE/${WANT#*:}"; then echo "$CACHE/${WANT#*:}"; exit 0; fi
else
  cached=$(find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$cached" ] && complete "$CACHE/$cached"; then echo "$CACHE/$cached"; exit 0; fi
fi

for tool in apt-get dpkg-deb dpkg-query; do
  command -v "$tool" >/dev/null || { echo "install-redis.sh needs $tool (a Debian machine)" >&2; exit 1; }
done

start=$(date +%s)
mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/debs" "$tmp/out"

# apt-get download as root into a folder _apt cannot write: let it download as root (no sandbox).
download() { (cd "$tmp/debs" && apt-get -q -o APT::Sandbox::User=root download "$@" >&2); }
fetch() {
  download "$@" && return 0
  echo "apt-get download $* failed; running apt-get update once and retrying" >&2
  apt-get -q update >&2
  download "$@"
}

fetch "redis-server${WANT:+=$WANT}" "redis-tools${WANT:+=$WANT}"
server_deb=$(ls "$tmp"/debs/redis-server_*.deb)
tools_deb=$(ls "$tmp"/debs/redis-tools_*.deb)
version=$(dpkg-deb -f "$server_deb" Version)
out=$CACHE/${version#*:}  # no epoch colon in the path (it would split LD_LIBRARY_PATH)

# The libraries redis-tools (which holds the server binary) depends on that are not installed here.
missing=()
for dep in $(dpkg-deb -f "$tools_deb" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/[[:space:]]//g; s/:any$//'); do
  case "$dep" in lib*) ;; *) continue ;; esac
  status=$(dpkg-query -W -f='${Status}' "$dep" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$dep")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "unpacking libraries not installed here: ${missing[*]}" >&2
  fetch "${missing[@]}"
fi

for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/out/root"; done
libdirs='$here/root/usr/lib/x86_64-linux-gnu:$here/root/lib/x86_64-linux-gnu:$here/root/usr/lib:$here/root/lib'
for name in redis-server redis-cli; do
  cat > "$tmp/out/$name" <<EOF
#!/bin/sh
# Debian's $name $version, unpacked by hack/install-redis.sh (not installed system-wide).
here=\$(dirname "\$(readlink -f "\$0")")
LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/root/usr/bin/$name" "\$@"
EOF
  chmod +x "$tmp/out/$name"
done

# It must run: every library found, the version it claims.
here=$tmp/out
if LD_LIBRARY_PATH=$(eval echo "$libdirs") ldd "$here/root/usr/bin/redis-check-rdb" | grep 'not found' >&2; then
  echo "redis-server still lacks the libraries above" >&2; exit 1
fi
"$tmp/out/redis-server" --version >&2

if complete "$out"; then echo "$out"; exit 0; fi  # another run finished first
mv "$tmp/out" "$out"
echo "Debian redis-server $version unpacked in $(( $(date +%s) - start ))s" >&2
echo "$out"
