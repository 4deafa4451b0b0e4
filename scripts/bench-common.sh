# Shared by the scripts/bench-*.sh benchmarks: build, tools, processes,
# free ports, /proc readings. Source it; it sets `bin`, `work` and cleans up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tern-dp is its own package: name it, or an old binary would be measured.
# CARGO_TARGET_DIR and CARGO_BUILD_JOBS are honoured as cargo does.
cargo build --release --locked --bins -p tern -p tern-dp -p tern-bench >&2
eval "$(scripts/install-tools.sh)"
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d /tmp/tern-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tck=$(getconf CLK_TCK)
# CPU seconds (user+system) a process has used so far.
cpu() { awk -v t="$tck" '{print ($14+$15)/t}' "/proc/$1/stat"; }
# Peak and current resident set size of a process, KiB.
rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_now() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_for() { for _ in $(seq 1 300); do eval "$1" && return 0; sleep 0.1; done; echo "timed out: $1" >&2; return 1; }
machine() {
  echo "machine: $(nproc) cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 1024)) GiB"
}

# start_cp [FLAGS...]: a control plane with its API at $api and data-plane server at $dp.
start_cp() {
  api=$(port); dp=$(port)
  $bin/tern-cp run --data-dir "$work/cp" --api-addr "127.0.0.1:$api" --api-tls-addr off --dp-addr "127.0.0.1:$dp" --mads-addr off --metrics-addr off "$@" \
    2> "$work/cp.log" & tern_cp=$!
  pids+=($tern_cp)
  wait_for "curl -sf http://127.0.0.1:$api/ >/dev/null"
}
ternctl() { $bin/ternctl --api "http://127.0.0.1:$api" "$@"; }
# dp_token NAME: a data-plane token for dataplane NAME of mesh default, in a file; prints its path.
dp_token() { ternctl generate dataplane-token --name "$1" > "$work/$1.token" && echo "$work/$1.token"; }

# backend_yaml NAME PORT: a MeshOpenTelemetryBackend at 127.0.0.1:PORT.
backend_yaml() {
  printf 'type: MeshOpenTelemetryBackend\nname: %s\nmesh: default\nspec:\n  endpoint: {address: 127.0.0.1, port: %s}\n' "$1" "$2"
}
# telemetry_yaml BACKEND SAMPLING REFRESH: MeshTrace (overall sampling SAMPLING %),
# MeshAccessLog and MeshMetric (every REFRESH) for the whole mesh, all to BACKEND.
telemetry_yaml() {
  local otel="    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: $1}\n"
  printf -- "---\ntype: MeshTrace\nname: bench-traces\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    sampling: {overall: %s}\n$otel" "$2"
  printf -- "---\ntype: MeshAccessLog\nname: bench-logs\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n$otel"
  printf -- "---\ntype: MeshMetric\nname: bench-metrics\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  default:\n$otel          refreshInterval: %s\n" "$3"
}

# start_pair: a blackhole sink, a control plane with backend `sink`, the api
# service behind its sidecar and the web sidecar whose outbound listener
# ($url) leads to it. Sets url, web_admin, api_admin and the pids dp_web,
# dp_api, envoy_web, envoy_api, sink_pid, app_pid, tern_cp.
start_pair() {
  sink_port=$(port)
  $bin/tern-bench sink --listen "127.0.0.1:$sink_port" > "$work/sink.out" & sink_pid=$!; pids+=($sink_pid)
  start_cp
  backend_yaml sink "$sink_port" | ternctl apply -f - >&2

  app=$(port); api_in=$(port); api_admin=$(port); web_in=$(port); web_admin=$(port); web_out=$(port)
  $bin/ternctl demo-app --listen "127.0.0.1:$app" --body "$(head -c 256 /dev/zero | tr '\0' x)" & app_pid=$!; pids+=($app_pid)
  dataplane() { # NAME INBOUND SERVICE_PORT ADMIN [OUTBOUND]
    printf 'type: Dataplane\nname: %s\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  admin: {port: %s}\n  inbound:\n    - port: %s\n      servicePort: %s\n      tags: {kuma.io/service: %s, kuma.io/protocol: http}\n' "$1" "$4" "$2" "$3" "$1"
    [ -n "${5:-}" ] && printf '  outbound:\n    - port: %s\n      tags: {kuma.io/service: api}\n' "$5"
    return 0
  }
  dataplane api "$api_in" "$app" "$api_admin" > "$work/api.yaml"
  dataplane web "$web_in" "$(port)" "$web_admin" "$web_out" > "$work/web.yaml"
  for name in api web; do
    env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin/tern-dp run --cp-address "http://127.0.0.1:$dp" --dataplane-file "$work/$name.yaml" \
      --work-dir "$work/$name" --dataplane-token-file "$(dp_token $name)" --envoy-binary "$TERN_TEST_ENVOY" \
      2> "$work/$name.log" & pids+=($!)
    eval "dp_$name=\$!"
  done
  url="http://127.0.0.1:$web_out/"
  wait_for "curl -sf $url >/dev/null"
  envoy_web=$(pgrep -P "$dp_web" envoy); envoy_api=$(pgrep -P "$dp_api" envoy)
}
# cpu_sum PID...: CPU seconds the processes have used so far, together.
cpu_sum() { local p files=(); for p in "$@"; do files+=("/proc/$p/stat"); done; awk -v t="$tck" '{s += ($14+$15)/t} END {print s}' "${files[@]}"; }

