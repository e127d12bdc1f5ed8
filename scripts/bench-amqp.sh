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
# Environment: MESSAGES (200000), BENCH_SECONDS (30, publishing cap per
# scenario), RABBIT_PORT (26672), FERRYMQ_PORT (26772), FERRYMQ_ADDR and
# FERRYMQ_PID for a ferrymq that is already running, KEEP_TMP=1 to keep logs,
# QUIET_WAIT=SECONDS to wait (at most that long) before each broker's run
# until the 1-minute load average is under QUIET_LOAD (1.0): on a shared
# 2-core machine another build halves every figure.
#
# Everything it starts (RabbitMQ, its epmd, ferrymq) is stopped on exit, and
# every wait is bounded.
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-200000}
BENCH_SECONDS=${BENCH_SECONDS:-30}
RABBIT_PORT=${RABBIT_PORT:-26672}
FERRYMQ_PORT=${FERRYMQ_PORT:-26772}
# Away from RabbitMQ's defaults (5672, 25672, 4369, 35672-35682) so a system
# node, if any, is left alone, and below Linux's ephemeral range (32768+),
# where a busy machine's outgoing connections can hold any port.
RABBIT_DIST_PORT=$((RABBIT_PORT + 10))
RABBIT_CTL_PORT_MIN=$((RABBIT_PORT + 20))
RABBIT_EPMD_PORT=$((RABBIT_PORT - 12))
BENCH_TIMEOUT=900 # seconds for one broker's whole run

say() { printf 'bench-amqp: %s\n' "$*" >&2; }

TMP=$(mktemp -d /tmp/ferrymq-bench.XXXXXX)
RABBIT_PID=""
RABBIT_STARTED=""
FERRYMQ_STARTED_PID=""

rabbit_env() {
    env HOME="$TMP/rabbit-home" \
        ERL_EPMD_PORT="$RABBIT_EPMD_PORT" \
        RABBITMQ_NODENAME=benchrabbit@localhost \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$RABBIT_PORT" \
        RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" \
        RABBITMQ_CTL_DIST_PORT_MIN="$RABBIT_CTL_PORT_MIN" \
        RABBITMQ_CTL_DIST_PORT_MAX="$((RABBIT_CTL_PORT_MIN + 9))" \
        RABBITMQ_MNESIA_BASE="$TMP/rabbit/mnesia" \
        RABBITMQ_LOG_BASE="$TMP/rabbit/log" \
        RABBITMQ_PID_FILE="$TMP/rabbit/rabbit.pid" \
        RABBITMQ_CONFIG_FILE="$TMP/rabbit/rabbitmq" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$TMP/rabbit/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$TMP/rabbit/enabled_plugins" \
        RABBITMQ_GENERATED_CONFIG_DIR="$TMP/rabbit/config" \
        RABBITMQ_LOGS="$TMP/rabbit/log/node.log" \
        "$@"
}

