//! Fuzz target `pb_conversions`: protobuf decoding and the pb → types conversions (`coffer_proto::fuzzing::pb_conversions`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proto::fuzzing::pb_conversions(data));
