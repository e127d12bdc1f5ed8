#!/usr/bin/env bash
# AMQP 0-9-1 side by side: a private RabbitMQ node and ferrymq, the same
# pipelined load generator (src/bench/) against each, one markdown table
# with ferrymq/RabbitMQ ratios at the end.
#
#   scripts/bench-amqp.sh                     # all scenarios, 200k messages each
#   MESSAGES=50000 scripts/bench-amqp.sh --scenario transient-1k
#   FERRYMQ_ADDR=127.0.0.1:5672 FERRYMQ_PID=1234 scripts/bench-amqp.sh
#
# Extra arguments go to the bench (e.g. --scenario NAME, repeatable).
# Environment: MESSAGES (200000), RUNS (3 runs of each scenario per broker;
# the table shows their medians), BENCH_SECONDS (30, publishing cap per
# scenario), RABBIT_PORT (26672), FERRYMQ_PORT (26772), FERRYMQ_ADDR and
# FERRYMQ_PID for a ferrymq that is already running, KEEP_TMP=1 to keep logs,
# QUIET_WAIT=SECONDS to wait (at most that long) before each broker's run
# until the 1-minute load average is under QUIET_LOAD (1.0): on a shared
# 2-core machine another build halves every figure.
#
# Everything it starts (RabbitMQ, its epmd, ferrymq) is stopped on exit, and
# every wait is bounded. It holds /tmp/ferrymq-bench.lock for the whole run
# (scripts/lib/bench.sh), so benchmark runs never overlap.
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-200000}
BENCH_SECONDS=${BENCH_SECONDS:-30}
RABBIT_PORT=${RABBIT_PORT:-26672}
FERRYMQ_PORT=${FERRYMQ_PORT:-26772}
# The defaults sit below Linux's ephemeral range (32768+), where a busy
# machine's outgoing connections can hold any port.
SCRIPT=bench-amqp
TMP=$(mktemp -d /tmp/ferrymq-bench.XXXXXX)
RABBIT_NODE=benchrabbit@localhost
# shellcheck source=lib/bench.sh
. scripts/lib/bench.sh
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
bench_lock

# --- RabbitMQ --------------------------------------------------------------
if port_open "127.0.0.1:$RABBIT_PORT"; then
    say "port $RABBIT_PORT is already taken; set RABBIT_PORT"; exit 1
fi
rabbit_start "" "" "127.0.0.1:$RABBIT_PORT"

# --- the load generator ----------------------------------------------------
build_release

run_bench() { # label addr pid [args...] -> markdown rows on stdout
    local label=$1 addr=$2 pid=$3; shift 3
    bench_run "$label" "$pid" --amqp "$addr" "$@"
}

# --- ferrymq ---------------------------------------------------------------
FERRY_ADDR=""
FERRY_PID=""
if [[ -n "${FERRYMQ_ADDR:-}" ]]; then
    FERRY_ADDR=$FERRYMQ_ADDR
    FERRY_PID=${FERRYMQ_PID:-}
    port_open "$FERRY_ADDR" || { say "FERRYMQ_ADDR=$FERRY_ADDR does not answer; skipping ferrymq"; FERRY_ADDR=""; }
elif [[ -x target/release/ferrymq ]]; then
    mkdir -p "$TMP/ferrymq"
    target/release/ferrymq serve --amqp "127.0.0.1:$FERRYMQ_PORT" --mqtt off --stomp off --http off \
        --data-dir "$TMP/ferrymq" >"$TMP/ferrymq.log" 2>&1 &
    track_pid $!
    if wait_port "127.0.0.1:$FERRYMQ_PORT" 20 ferrymq "$!"; then
        FERRY_ADDR="127.0.0.1:$FERRYMQ_PORT"
        FERRY_PID=$!
    else
        say "ferrymq (target/release/ferrymq serve) did not start; skipping it. Its output:"
        tail -n 10 "$TMP/ferrymq.log" >&2 || true
    fi
else
    say "no target/release/ferrymq and no FERRYMQ_ADDR; skipping ferrymq"
fi

# --- the runs ---------------------------------------------------------------
# Scenario by scenario, RabbitMQ then ferrymq, so both see about the same
# background load even when it drifts during the run.
SCENARIOS=()
EXTRA=()
while (($#)); do
    case $1 in
        --scenario) SCENARIOS+=("${2:?--scenario needs a name}"); shift 2 ;;
        --scenario=*) SCENARIOS+=("${1#--scenario=}"); shift ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if ((${#SCENARIOS[@]} == 0)); then
    mapfile -t SCENARIOS < <("${BENCH[@]}" --amqp x --list-scenarios)
    ((${#SCENARIOS[@]})) || { say "the bench listed no scenarios"; exit 1; }
fi
: >"$TMP/rabbit.md"
: >"$TMP/ferrymq.md"
for scenario in "${SCENARIOS[@]}"; do
    run_bench rabbitmq "127.0.0.1:$RABBIT_PORT" "$RABBIT_PID" --scenario "$scenario" "${EXTRA[@]}" \
        | tee -a "$TMP/rabbit.md" >&2
    if [[ -n "$FERRY_ADDR" ]]; then
        run_bench ferrymq "$FERRY_ADDR" "$FERRY_PID" --scenario "$scenario" "${EXTRA[@]}" \
            | tee -a "$TMP/ferrymq.md" >&2
    fi
done

# --- one table -------------------------------------------------------------
# Each broker's runs of a scenario count as their median (median_rows).
# Bench rows: | broker | scenario | messages | msg/s delivered | msg/s published
#             | p50 | p99 | peak RSS MiB | broker CPU µs/msg |
awk -F'|' '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    function num(v) { return v ~ /^[0-9.]+$/ }
    function ratio(f, r) { return (num(f) && num(r) && r + 0 > 0) ? sprintf("%.2f", f / r) : "pending" }
    function cell(v) { return v == "" ? "pending" : v }
    $2 ~ /broker/ || $2 ~ /---/ || NF < 10 { next }
    {
        s = trim($3)
        if (trim($4) ~ /^failed/) { $5 = "failed"; $7 = ""; $8 = ""; $9 = ""; $10 = "" }
        lat = trim($7) == "" ? "" : trim($7) "/" trim($8)
        if (FILENAME == ARGV[1]) { order[++n] = s; rr[s] = trim($5); rl[s] = lat; rm[s] = trim($9); rc[s] = trim($10) }
        else { fr[s] = trim($5); fl[s] = lat; fm[s] = trim($9); fc[s] = trim($10) }
    }
    END {
        print "| scenario | RabbitMQ msg/s | ferrymq msg/s | ferrymq/RabbitMQ | p50/p99 ms RabbitMQ | p50/p99 ms ferrymq | RSS MiB RabbitMQ | RSS MiB ferrymq | CPU µs/msg RabbitMQ | CPU µs/msg ferrymq |"
        print "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        for (i = 1; i <= n; i++) {
            s = order[i]
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s, rr[s], cell(fr[s]), ratio(fr[s], rr[s]), rl[s], cell(fl[s]), rm[s], cell(fm[s]), rc[s], cell(fc[s])
        }
    }
' <(median_rows "$TMP/rabbit.md") <(median_rows "$TMP/ferrymq.md")
load_note "$TMP/rabbit.md" "$TMP/ferrymq.md"
runs_note "$TMP/rabbit.md" "$TMP/ferrymq.md"
