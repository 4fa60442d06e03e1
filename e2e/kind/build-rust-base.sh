#!/usr/bin/env bash
# A local stand-in for the Dockerfiles' builder base `rust:1-bookworm`, on machines with no
# registry, so that relay/Dockerfile and operator/Dockerfile build unchanged with
#
#   DOCKER_BUILDKIT=0 docker build --network=none -f relay/Dockerfile .
#
# It is assembled from this machine's own pieces, not pulled:
# - Debian bookworm from debootstrap, with gcc, libc6-dev, make, pkg-config, ca-certificates and
#   musl-tools already installed and apt's package lists kept, so the Dockerfiles'
#   `apt-get update && apt-get install musl-tools` succeeds with no network (an update that
#   cannot reach the mirror only warns; the install finds the package installed);
# - this machine's default rustup toolchain (without its documentation), with the musl target
#   already added, under /usr/local/rustup and /usr/local/cargo as in the official image;
# - the crates Cargo.lock names, from this machine's cargo registry cache, and
#   CARGO_NET_OFFLINE=true, so `cargo build --locked` needs no network either.
#
# Prints the image's name on the last line of stdout. The image is tagged `rust:1-bookworm` (what
# the Dockerfiles name) and `wpex-e2e/rust-base:<key>`, the key hashing this script, the rustc
# version and Cargo.lock; nothing is rebuilt while they stay the same. Needs root and a running
# Docker engine (e2e/kind/docker.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
say() { echo "build-rust-base: $*" >&2; }
t0=$(date +%s)
CACHE=${WPEX_CACHE:-/var/cache/wpex}
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian

[ "$(id -u)" = 0 ] || { say "needs root"; exit 1; }
docker info >/dev/null 2>&1 || { say "needs a running Docker engine (e2e/kind/docker.sh)"; exit 1; }
toolchain_dir=$(rustc --print sysroot)
rust_version=$(rustc --version)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) say "unsupported machine $(uname -m)"; exit 1 ;;
esac
musl="$(uname -m)-unknown-linux-musl"
[ -d "$toolchain_dir/lib/rustlib/$musl" ] || rustup target add "$musl"

key=$(cat "$0" "$repo/Cargo.lock" <(echo "$rust_version $arch") | sha256sum | cut -c1-12)
image="wpex-e2e/rust-base:$key"
if docker image inspect "$image" >/dev/null 2>&1; then
    docker tag "$image" rust:1-bookworm
    say "$image is in Docker already"
    echo "$image"; exit 0
fi

# Every crate of Cargo.lock must be in the registry cache the image gets: fetch what is missing
# (crates.io) before packing it.
(cd "$repo" && { cargo fetch --locked --offline >/dev/null 2>&1 || cargo fetch --locked >/dev/null; })

work=$(mktemp -d "$CACHE/rust-base-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
debs="$CACHE/debootstrap-$DEBIAN_SUITE-$arch"
mkdir -p "$debs"
say "debootstrap $DEBIAN_SUITE with a C toolchain and musl-tools"
nice -n 10 debootstrap --variant=minbase --arch="$arch" --cache-dir="$debs" \
    --include=gcc,libc6-dev,make,pkg-config,ca-certificates,musl-tools \
    "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -30 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb
# debootstrap leaves only the mirror it used in sources.list; the lists it fetched stay, so an
# offline `apt-get update` keeps them and `apt-get install` resolves.
chroot "$root" apt-get update -qq >/dev/null 2>&1 || true

say "copying the $rust_version toolchain and the registry cache"
toolchain=$(basename "$toolchain_dir")
mkdir -p "$root/usr/local/rustup/toolchains" "$root/usr/local/cargo/bin" "$root/usr/local/cargo/registry"
cp -a "$toolchain_dir/." "$root/usr/local/rustup/toolchains/$toolchain/"
rm -rf "$root/usr/local/rustup/toolchains/$toolchain/share/doc"
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$toolchain" >"$root/usr/local/rustup/settings.toml"
install -m 0755 "$(command -v rustup)" "$root/usr/local/cargo/bin/rustup"
for proxy in cargo rustc rustdoc; do ln -s rustup "$root/usr/local/cargo/bin/$proxy"; done
cp -a "$cargo_home/registry/index" "$cargo_home/registry/cache" "$root/usr/local/cargo/registry/"

tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
    docker import \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV CARGO_NET_OFFLINE=true' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$image" >/dev/null
docker tag "$image" rust:1-bookworm
# Older bases (another toolchain or Cargo.lock) are stale.
docker images --format '{{.Repository}}:{{.Tag}}' wpex-e2e/rust-base | { grep -vx "$image" || true; } |
    xargs -r docker rmi >/dev/null
say "$image (tagged rust:1-bookworm) built in $(( $(date +%s) - t0 ))s"
echo "$image"
