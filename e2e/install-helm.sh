#!/usr/bin/env bash
# Builds helm from the Go module proxy into /var/cache/wpex/helm-<version>. Idempotent.
set -euo pipefail
HELM_VERSION=v3.22.0
dir="/var/cache/wpex/helm-$HELM_VERSION"
if [ ! -x "$dir/bin/helm" ]; then
    echo "install-helm: building helm $HELM_VERSION"
    GOBIN="$dir/bin" CGO_ENABLED=0 go install -trimpath \
        -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
echo "install-helm: $("$dir/bin/helm" version --short)"
