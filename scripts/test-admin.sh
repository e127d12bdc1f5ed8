#!/usr/bin/env bash
# Only the admin conformance suite against the release binary: promtool on
# /metrics, a real Prometheus scraping a loaded broker and answering every
# dashboard query, and the console in headless Chromium (screenshots go to
# artifacts/). scripts/test runs it with everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prometheus.sh
bash scripts/install-chromium.sh
venv=.venv
if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r conformance/requirements.txt
cargo build --release --bin ferrymq
mkdir -p artifacts
FERRYMQ_BIN="$PWD/target/release/ferrymq" "$venv/bin/python" -m pytest -q conformance/admin "$@"
