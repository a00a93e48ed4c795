#!/usr/bin/env bash
# Creates the Python venv with the official SDKs that the test suite drives through the gateway.
# Idempotent: does nothing when the venv already matches tests/sdk/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SIDETRACE_TEST_VENV:-target/test-venv}"
req="tests/sdk/requirements.txt"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
echo "python test venv ready: $venv"
