//! Fuzz target `blob`: blob opening: header, authentication, inflation, id check (`coffer_pack::fuzzing::blob`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_pack::fuzzing::blob(data));
