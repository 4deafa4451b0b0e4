#!/usr/bin/env bash
# Tern's validation against every case of Kuma's own validator tests
# (MeshTrace, MeshAccessLog, MeshMetric, MeshOpenTelemetryBackend): prints
# each case where Tern's violations differ from Kuma's, and the totals.
# Needs a Kuma git directory (e.g. a clone of github.com/kumahq/kuma) and
# Python's yaml module; reads Kuma's files at the revision given, copies none.
# Usage: KUMA_GIT_DIR=/path/to/kuma[/.git] [KUMA_REV=v2.14.3] scripts/kuma-parity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KUMA_GIT_DIR:?set KUMA_GIT_DIR to a Kuma git directory}"
export KUMA_GIT_DIR KUMA_REV=${KUMA_REV:-v2.14.3}
cases=$(mktemp /tmp/kuma-cases.XXXXXX.json)
trap 'rm -f "$cases"' EXIT
python3 scripts/kuma-parity/cases.py "$cases" >&2
cargo run -q --example kuma_parity -p tern-model -- "$cases"
