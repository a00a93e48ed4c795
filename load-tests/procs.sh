# Sourced by the load-test scripts, after they set WORK (their temp dir): the processes a
# script starts (it adds their PIDs to PIDS) are stopped, and only those, when it exits; WORK is
# removed unless KEEP=1.
PIDS=()
stop_started() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "$(basename "$0"): kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap stop_started EXIT

# wait_port PORT [SECONDS]: returns once something listens on 127.0.0.1:PORT (default: 10 s,
# then the script exits).
wait_port() {
    local _
    for _ in $(seq $((${2:-10} * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$(basename "$0"): nothing listens on $1" >&2
    exit 1
}
