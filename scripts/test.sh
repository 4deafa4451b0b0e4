#!/usr/bin/env bash
# The one command that runs every Tern test: starts a throwaway PostgreSQL
# cluster (installing Debian's postgresql if missing), installs Envoy, rotel,
# and builds the OpenTelemetry Collector, kube-apiserver, kubectl and etcd into .tools/
# (scripts/install-tools.sh; cached), runs the whole workspace's tests, and
# removes the cluster.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test api_e2e).
set -euo pipefail
cd "$(dirname "$0")/.."

pgdir=$(mktemp -d /tmp/tern-test-pg.XXXXXX)
cleanup() {
  scripts/postgres.sh stop "$pgdir"
  rm -rf "$pgdir"
}
trap cleanup EXIT
eval "$(scripts/postgres.sh start "$pgdir")"
export TERN_TEST_POSTGRES_URL
eval "$(scripts/install-tools.sh)"
export TERN_TEST_ENVOY TERN_TEST_ROTEL TERN_TEST_OTELCOL TERN_TEST_KUBE_APISERVER TERN_TEST_KUBECTL TERN_TEST_ETCD TERN_TEST_PROMETHEUS TERN_TEST_JAEGER

# The data plane builds without the control plane's database stack.
if cargo tree -p tern-dp -e normal,build --locked | grep -q ' sqlx'; then
  echo "tern-dp must not depend on sqlx (cargo tree -p tern-dp -i sqlx says why)" >&2
  exit 1
fi
# tern-dp is its own package: the end-to-end tests of the root package run
# the binary from the target directory, so build every binary first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
