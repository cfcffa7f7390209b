//! The one error type of this crate. Every variant names what failed and
//! carries the counts or indices involved, so that a caller can log it
//! without re-deriving the context.

use coffer_types::ShardIndex;

/// Why encoding, reconstruction, reassembly or range mapping could not proceed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ErasureError {
    /// Fewer shards are present than the code needs to recover the pack.
    #[error("too few shards to recover the pack: {present} present, {needed} needed")]
    TooFewShards { present: usize, needed: usize },
    /// A present shard does not have the length the other shards (or the pack length) call for.
    #[error("shard {index} has {got} bytes, expected {expected}")]
    ShardLengthMismatch { index: ShardIndex, expected: u64, got: u64 },
    /// A present shard is empty; every shard holds at least one byte, even for an empty pack.
    #[error("shard {index} is empty")]
    EmptyShard { index: ShardIndex },
    /// Reassembly needs every data shard; reconstruct the missing ones first.
    #[error("data shard {index} is missing; reconstruct it before joining")]
    DataShardMissing { index: ShardIndex },
    /// The shard slice does not hold one entry per shard of the code.
    #[error("expected {expected} shard slots, got {got}")]
    WrongShardCount { expected: usize, got: usize },
    /// A byte range reaches past the end of the pack.
    #[error("range at offset {offset} of {len} bytes exceeds the pack of {pack_len} bytes")]
    RangeOutOfPack { offset: u64, len: u64, pack_len: u64 },
    /// The Reed-Solomon library refused the operation.
    #[error("reed-solomon: {0}")]
    Codec(String),
}
