//! Fuzz target `key_slot`: key slot parsing and KDF bounds, no expensive KDF (`coffer_pack::fuzzing::key_slot`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_pack::fuzzing::key_slot(data));