# tracing.py WANT LOGS < config_dump: exit 0 when Envoy's config has no OTel
# tracer (WANT=absent) or one whose sampler keeps WANT percent of the traces
# without a parent (MeshTrace's overall), and has
# (LOGS=yes) or has not (LOGS=no) an OpenTelemetry access logger.
cat > "$work/tracing.py" <<'PY'
import json, sys
want, logs = sys.argv[1:3]
found, loggers = [], []
def walk(v):
    if isinstance(v, dict):
        if v.get("name") == "envoy.tracers.opentelemetry" and "typed_config" in v:
            found.append(None)
        if v.get("name") == "envoy.access_loggers.open_telemetry" and "typed_config" in v:
            loggers.append(None)
        if "sampling_percentage" in v:  # the tracer's trace-ID ratio sampler
            p = v["sampling_percentage"]
            scale = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[p.get("denominator", "HUNDRED")]
            found.append(round(100 * p.get("numerator", 0) / scale, 4))
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(json.load(sys.stdin))
ok = not found if want == "absent" else (None in found and float(want) in found)
sys.exit(0 if ok and bool(loggers) == (logs == "yes") else 1)
PY

# set_telemetry SETTING: applies the policies of one sidecar-benchmark setting
# and waits until both Envoys of start_pair run the matching tracer
# configuration. SETTING: none (no policies); all-N (MeshTrace at N%
# sampling, MeshAccessLog and MeshMetric); traces-N (MeshTrace alone); logs
# (MeshAccessLog alone); metrics (MeshMetric alone); a -envoy-batching suffix
# sets Envoy's own tracer batching instead of tern-dp's.
set_telemetry() {
  local want logs=no flush=50 interval=1000
  case $1 in
    *-envoy-batching) flush=5; interval=5000 ;;
  esac
  for admin in $web_admin $api_admin; do
    curl -sf -X POST "http://127.0.0.1:$admin/runtime_modify?tracing.opentelemetry.min_flush_spans=$flush&tracing.opentelemetry.flush_interval_ms=$interval" >/dev/null
  done
  local base=${1%-envoy-batching}
  case $base in
    none) ternctl delete meshtrace bench-traces >/dev/null 2>&1 || true
          ternctl delete meshaccesslog bench-logs >/dev/null 2>&1 || true
          ternctl delete meshmetric bench-metrics >/dev/null 2>&1 || true
          want=absent ;;
    all-*) telemetry_yaml sink "${base#all-}" 10s | ternctl apply -f - >/dev/null; want=${base#all-}; logs=yes ;;
    traces-* | logs | metrics)
      local pct=10 kind keep
      case $base in
        traces-*) keep=meshtrace; pct=${base#traces-}; want=$pct ;;
        logs) keep=meshaccesslog; want=absent; logs=yes ;;
        metrics) keep=meshmetric; want=absent ;;
      esac
      telemetry_yaml sink "$pct" 10s | ternctl apply -f - >/dev/null
      for kind in meshtrace:bench-traces meshaccesslog:bench-logs meshmetric:bench-metrics; do
        [ "${kind%%:*}" = "$keep" ] || ternctl delete "${kind%%:*}" "${kind#*:}" >/dev/null
      done ;;
    *) echo "unknown setting $1" >&2; return 1 ;;
  esac
  for admin in $web_admin $api_admin; do
    wait_for "curl -sf http://127.0.0.1:$admin/config_dump | python3 $work/tracing.py $want $logs"
  done
  sleep 1
}
