#!/usr/bin/env bash
# The cluster e2e (e2e/tests/cluster.rs) on kind, for machines with a Docker engine:
# creates a kind cluster with the relay's NodePort published over UDP, builds both images with
# the Dockerfiles, loads them into the node, and runs the suite against it (the suite itself
# does `helm install`). Needs root (network namespaces), Docker, Go, Rust and kubectl.
#
#   sudo e2e/kind/run.sh            # the cluster is deleted afterwards
#   sudo KEEP_CLUSTER=1 e2e/kind/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,GOPATH "$0" "$@"
fi

KIND_VERSION=v0.32.0
name=wpex-e2e
cache=/var/cache/wpex

say() { echo "kind-e2e: $*"; }
command -v docker >/dev/null && docker info >/dev/null 2>&1 ||
    { say "needs a running Docker engine; on machines without one use e2e/test-all.sh" >&2; exit 1; }
kubectl=$(command -v kubectl) || { say "needs kubectl in PATH" >&2; exit 1; }

kind="$cache/kind-$KIND_VERSION/bin/kind"
if [ ! -x "$kind" ]; then
    say "installing kind $KIND_VERSION"
    GOBIN="$(dirname "$kind")" go install "sigs.k8s.io/kind@$KIND_VERSION"
fi
e2e/install-deps.sh
e2e/install-helm.sh

kubeconfig=$(mktemp)
cleanup() {
    if [ -z "${KEEP_CLUSTER:-}" ]; then
        "$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
    else
        say "kept cluster $name; kubeconfig: $kubeconfig"
        return
    fi
    rm -f "$kubeconfig"
}
trap cleanup EXIT
if ! "$kind" get clusters | grep -qx "$name"; then
    "$kind" create cluster --name "$name" --config e2e/kind/cluster.yaml --wait 2m
fi
"$kind" get kubeconfig --name "$name" >"$kubeconfig"

version=$(cargo pkgid -p wpex | sed 's/.*[@#]//')
docker build -f relay/Dockerfile -t "wpex/wpex:$version" .
docker build -f operator/Dockerfile -t "wpex/wpex-operator:$version" .
"$kind" load docker-image --name "$name" "wpex/wpex:$version" "wpex/wpex-operator:$version"

KUBECONFIG="$kubeconfig" WPEX_E2E_CLUSTER=current WPEX_KUBECTL="$kubectl" \
    cargo test -p wpex-e2e --locked --test cluster -- --ignored --nocapture
