#!/usr/bin/env bash
# STOMP side by side: a private RabbitMQ node with its STOMP plugin, a
# private ActiveMQ broker and ferrymq, the same load generator
# (src/bench/stomp.rs) against each, one markdown table with ferrymq's ratio
# to the faster of the other two at the end.
#
#   scripts/bench-stomp.sh                          # all STOMP scenarios, 200k messages
#   MESSAGES=50000 scripts/bench-stomp.sh --scenario stomp-auto-16b
#
# Extra arguments go to the bench (e.g. --scenario NAME, repeatable).
# Environment: MESSAGES (200000), RUNS (3 runs per broker; the table shows
# medians), BENCH_SECONDS (30, publishing cap per scenario), WARMUP (20000 messages per scenario first, unreported: the JVM
# compiles ActiveMQ's hot paths during its first run), RABBIT_PORT (45672,
# AMQP; STOMP on RABBIT_PORT+1), ACTIVEMQ_PORT (46613), FERRYMQ_PORT
# (46713), KEEP_TMP=1 to keep logs, QUIET_WAIT=SECONDS to wait (at most that
# long) before each broker's run until the 1-minute load average is under
# QUIET_LOAD (1.0): on a shared 2-core machine another build halves every
# figure. SKIP=rabbitmq,activemq,ferrymq leaves brokers out.
#
# RabbitMQ and ActiveMQ come from Debian's packages, installed when missing.
# Everything it starts is stopped on exit, and every wait is bounded. It
# holds /tmp/ferrymq-bench.lock for the whole run (scripts/lib/bench.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-200000}
BENCH_SECONDS=${BENCH_SECONDS:-30}
WARMUP=${WARMUP:-20000}
RABBIT_PORT=${RABBIT_PORT:-45672}
RABBIT_STOMP_PORT=$((RABBIT_PORT + 1))
ACTIVEMQ_PORT=${ACTIVEMQ_PORT:-46613}
FERRYMQ_PORT=${FERRYMQ_PORT:-46713}
SKIP=${SKIP:-}
RABBIT_EPMD_PORT=$((RABBIT_PORT - 1300))
SCRIPT=bench-stomp
TMP=$(mktemp -d /tmp/ferrymq-bench-stomp.XXXXXX)
RABBIT_NODE=benchstomp@localhost
# shellcheck source=lib/bench.sh
. scripts/lib/bench.sh
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
bench_lock

for port in "$RABBIT_PORT" "$RABBIT_STOMP_PORT" "$ACTIVEMQ_PORT" "$FERRYMQ_PORT"; do
    if port_open "127.0.0.1:$port"; then say "port $port is already taken"; exit 1; fi
done

# --- the load generator ----------------------------------------------------
build_release

run_bench() { # label addr pid [args...] -> markdown rows on stdout
    local label=$1 addr=$2 pid=$3; shift 3
    if ((WARMUP > 0)); then
        say "$label: warming up with $WARMUP messages per scenario"
        timeout "$BENCH_TIMEOUT" "${BENCH[@]}" --stomp "$addr" --label "$label" \
            --messages "$WARMUP" --seconds "$BENCH_SECONDS" "$@" >/dev/null \
            || say "$label: the warm-up reported failures"
    fi
    bench_run "$label" "$pid" --stomp "$addr" "$@"
}

: >"$TMP/rabbitmq.md"
: >"$TMP/activemq.md"
: >"$TMP/ferrymq.md"

# --- RabbitMQ with its STOMP plugin -----------------------------------------
if ! skipped rabbitmq; then
    if rabbit_start rabbitmq_stomp "stomp.listeners.tcp.1 = 127.0.0.1:$RABBIT_STOMP_PORT
" "127.0.0.1:$RABBIT_STOMP_PORT"; then
        run_bench rabbitmq "127.0.0.1:$RABBIT_STOMP_PORT" "$RABBIT_PID" "$@" | tee "$TMP/rabbitmq.md" >&2
    fi
    rabbit_stop
fi

# --- ActiveMQ --------------------------------------------------------------
if ! skipped activemq; then
    [[ -f /usr/share/activemq/bin/activemq.jar ]] || apt_install activemq
    mkdir -p "$TMP/activemq/conf" "$TMP/activemq/data"
    # Its STOMP connector only, on NIO as ActiveMQ recommends for many
    # clients; non-persistent, as the scenarios' messages are.
    cat >"$TMP/activemq/conf/activemq.xml" <<EOF
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="bench"
          persistent="false" dataDirectory="$TMP/activemq/data">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp+nio://127.0.0.1:$ACTIVEMQ_PORT"/>
    </transportConnectors>
  </broker>
