#!/usr/bin/env bash
# The admin conformance suite against the release binary: promtool on
# /metrics, a real Prometheus scraping a loaded broker and answering every
# dashboard query, and the console in headless Chromium. Installs what it
# needs first (each install script is idempotent). Screenshots go to
# artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-prometheus.sh
bash scripts/install-chromium.sh
cargo build --release --bin ferrymq
venv=conformance/.venv
if [ ! -x "$venv/bin/pytest" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r conformance/admin/requirements.txt
mkdir -p artifacts
FERRYMQ_BIN="$PWD/target/release/ferrymq" "$venv/bin/pytest" -c conformance/admin/pytest.ini conformance/admin "$@"
