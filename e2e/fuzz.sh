#!/usr/bin/env bash
# Builds the relay core's fuzz target (relay/fuzz, target relay_core) and runs it for a bounded time.
#
#   e2e/fuzz.sh [SECONDS] [libFuzzer flags...]     (default 60 s; e.g. e2e/fuzz.sh 3600 -jobs=1)
#
# cargo-fuzz is installed once, pinned, under /var/cache/wpex; so are the build and the corpus the
# runs grow. The committed seeds (relay/fuzz/corpus/relay_core) are only read. Prints the number
# of executions; exits non-zero on a crash or an invariant failure, naming the input.
set -euo pipefail

# All in a function, so that bash has read the whole script before a long run starts.
main() {
    cd "$(dirname "$0")/.."

    secs="${1:-60}"
    shift || true
    cache="${WPEX_CACHE:-/var/cache/wpex}"
    cargo_fuzz_version=0.13.2
    target=relay_core

    fuzz_root="$cache/cargo-fuzz-$cargo_fuzz_version"
    if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
        echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $fuzz_root" >&2
        # The target directory e2e/install-deps.sh's tools share.
        # Debug: it only drives cargo.
        cargo install --locked --debug --root "$fuzz_root" --target-dir "$cache/tools-target" \
            cargo-fuzz --version "$cargo_fuzz_version"
    fi
    export PATH="$fuzz_root/bin:$PATH"

    # Nightly if rustup has one; else stable, which works here because `-s none` needs no unstable
    # flag (the core has no unsafe code, so AddressSanitizer would only slow the search).
    if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
        toolchain=nightly
    else
        toolchain=stable
    fi
    echo "fuzz: toolchain $toolchain ($(cargo "+$toolchain" --version 2>/dev/null || cargo --version))" >&2
    cargo_cmd=(cargo)
    if command -v rustup >/dev/null; then
        cargo_cmd=(cargo "+$toolchain")
    fi

    target_dir="$cache/fuzz-target-$toolchain"
    # cargo fuzz has no --locked: check the committed lock file is current first.
    if ! "${cargo_cmd[@]}" metadata --locked --format-version 1 --manifest-path relay/fuzz/Cargo.toml \
        >/dev/null; then
        echo "fuzz: relay/fuzz/Cargo.lock is stale (a new dependency of wpex?):" >&2
        echo "fuzz: run '(cd relay/fuzz && cargo update --workspace)' and commit the lock file." >&2
        exit 1
    fi
    # -a: debug assertions, so an arithmetic overflow in the core is a crash too.
    if ! (cd relay/fuzz && "${cargo_cmd[@]}" fuzz build -s none -a --target-dir "$target_dir" "$target"); then
        echo "fuzz: building the fuzz target failed with the $toolchain toolchain." >&2
        echo "fuzz: it needs cargo-fuzz and a Rust toolchain with -Cpasses=sancov-module (nightly or stable)." >&2
        exit 1
    fi
    binary="$target_dir/x86_64-unknown-linux-gnu/release/$target"

    corpus="$cache/fuzz/corpus/$target"
    artifacts="$cache/fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    log="$cache/fuzz/$target.log"
    echo "fuzz: running $target for ${secs}s (corpus $corpus, seeds relay/fuzz/corpus/$target)" >&2

    local started=$SECONDS status
    set +e
    "$binary" -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$@" "$corpus" "relay/fuzz/corpus/$target" 2>&1 |
        tee "$log" | grep -aE '^(INFO: Seed|#[0-9]+[[:space:]]+(INITED|DONE|pulse)|stat::|Done [0-9]+ runs)|^(==|SUMMARY|thread|invariant)'
    status=${PIPESTATUS[0]}
    set -e

    local runs rate cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -aoE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    runs="${runs:-?} executions in $((SECONDS - started)) s (${rate:-?}/s, ${cov:-cov ?})"
    if [ "$status" != 0 ]; then
        echo "fuzz: FAILED (exit $status) after $runs; log: $log" >&2
        grep -a -A4 'invariant failed' "$log" | head -20 >&2 || true
        for crash in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log"); do
            echo "fuzz: input $crash (base64 below); replay: $binary $crash" >&2
            echo "fuzz:   or WPEX_FUZZ_REPLAY=$crash cargo test -p wpex-proto --test fuzz_corpus" >&2
            base64 -w0 "$crash" >&2
            echo >&2
        done
        exit 1
    fi
    echo "fuzz: $target: $runs, no crash or invariant failure"
}

main "$@"
exit
