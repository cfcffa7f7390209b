//! Fuzz target `raft_codec`: the Raft payload codec (`coffer_meta::fuzzing::raft_codec`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_meta::fuzzing::raft_codec(data));
