#!/usr/bin/env bash
# Checks the OpenInference export against a real Arize Phoenix, all on 127.0.0.1: Phoenix shows
# the gateway's exact cost, the feature and the prompt version of a call.
#
#   bash tests/phoenix/check.sh            # SCREENSHOT=docs/phoenix-span.png to also take one
#
# Not part of tests/run.sh (Phoenix is a large install). Idempotent: the venv in
# target/phoenix-venv is made from tests/phoenix/requirements.txt once; everything else lives in
# a temp dir and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

fail() { echo "phoenix check: FAIL: $*" >&2; exit 1; }

# --- venv with pinned arize-phoenix and openai ------------------------------------------------
venv="target/phoenix-venv"
req="tests/phoenix/requirements.txt"
stamp="$venv/.requirements"
if ! [ -x "$venv/bin/python" ] || ! [ -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
py="$root/$venv/bin/python"

# --- the gateway binary ------------------------------------------------------------------------
bin="${SIDETRACE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sidetrace}"
if ! [ -x "$bin" ]; then
  cargo build --release --bin sidetrace
fi
[ -x "$bin" ] || fail "no gateway binary at $bin (set SIDETRACE_BIN or CARGO_TARGET_DIR)"

# --- temp dir and cleanup ----------------------------------------------------------------------
tmp="$(mktemp -d)"
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    for f in phoenix.log gateway.log mock.log; do
      [ -f "$tmp/$f" ] && { echo "--- last lines of $f" >&2; tail -n 30 "$tmp/$f" >&2; }
    done
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url, what, seconds
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    if "$py" -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  fail "$2 did not answer $1 within $3 s"
}

# --- Phoenix -----------------------------------------------------------------------------------
phoenix_port="$(free_port)"
phoenix_grpc_port="$(free_port)"
mkdir -p "$tmp/phoenix"
PHOENIX_HOST=127.0.0.1 PHOENIX_PORT="$phoenix_port" PHOENIX_GRPC_PORT="$phoenix_grpc_port" \
  PHOENIX_WORKING_DIR="$tmp/phoenix" PHOENIX_TELEMETRY_ENABLED=false \
  "$py" -m phoenix.server.main serve >"$tmp/phoenix.log" 2>&1 &
pids+=($!)
phoenix="http://127.0.0.1:$phoenix_port"

# --- mock OpenAI upstream ----------------------------------------------------------------------
"$py" -u tests/phoenix/mock_openai.py >"$tmp/mock.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 50; i++)); do
  mock_port="$(head -n1 "$tmp/mock.log" 2>/dev/null || true)"
  [[ "$mock_port" =~ ^[0-9]+$ ]] && break
  sleep 0.1
done
[[ "${mock_port:-}" =~ ^[0-9]+$ ]] || fail "mock upstream did not start"

wait_http "$phoenix/healthz" "Phoenix" 120

# --- the gateway -------------------------------------------------------------------------------
# gpt-4o-mini at a negotiated rate (0.10 / 0.40 USD per 1M tokens instead of the list 0.15 /
# 0.60), so the gateway's exact cost differs from what Phoenix's own price table gives and the
# check tells which of the two Phoenix shows.
mkdir -p "$tmp/providers"
"$py" - providers/openai.toml "$tmp/providers/openai.toml" <<'PY'
import sys
s = open(sys.argv[1]).read()
i = s.index('name = "gpt-4o-mini"')
j = s.index("[[models]]", i)
block = s[i:j].replace('input = "0.15"', 'input = "0.10"').replace('output = "0.60"', 'output = "0.40"')
assert block != s[i:j], "gpt-4o-mini's list price in providers/openai.toml changed: update check.sh"
open(sys.argv[2], "w").write(s[:i] + block + s[j:])
PY
gw_port="$(free_port)"
admin_port="$(free_port)"
project="sidetrace-phoenix-check"
cat >"$tmp/sidetrace.toml" <<EOF
listen = "127.0.0.1:$gw_port"
admin_listen = "127.0.0.1:$admin_port"
data_dir = "$tmp/data"

[export]
endpoint = "$phoenix"
protocol = "http/protobuf"
conventions = ["gen_ai", "openinference"]
batch_delay_ms = 200
EOF
env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
  -u OTEL_EXPORTER_OTLP_PROTOCOL -u OTEL_EXPORTER_OTLP_TRACES_PROTOCOL \
  -u OTEL_SDK_DISABLED -u OTEL_TRACES_EXPORTER \
  OTEL_RESOURCE_ATTRIBUTES="openinference.project.name=$project" \
  SIDETRACE_OPENAI_BASE_URL="http://127.0.0.1:$mock_port" SIDETRACE_PROVIDERS_DIR="$tmp/providers" \
  SIDETRACE_INGEST_HTTP_LISTEN=127.0.0.1:0 SIDETRACE_INGEST_GRPC_LISTEN=127.0.0.1:0 \
  "$bin" serve --config "$tmp/sidetrace.toml" >"$tmp/gateway.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$admin_port/readyz" "the gateway" 30

# --- one call with the official SDK, then Phoenix's own API ------------------------------------
PHOENIX_URL="$phoenix" PHOENIX_PROJECT="$project" GATEWAY_URL="http://127.0.0.1:$gw_port/v1" \
  SPAN_INFO="$tmp/span.json" \
  "$py" tests/phoenix/check_span.py || fail "see the lines above"

if [ -n "${SCREENSHOT:-}" ]; then
  [ -d tests/ui/node_modules/playwright-core ] || bash tests/setup-ui.sh
  node tests/phoenix/screenshot.mjs "$phoenix" "$tmp/span.json" "$SCREENSHOT" \
    || fail "screenshot failed"
  echo "phoenix check: screenshot in $SCREENSHOT"
fi
echo "phoenix check: OK"
