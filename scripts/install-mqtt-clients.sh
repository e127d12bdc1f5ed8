#!/usr/bin/env bash
# Installs the MQTT clients conformance/mqtt/test_other_clients.py drives
# besides paho: Debian's mosquitto-clients (mosquitto_pub, mosquitto_sub,
# mosquitto_rr) and the pinned MQTT.js (conformance/mqtt/clients), on
# Debian's Node when there is none. Idempotent: returns at once when both
# are there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/install.sh
. scripts/lib/install.sh

debian_packages mosquitto_sub=mosquitto-clients node=nodejs,npm
npm_packages conformance/mqtt/clients mqtt
echo "mosquitto-clients: $(dpkg-query -W -f '${Version}' mosquitto-clients 2>/dev/null || echo '?'); MQTT.js: $(npm_version conformance/mqtt/clients mqtt)"
