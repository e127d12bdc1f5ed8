#!/usr/bin/env bash
# Installs the AMQP client conformance/amqp/test_amqplib.py drives besides
# pika and py-amqp: the pinned amqplib (conformance/amqp/clients), on
# Debian's Node when there is none. Idempotent: returns at once when it
# is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d conformance/amqp/clients/node_modules/amqplib ]; then
    (cd conformance/amqp/clients && npm ci --no-audit --no-fund --silent)
fi
echo "amqplib: $(node -p "require('./conformance/amqp/clients/node_modules/amqplib/package.json').version")"
