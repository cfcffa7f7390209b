//! Erasure-coding parameters and wire limits.

use serde::{Deserialize, Serialize};

use crate::TypesError;

/// Shard data travels in frames of at most this many bytes.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// The longest lease a backup session may hold (the catalog refuses longer
/// ones). A storage node collects a shard of a pack the catalog does not
/// know only once the shard is older than this (plus a margin), so the
/// session that uploaded it can no longer commit it.
pub const MAX_SESSION_LEASE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The Reed-Solomon code works over GF(2^8): at most 256 shards per pack; we
/// keep a smaller cap so that a shard index always fits a byte with room.
pub const MAX_SHARDS: u32 = 64;

/// The largest shard body a pack record may name (a storage node refuses
/// larger ones), so that a pack's byte counts never overflow a `u64`.
pub const MAX_SHARD_LEN: u64 = 1 << 30;

/// `k` data shards plus `m` parity shards; any `k` of them give the pack back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct ErasureParams {
    k: u8,
    m: u8,
}

impl ErasureParams {
    pub fn new(k: u32, m: u32) -> Result<Self, TypesError> {
        let bad = |reason| Err(TypesError::BadErasure { k, m, reason });
        if k == 0 {
            return bad("k must be at least 1");
        }
        if m == 0 {
            return bad("m must be at least 1: without parity no loss is survivable");
        }
        // Both come from the wire (CreateRepo, CommitPack, RebuildShard):
        // the sum must not wrap.
        if k.checked_add(m).is_none_or(|total| total > MAX_SHARDS) {
            return bad("k + m is larger than the supported shard count");
        }
        Ok(Self { k: k as u8, m: m as u8 })
    }

    pub fn k(&self) -> usize {
        self.k as usize
    }

    pub fn m(&self) -> usize {
        self.m as usize
    }

    pub fn total(&self) -> usize {
        self.k as usize + self.m as usize
    }

    /// The fewest placed shards a repository accepts for a new pack when
    /// too few nodes are up for all `k + m`: `k`, the same bar a read must
    /// clear. During an outage that leaves exactly `k` nodes, every pack the
    /// cluster already holds has only those `k` shards reachable too, so a
    /// new pack at `k` is exactly as exposed as the data already stored,
    /// while refusing it would leave the source with no backup at all.
    pub fn default_min_shards(&self) -> usize {
        self.k()
    }

    /// A repository's `min_shards` must lie in `k ..= k + m`.
    pub fn check_min_shards(&self, n: u32) -> Result<usize, TypesError> {
        let n = n as usize;
        if n < self.k() || n > self.total() {
            return Err(TypesError::BadMinShards { min_shards: n, k: self.k(), total: self.total() });
        }
        Ok(n)
    }

    /// The length of each shard for a pack of `pack_len` bytes.
    pub fn shard_len(&self, pack_len: u64) -> u64 {
        pack_len.div_ceil(self.k as u64).max(1)
    }
}

impl Default for ErasureParams {
    fn default() -> Self {
        Self { k: 4, m: 2 }
    }
}

impl std::fmt::Display for ErasureParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Wire values: the extremes, and the small ones that are valid.
    fn wire_u32() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(1), Just(u32::MAX), Just(u32::MAX - 1), Just(MAX_SHARDS), 0u32..=80, any::<u32>()]
    }

    fn wire_u64() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(1), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
    }

    proptest! {
        #[test]
        fn erasure_params_from_any_wire_values(k in wire_u32(), m in wire_u32(), n in wire_u32(), len in wire_u64()) {
            let valid = k >= 1 && m >= 1 && u64::from(k) + u64::from(m) <= u64::from(MAX_SHARDS);
            match ErasureParams::new(k, m) {
                Ok(p) => {
                    prop_assert!(valid);
                    prop_assert_eq!((p.k(), p.m()), (k as usize, m as usize));
                    let shard = p.shard_len(len);
                    prop_assert!(shard >= 1 && u128::from(shard) * p.k() as u128 >= u128::from(len));
                    let ok = p.check_min_shards(n).is_ok();
                    prop_assert_eq!(ok, n as usize >= p.k() && n as usize <= p.total());
                }
                Err(_) => prop_assert!(!valid),
            }
        }
    }

    #[test]
    fn overflowing_sums_are_refused() {
        // k + m wraps to a small number in u32.
        assert!(ErasureParams::new(u32::MAX, 2).is_err());
        assert!(ErasureParams::new(2, u32::MAX).is_err());
        assert!(ErasureParams::new(u32::MAX, u32::MAX).is_err());
    }

    #[test]
    fn validates() {
        assert!(ErasureParams::new(0, 2).is_err());
        assert!(ErasureParams::new(4, 0).is_err());
        assert!(ErasureParams::new(60, 10).is_err());
        let p = ErasureParams::new(4, 2).unwrap();
        assert_eq!(p.shard_len(16), 4);
        assert_eq!(p.shard_len(17), 5);
        assert_eq!(p.shard_len(0), 1);
    }
}
