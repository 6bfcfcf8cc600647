#!/usr/bin/env bash
# The test command (README.md, .ci/run): installs what the tests need, then checks formatting,
# lints and runs every test. Real components only: tests start and stop their own Envoy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo not found; install Rust from https://rustup.rs first" >&2
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  # Debian's python3 lacks venv/ensurepip until python3-venv is installed.
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
./scripts/install-test-deps.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
# A short run of every benchmark (docs/benchmarks.md) on the dev build `cargo test` just made:
# fails if an agent scenario loses or duplicates a record; asserts no throughput.
MESHTAP_BENCH_SMOKE=1 ./scripts/bench.sh
