#!/usr/bin/env bash
# Multi-zone sync: a global and one zone tern-cp (release builds, SQLite).
# 1. Initial sync: RESOURCES backends and MeshTraces created on the global,
#    DATAPLANES data planes with insights in the zone's store (written there
#    before the zone starts, as `tern-bench seed-zone`); the zone starts and
#    the time until both sides hold everything is measured through the APIs,
#    with the bytes each way from the global's ZoneInsight.
# 2. Latency: EDITS edits of one backend on the global, each timed until the
#    zone's API shows it (p50/p90/p99/max).
# Usage: scripts/bench-multizone.sh [RESOURCES] [DATAPLANES] [EDITS]
#   BENCH_GLOBAL=kubernetes: the global on a real kube-apiserver (started by
#   scripts/kube-smoke.sh), resources applied with kubectl; no edit latency
#   (the global's API is read-only there).
source "$(dirname "$0")/bench-common.sh"
if [ "${BENCH_GLOBAL:-}" = kubernetes ] && [ -z "${BENCH_IN_CLUSTER:-}" ]; then
  BENCH_IN_CLUSTER=1 exec scripts/kube-smoke.sh "$0" "$@"
fi
resources=${1:-1000}
dataplanes=${2:-2000}
edits=${3:-100}
machine

gapi=$(port); gdp=$(port); kds=$(port)
global_flags=()
if [ -n "${BENCH_IN_CLUSTER:-}" ]; then
  $bin/ternctl install crds | "$TERN_TEST_KUBECTL" apply -f - > /dev/null
  "$TERN_TEST_KUBECTL" wait --for=condition=Established crd --all --timeout=60s > /dev/null
  "$TERN_TEST_KUBECTL" create namespace kuma-system > /dev/null
  hook=$(port)
  global_flags=(--environment kubernetes --kubeconfig "$KUBECONFIG" --webhook-addr "127.0.0.1:$hook" --webhook-url "https://127.0.0.1:$hook")
fi
$bin/tern-cp run --mode global --data-dir "$work/global" --api-addr "127.0.0.1:$gapi" --api-tls-addr off \
  --dp-addr "127.0.0.1:$gdp" --kds-addr "127.0.0.1:$kds" --metrics-addr off "${global_flags[@]}" 2> "$work/global.log" & pids+=($!)
wait_for "curl -sf http://127.0.0.1:$gapi/ >/dev/null"
g() { $bin/ternctl --api "http://127.0.0.1:$gapi" "$@"; }
g generate zone-token --zone bench --valid-for 1h > "$work/zone.token"

# Half backends, half MeshTraces each naming one of them (Kubernetes form on a cluster).
half=$((resources / 2))
if [ -n "${BENCH_IN_CLUSTER:-}" ]; then
  meta='apiVersion: kuma.io/v1alpha1\nkind: %s\nmetadata:\n  name: %s\n  namespace: kuma-system\n  labels: {kuma.io/mesh: default}\n'
else
  meta='type: %s\nname: %s\nmesh: default\n'
fi
for i in $(seq 1 "$half"); do
  printf -- "---\n$meta" MeshOpenTelemetryBackend "b-$i"
  printf -- 'spec:\n  endpoint: {address: collector-%s.internal, port: 4317}\n' "$i"
  printf -- "---\n$meta" MeshTrace "t-$i"
  printf -- 'spec:\n  targetRef: {kind: MeshSubset, tags: {team: t%s}}\n  default:\n    sampling: {overall: 10}\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: b-%s}\n' "$i" "$i"
done > "$work/resources.yaml"
if [ -n "${BENCH_IN_CLUSTER:-}" ]; then
  "$TERN_TEST_KUBECTL" apply --server-side -f "$work/resources.yaml" > /dev/null
else
  g apply -f "$work/resources.yaml" > /dev/null
fi

mkdir -p "$work/zone"
$bin/tern-bench seed-zone --store "sqlite:$work/zone/tern.db" --zone bench --count "$dataplanes" > /dev/null
zapi=$(port); zdp=$(port)
$bin/tern-cp run --mode zone --zone bench --global-address "https://127.0.0.1:$kds" \
  --global-ca-file "$work/global/tls/ca.crt" --zone-token-file "$work/zone.token" --data-dir "$work/zone" \
  --api-addr "127.0.0.1:$zapi" --api-tls-addr off --dp-addr "127.0.0.1:$zdp" --metrics-addr off --mads-addr off 2> "$work/zone.log" & pids+=($!)
echo "initial sync: $resources resources to the zone, $dataplanes data planes + insights to the global"
$bin/tern-bench sync-initial --global "http://127.0.0.1:$gapi" --zone "http://127.0.0.1:$zapi" --zone-name bench \
  --resources "$resources" --dataplanes "$dataplanes"
if [ -z "${BENCH_IN_CLUSTER:-}" ]; then
  echo "edit latency, global -> zone:"
  $bin/tern-bench sync-latency --global "http://127.0.0.1:$gapi" --zone "http://127.0.0.1:$zapi" --edits "$edits"
fi
echo "zone insight:"
curl -s "http://127.0.0.1:$gapi/zone-insights/bench" | python3 -c 'import json,sys; s=json.load(sys.stdin)["subscriptions"][-1]["status"]; print(json.dumps({k: s[k] for k in ("total", "zoneToGlobal")}))'
