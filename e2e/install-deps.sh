#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh Debian bookworm machine. Idempotent; heavy
# builds are cached under /var/cache/wpex, keyed by version. The Rust harness (e2e/src/wg.rs)
# looks for the binaries at these same paths.
set -euo pipefail

BORINGTUN_VERSION=0.7.1
# A pinned pseudo-version: @latest resolves to a 2020 tag.
WIREGUARD_GO_VERSION=v0.0.0-20250521234502-f333402bd9cb
CACHE=/var/cache/wpex

export DEBIAN_FRONTEND=noninteractive
packages=(wireguard-tools iproute2 iptables iputils-ping procps curl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

boringtun="$CACHE/boringtun-cli-$BORINGTUN_VERSION"
if [ ! -x "$boringtun/bin/boringtun-cli" ]; then
    echo "install-deps: building boringtun-cli $BORINGTUN_VERSION"
    cargo install boringtun-cli --locked --version "$BORINGTUN_VERSION" --root "$boringtun" --quiet
fi

wggo="$CACHE/wireguard-go-$WIREGUARD_GO_VERSION"
if [ ! -x "$wggo/bin/wireguard" ]; then
    echo "install-deps: building wireguard-go $WIREGUARD_GO_VERSION"
    GOBIN="$wggo/bin" go install "golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION"
fi

echo "install-deps: boringtun-cli $("$boringtun/bin/boringtun-cli" --version | awk '{print $2}'), wireguard-go $WIREGUARD_GO_VERSION, $(wg --version | awk '{print $1, $2}')"
