#!/usr/bin/env bash
# Installs the real peers the test suite talks to, when missing and when we may (root/sudo):
# VictoriaMetrics (the InfluxDB v2 write API; no InfluxDB 2/3 server is packaged here),
# InfluxDB 1.x, etcd, socat (serial pty pairs), Mosquitto (MQTT), and chromium with its driver
# (the console's browser test), all from Debian's packages.
set -u
# command -> Debian package
declare -A PACKAGES=(
  [victoria-metrics]=victoria-metrics
  [influxd]=influxdb
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [socat]=socat
  [mosquitto]=mosquitto
  [mosquitto_passwd]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [chromium]=chromium
  [chromedriver]=chromium-driver
)
missing=()
for cmd in "${!PACKAGES[@]}"; do
  # mosquitto lives in /usr/sbin, which a non-root PATH may lack.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${PACKAGES[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install-servers: missing ${missing[*]} and we cannot install (not root); their tests will be skipped" >&2
  exit 0
fi
echo "install-servers: installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || { echo "install-servers: apt-get update failed" >&2; exit 1; }
# The packages enable systemd services; tests start their own instances on free ports instead.
$SUDO apt-get install -y -qq $(printf "%s\n" "${missing[@]}" | sort -u) >/dev/null || { echo "install-servers: install failed" >&2; exit 1; }
