#!/usr/bin/env bash
# The sidecar cost at fixed rates (BENCHMARKS.md): the pair of Envoy sidecars
# of scripts/bench-sidecar.sh (load -> web's outbound listener -> api's
# inbound listener -> the api service), but driven at fixed request rates
# instead of flat out, so what is measured is what telemetry costs per
# request at a given load, not how two shared cores are split.
#   1. the no-telemetry maximum: `tern-bench http` flat out, BENCH_CONNECTIONS
#      connections, the median of 3 runs;
#   2. at 25%, 50% and 75% of it (BENCH_LOADS), each setting in turn
#      (rotated each round): none; traces-1/10/100 (MeshTrace alone at that
#      sampling); logs (MeshAccessLog alone); metrics (MeshMetric alone, every
#      10 s); all-1/10/100 (the three together);
#   3. per run: p50/p99 latency (open loop: from when each request was due),
#      CPU per request of both Envoys, both tern-dp, the sink, the api
#      service and the load generator, each apart.
# Prints one JSON line per run, then per setting and load the medians and
# the ratios to `none` at the same load, and the Envoy CPU per proxy in
# vCPU per 1,000 requests/s (Istio publishes 0.20 for its sidecar).
# Usage: scripts/bench-sidecar-rate.sh  (BENCH_SECONDS=10, BENCH_RUNS=3,
#        BENCH_CONNECTIONS=16, BENCH_LOADS="25 50 75", BENCH_SETTINGS=...)
source "$(dirname "$0")/bench-common.sh"
secs=${BENCH_SECONDS:-10}
runs=${BENCH_RUNS:-3}
conns=${BENCH_CONNECTIONS:-16}
read -r -a loads <<< "${BENCH_LOADS:-25 50 75}"
read -r -a settings <<< "${BENCH_SETTINGS:-none traces-1 traces-10 traces-100 logs metrics all-1 all-10 all-100}"

start_pair

# load RATE SECONDS: tern-bench http at RATE requests/s (flat out when
# RATE is max), its report on stdout; sets load_pid while it runs.
load() {
  local rate=()
  [ "$1" = max ] || rate=(--rate "$1")
  $bin/tern-bench http --url "$url" --connections "$conns" --seconds "$2" "${rate[@]}" > "$work/load.json" &
  load_pid=$!
}

set_telemetry none
maxes=()
for _ in 1 2 3; do
  load max "$secs"; wait "$load_pid"
  maxes+=("$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["requests_per_sec"]))' "$work/load.json")")
done
max=$(printf '%s\n' "${maxes[@]}" | sort -n | sed -n 2p)
echo "$(machine); no-telemetry maximum ${maxes[*]} -> $max requests/s; $conns connections, $secs s runs, $runs rounds" >&2

# run SETTING PERCENT: one fixed-rate run; one JSON line.
run() {
  local rate=$((max * $2 / 100)) before after me=$BASHPID
  load "$rate" 2; wait "$load_pid" # warm-up at this rate
  before=$(cpu_groups "$me")
  load "$rate" "$secs"; wait "$load_pid"
  after=$(cpu_groups "$me")
  python3 - "$1" "$2" "$rate" "$work/load.json" "$before" "$after" <<'PY'
import json, sys
name, pct, rate, path, before, after = sys.argv[1:]
r = json.load(open(path))
b, a = (dict(x.split("=") for x in s.split()) for s in (before, after))
n = max(r["requests"], 1)
us = {k: round((float(a[k]) - float(b[k])) / n * 1e6, 1) for k in b}
print(json.dumps({"setting": name, "load_pct": int(pct), "target_rate": int(rate),
                  "requests_per_sec": round(r["requests_per_sec"]), "failed": r["failed"], "sent_late": r["sent_late"],
                  "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                  **{f"{k}_cpu_us_per_req": v for k, v in us.items()}}), flush=True)
PY
}
# cpu_groups SHELL_PID: CPU seconds so far per group, as `group=seconds`
# words. The load generator's come from the shell that ran and waited for
# it (its children's time), so they count runs that have ended.
cpu_groups() {
  echo "envoy=$(cpu_sum "$envoy_web" "$envoy_api") tern_dp=$(cpu_sum "$dp_web" "$dp_api")" \
    "sink=$(cpu "$sink_pid") app=$(cpu "$app_pid") load=$(awk -v t="$tck" '{print ($16+$17)/t}' "/proc/$1/stat")"
}

results=$work/results.jsonl
for round in $(seq 1 "$runs"); do
  for i in "${!settings[@]}"; do
    s=${settings[$(((i + round) % ${#settings[@]}))]}
    set_telemetry "$s"
    for pct in "${loads[@]}"; do
      run "$s" "$pct" | tee -a "$results"
    done
  done
done
echo "spans at the sink: $(tail -n 1 "$work/sink.out" 2>/dev/null || echo 0)" >&2
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ["requests_per_sec", "failed", "sent_late", "p50_ms", "p99_ms"] + [k for k in rows[0] if k.endswith("_cpu_us_per_req")]
med = {}
for row in rows:
    med.setdefault((row["setting"], row["load_pct"]), []).append(row)
med = {sk: {k: statistics.median(r[k] for r in rs) for k in keys} for sk, rs in med.items()}
for (s, pct), m in med.items():
    base = med[("none", pct)]
    sidecar = m["envoy_cpu_us_per_req"] + m["tern_dp_cpu_us_per_req"]
    base_sidecar = base["envoy_cpu_us_per_req"] + base["tern_dp_cpu_us_per_req"]
    print(json.dumps({"setting": s, "load_pct": pct, "median": m,
        "sidecar_cpu_vs_none": round(sidecar / base_sidecar, 3),
        "p50_vs_none": round(m["p50_ms"] / base["p50_ms"], 3),
        "p99_vs_none": round(m["p99_ms"] / base["p99_ms"], 3),
        # two proxies on the path: per proxy, CPU-seconds per second per 1,000 requests/s
        "envoy_vcpu_per_1000_rps_per_proxy": round(m["envoy_cpu_us_per_req"] / 2 / 1000, 3)}))
PY
