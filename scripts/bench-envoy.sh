#!/usr/bin/env bash
# The Envoy cost of capture filters: one front Envoy (1 worker) proxies POSTs with 1 KiB bodies to
# an upstream Envoy that answers 200 with a 1 KiB body, driven by wrk over keep-alive connections.
# The front Envoy runs with no filter, with meshtap's v2 Lua filter, with each of the seed's
# two filters (deploy/legacy), and with two reference filters that bound what any Lua payload
# logger can cost (benches/envoy: `floor` only walks both bodies, `minimal-logger` logs each body
# as one base64 line and nothing else), logging to a file as a sidecar logs to its container log;
# and with Envoy's tap filter (C++, deploy/envoyfilter-tap.yaml) while an admin tap session takes
# every request's trace (meshtap's tap source), written to a file by curl.
# Prints requests/s (wrk) and the front Envoy's CPU per request, best of MESHTAP_BENCH_ROUNDS
# rounds (default 3) of MESHTAP_BENCH_SECONDS seconds (default 8); each round runs every variant
# in turn. MESHTAP_BENCH_ONLY="v2 ..." limits the variants; MESHTAP_BENCH_VERBOSE=1 prints every
# run on stderr.
#
# MESHTAP_BENCH_CALLGRIND=1 runs each front Envoy under valgrind's callgrind and prints instead
# the median over the rounds (the lower middle one for an even count) of its user-space
# instructions per request: those counted while wrk runs, less those of an idle window as long,
# divided by the requests. Load from other work hardly changes them, unlike time, but they leave
# out the kernel's part (the log writes among it) and can miss what costs time without costing
# instructions (LuaJIT's trace compiler did: docs/benchmarks.md). Envoy runs some 30 times slower
# under callgrind, so requests/s mean nothing then.
#
# Needs: wrk (apt-get install wrk) and the test venv (scripts/install-test-deps.sh), both
# installed here if missing; valgrind too for MESHTAP_BENCH_CALLGRIND.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${MESHTAP_BENCH_ROUNDS:-3}"
SECONDS_PER_RUN="${MESHTAP_BENCH_SECONDS:-8}"
CONNECTIONS="${MESHTAP_BENCH_CONNECTIONS:-16}"
CALLGRIND="${MESHTAP_BENCH_CALLGRIND:-}"

if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
if [ -n "$CALLGRIND" ] && ! command -v valgrind >/dev/null; then
  apt-get install -y -qq valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
fi
ENVOY="$(./scripts/install-test-deps.sh)"
PY=.cache/venv/bin/python

WORK="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 500); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.01
  done
  echo "port $1 did not open" >&2; return 1
}

# Writes an Envoy bootstrap (JSON) to $1: listener $2, admin $3; $4 = "direct" for the upstream
# (direct 1 KiB response) or the path of a Lua file ("" for no filter) for the front proxy to $5.
write_config() {
  "$PY" - "$@" <<'PY'
import json, sys
out, port, admin, mode, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
sock = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
router = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
if mode == "direct":
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "x" * 1024}}}
    # The buffer filter reads the whole request body before the direct response goes out;
    # without it Envoy answers a POST before reading its body and closes the connection, so the
    # front Envoy opened an upstream connection per request (which flattered every filter's
    # ratio to no filter; the figures before 2026-11-25 16:10 UTC were measured so).
    filters = [{"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1048576}}, router]
else:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "app"}}
    filters = [router]
    if mode == "tap":
        # As deploy/envoyfilter-tap.yaml configures it: captures only while an admin /tap
        # session is attached.
        filters.insert(0, {"name": "envoy.filters.http.tap", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap",
            "common_config": {"admin_config": {"config_id": "meshtap"}},
            "record_headers_received_time": True}})
    elif mode:
        filters.insert(0, {"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": open(mode).read()}}})
config = {
    "admin": {"address": sock(admin)},
    "static_resources": {
        "listeners": [{"name": "l", "address": sock(port), "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "l",
                "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
                "http_filters": filters}}]}]}],
        "clusters": [] if mode == "direct" else [{
            "name": "app", "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": int(upstream)}}}}]}]}}]}}
json.dump(config, open(out, "w"))
PY
}

# The Lua of an EnvoyFilter manifest (its first inline_string / inline_code).
lua_of() {
  "$PY" - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"^( *)(inline_string|inline_code): \|\n((?:\1  .*\n|\s*\n)+)", text, re.M)
indent = len(m.group(1)) + 2
open(sys.argv[2], "w").write("".join(l[indent:] if l.strip() else "\n" for l in m.group(3).splitlines(True)))
PY
}

