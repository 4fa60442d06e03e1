#!/usr/bin/env bash
# Builds the relay and operator images without a Docker engine or a registry, as docker-archive
# tarballs that `ctr -n k8s.io images import FILE`, `kind load image-archive FILE`, `docker load`
# and `podman load` accept:
#
#   target/images/wpex.tar            wpex/wpex:<version> and wpex/wpex:dev
#   target/images/wpex-operator.tar   wpex/wpex-operator:<version> and wpex/wpex-operator:dev
#   target/images/pause.tar           localhost/wpex-e2e/pause:1, the pod sandbox image of the
#                                     local e2e cluster (e2e/k8s/pause.c, static)
#
# <version> is the workspace's (Cargo.toml). The images match relay/Dockerfile and
# operator/Dockerfile: a static binary as the entrypoint, /etc/passwd and /etc/group naming user
# 65532, CA certificates for the operator, running as 65532:65532. Only for this machine's
# architecture (amd64 or arm64); `docker buildx` with the Dockerfiles builds both.
#
# The binaries are musl builds when rustup can add the musl target (musl-gcc from Debian's
# musl-tools compiles ring's C); otherwise, e.g. with a Rust toolchain that has no rustup,
# statically linked glibc builds (-C target-feature=+crt-static), which work for these programs
# since they resolve no host names through NSS (the operator reaches the API server by IP in a
# pod). Set WPEX_IMAGE_LIBC=gnu to force the glibc build. The images are packed by Debian's umoci
# (OCI layout, layer, config) and skopeo (OCI layout to docker-archive). CARGO_TARGET_DIR is
# honoured; the tarballs always go to target/images in the repository.
#
# With --binaries DIR, packs DIR/wpex and DIR/wpex-operator, static binaries built elsewhere (e2e/test-all.sh
# takes them from the images relay/Dockerfile and operator/Dockerfile built), and compiles
# nothing.
#
# With --verify, then imports both tarballs into a private, temporary containerd (Debian's
# containerd and runc, installed if missing) with `ctr -n k8s.io images import`, lists them, runs
# each entrypoint with --version, checks the relay runs as 65532, and stops containerd.
set -euo pipefail
verify=no binaries=''
while [ $# -gt 0 ]; do
    case "$1" in
        --verify) verify=yes ;;
        --binaries) binaries=$(realpath "${2:?--binaries needs a directory}"); shift ;;
        *) echo "usage: $0 [--binaries DIR] [--verify]" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
repo=$PWD

say() { echo "build-images: $*"; }

export DEBIAN_FRONTEND=noninteractive
missing=()
for tool in umoci skopeo gcc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "$verify" = yes ]; then
    for tool in containerd runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) echo "build-images: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

libc=${WPEX_IMAGE_LIBC:-musl}
[ -z "$binaries" ] || libc=prebuilt
if [ "$libc" = musl ]; then
    target="$(uname -m)-unknown-linux-musl"
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target" &&
        ! rustup target add "$target"; then
        say "cannot add the Rust target $target; building static glibc binaries instead"
        libc=gnu
    fi
    command -v musl-gcc >/dev/null || missing+=(musl-tools)
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(cargo pkgid -p wpex | sed 's/.*[@#]//')
if [ "$libc" = musl ]; then
    # The musl target links statically by default.
    nice -n 10 cargo build --release --locked --target "$target" -p wpex -p wpex-operator
elif [ "$libc" = gnu ]; then
    target="$(uname -m)-unknown-linux-gnu"
    # With an explicit --target, build scripts and proc macros stay dynamically linked.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        nice -n 10 cargo build --release --locked --target "$target" -p wpex -p wpex-operator
fi
bin_dir=${binaries:-${CARGO_TARGET_DIR:-$repo/target}/$target/release}
say "static $libc binaries for $arch in $bin_dir"
out="$repo/target/images"
mkdir -p "$out"

