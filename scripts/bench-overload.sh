#!/usr/bin/env bash
# The overload runs (BENCHMARKS.md): tern-dp's pipe under more span load than
# its collector takes. Two parts (BENCH_PARTS, default both):
#
# burst: a collector that accepts BENCH_SINK_RATE spans/s (default 30000),
#   one burst of BENCH_BURST_SECONDS (1) from 8 connections sending 100-span
#   requests, tern-dp with default settings, in each shape of
#   BENCH_BURST_SHAPES ("flat 2x 2x-open"): flat out, each connection waiting
#   for its answer before the next request (the issue's measurement); at
#   twice the collector's rate, waiting for answers (as the OpenTelemetry
#   SDKs); at twice the rate, sending on schedule with up to 64 requests
#   unanswered per connection (as Envoy's tracer). Prints
#   the spans sent, refused, and arrived at the collector once it drained.
#   With BENCH_TERN_DP_BEFORE=<another tern-dp binary> the burst alternates
#   between that binary and this one, BENCH_ROUNDS (3) times each, so the two
#   compare within one run.
# overload: 8 connections flat out for BENCH_SECONDS (20) with the collector
#   down (every request must wait in the queue or be refused), then with the
#   collector at BENCH_SINK_RATE (the queue stays full); tern-dp's RSS sampled
#   every second; once per queue size in BENCH_QUEUE_SIZES ("16M 64M"), the
#   request bound set out of the way; with BENCH_TERN_DP_BEFORE, that binary
#   too. Memory must level off at about the queue's byte bound above the idle
#   footprint, whatever the load.
# Usage: scripts/bench-overload.sh   (BENCH_PARTS, BENCH_SINK_RATE, BENCH_BURST_SECONDS, BENCH_ROUNDS,
#   BENCH_BURST_SHAPES, BENCH_TERN_DP_BEFORE, BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_QUEUE_SIZES, BENCH_COLLECTORS="down slow")
source "$(dirname "$0")/bench-common.sh"
parts=${BENCH_PARTS:-"burst overload"}
sink_rate=${BENCH_SINK_RATE:-30000}
burst_secs=${BENCH_BURST_SECONDS:-1}
rounds=${BENCH_ROUNDS:-3}
shapes=${BENCH_BURST_SHAPES:-"flat 2x 2x-open"}
before=${BENCH_TERN_DP_BEFORE:-}
secs=${BENCH_SECONDS:-20}
conns=${BENCH_CONNECTIONS:-8}
sizes=${BENCH_QUEUE_SIZES:-"16M 64M"}
collectors=${BENCH_COLLECTORS:-"down slow"}

# A tern-dp from before data-plane tokens cannot present one: then the control plane checks none.
dp_auth=dpToken
if [ -n "$before" ] && ! "$before" run --help | grep -q -- --dataplane-token-file; then dp_auth=none; fi
start_cp --dp-auth "$dp_auth"
dead=$(port) # nothing listens here: the collector is down
sink_port=$(port)
$bin/tern-bench sink --listen "127.0.0.1:$sink_port" --rate "$sink_rate" > "$work/sink.out" & pids+=($!)
{ backend_yaml down "$dead"; echo ---; backend_yaml slow "$sink_port"; } | ternctl apply -f - >&2
# trace_to BACKEND: the mesh's spans go to BACKEND (MeshTrace has one backend per proxy).
trace_to() {
  printf 'type: MeshTrace\nname: traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: %s}\n' "$1" | ternctl apply -f - >&2
}
# sink_spans: spans the collector has taken so far (it prints its totals every second).
sink_spans() { tail -n 1 "$work/sink.out" 2>/dev/null | cut -d' ' -f1 | grep . || echo 0; }
# start_dp BINARY BACKEND [FLAGS...]: a new dataplane with its own tern-dp; sets dp_pid and sock.
n=0
start_dp() {
  local binary=$1 backend=$2; shift 2
  n=$((n + 1))
  printf 'type: Dataplane\nname: over%s\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      tags: {kuma.io/service: over}\n' "$n" > "$work/dp$n.yaml"
  local token=()
  if [ "$dp_auth" = dpToken ]; then token=(--dataplane-token-file "$(dp_token "over$n")"); fi
  env -u OTEL_EXPORTER_OTLP_ENDPOINT "$binary" run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/dp$n.yaml" \
    --work-dir "$work/dp$n" "${token[@]}" "$@" 2> "$work/dp$n.log" & dp_pid=$!; pids+=($dp_pid)
  sock=$work/dp$n/otel-$backend.sock
  wait_for "test -S $sock"
}
echo "$(machine); collector at $sink_rate spans/s" >&2

