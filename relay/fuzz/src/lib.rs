//! The fuzz harness for wpex's sans-IO core; the target in `fuzz_targets/` only feeds it bytes.

pub mod scenario;