# pack NAME TAG BINARY-PATH CERTS(yes|no) PORT... : an image whose entrypoint is /BINARY, saved
# as target/images/BINARY.tar.
pack() {
    local name=$1 version=$2 path=$3 certs=$4; shift 4
    local binary; binary=$(basename "$path")
    local work; work=$(mktemp -d)
    # Not a trap: a trap set here would outlive the function.
    local rootfs="$work/rootfs" oci="$work/oci"
    if readelf --program-headers "$path" | grep -q INTERP; then
        echo "build-images: $path is not static" >&2; rm -rf "$work"; exit 1
    fi
    mkdir -p "$rootfs/etc"
    install -m 0755 "$path" "$rootfs/$binary"
    echo 'nonroot:x:65532:65532:nonroot:/:/sbin/nologin' > "$rootfs/etc/passwd"
    echo 'nonroot:x:65532:' > "$rootfs/etc/group"
    chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
    if [ "$certs" = yes ]; then
        mkdir -p "$rootfs/etc/ssl/certs"
        install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    fi
    umoci init --layout "$oci"
    umoci new --image "$oci:$version"
    # --rootless: owners in the layer are root's, whoever runs this.
    umoci insert --rootless --image "$oci:$version" "$rootfs" /
    local config=(--architecture "$arch" --os linux --config.entrypoint "/$binary"
        --config.user 65532:65532 --config.workingdir /
        --config.label "org.opencontainers.image.title=$name"
        --config.label "org.opencontainers.image.version=$version")
    local revision; revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)
    [ -n "$revision" ] && config+=(--config.label "org.opencontainers.image.revision=$revision")
    for port in "$@"; do config+=(--config.exposedports "$port"); done
    umoci config --image "$oci:$version" "${config[@]}"
    rm -f "$out/$binary.tar"
    local extra=()
    [ "$version" = 1 ] || extra=(--additional-tag "$name:dev")
    skopeo --insecure-policy copy --quiet "oci:$oci:$version" \
        "docker-archive:$out/$binary.tar:$name:$version" "${extra[@]}"
    rm -rf "$work"
    say "$out/$binary.tar: $name:$version ($arch, $(du -h "$out/$binary.tar" | cut -f1))"
}
pack wpex/wpex "$version" "$bin_dir/wpex" no 40000/udp 9090/tcp
pack wpex/wpex-operator "$version" "$bin_dir/wpex-operator" yes 8080/tcp
# The pause image: a few lines of C, so no registry is needed for pod sandboxes.
mkdir -p "$out/pause"
gcc -Os -static -o "$out/pause/pause" e2e/k8s/pause.c
pack localhost/wpex-e2e/pause 1 "$out/pause/pause" no

[ "$verify" = yes ] || exit 0

# A private containerd: its own root, state and socket, stopped on exit.
ctrd=$(mktemp -d)
containerd --root "$ctrd/root" --state "$ctrd/state" --address "$ctrd/sock" >"$ctrd/log" 2>&1 &
ctrd_pid=$!
cleanup() {
    kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null
    rm -rf "$ctrd"
}
trap cleanup EXIT
ctr() { command ctr --address "$ctrd/sock" -n k8s.io "$@"; }
for _ in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
for tar in wpex wpex-operator; do ctr images import "$out/$tar.tar"; done
ctr images ls -q | grep -v '^sha256:'
for image in wpex wpex-operator; do
    for tag in "$version" dev; do
        ctr images ls -q | grep -qx "docker.io/wpex/$image:$tag" ||
            { echo "build-images: wpex/$image:$tag was not imported" >&2; exit 1; }
    done
    say "runs: $(ctr run --rm --net-host "docker.io/wpex/$image:$version" "verify-$image-$$" "/$image" --version)"
done
# The relay with its image's entrypoint and user, no arguments: a relay on UDP 40000 in its own
# network namespace.
ctr run -d "docker.io/wpex/wpex:$version" "verify-user-$$" >/dev/null
sleep 1
pid=$(ctr task ls | awk -v id="verify-user-$$" '$1 == id {print $2}')
user=$(ps -o uid=,gid=,args= -p "$pid" | xargs)
ctr task kill -s SIGKILL "verify-user-$$" >/dev/null
sleep 0.5
ctr task rm -f "verify-user-$$" >/dev/null 2>&1 || true
ctr containers rm "verify-user-$$" >/dev/null
[ "$user" = "65532 65532 /wpex" ] || { echo "build-images: relay runs as '$user'" >&2; exit 1; }
say "verified: ctr import, tags $version and dev, entrypoints, relay running as $user"