if [[ " $parts " == *" burst "* ]]; then
  trace_to slow
  per_sec=$((2 * sink_rate / 100))
  echo "burst: 100-span requests for $burst_secs s, $conns connections, default settings; 2x: $per_sec requests/s" >&2
  for round in $(seq 1 "$rounds"); do
    for shape in $shapes; do for which in ${before:+before} after; do
      case $shape in
        flat) pace=() ;;
        2x) pace=(--rate "$per_sec") ;;
        2x-open) pace=(--rate "$per_sec" --in-flight 64) ;;
        *) echo "unknown burst shape $shape" >&2; exit 1 ;;
      esac
      if [ "$which" = before ]; then binary=$before; else binary=$bin/tern-dp; fi
      start_dp "$binary" slow
      sleep 1
      from=$(sink_spans)
      $bin/tern-bench load --target "unix:$sock" --items-per-request 100 --connections "$conns" --seconds "$burst_secs" \
        "${pace[@]}" > "$work/burst$n.json"
      # Drained when the collector's count has not moved for 2 s.
      last=-1; still=0
      for _ in $(seq 1 60); do
        now=$(sink_spans)
        if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; fi
        [ "$still" -ge 2 ] && break
        last=$now; sleep 1
      done
      python3 - "$which" "$round" "$shape" "$(cat "$work/burst$n.json")" "$from" "$(sink_spans)" <<'PY'
import json, sys
which, rnd, shape, load, before, after = sys.argv[1:]
r = json.loads(load)
sent = (r["requests"] + r["errors"]) * 100
refused = r["errors"] * 100
print(json.dumps({"part": "burst", "tern_dp": which, "round": int(rnd), "shape": shape, "spans_sent": sent,
  "spans_refused": refused, "spans_at_collector": int(after) - int(before),
  "lost_pct": round(100 * refused / max(sent, 1), 1), "p99_ms": round(r["p99_ms"], 1)}), flush=True)
PY
      kill "$dp_pid"; wait "$dp_pid" 2>/dev/null || true
    done; done
  done
fi

if [[ " $parts " == *" overload "* ]]; then
  for collector in $collectors; do
    trace_to "$collector"
    echo "overload: collector $collector, $conns connections flat out, $secs s per queue size" >&2
    for size in $sizes; do for which in ${before:+before} after; do
      if [ "$which" = before ]; then binary=$before; else binary=$bin/tern-dp; fi
      start_dp "$binary" "$collector" --otel-queue-bytes "$size" --otel-queue-requests 1000000
      pid=$dp_pid
      idle=$(rss_now "$pid")
      from=$(sink_spans)
      $bin/tern-bench load --target "unix:$sock" --items-per-request 100 --connections "$conns" --seconds "$secs" > "$work/load$n.json" & load=$!
      samples=()
      while kill -0 "$load" 2>/dev/null; do samples+=("$(rss_now "$pid")"); sleep 1; done
      python3 - "$which" "$collector" "$size" "$idle" "$(rss "$pid")" "$(cat "$work/load$n.json")" "$from" "$(sink_spans)" "${samples[@]}" <<'PY'
import json, sys
which, collector, size, idle, peak, load, before, after, *samples = sys.argv[1:]
r = json.loads(load)
mib = lambda kib: round(int(kib) / 1024, 1)
print(json.dumps({"part": "overload", "tern_dp": which, "collector": collector, "queue_bytes": size, "idle_rss_mib": mib(idle),
  "peak_rss_mib": mib(peak), "peak_minus_idle_mib": round(mib(peak) - mib(idle), 1),
  "rss_each_second_mib": [mib(s) for s in samples], "accepted_requests": r["requests"],
  "refused_requests": r["errors"], "p99_ms": round(r["p99_ms"], 1),
  "spans_at_collector_so_far": int(after) - int(before)}), flush=True)
PY
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done; done
  done
fi
