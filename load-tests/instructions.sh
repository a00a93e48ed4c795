#!/usr/bin/env bash
# User-space instructions per call of gateway builds, counted by valgrind's callgrind: a measure
# of the gateway's own work that does not move with the machine's noise (CPU time on a shared
# VM drifts by up to 30% within minutes; this count moves by about 0.3% between runs of one
# invocation, up to 1.5% between invocations: compare builds in one, alternating them). It
# leaves out the kernel (sockets, writes), so it is a companion to CPU time, not a stand-in.
#
#   bash load-tests/instructions.sh [options] TARGET...
#     TARGET         a sidetrace binary, BINARY@CONFIG (CONFIG's lines added to the generated
#                    config, e.g. `[providers.openai]` `paths = []` for the passthrough route),
#                    or `floor` (bench-floor, the bare hyper proxy)
#     --calls N      calls counted (default 3000), after 500 to warm up
#     --store S      on | off | metadata: the trace store's setting (default on: the default)
#     --no-export    no span export (default: export on, to a bench-mock sink)
#     --conns C      connections of the closed loop (default 8)
#     --body FILE    the chat request body to send (default: the bench's short chat), e.g. a
#                    long conversation from `bench-load conversation`
#     --bench DIR    where bench-load, bench-mock and bench-floor are (default:
#                    $CARGO_TARGET_DIR/release)
#
# Each target runs under callgrind against a bench-mock upstream on /v1/chat/completions,
# gateways with span export on (to a bench-mock sink) unless --no-export. The counters are
# zeroed after the warm-up and dumped 3 s after the last counted call (the trace store's and the
# export's batches of those calls are counted). Needs valgrind (Debian: `apt-get install
# valgrind`); about a minute a target. Stops exactly the processes it started.
set -euo pipefail
CALLS=3000 STORE=on CONNS=8 EXPORT=1 BODY=()
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH=${CARGO_TARGET_DIR:-$HERE/../target}/release
TARGETS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --calls) CALLS=$2; shift ;;
    --store) STORE=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --body) BODY=(--body "$2"); shift ;;
    --no-export) EXPORT=0 ;;
    --bench) BENCH=$2; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) TARGETS+=("$1") ;;
    esac
    shift
done
[[ ${#TARGETS[@]} -gt 0 ]] || { echo "instructions.sh: name at least one target" >&2; exit 2; }
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    { echo "instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
LOAD=$BENCH/bench-load MOCK=$BENCH/bench-mock FLOOR=$BENCH/bench-floor

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-instructions.XXXXXX")
source "$HERE/procs.sh"

read -r MOCK_PORT SINK_PORT <<<"$("$LOAD" ports 2 | tr '\n' ' ')"
"$MOCK" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=("$!")
"$MOCK" --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
PIDS+=("$!")
wait_port "$MOCK_PORT"
wait_port "$SINK_PORT"

: >"$WORK/config.toml"
case $STORE in
on) ;;
off) printf '[store]\nenabled = false\n' >"$WORK/config.toml" ;;
metadata) printf '[store]\ncapture = "metadata"\n' >"$WORK/config.toml" ;;
*) echo "instructions.sh: --store on, off or metadata" >&2; exit 2 ;;
esac

i=0
for t in "${TARGETS[@]}"; do
    i=$((i + 1))
    read -r port admin <<<"$("$LOAD" ports 2 | tr '\n' ' ')"
    mkdir -p "$WORK/data$i"
    callgrind=(valgrind --tool=callgrind --callgrind-out-file="$WORK/cg$i.%p" --dump-instr=no)
    if [[ $t == floor ]]; then
        "${callgrind[@]}" "$FLOOR" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$MOCK_PORT" \
            >"$WORK/gw$i.log" 2>&1 &
    else
        cp "$WORK/config.toml" "$WORK/config$i.toml"
        [[ $t == *@* ]] && cat "${t#*@}" >>"$WORK/config$i.toml"
        export_env=()
        if [[ $EXPORT == 1 ]]; then
            export_env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
                OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)
        fi
        env -u SIDETRACE_CONFIG -u OTEL_EXPORTER_OTLP_ENDPOINT \
            SIDETRACE_LISTEN="127.0.0.1:$port" SIDETRACE_ADMIN_LISTEN="127.0.0.1:$admin" \
            SIDETRACE_INGEST_ENABLED=false SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
            SIDETRACE_LOG=warn SIDETRACE_DATA_DIR="$WORK/data$i" "${export_env[@]}" \
            "${callgrind[@]}" "${t%%@*}" serve --config "$WORK/config$i.toml" >"$WORK/gw$i.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" 60
    url="http://127.0.0.1:$port/v1/chat/completions"
    "$LOAD" run --mode chat "${BODY[@]}" --url "$url" --connections "$CONNS" --duration 120 \
        --max-requests 500 >/dev/null
    sleep 2
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$LOAD" run --mode chat "${BODY[@]}" --url "$url" --connections "$CONNS" --duration 600 \
        --max-requests "$CALLS" --out "$WORK/run$i.json" >/dev/null
    sleep 3
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$WORK/run$i.json")
    ir=$(cat "$WORK"/cg"$i".*.1 | awk '/^summary:/ { s += $2 } END { printf "%.0f\n", s }')
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    settings="store $STORE, export $([[ $EXPORT == 1 ]] && echo on || echo off)"
    [[ $t == floor ]] && settings="bare hyper"
    echo "$t  ($settings)  calls $ok  instructions per call $((ir / ok))"
done
