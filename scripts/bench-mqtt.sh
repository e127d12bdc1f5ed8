#!/usr/bin/env bash
# MQTT side by side: ferrymq, Mosquitto, RabbitMQ's MQTT plugin and rumqttd,
# the same load generator (src/bench/mqtt.rs) against each; markdown tables
# with ferrymq's ratio to the fastest of the others at the end. The runs go
# scenario by scenario, run by run, one broker after the other (in reverse
# order every other run): a row's figures are all taken within a minute or
# two, so a shared machine whose speed drifts over minutes does not favour
# whichever broker happened to run in its faster ones. Every scenario
# starts on freshly started brokers: a broker that keeps the memory an
# earlier scenario grew (rumqttd reached 8 GiB) otherwise leaves the others
# only pages the machine has to fetch back from its host, which on this VM
# (free page reporting) cost 5 times as much to touch as recently freed
# ones (docs/benchmarks.md).
#
#   scripts/bench-mqtt.sh                        # all MQTT scenarios, 200k messages
#   MESSAGES=50000 scripts/bench-mqtt.sh --scenario mqtt-qos1-1k
#   SKIP=rumqttd,rabbitmq scripts/bench-mqtt.sh
#
# Extra arguments go to the bench (e.g. --scenario NAME, repeatable).
# Environment: MESSAGES (200000 per scenario), RUNS (3 runs per broker;
# the tables show medians), BENCH_SECONDS (30, publishing
# cap per scenario), BENCH_TIMEOUT (900 s, one run of the bench),
# FERRYMQ_PORT (27883 MQTT; AMQP on 27872), MOSQUITTO_PORT (27884),
# RABBIT_PORT (27672 AMQP; MQTT on RABBIT_PORT+1), RUMQTTD_PORT (27885),
# RUMQTTD_BIN (rumqttd, else /tmp/ferrymq-rumqttd/bin/rumqttd, built there
# with `cargo install rumqttd` when missing unless RUMQTTD_INSTALL=0),
# SKIP=ferrymq,mosquitto,rabbitmq,rumqttd leaves brokers out, KEEP_TMP=1
# keeps logs, QUIET_WAIT=SECONDS waits (at most that long) before each
# round of runs until the 1-minute load average is under QUIET_LOAD (1.0).
#
# Every broker runs with its packaged defaults apart from its listener (and
# anonymous access for Mosquitto): Mosquitto keeps at most 20 QoS 1
# messages in flight and 1000 queued per client and drops the rest;
# RabbitMQ's MQTT plugin has a prefetch of 10 per subscription. The
# mqtt-to-amqp scenario runs only where an AMQP listener exists (ferrymq,
# RabbitMQ). Everything it starts is stopped on exit, every wait is bounded,
# and it holds /tmp/ferrymq-bench.lock for the whole run.
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-200000}
BENCH_SECONDS=${BENCH_SECONDS:-30}
FERRYMQ_PORT=${FERRYMQ_PORT:-27883}
FERRYMQ_AMQP_PORT=$((FERRYMQ_PORT - 11))
MOSQUITTO_PORT=${MOSQUITTO_PORT:-27884}
RUMQTTD_PORT=${RUMQTTD_PORT:-27885}
RABBIT_PORT=${RABBIT_PORT:-27672}
RABBIT_MQTT_PORT=$((RABBIT_PORT + 1))
RUMQTTD_ROOT=${RUMQTTD_ROOT:-/tmp/ferrymq-rumqttd}
SKIP=${SKIP:-}
SCRIPT=bench-mqtt
TMP=$(mktemp -d /tmp/ferrymq-bench-mqtt.XXXXXX)
RABBIT_NODE=benchmqtt@localhost
# shellcheck source=lib/bench.sh
. scripts/lib/bench.sh
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
bench_lock

