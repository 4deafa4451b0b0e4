#!/usr/bin/env bash
# The relay benchmark (BENCHMARKS.md): the same OTLP/gRPC span load through
#   (a) tern-dp's pipe   (Unix socket -> receiver -> exporter -> sink)
#   (b) rotel            (TCP receiver -> OTLP exporter -> the same sink)
#   (c) a raw byte copy  (Unix socket -> sink over TCP, no parsing: the physical reference)
# into one blackhole sink, on the same cores, same batch size. Prints, per
# relay and run: spans/s accepted by the relay, spans/s that reached the sink,
# CPU seconds of the relay per million spans, the relay's peak RSS; then the
# medians and the ratios the goals are stated in.
# Usage: scripts/bench-relay.sh   (BENCH_SECONDS, BENCH_SPANS, BENCH_CONNECTIONS, BENCH_RUNS, BENCH_QUEUE to change)
source "$(dirname "$0")/bench-common.sh"
secs=${BENCH_SECONDS:-10}
spans=${BENCH_SPANS:-100}
conns=${BENCH_CONNECTIONS:-4}
runs=${BENCH_RUNS:-3}
sunk() { tail -n 1 "$work/sink.out" 2>/dev/null | awk '{print $1}' | grep . || echo 0; }

sink_port=$(port)
$bin/tern-bench sink --listen "127.0.0.1:$sink_port" > "$work/sink.out" & pids+=($!)
sleep 0.5

# measure NAME PID TARGET: one load run against TARGET while sampling PID.
measure() {
  local name=$1 pid=$2 target=$3
  local c0 s0 out c1 s1
  sleep 1.5
  c0=$(cpu "$pid"); s0=$(sunk)
  out=$($bin/tern-bench load --target "$target" --items-per-request "$spans" --connections "$conns" --seconds "$secs")
  sleep 2 # let the relay drain to the sink
  c1=$(cpu "$pid"); s1=$(sunk)
  python3 - "$name" "$out" "$c0" "$c1" "$s0" "$s1" "$(rss "$pid")" "$secs" <<'PY'
import json, sys
name, out, c0, c1, s0, s1, rss, secs = sys.argv[1:]
r = json.loads(out)
delivered = int(s1) - int(s0)
cpu = float(c1) - float(c0)
print(json.dumps({"relay": name, "accepted_spans_per_sec": round(r["items_per_sec"]), "delivered_spans": delivered,
  "delivered_spans_per_sec": round(delivered / float(secs)), "cpu_s_per_million_spans": round(cpu / max(delivered, 1) * 1e6, 2),
  "peak_rss_kib": int(rss), "p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2), "refused_requests": r["errors"]}), flush=True)
PY
}

# (a) tern-dp's pipe, configured by a real control plane.
start_cp
{ backend_yaml sink "$sink_port"; printf -- '---\ntype: MeshTrace\nname: traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: sink}\n'; } | ternctl apply -f - >&2
printf 'type: Dataplane\nname: bench\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      tags: {kuma.io/service: bench}\n' > "$work/dp.yaml"
env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin/tern-dp run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/dp.yaml" \
  --work-dir "$work/dp" --dataplane-token-file "$(dp_token bench)" --otel-queue-requests "${BENCH_QUEUE:-1024}" 2> "$work/dp.log" & tern_dp=$!; pids+=($tern_dp)
wait_for "test -S $work/dp/otel-sink.sock"

# (b) rotel.
rotel_port=$(port); rotel_http=$(port)
"$TERN_TEST_ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$rotel_port" --otlp-http-endpoint "127.0.0.1:$rotel_http" \
  --exporter otlp --otlp-exporter-endpoint "http://127.0.0.1:$sink_port" --pid-file "$work/rotel.pid" > "$work/rotel.log" 2>&1 & rotel=$!; pids+=($rotel)

# (c) raw copy.
$bin/tern-bench copy --listen-unix "$work/copy.sock" --to "127.0.0.1:$sink_port" & copy=$!; pids+=($copy)
wait_for "test -S $work/copy.sock"

echo "$(machine); $secs s runs, $spans spans/request, $conns connections" >&2
results=$work/results.jsonl
for i in $(seq 1 "$runs"); do
  measure tern-dp "$tern_dp" "unix:$work/dp/otel-sink.sock" | tee -a "$results"
  measure rotel "$rotel" "127.0.0.1:$rotel_port" | tee -a "$results"
  measure raw-copy "$copy" "unix:$work/copy.sock" | tee -a "$results"
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ("delivered_spans_per_sec", "cpu_s_per_million_spans", "peak_rss_kib", "p50_ms", "p99_ms", "refused_requests")
med = {n: {k: statistics.median(r[k] for r in rows if r["relay"] == n) for k in keys} for n in ("tern-dp", "rotel", "raw-copy")}
for n, m in med.items():
    print(json.dumps({"relay": n, "median": m}))
t, r, c = med["tern-dp"], med["rotel"], med["raw-copy"]
print(json.dumps({"spans_per_cpu_second_vs_rotel": round(r["cpu_s_per_million_spans"] / t["cpu_s_per_million_spans"], 2),
                  "peak_rss_vs_rotel": round(t["peak_rss_kib"] / r["peak_rss_kib"], 2),
                  "throughput_vs_rotel": round(t["delivered_spans_per_sec"] / r["delivered_spans_per_sec"], 2),
                  "throughput_vs_raw_copy": round(t["delivered_spans_per_sec"] / c["delivered_spans_per_sec"], 2)}))
PY
