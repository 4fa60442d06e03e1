#!/usr/bin/env bash
# Builds helm from the Go module proxy into $WPEX_CACHE/helm-<version> (/var/cache/wpex by
# default), with the Go caches there too. Idempotent.
set -euo pipefail
HELM_VERSION=v3.22.0
cache=${WPEX_CACHE:-/var/cache/wpex}
dir="$cache/helm-$HELM_VERSION"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
if [ ! -x "$dir/bin/helm" ]; then
    echo "install-helm: building helm $HELM_VERSION"
    GOBIN="$dir/bin" CGO_ENABLED=0 go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
echo "install-helm: $("$dir/bin/helm" version --short)"
