#!/usr/bin/env bash
# Installs the STOMP client conformance/stomp/test_stompjs.py drives besides
# stomp.py: the pinned @stomp/stompjs with @stomp/tcp-wrapper
# (conformance/stomp/clients), on Debian's Node when there is none.
# Idempotent: returns at once when they are there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
if ! command -v node >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d conformance/stomp/clients/node_modules/@stomp/stompjs ] ||
    [ ! -d conformance/stomp/clients/node_modules/@stomp/tcp-wrapper ]; then
    (cd conformance/stomp/clients && npm ci --no-audit --no-fund --silent)
fi
version() {
    node -p "require('./conformance/stomp/clients/node_modules/@stomp/$1/package.json').version"
}
echo "@stomp/stompjs: $(version stompjs); @stomp/tcp-wrapper: $(version tcp-wrapper)"
