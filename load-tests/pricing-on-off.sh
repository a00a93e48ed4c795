#!/usr/bin/env bash
# Pricing on vs off, same run, alternating: two release gateways (cost.enabled true / false)
# against one bench-mock; closed loop 64 connections and open loop 1000/s, two rounds each.
# Assumes bench binaries in $CARGO_TARGET_DIR (default /work/target-lt) and a release sidetrace.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LT=${CARGO_TARGET_DIR:-$ROOT/target}/release; GW=${SIDETRACE_BIN:-$ROOT/target/release/sidetrace}; T=$(mktemp -d)
$LT/bench-mock --listen 127.0.0.1:18961 --exit-after-secs 300 > $T/mock.log 2>&1 & MOCK=$!
printf '[cost]\nenabled = false\n' > $T/off.toml
SIDETRACE_INGEST_ENABLED=false SIDETRACE_DATA_DIR=$T/on SIDETRACE_LISTEN=127.0.0.1:18962 SIDETRACE_ADMIN_LISTEN=127.0.0.1:18963 SIDETRACE_OPENAI_BASE_URL=http://127.0.0.1:18961 SIDETRACE_LOG=warn $GW serve > $T/on.log 2>&1 & ON=$!
SIDETRACE_INGEST_ENABLED=false SIDETRACE_DATA_DIR=$T/off SIDETRACE_LISTEN=127.0.0.1:18964 SIDETRACE_ADMIN_LISTEN=127.0.0.1:18965 SIDETRACE_OPENAI_BASE_URL=http://127.0.0.1:18961 SIDETRACE_LOG=warn $GW serve --config $T/off.toml > $T/off.log 2>&1 & OFF=$!
sleep 1.5
for round in 1 2; do
  for v in on:18962:$ON off:18964:$OFF; do
    IFS=: read name port pid <<<"$v"
    $LT/bench-load run --url http://127.0.0.1:$port/v1/chat/completions --mode chat --connections 64 --duration 6 --watch gw=$pid --out $T/c-$name-$round.json > /dev/null 2>&1
    $LT/bench-load run --url http://127.0.0.1:$port/v1/chat/completions --mode chat --rate 1000 --duration 6 --watch gw=$pid --out $T/a-$name-$round.json > /dev/null 2>&1
  done
done
kill $ON $OFF $MOCK; wait 2>/dev/null
echo $T
