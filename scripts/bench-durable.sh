#!/usr/bin/env bash
# Durable AMQP side by side: ferrymq, and a private RabbitMQ node with
# classic and with quorum queues, the same load generator against each.
#
#   scripts/bench-durable.sh                      # 5,000,000-message backlog
#   BACKLOG=200000 MESSAGES=50000 scripts/bench-durable.sh
#   SKIP=quorum scripts/bench-durable.sh
#
# Per broker, one after another:
#   durable-1k, durable-4x4-1k   durable queue, persistent 1 KiB messages,
#                                publisher confirms, manual acks, 1→1 and 4→4
#                                (MESSAGES each, 200000; BENCH_SECONDS cap, 30)
#   backlog-1k                   BACKLOG persistent 1 KiB messages with
#                                confirms into one durable queue with no
#                                consumer, then drained in order with acks
#                                (BACKLOG_SECONDS cap on filling, 1800)
# and then markdown tables with ferrymq's ratio to the faster RabbitMQ.
#
# Environment: MESSAGES, RUNS (3 runs of the durable rows, shown as
# medians; the backlog runs once), BENCH_SECONDS, BACKLOG (5000000), BACKLOG_SECONDS,
# BENCH_TIMEOUT (3600 s, one run of the bench), RABBIT_PORT (28672),
# FERRYMQ_PORT (28772), SKIP=ferrymq,classic,quorum, DATA_PARENT (/var/tmp:
# where the temporary directory with every broker's data goes; it must be a
# real disk, not tmpfs, as the point is to measure fsync), KEEP_TMP=1,
# QUIET_WAIT=SECONDS (wait, at most that long, before each broker's run
# until the 1-minute load average is under QUIET_LOAD, 1.0).
#
# It refuses to start unless DATA_PARENT has room for three times the
# backlog's bodies plus 2 GiB. Everything it starts is stopped and its data
# removed on exit, every wait is bounded, and it holds
# /tmp/ferrymq-bench.lock for the whole run.
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-200000}
BENCH_SECONDS=${BENCH_SECONDS:-30}
BACKLOG=${BACKLOG:-5000000}
BACKLOG_SECONDS=${BACKLOG_SECONDS:-1800}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-3600}
RABBIT_PORT=${RABBIT_PORT:-28672}
FERRYMQ_PORT=${FERRYMQ_PORT:-28772}
DATA_PARENT=${DATA_PARENT:-/var/tmp}
SKIP=${SKIP:-}
SCRIPT=bench-durable
RABBIT_NODE=benchdurable@localhost

say() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }

# --- the disk ----------------------------------------------------------------
mkdir -p "$DATA_PARENT"
fstype=$(stat -f -c %T "$DATA_PARENT")
case $fstype in
    tmpfs | ramfs)
        say "$DATA_PARENT is $fstype; the journal must be measured on a real disk: set DATA_PARENT"
        exit 1 ;;
esac
need_kib=$((BACKLOG * 3 + 2 * 1024 * 1024)) # 3 KiB per 1 KiB message, plus 2 GiB
free_kib=$(df -Pk "$DATA_PARENT" | awk 'NR == 2 { print $4 }')
if ((free_kib < need_kib)); then
    say "$DATA_PARENT has $((free_kib / 1024)) MiB free; a backlog of $BACKLOG 1 KiB messages needs $((need_kib / 1024)) MiB with margin. Lower BACKLOG or set DATA_PARENT."
    exit 1
fi
TMP=$(mktemp -d "$DATA_PARENT/ferrymq-bench-durable.XXXXXX")
# shellcheck source=lib/bench.sh
. scripts/lib/bench.sh
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
bench_lock
say "data in $TMP ($fstype, $((free_kib / 1024 / 1024)) GiB free)"

for port in "$RABBIT_PORT" "$FERRYMQ_PORT"; do
    if port_open "127.0.0.1:$port"; then say "port $port is already taken"; exit 1; fi
