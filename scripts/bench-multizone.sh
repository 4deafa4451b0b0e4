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
source "$(dirname "$0")/bench-common.sh"
resources=${1:-1000}
dataplanes=${2:-2000}
edits=${3:-100}
machine

gapi=$(port); gdp=$(port); kds=$(port)
$bin/tern-cp run --mode global --data-dir "$work/global" --api-addr "127.0.0.1:$gapi" --api-tls-addr off \
  --dp-addr "127.0.0.1:$gdp" --kds-addr "127.0.0.1:$kds" --metrics-addr off 2> "$work/global.log" & pids+=($!)
wait_for "curl -sf http://127.0.0.1:$gapi/ >/dev/null"
g() { $bin/ternctl --api "http://127.0.0.1:$gapi" "$@"; }
g generate zone-token --zone bench --valid-for 1h > "$work/zone.token"

# Half backends, half MeshTraces each naming one of them.
half=$((resources / 2))
for i in $(seq 1 "$half"); do
  printf -- '---\ntype: MeshOpenTelemetryBackend\nname: b-%s\nmesh: default\nspec:\n  endpoint: {address: collector-%s.internal, port: 4317}\n' "$i" "$i"
  printf -- '---\ntype: MeshTrace\nname: t-%s\nmesh: default\nspec:\n  targetRef: {kind: MeshSubset, tags: {team: t%s}}\n  default:\n    sampling: {overall: 10}\n    backends:\n      - type: OpenTelemetry\n        openTelemetry:\n          backendRef: {kind: MeshOpenTelemetryBackend, name: b-%s}\n' "$i" "$i" "$i"
done > "$work/resources.yaml"
g apply -f "$work/resources.yaml" > /dev/null

mkdir -p "$work/zone"
$bin/tern-bench seed-zone --store "sqlite:$work/zone/tern.db" --zone bench --count "$dataplanes" > /dev/null
zapi=$(port); zdp=$(port)
$bin/tern-cp run --mode zone --zone bench --global-address "https://127.0.0.1:$kds" \
  --global-ca-file "$work/global/tls/ca.crt" --zone-token-file "$work/zone.token" --data-dir "$work/zone" \
  --api-addr "127.0.0.1:$zapi" --api-tls-addr off --dp-addr "127.0.0.1:$zdp" --metrics-addr off --mads-addr off 2> "$work/zone.log" & pids+=($!)
echo "initial sync: $resources resources to the zone, $dataplanes data planes + insights to the global"
$bin/tern-bench sync-initial --global "http://127.0.0.1:$gapi" --zone "http://127.0.0.1:$zapi" --zone-name bench \
  --resources "$resources" --dataplanes "$dataplanes"
echo "edit latency, global -> zone:"
$bin/tern-bench sync-latency --global "http://127.0.0.1:$gapi" --zone "http://127.0.0.1:$zapi" --edits "$edits"
echo "zone insight:"
curl -s "http://127.0.0.1:$gapi/zone-insights/bench" | python3 -c 'import json,sys; s=json.load(sys.stdin)["subscriptions"][-1]["status"]; print(json.dumps({k: s[k] for k in ("total", "zoneToGlobal")}))'
