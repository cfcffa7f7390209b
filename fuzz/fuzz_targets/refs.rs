//! Fuzz target `refs`: reference lists (`coffer_pack::fuzzing::refs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_pack::fuzzing::refs(data));
