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
# Environment: MESSAGES (200000), BENCH_SECONDS (30, publishing cap per
# scenario), WARMUP (20000 messages per scenario first, unreported: the JVM
# compiles ActiveMQ's hot paths during its first run), RABBIT_PORT (45672,
# AMQP; STOMP on RABBIT_PORT+1), ACTIVEMQ_PORT (46613), FERRYMQ_PORT
# (46713), KEEP_TMP=1 to keep logs, QUIET_WAIT=SECONDS to wait (at most that
# long) before each broker's run until the 1-minute load average is under
# QUIET_LOAD (1.0): on a shared 2-core machine another build halves every
# figure. SKIP=rabbitmq,activemq,ferrymq leaves brokers out.
#
# RabbitMQ and ActiveMQ come from Debian's packages, installed when missing.
# Everything it starts is stopped on exit, and every wait is bounded.
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
# Away from RabbitMQ's defaults (5672, 25672, 4369, 35672-35682) so a system
# node, if any, is left alone.
RABBIT_DIST_PORT=$((RABBIT_PORT + 10))
RABBIT_CTL_PORT_MIN=$((RABBIT_PORT + 20))
RABBIT_EPMD_PORT=$((RABBIT_PORT - 1300))
BENCH_TIMEOUT=900 # seconds for one broker's whole run

say() { printf 'bench-stomp: %s\n' "$*" >&2; }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

TMP=$(mktemp -d /tmp/ferrymq-bench-stomp.XXXXXX)
RABBIT_PID=""
RABBIT_STARTED=""
ACTIVEMQ_STARTED=""
FERRYMQ_STARTED=""

rabbit_env() {
    env HOME="$TMP/rabbit-home" \
        ERL_EPMD_PORT="$RABBIT_EPMD_PORT" \
        RABBITMQ_NODENAME=benchstomp@localhost \
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

stop_pid() { # pid seconds: wait for it to go, then kill it
    for _ in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
}

cleanup() {
    local status=$?
    for pid in $FERRYMQ_STARTED $ACTIVEMQ_STARTED; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            stop_pid "$pid" 10
        fi
    done
    if [[ -n "$RABBIT_STARTED" ]]; then
        rabbit_env timeout 30 /usr/lib/rabbitmq/bin/rabbitmqctl -n benchstomp@localhost stop \
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

apt_install() { # packages...
    local sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    say "installing $* from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

for port in "$RABBIT_PORT" "$RABBIT_STOMP_PORT" "$ACTIVEMQ_PORT" "$FERRYMQ_PORT"; do
    if port_open "127.0.0.1:$port"; then say "port $port is already taken"; exit 1; fi
done

# --- the load generator ----------------------------------------------------
say "building ferrymq and the bench (release)"
timeout 1200 cargo build --release --quiet --bin ferrymq
BENCH=(target/release/ferrymq bench)

load1() { cut -d' ' -f1 /proc/loadavg; }

wait_quiet() { # bounded by QUIET_WAIT seconds
    local deadline=$((SECONDS + ${QUIET_WAIT:-0}))
    while awk -v l="$(load1)" -v q="${QUIET_LOAD:-1.0}" 'BEGIN { exit !(l >= q) }' && ((SECONDS < deadline)); do
        sleep 10
    done
}

run_bench() { # label addr pid [args...] -> markdown rows on stdout
    local label=$1 addr=$2 pid=$3; shift 3
    if ((WARMUP > 0)); then
        say "$label: warming up with $WARMUP messages per scenario"
        timeout "$BENCH_TIMEOUT" "${BENCH[@]}" --stomp "$addr" --label "$label" \
            --messages "$WARMUP" --seconds "$BENCH_SECONDS" "$@" >/dev/null \
            || say "$label: the warm-up reported failures"
    fi
    wait_quiet
    say "$label: load average before the run $(load1)"
    local pid_args=()
    [[ -n "$pid" ]] && pid_args=(--broker-pid "$pid")
    timeout "$BENCH_TIMEOUT" "${BENCH[@]}" --stomp "$addr" --label "$label" --markdown \
        --messages "$MESSAGES" --seconds "$BENCH_SECONDS" "${pid_args[@]}" "$@" \
        || say "$label: the bench reported failures (rows say which) or timed out"
    say "$label: load average after the run $(load1)"
}

: >"$TMP/rabbitmq.md"
: >"$TMP/activemq.md"
: >"$TMP/ferrymq.md"

# --- RabbitMQ with its STOMP plugin -----------------------------------------
if ! skipped rabbitmq; then
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || apt_install rabbitmq-server
    mkdir -p "$TMP/rabbit/log" "$TMP/rabbit/config" "$TMP/rabbit-home"
    echo '[rabbitmq_stomp].' >"$TMP/rabbit/enabled_plugins"
    echo '[].' >"$TMP/rabbit/advanced.config"
    printf 'stomp.listeners.tcp.1 = 127.0.0.1:%s\n' "$RABBIT_STOMP_PORT" >"$TMP/rabbit/rabbitmq.conf"
    # A private cookie under the private HOME, readable by its owner only, as Erlang requires.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/rabbit-home/.erlang.cookie"
    chmod 400 "$TMP/rabbit-home/.erlang.cookie"
    epmd -port "$RABBIT_EPMD_PORT" -daemon
    say "starting RabbitMQ ($(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')) with STOMP on 127.0.0.1:$RABBIT_STOMP_PORT"
    rabbit_env /usr/lib/rabbitmq/bin/rabbitmq-server >"$TMP/rabbit/stdout.log" 2>&1 &
    RABBIT_STARTED=$!
    if wait_port "127.0.0.1:$RABBIT_STOMP_PORT" 90 "RabbitMQ's STOMP listener" "$RABBIT_STARTED"; then
        for _ in $(seq 50); do [[ -s "$TMP/rabbit/rabbit.pid" ]] && break; sleep 0.2; done
        RABBIT_PID=$(cat "$TMP/rabbit/rabbit.pid" 2>/dev/null || true)
        run_bench rabbitmq "127.0.0.1:$RABBIT_STOMP_PORT" "$RABBIT_PID" "$@" | tee "$TMP/rabbitmq.md" >&2
    else
        tail -n 30 "$TMP/rabbit/stdout.log" >&2 || true
    fi
    rabbit_env timeout 30 /usr/lib/rabbitmq/bin/rabbitmqctl -n benchstomp@localhost stop >/dev/null 2>&1 || true
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
    target/release/ferrymq serve --stomp "127.0.0.1:$FERRYMQ_PORT" --amqp off --mqtt off --http off \
        --data-dir "$TMP/ferrymq" >"$TMP/ferrymq.log" 2>&1 &
    FERRYMQ_STARTED=$!
    if wait_port "127.0.0.1:$FERRYMQ_PORT" 20 ferrymq "$FERRYMQ_STARTED"; then
        run_bench ferrymq "127.0.0.1:$FERRYMQ_PORT" "$FERRYMQ_STARTED" "$@" | tee "$TMP/ferrymq.md" >&2
    else
        tail -n 10 "$TMP/ferrymq.log" >&2 || true
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
' "$TMP/rabbitmq.md" "$TMP/activemq.md" "$TMP/ferrymq.md"
