#!/usr/bin/env bash
# Memory per idle MQTT connection: ferrymq and Mosquitto side by side.
# Opens N (10000) 3.1.1 connections that CONNECT and then stay silent
# (keepalive 600 s), and reports each broker's resident memory growth per
# connection.
#
#   scripts/mqtt-idle-memory.sh                 # 10000 connections
#   CONNECTIONS=2000 FERRYMQ_BIN=target/debug/ferrymq scripts/mqtt-idle-memory.sh
#
# Needs python3, and mosquitto (Debian package) for the comparison row.
# Both ends run on this machine, so the fd limit must allow about twice
# CONNECTIONS plus some. Everything it starts is stopped on exit; every
# wait is bounded. The default ports sit below the ephemeral range, which
# the client sockets use up. It holds /tmp/ferrymq-bench.lock while it runs.
set -euo pipefail

cd "$(dirname "$0")/.."
N=${CONNECTIONS:-10000}
FERRYMQ_BIN=${FERRYMQ_BIN:-target/release/ferrymq}
FERRYMQ_PORT=${FERRYMQ_PORT:-21883}
MOSQUITTO_PORT=${MOSQUITTO_PORT:-21884}
# One benchmark run at a time on this machine (see scripts/lib/bench.sh).
exec {lock_fd}>>"${BENCH_LOCK:-/tmp/ferrymq-bench.lock}"
flock -w "${LOCK_WAIT:-3600}" "$lock_fd" || { echo "another benchmark run holds the lock" >&2; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/idle.py" <<'PY'
import asyncio, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
def connect(cid):
    body = b"\x00\x04MQTT\x04\x02" + (600).to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body
async def one(i, keep):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(connect(b"idle-%d" % i))
    await w.drain()
    assert await asyncio.wait_for(r.readexactly(4), 30) == b"\x20\x02\x00\x00"
    keep.append(w)
async def main():
    keep = []
    for start in range(0, n, 500):
        await asyncio.gather(*(one(i, keep) for i in range(start, min(n, start + 500))))
    print("connected", len(keep), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
PY

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

wait_port() {
    for _ in $(seq 1 300); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    cat "$TMP"/*.log >&2
    return 1
}

measure() { # name pid port
    local before after
    wait_port "$3"
    before=$(rss_kb "$2")
    mkfifo "$TMP/hold-$1"
    python3 "$TMP/idle.py" "$N" "$3" < "$TMP/hold-$1" > "$TMP/out-$1" &
    local client=$!
    PIDS+=("$client")
    exec 9> "$TMP/hold-$1"
    for _ in $(seq 1 600); do
        grep -q connected "$TMP/out-$1" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || { echo "client for $1 failed" >&2; cat "$TMP/out-$1" >&2; return 1; }
        sleep 0.1
    done
    grep -q connected "$TMP/out-$1" || { echo "$1: connections not up in 60 s" >&2; return 1; }
    after=$(rss_kb "$2")
    exec 9>&-
    printf '| %s | %d | %d | %d | %.2f |\n' "$1" "$N" "$before" "$after" \
        "$(echo "($after - $before) / $N" | bc -l)"
}

echo "| broker | connections | RSS before (KiB) | RSS after (KiB) | KiB per connection |"
echo "|---|---|---|---|---|"
"$FERRYMQ_BIN" serve --amqp off --stomp off --http off --mqtt "127.0.0.1:$FERRYMQ_PORT" \
    --data-dir "$TMP/data" > "$TMP/ferrymq.log" 2>&1 &
PIDS+=($!)
measure ferrymq "$!" "$FERRYMQ_PORT"
if command -v mosquitto > /dev/null; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$MOSQUITTO_PORT" > "$TMP/mosquitto.conf"
    mosquitto -c "$TMP/mosquitto.conf" > "$TMP/mosquitto.log" 2>&1 &
    PIDS+=($!)
    measure mosquitto "$!" "$MOSQUITTO_PORT"
fi
