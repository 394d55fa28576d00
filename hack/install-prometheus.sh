#!/usr/bin/env bash
# Install Prometheus (server and promtool) for the integration tests and `make dev-cluster`.
#
# Debian's package is used: it is the one Prometheus these machines can install without a
# download from a release page. It is built WITHOUT kubernetes_sd_configs, so the testbed's node
# agent publishes pods through http_sd_configs instead (see testbed/noria_testbed/prometheus.py).
# The Debian service is never started: the testbed runs its own Prometheus on a free port.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  prometheus --version 2>&1 | head -1 >&2
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "prometheus is not on PATH; install it (Debian: sudo apt-get install --no-install-recommends prometheus)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d returning 101 tells the package's maintainer scripts not to start the service.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# In case a service manager started it anyway, stop it so it does not hold port 9090.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
prometheus --version 2>&1 | head -1 >&2
