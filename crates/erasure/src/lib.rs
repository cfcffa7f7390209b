//! Pack <-> `k + m` shards with a systematic Reed-Solomon code over GF(2^8).
//!
//! A pack of `pack_len` bytes is cut into `k` contiguous data shards of
//! `shard_len = params.shard_len(pack_len)` bytes (the last one zero-padded),
//! followed by `m` parity shards of the same length:
//!
//! ```text
//!   pack bytes ──► [d0][d1]..[dk-1] ──encode──► [d0]..[dk-1][p0]..[pm-1]
//!   any k shards ──reconstruct──► all k+m ──join──► pack bytes
//! ```
//!
//! The invariant: any `k` of the `k + m` shards give the pack back, byte for
//! byte. Because the code is systematic and the data shards are contiguous,
//! a healthy read of a blob at pack range `(offset, len)` touches only the
//! data shards [`locate`] names; reconstruction is needed only when one of
//! them is missing or fails its checksum. Everything here is pure (no I/O, no
//! clocks, no randomness) and checks its input instead of panicking.

mod codec;
mod error;
mod layout;
#[cfg(test)]
mod prop_tests;

pub use codec::Codec;
pub use error::ErasureError;
pub use layout::{locate, ShardRange};
