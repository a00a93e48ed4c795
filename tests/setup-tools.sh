#!/usr/bin/env bash
# Installs the command-line tools the Rust tests check the gateway's output with: Debian's
# `prometheus` package for `promtool check metrics` (tests/metrics_format.rs). Idempotent: does
# nothing when promtool is there. Without the package (no apt-get, offline) the tests that need
# it say so and skip; CI has the Debian archive, so there they run.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-tools: no apt-get here; promtool checks will be skipped" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }; then
  echo "setup-tools: could not install Debian's prometheus package; promtool checks will be skipped" >&2
  exit 0
fi
echo "test tools ready: $(command -v promtool)"
