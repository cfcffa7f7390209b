//! The Reed-Solomon codec over GF(2^8): a pack becomes `k` data shards plus
//! `m` parity shards, and any `k` of the `k + m` give the pack back.
//!
//! ```text
//!   pack: [ ........................ pack_len bytes ........................ ]
//!          |  shard 0  |  shard 1  |   ...   | shard k-1 + zero pad |
//!   parity:                                   shard k .. shard k+m-1
//! ```
//!
//! Every shard of a pack has the same length, `ErasureParams::shard_len`, which
//! is at least one byte so that an empty pack still has shards to place and
//! checksum. Inputs are checked before they reach the library, so a wrong
//! shard count, a length mismatch or too many losses is an error, never a panic.

use std::fmt;
use std::sync::Arc;

use coffer_types::{ErasureParams, ShardIndex};
use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::ErasureError;

/// Encodes packs into shards and recovers them. Cloning is cheap: the
/// library's matrices (and its cache of inverted decode matrices) are shared.
#[derive(Clone)]
pub struct Codec {
    params: ErasureParams,
    rs: Arc<ReedSolomon>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Codec({})", self.params)
    }
}

impl Codec {
    pub fn new(params: ErasureParams) -> Result<Codec, ErasureError> {
        let rs = ReedSolomon::new(params.k(), params.m()).map_err(|e| ErasureError::Codec(e.to_string()))?;
        Ok(Codec { params, rs: Arc::new(rs) })
    }

    pub fn params(&self) -> ErasureParams {
        self.params
    }

    /// Cuts `pack` into `k + m` shards of `params.shard_len(pack.len())` bytes each.
    ///
    /// Data shard `i` is `pack[i*L..(i+1)*L]`, zero-padded at the end of the
    /// pack; shards `k..k+m` are parity.
    pub fn encode(&self, pack: &[u8]) -> Vec<Vec<u8>> {
        let shard_len = self.shard_len(pack.len());
        let mut shards: Vec<Vec<u8>> = (0..self.params.k())
            .map(|i| {
                let start = (i * shard_len).min(pack.len());
                let end = ((i + 1) * shard_len).min(pack.len());
                let mut shard = Vec::with_capacity(shard_len);
                shard.extend_from_slice(&pack[start..end]);
                shard.resize(shard_len, 0);
                shard
            })
            .collect();
        let parity = self.parity_of(&shards, shard_len);
        shards.extend(parity);
        shards
    }

    /// Encodes without copying the data: pads `pack` with zeros to
    /// `k * shard_len` bytes, so that data shard `i` is
    /// `pack[i*shard_len..(i+1)*shard_len]` exactly as [`Codec::encode`]
    /// would return it, and returns the `m` parity shards.
    ///
    /// The padding is at most `k - 1` bytes (or `k` for an empty pack), so a
    /// caller that reserves that much avoids a reallocation.
    pub fn encode_parity(&self, pack: &mut Vec<u8>) -> Vec<Vec<u8>> {
        let shard_len = self.shard_len(pack.len());
        pack.resize(self.params.k() * shard_len, 0);
        let data: Vec<&[u8]> = pack.chunks_exact(shard_len).collect();
        self.parity_of(&data, shard_len)
    }

    /// The length of every shard of a pack of `pack_len` bytes: the same value
    /// as `ErasureParams::shard_len`, computed in `usize` so that slicing
    /// needs no conversion; a unit test holds the two equal.
    fn shard_len(&self, pack_len: usize) -> usize {
        pack_len.div_ceil(self.params.k()).max(1)
    }

    /// The parity shards of `k` data shards of `shard_len` bytes each.
    fn parity_of<T: AsRef<[u8]>>(&self, data: &[T], shard_len: usize) -> Vec<Vec<u8>> {
        let mut parity: Vec<Vec<u8>> = (0..self.params.m()).map(|_| vec![0u8; shard_len]).collect();
        // The library only fails on a wrong shard count or unequal or empty
        // shards; the callers pass `k` data shards of one non-zero length and
        // the vectors above have the codec's parity count and the same
        // length, so an error here is a bug in this module.
        self.rs.encode_sep(data, &mut parity).expect("shards are built with the codec's counts and one length");
        parity
    }

