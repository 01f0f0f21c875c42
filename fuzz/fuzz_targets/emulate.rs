//! Fuzzes `Emulator::emulate_mmio` and `Emulator::emulate_io` from arbitrary CPU states, exits,
//! page maps and callback failures. The state construction and the invariants live in
//! `harness.rs`, shared with the corpus replay test `tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "harness.rs"]
mod harness;

fuzz_target!(|case: harness::Case| {
    harness::run_case(&case);
});