cleanup() {
    local status=$?
    if [[ -n "$FERRYMQ_STARTED_PID" ]] && kill -0 "$FERRYMQ_STARTED_PID" 2>/dev/null; then
        kill -TERM "$FERRYMQ_STARTED_PID" 2>/dev/null || true
        stop_pid "$FERRYMQ_STARTED_PID" 5
    fi
    if [[ -n "$RABBIT_STARTED" ]]; then
        rabbit_env timeout 30 /usr/lib/rabbitmq/bin/rabbitmqctl -n benchrabbit@localhost stop \
            >/dev/null 2>&1 || true
        for pid in $RABBIT_PID $RABBIT_STARTED; do stop_pid "$pid" 10; done
        wait "$RABBIT_STARTED" 2>/dev/null || true
        # The epmd on our private port was started for this node only.
        timeout 5 epmd -port "$RABBIT_EPMD_PORT" -kill >/dev/null 2>&1 || true
    fi
    if [[ "${KEEP_TMP:-}" == 1 ]]; then say "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

wait_port() { # addr seconds what [pid that must stay alive]
    local deadline=$((SECONDS + $2))
    until port_open "$1"; do
        if [[ -n "${4:-}" ]] && ! kill -0 "$4" 2>/dev/null; then say "$3 exited before answering on $1"; return 1; fi
        if ((SECONDS >= deadline)); then say "$3 did not answer on $1 within $2 s"; return 1; fi
        sleep 0.5
    done
}

stop_pid() { # pid seconds: wait for it to go, then kill it
    for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

# --- RabbitMQ --------------------------------------------------------------
if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    say "installing rabbitmq-server from Debian's packages"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi
if port_open "127.0.0.1:$RABBIT_PORT"; then
    say "port $RABBIT_PORT is already taken; set RABBIT_PORT"; exit 1
fi
mkdir -p "$TMP/rabbit/log" "$TMP/rabbit/config" "$TMP/rabbit-home"
echo '[].' >"$TMP/rabbit/enabled_plugins"
echo '[].' >"$TMP/rabbit/advanced.config"
: >"$TMP/rabbit/rabbitmq.conf"
# A private cookie under the private HOME, readable by its owner only, as Erlang requires.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/rabbit-home/.erlang.cookie"
chmod 400 "$TMP/rabbit-home/.erlang.cookie"
epmd -port "$RABBIT_EPMD_PORT" -daemon
say "starting RabbitMQ ($(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')) on 127.0.0.1:$RABBIT_PORT"
rabbit_env /usr/lib/rabbitmq/bin/rabbitmq-server >"$TMP/rabbit/stdout.log" 2>&1 &
RABBIT_STARTED=$!
if ! wait_port "127.0.0.1:$RABBIT_PORT" 90 RabbitMQ "$RABBIT_STARTED"; then
    tail -n 30 "$TMP/rabbit/stdout.log" >&2 || true
    exit 1
fi
for _ in $(seq 50); do [[ -s "$TMP/rabbit/rabbit.pid" ]] && break; sleep 0.2; done
RABBIT_PID=$(cat "$TMP/rabbit/rabbit.pid" 2>/dev/null || true)

# --- the load generator ----------------------------------------------------
say "building the bench (release)"
timeout 1200 cargo build --release --quiet --bin ferrymq --example ferrymq_bench
if target/release/ferrymq bench --help 2>&1 | grep -q -- '--amqp'; then
    BENCH=(target/release/ferrymq bench)
else
    BENCH=(target/release/examples/ferrymq_bench)
fi

load1() { cut -d' ' -f1 /proc/loadavg; }

wait_quiet() { # bounded by QUIET_WAIT seconds
    local deadline=$((SECONDS + ${QUIET_WAIT:-0}))
    while awk -v l="$(load1)" -v q="${QUIET_LOAD:-1.0}" 'BEGIN { exit !(l >= q) }' && ((SECONDS < deadline)); do
        sleep 10
    done
}

run_bench() { # label addr pid [args...] -> markdown rows on stdout
    local label=$1 addr=$2 pid=$3; shift 3
    wait_quiet
    say "$label: load average before the run $(load1)"
    local pid_args=()
    [[ -n "$pid" ]] && pid_args=(--broker-pid "$pid")
    timeout "$BENCH_TIMEOUT" "${BENCH[@]}" --amqp "$addr" --label "$label" --markdown \
        --messages "$MESSAGES" --seconds "$BENCH_SECONDS" "${pid_args[@]}" "$@" \
        || say "$label: the bench reported failures (rows say which) or timed out"
    say "$label: load average after the run $(load1)"
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
    FERRYMQ_STARTED_PID=$!
    if wait_port "127.0.0.1:$FERRYMQ_PORT" 20 ferrymq "$FERRYMQ_STARTED_PID"; then
        FERRY_ADDR="127.0.0.1:$FERRYMQ_PORT"
        FERRY_PID=$FERRYMQ_STARTED_PID
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
    mapfile -t SCENARIOS < <("${BENCH[@]}" --list-scenarios)
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
' "$TMP/rabbit.md" "$TMP/ferrymq.md"