base_id=$(( ($$ % 1000) * 10 + 7000 ))
start_envoy() { # config log [command prefix...]; sets $started (the pid)
  local config="$1" log="$2"
  shift 2
  base_id=$((base_id + 1))
  "$@" "$ENVOY" -c "$config" --disable-hot-restart --concurrency 1 -l warning --base-id "$base_id" >/dev/null 2>"$log" &
  started=$!
  pids+=("$started")
}

up_port=$(free_port); up_admin=$(free_port)
write_config "$WORK/up.json" "$up_port" "$up_admin" direct 0
start_envoy "$WORK/up.json" /dev/null
wait_port "$up_port"

lua_of deploy/envoyfilter-lua-v2.yaml "$WORK/v2.lua"
lua_of deploy/legacy/envoyfilter-logpayload-body.yaml "$WORK/seed-body.lua"
lua_of deploy/legacy/envoyfilter-logpayload-headers.yaml "$WORK/seed-headers.lua"
cp benches/envoy/floor.lua benches/envoy/minimal-logger.lua "$WORK/"
head -c 1024 /dev/zero | tr '\0' 'a' > "$WORK/body"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "$(cat "$WORK/body")"
wrk.headers["content-type"] = "application/json"
LUA

echo "== machine: $(nproc) cores, $(uname -r); Envoy $("$ENVOY" --version | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -1); wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s, $([ -n "$CALLGRIND" ] && echo "under callgrind, median" || echo best) of $ROUNDS"
# MESHTAP_BENCH_EXTRA="name=file.lua ..." measures other Lua filters too (for experiments).
variants=(none v2 seed-body seed-headers floor minimal-logger tap)
for extra in ${MESHTAP_BENCH_EXTRA:-}; do
  cp "${extra#*=}" "$WORK/${extra%%=*}.lua"; variants+=("${extra%%=*}")
done
[ -n "${MESHTAP_BENCH_ONLY:-}" ] && read -r -a variants <<<"$MESHTAP_BENCH_ONLY"
declare -A best_rps best_us front_pid front_port instructions dumps
# Every variant's front Envoy runs from the start, and each round measures every variant in turn
# (the order rotating by one each round), so that load from other work on a shared machine falls
# on all variants alike rather than on whichever ran while it lasted.
for variant in "${variants[@]}"; do
  [ -n "${front_pid[$variant]:-}" ] && continue
  lua=""; [ "$variant" != none ] && lua="$WORK/$variant.lua"
  [ "$variant" = tap ] && lua=tap
  port=$(free_port); admin=$(free_port)
  write_config "$WORK/front-$variant.json" "$port" "$admin" "$lua" "$up_port"
  if [ -n "$CALLGRIND" ]; then
    start_envoy "$WORK/front-$variant.json" "$WORK/front-$variant.log" valgrind --tool=callgrind \
      --instr-atstart=no --callgrind-out-file="$WORK/callgrind-$variant.out"
    dumps[$variant]=0; instructions[$variant]=""
  else
    start_envoy "$WORK/front-$variant.json" "$WORK/front-$variant.log"
  fi
  front_pid[$variant]=$started; front_port[$variant]=$port
  wait_port "$port"
  if [ "$variant" = tap ]; then
    # The admin tap request `meshtap tap` sends with no rules and its defaults (every request,
    # up to 1 MiB of each body: agent/tap/config.rs, TapRequest::to_json), its traces written
    # to a file by curl, a consumer cheaper than the agent (which does not run for the Lua
    # variants either).
    wait_port "$admin"
    printf '%s' '{"config_id": "meshtap", "tap_config": {"match": {"any_match": true}, "output_config": {"sinks": [{"format": "JSON_BODY_AS_BYTES", "streaming_admin": {}}], "max_buffered_rx_bytes": 1048576, "max_buffered_tx_bytes": 1048576}}}' >"$WORK/tap.json"
    curl -sN -X POST --data-binary @"$WORK/tap.json" "http://127.0.0.1:$admin/tap" -o "$WORK/tap-traces.json" &
    pids+=($!)
  fi
  # Warm up (Lua states, connections).
  wrk -t1 -c"$CONNECTIONS" -d1s -s "$WORK/post.lua" "http://127.0.0.1:$port/productpage/api" >/dev/null
  if [ "$variant" = tap ]; then
    # The session is attached once traces arrive; the warm-up's requests are traced.
    for _ in $(seq 1 500); do [ -s "$WORK/tap-traces.json" ] && break; sleep 0.01; done
    [ -s "$WORK/tap-traces.json" ] || { echo "the admin tap session traced nothing" >&2; exit 1; }
  fi
  best_rps[$variant]=0; best_us[$variant]=999999
