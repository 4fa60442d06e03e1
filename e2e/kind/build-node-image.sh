#!/usr/bin/env bash
# Builds a kind node image (the equivalent of kindest/node for our Kubernetes version) without any
# registry, and loads it into the running Docker engine:
#
#   e2e/kind/build-node-image.sh              prints the image's name on the last line of stdout
#   e2e/kind/build-node-image.sh --no-import  only the cached root file system tarball, with no
#                                             Docker engine (e2e/test-all.sh builds it early)
#
# - root file system: Debian bookworm from debootstrap, with the packages kind's base image
#   installs (systemd, iptables, conntrack, ...) and Debian's containerd, runc and CNI plugins;
# - kind's base-image files (entrypoint, containerd config, systemd units) read from the
#   sigs.k8s.io/kind module at KIND_VERSION in the Go module cache;
# - crictl and kubeadm built from the Go module proxy; kubelet, kubectl, the control plane and
#   etcd from e2e/k8s/install-k8s.sh;
# - the images `kubeadm config images list` names (registry.k8s.io/...), packed without Docker
#   (umoci, skopeo) and imported into the node's containerd (namespace k8s.io) at build time by a
#   private containerd whose root is the node's /var/lib/containerd, as kind's own node-image
#   build does, so kubeadm finds them and nothing is pulled;
# - the pod network: Debian's bridge + host-local + portmap plugins with a static config for
#   kind's default pod subnet (single-node clusters), instead of kindnet.
#
# The result is cached as a root file system tarball under /var/cache/wpex/kind-node-<tag>/,
# keyed by a hash of every pin and of this script; a warm run only `docker import`s it (or does
# nothing when Docker already has the image). Needs root, a running Docker engine
# (e2e/kind/docker.sh) and e2e/k8s/install-k8s.sh's binaries.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=e2e/k8s/versions.env
source "$repo/e2e/k8s/versions.env"

# Pins. The image tags come from kubeadm; the versions here must match them (checked below).
KIND_VERSION=v0.32.0
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
CRICTL_VERSION=v1.36.0          # kind v0.32.0's base image uses the same
# Debian packages: kind's base image list (images/base/Dockerfile) minus the storage ones (NFS,
# iSCSI) and fuse-overlayfs, plus the container runtime and CNI plugins kind builds itself.
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins
PROXY_PACKAGES=iptables,nftables,conntrack

CACHE=${WPEX_CACHE:-/var/cache/wpex}
k8s_bin="$CACHE/k8s-$K8S_VERSION/bin"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"
say() { echo "build-node-image: $*" >&2; }
t0=$(date +%s)

import=yes
case "${1:-}" in
    --no-import) import=no ;;
    "") ;;
    *) say "usage: $0 [--no-import]"; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, chroot)"; exit 1; }
if [ "$import" = yes ] && ! docker info >/dev/null 2>&1; then
    say "needs a running Docker engine (e2e/kind/docker.sh)"; exit 1
fi
for c in kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd; do
    [ -x "$k8s_bin/$c" ] || { say "missing $k8s_bin/$c: run e2e/k8s/install-k8s.sh"; exit 1; }
done

key=$(cat "$0" "$here/runc-no-sys-resource" "$repo/e2e/k8s/pause.c" "$repo/e2e/k8s/versions.env" \
    <(echo "$KIND_VERSION $DEBIAN_SUITE $CRICTL_VERSION $NODE_PACKAGES $PROXY_PACKAGES $(uname -m)") |
    sha256sum | cut -c1-12)
image="wpex-e2e/kind-node:$K8S_VERSION-$key"
out="$CACHE/kind-node-$K8S_VERSION-$key"
rootfs_tar="$out/rootfs.tar"
# What `docker import` must add: kind's base image sets these (images/base/Dockerfile), except
# STOPSIGNAL SIGRTMIN+3, which `docker import` does not accept (kind removes nodes with
# `docker rm -f`, so no stop signal is sent anyway).
import_changes=(--change 'ENV container=docker'
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]')

if [ "$import" = no ] && [ -f "$rootfs_tar" ]; then
    say "$rootfs_tar is cached already"
    exit 0
fi
if [ "$import" = yes ] && docker image inspect "$image" >/dev/null 2>&1; then
    say "$image is in Docker already"
    echo "$image"; exit 0
fi
if [ -f "$rootfs_tar" ]; then
    say "importing the cached $rootfs_tar"
    docker import "${import_changes[@]}" "$rootfs_tar" "$image" >/dev/null
    say "$image imported in $(( $(date +%s) - t0 ))s"
    echo "$image"; exit 0
fi

export DEBIAN_FRONTEND=noninteractive
missing=()
for tool in debootstrap umoci skopeo gcc jq containerd ctr; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=(); for t in "${missing[@]}"; do case $t in ctr) pkgs+=(containerd) ;; *) pkgs+=("$t") ;; esac; done
    say "apt-get install ${pkgs[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) say "unsupported machine $(uname -m)"; exit 1 ;;
