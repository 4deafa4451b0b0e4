#!/usr/bin/env bash
# The control plane at scale: COUNT simulated data planes (`tern-bench
# dataplanes`: bootstrap with an inventory, plan long-polls, ADS streams for
# a tenth of them), 50 backends and 200 policies, against one and then three
# tern-cp replicas (release builds) on a throwaway PostgreSQL, each run on a
# fresh database. Data-plane tokens are off (--dp-auth none) so the tool
# needs none; everything else is as in production.
# Reports, as JSON per run: the bootstrap storm (until every data plane holds
# a plan and every stream its listeners), EDITS edits of the backend every
# plan uses (latency p50/p99/max until every affected plan arrived), RSS and
# CPU of the replicas, store calls and PostgreSQL transactions per edit.
# Usage: scripts/bench-replicas.sh [COUNT] [EDITS] [REPLICA_COUNTS...]
source "$(dirname "$0")/bench-common.sh"
count=${1:-10000}
edits=${2:-5}
shift 2 2>/dev/null || shift $#
runs=("${@:-1 3}")
machine
pgdir=$(mktemp -d /tmp/tern-bench-pg.XXXXXX)
eval "$(scripts/postgres.sh start "$pgdir")"
psql=$(ls /usr/lib/postgresql/*/bin/psql | sort -V | tail -n 1)
stop_pg() { scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true; rm -rf "$pgdir"; }
trap 'stop_pg; cleanup' EXIT
base=${TERN_TEST_POSTGRES_URL%/*}

for n in ${runs[*]}; do
  db="bench_${n}_$$"
  "$psql" "$TERN_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >/dev/null
  url="$base/$db"
  args=(); run_pids=()
  for i in $(seq 1 "$n"); do
    a=$(port); d=$(port); m=$(port)
    $bin/tern-cp run --data-dir "$work/cp-$n-$i" --store "$url" --api-addr "127.0.0.1:$a" --api-tls-addr off \
      --dp-addr "127.0.0.1:$d" --mads-addr off --metrics-addr "127.0.0.1:$m" --dp-auth none \
      2> "$work/cp-$n-$i.log" & p=$!
    pids+=($p); run_pids+=($p)
    wait_for "curl -sf http://127.0.0.1:$a/ >/dev/null"
    args+=(--cp "http://127.0.0.1:$d" --metrics "http://127.0.0.1:$m" --pid "$p")
    api="http://127.0.0.1:$a"
  done
  echo "$n replica(s), $count data planes:"
  $bin/tern-bench dataplanes "${args[@]}" --api "$api" --postgres "$url" --count "$count" --edits "$edits"
  for p in "${run_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${run_pids[@]}" 2>/dev/null || true
done
