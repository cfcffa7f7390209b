//! The binary codec of the Raft log, the raft state and the Raft RPCs.
//!
//! bincode 1 with its default (fixed-width, little-endian) encoding, behind
//! two functions so that the codec is chosen in one place. Decoding is
//! bounded so that a hostile length prefix cannot make us allocate wildly.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The RPC codec version carried in `RaftMessage.codec_version`.
pub const RPC_CODEC_VERSION: u32 = 1;

/// Upper bound for one decoded value: a snapshot chunk or a batch of entries.
const DECODE_LIMIT: u64 = 1 << 30;

fn opts() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes().with_limit(DECODE_LIMIT)
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::DefaultOptions::new().with_fixint_encoding().serialize(v).map_err(|e| e.to_string())
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    opts().deserialize(bytes).map_err(|e| format!("decode {what}: {e}"))
}
