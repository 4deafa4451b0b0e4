#!/usr/bin/env bash
# The one command that runs Tern: builds the three binaries and starts the
# quickstart (control plane, collector, two demo services with tern-dp +
# Envoy, policies, traffic). Ctrl-C stops and cleans up everything.
# Extra arguments go to `ternctl quickstart` (e.g. ./run.sh --check).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --bins --locked
exec target/release/ternctl quickstart "$@"
