#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian bookworm machine: installs what it needs
# (cached under /var/cache/wpex), then runs lints, unit and integration tests, the end-to-end
# tests with real WireGuard peers in network namespaces, the operator against a real
# kube-apiserver, etcd and kube-controller-manager, and the chart installed on a real single-node
# cluster (kubelet, containerd, kube-proxy) that the test brings up and tears down.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "test-all: network namespaces need root; re-running under sudo" >&2
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi

step() { printf '\n=== %s\n' "$*"; }

step "installing test dependencies"
e2e/install-deps.sh
e2e/k8s/install-k8s.sh
e2e/install-helm.sh

step "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --workspace --locked

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
