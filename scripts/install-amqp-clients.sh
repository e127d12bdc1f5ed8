#!/usr/bin/env bash
# Installs the AMQP clients conformance/amqp drives besides pika and
# py-amqp: the pinned amqplib (conformance/amqp/clients), on Debian's Node
# when there is none, and rabbitmq-c's command-line tools (Debian's
# amqp-tools). Idempotent: returns at once when they are there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
missing=()
command -v amqp-publish >/dev/null 2>&1 || missing+=(amqp-tools)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -d conformance/amqp/clients/node_modules/amqplib ]; then
    (cd conformance/amqp/clients && npm ci --no-audit --no-fund --silent)
fi
echo "amqp-tools: $(dpkg-query -W -f '${Version}' amqp-tools 2>/dev/null || echo '?'); amqplib: $(node -p "require('./conformance/amqp/clients/node_modules/amqplib/package.json').version")"
