#!/usr/bin/env bash
# The overload run (BENCHMARKS.md): tern-dp's pipe under flat-out span load
# while its collector is down, so every request must either wait in the
# queue or be refused. Samples tern-dp's RSS every second; memory must level
# off at about the queue's byte bound above the idle footprint, whatever the
# load. Runs once per queue size in BENCH_QUEUE_SIZES.
# Usage: scripts/bench-overload.sh   (BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_QUEUE_SIZES to change)
source "$(dirname "$0")/bench-common.sh"
secs=${BENCH_SECONDS:-20}
conns=${BENCH_CONNECTIONS:-8}
sizes=${BENCH_QUEUE_SIZES:-"16M 64M"}

start_cp
dead=$(port) # nothing listens here: the collector is down
{ backend_yaml down "$dead"; printf -- '---\ntype: MeshTrace\nname: traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: down}\n'; } | ternctl apply -f - >&2
echo "$(machine); collector down, $conns connections flat out, $secs s per queue size" >&2
n=0
for size in $sizes; do
  n=$((n + 1))
  printf 'type: Dataplane\nname: over%s\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      tags: {kuma.io/service: over}\n' "$n" > "$work/dp$n.yaml"
  env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin/tern-dp run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/dp$n.yaml" \
    --work-dir "$work/dp$n" --otel-queue-bytes "$size" --otel-queue-requests 1000000 2> "$work/dp$n.log" & pid=$!; pids+=($pid)
  wait_for "test -S $work/dp$n/otel-down.sock"
  idle=$(rss_now "$pid")
  $bin/tern-bench load --target "unix:$work/dp$n/otel-down.sock" --items-per-request 100 --connections "$conns" --seconds "$secs" > "$work/load$n.json" & load=$!
  samples=()
  while kill -0 "$load" 2>/dev/null; do samples+=("$(rss_now "$pid")"); sleep 1; done
  python3 - "$size" "$idle" "$(rss "$pid")" "$(cat "$work/load$n.json")" "${samples[@]}" <<'PY'
import json, sys
size, idle, peak, load, *samples = sys.argv[1:]
r = json.loads(load)
mib = lambda kib: round(int(kib) / 1024, 1)
print(json.dumps({"queue_bytes": size, "idle_rss_mib": mib(idle), "peak_rss_mib": mib(peak),
  "peak_minus_idle_mib": round(mib(peak) - mib(idle), 1), "rss_each_second_mib": [mib(s) for s in samples],
  "accepted_requests": r["requests"], "refused_requests": r["errors"]}), flush=True)
PY
  kill "$pid"
done
