#!/usr/bin/env bash
# Installs the MQTT clients conformance/mqtt/test_other_clients.py drives
# besides paho: Debian's mosquitto-clients (mosquitto_pub, mosquitto_sub,
# mosquitto_rr) and the pinned MQTT.js (conformance/mqtt/clients).
# Idempotent: returns at once when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
missing=()
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -d conformance/mqtt/clients/node_modules/mqtt ]; then
    (cd conformance/mqtt/clients && npm ci --no-audit --no-fund --silent)
fi
echo "mosquitto-clients: $(dpkg-query -W -f '${Version}' mosquitto-clients 2>/dev/null || echo '?'); MQTT.js: $(node -p "require('./conformance/mqtt/clients/node_modules/mqtt/package.json').version")"
