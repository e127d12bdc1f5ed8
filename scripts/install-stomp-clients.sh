#!/usr/bin/env bash
# Installs the STOMP client conformance/stomp/test_stompjs.py drives besides
# stomp.py: the pinned @stomp/stompjs with @stomp/tcp-wrapper
# (conformance/stomp/clients), on Debian's Node when there is none.
# Idempotent: returns at once when they are there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/install.sh
. scripts/lib/install.sh

debian_packages node=nodejs,npm
npm_packages conformance/stomp/clients @stomp/stompjs @stomp/tcp-wrapper
echo "@stomp/stompjs: $(npm_version conformance/stomp/clients @stomp/stompjs); @stomp/tcp-wrapper: $(npm_version conformance/stomp/clients @stomp/tcp-wrapper)"
