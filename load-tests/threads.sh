#!/usr/bin/env bash
# Where a gateway's CPU per call goes, by thread: user and system time of each of its threads
# (grouped by thread name: the runtime's workers, the trace store's writer, sled's threads)
# over one closed-loop run, from /proc/<pid>/task/*/stat, per call. Answers what the process
# total of ab.sh cannot: whether a feature's cost is on the request path (the workers) or in a
# thread of its own, and whether it is user or kernel time.
#
#   bash load-tests/threads.sh [options] SIDETRACE_BINARY[@CONFIG]...
#     --conns C    connections of the closed loop (default 64); --secs S  its length (default 8)
#     --no-pin     do not pin (default: the gateway on CPU 0, driver, mock and sink on CPU 1)
#     --bench DIR  where bench-load and bench-mock are (default: $CARGO_TARGET_DIR/release)
#
# Each gateway exports every span over OTLP/HTTP to a bench-mock sink, against a bench-mock
# upstream on /v1/chat/completions, after a 1 s warm-up at 1,000 req/s. One run per target: the
# figures move between runs as much as ab.sh's rounds do, so run it more than once. Stops
# exactly the processes it started.
set -euo pipefail
CONNS=64 SECS=8 PIN=1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${CARGO_TARGET_DIR:-$HERE/../target}/release
TARGETS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --conns) CONNS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --no-pin) PIN=0 ;;
    --bench) BENCH=$2; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) TARGETS+=("$1") ;;
    esac
    shift
done
[[ ${#TARGETS[@]} -gt 0 ]] || { echo "threads.sh: name at least one sidetrace binary" >&2; exit 2; }
LOAD=$BENCH/bench-load MOCK=$BENCH/bench-mock
PROXY_CPU=() DRIVER_CPU=()
if [[ $PIN == 1 ]]; then PROXY_CPU=(taskset -c 0) DRIVER_CPU=(taskset -c 1); fi
TICK=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-threads.XXXXXX")
source "$HERE/procs.sh"

read -r MOCK_PORT SINK_PORT <<<"$("$LOAD" ports 2 | tr '\n' ' ')"
"${DRIVER_CPU[@]}" "$MOCK" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=("$!")
"${DRIVER_CPU[@]}" "$MOCK" --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
PIDS+=("$!")
wait_port "$MOCK_PORT"
wait_port "$SINK_PORT"

# Clock ticks of user and system time by thread name: "name user system" lines, sorted.
ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        # The name is in parentheses and may hold spaces; the times are fields 14 and 15.
        printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12, $13}')"
    done 2>/dev/null | awk '{u[$1] += $2; s[$1] += $3} END {for (k in u) print k, u[k], s[k]}' | sort
}

i=0
for t in "${TARGETS[@]}"; do
    i=$((i + 1))
    binary=${t%%@*} args=(serve)
    [[ $t == *@* ]] && args+=(--config "${t#*@}")
    read -r port admin <<<"$("$LOAD" ports 2 | tr '\n' ' ')"
    mkdir -p "$WORK/data$i"
    "${PROXY_CPU[@]}" env -u SIDETRACE_CONFIG -u OTEL_EXPORTER_OTLP_ENDPOINT \
        SIDETRACE_LISTEN="127.0.0.1:$port" SIDETRACE_ADMIN_LISTEN="127.0.0.1:$admin" \
        SIDETRACE_INGEST_ENABLED=false SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
        SIDETRACE_LOG=warn SIDETRACE_DATA_DIR="$WORK/data$i" \
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
        "$binary" "${args[@]}" >"$WORK/gw$i.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    url="http://127.0.0.1:$port/v1/chat/completions"
    "${DRIVER_CPU[@]}" "$LOAD" run --rate 1000 --duration 1 --mode chat --url "$url" >/dev/null
    ticks "$pid" >"$WORK/before$i"
    "${DRIVER_CPU[@]}" "$LOAD" run --mode chat --url "$url" --connections "$CONNS" \
        --duration "$SECS" --out "$WORK/run$i.json" >/dev/null
    ticks "$pid" >"$WORK/after$i"
    ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$WORK/run$i.json")
    echo "$t: $ok calls ($((ok / SECS)) req/s)"
    join "$WORK/before$i" "$WORK/after$i" | awk -v n="$ok" -v tick="$TICK" '
        { u = ($4 - $2) * 1e6 / tick / n; s = ($5 - $3) * 1e6 / tick / n
          if (u + s > 0) printf "  %-18s user %6.1f µs/call  system %6.1f µs/call\n", $1, u, s
          tu += u; ts += s }
        END { printf "  %-18s user %6.1f µs/call  system %6.1f µs/call  (%.1f)\n", "all", tu, ts, tu + ts }'
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
