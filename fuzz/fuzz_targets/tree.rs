//! Fuzz target `tree`: directory trees (`coffer_client::tree::fuzz_decode`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_client::tree::fuzz_decode(data));
