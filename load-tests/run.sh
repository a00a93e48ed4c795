#!/usr/bin/env bash
# The gateway benchmark: the same scenarios against a mock upstream called directly, through
# nginx and through sidetrace, side by side in one run; results in load-tests/results/latest.md.
#
#   bash load-tests/run.sh            full run, a few minutes (installs nginx if missing)
#   bash load-tests/run.sh --quick    smoke run for CI, well under a minute after the build;
#                                     skips nginx when it is not installed
#   --no-build                        use the binaries already built
#   --keep                            keep the temp dir (JSON reports, logs, nginx.conf)
#   --nice N                          run the mock, the proxies and the driver at nice N (e.g.
#                                     -10 as root, to get ahead of other work on a shared machine)
#
# Exits non-zero if any run against direct or sidetrace had errors.
set -euo pipefail

QUICK=0
BUILD=1
KEEP=0
NICE=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --nice)
        [[ $# -ge 2 && $2 =~ ^-?[0-9]+$ ]] || {
            echo "run.sh: --nice needs a number" >&2
            exit 2
        }
        NICE=(nice -n "$2")
        shift
        ;;
    -h | --help)
        sed -n '2,14p' "$0"
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
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

if [[ $BUILD == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p sidetrace -p sidetrace-load-tests)
fi
LOAD=$BIN/bench-load
MOCK=$BIN/bench-mock
GATEWAY=$BIN/sidetrace
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
        if [[ $pid == "${GATEWAY_PID:-}" && $status != 0 ]]; then
            echo "run.sh: sidetrace exited with status $status on SIGTERM" >&2
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

read -r MOCK_PORT NGINX_PORT GATEWAY_PORT ADMIN_PORT <<<"$("$LOAD" ports 4 | tr '\n' ' ')"

"${NICE[@]}" "$MOCK" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_port "$MOCK_PORT" "$MOCK_PID" mock

if [[ $USE_NGINX == 1 ]]; then
    # Workers as the invoking user: as root, nginx would otherwise switch to a user that may not
    # exist or may not reach the temp dir.
    user_line=""
    [[ $EUID == 0 ]] && user_line="user root;"
    cat >"$WORK/nginx/nginx.conf" <<EOF
# Written by load-tests/run.sh: nginx as a plain streaming reverse proxy, the practical floor.
$user_line
worker_processes 2;
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
    "${NICE[@]}" nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
        >"$WORK/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_port "$NGINX_PORT" "$NGINX_PID" nginx
    # The master and its workers; their CPU and memory are summed.
    NGINX_PIDS=$NGINX_PID
    for child in $(cat "/proc/$NGINX_PID"/task/*/children); do
        NGINX_PIDS+=",$child"
    done
fi

# No keys, no config file, no data dir and no OTLP endpoint from the caller's environment: the
# gateway runs on its defaults, span export off.
"${NICE[@]}" env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u SIDETRACE_CONFIG -u SIDETRACE_DATA_DIR \
    -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    SIDETRACE_LISTEN="127.0.0.1:$GATEWAY_PORT" \
    SIDETRACE_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
    SIDETRACE_ANTHROPIC_BASE_URL="http://127.0.0.1:$MOCK_PORT" \
    SIDETRACE_LOG=warn \
    "$GATEWAY" serve >"$WORK/sidetrace.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
wait_port "$GATEWAY_PORT" "$GATEWAY_PID" sidetrace

TARGETS=(direct)
[[ $USE_NGINX == 1 ]] && TARGETS+=(nginx)
TARGETS+=(sidetrace)

port_of() {
    case $1 in
    direct) echo "$MOCK_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    sidetrace) echo "$GATEWAY_PORT" ;;
    esac
}

# --watch arguments: the proxy under test (compared) and the mock (to show it is not the limit).
watch_args() {
    case $1 in
    direct) echo "--watch mock=$MOCK_PID" ;;
    nginx) echo "--watch proxy=$NGINX_PIDS --watch mock=$MOCK_PID" ;;
    sidetrace) echo "--watch proxy=$GATEWAY_PID --watch mock=$MOCK_PID" ;;
    esac
}

# Report files are numbered in run order, which is the order of the results page. A global,
# not an echo: a $(...) would bump the counter in a subshell only.
SEQ=0
next_out() { # scenario target -> $OUT_FILE
    SEQ=$((SEQ + 1))
    printf -v OUT_FILE '%s/%03d-%s-%s.json' "$JSON" "$SEQ" "$1" "$2"
}

if [[ $QUICK == 1 ]]; then
    A1_RATE=100 A3_RATE=300 B_RATE=100 E_RATE=50 DUR=1 C_CONN=8 C_DUR=1 C_MAX=300
    SLOW_N=20 SLOW_HOLD=2 PAUSE=0.2 WARMUP=50
else
    A1_RATE=1000 A3_RATE=3000 B_RATE=500 E_RATE=500 DUR=15 C_CONN=64 C_DUR=10 C_MAX=2000000
    SLOW_N=1000 SLOW_HOLD=30 PAUSE=1 WARMUP=1000
fi

# One scenario, run against every target in turn: interleaving the targets spreads any
# background noise of the shared machine over all of them.
scenario() { # id title mode [bench-load run args...]
    local id=$1 title=$2 mode=$3 target path
    shift 3
    for target in "${TARGETS[@]}"; do
        path=/v1/chat/completions
        if [[ $mode == anthropic ]]; then
            path=/v1/messages
            [[ $target == sidetrace ]] && path=/anthropic/v1/messages
        fi
        echo "run.sh: $id $target" >&2
        next_out "$id" "$target"
        # shellcheck disable=SC2046  # watch_args is meant to split into words
        "${NICE[@]}" "$LOAD" run --scenario "$id" --title "$title" --target "$target" --mode "$mode" \
            --url "http://127.0.0.1:$(port_of "$target")$path" $(watch_args "$target") \
            --out "$OUT_FILE" "$@"
        sleep "$PAUSE"
    done
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
    "${NICE[@]}" "$LOAD" run --rate "$WARMUP" --duration 1 --mode stream \
        --url "http://127.0.0.1:$(port_of "$target")/v1/chat/completions" >/dev/null
done
sleep "$PAUSE"

scenario a1k "non-stream chat, open loop $A1_RATE req/s, ${DUR} s" chat \
    --rate "$A1_RATE" --duration "$DUR"
scenario a3k "non-stream chat, open loop $A3_RATE req/s, ${DUR} s" chat \
    --rate "$A3_RATE" --duration "$DUR"
scenario b "stream chat, 20 chunks, open loop $B_RATE req/s, ${DUR} s" stream \
    --rate "$B_RATE" --duration "$DUR" --chunks 20
# The same stream with 5 ms between chunks, as tokens come from a model: nobody can batch
# chunks that arrive apart, so this shows the per-chunk cost without the burst advantage.
scenario b5 "stream chat, 20 chunks 5 ms apart, open loop $B_RATE req/s, ${DUR} s" stream \
    --rate "$B_RATE" --duration "$DUR" --chunks 20 --delay-ms 5
scenario c "non-stream chat, closed loop, $C_CONN connections, ${C_DUR} s (max throughput)" chat \
    --connections "$C_CONN" --duration "$C_DUR" --max-requests "$C_MAX"
scenario e "Anthropic messages stream, 20 chunks, open loop $E_RATE req/s, ${DUR} s" anthropic \
    --rate "$E_RATE" --duration "$DUR" --chunks 20

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
    sleep 2
    next_out after-slow "$target"
    # shellcheck disable=SC2046
    "$LOAD" snapshot --scenario after-slow --target "$target" $(watch_args "$target") \
        --out "$OUT_FILE"
done

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The results page.
if [[ $QUICK == 1 ]]; then
    OUT=$HERE/results/quick.md
else
    OUT=$HERE/results/latest.md
fi
mkdir -p "$HERE/results"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# Changes to the bench itself do not change what is measured.
[[ -n $(git -C "$ROOT" status --porcelain -- . ':(exclude)load-tests' 2>/dev/null) ]] &&
    commit+=" (plus uncommitted changes)"
LAYERS=$(grep -o '\.layer([A-Za-z]*' "$ROOT/src/proxy/stack.rs" 2>/dev/null | sed 's/^\.layer(//' | paste -sd, - | sed 's/,/, /g')
nginx_version="not run"
[[ $USE_NGINX == 1 ]] && nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
{
    echo "# sidetrace benchmark: $([[ $QUICK == 1 ]] && echo quick smoke run || echo latest results)"
    echo
    echo "Written by \`bash load-tests/run.sh$([[ $QUICK == 1 ]] && echo ' --quick')\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
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
    echo "- Targets: **direct** (bench-mock itself), **nginx** (\`proxy_pass\`, \`proxy_buffering off\`,"
    echo "  \`proxy_http_version 1.1\`, upstream keepalive 128, \`worker_processes 2\`, access log off),"
    echo "  **sidetrace** (\`sidetrace serve\`, no config file, \`SIDETRACE_LOG=warn\`, default limits)."
    echo "- Gateway request path, as built from this tree (the layers of src/proxy/stack.rs, outermost"
    echo "  first): $LAYERS; then the upstream client. No OTLP endpoint is given, so span export"
    echo "  is off."
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
"$LOAD" report "$JSON" --fail-on-errors direct,sidetrace $([[ $QUICK == 1 ]] && echo --quick) >>"$OUT"
status=$?
set -e
echo "run.sh: results in $OUT"
exit "$status"
