#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian bookworm machine. First the fast tier, which
# needs neither root nor anything beyond Rust and fails fast: formatting, lints, docs, unit and
# integration tests (the core, the relay over loopback, the process, CRD drift) and helm lint
# when helm is there. Then it installs what the rest needs (cached under $WPEX_CACHE,
# /var/cache/wpex by default) and runs the licence check, the fuzzer for a bounded time, the
# end-to-end tests with real WireGuard peers in network namespaces, the operator against a real
# kube-apiserver, etcd and kube-controller-manager, and the chart installed on a real single-node
# cluster (kubelet, containerd, kube-proxy) that the test brings up and tears down, and the same
# chart suite on kind (a Docker engine started here, kind's node image built here, our images
# from the Dockerfiles, whose binaries the local cluster runs too). It ends with the time each
# step took.
#
#   e2e/test-all.sh           everything (the rest under sudo when not root)
#   e2e/test-all.sh --fast    the fast tier only, for the inner loop
#   e2e/test-all.sh --no-fast all but the fast tier
#   e2e/test-all.sh --cold    everything as a fresh machine runs it (see `cold` below)
set -euo pipefail
cd "$(dirname "$0")/.."

export WPEX_CACHE="${WPEX_CACHE:-/var/cache/wpex}"
cache=$WPEX_CACHE
# The CPU time the whole machine has spent, in seconds: what a step costs on 2 cores, background
# jobs included, where its wall time only says how well it overlapped.
machine_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {print int(($2 + $3 + $4 + $7 + $8 + $9) / hz)}' /proc/stat
}
# Each step's times, kept across the re-run under sudo for the summary at the end.
export WPEX_STEP_TIMES="${WPEX_STEP_TIMES:-$(mktemp "${TMPDIR:-/tmp}/wpex-steps.XXXXXX")}"
export WPEX_STARTED="${WPEX_STARTED:-$(date +%s)}" WPEX_STARTED_CPU="${WPEX_STARTED_CPU:-$(machine_cpu)}"
current='' since=$SECONDS since_cpu=0

end_step() {
    [ -z "$current" ] || printf '%6d s %7d CPU-s  %s\n' "$((SECONDS - since))" \
        "$(($(machine_cpu) - since_cpu))" "$current" >>"$WPEX_STEP_TIMES"
    current=''
}
# step NAME [WHAT]: starts the step NAME (its line in the summary), saying WHAT it does.
step() {
    end_step
    current=$1 since=$SECONDS since_cpu=$(machine_cpu)
    printf '\n=== %s\n' "$1${2:+: $2}"
}
summary() {
    end_step
    printf '\ntest-all: time per step (wall, and CPU time of the whole machine)\n'
    cat "$WPEX_STEP_TIMES"
    printf '%6d s %7d CPU-s  in all\n' "$(($(date +%s) - WPEX_STARTED))" "$(($(machine_cpu) - WPEX_STARTED_CPU))"
    rm -f "$WPEX_STEP_TIMES"
}

fast_tier() {
    step "fast tier: formatting, lints, docs"
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

    step "fast tier: unit and integration tests" "the core, the loopback relay, the process, CRD drift"
    cargo test --workspace --locked

    local helm
    helm=$(command -v helm || ls "$cache"/helm-*/bin/helm 2>/dev/null | tail -n 1 || true)
    if [ -n "$helm" ]; then
        step "fast tier: helm lint"
        "$helm" lint --strict charts/wpex
    else
        echo "test-all: no helm yet, so no helm lint in the fast tier (the chart tests lint it later)"
    fi
    end_step
}

