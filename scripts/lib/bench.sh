# Shell shared by scripts/bench-*.sh; source it, do not run it.
#
# The caller sets SCRIPT (its name, for messages) and TMP (its temporary
# directory) before sourcing. What it offers:
#
#   bench_lock                 one benchmark run at a time on this machine
#   say, port_open, wait_port, stop_pid, apt_install
#   load1, wait_quiet          the 1-minute load average; QUIET_WAIT/QUIET_LOAD
#   track_pid PID              stopped (TERM, then KILL) by bench_cleanup
#   untrack_pid PID            no longer (stopped already)
#   start_tracked WHAT ADDR LOG CMD…  CMD in the background, tracked, until ADDR answers
#   rabbit_start / rabbit_stop a private RabbitMQ node (RABBIT_* variables)
#   build_release              cargo build --release; sets BENCH
#   bench_run LABEL PID ARGS…  one bounded run of the load generator
#   bench_cleanup              the EXIT trap: stops everything, removes TMP
# shellcheck shell=bash

BENCH_LOCK=${BENCH_LOCK:-/tmp/ferrymq-bench.lock}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900} # seconds for one broker's run of the bench
TRACKED_PIDS=()
RABBIT_PID=""
RABBIT_STARTED=""

say() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }

# Takes the machine-wide benchmark lock for the rest of the run, so two
# runs never overlap and measure each other. Waits at most LOCK_WAIT
# seconds (3600) for a run that holds it.
bench_lock() {
    exec {BENCH_LOCK_FD}>>"$BENCH_LOCK"
    if ! flock -n "$BENCH_LOCK_FD"; then
        say "another benchmark run holds $BENCH_LOCK; waiting (at most ${LOCK_WAIT:-3600} s)"
        flock -w "${LOCK_WAIT:-3600}" "$BENCH_LOCK_FD" || { say "gave up waiting for $BENCH_LOCK"; exit 1; }
    fi
}

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

track_pid() { TRACKED_PIDS+=("$1"); }

# untrack_pid PID: for a process stopped already, whose number the system
# may hand to another by the time bench_cleanup runs.
untrack_pid() {
    local kept=() pid
    for pid in "${TRACKED_PIDS[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    TRACKED_PIDS=("${kept[@]}")
}

# start_tracked WHAT ADDR LOG CMD...: runs CMD in the background with its
# output appended to LOG, tracks it and waits (20 s) for ADDR to answer.
# Sets STARTED_PID either way; fails, showing LOG's tail, when ADDR does
# not answer.
start_tracked() {
    local what=$1 addr=$2 log=$3
    shift 3
    "$@" >>"$log" 2>&1 &
    STARTED_PID=$!
    track_pid "$STARTED_PID"
    wait_port "$addr" 20 "$what" "$STARTED_PID" && return 0
    tail -n 10 "$log" >&2 || true
    return 1
}

stop_tracked() { # pid: TERM, wait up to 10 s, KILL
    if kill -0 "$1" 2>/dev/null; then
        kill -TERM "$1" 2>/dev/null || true
        stop_pid "$1" 10
    fi
    wait "$1" 2>/dev/null || true
}

