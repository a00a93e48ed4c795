#!/usr/bin/env bash
# A/B of gateway builds (or nginx) in one run: each target in turn under the same closed or open
# loop, repeated, so that the noise of a shared machine falls on all of them alike. Prints each
# round's throughput and proxy CPU per request, then the medians and their ratios to the first.
#
#   bash load-tests/ab.sh [options] TARGET...
#     TARGET       a sidetrace binary, BINARY@CONFIG (started with `--config CONFIG`, e.g. to
#                  compare settings on one build), `nginx` (one worker, proxy_pass,
#                  buffering off), or `floor` (bench-floor: a minimal hyper proxy)
#     --rounds N   rounds (default 3); --secs S  length of each run (default 5)
#     --conns C    closed loop with C connections (default 64); --rate R  open loop instead
#     --mode M     chat | stream (default chat); --chunks N  content chunks an answer (default
#                  20); --delay-ms D  the mock's pause between chunks (default 0)
#     --body FILE  send FILE as each request's body (e.g. `bench-load conversation --language
#                  french > conv.json`: a long conversation, what agents resend each call)
#     --no-pin     do not pin (default: every proxy on CPU 0, driver, mock and sink on CPU 1)
#     --no-export  no span export (default: every gateway exports over OTLP/HTTP to a sink)
#     --bench DIR  where bench-load and bench-mock are (default: $CARGO_TARGET_DIR/release)
#     --env NAME=VALUE  extra environment for every gateway (repeatable)
#
# Stops exactly the processes it started.
set -euo pipefail
ROUNDS=3 SECS=5 CONNS=64 RATE="" MODE=chat PIN=1 EXPORT=1 EXTRA_ENV=() BODY=() CHUNKS=20 DELAY=0
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${CARGO_TARGET_DIR:-$HERE/../target}/release
TARGETS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --mode) MODE=$2; shift ;;
    --body) BODY=(--body "$2"); shift ;;
    --chunks) CHUNKS=$2; shift ;;
    --delay-ms) DELAY=$2; shift ;;
    --no-pin) PIN=0 ;;
    --no-export) EXPORT=0 ;;
    --bench) BENCH=$2; shift ;;
    --env) EXTRA_ENV+=("$2"); shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) TARGETS+=("$1") ;;
    esac
    shift