# The whole command as a fresh machine runs it, without a new machine: a clean clone of HEAD
# with an empty cargo home (the Rust toolchain stays), an empty $WPEX_CACHE (so Kubernetes, etcd,
# helm, kind, the tools, the node image and the Rust builder base are built anew), empty Go
# caches, and a Docker engine with an empty data root. Installed apt packages stay. Everything it
# made is removed after it unless WPEX_KEEP_COLD is set; WPEX_COLD_DIR says where (/var/tmp).
cold() {
    # This process runs no step itself: the rehearsal's own run keeps its times and jobs.
    rm -rf "$bg_dir" "$WPEX_STEP_TIMES"
    if [ "$(id -u)" != 0 ]; then
        exec sudo --preserve-env=PATH,RUSTUP_HOME,WPEX_KEEP_COLD,WPEX_COLD_DIR "$0" --cold
    fi
    if docker info >/dev/null 2>&1; then
        echo "test-all: a Docker engine is running, and its images would make the run warm;" >&2
        echo "test-all: stop it first (e2e/kind/docker.sh stop stops one that the tests started)" >&2
        exit 1
    fi
    local dir head status=0 t0=$SECONDS
    dir=$(mktemp -d "${WPEX_COLD_DIR:-/var/tmp}/wpex-cold.XXXXXX")
    head=$(git rev-parse --short HEAD)
    [ -z "$(git status --porcelain)" ] ||
        echo "test-all: uncommitted changes are not rehearsed: the clone is HEAD ($head)"
    # shellcheck disable=SC2064  # $dir is fixed now
    [ -n "${WPEX_KEEP_COLD:-}" ] || trap "rm -rf '$dir'" EXIT
    git clone --quiet --no-hardlinks "$PWD" "$dir/repo"
    git -C "$dir/repo" checkout --quiet --detach "$(git rev-parse HEAD)"
    echo "test-all: cold rehearsal of $head in $dir"
    # rustup's proxies stay on PATH; the cargo home they use is the empty one.
    env -u WPEX_STEP_TIMES -u WPEX_STARTED -u WPEX_STARTED_CPU \
        CARGO_HOME="$dir/cargo" WPEX_CACHE="$dir/cache" WPEX_DOCKER_ROOT="$dir/docker" \
        GOPATH="$dir/go" GOMODCACHE="$dir/go/pkg/mod" GOCACHE="$dir/go-build" \
        "$dir/repo/e2e/test-all.sh" || status=$?
    local verdict=passed
    [ "$status" = 0 ] || verdict="FAILED (exit $status)"
    echo "test-all: cold rehearsal of $head $verdict in $((SECONDS - t0)) s"
    [ -z "${WPEX_KEEP_COLD:-}" ] || echo "test-all: kept $dir"
    exit "$status"
}

# Background jobs: a step's neighbours that mostly wait (peers, clusters) or mostly download
# leave cores idle, which a background job fills at lower priority. Its output is kept in a log,
# shown when it is waited for; a job that failed fails the run there.
bg_dir=$(mktemp -d "${TMPDIR:-/tmp}/wpex-bg.XXXXXX")
declare -A bg_pid=() bg_since=()
# bg NAME PROGRAM [ARGS...]: PROGRAM is a file, not a shell function.
bg() {
    local name=$1
    shift
    echo "test-all: $name runs in the background meanwhile (its output follows when it ends)"
    # Its own process group, so that a failed run stops all of it. `times` writes the CPU time
    # of the job's processes (user, then system, on its second line) for the summary.
    setsid nice -n 10 bash -c 'status=0; "$@" || status=$?; times >&3; exit "$status"' bash "$@" \
        >"$bg_dir/$name.log" 2>&1 3>"$bg_dir/$name.times" &
    bg_pid[$name]=$!
    bg_since[$name]=$SECONDS
}
wait_bg() {
    local name=$1 status=0
    wait "${bg_pid[$name]}" || status=$?
    printf '\n--- %s (in the background)\n' "$name"
    cat "$bg_dir/$name.log"
    # "1m2.5s 0m3.1s" to whole seconds.
    local cpu
    cpu=$(sed -n 2p "$bg_dir/$name.times" | tr 'ms' '  ' |
        awk '{printf "%d", $1 * 60 + $2 + $3 * 60 + $4}')
    printf '%6d s %7s CPU-s  %s (in the background, its own CPU time)\n' \
        "$((SECONDS - bg_since[$name]))" "${cpu:-?}" "$name" >>"$WPEX_STEP_TIMES"
    unset "bg_pid[$name]"
    if [ "$status" != 0 ]; then
        echo "test-all: $name FAILED (exit $status)" >&2
        exit "$status"
    fi
}
docker_started=no
cleanup() {
    local pid
    for pid in "${bg_pid[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
    if [ "$docker_started" = yes ]; then e2e/kind/docker.sh stop || true; fi
    # The summary removes it after a pass; this, after a failure.
    rm -rf "$bg_dir" "$WPEX_STEP_TIMES"
}
trap cleanup EXIT

installs=(bash -c 'e2e/install-deps.sh && e2e/k8s/install-k8s.sh && e2e/install-helm.sh')

case "${1:-}" in
    --fast)
        fast_tier
        rm -f "$WPEX_STEP_TIMES"
        exit 0
        ;;
    --cold) cold ;;
    --no-fast) ;;
    "")
        # As root, the tools build while the fast tier compiles: both are long, neither fills
        # both cores all the time.
        if [ "$(id -u)" = 0 ]; then bg installs "${installs[@]}"; fi
        fast_tier
        ;;
    *)
        echo "usage: $0 [--fast | --no-fast | --cold]" >&2
        exit 2
        ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "test-all: network namespaces need root; the rest runs under sudo" >&2
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,GOPATH,GOMODCACHE,GOCACHE,WPEX_CACHE,WPEX_DOCKER_ROOT,WPEX_STEP_TIMES,WPEX_STARTED,WPEX_STARTED_CPU \
        "$0" --no-fast
fi
trap 'failed=$current; end_step; echo "test-all: FAILED in step: $failed"' ERR

step "installing test dependencies" "apt packages, boringtun-cli, wireguard-go, cargo-deny, Kubernetes, helm"
if [ -n "${bg_pid[installs]:-}" ]; then wait_bg installs; else "${installs[@]}"; fi

