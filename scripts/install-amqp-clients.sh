#!/usr/bin/env bash
# Installs the AMQP clients conformance/amqp drives besides pika and
# py-amqp: the pinned amqplib (conformance/amqp/clients), on Debian's Node
# when there is none, and rabbitmq-c's command-line tools (Debian's
# amqp-tools). Idempotent: returns at once when they are there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/install.sh
. scripts/lib/install.sh

debian_packages amqp-publish=amqp-tools node=nodejs,npm
npm_packages conformance/amqp/clients amqplib
echo "amqp-tools: $(dpkg-query -W -f '${Version}' amqp-tools 2>/dev/null || echo '?'); amqplib: $(npm_version conformance/amqp/clients amqplib)"
