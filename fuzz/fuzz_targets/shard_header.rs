//! Fuzz target `shard_header`: shard file headers and wire shard headers (`coffer_storage::fuzzing::shard_header`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_storage::fuzzing::shard_header(data));
