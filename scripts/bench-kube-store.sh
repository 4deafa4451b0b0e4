#!/usr/bin/env bash
# The Kubernetes store's batches (BENCHMARKS.md): against a real etcd and
# kube-apiserver (scripts/kube-smoke.sh starts them), `tern-bench kube-apply`
# creates COUNT Dataplanes in one batch and then changes them all, with the
# store's calls one at a time (concurrency 1, as before 2026-12-01) and
# CONCURRENCY at a time (the store's default), alternating, RUNS rounds.
# Prints one JSON line per run, then the medians and their ratio. No
# admission webhook is registered: the apiserver's own cost only.
# Usage: scripts/bench-kube-store.sh   (BENCH_COUNT=1000, BENCH_RUNS=3, BENCH_CONCURRENCY=16)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins -p tern -p tern-bench >&2
eval "$(scripts/install-tools.sh)"
export BENCH_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
exec scripts/kube-smoke.sh bash -c '
set -euo pipefail
count=${BENCH_COUNT:-1000} runs=${BENCH_RUNS:-3} wide=${BENCH_CONCURRENCY:-16}
$BENCH_BIN/ternctl install crds | "$TERN_TEST_KUBECTL" apply -f - >/dev/null
"$TERN_TEST_KUBECTL" wait --for=condition=Established crd --all --timeout=60s >/dev/null
"$TERN_TEST_KUBECTL" create namespace kuma-system >/dev/null
out=$(mktemp)
for round in $(seq 1 "$runs"); do
  for c in 1 "$wide"; do
    $BENCH_BIN/tern-bench kube-apply --kubeconfig "$KUBECONFIG" --count "$count" --concurrency "$c" --round "r$round-c$c" | tee -a "$out"
  done
done
python3 - "$out" "$wide" <<PY
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda c, k: statistics.median(r[k] for r in rows if r["concurrency"] == c)
wide = int(sys.argv[2])
for c in (1, wide):
    print(json.dumps({"concurrency": c, "median_create_ms": med(c, "create_ms"), "median_update_ms": med(c, "update_ms")}))
print(json.dumps({"create_speedup": round(med(1, "create_ms") / med(wide, "create_ms"), 2),
                  "update_speedup": round(med(1, "update_ms") / med(wide, "update_ms"), 2)}))
PY
'
