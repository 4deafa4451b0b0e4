#!/usr/bin/env bash
# The sidecar overhead benchmark (BENCHMARKS.md): HTTP requests through a
# pair of Envoy sidecars run by tern-dp (wrk -> web's outbound listener ->
# api's inbound listener -> the api service), driven flat out by wrk (Debian),
# in one run under three settings, rotated each round:
#   none      no telemetry policies
#   all-100   MeshTrace (100% sampling), MeshAccessLog, MeshMetric, all on
#   all-10    the same with 10% sampling
# Telemetry goes through each tern-dp's pipe to a blackhole OTLP sink.
# Prints one JSON line per run, then medians and the ratios to `none`.
# Usage: scripts/bench-sidecar.sh   (BENCH_SECONDS, BENCH_RUNS, BENCH_CONNECTIONS to change)
source "$(dirname "$0")/bench-common.sh"
secs=${BENCH_SECONDS:-10}
runs=${BENCH_RUNS:-3}
conns=${BENCH_CONNECTIONS:-16}
command -v wrk >/dev/null || { apt-get install -y wrk >&2 || sudo apt-get install -y wrk >&2; }

sink_port=$(port)
$bin/tern-bench sink --listen "127.0.0.1:$sink_port" > "$work/sink.out" & pids+=($!)
start_cp
backend_yaml sink "$sink_port" | ternctl apply -f - >&2

app=$(port); api_in=$(port); api_admin=$(port); web_in=$(port); web_admin=$(port); web_out=$(port)
$bin/ternctl demo-app --listen "127.0.0.1:$app" --body "$(head -c 256 /dev/zero | tr '\0' x)" & pids+=($!)
dataplane() { # NAME INBOUND SERVICE_PORT ADMIN [OUTBOUND]
  printf 'type: Dataplane\nname: %s\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  admin: {port: %s}\n  inbound:\n    - port: %s\n      servicePort: %s\n      tags: {kuma.io/service: %s, kuma.io/protocol: http}\n' "$1" "$4" "$2" "$3" "$1"
  [ -n "${5:-}" ] && printf '  outbound:\n    - port: %s\n      tags: {kuma.io/service: api}\n' "$5"
  return 0
}
dataplane api "$api_in" "$app" "$api_admin" > "$work/api.yaml"
dataplane web "$web_in" "$(port)" "$web_admin" "$web_out" > "$work/web.yaml"
for name in api web; do
  env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin/tern-dp run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/$name.yaml" \
    --work-dir "$work/$name" --envoy-binary "$TERN_TEST_ENVOY" 2> "$work/$name.log" & pids+=($!)
done
url="http://127.0.0.1:$web_out/"
wait_for "curl -sf $url >/dev/null"

# set_telemetry none|all-100|all-10: applies the policies and waits until
# both Envoys run the matching tracer configuration.
set_telemetry() {
  local want
  case $1 in
    none) ternctl delete meshtrace bench-traces >/dev/null 2>&1 || true
          ternctl delete meshaccesslog bench-logs >/dev/null 2>&1 || true
          ternctl delete meshmetric bench-metrics >/dev/null 2>&1 || true
          want=absent ;;
    all-*) telemetry_yaml sink "${1#all-}" 10s | ternctl apply -f - >/dev/null; want=${1#all-} ;;
  esac
  for admin in $web_admin $api_admin; do
    wait_for "curl -sf http://127.0.0.1:$admin/config_dump | python3 -c '
import json, sys
d = json.dumps(json.load(sys.stdin))
want = sys.argv[1]
tracing = \"envoy.tracers.opentelemetry\" in d
ok = (not tracing) if want == \"absent\" else (tracing and \"\\\"overall_sampling\\\": {\\\"value\\\": %s\" % float(want) in d)
sys.exit(0 if ok else 1)' $want"
  done
  sleep 1
}

# run_wrk SETTING: one flat-out wrk run; one JSON line.
run_wrk() {
  local out
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "$url")
  python3 - "$1" "$out" <<'PY'
import json, re, sys
name, out = sys.argv[1:]
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?)(\d+)", out))
print(json.dumps({"setting": name, "requests_per_sec": round(rps), "p50_ms": round(ms(lat["50"]), 3),
                  "p99_ms": round(ms(lat["99"]), 3), "errors": errors}), flush=True)
PY
}

echo "$(machine); wrk -t1 -c$conns, $secs s runs, $runs rounds" >&2
settings=(none all-10 all-100)
results=$work/results.jsonl
for round in $(seq 1 "$runs"); do
  for i in 0 1 2; do
    s=${settings[$(((i + round) % 3))]}
    set_telemetry "$s"
    wrk -t1 -c"$conns" -d2s "$url" >/dev/null # warm-up after the change
    run_wrk "$s" | tee -a "$results"
  done
done
echo "spans at the sink: $(tail -n 1 "$work/sink.out" 2>/dev/null || echo 0)" >&2
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for s in ("none", "all-10", "all-100"):
    r = [x for x in rows if x["setting"] == s]
    med[s] = {k: statistics.median(x[k] for x in r) for k in ("requests_per_sec", "p50_ms", "p99_ms")}
base = med["none"]
for s, m in med.items():
    print(json.dumps({"setting": s, "median": m,
        "requests_per_sec_vs_none": round(m["requests_per_sec"] / base["requests_per_sec"], 3),
        "p99_vs_none": round(m["p99_ms"] / base["p99_ms"], 3)}))
PY
