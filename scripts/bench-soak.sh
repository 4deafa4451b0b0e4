#!/usr/bin/env bash
# The soak (BENCHMARKS.md): steady HTTP load through the sidecar pair of
# bench-sidecar.sh with every signal on (MeshTrace at 100%, MeshAccessLog,
# MeshMetric every 10 s) for BENCH_SOAK_MINUTES; the RSS of both tern-dp, both
# Envoys and tern-cp is sampled every minute. Memory must not grow after the
# warm-up (the first BENCH_WARMUP_MINUTES).
# Usage: scripts/bench-soak.sh   (BENCH_SOAK_MINUTES=30, BENCH_WARMUP_MINUTES=5, BENCH_RATE=500 to change)
source "$(dirname "$0")/bench-common.sh"
minutes=${BENCH_SOAK_MINUTES:-30}
warmup=${BENCH_WARMUP_MINUTES:-5}
rate=${BENCH_RATE:-500}

start_pair
telemetry_yaml sink 100 10s | ternctl apply -f - >&2
echo "$(machine); $rate requests/s for $minutes min, all signals on" >&2
$bin/tern-bench http --url "$url" --rate "$rate" --seconds $((minutes * 60 + 5)) > "$work/http.json" & load=$!; pids+=($load)
samples=$work/rss.jsonl
for m in $(seq 0 "$minutes"); do
  [ "$m" -gt 0 ] && sleep 60
  printf '{"minute": %s, "tern_dp_web_kib": %s, "tern_dp_api_kib": %s, "envoy_web_kib": %s, "envoy_api_kib": %s, "tern_cp_kib": %s, "sink": "%s"}\n' \
    "$m" "$(rss_now "$dp_web")" "$(rss_now "$dp_api")" "$(rss_now "$envoy_web")" "$(rss_now "$envoy_api")" "$(rss_now "$tern_cp")" \
    "$(tail -n 1 "$work/sink.out")" | tee -a "$samples"
done
wait "$load" || true
echo "load: $(cat "$work/http.json")"
for d in web api; do
  echo "tern-dp $d delivery: $(python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$work/$d/otel-stats.json")"
done
python3 - "$samples" "$warmup" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
warm = int(sys.argv[2])
after = [r for r in rows if r["minute"] >= warm]
for k in ("tern_dp_web_kib", "tern_dp_api_kib", "envoy_web_kib", "envoy_api_kib", "tern_cp_kib"):
    at, last, top = after[0][k], after[-1][k], max(r[k] for r in after)
    print(json.dumps({"process": k[:-4], "rss_at_warmup_mib": round(at / 1024, 1), "rss_at_end_mib": round(last / 1024, 1),
                      "max_after_warmup_mib": round(top / 1024, 1), "growth_after_warmup_pct": round((last - at) / at * 100, 1)}))
PY