for port in "$FERRYMQ_PORT" "$FERRYMQ_AMQP_PORT" "$MOSQUITTO_PORT" "$RUMQTTD_PORT" "$RABBIT_PORT" "$RABBIT_MQTT_PORT"; do
    if port_open "127.0.0.1:$port"; then say "port $port is already taken"; exit 1; fi
done

build_release

# The scenarios: from the arguments, else all; MQTT-only brokers skip the
# cross-protocol one.
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
    mapfile -t SCENARIOS < <("${BENCH[@]}" --mqtt x --list-scenarios)
fi
run_bench() { # label mqtt-addr pid run [args...] -> markdown rows on stdout
    local label=$1 addr=$2 pid=$3 run=$4; shift 4
    bench_one "$label" "$pid" "$run" --mqtt "$addr" "$@" "${EXTRA[@]}"
}

for b in ferrymq mosquitto rabbitmq rumqttd; do : >"$TMP/$b.md"; done
# The brokers that answered, in the order they run, with their MQTT
# address, pid and bench arguments of their own (none holds a space).
BROKERS=()
declare -A ADDR PID OWN_ARGS
started() { # name addr pid [own args...]
    local name=$1 addr=$2 pid=$3; shift 3
    BROKERS+=("$name")
    ADDR[$name]=$addr
    PID[$name]=$pid
    OWN_ARGS[$name]="$*"
}

# What the brokers need is installed, built and configured once, before
# the first one starts.
if ! skipped mosquitto; then
    command -v mosquitto >/dev/null || apt_install mosquitto
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MOSQUITTO_PORT" >"$TMP/mosquitto.conf"
fi
RUMQTTD=""
RUMQTTD_NOTE=""
if ! skipped rumqttd; then
    RUMQTTD=${RUMQTTD_BIN:-$(command -v rumqttd || echo "$RUMQTTD_ROOT/bin/rumqttd")}
    if [[ ! -x "$RUMQTTD" && "${RUMQTTD_INSTALL:-1}" == 1 ]]; then
        say "building rumqttd with cargo install into $RUMQTTD_ROOT (bounded: 45 min)"
        timeout 2700 cargo install --quiet rumqttd --root "$RUMQTTD_ROOT" \
            --target-dir "$RUMQTTD_ROOT/target" >"$TMP/rumqttd-install.log" 2>&1 \
            || { say "rumqttd did not build; its column is skipped"; tail -n 5 "$TMP/rumqttd-install.log" >&2; }
        RUMQTTD=$RUMQTTD_ROOT/bin/rumqttd
    fi
    if [[ -x "$RUMQTTD" ]]; then
        # The crate's sample configuration with one 3.1.1 listener.
        cat >"$TMP/rumqttd.toml" <<TOML
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RUMQTTD_PORT"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
TOML
    else
        RUMQTTD=""
        RUMQTTD_NOTE="rumqttd: not built here, its column is empty."
    fi
fi

