#!/usr/bin/env bash
# The gateway benchmark: the same scenarios against a mock upstream called directly, through
# nginx, through bench-floor (a minimal hyper proxy: the floor under any hyper-based gateway) and
# through sidetrace, side by side in one run, then what the gateway's features cost
# (tap, capture levels, span export, spooling, replay), each against a baseline of the same run;
# results in load-tests/results/latest.md.
#
#   bash load-tests/run.sh            full run, about 13 minutes, 16 with --pin (installs nginx
#                                     if missing)
#   bash load-tests/run.sh --quick    smoke run for CI, well under a minute after the build;
#                                     skips nginx when it is not installed
#   --no-build                        use the binaries already built
#   --profiling                       build and run the profiling profile (release with symbols
#                                     and line tables, target/profiling) to record perf profiles
#   --keep                            keep the temp dir (JSON reports, logs, nginx.conf)
#   --nice N                          run the mock, the proxies and the driver at nice N (e.g.
#                                     -10 as root, to get ahead of other work on a shared machine)
#
#   --pin                             then the headline scenarios again, pinned: nginx (one worker)
#                                     and sidetrace restarted on CPU 0, the driver, the mock and
#                                     the OTLP sink on CPU 1 (taskset), so CPU per request and
#                                     throughput compare across runs (needs 2 CPUs)
#   --headline                        only the headline comparison (a1k, a3k, b, c, memory):
#                                     no raw route, no feature gateways; about 6 minutes, 10 with
#                                     --pin
#
# Every sidetrace of the headline exports every span over OTLP/HTTP to a bench-mock sink (the
# design's budgets are measured with export on); the export scenarios compare it with a gateway
# that has no endpoint (sidetrace-noexport).
#
# Exits non-zero if any run against direct or a sidetrace target had errors, a cost-header probe
# failed, or the spool did not drain after the collector came back.
set -euo pipefail

QUICK=0
BUILD=1
# release ships stripped (Cargo.toml); perf needs the profiling profile's symbols.
PROFILE=release
KEEP=0
PIN=0
HEADLINE=0
NICE=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --profiling) PROFILE=profiling ;;
    --keep) KEEP=1 ;;
    --pin) PIN=1 ;;
    --headline) HEADLINE=1 ;;
    --nice)
        [[ $# -ge 2 && $2 =~ ^-?[0-9]+$ ]] || {
            echo "run.sh: --nice needs a number" >&2
            exit 2
        }
        NICE=(nice -n "$2")
        shift
        ;;
    -h | --help)
        sed -n '2,32p' "$0"
        exit 0
        ;;
    *)
        echo "run.sh: unknown option $1" >&2
        exit 2
        ;;
    esac
    shift
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE

if [[ $BUILD == 1 ]]; then
    (cd "$ROOT" && cargo build --profile "$PROFILE" -p sidetrace -p sidetrace-load-tests)
fi
LOAD=$BIN/bench-load
MOCK=$BIN/bench-mock
FLOOR=$BIN/bench-floor
GATEWAY=$BIN/sidetrace
if [[ $PIN == 1 && $(nproc) -lt 2 ]]; then
    echo "run.sh: --pin needs 2 CPUs" >&2
    exit 2
fi
for b in "$LOAD" "$MOCK" "$GATEWAY"; do
    [[ -x $b ]] || {
        echo "run.sh: $b is missing; build first or drop --no-build" >&2
        exit 2
    }
done

USE_NGINX=1
if ! command -v nginx >/dev/null 2>&1; then
    if [[ $QUICK == 1 ]]; then
        echo "run.sh: nginx is not installed; the quick run skips it"
        USE_NGINX=0
    else
        echo "run.sh: installing nginx"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y nginx
    fi
fi

# 1,000 open streams need a few thousand descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-bench.XXXXXX")
JSON=$WORK/json
mkdir -p "$JSON" "$WORK/nginx"
PIDS=()
# The gateway processes among them, whose exit status on SIGTERM is checked.
GATEWAYS=()

alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Stops exactly the processes this script started, by their saved PIDs.
cleanup() {
    local rc=$? pid status
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            alive "$pid" || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        status=0
        wait "$pid" 2>/dev/null || status=$?
        if [[ " ${GATEWAYS[*]} " == *" $pid "* && $status != 0 ]]; then
            echo "run.sh: sidetrace (pid $pid) exited with status $status on SIGTERM" >&2
        fi
    done
    if [[ $KEEP == 1 ]]; then
        echo "run.sh: kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

# Stops one process this script started (SIGTERM, up to 10 s for a gateway's graceful shutdown,
# then SIGKILL), and forgets its PID so that the exit cleanup never signals a reused one.
stop_proc() { # pid
    local pid=$1 status=0 p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        alive "$pid" || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || status=$?
    if [[ " ${GATEWAYS[*]} " == *" $pid "* && $status != 0 ]]; then
        echo "run.sh: sidetrace (pid $pid) exited with status $status on SIGTERM" >&2
    fi
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# Waits (at most 10 s) until a loopback port accepts connections, while its process lives.
wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        alive "$pid" || break
        sleep 0.1
    done
    echo "run.sh: $name did not start listening on 127.0.0.1:$port; its log:" >&2
    cat "$WORK/$name.log" "$WORK/nginx/error.log" 2>/dev/null | tail -20 >&2
    exit 1
}

# Every port at once, so that they differ. SPOOL_SINK_PORT stays closed until the replay: it is
# the OTLP endpoint of the collector-down gateway.
read -r MOCK_PORT NGINX_PORT GATEWAY_PORT ADMIN_PORT NONE_PORT NONE_ADMIN REDACTED_PORT \
    REDACTED_ADMIN EXPORT_PORT EXPORT_ADMIN SPOOL_PORT SPOOL_ADMIN SINK_PORT SPOOL_SINK_PORT \
    NOSTORE_PORT NOSTORE_ADMIN FLOOR_PORT <<<"$("$LOAD" ports 17 | tr '\n' ' ')"

# Where each process runs: with --pin, the pinned pass puts the proxy under test on CPU 0 and
# everything else (driver, mock, sink) on CPU 1; until then both are empty (any CPU).
PROXY_CPU=()
DRIVER_CPU=()

"${NICE[@]}" "$MOCK" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" "$MOCK_PID" mock

# nginx with the given number of worker processes (2 on shared CPUs, 1 pinned). Sets NGINX_PID
# and NGINX_PIDS (the master and its workers, whose CPU and memory are summed).
start_nginx() { # workers
    # Workers as the invoking user: as root, nginx would otherwise switch to a user that may not
    # exist or may not reach the temp dir.
    local user_line="" child
    [[ $EUID == 0 ]] && user_line="user root;"
    cat >"$WORK/nginx/nginx.conf" <<EOF
# Written by load-tests/run.sh: nginx as a plain streaming reverse proxy, the practical floor.
$user_line
worker_processes $1;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events {
    worker_connections 16384;
}
http {
    access_log off;
    client_body_temp_path $WORK/nginx/client_body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    # hyper has no per-connection request limit; nginx's default of 1,000 would add reconnects.
    keepalive_requests 1000000;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
    "${NICE[@]}" "${PROXY_CPU[@]}" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" \
        -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_port "$NGINX_PORT" "$NGINX_PID" nginx
    NGINX_PIDS=$NGINX_PID
    for child in $(cat "/proc/$NGINX_PID"/task/*/children); do
        NGINX_PIDS+=",$child"
    done
}
if [[ $USE_NGINX == 1 ]]; then
    start_nginx 2
fi

# bench-floor: hyper's server and pooled client on tokio's multi-threaded runtime, forwarding
# every request as it is. Sets FLOOR_PID.
start_floor() {
    "${NICE[@]}" "${PROXY_CPU[@]}" "$FLOOR" --listen "127.0.0.1:$FLOOR_PORT" \
        --upstream "127.0.0.1:$MOCK_PORT" >"$WORK/floor.log" 2>&1 &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
    wait_port "$FLOOR_PORT" "$FLOOR_PID" floor
}
start_floor

# Every gateway reads this file: the defaults plus one provider with no inspection at all, to
# measure what the tap and the request inspection cost on the same process.
cat >"$WORK/sidetrace.toml" <<EOF
# Written by load-tests/run.sh. /raw/... goes to the mock with no path format: every call is
# passthrough (no request inspection, no tap parsing, no cost).
[providers.raw]
base_url = "http://127.0.0.1:$MOCK_PORT"
paths = []
EOF
# The collector-down gateway's own copy (the quick run adds to it).
cp "$WORK/sidetrace.toml" "$WORK/sidetrace-spool.toml"

# Starts a gateway on that file (or $WORK/<name>.toml if there is one), with its own data dir in
# the temp dir, listening on loopback; extra NAME=VALUE arguments go into its environment. No
# keys, no other config, data dir, capture level or OTLP setting comes from the caller's
# environment. Sets STARTED_PID.
start_gateway() { # name port admin_port [NAME=VALUE...]
    local name=$1 port=$2 admin=$3 config=$WORK/sidetrace.toml
    shift 3
    [[ -f $WORK/$name.toml ]] && config=$WORK/$name.toml
    mkdir -p "$WORK/data/$name"
    "${NICE[@]}" "${PROXY_CPU[@]}" env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u SIDETRACE_CONFIG \
        -u SIDETRACE_DATA_DIR -u SIDETRACE_CAPTURE_LEVEL -u OTEL_EXPORTER_OTLP_ENDPOINT \
        -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT -u OTEL_EXPORTER_OTLP_PROTOCOL \
        -u OTEL_EXPORTER_OTLP_TRACES_PROTOCOL -u OTEL_EXPORTER_OTLP_HEADERS \
        -u OTEL_EXPORTER_OTLP_TRACES_HEADERS -u OTEL_EXPORTER_OTLP_COMPRESSION \
        -u OTEL_EXPORTER_OTLP_TRACES_COMPRESSION -u SIDETRACE_PROVIDERS_DIR \
        SIDETRACE_LISTEN="127.0.0.1:$port" \
        SIDETRACE_ADMIN_LISTEN="127.0.0.1:$admin" \
        SIDETRACE_INGEST_ENABLED=false \
        SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
        SIDETRACE_ANTHROPIC_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
        SIDETRACE_LOG=warn \
        SIDETRACE_DATA_DIR="$WORK/data/$name" \
        "$@" \
        "$GATEWAY" serve --config "$config" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    GATEWAYS+=("$STARTED_PID")
    wait_port "$port" "$STARTED_PID" "$name"
}

# Starts a bench-mock as an OTLP/HTTP sink. Sets STARTED_PID.
start_sink() { # name port
    "${NICE[@]}" "${DRIVER_CPU[@]}" "$MOCK" --listen "127.0.0.1:$2" >"$WORK/$1.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_port "$2" "$STARTED_PID" "$1"
}

# The OTLP sink every exporting gateway sends its spans to.
start_sink sink "$SINK_PORT"
SINK_PID=$STARTED_PID
# What makes a gateway export every span to that sink.
EXPORT_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)

# The default gateway: span export on (to the sink), capture level metadata.
start_gateway sidetrace "$GATEWAY_PORT" "$ADMIN_PORT" "${EXPORT_ENV[@]}"
GATEWAY_PID=$STARTED_PID
NONE_PID="" REDACTED_PID="" NOEXPORT_PID="" SPOOL_PID="" NOSTORE_PID=""

TARGETS=(direct)
[[ $USE_NGINX == 1 ]] && TARGETS+=(nginx)
TARGETS+=(floor sidetrace)

# Targets: direct, nginx, floor, and the gateway variants. sidetrace and sidetrace-raw are the same
# process (the default gateway) on two routes; the others are gateway processes of their own.
port_of() {
    case $1 in
    direct) echo "$MOCK_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    floor) echo "$FLOOR_PORT" ;;
    sidetrace | sidetrace-raw) echo "$GATEWAY_PORT" ;;
    sidetrace-none) echo "$NONE_PORT" ;;
    sidetrace-nostore) echo "$NOSTORE_PORT" ;;
    sidetrace-redacted) echo "$REDACTED_PORT" ;;
    sidetrace-noexport) echo "$EXPORT_PORT" ;;
    sidetrace-spool) echo "$SPOOL_PORT" ;;
    esac
}

admin_of() {
    case $1 in
    sidetrace | sidetrace-raw) echo "$ADMIN_PORT" ;;
    sidetrace-none) echo "$NONE_ADMIN" ;;
    sidetrace-nostore) echo "$NOSTORE_ADMIN" ;;
    sidetrace-redacted) echo "$REDACTED_ADMIN" ;;
    sidetrace-noexport) echo "$EXPORT_ADMIN" ;;
    sidetrace-spool) echo "$SPOOL_ADMIN" ;;
    esac
}

pid_of() {
    case $1 in
    floor) echo "$FLOOR_PID" ;;
    sidetrace | sidetrace-raw) echo "$GATEWAY_PID" ;;
    sidetrace-none) echo "$NONE_PID" ;;
    sidetrace-nostore) echo "$NOSTORE_PID" ;;
    sidetrace-redacted) echo "$REDACTED_PID" ;;
    sidetrace-noexport) echo "$NOEXPORT_PID" ;;
    sidetrace-spool) echo "$SPOOL_PID" ;;
    esac
}

path_of() { # target mode
    if [[ $2 == anthropic ]]; then
        if [[ $1 == direct || $1 == nginx || $1 == floor ]]; then
            echo /v1/messages
        else
            echo /anthropic/v1/messages
        fi
    elif [[ $1 == sidetrace-raw ]]; then
        echo /raw/v1/chat/completions
    else
        echo /v1/chat/completions
    fi
}

# --watch arguments: the proxy under test (compared) and the mock (to show it is not the limit).
watch_args() {
    case $1 in
    direct) echo "--watch mock=$MOCK_PID" ;;
    nginx) echo "--watch proxy=$NGINX_PIDS --watch mock=$MOCK_PID" ;;
    *) echo "--watch proxy=$(pid_of "$1") --watch mock=$MOCK_PID" ;;
    esac
}

# --counters arguments, in the feature scenarios only (COUNTERS=1): the gateway's /metrics, and
# the OTLP sink's /stats for the gateways that export.
COUNTERS=0
counter_args() {
    [[ $COUNTERS == 1 && $1 == sidetrace* ]] || return 0
    local args="--counters gw=http://127.0.0.1:$(admin_of "$1")/metrics"
    case $1 in
    sidetrace) args+=" --counters sink=http://127.0.0.1:$SINK_PORT/stats" ;;
    sidetrace-spool) args+=" --counters sink=http://127.0.0.1:$SPOOL_SINK_PORT/stats" ;;
    esac
    echo "$args"
}

# Report files are numbered in run order, which is the order of the results page. A global,
# not an echo: a $(...) would bump the counter in a subshell only.
SEQ=0
next_out() { # scenario target -> $OUT_FILE
    SEQ=$((SEQ + 1))
    printf -v OUT_FILE '%s/%03d-%s-%s.json' "$JSON" "$SEQ" "$1" "$2"
}

# F_*: the feature scenarios (capture levels, export, spooling, replay), shorter than the rest.
# The quick run checks that everything works, no more: no settle time after the export runs, and
# the collector-down gateway retries the collector at least every second (default: backoff up to
# 30 s), so that the smoke run does not wait for it.
if [[ $QUICK == 1 ]]; then
    A1_RATE=100 A3_RATE=300 B_RATE=100 E_RATE=50 DUR=1 C_CONN=8 C_DUR=1 C_MAX=300
    SLOW_N=20 SLOW_HOLD=2 AFTER_SLOW=0.5 PAUSE=0.1 WARMUP=50
    F_RATE=100 F_DUR=1 F_CONN=8 F_MAX=300 SETTLE_MS=0 REPLAY_WAIT=30
    printf '\n[export]\nreplay_backoff_max_ms = 1000\n' >>"$WORK/sidetrace-spool.toml"
else
    A1_RATE=1000 A3_RATE=3000 B_RATE=500 E_RATE=500 DUR=15 C_CONN=64 C_DUR=10 C_MAX=2000000
    SLOW_N=1000 SLOW_HOLD=30 AFTER_SLOW=2 PAUSE=1 WARMUP=1000
    F_RATE=1000 F_DUR=8 F_CONN=64 F_MAX=2000000 SETTLE_MS=1500 REPLAY_WAIT=60
fi

# One scenario, run against each target in turn: interleaving the targets spreads any
# background noise of the shared machine over all of them. nginx is left out when not running.
scenario_on() { # "targets..." id title mode [bench-load run args...]
    local targets=$1 id=$2 title=$3 mode=$4 target
    shift 4
    for target in $targets; do
        [[ $target == nginx && $USE_NGINX != 1 ]] && continue
        echo "run.sh: $id $target" >&2
        next_out "$id" "$target"
        # shellcheck disable=SC2046  # watch_args and counter_args are meant to split into words
        "${NICE[@]}" "${DRIVER_CPU[@]}" "$LOAD" run --scenario "$id" --title "$title" --target "$target" --mode "$mode" \
            --url "http://127.0.0.1:$(port_of "$target")$(path_of "$target" "$mode")" \
            $(watch_args "$target") $(counter_args "$target") --out "$OUT_FILE" "$@"
        sleep "$PAUSE"
    done
}

scenario() { # id title mode [bench-load run args...]: direct, nginx, floor and the default gateway
    scenario_on "${TARGETS[*]}" "$@"
}

warm_up() { # target
    "${NICE[@]}" "${DRIVER_CPU[@]}" "$LOAD" run --rate "$WARMUP" --duration 1 --mode stream \
        --url "http://127.0.0.1:$(port_of "$1")$(path_of "$1" stream)" >/dev/null
}

snapshot() { # id
    local target
    for target in "${TARGETS[@]}"; do
        [[ $target == direct ]] && continue
        next_out "$1" "$target"
        # shellcheck disable=SC2046
        "$LOAD" snapshot --scenario "$1" --target "$target" $(watch_args "$target") \
            --out "$OUT_FILE"
    done
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
sleep 1
snapshot idle

# Warm-up, not recorded: connection pools, allocator arenas, page cache.
for target in "${TARGETS[@]}"; do
    warm_up "$target"
done
sleep "$PAUSE"

# Cost headers: the inspected route prices the call and says so; the raw route must not.
for target in sidetrace sidetrace-raw; do
    next_out probe "$target"
    expect=(--expect-header x-sidetrace-cost-usd)
    [[ $target == sidetrace-raw ]] && expect=(--expect-no-header x-sidetrace-cost-usd)
    "$LOAD" probe --scenario probe --target "$target" --mode chat "${expect[@]}" \
        --url "http://127.0.0.1:$(port_of "$target")$(path_of "$target" chat)" --out "$OUT_FILE"
done

# a1k, b and c also run on the raw route of the same gateway: the tap's cost, before / after
# (not in the headline run).
WITH_RAW="direct nginx floor sidetrace-raw sidetrace"
[[ $HEADLINE == 1 ]] && WITH_RAW="direct nginx floor sidetrace"
scenario_on "$WITH_RAW" a1k "non-stream chat, open loop $A1_RATE req/s, ${DUR} s" chat \
    --rate "$A1_RATE" --duration "$DUR"
scenario a3k "non-stream chat, open loop $A3_RATE req/s, ${DUR} s" chat \
    --rate "$A3_RATE" --duration "$DUR"
scenario_on "$WITH_RAW" b "stream chat, 20 chunks, open loop $B_RATE req/s, ${DUR} s" stream \
    --rate "$B_RATE" --duration "$DUR" --chunks 20
# The same stream with 5 ms between chunks, as tokens come from a model: nobody can batch
# chunks that arrive apart, so this shows the per-chunk cost without the burst advantage.
if [[ $HEADLINE == 0 ]]; then
    scenario b5 "stream chat, 20 chunks 5 ms apart, open loop $B_RATE req/s, ${DUR} s" stream \
        --rate "$B_RATE" --duration "$DUR" --chunks 20 --delay-ms 5
fi
scenario_on "$WITH_RAW" c "non-stream chat, closed loop, $C_CONN connections, ${C_DUR} s (max throughput)" chat \
    --connections "$C_CONN" --duration "$C_DUR" --max-requests "$C_MAX"
if [[ $HEADLINE == 0 ]]; then
    scenario e "Anthropic messages stream, 20 chunks, open loop $E_RATE req/s, ${DUR} s" anthropic \
        --rate "$E_RATE" --duration "$DUR" --chunks 20
fi

# Memory with many open streams: only the proxies, the direct run would measure nothing new.
SLOW_TARGETS=("${TARGETS[@]:1}")
for target in "${SLOW_TARGETS[@]}"; do
    echo "run.sh: slow $target" >&2
    next_out slow "$target"
    # shellcheck disable=SC2046
    "${NICE[@]}" "$LOAD" run --slow-streams "$SLOW_N" --hold-secs "$SLOW_HOLD" --target "$target" \
        --scenario slow --title "$SLOW_N open streams, 1 chunk/s for ${SLOW_HOLD} s" \
        --url "http://127.0.0.1:$(port_of "$target")/v1/chat/completions" \
        $(watch_args "$target") --out "$OUT_FILE"
    sleep "$AFTER_SLOW"
    next_out after-slow "$target"
    # shellcheck disable=SC2046
    "$LOAD" snapshot --scenario after-slow --target "$target" $(watch_args "$target") \
        --out "$OUT_FILE"
done

# The features' costs, each against a baseline in the same run (not in the headline run).
features() {
    # Capture levels: two more gateways, none and redacted, against the default one (metadata).
    echo "run.sh: starting the capture-level gateways" >&2
    start_gateway sidetrace-none "$NONE_PORT" "$NONE_ADMIN" SIDETRACE_CAPTURE_LEVEL=none "${EXPORT_ENV[@]}"
    NONE_PID=$STARTED_PID
    start_gateway sidetrace-redacted "$REDACTED_PORT" "$REDACTED_ADMIN" SIDETRACE_CAPTURE_LEVEL=redacted \
        "${EXPORT_ENV[@]}"
    REDACTED_PID=$STARTED_PID
    warm_up sidetrace-none
    warm_up sidetrace-redacted
    sleep "$PAUSE"
    scenario_on "sidetrace-none sidetrace sidetrace-redacted" cap \
        "non-stream chat, open loop $F_RATE req/s, ${F_DUR} s, by capture level" chat \
        --rate "$F_RATE" --duration "$F_DUR"
    stop_proc "$NONE_PID"
    stop_proc "$REDACTED_PID"

    # The trace store: a gateway with it off against the default one (on: every span written to
    # sled by a background thread). Open loop for the added latency, closed loop for CPU and
    # throughput; the default gateway's counters say every span was written and none dropped.
    echo "run.sh: starting the gateway without a trace store" >&2
    printf '\n[store]\nenabled = false\n' | cat "$WORK/sidetrace.toml" - >"$WORK/sidetrace-nostore.toml"
    start_gateway sidetrace-nostore "$NOSTORE_PORT" "$NOSTORE_ADMIN" "${EXPORT_ENV[@]}"
    NOSTORE_PID=$STARTED_PID
    warm_up sidetrace-nostore
    sleep "$PAUSE"
    COUNTERS=1
    scenario_on "sidetrace-nostore sidetrace" st1k \
        "non-stream chat, open loop $F_RATE req/s, ${F_DUR} s, trace store off / on" chat \
        --rate "$F_RATE" --duration "$F_DUR" --settle-ms "$SETTLE_MS"
    scenario_on "sidetrace-nostore sidetrace" stc \
        "non-stream chat, closed loop, $F_CONN connections, ${F_DUR} s, trace store off / on" chat \
        --connections "$F_CONN" --duration "$F_DUR" --max-requests "$F_MAX" --settle-ms "$SETTLE_MS"
    COUNTERS=0
    stop_proc "$NOSTORE_PID"

    # Span export: the default gateway (exporting to the sink) against one with no OTLP endpoint
    # (export off) and one whose collector is down (its endpoint is a closed port).
    echo "run.sh: starting the gateways without export and with the collector down" >&2
    start_gateway sidetrace-noexport "$EXPORT_PORT" "$EXPORT_ADMIN"
    NOEXPORT_PID=$STARTED_PID
    start_gateway sidetrace-spool "$SPOOL_PORT" "$SPOOL_ADMIN" \
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SPOOL_SINK_PORT" \
        OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
    SPOOL_PID=$STARTED_PID
    warm_up sidetrace-noexport
    warm_up sidetrace-spool
    sleep "$PAUSE"
    COUNTERS=1
    X_TARGETS="sidetrace-noexport sidetrace sidetrace-spool"
    scenario_on "$X_TARGETS" x1k "non-stream chat, open loop $F_RATE req/s, ${F_DUR} s, by span export" \
        chat --rate "$F_RATE" --duration "$F_DUR" --settle-ms "$SETTLE_MS"
    scenario_on "$X_TARGETS" xc \
        "non-stream chat, closed loop, $F_CONN connections, ${F_DUR} s, by span export" chat \
        --connections "$F_CONN" --duration "$F_DUR" --max-requests "$F_MAX" --settle-ms "$SETTLE_MS"

    # Replay: the collector comes up on the collector-down gateway's endpoint. A watcher, started
    # just before, polls that gateway's metrics until its spool is empty (bounded); once the first
    # spans are replayed, a closed-loop run measures the throughput during the replay, until the
    # spool is empty.
    echo "run.sh: the collector comes back: replay" >&2
    next_out replay sidetrace-spool
    "${NICE[@]}" "$LOAD" replay-watch --metrics "http://127.0.0.1:$SPOOL_ADMIN/metrics" \
        --timeout "$REPLAY_WAIT" --started-file "$WORK/replay-started" --scenario replay \
        --target sidetrace-spool --title "spool replay after the collector came back" \
        --out "$OUT_FILE" &
    WATCHER_PID=$!
    PIDS+=("$WATCHER_PID")
    sleep 0.2
    start_sink sink-replay "$SPOOL_SINK_PORT"
    REPLAY_SINK_PID=$STARTED_PID
    for _ in $(seq $((REPLAY_WAIT * 10))); do
        [[ -e $WORK/replay-started ]] && break
        alive "$WATCHER_PID" || break
        sleep 0.1
    done
    if [[ -e $WORK/replay-started ]]; then
        scenario_on sidetrace-spool rc \
            "non-stream chat, closed loop, $F_CONN connections, during the replay (at most ${F_DUR} s)" \
            chat --connections "$F_CONN" --duration "$F_DUR" --max-requests "$F_MAX" \
            --until-drained "http://127.0.0.1:$SPOOL_ADMIN/metrics"
    else
        echo "run.sh: nothing was replayed within ${REPLAY_WAIT} s" >&2
    fi
    # The watcher ends by itself, when the spool is empty or at its timeout; stopped if it has not.
    for _ in $(seq $(((REPLAY_WAIT + 5) * 10))); do
        alive "$WATCHER_PID" || break
        sleep 0.1
    done
    stop_proc "$WATCHER_PID"
    COUNTERS=0
    # Gateways first: a graceful shutdown exports what is queued, so the sinks go last.
    stop_proc "$NOEXPORT_PID"
    stop_proc "$SPOOL_PID"
    stop_proc "$REPLAY_SINK_PID"
}
if [[ $HEADLINE == 0 ]]; then
    features
fi

# The headline scenarios again, pinned: the proxies restarted on CPU 0 (nginx with one worker,
# bench-floor and sidetrace seeing one CPU: one runtime worker), the mock and the sink moved to
# CPU 1 with every thread, the driver started there. Scenario ids get "-pin".
if [[ $PIN == 1 ]]; then
    echo "run.sh: the pinned pass" >&2
    PROXY_CPU=(taskset -c 0)
    DRIVER_CPU=(taskset -c 1)
    taskset -a -p -c 1 "$MOCK_PID" >/dev/null
    taskset -a -p -c 1 "$SINK_PID" >/dev/null
    stop_proc "$GATEWAY_PID"
    start_gateway sidetrace "$GATEWAY_PORT" "$ADMIN_PORT" "${EXPORT_ENV[@]}"
    GATEWAY_PID=$STARTED_PID
    if [[ $USE_NGINX == 1 ]]; then
        stop_proc "$NGINX_PID"
        start_nginx 1
    fi
    stop_proc "$FLOOR_PID"
    start_floor
    for target in "${TARGETS[@]}"; do
        warm_up "$target"
    done
    sleep "$PAUSE"
    scenario a1k-pin "pinned: non-stream chat, open loop $A1_RATE req/s, ${DUR} s" chat \
        --rate "$A1_RATE" --duration "$DUR"
    scenario a3k-pin "pinned: non-stream chat, open loop $A3_RATE req/s, ${DUR} s" chat \
        --rate "$A3_RATE" --duration "$DUR"
    scenario b-pin "pinned: stream chat, 20 chunks, open loop $B_RATE req/s, ${DUR} s" stream \
        --rate "$B_RATE" --duration "$DUR" --chunks 20
    scenario c-pin "pinned: non-stream chat, closed loop, $C_CONN connections, ${C_DUR} s (max throughput)" \
        chat --connections "$C_CONN" --duration "$C_DUR" --max-requests "$C_MAX"
fi
# Gateways first: a graceful shutdown exports what is queued, so the sink goes last.
stop_proc "$FLOOR_PID"
stop_proc "$GATEWAY_PID"
stop_proc "$SINK_PID"

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)


# The results page.
if [[ $QUICK == 1 ]]; then
    OUT=$HERE/results/quick.md
else
    OUT=$HERE/results/latest.md
fi
mkdir -p "$HERE/results"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# The command as run, for the page.
ARGS=""
[[ $QUICK == 1 ]] && ARGS+=" --quick"
[[ $HEADLINE == 1 ]] && ARGS+=" --headline"
[[ $PIN == 1 ]] && ARGS+=" --pin"
[[ $PROFILE == profiling ]] && ARGS+=" --profiling"
[[ ${#NICE[@]} -gt 0 ]] && ARGS+=" --nice ${NICE[2]}"
# Changes to the bench itself do not change what is measured.
[[ -n $(git -C "$ROOT" status --porcelain -- . ':(exclude)load-tests' 2>/dev/null) ]] &&
    commit+=" (plus uncommitted changes)"
LAYERS=$(grep -o '\.layer([A-Za-z]*' "$ROOT/src/proxy/stack.rs" 2>/dev/null | sed 's/^\.layer(//' | paste -sd, - | sed 's/,/, /g')
nginx_version="not run"
[[ $USE_NGINX == 1 ]] && nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
{
    echo "# sidetrace benchmark: $([[ $QUICK == 1 ]] && echo quick smoke run || echo latest results)"
    echo
    echo "Written by \`bash load-tests/run.sh$ARGS\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "## Machine and versions"
    echo
    echo "- CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores"
    echo "- memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo); kernel $(uname -r)"
    echo "- load average (1, 5, 15 min) before the run: $LOADAVG; after: $LOADAVG_END (the bench"
    echo "  itself adds about 1; more means other work shared the machine and the figures are noisier)"
    echo "- sidetrace: commit $commit, $(rustc --version 2>/dev/null || echo 'rustc unknown')"
    echo "- nginx: $nginx_version"
    echo
    echo "## Settings"
    echo
    echo "- Everything on one machine over 127.0.0.1: the load driver, the mock upstream and the proxy"
    echo "  under test share the same $(nproc) cores."
    if [[ $PIN == 1 ]]; then
        echo "- Pinned pass (scenario ids ending in \`-pin\`, after everything else): nginx (one worker"
        echo "  process) and sidetrace restarted under \`taskset -c 0\`, the driver, the mock and the OTLP"
        echo "  sink on CPU 1 (\`taskset -c 1\`; the mock and sink moved with all their threads)."
    fi
    echo "- Targets: **direct** (bench-mock itself), **nginx** (\`proxy_pass\`, \`proxy_buffering off\`,"
    echo "  \`proxy_http_version 1.1\`, upstream keepalive 128, \`worker_processes 2\` (1 pinned), access"
    echo "  log off), **floor** (bench-floor: hyper 1's HTTP/1.1 server and hyper-util's pooled client"
    echo "  on tokio's multi-threaded runtime, one worker per CPU, forwarding each request and its"
    echo "  body as they are: what any hyper-based proxy costs before it does anything of its own),"
    echo "  **sidetrace** (\`sidetrace serve\`, \`SIDETRACE_LOG=warn\`, default limits, capture"
    echo "  level metadata, the trace store on (the default: every span kept on disk, content"
    echo "  redacted), **span export on**: \`OTEL_EXPORTER_OTLP_ENDPOINT\` = a bench-mock OTLP/HTTP sink,"
    echo "  \`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf\`, export settings at their defaults (batches of"
    echo "  64 spans or 1 s), its own data dir in the temp dir) on the default inspected route"
    echo "  \`/v1/chat/completions\`."
    echo "- Gateway request path, as built from this tree (the layers of src/proxy/stack.rs, outermost"
    echo "  first): $LAYERS; then the upstream client."
    echo "- Gateway config file, every gateway process (defaults otherwise): one more provider,"
    echo "  \`[providers.raw]\` with \`base_url\` = the mock and \`paths = []\`, so that"
    echo "  \`/raw/v1/chat/completions\` is passthrough: no request inspection, no tap parsing, no cost."
    echo "  Target **sidetrace-raw** is the default gateway on that route."
    echo "- Feature targets, each a gateway process of its own started for its scenarios, warmed up,"
    echo "  then stopped: **sidetrace-none** / **sidetrace-redacted** (\`SIDETRACE_CAPTURE_LEVEL\`),"
    echo "  **sidetrace-nostore** (\`[store] enabled = false\`), all three exporting to the same sink;"
    echo "  **sidetrace-noexport** (no OTLP endpoint: span export off), **sidetrace-spool** (endpoint a"
    echo "  closed loopback port until the replay, when a second sink starts on it). Their counters"
    echo "  come from their \`/metrics\`."
    echo "- Mock: bench-mock, HTTP/1.1 keep-alive, TCP_NODELAY, no delay between chunks unless stated."
    echo "- Driver: bench-load. Open loop: requests due at fixed intervals, latency measured from the"
    echo "  due time (no coordinated omission), at most 2,000 in flight (more count as errors)."
    echo "  Closed loop: each connection sends its next request when the previous answer ended."
    echo "- Added latency = proxy minus direct, same percentile, same scenario of this run."
    echo "- CPU per request = the proxy's utime + stime over the run, divided by its successful requests"
    echo "  (nginx: master and workers summed). RSS: VmRSS sampled every 100 ms, peak kept."
    echo "- Latency figures in ms. TTFB = first body byte."
    [[ ${#NICE[@]} -gt 0 ]] && echo "- All bench processes ran at nice ${NICE[2]}, ahead of other work on the machine."
    echo
    echo "## Results"
    echo
} >"$OUT"
set +e
"$LOAD" report "$JSON" --fail-on-errors 'direct,sidetrace*' $([[ $QUICK == 1 ]] && echo --quick) >>"$OUT"
status=$?
set -e
echo "run.sh: results in $OUT"
exit "$status"
