#!/usr/bin/env bash
# The sidecar overhead benchmark (BENCHMARKS.md): HTTP requests through a
# pair of Envoy sidecars run by tern-dp (wrk -> web's outbound listener ->
# api's inbound listener -> the api service), driven flat out by wrk (Debian),
# in one run under these settings, rotated each round:
#   none      no telemetry policies
#   all-100   MeshTrace (100% sampling), MeshAccessLog, MeshMetric, all on
#   all-10    the same with 10% sampling
#   traces-10 MeshTrace alone at 10% (traces-N: at N%); logs  MeshAccessLog alone
#   all-10-envoy-batching   all-10 with Envoy's own tracer batching (5 spans
#             or 5 s) instead of tern-dp's bootstrap (50 spans or 1 s), set
#             through Envoy's admin runtime: what that choice is worth
# Telemetry goes through each tern-dp's pipe to a blackhole OTLP sink.
# Prints one JSON line per run, then medians and the ratios to `none`.
# Usage: scripts/bench-sidecar.sh   (BENCH_SECONDS, BENCH_RUNS, BENCH_CONNECTIONS, BENCH_SETTINGS to change)
source "$(dirname "$0")/bench-common.sh"
secs=${BENCH_SECONDS:-10}
runs=${BENCH_RUNS:-5}
conns=${BENCH_CONNECTIONS:-16}
command -v wrk >/dev/null || { apt-get install -y wrk >&2 || sudo apt-get install -y wrk >&2; }

start_pair

# run_wrk SETTING: one flat-out wrk run; one JSON line.
# CPU seconds per 10k requests are reported per process group, so the cost
# of telemetry can be placed: Envoy, tern-dp, and the sink (which in a real
# deployment runs elsewhere, not on the sidecars' cores).
run_wrk() {
  local out e0 d0 s0 e1 d1 s1
  e0=$(cpu_sum "$envoy_web" "$envoy_api"); d0=$(cpu_sum "$dp_web" "$dp_api"); s0=$(cpu "$sink_pid")
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "$url")
  e1=$(cpu_sum "$envoy_web" "$envoy_api"); d1=$(cpu_sum "$dp_web" "$dp_api"); s1=$(cpu "$sink_pid")
  python3 - "$1" "$out" "$e0" "$e1" "$d0" "$d1" "$s0" "$s1" <<'PY'
import json, re, sys
name, out, e0, e1, d0, d1, s0, s1 = sys.argv[1:]
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?)(\d+)", out))
total = int(re.search(r"(\d+) requests in", out).group(1))
per10k = lambda a, b: round((float(b) - float(a)) / total * 1e4, 3)
print(json.dumps({"setting": name, "requests_per_sec": round(rps), "p50_ms": round(ms(lat["50"]), 3),
                  "p99_ms": round(ms(lat["99"]), 3), "errors": errors, "envoy_cpu_s_per_10k": per10k(e0, e1),
                  "tern_dp_cpu_s_per_10k": per10k(d0, d1), "sink_cpu_s_per_10k": per10k(s0, s1)}), flush=True)
PY
}

echo "$(machine); wrk -t1 -c$conns, $secs s runs, $runs rounds" >&2
read -r -a settings <<< "${BENCH_SETTINGS:-none all-10 all-100 all-10-envoy-batching traces-10 logs}"
results=$work/results.jsonl
for round in $(seq 1 "$runs"); do
  for i in "${!settings[@]}"; do
    s=${settings[$(((i + round) % ${#settings[@]}))]}
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
for s in dict.fromkeys(x["setting"] for x in rows):
    r = [x for x in rows if x["setting"] == s]
    med[s] = {k: statistics.median(x[k] for x in r) for k in ("requests_per_sec", "p50_ms", "p99_ms",
              "envoy_cpu_s_per_10k", "tern_dp_cpu_s_per_10k", "sink_cpu_s_per_10k")}
base = med["none"]
for s, m in med.items():
    print(json.dumps({"setting": s, "median": m,
        "requests_per_sec_vs_none": round(m["requests_per_sec"] / base["requests_per_sec"], 3),
        "p99_vs_none": round(m["p99_ms"] / base["p99_ms"], 3)}))
PY
