#!/usr/bin/env bash
# The soak: the RELEASE gateway under mixed load for a set time (streams, whole answers, client
# cancels, slow request bodies, slow readers, stalled bodies) while its OTLP collector goes down
# and up; reports calls made, spans exported / spooled / dropped, RSS and open fds over time,
# and whether SIGTERM then ends the gateway cleanly. Writes load-tests/results/soak-latest.md.
# Not part of CI (tests/run.sh): it takes 20 minutes by default.
#
#   bash load-tests/soak.sh                20 minutes of load, then the drain and the report
#   --minutes N                            length of the load (decimals allowed: 2.5)
#   --up-secs S --down-secs S              collector up / down periods (default 50 / 25)
#   --workers N                            clients per kind of call (default 2)
#   --no-build                             use the release binaries already built
#   --profiling                            build and run the profiling profile (release with symbols
#                                          and line tables, target/profiling) to record perf profiles
#   --keep                                 keep the temp dir (gateway log, config, data dir)
#
# Exits non-zero if a process fails to start, the gateway dies during the run, or it does not
# exit with status 0 within 30 s of SIGTERM. The figures are for a person to judge.
set -euo pipefail

MINUTES=20
UP=50
DOWN=25
WORKERS=2
BUILD=1
# release ships stripped (Cargo.toml); perf needs the profiling profile's symbols.
PROFILE=release
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --minutes | --up-secs | --down-secs | --workers)
        [[ $# -ge 2 && $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] || {
            echo "soak.sh: $1 needs a number" >&2
            exit 2
        }
        case "$1" in
        --minutes) MINUTES=$2 ;;
        --up-secs) UP=$2 ;;
        --down-secs) DOWN=$2 ;;
        --workers) WORKERS=$2 ;;
        esac
        shift
        ;;
    --no-build) BUILD=0 ;;
    --profiling) PROFILE=profiling ;;
    --keep) KEEP=1 ;;
    -h | --help)
        sed -n '2,18p' "$0"
        exit 0
        ;;
    *)
        echo "soak.sh: unknown option $1" >&2
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
GATEWAY=$BIN/sidetrace
for b in "$LOAD" "$MOCK" "$GATEWAY"; do
    [[ -x $b ]] || {
        echo "soak.sh: $b is missing; build first or drop --no-build" >&2
        exit 2
    }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-soak.XXXXXX")
PIDS=()

alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# Stops exactly the processes this script started, by their saved PIDs.
cleanup() {
    local rc=$? pid
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
        wait "$pid" 2>/dev/null
    done
    if [[ $KEEP == 1 ]]; then
        echo "soak.sh: kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

wait_port() { # port pid name
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        alive "$2" || break
        sleep 0.1
    done
    echo "soak.sh: $3 did not start listening on 127.0.0.1:$1; its log:" >&2
    tail -20 "$WORK/$3.log" >&2
    exit 1
}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
read -r MOCK_PORT GATEWAY_PORT ADMIN_PORT <<<"$("$LOAD" ports 3 | tr '\n' ' ')"
# The collector is stopped and bound again: its port must not be one the kernel hands out.
SINK_PORT=$("$LOAD" ports 1 --restartable)

# The mock lives as long as the soak could (load, drain, margin).
MOCK_LIFE=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 + 900 }')
"$MOCK" --listen "127.0.0.1:$MOCK_PORT" --exit-after-secs "$MOCK_LIFE" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" "$MOCK_PID" mock

# Span export over OTLP/HTTP to the soak's own collector, uncompressed so it can count spans;
# the replayer retries at least every 5 s so that outages of tens of seconds are exercised
# rather than waited out.
cat >"$WORK/sidetrace.toml" <<EOF
# Written by load-tests/soak.sh.
[export]
endpoint = "http://127.0.0.1:$SINK_PORT"
protocol = "http/protobuf"
compression = "none"
timeout_ms = 2000
replay_backoff_max_ms = 5000
EOF
mkdir -p "$WORK/data"
env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u SIDETRACE_CONFIG -u SIDETRACE_DATA_DIR \
    -u SIDETRACE_CAPTURE_LEVEL -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    -u OTEL_EXPORTER_OTLP_PROTOCOL -u OTEL_EXPORTER_OTLP_TRACES_PROTOCOL \
    -u OTEL_EXPORTER_OTLP_HEADERS -u OTEL_EXPORTER_OTLP_TRACES_HEADERS \
    -u OTEL_EXPORTER_OTLP_COMPRESSION -u OTEL_EXPORTER_OTLP_TRACES_COMPRESSION \
    -u SIDETRACE_PROVIDERS_DIR \
    SIDETRACE_LISTEN="127.0.0.1:$GATEWAY_PORT" \
    SIDETRACE_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    SIDETRACE_INGEST_ENABLED=false \
    SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
    SIDETRACE_ANTHROPIC_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
    SIDETRACE_LOG=warn \
    SIDETRACE_DATA_DIR="$WORK/data" \
    "$GATEWAY" serve --config "$WORK/sidetrace.toml" >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
wait_port "$GATEWAY_PORT" "$GATEWAY_PID" gateway

mkdir -p "$HERE/results"
OUT=$HERE/results/soak-latest.md
echo "soak.sh: $MINUTES min of load on sidetrace pid $GATEWAY_PID; report in $OUT" >&2
"$LOAD" soak --url "http://127.0.0.1:$GATEWAY_PORT" \
    --metrics "http://127.0.0.1:$ADMIN_PORT/metrics" --pid "$GATEWAY_PID" \
    --sink-port "$SINK_PORT" --minutes "$MINUTES" --up-secs "$UP" --down-secs "$DOWN" \
    --workers "$WORKERS" --out "$OUT"

if ! alive "$GATEWAY_PID"; then
    echo "soak.sh: the gateway died during the soak; its log:" >&2
    tail -20 "$WORK/gateway.log" >&2
    exit 1
fi

# SIGTERM: the gateway must drain and exit 0 in time.
START=$(date +%s.%N)
kill -TERM "$GATEWAY_PID"
STATUS=0
for _ in $(seq 300); do
    alive "$GATEWAY_PID" || break
    sleep 0.1
done
if alive "$GATEWAY_PID"; then
    STATUS=timeout
    kill -KILL "$GATEWAY_PID" 2>/dev/null || true
    wait "$GATEWAY_PID" 2>/dev/null || true
else
    wait "$GATEWAY_PID" || STATUS=$?
fi
# Reaped: the exit cleanup must never signal a reused PID.
PIDS=("$MOCK_PID")
ELAPSED=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
WARNINGS=$(grep -c . "$WORK/gateway.log" || true)
{
    echo
    echo "## Shutdown"
    echo
    echo "SIGTERM after the drain: exit status $STATUS after $ELAPSED s. Gateway log lines" \
        "(level warn and above): $WARNINGS."
    if [[ $WARNINGS != 0 ]]; then
        echo
        echo '```'
        # The distinct messages, most frequent first (timestamps and ids vary).
        sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//; s/(spans|retries)=[0-9]+/\1=N/g' "$WORK/gateway.log" |
            cut -c1-160 | sort | uniq -c | sort -rn | head -15
        echo '```'
    fi
    echo
    echo "Machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
        "commit $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)."
} >>"$OUT"
echo "soak.sh: report in $OUT" >&2
[[ $STATUS == 0 ]] || {
    echo "soak.sh: the gateway exited with status $STATUS on SIGTERM" >&2
    exit 1
}
