#!/usr/bin/env bash
# The relay benchmark (BENCHMARKS.md): the same OTLP/gRPC load of one signal through
#   (a) tern-dp's pipe   (Unix socket -> receiver -> exporter -> sink)
#   (b) rotel            (TCP receiver -> OTLP exporter -> the same sink)
#   (c) the OpenTelemetry Collector (OTLP receiver -> batch -> OTLP exporter), the
#       agent users would run next to a sidecar instead of tern-dp's pipe
#   (d) a raw byte copy  (Unix socket -> sink over TCP, no parsing: the physical reference)
# into one blackhole sink, on the same cores, same request size, for spans, log
# records and metric points in turn. Prints, per signal, relay and run: items/s
# accepted by the relay, items/s that reached the sink, CPU seconds of the relay
# per million items, the relay's peak RSS; then per signal the medians and the
# ratios the goals are stated in.
# Usage: scripts/bench-relay.sh   (BENCH_SIGNALS, BENCH_SECONDS, BENCH_SPANS (items per request),
#        BENCH_CONNECTIONS, BENCH_RUNS, BENCH_QUEUE to change; BENCH_RELAYS="tern-dp raw-copy"
#        measures only those, without the ratios to the others; BENCH_RATE=N sends N requests/s
#        instead of flat out)
source "$(dirname "$0")/bench-common.sh"
secs=${BENCH_SECONDS:-10}
spans=${BENCH_SPANS:-100}
conns=${BENCH_CONNECTIONS:-4}
runs=${BENCH_RUNS:-3}
signals=${BENCH_SIGNALS:-"traces logs metrics"}
relays=${BENCH_RELAYS:-"tern-dp rotel otelcol raw-copy"}
rate=${BENCH_RATE:+--rate $BENCH_RATE}
# Items of $signal the sink has taken so far (it prints "spans logs points" every second).
sunk() {
  local col; case $signal in traces) col=1 ;; logs) col=2 ;; *) col=3 ;; esac
  tail -n 1 "$work/sink.out" 2>/dev/null | awk -v c="$col" '{print $c}' | grep . || echo 0
}

sink_port=$(port)
$bin/tern-bench sink --listen "127.0.0.1:$sink_port" > "$work/sink.out" & pids+=($!)
sleep 0.5

