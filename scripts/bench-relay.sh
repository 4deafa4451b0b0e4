#!/usr/bin/env bash
# The relay benchmark (BENCHMARKS.md): the same OTLP/gRPC span load through
#   (a) tern-dp's pipe   (Unix socket -> receiver -> exporter -> sink)
#   (b) rotel            (TCP receiver -> OTLP exporter -> the same sink)
#   (c) a raw byte copy  (Unix socket -> sink over TCP, no parsing: the physical reference)
# into one blackhole sink, on the same cores, same batch size. Prints, per
# relay: spans/s accepted by the relay, spans/s that reached the sink, CPU
# seconds of the relay per million spans, the relay's peak RSS, and ratios.
# Usage: scripts/bench-relay.sh   (BENCH_SECONDS, BENCH_SPANS, BENCH_CONNECTIONS, BENCH_RUNS, BENCH_QUEUE to change)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BENCH_SECONDS:-10}
spans=${BENCH_SPANS:-100}
conns=${BENCH_CONNECTIONS:-4}
runs=${BENCH_RUNS:-3}

cargo build --release --locked --bins -p tern -p tern-bench >&2
eval "$(scripts/install-tools.sh)"
bin=target/release
work=$(mktemp -d /tmp/tern-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{print ($14+$15)/t}' "/proc/$1/stat"; }
rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
sunk() { tail -n 1 "$work/sink.out" 2>/dev/null || echo 0; }
wait_for() { for _ in $(seq 1 200); do eval "$1" && return 0; sleep 0.1; done; echo "timed out: $1" >&2; return 1; }

sink_port=$(port)
$bin/tern-bench sink --listen "127.0.0.1:$sink_port" > "$work/sink.out" & pids+=($!)
sleep 0.5

# measure NAME PID TARGET: one load run against TARGET while sampling PID.
measure() {
  local name=$1 pid=$2 target=$3
  local c0 s0 out c1 s1
  sleep 1.5
  c0=$(cpu "$pid"); s0=$(sunk)
  out=$($bin/tern-bench load --target "$target" --spans-per-request "$spans" --connections "$conns" --seconds "$secs")
  sleep 2 # let the relay drain to the sink
  c1=$(cpu "$pid"); s1=$(sunk)
  python3 - "$name" "$out" "$c0" "$c1" "$s0" "$s1" "$(rss "$pid")" "$secs" <<'PY'
import json, sys
name, out, c0, c1, s0, s1, rss, secs = sys.argv[1:]
r = json.loads(out)
delivered = int(s1) - int(s0)
cpu = float(c1) - float(c0)
print(json.dumps({"relay": name, "accepted_spans_per_sec": round(r["spans_per_sec"]), "delivered_spans": delivered,
  "delivered_spans_per_sec": round(delivered / float(secs)), "cpu_s_per_million_spans": round(cpu / max(delivered, 1) * 1e6, 2),
  "peak_rss_kib": int(rss), "p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2), "errors": r["errors"]}))
PY
}

# (a) tern-dp's pipe, configured by a real control plane.
api=$(port); dp=$(port)
$bin/tern-cp run --data-dir "$work/cp" --api-addr "127.0.0.1:$api" --dp-addr "127.0.0.1:$dp" 2> "$work/cp.log" & pids+=($!)
wait_for "curl -sf http://127.0.0.1:$api/ >/dev/null"
cat > "$work/backend.yaml" <<YAML
type: MeshOpenTelemetryBackend
name: sink
mesh: default
spec:
  endpoint: {address: 127.0.0.1, port: $sink_port}
---
type: MeshTrace
name: traces
mesh: default
spec:
  targetRef: {kind: Mesh}
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry:
          backendRef: {kind: MeshOpenTelemetryBackend, name: sink}
YAML
$bin/ternctl --api "http://127.0.0.1:$api" apply -f "$work/backend.yaml" >&2
cat > "$work/dp.yaml" <<YAML
type: Dataplane
name: bench
mesh: default
networking:
  address: 127.0.0.1
  inbound:
    - port: 18080
      tags: {kuma.io/service: bench}
YAML
env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin/tern-dp run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/dp.yaml" \
  --work-dir "$work/dp" --otel-queue-requests "${BENCH_QUEUE:-1024}" 2> "$work/dp.log" & tern_dp=$!; pids+=($tern_dp)
wait_for "test -S $work/dp/otel-sink.sock"

# (b) rotel.
rotel_port=$(port); rotel_http=$(port)
"$TERN_TEST_ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$rotel_port" --otlp-http-endpoint "127.0.0.1:$rotel_http" \
  --exporter otlp --otlp-exporter-endpoint "http://127.0.0.1:$sink_port" --pid-file "$work/rotel.pid" > "$work/rotel.log" 2>&1 & rotel=$!; pids+=($rotel)

# (c) raw copy.
$bin/tern-bench copy --listen-unix "$work/copy.sock" --to "127.0.0.1:$sink_port" & copy=$!; pids+=($copy)
wait_for "test -S $work/copy.sock"

echo "machine: $(nproc) cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 1024)) GiB; $secs s runs, $spans spans/request, $conns connections" >&2
for i in $(seq 1 "$runs"); do
  measure tern-dp "$tern_dp" "unix:$work/dp/otel-sink.sock"
  measure rotel "$rotel" "127.0.0.1:$rotel_port"
  measure raw-copy "$copy" "unix:$work/copy.sock"
done
