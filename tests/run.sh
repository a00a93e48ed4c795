#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test (Rust, and the official
# Python SDKs through the gateway, the web UI in headless Chromium), and the benchmark's quick
# smoke mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean clone gains nothing from incremental compilation, and its caches took 1.9 GB of the
# 5.4 GB a cold run leaves in target/ (a full disk kills the linker). Set CARGO_INCREMENTAL=1
# to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== command-line tools the tests check output with (promtool)"
bash tests/setup-tools.sh

echo "== python venv with the official SDKs"
bash tests/setup-python.sh

echo "== chromium and playwright-core for the web UI check"
bash tests/setup-ui.sh

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

if [ -f load-tests/run.sh ]; then
  echo "== benchmark smoke run"
  bash load-tests/run.sh --quick
fi