# measure NAME PID TARGET: one load run against TARGET while sampling PID.
measure() {
  local name=$1 pid=$2 target=$3
  local c0 s0 out c1 s1
  sleep 1.5
  c0=$(cpu "$pid"); s0=$(sunk)
  out=$($bin/tern-bench load --target "$target" --signal "$signal" --items-per-request "$spans" --connections "$conns" --seconds "$secs" $rate)
  sleep 2 # let the relay drain to the sink
  c1=$(cpu "$pid"); s1=$(sunk)
  python3 - "$signal" "$name" "$out" "$c0" "$c1" "$s0" "$s1" "$(rss "$pid")" "$secs" <<'PY'
import json, sys
signal, name, out, c0, c1, s0, s1, rss, secs = sys.argv[1:]
r = json.loads(out)
delivered = int(s1) - int(s0)
cpu = float(c1) - float(c0)
print(json.dumps({"signal": signal, "relay": name, "accepted_per_sec": round(r["items_per_sec"]), "delivered": delivered,
  "delivered_per_sec": round(delivered / float(secs)), "cpu_s_per_million": round(cpu / max(delivered, 1) * 1e6, 2),
  "peak_rss_kib": int(rss), "p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2), "refused_requests": r["errors"]}), flush=True)
PY
}

# (a) tern-dp's pipe, configured by a real control plane.
start_cp
{ backend_yaml sink "$sink_port"; telemetry_yaml sink 100 1h; } | ternctl apply -f - >&2
printf 'type: Dataplane\nname: bench\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 18080\n      tags: {kuma.io/service: bench}\n' > "$work/dp.yaml"
env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin/tern-dp run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/dp.yaml" \
  --work-dir "$work/dp" --dataplane-token-file "$(dp_token bench)" --otel-queue-requests "${BENCH_QUEUE:-1024}" 2> "$work/dp.log" & tern_dp=$!; pids+=($tern_dp)
wait_for "test -S $work/dp/otel-sink.sock"

# (b) rotel.
rotel_port=$(port); rotel_http=$(port)
"$TERN_TEST_ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$rotel_port" --otlp-http-endpoint "127.0.0.1:$rotel_http" \
  --exporter otlp --otlp-exporter-endpoint "http://127.0.0.1:$sink_port" --pid-file "$work/rotel.pid" > "$work/rotel.log" 2>&1 & rotel=$!; pids+=($rotel)

# (c) the OpenTelemetry Collector: receiver, batch processor, OTLP exporter (its common agent setup).
otelcol_port=$(port)
cat > "$work/otelcol.yaml" <<YAML
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:$otelcol_port"}}}
processors:
  batch: {}
exporters:
  otlp_grpc: {endpoint: "127.0.0.1:$sink_port", tls: {insecure: true}}
service:
  telemetry: {metrics: {level: none}}
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [otlp_grpc]}
    logs: {receivers: [otlp], processors: [batch], exporters: [otlp_grpc]}
    metrics: {receivers: [otlp], processors: [batch], exporters: [otlp_grpc]}
YAML
"$TERN_TEST_OTELCOL" --config "file:$work/otelcol.yaml" > "$work/otelcol.log" 2>&1 & otelcol=$!; pids+=($otelcol)
wait_for "(echo > /dev/tcp/127.0.0.1/$otelcol_port) 2>/dev/null"

# (d) raw copy.
$bin/tern-bench copy --listen-unix "$work/copy.sock" --to "127.0.0.1:$sink_port" & copy=$!; pids+=($copy)
wait_for "test -S $work/copy.sock"

echo "$(machine); $secs s runs, $spans items/request, $conns connections" >&2
results=$work/results.jsonl
for signal in $signals; do
  for i in $(seq 1 "$runs"); do
    for relay in $relays; do
      case $relay in
        tern-dp) measure tern-dp "$tern_dp" "unix:$work/dp/otel-sink.sock" ;;
        rotel) measure rotel "$rotel" "127.0.0.1:$rotel_port" ;;
        otelcol) measure otelcol "$otelcol" "127.0.0.1:$otelcol_port" ;;
        raw-copy) measure raw-copy "$copy" "unix:$work/copy.sock" ;;
        *) echo "unknown relay in BENCH_RELAYS: $relay" >&2; exit 2 ;;
      esac | tee -a "$results"
    done
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
present = set(r["relay"] for r in rows)
keys = ("delivered_per_sec", "cpu_s_per_million", "peak_rss_kib", "p50_ms", "p99_ms", "refused_requests")
for signal in dict.fromkeys(r["signal"] for r in rows):
    med = {n: {k: statistics.median(r[k] for r in rows if r["signal"] == signal and r["relay"] == n) for k in keys}
           for n in ("tern-dp", "rotel", "otelcol", "raw-copy") if n in present}
    for n, m in med.items():
        print(json.dumps({"signal": signal, "relay": n, "median": m}))
    if "tern-dp" not in med:
        continue
    t, ratios = med["tern-dp"], {"signal": signal}
    if "raw-copy" in med:
        c = med["raw-copy"]
        ratios["cpu_per_item_vs_raw_copy"] = round(t["cpu_s_per_million"] / c["cpu_s_per_million"], 2)
        ratios["throughput_vs_raw_copy"] = round(t["delivered_per_sec"] / max(c["delivered_per_sec"], 1), 2)
    for peer in ("rotel", "otelcol"):
        if peer not in med:
            continue
        p = med[peer]
        ratios[f"items_per_cpu_second_vs_{peer}"] = round(p["cpu_s_per_million"] / t["cpu_s_per_million"], 2)
        ratios[f"peak_rss_vs_{peer}"] = round(t["peak_rss_kib"] / p["peak_rss_kib"], 2)
        ratios[f"throughput_vs_{peer}"] = round(t["delivered_per_sec"] / max(p["delivered_per_sec"], 1), 2)
    print(json.dumps(ratios))
PY
