#!/usr/bin/env bash
# Installs Debian's chromium and the pinned playwright-core that drives it
# (conformance/admin/browser). Idempotent. playwright-core downloads no
# browser of its own; the tests point it at /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d conformance/admin/browser/node_modules/playwright-core ]; then
    (cd conformance/admin/browser && npm ci --no-audit --no-fund --silent)
fi
echo "chromium: $(chromium --version 2>/dev/null | tail -n1); playwright-core: $(node -p "require('./conformance/admin/browser/node_modules/playwright-core/package.json').version")"
