#!/usr/bin/env bash
# Builds etcd and the Kubernetes components from the Go module proxy (no prebuilt downloads),
# cached under $WPEX_CACHE/k8s-<version>/bin (/var/cache/wpex by default). Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

CACHE=${WPEX_CACHE:-/var/cache/wpex}
out="$CACHE/k8s-$K8S_VERSION"
bin="$out/bin"
# kubectl is for people debugging a failed run (and for `kubectl get wgr` in the cluster e2e).
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"

have_all() {
    for c in "${components[@]}" etcd; do [ -x "$bin/$c" ] || return 1; done
}
if have_all; then
    echo "install-k8s: Kubernetes $K8S_VERSION and etcd $ETCD_VERSION are in $bin"
    exit 0
fi
mkdir -p "$bin"
started=$(date +%s)

# kubernetes' go.mod replaces its staging modules with local paths, so `go install` cannot build
# it; a scratch module pins each staging module to its published v0.X.Y instead.
src="$out/src"
mkdir -p "$src"
staging_version="v0.${K8S_VERSION#v1.}"
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
{
    echo "module wpex.invalid/k8s-build"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" \
        | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
} > "$src/go.mod"
{
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "${components[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
} > "$src/tools.go"
# shellcheck source=ldflags.sh
source "$here/ldflags.sh"
ldflags=$(k8s_ldflags "$K8S_VERSION")
(
    cd "$src"
    echo "install-k8s: resolving Kubernetes $K8S_VERSION modules"
    go mod tidy -e >/dev/null 2>&1 || true
    go get "k8s.io/kubernetes@$K8S_VERSION"
    echo "install-k8s: building ${components[*]} (this takes a while on 2 cores)"
    pkgs=()
    for c in "${components[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    go build -trimpath -ldflags "$ldflags" -o "$bin/" "${pkgs[@]}"
)
echo "install-k8s: Kubernetes built in $(( $(date +%s) - started ))s"

etcd_src="$out/etcd-src"
mkdir -p "$etcd_src"
(
    cd "$etcd_src"
    [ -f go.mod ] || go mod init wpex.invalid/etcd-build >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
)
have_all
echo "install-k8s: done in $(( $(date +%s) - started ))s: $(ls "$bin" | tr '\n' ' ')"