    /// Fills every `None` entry, data and parity, from any `k` present shards.
    ///
    /// A shard that failed its checksum must be passed as `None`: the code can
    /// recover erasures, but a present shard with wrong bytes silently yields
    /// a wrong pack. On error nothing is written.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.check_for_reconstruct(shards)?;
        self.rs.reconstruct(shards).map_err(|e| ErasureError::Codec(e.to_string()))
    }

    /// Like [`Codec::reconstruct`], but fills only the missing data shards,
    /// which is all a read needs; missing parity shards stay `None`.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.check_for_reconstruct(shards)?;
        self.rs.reconstruct_data(shards).map_err(|e| ErasureError::Codec(e.to_string()))
    }

    /// Reassembles the pack from its data shards, dropping the zero padding.
    ///
    /// `shards` holds either the `k` data shards or all `k + m` shards (parity
    /// is ignored). Every data shard must be present and exactly
    /// `params.shard_len(pack_len)` bytes long, which also guarantees the
    /// shards hold at least `pack_len` bytes.
    pub fn join(&self, shards: &[Option<Vec<u8>>], pack_len: u64) -> Result<Vec<u8>, ErasureError> {
        let k = self.params.k();
        if shards.len() != k && shards.len() != self.params.total() {
            return Err(ErasureError::WrongShardCount { expected: self.params.total(), got: shards.len() });
        }
        let shard_len = self.params.shard_len(pack_len);
        let mut data = Vec::with_capacity(k);
        for (i, shard) in shards.iter().take(k).enumerate() {
            let index = shard_index(i);
            let shard = shard.as_ref().ok_or(ErasureError::DataShardMissing { index })?;
            if shard.len() as u64 != shard_len {
                return Err(ErasureError::ShardLengthMismatch { index, expected: shard_len, got: shard.len() as u64 });
            }
            data.push(shard);
        }
        // `pack_len <= k * shard_len` and every shard is `shard_len` bytes in
        // memory, so the pack fits in memory too and `remaining` only shrinks.
        let mut pack = Vec::with_capacity(usize::try_from(pack_len).unwrap_or(0));
        let mut remaining = pack_len;
        for shard in data {
            let take = shard.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            pack.extend_from_slice(&shard[..take]);
            remaining -= take as u64;
        }
        Ok(pack)
    }

    /// Checks what the library would otherwise report without the shard index
    /// or counts: one slot per shard, equal non-empty lengths, and at least
    /// `k` shards present.
    fn check_for_reconstruct(&self, shards: &[Option<Vec<u8>>]) -> Result<(), ErasureError> {
        let total = self.params.total();
        if shards.len() != total {
            return Err(ErasureError::WrongShardCount { expected: total, got: shards.len() });
        }
        let mut expected_len: Option<u64> = None;
        let mut present = 0;
        for (i, shard) in shards.iter().enumerate() {
            let Some(shard) = shard else { continue };
            let index = shard_index(i);
            let len = shard.len() as u64;
            if len == 0 {
                return Err(ErasureError::EmptyShard { index });
            }
            match expected_len {
                None => expected_len = Some(len),
                Some(expected) if expected != len => {
                    return Err(ErasureError::ShardLengthMismatch { index, expected, got: len });
                }
                Some(_) => {}
            }
            present += 1;
        }
        if present < self.params.k() {
            return Err(ErasureError::TooFewShards { present, needed: self.params.k() });
        }
        Ok(())
    }
}

