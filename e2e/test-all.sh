#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian bookworm machine. First the fast tier, which
# needs neither root nor anything beyond Rust and fails fast: formatting, lints, docs, unit and
# integration tests (the core, the relay over loopback, the process, CRD drift) and helm lint
# when helm is there. Then it installs what the rest needs (cached under /var/cache/wpex) and
# runs the fuzzer for a bounded time, the end-to-end tests with real WireGuard peers in network
# namespaces, the operator against a real kube-apiserver, etcd and kube-controller-manager, and
# the chart installed on a real single-node cluster (kubelet, containerd, kube-proxy) that the
# test brings up and tears down, and the same chart suite on kind (a Docker engine started here,
# kind's node image built here, our images as tarballs and from the Dockerfiles).
#
#   e2e/test-all.sh           everything (the rest under sudo when not root)
#   e2e/test-all.sh --fast    the fast tier only, for the inner loop
#   e2e/test-all.sh --no-fast all but the fast tier
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

fast_tier() {
    step "fast tier: formatting, lints, docs"
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

    step "fast tier: unit and integration tests (core, loopback relay, process, CRD drift)"
    cargo test --workspace --locked

    local helm
    helm=$(command -v helm || ls /var/cache/wpex/helm-*/bin/helm 2>/dev/null | tail -n 1 || true)
    if [ -n "$helm" ]; then
        step "fast tier: helm lint"
        "$helm" lint --strict charts/wpex
    else
        echo "test-all: no helm yet, so no helm lint in the fast tier (the chart tests lint it later)"
    fi
}

case "${1:-}" in
    --fast)
        fast_tier
        exit 0
        ;;
    --no-fast) ;;
    "")
        start=$SECONDS
        fast_tier
        echo "test-all: fast tier passed in $((SECONDS - start)) s"
        ;;
    *)
        echo "usage: $0 [--fast | --no-fast]" >&2
        exit 2
        ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "test-all: network namespaces need root; the rest runs under sudo" >&2
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" --no-fast
fi

step "installing test dependencies"
e2e/install-deps.sh
e2e/k8s/install-k8s.sh
e2e/install-helm.sh

step "dependency licences and sources (cargo-deny, deny.toml)"
deny_version=$(sed -n 's/^CARGO_DENY_VERSION=//p' e2e/install-deps.sh)
"/var/cache/wpex/cargo-deny-$deny_version/bin/cargo-deny" --offline check licenses bans sources

step "fuzzing the relay core for a bounded time (e2e/fuzz.sh)"
e2e/fuzz.sh "${WPEX_FUZZ_SECONDS:-60}"

step "images: static binaries packed without Docker (e2e/build-images.sh)"
# Release builds go to a cache outside the repo; cargo rebuilds only what changed.
CARGO_TARGET_DIR=/var/cache/wpex/images-target e2e/build-images.sh

step "end-to-end: peers behind NAT, the operator on a real API server, the chart on a real node"
cargo build -p wpex -p wpex-operator --locked
# The attack tests measure the relay's CPU: only a release build gives figures users see.
cargo build --release -p wpex --locked
export WPEX_BIN="$PWD/target/debug/wpex" WPEX_OPERATOR_BIN="$PWD/target/debug/wpex-operator" \
    WPEX_RELEASE_BIN="$PWD/target/release/wpex"
# Floods, NAT rebinding and forgery, with every figure printed (one line per test).
cargo test -p wpex-e2e --locked --test relay_attacks -- --ignored --test-threads=1 --nocapture
cargo test -p wpex-e2e --locked -- --ignored --test-threads=1 \
    --skip flood_ --skip hijack_ --skip rebinding_

step "the cluster suite on kind, with our images as tarballs: dockerd, kind's node image and the control-plane images built here, no registry (e2e/kind/run.sh --local)"
e2e/kind/run.sh --local

step "the cluster suite on kind, with our images built by relay/Dockerfile and operator/Dockerfile from a builder base assembled here (e2e/kind/run.sh --local --dockerfiles)"
e2e/kind/run.sh --local --dockerfiles
