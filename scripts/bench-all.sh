#!/usr/bin/env bash
# Runs every benchmark in BENCHMARKS.md, one after the other (never two at
# once: they share the cores), and keeps each one's output under
# bench-results/<UTC time>/. About 75 minutes with the 30-minute soak.
# Usage: scripts/bench-all.sh   (each script's BENCH_* variables pass through)
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
run() {
  local name=$1; shift
  echo "== $name" >&2
  "$@" > "$out/$name.txt" 2> "$out/$name.log" || { echo "$name failed; see $out/$name.log" >&2; return 1; }
  tail -n 8 "$out/$name.txt" >&2
}
run resolve cargo bench -p tern-resolve --bench resolve
run relay scripts/bench-relay.sh
run overload scripts/bench-overload.sh
run sidecar scripts/bench-sidecar.sh
run sidecar-rate scripts/bench-sidecar-rate.sh
run multizone scripts/bench-multizone.sh
run kube-store scripts/bench-kube-store.sh
run replicas scripts/bench-replicas.sh
run soak scripts/bench-soak.sh
echo "results in $out" >&2
