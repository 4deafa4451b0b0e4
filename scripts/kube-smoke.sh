#!/usr/bin/env bash
# Starts the real etcd and kube-apiserver that scripts/install-tools.sh builds
# (tools/kube) the way controller-runtime's envtest does, on free loopback
# ports with a throwaway data directory, and checks them with kubectl: a smoke
# test of the control plane Tern's Kubernetes end-to-end tests run against.
#   scripts/kube-smoke.sh          # builds the binaries first if needed
#   KEEP=1 scripts/kube-smoke.sh   # leaves the temp dir (certs, logs) behind
#   scripts/kube-smoke.sh CMD ...  # then runs CMD with KUBECONFIG set for the
#                                  # cluster (a benchmark), and exits with its status
# Uses TERN_TEST_KUBE_APISERVER, TERN_TEST_ETCD and TERN_TEST_KUBECTL when
# set; needs openssl and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${TERN_TEST_KUBE_APISERVER:-}" ] || [ -z "${TERN_TEST_ETCD:-}" ] || [ -z "${TERN_TEST_KUBECTL:-}" ]; then
  eval "$(scripts/install-tools.sh)"
fi
for tool in openssl curl; do
  command -v "$tool" >/dev/null || { echo "kube-smoke needs $tool" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/tern-kube-smoke.XXXXXX)
pids=()
# Stops the newest first: kube-apiserver drains against a live etcd (with etcd
# gone first its graceful shutdown hung here for 10 minutes), and one
# that still runs after 20s is killed.
cleanup() {
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
fail() {
  echo "kube-smoke: $1" >&2
  for log in "$dir"/*.log; do
    [ -f "$log" ] || continue
    echo "--- last lines of $log" >&2
    tail -n 40 "$log" >&2
  done
  exit 1
}

# Free loopback ports: the kernel picks them, the sockets close, the servers
# take them a moment later.
read -r etcd_client etcd_peer apiserver_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
')

# A CA, the apiserver's serving certificate for 127.0.0.1 and localhost (signed
# by it), the service-account key pair, and a static bearer token for an admin
# in system:masters (RBAC lets that group do everything).
pki=$dir/pki
mkdir -p "$pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=tern-kube-smoke-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$pki/apiserver.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 1 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
token=$(openssl rand -hex 24)
echo "$token,tern-admin,tern-admin-uid,\"system:masters\"" >"$pki/tokens.csv"

ms() { echo $(($(date +%s%N) / 1000000)); }
started=$(ms)
# etcd: one member on loopback; no fsync (a throwaway test store, as envtest
# runs it).
"$TERN_TEST_ETCD" \
  --name=smoke \
  --data-dir="$dir/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_client" \
  --advertise-client-urls="http://127.0.0.1:$etcd_client" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
  --initial-cluster="smoke=http://127.0.0.1:$etcd_peer" \
  --unsafe-no-fsync \
  >"$dir/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$etcd_client/health" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || fail "etcd exited"
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$etcd_client/health" >/dev/null 2>&1 || fail "etcd not healthy after 10s"
etcd_ready=$(($(ms) - started))
apiserver_started=$(ms)

"$TERN_TEST_KUBE_APISERVER" \
  --etcd-servers="http://127.0.0.1:$etcd_client" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$apiserver_port" \
  --tls-cert-file="$pki/apiserver.crt" \
  --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --authorization-mode=RBAC \
  --token-auth-file="$pki/tokens.csv" \
  --disable-admission-plugins=ServiceAccount \
  --allow-privileged=true \
  --endpoint-reconciler-type=none \
  >"$dir/kube-apiserver.log" 2>&1 &
pids+=($!)
ready=
for _ in $(seq 600); do
  if [ "$(curl -sS --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" \
    "https://127.0.0.1:$apiserver_port/readyz" 2>/dev/null)" = ok ]; then
    ready=1
    break
  fi
  kill -0 "${pids[1]}" 2>/dev/null || fail "kube-apiserver exited"
  sleep 0.1
done
[ -n "$ready" ] || fail "kube-apiserver not ready after 60s"
now=$(ms)
echo "etcd healthy after ${etcd_ready} ms; kube-apiserver /readyz ok after $((now - apiserver_started)) ms ($((now - started)) ms from etcd's start)" >&2

# kubectl with nothing but flags: no kubeconfig of the user's is read.
export KUBECONFIG=$dir/kubeconfig-unused
kc=("$TERN_TEST_KUBECTL" --server "https://127.0.0.1:$apiserver_port" --token "$token" --certificate-authority "$pki/ca.crt")
"${kc[@]}" version 2>&1 | grep -i server >&2 || true
"${kc[@]}" create namespace tern-kube-smoke
"${kc[@]}" get ns
# All of it, then the head: head closing the pipe early would fail the
# pipeline (pipefail).
"${kc[@]}" api-resources >"$dir/api-resources.txt"
head "$dir/api-resources.txt"
echo "kube-smoke: ok" >&2

if [ $# -gt 0 ]; then
  cat >"$dir/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: smoke, cluster: {server: "https://127.0.0.1:$apiserver_port", certificate-authority: "$pki/ca.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: smoke, context: {cluster: smoke, user: admin}}]
current-context: smoke
YAML
  KUBECONFIG=$dir/kubeconfig "$@"
fi
