#!/usr/bin/env bash
# Installs what the browser check of the web UI needs: Debian's chromium and playwright-core.
# Idempotent: does nothing when chromium is there and node_modules matches package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
dir="tests/ui"
lock="$dir/package-lock.json"
stamp="$dir/node_modules/.package-lock.stamp"
if [ -d "$dir/node_modules" ] && [ -f "$stamp" ] && cmp -s "$lock" "$stamp"; then
  exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
cp "$lock" "$stamp"
echo "ui test deps ready: /usr/bin/chromium, $dir/node_modules"