apt_install() { # packages...
    local sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
    say "installing $* from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

load1() { cut -d' ' -f1 /proc/loadavg; }

wait_quiet() { # bounded by QUIET_WAIT seconds
    local deadline=$((SECONDS + ${QUIET_WAIT:-0}))
    while awk -v l="$(load1)" -v q="${QUIET_LOAD:-1.0}" 'BEGIN { exit !(l >= q) }' && ((SECONDS < deadline)); do
        sleep 10
    done
}

# --- a private RabbitMQ node ------------------------------------------------
# The caller sets RABBIT_NODE (name@localhost) and RABBIT_PORT (AMQP); the
# distribution, CLI and epmd ports follow from RABBIT_PORT, away from
# RabbitMQ's defaults (5672, 25672, 4369, 35672-35682) so a system node, if
# any, is left alone.

rabbit_env() {
    env HOME="$TMP/rabbit-home" \
        ERL_EPMD_PORT="$RABBIT_EPMD_PORT" \
        RABBITMQ_NODENAME="$RABBIT_NODE" \
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

# rabbit_start PLUGINS CONF WAIT_ADDR: PLUGINS is an Erlang list body
# ("rabbitmq_mqtt" or ""), CONF the rabbitmq.conf text, WAIT_ADDR the
# listener that must answer. Sets RABBIT_STARTED and RABBIT_PID.
rabbit_start() {
    RABBIT_DIST_PORT=$((RABBIT_PORT + 10))
    RABBIT_CTL_PORT_MIN=$((RABBIT_PORT + 20))
    RABBIT_EPMD_PORT=${RABBIT_EPMD_PORT:-$((RABBIT_PORT - 12))}
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || apt_install rabbitmq-server
    mkdir -p "$TMP/rabbit/log" "$TMP/rabbit/config" "$TMP/rabbit-home"
    echo "[$1]." >"$TMP/rabbit/enabled_plugins"
    echo '[].' >"$TMP/rabbit/advanced.config"
    printf '%s' "$2" >"$TMP/rabbit/rabbitmq.conf"
    # A private cookie under the private HOME, readable by its owner only, as Erlang requires.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/rabbit-home/.erlang.cookie"
    chmod 400 "$TMP/rabbit-home/.erlang.cookie"
    epmd -port "$RABBIT_EPMD_PORT" -daemon
    say "starting RabbitMQ ($(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')) as $RABBIT_NODE, waiting for $3"
    rabbit_env /usr/lib/rabbitmq/bin/rabbitmq-server >"$TMP/rabbit/stdout.log" 2>&1 &
    RABBIT_STARTED=$!
    if ! wait_port "$3" 90 RabbitMQ "$RABBIT_STARTED"; then
        tail -n 30 "$TMP/rabbit/stdout.log" >&2 || true
        return 1
    fi
    for _ in $(seq 50); do [[ -s "$TMP/rabbit/rabbit.pid" ]] && break; sleep 0.2; done
    RABBIT_PID=$(cat "$TMP/rabbit/rabbit.pid" 2>/dev/null || true)
}

rabbit_stop() {
    [[ -n "$RABBIT_STARTED" ]] || return 0
    rabbit_env timeout 30 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1 || true
    for pid in $RABBIT_PID $RABBIT_STARTED; do stop_pid "$pid" 10; done
    wait "$RABBIT_STARTED" 2>/dev/null || true
    # The epmd on our private port was started for this node only.
    timeout 5 epmd -port "$RABBIT_EPMD_PORT" -kill >/dev/null 2>&1 || true
    RABBIT_STARTED=""
    RABBIT_PID=""
}

# --- the load generator ----------------------------------------------------

build_release() {
    say "building ferrymq and the bench (release)"
    timeout 1200 cargo build --release --quiet --bin ferrymq
    BENCH=(target/release/ferrymq bench)
}

# bench_one LABEL PID RUN ARGS...: one run of the bench with --label,
# --markdown, --messages, --seconds and --broker-pid added, bounded by
# BENCH_TIMEOUT; RUN numbers it in the log. Its markdown rows go to stdout.
bench_one() {
    local label=$1 pid=$2 run=$3; shift 3
    local pid_args=()
    [[ -n "$pid" ]] && pid_args=(--broker-pid "$pid")
    say "$label: run $run of ${RUNS:-3}, load average before it $(load1)"
    timeout "$BENCH_TIMEOUT" "${BENCH[@]}" --label "$label" --markdown \
        --messages "$MESSAGES" --seconds "$BENCH_SECONDS" "${pid_args[@]}" "$@" \
        || say "$label: the bench reported failures (rows say which) or timed out"
}

# bench_run LABEL PID ARGS...: RUNS times (3), waits for quiet
# (QUIET_WAIT) and runs the bench (bench_one). Every run's markdown rows
# go to stdout; median_rows makes one of them.
bench_run() {
    local label=$1 pid=$2; shift 2
    local run
    for ((run = 1; run <= ${RUNS:-3}; run++)); do
        wait_quiet
        bench_one "$label" "$pid" "$run" "$@"
    done
    say "$label: load average after its runs $(load1)"
}

# median_rows FILE...: one bench row per broker and scenario from rows of
# several runs, so one unlucky run on a shared machine does not decide a
# table. Each figure is the median of the runs that completed (the mean
# of the middle two when their number is even), except peak
# RSS, lost messages and load, which take the worst run. A scenario that
# failed in every run keeps its first failed row.
median_rows() {
    awk -F'|' '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        function num(v) { return v ~ /^[0-9.]+$/ }
        function median(k, c,    n, i, j, t, v) {
            n = 0
            for (i = 1; i <= runs[k]; i++) if (num(val[k, i, c])) v[++n] = val[k, i, c] + 0
            if (n == 0) return val[k, 1, c]
            for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
            if (c == 9 || c == 13 || c == 14) return v[n]
            return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }
        $2 ~ /broker/ || $2 ~ /---/ || NF < 4 { next }
        {
            k = trim($2) SUBSEP trim($3)
            if (!(k in runs)) { order[++m] = k; failed[k] = $0 }
            if (trim($4) ~ /^failed/) next
            i = ++runs[k]
            width[k] = NF
            for (c = 2; c < NF; c++) val[k, i, c] = trim($c)
        }
        END {
            for (j = 1; j <= m; j++) {
                k = order[j]
                if (!runs[k]) { print failed[k]; continue }
                line = "|"
                for (c = 2; c < width[k]; c++) {
                    x = median(k, c)
                    # As the bench prints them: counts and rates whole, CPU
                    # to a tenth, milliseconds and load to a hundredth.
                    if (num(x)) x = sprintf(c <= 6 || c == 9 || c == 13 ? "%.0f" : c == 10 ? "%.1f" : "%.2f", x)
                    line = line " " x " |"
                }
                print line
            }
        }
    ' "$@"
}

# runs_note FILE...: each broker's p99 in every run of every scenario,
# beside the medians the tables show.
runs_note() {
    awk -F'|' '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        $2 ~ /broker/ || $2 ~ /---/ || NF < 10 || trim($4) ~ /^failed/ { next }
        {
            k = trim($2) ": " trim($3)
            if (!(k in p99)) { order[++m] = k; p99[k] = trim($8) } else p99[k] = p99[k] ", " trim($8)
            runs[k]++
        }
        END {
            if (m == 0) exit
            print "\np99 ms of each run (the tables show medians):"
            for (j = 1; j <= m; j++) print "- " order[j] ": " p99[order[j]]
        }
    ' "$@"
}

bench_cleanup() {
    local status=$?
    local pid
    for pid in "${TRACKED_PIDS[@]}"; do stop_tracked "$pid"; done
    rabbit_stop
    if [[ "${KEEP_TMP:-}" == 1 ]]; then say "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$status"
}

# load_note FILE...: one line per broker label with the range of the
# 1-minute load average its rows recorded (the bench's last column).
load_note() {
    awk -F'|' '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        $2 ~ /broker/ || $2 ~ /---/ || NF < 6 { next }
        {
            b = trim($2); l = trim($(NF - 1))
            if (l !~ /^[0-9.]+$/) next
            if (!(b in lo)) { order[++n] = b; lo[b] = l; hi[b] = l }
            if (l + 0 < lo[b] + 0) lo[b] = l
            if (l + 0 > hi[b] + 0) hi[b] = l
        }
        END {
            if (n == 0) exit
            line = "1-minute load average at the start of each scenario (2 cores):"
            for (i = 1; i <= n; i++) line = line sprintf(" %s %s–%s;", order[i], lo[order[i]], hi[order[i]])
            sub(/;$/, ".", line)
            print "\n" line
        }
    ' "$@"
}

# compare_tables BROKERS FILE...: two markdown tables from the bench rows in
# FILE... (any order; several runs of a scenario count as their median). BROKERS is "label:Title,label:Title,…", ours first.
# The first table holds delivered msg/s per broker, our ratio to the
# fastest of the others and the copies lost; the second, latency
# (end to end, and publish to confirm/PUBACK where measured) and peak RSS.
# A broker without a row for a scenario shows "-" (or "n/a" when it has
# rows for other scenarios: the scenario does not apply to it).
compare_tables() {
    local brokers=$1; shift
    awk -F'|' -v brokers="$brokers" '
        function trim(s) { gsub(/^ +| +$/, "", s); return s }
        function num(v) { return v ~ /^[0-9.]+$/ }
        # Tests with "in" first: reading arr[b, s] would create the element.
        function cell(arr, b, s) {
            if (!((b, s) in rate)) return (b in any) ? "n/a" : "-"
            return ((b, s) in arr) ? arr[b, s] : "-"
        }
        BEGIN {
            n = split(brokers, pairs, ",")
            for (i = 1; i <= n; i++) { split(pairs[i], kv, ":"); label[i] = kv[1]; title[i] = kv[2] }
        }
        $2 ~ /broker/ || $2 ~ /---/ || NF < 12 { next }
        {
            b = trim($2); s = trim($3)
            if (!(s in seen)) { seen[s] = 1; order[++m] = s }
            any[b] = 1
            if (trim($4) ~ /^failed/) { rate[b, s] = "failed"; next }
            rate[b, s] = trim($5); lat[b, s] = trim($7) "/" trim($8); rss[b, s] = trim($9)
            if (trim($12) != "-") conf[b, s] = trim($11) "/" trim($12)
            lost[b, s] = trim($13)
            if (trim($12) != "-") confirms = 1
        }
        END {
            head = "| scenario |"; line = "|---|"
            for (i = 1; i <= n; i++) { head = head " " title[i] " msg/s |"; line = line "--:|" }
            print head " " title[1] " / fastest other | lost " join_titles() " |"
            print line "--:|--:|"
            for (j = 1; j <= m; j++) {
                s = order[j]; best = 0; row = "| " s " |"
                for (i = 1; i <= n; i++) {
                    b = label[i]; v = cell(rate, b, s)
                    row = row " " v " |"
                    if (i > 1 && num(v) && v + 0 > best) best = v + 0
                }
                f = cell(rate, label[1], s)
                ratio = (num(f) && best > 0) ? sprintf("%.2f", f / best) : "-"
                l = ""
                for (i = 1; i <= n; i++) l = l (i > 1 ? " / " : "") cell(lost, label[i], s)
                print row " " ratio " | " l " |"
            }
            print ""
            head = "| scenario |"; line = "|---|"
            for (i = 1; i <= n; i++) { head = head " p50/p99 ms " title[i] " |"; line = line "--:|" }
            if (confirms) for (i = 1; i <= n; i++) { head = head " confirm p50/p99 ms " title[i] " |"; line = line "--:|" }
            for (i = 1; i <= n; i++) { head = head " RSS MiB " title[i] " |"; line = line "--:|" }
            print head; print line
            for (j = 1; j <= m; j++) {
                s = order[j]; row = "| " s " |"
                for (i = 1; i <= n; i++) row = row " " cell(lat, label[i], s) " |"
                if (confirms) for (i = 1; i <= n; i++) row = row " " cell(conf, label[i], s) " |"
                for (i = 1; i <= n; i++) row = row " " cell(rss, label[i], s) " |"
                print row
            }
        }
        function join_titles(   t, i) { t = title[1]; for (i = 2; i <= n; i++) t = t " / " title[i]; return t }
    ' <(median_rows "$@")
}