done
[[ ${#TARGETS[@]} -gt 0 ]] || { echo "ab.sh: name at least one target" >&2; exit 2; }
LOAD=$BENCH/bench-load MOCK=$BENCH/bench-mock FLOOR=$BENCH/bench-floor
PROXY_CPU=() DRIVER_CPU=()
if [[ $PIN == 1 ]]; then PROXY_CPU=(taskset -c 0) DRIVER_CPU=(taskset -c 1); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-ab.XXXXXX")
source "$HERE/procs.sh"

read -r MOCK_PORT SINK_PORT <<<"$("$LOAD" ports 2 | tr '\n' ' ')"
"${DRIVER_CPU[@]}" "$MOCK" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
"${DRIVER_CPU[@]}" "$MOCK" --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
PIDS+=("$!")
wait_port "$MOCK_PORT"
wait_port "$SINK_PORT"

URLS=() WATCH=() NAMES=()
i=0
for t in "${TARGETS[@]}"; do
    i=$((i + 1))
    read -r port admin <<<"$("$LOAD" ports 2 | tr '\n' ' ')"
    if [[ $t == nginx ]]; then
        mkdir -p "$WORK/nginx$i"
        user_line=""
        [[ $EUID == 0 ]] && user_line="user root;"
        cat >"$WORK/nginx$i/nginx.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $WORK/nginx$i/nginx.pid;
error_log $WORK/nginx$i/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx$i/cb;
    proxy_temp_path $WORK/nginx$i/p;
    keepalive_requests 1000000;
    upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
        "${PROXY_CPU[@]}" nginx -p "$WORK/nginx$i/" -c "$WORK/nginx$i/nginx.conf" \
            -e "$WORK/nginx$i/error.log" >"$WORK/nginx$i.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_port "$port"
        pids=$pid
        for c in $(cat /proc/"$pid"/task/*/children); do pids+=",$c"; done
        WATCH+=("$pids")
        NAMES+=("nginx")
    elif [[ $t == floor ]]; then
        "${PROXY_CPU[@]}" "$FLOOR" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$MOCK_PORT" \
            >"$WORK/floor$i.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_port "$port"
        WATCH+=("$pid")
        NAMES+=("floor")
    else
        mkdir -p "$WORK/data$i"
        binary=${t%%@*} config_args=()
        [[ $t == *@* ]] && config_args=(--config "${t#*@}")
        export_env=()
        if [[ $EXPORT == 1 ]]; then
            export_env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
                OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
        fi
        "${PROXY_CPU[@]}" env -u SIDETRACE_CONFIG -u OTEL_EXPORTER_OTLP_ENDPOINT \
            SIDETRACE_LISTEN="127.0.0.1:$port" SIDETRACE_ADMIN_LISTEN="127.0.0.1:$admin" \
            SIDETRACE_INGEST_ENABLED=false SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
            SIDETRACE_LOG=warn SIDETRACE_DATA_DIR="$WORK/data$i" "${export_env[@]}" \
            "${EXTRA_ENV[@]}" "$binary" serve "${config_args[@]}" >"$WORK/gw$i.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_port "$port"
        WATCH+=("$pid")
        NAMES+=("$t")
    fi
    URLS+=("http://127.0.0.1:$port/v1/chat/completions")
    "${DRIVER_CPU[@]}" "$LOAD" run --rate 1000 --duration 1 --mode "$MODE" "${BODY[@]}" --url "${URLS[-1]}" >/dev/null
done

load_args=(--connections "$CONNS" --max-requests 5000000)
[[ -n $RATE ]] && load_args=(--rate "$RATE")
for r in $(seq "$ROUNDS"); do
    for j in "${!TARGETS[@]}"; do
        "${DRIVER_CPU[@]}" "$LOAD" run --mode "$MODE" "${BODY[@]}" --chunks "$CHUNKS" --delay-ms "$DELAY" --url "${URLS[$j]}" --duration "$SECS" \
            "${load_args[@]}" --watch "proxy=${WATCH[$j]}" --watch "mock=$MOCK_PID" \
            --settle-ms 1200 --out "$WORK/r$r-$j.json"
        jq -r --arg n "$j ${NAMES[$j]}" --arg r "$r" \
            '"round \($r) \($n): \(.achieved_rps|floor) req/s, proxy \(.processes.proxy.cpu_us_per_req*10|floor/10) µs/req, p50 \(.total_ms.p50) ms, p99 \(.total_ms.p99) ms, errors \(.errors), peak RSS \(.processes.proxy.peak_rss_kib/1024|floor) MiB"' \
            "$WORK/r$r-$j.json"
        sleep 0.5
    done
done
echo "medians (ratio to target 0):"
for j in "${!TARGETS[@]}"; do
    jq -s -r --arg n "$j ${NAMES[$j]}" '
        def med: sort | .[length/2|floor];
        "\($n): \(map(.achieved_rps)|med|floor) req/s, \(map(.processes.proxy.cpu_us_per_req)|med*10|floor/10) µs/req, p50 \(map(.total_ms.p50)|med) ms, p99 \(map(.total_ms.p99)|med) ms"' \
        "$WORK"/r*-"$j".json
done | tee "$WORK/medians.txt"
base_rps=$(jq -s 'map(.achieved_rps)|sort|.[length/2|floor]' "$WORK"/r*-0.json)
base_cpu=$(jq -s 'map(.processes.proxy.cpu_us_per_req)|sort|.[length/2|floor]' "$WORK"/r*-0.json)
for j in "${!TARGETS[@]}"; do
    jq -s -r --arg n "$j" --argjson br "$base_rps" --argjson bc "$base_cpu" '
        def med: sort | .[length/2|floor];
        "target \($n) / target 0: throughput \((map(.achieved_rps)|med) / $br * 100 | floor / 100)x, CPU per request \((map(.processes.proxy.cpu_us_per_req)|med) / $bc * 100 | floor / 100)x"' \
        "$WORK"/r*-"$j".json
done