# start_brokers: every broker not skipped, fresh (ferrymq and RabbitMQ on
# empty data directories); BROKERS lists those that answered.
start_brokers() {
    BROKERS=()
    FERRYMQ_STARTED="" MOSQUITTO_STARTED="" RUMQTTD_STARTED=""
    if ! skipped ferrymq; then
        rm -rf "$TMP/ferrymq"
        mkdir -p "$TMP/ferrymq"
        start_tracked ferrymq "127.0.0.1:$FERRYMQ_PORT" "$TMP/ferrymq.log" \
            target/release/ferrymq serve --mqtt "127.0.0.1:$FERRYMQ_PORT" --amqp "127.0.0.1:$FERRYMQ_AMQP_PORT" \
            --stomp off --http off --data-dir "$TMP/ferrymq" \
            && started ferrymq "127.0.0.1:$FERRYMQ_PORT" "$STARTED_PID" --amqp "127.0.0.1:$FERRYMQ_AMQP_PORT"
        FERRYMQ_STARTED=$STARTED_PID
    fi
    if ! skipped mosquitto; then
        say "starting Mosquitto ($(dpkg-query -W -f '${Version}' mosquitto 2>/dev/null || echo '?')) on 127.0.0.1:$MOSQUITTO_PORT"
        start_tracked Mosquitto "127.0.0.1:$MOSQUITTO_PORT" "$TMP/mosquitto.log" \
            mosquitto -c "$TMP/mosquitto.conf" \
            && started mosquitto "127.0.0.1:$MOSQUITTO_PORT" "$STARTED_PID"
        MOSQUITTO_STARTED=$STARTED_PID
    fi
    if ! skipped rabbitmq; then
        rm -rf "$TMP/rabbit/mnesia"
        if rabbit_start rabbitmq_mqtt "mqtt.listeners.tcp.1 = 127.0.0.1:$RABBIT_MQTT_PORT
" "127.0.0.1:$RABBIT_MQTT_PORT"; then
            started rabbitmq "127.0.0.1:$RABBIT_MQTT_PORT" "$RABBIT_PID" --amqp "127.0.0.1:$RABBIT_PORT"
        fi
    fi
    if [[ -n "$RUMQTTD" ]]; then
        say "starting rumqttd ($("$RUMQTTD" --version 2>/dev/null || echo '?')) on 127.0.0.1:$RUMQTTD_PORT"
        start_tracked rumqttd "127.0.0.1:$RUMQTTD_PORT" "$TMP/rumqttd.log" "$RUMQTTD" -c "$TMP/rumqttd.toml" \
            && started rumqttd "127.0.0.1:$RUMQTTD_PORT" "$STARTED_PID" --mqtt-anonymous
        RUMQTTD_STARTED=$STARTED_PID
    fi
}

stop_brokers() {
    local pid
    for pid in "$FERRYMQ_STARTED" "$MOSQUITTO_STARTED" "$RUMQTTD_STARTED"; do
        if [[ -n "$pid" ]]; then stop_tracked "$pid"; untrack_pid "$pid"; fi
    done
    skipped rabbitmq || rabbit_stop
}

# --- the runs --------------------------------------------------------------
# Every other run takes the brokers in the reverse order, so that none is
# always first after the wait. The cross-protocol scenario needs an AMQP
# side: ferrymq and RabbitMQ only.
for scenario in "${SCENARIOS[@]}"; do
    start_brokers
    for ((run = 1; run <= ${RUNS:-3}; run++)); do
        wait_quiet
        order=("${BROKERS[@]}")
        if ((run % 2 == 0)); then
            order=()
            for ((i = ${#BROKERS[@]} - 1; i >= 0; i--)); do order+=("${BROKERS[i]}"); done
        fi
        for b in "${order[@]}"; do
            [[ $scenario == mqtt-to-amqp* && $b != ferrymq && $b != rabbitmq ]] && continue
            read -ra own <<<"${OWN_ARGS[$b]}"
            run_bench "$b" "${ADDR[$b]}" "${PID[$b]}" "$run" "${own[@]}" --scenario "$scenario" \
                | tee -a "$TMP/$b.md" >&2
        done
    done
    stop_brokers
done
say "load average after the runs $(load1)"

# --- the tables ------------------------------------------------------------
compare_tables "ferrymq:ferrymq,mosquitto:Mosquitto,rabbitmq:RabbitMQ,rumqttd:rumqttd" \
    "$TMP/ferrymq.md" "$TMP/mosquitto.md" "$TMP/rabbitmq.md" "$TMP/rumqttd.md"
load_note "$TMP/ferrymq.md" "$TMP/mosquitto.md" "$TMP/rabbitmq.md" "$TMP/rumqttd.md"
runs_note "$TMP/ferrymq.md" "$TMP/mosquitto.md" "$TMP/rabbitmq.md" "$TMP/rumqttd.md"
[[ -z "$RUMQTTD_NOTE" ]] || printf '\n%s\n' "$RUMQTTD_NOTE"
