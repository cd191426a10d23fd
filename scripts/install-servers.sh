#!/usr/bin/env bash
# Installs the real servers the test suite talks to, when missing and when we may (root/sudo).
# VictoriaMetrics speaks the InfluxDB v2 write API; no InfluxDB 2/3 server is packaged here.
set -u
if command -v victoria-metrics >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install-servers: victoria-metrics is missing and we cannot install it (not root); its tests will be skipped" >&2
  exit 0
fi
echo "install-servers: installing victoria-metrics from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || { echo "install-servers: apt-get update failed" >&2; exit 1; }
# The package enables a systemd service; tests start their own instance on a free port instead.
$SUDO apt-get install -y -qq victoria-metrics >/dev/null || { echo "install-servers: install failed" >&2; exit 1; }
