#!/usr/bin/env bash
# Benchmarks with one command: parse throughput (cargo bench --bench pipeline), then the release
# `meshtap run` end to end (cargo bench --bench agent): a backlog into the file sink, 200 pod logs
# appended live at 10,000 exchanges/s, a backlog into a local tansu Kafka broker, and a stalled
# OTLP sink. Inputs are generated deterministically; each line compares with the previous run
# (target/bench-last.json). Figures and commands: docs/benchmarks.md.
#
#   scripts/bench.sh                      everything
#   scripts/bench.sh parse agent_kafka    only these (parse = the pipeline bench; the agent
#                                         scenarios by name, see benches/agent.rs)
#   MESHTAP_BENCH_SMOKE=1 scripts/bench.sh
#                                         the CI smoke run: tiny sizes, the dev build (already
#                                         built by `cargo test`), checks that no record is lost
#                                         or duplicated, asserts no throughput, records nothing
#
# Sizes (defaults in docs/benchmarks.md): MESHTAP_BENCH_MB, MESHTAP_BENCH_FILES,
# MESHTAP_BENCH_RATE, MESHTAP_BENCH_SECONDS, MESHTAP_BENCH_KAFKA_EXCHANGES,
# MESHTAP_BENCH_BODY_BYTES, MESHTAP_BENCH_STALL_MB, MESHTAP_BENCH_STALL_SECONDS.
# MESHTAP_BENCH_PROFILE: the cargo profile (default: bench, i.e. release; dev for the smoke run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -n "${MESHTAP_BENCH_SMOKE:-}" ] && [ "${MESHTAP_BENCH_SMOKE}" != 0 ]; then
  PROFILE="${MESHTAP_BENCH_PROFILE:-dev}"
else
  PROFILE="${MESHTAP_BENCH_PROFILE:-bench}"
fi

# The tansu broker for agent_kafka lives in the test venv.
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
./scripts/install-test-deps.sh >/dev/null

parse=1
agent=()
if [ "$#" -gt 0 ]; then
  parse=0
  for name in "$@"; do
    if [ "$name" = parse ]; then parse=1; else agent+=("$name"); fi
  done
fi

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg), profile $PROFILE"
if [ "$parse" = 1 ]; then
  cargo bench --quiet --locked --profile "$PROFILE" --bench pipeline
fi
if [ "$#" -eq 0 ] || [ "${#agent[@]}" -gt 0 ]; then
  cargo bench --quiet --locked --profile "$PROFILE" --bench agent -- "${agent[@]}"
fi
