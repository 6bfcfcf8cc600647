#!/usr/bin/env bash
# Benchmarks with one command: parse throughput (cargo bench --bench pipeline) and the agent end
# to end into the file sink (wall time, MB/s, peak RSS). Inputs are generated deterministically.
# MESHTAP_BENCH_MB sets the size of each generated log (default 200). Figures go to stdout; copy
# them into docs/benchmarks.md with the machine and date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MB="${MESHTAP_BENCH_MB:-200}"

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
MESHTAP_BENCH_MB="$MB" cargo bench --quiet --bench pipeline
cargo build --quiet --release --bin meshtap

# Agent end to end: the generated v2 log as a pod's istio-proxy log, delivered to the file sink.
WORK="$(mktemp -d)"
trap 'kill "${agent:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
POD="$WORK/pods/bench_productpage-1_0000-1111/istio-proxy"
mkdir -p "$POD"
cp target/bench/parse_v2_cri.log "$POD/0.log"
BYTES=$(stat -c %s "$POD/0.log")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/meshtap.yaml" <<YAML
agent:
  log_root: $WORK/pods
  state_dir: $WORK/state
sink:
  type: file
  path: $WORK/out/exchanges.ndjson
  max_bytes: 1073741824
ops:
  listen: 127.0.0.1:$PORT
log:
  level: warn
YAML
metric() {
  curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" 'index($0, m) == 1 {n += $NF} END {print n + 0}'
}
start=$(date +%s.%N)
./target/release/meshtap run --config "$WORK/meshtap.yaml" &
agent=$!
# Done when every byte was read and the sink acknowledged as many records as were emitted.
for _ in $(seq 1 6000); do
  read_bytes=$(metric meshtap_log_bytes_read_total)
  emitted=$(metric 'meshtap_exchanges_total')
  acked=$(metric 'meshtap_sink_records_total')
  if [ "$read_bytes" -ge "$BYTES" ] && [ "$emitted" -gt 0 ] && [ "$acked" -ge "$emitted" ]; then break; fi
  sleep 0.01
done
end=$(date +%s.%N)
rss=$(awk '/VmHWM/ {print $2}' "/proc/$agent/status")
cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$agent/stat")
kill -TERM "$agent"; wait "$agent" || true
python3 - "$BYTES" "$start" "$end" "$acked" "$rss" "$cpu" <<'PY'
import sys
b, s, e, n, rss, cpu = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
t = e - s
print(f"agent_file_sink: {b/1e6:.1f} MB, {n} exchanges in {t:.2f} s = {b/t/1e6:.0f} MB/s, "
      f"{n/t:.0f} exchanges/s, CPU {cpu:.2f} s, peak RSS {rss/1024:.1f} MiB")
PY