done
order=("${variants[@]}")
for _ in $(seq 1 "$ROUNDS"); do
  for variant in "${order[@]}"; do
    pid=${front_pid[$variant]}; port=${front_port[$variant]}
    cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    [ -n "$CALLGRIND" ] && callgrind_control -i on "$pid" >/dev/null 2>&1
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s "$WORK/post.lua" "http://127.0.0.1:$port/productpage/api")
    cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    if [ -n "$CALLGRIND" ]; then
      # Each dump holds what was counted since the previous one: the load, then the idle window.
      callgrind_control -d "$pid" >/dev/null 2>&1
      sleep "$SECONDS_PER_RUN"
      callgrind_control -d "$pid" >/dev/null 2>&1
      callgrind_control -i off "$pid" >/dev/null 2>&1
      n=${dumps[$variant]}; dumps[$variant]=$((n + 2))
      load=$(awk '/^totals:/ {print $2}' "$WORK/callgrind-$variant.out.$((n + 1))")
      idle=$(awk '/^totals:/ {print $2}' "$WORK/callgrind-$variant.out.$((n + 2))")
      per=$(awk -v l="$load" -v i="$idle" -v n="$reqs" 'BEGIN {printf "%d", (l - i) / n}')
      instructions[$variant]+="$per "
      [ -n "${MESHTAP_BENCH_VERBOSE:-}" ] && echo "  $variant: $reqs requests, $per instructions/request" >&2
      continue
    fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    if [ -n "$non2xx" ]; then echo "$variant: $non2xx non-2xx responses" >&2; exit 1; fi
    us=$(awk -v c=$((cpu1 - cpu0)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c / hz * 1e6 / n}')
    [ -n "${MESHTAP_BENCH_VERBOSE:-}" ] && echo "  $variant: $rps requests/s, $us us/request" >&2
    [ "$rps" -gt "${best_rps[$variant]}" ] && best_rps[$variant]=$rps
    awk -v a="$us" -v b="${best_us[$variant]}" 'BEGIN {exit !(a < b)}' && best_us[$variant]=$us
  done
  order=("${order[@]:1}" "${order[0]}")
done
declare -A printed
for variant in "${variants[@]}"; do
  [ -n "${printed[$variant]:-}" ] && continue
  printed[$variant]=1
  pid=${front_pid[$variant]}
  kill "$pid"; wait "$pid" 2>/dev/null || true
  lines=$(grep -c logPayload "$WORK/front-$variant.log" || true)
  rm -f "$WORK/front-$variant.log"
  what="[logPayload] log lines"
  if [ "$variant" = tap ]; then
    lines=$(grep -o '"http_buffered_trace"' "$WORK/tap-traces.json" | wc -l)
    what="traces on the admin tap stream"
  fi
  if [ -n "$CALLGRIND" ]; then
    median=$(echo "${instructions[$variant]}" | tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
    printf "envoy_%s: front Envoy %s user-space instructions/request (median of %d rounds), %d %s\n" \
      "$variant" "$median" "$ROUNDS" "$lines" "$what"
    continue
  fi
  printf "envoy_%s: %d requests/s, front Envoy CPU %s us/request, %d %s\n" \
    "$variant" "${best_rps[$variant]}" "${best_us[$variant]}" "$lines" "$what"
done
if [ -z "$CALLGRIND" ] && [ -n "${best_rps[none]:-}" ] && [ -n "${best_rps[v2]:-}" ]; then
  # Each other variant's share too, where it ran (MESHTAP_BENCH_ONLY may leave some out).
  others=""
  for variant in seed-body seed-headers floor minimal-logger tap; do
    [ -n "${best_rps[$variant]:-}" ] || continue
    others+="$(awk -v n="${best_rps[none]}" -v r="${best_rps[$variant]}" -v name="$variant" 'BEGIN { printf ", %s %.0f%%", name, 100*r/n }')"
  done
  awk -v n="${best_rps[none]}" -v v2="${best_rps[v2]}" -v others="$others" 'BEGIN {
  printf "envoy_v2_vs_none: %.0f%% of the throughput with no filter (target 80%%)%s\n", 100*v2/n, others }'
fi
# Connections the upstream accepted, against the requests it served: about one per wrk
# connection and front Envoy, not one per request (see the buffer filter above).
"$PY" - "$up_admin" <<'PY'
import sys, urllib.request
stats = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/stats?filter=^http\\.l\\.downstream_(cx|rq)_total$").read().decode()
values = dict(line.split(": ") for line in stats.split("\n") if ": " in line)
print(f"upstream: {values.get('http.l.downstream_cx_total', '?')} connections for {values.get('http.l.downstream_rq_total', '?')} requests")
PY
