#!/usr/bin/env bash
# The cluster e2e (e2e/tests/cluster.rs) on kind: creates a kind cluster with the relay's NodePort
# published over UDP, loads both images into the node, and runs the suite against it (the suite
# itself does `helm install`). Needs root (network namespaces), Go, Rust and Docker.
#
#   sudo e2e/kind/run.sh            a machine with a Docker engine and a registry (a laptop):
#                                   kind's stock kindest/node image, and our images built with
#                                   relay/Dockerfile and operator/Dockerfile
#   sudo e2e/kind/run.sh --local    a machine with no registry (CI; e2e/test-all.sh): starts
#                                   dockerd if none runs (e2e/kind/docker.sh) and stops it after,
#                                   a node image built here (e2e/kind/build-node-image.sh), and
#                                   the Docker-free image tarballs of e2e/build-images.sh
#
#   sudo e2e/kind/run.sh --local --dockerfiles
#                                   the same, but our images built with the Dockerfiles, from a
#                                   builder base assembled here (e2e/kind/build-rust-base.sh),
#                                   with no network during `docker build`
#
#   Two parts of --local on their own, so that e2e/test-all.sh can do them while other suites run:
#   sudo e2e/kind/run.sh --local --prepare
#                                   only what needs no Docker engine: kind, and the node image's
#                                   root file system (build-node-image.sh --no-import)
#   sudo e2e/kind/run.sh --local --dockerfiles --images-only
#                                   only the images the Dockerfiles build
#
#   KEEP_CLUSTER=1 keeps the cluster (and dockerd) for debugging.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,GOPATH,GOMODCACHE,GOCACHE,WPEX_CACHE,WPEX_DOCKER_ROOT "$0" "$@"
fi

mode=laptop images=dockerfiles stage=all
for arg in "$@"; do
    case "$arg" in
        --local) mode=local ;;
        --dockerfiles) ;;
        --prepare) stage=prepare ;;
        --images-only) stage=images ;;
        *) echo "usage: $0 [--local [--dockerfiles] [--prepare | --images-only]]" >&2; exit 2 ;;
    esac
done
if [ "$stage" != all ] && [ "$mode" != local ]; then
    echo "$0: --prepare and --images-only go with --local" >&2; exit 2
fi
# --local loads the Docker-free tarballs unless --dockerfiles is given too.
if [ "$mode" = local ] && [[ " $* " != *" --dockerfiles "* ]]; then images=tarballs; fi

KIND_VERSION=v0.32.0
name=wpex-e2e
cache=${WPEX_CACHE:-/var/cache/wpex}
# shellcheck source=e2e/k8s/versions.env
source e2e/k8s/versions.env

say() { echo "kind-e2e: $*"; }
t0=$(date +%s)
lap=$t0
timed() { # what happened since the last call
    local now; now=$(date +%s)
    say "$* in $((now - lap))s"
    lap=$now
}

kind="$cache/kind-$KIND_VERSION/bin/kind"
started_docker=no
kubeconfig=$(mktemp)
cleanup() {
    local status=$?
    if [ -n "${KEEP_CLUSTER:-}" ]; then
        say "kept cluster $name; kubeconfig: $kubeconfig"
        return
    fi
    [ ! -x "$kind" ] || "$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
    rm -f "$kubeconfig"
    if [ "$started_docker" = yes ]; then e2e/kind/docker.sh stop || status=1; fi
    say "done in $(( $(date +%s) - t0 ))s"
    exit "$status"
}
trap cleanup EXIT

if [ "$stage" = prepare ]; then
    : # no Docker engine needed
elif [ "$mode" = local ]; then
    docker info >/dev/null 2>&1 || started_docker=yes
    e2e/kind/docker.sh start
    timed "Docker engine ready"
else
    if ! docker info >/dev/null 2>&1; then
        say "needs a running Docker engine; on machines without one use $0 --local" >&2; exit 1
    fi
fi

if [ ! -x "$kind" ]; then
    say "installing kind $KIND_VERSION"
    # The module and build caches build-node-image.sh and install-k8s.sh use.
    GOBIN="$(dirname "$kind")" CGO_ENABLED=0 GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" \
        go install "sigs.k8s.io/kind@$KIND_VERSION"
fi
e2e/install-deps.sh
e2e/install-helm.sh
if [ "$mode" = local ]; then
    e2e/k8s/install-k8s.sh
    kubectl="$cache/k8s-$K8S_VERSION/bin/kubectl"
else
    kubectl=$(command -v kubectl) || { say "needs kubectl in PATH" >&2; exit 1; }
fi
timed "tools ready"

if [ "$stage" = prepare ]; then
    e2e/kind/build-node-image.sh --no-import
    timed "the node image's root file system ready"
    exit 0
fi
if [ "$mode" = local ] && [ "$stage" = all ]; then
    node_image=$(e2e/kind/build-node-image.sh | tail -1)
    timed "node image $node_image ready"
fi
version=$(cargo pkgid -p wpex | sed 's/.*[@#]//')
if [ "$images" = tarballs ]; then
    # The images, Docker-free, from the release build e2e/test-all.sh keeps in the same cache:
    # cargo rebuilds nothing when that step ran. Only this step uses that target directory.
    CARGO_TARGET_DIR="$cache/images-target" e2e/build-images.sh
    archives=(target/images/wpex.tar target/images/wpex-operator.tar)
    timed "image tarballs ready"
else
    build=(docker build)
    if [ "$mode" = local ]; then
        # No registry: `rust:1-bookworm` is assembled here, and the builds need no network. The
        # classic builder, since Debian's Docker has no BuildKit front end to pull.
        e2e/kind/build-rust-base.sh >/dev/null
        build=(env DOCKER_BUILDKIT=0 docker build --network=none)
    fi
    # The dependency layer both Dockerfiles share, tagged so that the prune below keeps it: the
    # next run reuses it unless Cargo.lock or a manifest changed.
    "${build[@]}" -f relay/Dockerfile --target deps -t wpex-e2e/rust-deps:latest .
    timed "the Dockerfiles' dependency layer ready"
    "${build[@]}" -f relay/Dockerfile -t "wpex/wpex:$version" -t wpex/wpex:dev .
    "${build[@]}" -f operator/Dockerfile -t "wpex/wpex-operator:$version" -t wpex/wpex-operator:dev .
    # The final builder stages (several GB each, with cargo's target directory), an older
    # dependency layer and images the new tags replaced: none of them would be reused after
    # this run (--images-only keeps them for the run that follows it).
    [ "$mode" = laptop ] || [ "$stage" = images ] || docker image prune -f >/dev/null
    timed "images built with the Dockerfiles"
fi
[ "$stage" = all ] || exit 0

create=(create cluster --name "$name" --config e2e/kind/cluster.yaml --wait 2m)
[ "$mode" = laptop ] || create+=(--image "$node_image")
"$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
"$kind" "${create[@]}"
"$kind" get kubeconfig --name "$name" >"$kubeconfig"
timed "kind cluster created (control plane Ready)"

if [ "$images" = tarballs ]; then
    for archive in "${archives[@]}"; do "$kind" load image-archive --name "$name" "$archive"; done
else
    "$kind" load docker-image --name "$name" "wpex/wpex:$version" wpex/wpex:dev \
        "wpex/wpex-operator:$version" wpex/wpex-operator:dev
fi
timed "images loaded"

KUBECONFIG="$kubeconfig" WPEX_E2E_CLUSTER=current WPEX_KUBECTL="$kubectl" \
    cargo test -p wpex-e2e --locked --test cluster -- --ignored --nocapture
timed "cluster suite passed"
