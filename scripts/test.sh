#!/usr/bin/env bash
# The one command that runs every Tern test: starts a throwaway PostgreSQL
# cluster (installing Debian's postgresql if missing), installs Envoy into
# .tools/ (scripts/install-tools.sh), runs the whole workspace's tests, and
# removes the cluster.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test api_e2e).
set -euo pipefail
cd "$(dirname "$0")/.."

# openssl makes the test certificates (TLS/mTLS tests).
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }

pgdir=$(mktemp -d /tmp/tern-test-pg.XXXXXX)
cleanup() {
  scripts/postgres.sh stop "$pgdir"
  rm -rf "$pgdir"
}
trap cleanup EXIT
eval "$(scripts/postgres.sh start "$pgdir")"
export TERN_TEST_POSTGRES_URL
eval "$(scripts/install-tools.sh)"
export TERN_TEST_ENVOY TERN_TEST_ROTEL

cargo test --workspace --locked --no-fail-fast "$@"