esac

# Go tools, each cached under /var/cache/wpex/<tool>-<version>.
kind_src=$(go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
crictl="$CACHE/crictl-$CRICTL_VERSION/bin/crictl"
if [ ! -x "$crictl" ]; then
    say "building crictl $CRICTL_VERSION"
    GOBIN="$(dirname "$crictl")" nice -n 10 go install -trimpath "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi
# kubeadm is not among install-k8s.sh's components: built here from the same scratch module
# (install-k8s.sh's go.mod pins the staging modules), with the same version stamps.
kubeadm="$CACHE/kubeadm-$K8S_VERSION/bin/kubeadm"
if [ ! -x "$kubeadm" ]; then
    say "building kubeadm $K8S_VERSION"
    src="$CACHE/kubeadm-$K8S_VERSION/src"
    mkdir -p "$src"
    cp "$CACHE/k8s-$K8S_VERSION/src/go.mod" "$CACHE/k8s-$K8S_VERSION/src/go.sum" "$src/"
    printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubeadm"\n' >"$src/tools.go"
    # shellcheck source=e2e/k8s/ldflags.sh
    source "$repo/e2e/k8s/ldflags.sh"
    ldflags=$(k8s_ldflags "$K8S_VERSION")
    (cd "$src" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$kubeadm" k8s.io/kubernetes/cmd/kubeadm)
fi

# The image names kubeadm looks for, but CoreDNS's: e2e/kind/cluster.yaml skips kubeadm's CoreDNS
# addon, since nothing the suite runs resolves names in the cluster (as on the local cluster).
# Building it would cost about 400 CPU-seconds.
mapfile -t wanted < <("$kubeadm" config images list --kubernetes-version "$K8S_VERSION" |
    grep -v '/coredns:')
image_for() { printf '%s\n' "${wanted[@]}" | grep -E "^registry\.k8s\.io/(.*/)?$1:" ; }
say "kubeadm expects: ${wanted[*]}"

work=$(mktemp -d "$CACHE/kind-node-build.XXXXXX")
ctrd_pid=""
cleanup() {
    [ -z "$ctrd_pid" ] || { kill "$ctrd_pid" 2>/dev/null; wait "$ctrd_pid" 2>/dev/null || true; }
    for m in "$work"/*/proc "$work"/*/sys "$work"/*/dev/pts "$work"/*/dev; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Root file systems. The .debs are kept between builds (--cache-dir).
debs="$CACHE/debootstrap-$DEBIAN_SUITE-$arch"
mkdir -p "$debs"
bootstrap() { # DIR PACKAGES
    say "debootstrap $DEBIAN_SUITE into $(basename "$1") (+$2)"
    nice -n 10 debootstrap --variant=minbase --arch="$arch" --cache-dir="$debs" --include="$2" \
        "$DEBIAN_SUITE" "$1" "$DEBIAN_MIRROR" >"$1.log" 2>&1 ||
        { tail -30 "$1.log" >&2; exit 1; }
    rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*
}
node="$work/node" proxy="$work/proxy"
bootstrap "$node" "$NODE_PACKAGES"
bootstrap "$proxy" "$PROXY_PACKAGES"
say "root file systems ready at $(( $(date +%s) - t0 ))s"

# kind's base-image files, as images/base/Dockerfile copies them: scripts 0755, the rest 0644.
files="$kind_src/images/base/files"
install -m 0755 "$files"/usr/local/bin/* "$node/usr/local/bin/"
mkdir -p "$node/kind/bin" "$node/etc/containerd" "$node/etc/sysctl.d" \
    "$node/etc/systemd/system/kubelet.service.d" "$node/etc/kubernetes/manifests" "$node/kind/manifests"
install -m 0644 "$files"/kind/README.txt "$node/kind/"
install -m 0755 "$files"/kind/bin/* "$node/kind/bin/"
install -m 0644 "$files"/etc/crictl.yaml "$node/etc/"
install -m 0644 "$files"/etc/containerd/config.toml "$node/etc/containerd/"
install -m 0644 "$files"/etc/default/kubelet "$node/etc/default/"
install -m 0644 "$files"/etc/sysctl.d/* "$node/etc/sysctl.d/"
# Not containerd-fuse-overlayfs.service: no fuse-overlayfs snapshotter here (rootless only).
for unit in containerd.service kubelet.service kubelet.slice undo-mount-hacks.service; do
    install -m 0644 "$files/etc/systemd/system/$unit" "$node/etc/systemd/system/"
done
install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$node/etc/systemd/system/kubelet.service.d/"
# The clean-up kind's Dockerfile does after installing systemd.
find "$node/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$node"/lib/systemd/system/multi-user.target.wants/* "$node"/etc/systemd/system/*.wants/* \
    "$node"/lib/systemd/system/local-fs.target.wants/* "$node"/lib/systemd/system/sockets.target.wants/*udev* \
    "$node"/lib/systemd/system/sockets.target.wants/*initctl* "$node"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$node/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$node/sbin/init"
chroot "$node" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$node" systemctl mask systemd-binfmt.service >/dev/null 2>&1

# Binaries where kind's units and kind itself look for them.
ln -sf /usr/bin/containerd "$node/usr/local/bin/containerd"   # containerd.service runs this path
install -m 0755 "$crictl" "$node/usr/local/bin/crictl"
for c in kubelet kubectl; do install -m 0755 "$k8s_bin/$c" "$node/usr/bin/$c"; done
install -m 0755 "$kubeadm" "$node/usr/bin/kubeadm"
printf '%s' "$K8S_VERSION" >"$node/kind/version"
# containerd looks for CNI plugins in /opt/cni/bin; Debian installs them in /usr/lib/cni.
mkdir -p "$node/opt/cni/bin"
for p in "$node"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/$(basename "$p")" "$node/opt/cni/bin/"; done
# The runtime wrapper, for nodes on hosts without CAP_SYS_RESOURCE (see docker.sh).
install -m 0755 "$here/runc-no-sys-resource" "$node/usr/local/sbin/runc-no-sys-resource"

# containerd: kind's config, with the pause image kubeadm names, and restrict_oom_score_adj
# because the node may lack CAP_SYS_RESOURCE (runc then fails "can't get final child's PID from
# pipe" when it tries to lower a container's oom_score_adj); harmless where it has it.
pause_image=$(image_for pause)
sed -i -e "s|sandbox_image = .*|sandbox_image = \"$pause_image\"|" \
    -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$node/etc/containerd/config.toml"
grep -q "sandbox_image = \"$pause_image\"" "$node/etc/containerd/config.toml"
grep -q 'restrict_oom_score_adj = true' "$node/etc/containerd/config.toml"
# The base OCI spec, as kind's Dockerfile makes it (same containerd version as the node's).
ctr oci spec |
    jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$node/etc/containerd/cri-base.json"

# The pod network: a bridge on kind's default pod subnet; single node, so no routes to others.
mkdir -p "$node/etc/cni/net.d"
cat >"$node/etc/cni/net.d/10-wpex-bridge.conflist" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "wpex-kind",
  "plugins": [
    {"type": "bridge", "bridge": "kind-pods", "isGateway": true, "ipMasq": true,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/16"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
# kind applies these two manifests at creation; the network is already configured above and no
# storage provisioner is shipped, so they only say so.
cat >"$node/kind/manifests/default-cni.yaml" <<'EOF'
# The pod network of this node image is a static bridge CNI config (/etc/cni/net.d), not kindnet.
apiVersion: v1
kind: ConfigMap
metadata:
  name: wpex-e2e-cni
  namespace: kube-system
data:
  cni: bridge + host-local 10.244.0.0/16 + portmap, /etc/cni/net.d/10-wpex-bridge.conflist
EOF
cat >"$node/kind/manifests/default-storage.yaml" <<'EOF'
# This node image ships no storage provisioner (kind's is local-path-provisioner).
apiVersion: v1
kind: ConfigMap
metadata:
  name: wpex-e2e-storage
  namespace: kube-system
data:
  storage: none
EOF

# Control-plane images, packed like e2e/build-images.sh packs ours: one layer each.
images="$work/images"
mkdir -p "$images"
pack() { # IMAGE ROOTFS ENTRYPOINT VERSION-LABEL
    local name=$1 rootfs=$2 entrypoint=$3 label=$4 oci="$work/oci" file
    file="$images/$(echo "$name" | tr '/:' '__').tar"
    rm -rf "$oci"
    umoci init --layout "$oci"
    umoci new --image "$oci:img"
    umoci insert --image "$oci:img" "$rootfs" / >/dev/null
    umoci config --image "$oci:img" --architecture "$arch" --os linux \
        --config.entrypoint "$entrypoint" \
        --config.env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.label "org.opencontainers.image.version=$label" \
        --config.label "org.opencontainers.image.source=built by wpex e2e/kind/build-node-image.sh"
    skopeo --insecure-policy copy --quiet "oci:$oci:img" "docker-archive:$file:$name"
    rm -rf "$oci"
    say "packed $name ($(du -h "$file" | cut -f1))"
}
one_binary() { # IMAGE BINARY [DEST]
    local binary dir dest
    binary=$(basename "$2")
    dir="$work/rootfs-$binary" dest=${3:-/usr/local/bin/$binary}
    mkdir -p "$dir$(dirname "$dest")" "$dir/tmp" "$dir/etc"
    chmod 1777 "$dir/tmp"
    install -m 0755 "$2" "$dir$dest"
    echo 'root:x:0:0:root:/root:/sbin/nologin' >"$dir/etc/passwd"
    echo 'root:x:0:' >"$dir/etc/group"
    echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >>"$dir/etc/passwd"
    echo 'nonroot:x:65532:' >>"$dir/etc/group"
    pack "$1" "$dir" "$dest" "$4"
}
for c in kube-apiserver kube-controller-manager kube-scheduler; do
    one_binary "$(image_for "$c")" "$k8s_bin/$c" "" "$K8S_VERSION"
done
# kubeadm's tag is its default etcd; the binary is install-k8s.sh's ETCD_VERSION (the label says).
one_binary "$(image_for etcd)" "$k8s_bin/etcd" "" "$ETCD_VERSION"
gcc -Os -static -o "$work/pause" "$repo/e2e/k8s/pause.c"
one_binary "$pause_image" "$work/pause" /pause "pause.c"

# kube-proxy runs iptables in the node's network namespace, so its image has Debian's iptables
# and, like the upstream image's iptables-wrapper, picks the legacy or nft back end the node
# uses (kind's entrypoint picks the host's) the first time any iptables command runs.
install -m 0755 "$k8s_bin/kube-proxy" "$proxy/usr/local/bin/kube-proxy"
cat >"$proxy/usr/sbin/iptables-wrapper" <<'EOF'
#!/bin/sh
# Picks iptables-legacy or iptables-nft by which one holds more rules, then runs the command.
set -eu
legacy=$( (iptables-legacy-save || true; ip6tables-legacy-save || true) 2>/dev/null | grep -c '^-' || true)
nft=$( (iptables-nft-save || true; ip6tables-nft-save || true) 2>/dev/null | grep -c '^-' || true)
mode=nft
[ "$legacy" -gt "$nft" ] && mode=legacy
for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    update-alternatives --set "${cmd%%-*}" "/usr/sbin/${cmd%%-*}-$mode" >/dev/null 2>&1 || true
    ln -sf "xtables-$mode-multi" "/usr/sbin/$cmd"
done
exec "$0" "$@"
EOF
chmod 0755 "$proxy/usr/sbin/iptables-wrapper"
for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf iptables-wrapper "$proxy/usr/sbin/$cmd"
done
pack "$(image_for kube-proxy)" "$proxy" /usr/local/bin/kube-proxy "$K8S_VERSION"

# Preload: a private containerd (the node's version) with the node's /var/lib/containerd as its
# root imports every image into the k8s.io namespace, pinned and not unpacked, as kind's
# node-image build does; the node's containerd unpacks on first use.
ctrd="$work/ctrd"
mkdir -p "$ctrd"
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >"$ctrd/config.toml"
containerd --config "$ctrd/config.toml" --root "$node/var/lib/containerd" --state "$ctrd/state" \
    --address "$ctrd/sock" >"$ctrd/log" 2>&1 &
ctrd_pid=$!
node_ctr() { ctr --address "$ctrd/sock" --namespace k8s.io "$@"; }
for _ in $(seq 50); do node_ctr version >/dev/null 2>&1 && break; sleep 0.2; done
for f in "$images"/*.tar; do
    node_ctr images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack \
        - <"$f" >/dev/null
done
mapfile -t have < <(node_ctr images ls -q | grep -v '^sha256:')
kill "$ctrd_pid"; wait "$ctrd_pid" 2>/dev/null || true; ctrd_pid=""
for want in "${wanted[@]}"; do
    printf '%s\n' "${have[@]}" | grep -qx "$want" || { say "$want was not imported"; exit 1; }
done
say "preloaded in the node's containerd: ${have[*]}"

# Pack and import. --xattrs: file capabilities (e.g. ping's) must survive.
mkdir -p "$out"
tar -C "$node" --numeric-owner --xattrs --xattrs-include='*' -cf "$rootfs_tar.tmp" .
mv "$rootfs_tar.tmp" "$rootfs_tar"
say "cached $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1))"
# Older builds (other pins) are stale: 1.4 GB each in the cache and as many in Docker.
for old in "$CACHE"/kind-node-*; do
    [ "$old" = "$out" ] || [ ! -f "$old/rootfs.tar" ] || rm -rf "$old"
done
if [ "$import" = no ]; then
    say "root file system built in $(( $(date +%s) - t0 ))s"
    exit 0
fi
docker import "${import_changes[@]}" "$rootfs_tar" "$image" >/dev/null
docker images --format '{{.Repository}}:{{.Tag}}' wpex-e2e/kind-node | { grep -vx "$image" || true; } |
    xargs -r docker rmi >/dev/null
say "$image built in $(( $(date +%s) - t0 ))s"
echo "$image"
