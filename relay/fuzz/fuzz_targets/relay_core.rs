//! Sequences of datagrams, clock steps, timeouts and allow-list changes against the relay core,
//! with every invariant checked after each step (see `src/scenario.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = wpex_fuzz::scenario::run(data) {
        panic!("invariant failed: {failure}");
    }
});