done

build_release

# run_broker LABEL ADDR PID [bench args...]: the durable rows, then the backlog.
run_broker() {
    local label=$1 addr=$2 pid=$3; shift 3
    bench_run "$label" "$pid" --amqp "$addr" --scenario durable-1k --scenario durable-4x4-1k "$@" \
        | tee "$TMP/$label.md" >&2
    say "$label: backlog of $BACKLOG messages"
    # One run: a long one, and its rows have their own columns.
    RUNS=1 BENCH_SECONDS=$BACKLOG_SECONDS bench_run "$label" "$pid" --amqp "$addr" \
        --scenario backlog-1k --backlog "$BACKLOG" "$@" | tee "$TMP/$label-backlog.md" >&2
}

for b in ferrymq rabbitmq-classic rabbitmq-quorum; do : >"$TMP/$b.md"; : >"$TMP/$b-backlog.md"; done

# --- ferrymq ---------------------------------------------------------------
if ! skipped ferrymq; then
    mkdir -p "$TMP/ferrymq"
    if start_tracked ferrymq "127.0.0.1:$FERRYMQ_PORT" "$TMP/ferrymq.log" \
        target/release/ferrymq serve --amqp "127.0.0.1:$FERRYMQ_PORT" --mqtt off --stomp off --http off \
        --data-dir "$TMP/ferrymq"; then
        run_broker ferrymq "127.0.0.1:$FERRYMQ_PORT" "$STARTED_PID"
    fi
    stop_tracked "$STARTED_PID"
    rm -rf "$TMP/ferrymq" # its journal: room for RabbitMQ's
fi

# --- RabbitMQ: classic, then quorum queues on the same node -----------------
if ! skipped classic || ! skipped quorum; then
    if rabbit_start "" "" "127.0.0.1:$RABBIT_PORT"; then
        skipped classic || run_broker rabbitmq-classic "127.0.0.1:$RABBIT_PORT" "$RABBIT_PID"
        skipped quorum || run_broker rabbitmq-quorum "127.0.0.1:$RABBIT_PORT" "$RABBIT_PID" --queue-type quorum
    fi
    rabbit_stop
fi

# --- the tables ------------------------------------------------------------
BROKERS="ferrymq:ferrymq,rabbitmq-classic:RabbitMQ classic,rabbitmq-quorum:RabbitMQ quorum"
compare_tables "$BROKERS" "$TMP/ferrymq.md" "$TMP/rabbitmq-classic.md" "$TMP/rabbitmq-quorum.md"
runs_note "$TMP/ferrymq.md" "$TMP/rabbitmq-classic.md" "$TMP/rabbitmq-quorum.md"
echo
# The backlog rows as the bench printed them, and the ratios.
cat "$TMP"/*-backlog.md | awk -F'|' '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    $2 ~ /broker/ { if (!h++) { print; getline; print }; next }
    $2 ~ /---/ { next }
    NF > 10 {
        print
        b = trim($2); fill[b] = trim($5); drain[b] = trim($9)
        if (b != "ferrymq" && fill[b] ~ /^[0-9]+$/ && fill[b] + 0 > bf) bf = fill[b] + 0
        if (b != "ferrymq" && drain[b] ~ /^[0-9]+$/ && drain[b] + 0 > bd) bd = drain[b] + 0
    }
    END {
        if (fill["ferrymq"] ~ /^[0-9]+$/ && bf > 0)
            printf "\nferrymq / faster RabbitMQ: fill %.2f, drain %.2f\n", fill["ferrymq"] / bf, (bd > 0 ? drain["ferrymq"] / bd : 0)
    }
'
load_note "$TMP/ferrymq.md" "$TMP/rabbitmq-classic.md" "$TMP/rabbitmq-quorum.md" \
    "$TMP/ferrymq-backlog.md" "$TMP/rabbitmq-classic-backlog.md" "$TMP/rabbitmq-quorum-backlog.md"