step "dependency licences and sources" "cargo-deny, deny.toml"
# cargo-deny reads the whole lock file, every platform's crates included (wasi, windows), while
# builds fetch only this host's: fetch them all first, then check with no network.
cargo fetch --locked
deny_version=$(sed -n 's/^CARGO_DENY_VERSION=//p' e2e/install-deps.sh)
deny="$cache/cargo-deny-$deny_version/bin/cargo-deny"
"$deny" --offline check licenses bans sources
# The check can fail: a scratch copy of the workspace with a GPL crate added must be refused,
# naming that crate.
scratch=$(mktemp -d)
tar -c --exclude=./target --exclude=./.git . | tar -x -C "$scratch"
mkdir -p "$scratch/e2e/licence-probe/src"
touch "$scratch/e2e/licence-probe/src/lib.rs"
printf '[package]\nname = "licence-probe"\nversion = "0.1.0"\nedition = "2024"\nlicense = "GPL-3.0-only"\npublish = false\n' \
    >"$scratch/e2e/licence-probe/Cargo.toml"
printf '\n[dependencies.licence-probe]\npath = "licence-probe"\n' >>"$scratch/e2e/Cargo.toml"
if (cd "$scratch" && "$deny" --offline check licenses) >"$scratch.log" 2>&1 ||
    ! grep -q 'licence-probe v0.1.0' "$scratch.log"; then
    cat "$scratch.log"
    echo "test-all: cargo-deny did not refuse a GPL crate" >&2
    exit 1
fi
echo "test-all: cargo-deny refuses a GPL-3.0-only crate added to a scratch copy, as it should"
rm -rf "$scratch" "$scratch.log"

step "images and fuzzing" "relay/Dockerfile and operator/Dockerfile built (e2e/kind/run.sh --local --dockerfiles --images-only), their binaries packed again without Docker (e2e/build-images.sh --binaries); the relay core fuzzed for ${WPEX_FUZZ_SECONDS:-60} s (e2e/fuzz.sh)"
bg fuzz e2e/fuzz.sh "${WPEX_FUZZ_SECONDS:-60}"
# The release binaries are compiled once, by the Dockerfiles, as users build them; kind runs those
# images, and the local cluster the same binaries packed by build-images.sh.
docker info >/dev/null 2>&1 || docker_started=yes
e2e/kind/docker.sh start
e2e/kind/run.sh --local --dockerfiles --images-only
release_bin="$cache/release-bin"
rm -rf "$release_bin"
mkdir -p "$release_bin"
for image in wpex wpex-operator; do
    container=$(docker create "wpex/$image:dev")
    docker cp "$container:/$image" "$release_bin/$image"
    docker rm "$container" >/dev/null
done
e2e/build-images.sh --binaries "$release_bin"
# Until the kind step: dockerd's iptables rules would stand in the local cluster's way.
if [ "$docker_started" = yes ]; then
    e2e/kind/docker.sh stop
    docker_started=no
fi
wait_bg fuzz

step "end-to-end: a real single-node cluster, peers behind NAT, the operator and the chart on a real API server" "e2e/tests/cluster.rs, relay_netns.rs, operator_api.rs, chart.rs"
# The end-to-end suites run in two steps below, each where it fits; a new one must get a place.
for suite in e2e/tests/*.rs; do
    case "$(basename "$suite" .rs)" in
        cluster | relay_attacks | relay_netns | operator_api | chart) ;;
        dockerfiles) ;; # no root needed: in the fast tier
        *) echo "test-all: $suite runs in no step of e2e/test-all.sh" >&2; exit 1 ;;
    esac
done
# The debug binaries of the fast tier's test build, with the same features: nothing rebuilt.
cargo test --workspace --locked --no-run
export WPEX_BIN="$PWD/target/debug/wpex" WPEX_OPERATOR_BIN="$PWD/target/debug/wpex-operator"
# kind's node image needs no Docker engine until it is imported: it is built while these suites
# mostly wait on peers and clusters.
bg kind-prepare e2e/kind/run.sh --local --prepare
cargo test --workspace --locked --test cluster --test relay_netns --test operator_api --test chart \
    -- --ignored --test-threads=1
wait_bg kind-prepare

step "end-to-end: attacks" "floods, NAT rebinding and forgery (e2e/tests/relay_attacks.rs), on a quiet machine"
# They measure the relay's CPU: the release binary users run, the image's, with nothing else
# running.
export WPEX_RELEASE_BIN="${WPEX_RELEASE_BIN:-$release_bin/wpex}"
cargo test --workspace --locked --test relay_attacks -- --ignored --test-threads=1 --nocapture

step "kind" "the cluster suite on kind: kind's node image and the control-plane images built here, no registry, our images from the Dockerfiles (e2e/kind/run.sh --local --dockerfiles, which starts and stops dockerd)"
e2e/kind/run.sh --local --dockerfiles
trap - ERR
summary
