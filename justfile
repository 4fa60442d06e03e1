# Developer tasks (https://github.com/casey/just, 1.59 here: `cargo install just`, then `just --list`).
# Each recipe is a command the README documents; CI runs e2e/test-all.sh itself.

# The fast tier: formatting, lints, docs, unit and integration tests. No root.
default: test-fast

# The fast tier alone, for the inner loop.
test-fast:
    e2e/test-all.sh --fast

# Everything CI runs: the fast tier, then fuzzing and the end-to-end suites (root, via sudo).
test:
    e2e/test-all.sh

# Regenerates the CRDs into crds/ and the chart's copy (the fast tier fails while they differ).
gen-crds:
    cargo run -q -p wpex-operator --bin crdgen -- --out-dir crds
    cargo run -q -p wpex-operator --bin crdgen -- --out-dir charts/wpex/crds

# The end-to-end tests alone (root): peers behind NAT, the operator, the chart on a real node.
e2e:
    sudo e2e/test-all.sh --no-fast

# The data-plane benchmark's reference cell (README, Performance); pass more flags after it.
bench *FLAGS:
    cargo build --release -p wpex
    cargo run --release -p wpex-bench -- --pairs 64 --size 1420 --rate 40000 --duration 5 --gso {{FLAGS}}

# Fuzzes the relay core (default 10 minutes).
fuzz SECONDS="600":
    e2e/fuzz.sh {{SECONDS}}
