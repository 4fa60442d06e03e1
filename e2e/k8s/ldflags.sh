# shellcheck shell=bash
# Sourced by install-k8s.sh and kind/build-node-image.sh. Kubernetes binaries built from the Go
# module proxy carry their version only if the linker stamps it, as the release build does:
# kubeadm and kubelet refuse to work with a version they cannot read. Like the release build,
# no symbol table and no DWARF (-s -w): nobody debugs these here, and linking is much faster.
k8s_ldflags() {
    local version=$1 minor pkg flags="-s -w"
    minor="${version#v1.}"
    minor="${minor%%.*}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}
