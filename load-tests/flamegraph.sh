#!/usr/bin/env bash
# A flame graph of the gateway at saturation, as the headline benchmark runs it: the profiling
# build (release with symbols) pinned to CPU 0, exporting every span over OTLP/HTTP to a
# bench-mock sink; bench-mock and the driver on CPU 1; a closed loop of 64 connections on the
# inspected route for 8 s, recorded with `perf record --call-graph dwarf` (the gateway's process only; release
# code has no frame pointers, so `-g` alone would cut every stack short).
#
#   bash load-tests/flamegraph.sh OUT.svg      e.g. load-tests/results/flamegraph-after.svg
#     --no-build   use the binaries already in target/profiling
#     --secs S     length of the recording (default 8); --conns C (default 64)
#     --no-pin     leave every process on every CPU
#     --keep       keep the temp dir (perf.data, logs)
#     --call-graph M  perf's unwinding (default dwarf,16384; `fp` for a build with frame
#                  pointers: RUSTFLAGS="-C force-frame-pointers=yes")
#
# Needs perf (linux-perf). The flame graph is drawn by the `inferno` crate's binaries, installed
# once into target/tools by this script (`cargo install --locked`), like tests/setup-tools.sh
# installs the tests' tools. Stops exactly the processes it started.
set -euo pipefail
OUT="" BUILD=1 SECS=8 CONNS=64 PIN=1 KEEP=0 CALL_GRAPH=dwarf,16384
while [[ $# -gt 0 ]]; do
    case "$1" in
    --no-build) BUILD=0 ;;
    --secs) SECS=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --no-pin) PIN=0 ;;
    --keep) KEEP=1 ;;
    --call-graph) CALL_GRAPH=$2; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) OUT=$1 ;;
    esac
    shift
done
[[ -n $OUT ]] || { echo "flamegraph.sh: name the SVG to write" >&2; exit 2; }
command -v perf >/dev/null || { echo "flamegraph.sh: perf is not installed" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/profiling
TOOLS=$TARGET/tools
if [[ ! -x $TOOLS/bin/inferno-flamegraph ]]; then
    echo "flamegraph.sh: installing inferno into $TOOLS" >&2
    cargo install --locked --quiet inferno --root "$TOOLS"
fi
if [[ $BUILD == 1 ]]; then
    (cd "$ROOT" && cargo build --profile profiling -p sidetrace -p sidetrace-load-tests)
fi
PROXY_CPU=() DRIVER_CPU=()
if [[ $PIN == 1 ]]; then PROXY_CPU=(taskset -c 0) DRIVER_CPU=(taskset -c 1); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-flame.XXXXXX")
source "$HERE/procs.sh"

read -r MOCK_PORT SINK_PORT PORT ADMIN <<<"$("$BIN/bench-load" ports 4 | tr '\n' ' ')"
"${DRIVER_CPU[@]}" "$BIN/bench-mock" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=("$!")
"${DRIVER_CPU[@]}" "$BIN/bench-mock" --listen "127.0.0.1:$SINK_PORT" >"$WORK/sink.log" 2>&1 &
PIDS+=("$!")
wait_port "$MOCK_PORT"
wait_port "$SINK_PORT"
mkdir -p "$WORK/data"
"${PROXY_CPU[@]}" env -u SIDETRACE_CONFIG -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    SIDETRACE_LISTEN="127.0.0.1:$PORT" SIDETRACE_ADMIN_LISTEN="127.0.0.1:$ADMIN" \
    SIDETRACE_INGEST_ENABLED=false SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
    SIDETRACE_LOG=warn SIDETRACE_DATA_DIR="$WORK/data" \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
    "$BIN/sidetrace" serve >"$WORK/gateway.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_port "$PORT"
URL=http://127.0.0.1:$PORT/v1/chat/completions
"${DRIVER_CPU[@]}" "$BIN/bench-load" run --rate 1000 --duration 1 --mode chat --url "$URL" >/dev/null

perf record -F 499 --call-graph "$CALL_GRAPH" -p "$GW" -o "$WORK/perf.data" -- sleep "$SECS" >"$WORK/perf.log" 2>&1 &
PERF=$!
PIDS+=("$PERF")
"${DRIVER_CPU[@]}" "$BIN/bench-load" run --mode chat --url "$URL" --connections "$CONNS" \
    --duration "$SECS" --max-requests 5000000 --watch "proxy=$GW" --out "$WORK/run.json"
wait "$PERF" || true
jq -r '"\(.achieved_rps|floor) req/s, proxy \(.processes.proxy.cpu_us_per_req*10|floor/10) µs CPU per request, errors \(.errors)"' \
    "$WORK/run.json"
perf script -i "$WORK/perf.data" 2>/dev/null | "$TOOLS/bin/inferno-collapse-perf" >"$WORK/folded"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$TOOLS/bin/inferno-flamegraph" --title "sidetrace $commit, pinned, export on, $CONNS connections, ${SECS} s" \
    --width 1600 --minwidth 0.5 <"$WORK/folded" >"$OUT"
# The top of the profile as text, beside the SVG.
perf report -i "$WORK/perf.data" --no-children --percent-limit 0.7 --stdio -g none --sort dso,sym 2>/dev/null |
    grep -v '^#' | grep -v '^$' | grep -E '^ +[0-9]' | head -60 >"${OUT%.svg}.txt" || true
echo "flamegraph.sh: wrote $OUT and ${OUT%.svg}.txt"
