#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh Debian bookworm machine: WireGuard peers in
# network namespaces, and the packages of the local single-node cluster.
# Idempotent and non-interactive; heavy builds are cached under $WPEX_CACHE (/var/cache/wpex by
# default), keyed by version, and so are the Go caches of every Go tool the tests build. The Rust
# harness (e2e/src/wg.rs) reads the two versions below from this file, so the paths it looks in
# always match; WPEX_BORINGTUN and WPEX_WIREGUARD_GO override them.
set -euo pipefail

BORINGTUN_VERSION=0.7.1
# Dependency licences and sources (deny.toml); test-all.sh reads this line too.
CARGO_DENY_VERSION=0.20.2
# A pinned pseudo-version: @latest resolves to a 2020 tag.
WIREGUARD_GO_VERSION=v0.0.0-20250521234502-f333402bd9cb
CACHE=${WPEX_CACHE:-/var/cache/wpex}

export DEBIAN_FRONTEND=noninteractive
# wg, ip (netns, veth, bridge), iptables (NAT, fragment drops), ping, sysctl, curl (metrics).
packages=(wireguard-tools iproute2 iptables iputils-ping procps curl)
# The local cluster's node (e2e/src/cluster.rs): container runtime, CNI plugins, conntrack for
# kube-proxy; and the Docker-free image build (e2e/build-images.sh): umoci, skopeo, a static C
# toolchain for the pause image, readelf.
packages+=(containerd runc containernetworking-plugins conntrack umoci skopeo gcc libc6-dev binutils)
# The static musl images (e2e/build-images.sh), and kind's node image and Rust builder base
# (e2e/kind/): installed here, once, because e2e/test-all.sh runs those scripts side by side
# and two apt-gets at once would fail on dpkg's lock.
packages+=(musl-tools debootstrap jq)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

need() {
    command -v "$1" >/dev/null || { echo "install-deps: $1 not found: $2" >&2; exit 1; }
}

# cargo_install CRATE VERSION [--debug]: builds the crate's binary once, into
# $CACHE/CRATE-VERSION/bin. The tools share one target directory (e2e/fuzz.sh's cargo-fuzz too),
# so a dependency they have in common is compiled once. --debug for a tool whose speed does not
# matter: a third of a release build's CPU.
cargo_install() {
    local crate=$1 version=$2
    shift 2
    if [ ! -x "$CACHE/$crate-$version/bin/$crate" ]; then
        need cargo "install Rust (rustup) first"
        echo "install-deps: building $crate $version"
        cargo install "$crate" --locked --version "$version" --root "$CACHE/$crate-$version" \
            --target-dir "$CACHE/tools-target" --quiet "$@"
    fi
}

cargo_install boringtun-cli "$BORINGTUN_VERSION"
boringtun="$CACHE/boringtun-cli-$BORINGTUN_VERSION/bin/boringtun-cli"

wggo="$CACHE/wireguard-go-$WIREGUARD_GO_VERSION/bin/wireguard"
if [ ! -x "$wggo" ]; then
    need go "install Go 1.21 or newer (Debian's golang is too old for wireguard-go)"
    echo "install-deps: building wireguard-go $WIREGUARD_GO_VERSION"
    GOBIN="$(dirname "$wggo")" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" \
        go install "golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION"
fi

# Debug: 130 CPU-seconds to build instead of 340, and 3 s a check instead of 1.
cargo_install cargo-deny "$CARGO_DENY_VERSION" --debug

echo "install-deps: boringtun-cli $("$boringtun" --version | awk '{print $2}') at $boringtun (WPEX_BORINGTUN)"
echo "install-deps: wireguard-go $WIREGUARD_GO_VERSION at $wggo (WPEX_WIREGUARD_GO)"
echo "install-deps: $(wg --version | awk '{print $1, $2}'), $(ip -V)"