</beans>
EOF
    say "starting ActiveMQ ($(dpkg-query -W -f '${Version}' activemq 2>/dev/null || echo '?')) with STOMP on 127.0.0.1:$ACTIVEMQ_PORT"
    (cd "$TMP/activemq" && exec java -Xms512M -Xmx512M \
        -Dactivemq.home=/usr/share/activemq -Dactivemq.base="$TMP/activemq" \
        -Dactivemq.conf="$TMP/activemq/conf" -Dactivemq.data="$TMP/activemq/data" \
        -jar /usr/share/activemq/bin/activemq.jar start "xbean:file:$TMP/activemq/conf/activemq.xml" \
        >"$TMP/activemq/stdout.log" 2>&1) &
    ACTIVEMQ_STARTED=$!
    track_pid "$ACTIVEMQ_STARTED"
    if wait_port "127.0.0.1:$ACTIVEMQ_PORT" 90 ActiveMQ "$ACTIVEMQ_STARTED"; then
        run_bench activemq "127.0.0.1:$ACTIVEMQ_PORT" "$ACTIVEMQ_STARTED" "$@" | tee "$TMP/activemq.md" >&2
    else
        tail -n 30 "$TMP/activemq/stdout.log" >&2 || true
    fi
    kill -TERM "$ACTIVEMQ_STARTED" 2>/dev/null || true
    stop_pid "$ACTIVEMQ_STARTED" 10
fi

# --- ferrymq ---------------------------------------------------------------
if ! skipped ferrymq; then
    mkdir -p "$TMP/ferrymq"
    if start_tracked ferrymq "127.0.0.1:$FERRYMQ_PORT" "$TMP/ferrymq.log" \
        target/release/ferrymq serve --stomp "127.0.0.1:$FERRYMQ_PORT" --amqp off --mqtt off --http off \
        --data-dir "$TMP/ferrymq"; then
        run_bench ferrymq "127.0.0.1:$FERRYMQ_PORT" "$STARTED_PID" "$@" | tee "$TMP/ferrymq.md" >&2
    fi
fi

# --- one table -------------------------------------------------------------
# Bench rows: | broker | scenario | messages | msg/s delivered | msg/s published | p50 | p99 | RSS |
awk -F'|' '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    function num(v) { return v ~ /^[0-9.]+$/ }
    function cell(v) { return v == "" ? "-" : v }
    $2 ~ /broker/ || $2 ~ /---/ || NF < 9 { next }
    {
        b = trim($2); s = trim($3)
        if (!(s in seen)) { seen[s] = 1; order[++n] = s }
        if (trim($4) ~ /^failed/) { rate[b, s] = "failed"; lat[b, s] = "-"; next }
        rate[b, s] = trim($5); lat[b, s] = trim($7) "/" trim($8)
    }
    END {
        print "| scenario | RabbitMQ msg/s | ActiveMQ msg/s | ferrymq msg/s | ferrymq / best other | RabbitMQ p50/p99 ms | ActiveMQ p50/p99 ms | ferrymq p50/p99 ms |"
        print "|---|--:|--:|--:|--:|--:|--:|--:|"
        for (i = 1; i <= n; i++) {
            s = order[i]
            r = rate["rabbitmq", s]; a = rate["activemq", s]; f = rate["ferrymq", s]
            best = 0
            if (num(r) && r + 0 > best) best = r + 0
            if (num(a) && a + 0 > best) best = a + 0
            ratio = (num(f) && best > 0) ? sprintf("%.2f", f / best) : "-"
            printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", s, cell(r), cell(a), cell(f), ratio,
                cell(lat["rabbitmq", s]), cell(lat["activemq", s]), cell(lat["ferrymq", s])
        }
    }
' <(median_rows "$TMP/rabbitmq.md" "$TMP/activemq.md" "$TMP/ferrymq.md")
load_note "$TMP/rabbitmq.md" "$TMP/activemq.md" "$TMP/ferrymq.md"
runs_note "$TMP/rabbitmq.md" "$TMP/activemq.md" "$TMP/ferrymq.md"
