#!/usr/bin/env bash
# Installs Debian's prometheus package (the server and promtool) for the
# metrics tests. Idempotent: does nothing when both are already there.
# The package's own service is not started: tests run their own
# Prometheus on a loopback port with a config they write.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(promtool --version 2>&1 | head -n1)"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# The package's postinst would start a service; there is none to start in
# a container, and tests do not want one.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null

command -v prometheus >/dev/null
command -v promtool >/dev/null
echo "installed: $(promtool --version 2>&1 | head -n1)"