/// Shard positions come from slices checked against `k + m <= MAX_SHARDS`, so
/// they fit a byte; saturating keeps even a broken caller from wrapping.
fn shard_index(i: usize) -> ShardIndex {
    ShardIndex(u8::try_from(i).unwrap_or(u8::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(k: u32, m: u32) -> Codec {
        Codec::new(ErasureParams::new(k, m).unwrap()).unwrap()
    }

    fn some(shards: Vec<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
        shards.into_iter().map(Some).collect()
    }

    #[test]
    fn data_shards_are_contiguous_slices() {
        let c = codec(4, 2);
        let pack: Vec<u8> = (0..18u8).collect();
        let shards = c.encode(&pack);
        assert_eq!(shards.len(), 6);
        assert!(shards.iter().all(|s| s.len() == 5));
        assert_eq!(shards[0], vec![0, 1, 2, 3, 4]);
        assert_eq!(shards[3], vec![15, 16, 17, 0, 0]);
    }

    #[test]
    fn encode_parity_pads_in_place_and_matches_encode() {
        for (k, m) in [(1, 1), (3, 2), (4, 2), (6, 3)] {
            let c = codec(k, m);
            for len in [0usize, 1, 5, 17, 1000, 4096, 65_537] {
                let pack: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                let expected = c.encode(&pack);
                let mut padded = pack.clone();
                let parity = c.encode_parity(&mut padded);
                let shard_len = expected[0].len();
                assert_eq!(padded.len(), k as usize * shard_len, "k={k} len={len}");
                assert_eq!(&padded[..len], &pack[..]);
                let data: Vec<Vec<u8>> = padded.chunks(shard_len).map(<[u8]>::to_vec).collect();
                assert_eq!(data, expected[..k as usize], "k={k} len={len}");
                assert_eq!(parity, expected[k as usize..], "k={k} len={len}");
            }
        }
    }

    #[test]
    fn shard_len_matches_params() {
        for k in 1..=7 {
            let c = codec(k, 2);
            for len in [0usize, 1, 2, 6, 7, 8, 100, 1023] {
                let shards = c.encode(&vec![7u8; len]);
                assert_eq!(shards[0].len() as u64, c.params().shard_len(len as u64), "k={k} len={len}");
            }
        }
    }

    #[test]
    fn empty_pack_round_trips() {
        let c = codec(4, 2);
        let shards = c.encode(&[]);
        assert!(shards.iter().all(|s| s.len() == 1));
        let mut shards = some(shards);
        shards[0] = None;
        shards[5] = None;
        c.reconstruct(&mut shards).unwrap();
        assert_eq!(c.join(&shards, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn reconstruct_fills_data_and_parity() {
        let c = codec(4, 2);
        let pack: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let original = c.encode(&pack);
        let mut shards = some(original.clone());
        shards[1] = None;
        shards[4] = None;
        c.reconstruct(&mut shards).unwrap();
        assert_eq!(shards, some(original));
        assert_eq!(c.join(&shards, pack.len() as u64).unwrap(), pack);
    }

    #[test]
    fn reconstruct_data_leaves_parity_missing() {
        let c = codec(3, 2);
        let pack = b"the quick brown fox jumps over the lazy dog".to_vec();
        let mut shards = some(c.encode(&pack));
        shards[0] = None;
        shards[4] = None;
        c.reconstruct_data(&mut shards).unwrap();
        assert!(shards[0].is_some());
        assert!(shards[4].is_none());
        assert_eq!(c.join(&shards[..3], pack.len() as u64).unwrap(), pack);
    }

    #[test]
    fn too_many_losses_is_an_error() {
        let c = codec(4, 2);
        let mut shards = some(c.encode(b"some bytes in a pack"));
        shards[0] = None;
        shards[2] = None;
        shards[5] = None;
        assert_eq!(c.reconstruct(&mut shards), Err(ErasureError::TooFewShards { present: 3, needed: 4 }));
        assert_eq!(c.reconstruct_data(&mut shards), Err(ErasureError::TooFewShards { present: 3, needed: 4 }));
        // Nothing was written on error.
        assert!(shards[0].is_none());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let c = codec(4, 2);
        let mut shards = some(c.encode(b"0123456789abcdef"));
        let mut short = shards[..5].to_vec();
        assert_eq!(c.reconstruct(&mut short), Err(ErasureError::WrongShardCount { expected: 6, got: 5 }));

        shards[3] = Some(vec![1, 2, 3]);
        shards[0] = None;
        assert_eq!(
            c.reconstruct(&mut shards),
            Err(ErasureError::ShardLengthMismatch { index: ShardIndex(3), expected: 4, got: 3 })
        );
        shards[3] = Some(vec![]);
        assert_eq!(c.reconstruct(&mut shards), Err(ErasureError::EmptyShard { index: ShardIndex(3) }));
    }

    #[test]
    fn join_checks_its_input() {
        let c = codec(4, 2);
        let pack = b"0123456789abcdef".to_vec();
        let mut shards = some(c.encode(&pack));
        assert_eq!(c.join(&shards, 16).unwrap(), pack);
        // A pack length whose shard length differs from the shards' is refused
        // rather than read past the end of a shard.
        assert_eq!(
            c.join(&shards, 17),
            Err(ErasureError::ShardLengthMismatch { index: ShardIndex(0), expected: 5, got: 4 })
        );
        assert_eq!(c.join(&shards, 13).unwrap(), pack[..13].to_vec());
        assert_eq!(c.join(&shards[..2], 16), Err(ErasureError::WrongShardCount { expected: 6, got: 2 }));
        shards[2] = None;
        assert_eq!(c.join(&shards, 16), Err(ErasureError::DataShardMissing { index: ShardIndex(2) }));
        // Missing parity does not matter to join.
        let mut shards = some(c.encode(&pack));
        shards[4] = None;
        shards[5] = None;
        assert_eq!(c.join(&shards, 16).unwrap(), pack);
    }

    #[test]
    fn clones_share_the_code() {
        let c = codec(6, 3);
        let d = c.clone();
        assert_eq!(c.encode(b"abc"), d.encode(b"abc"));
        assert_eq!(format!("{d:?}"), "Codec(6+3)");
    }
}
