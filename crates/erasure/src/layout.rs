//! Where a pack's bytes lie among its data shards.
//!
//! The code is systematic and the pack is cut into `k` *contiguous* data
//! shards of `shard_len` bytes each, so pack byte `p` lives in data shard
//! `p / shard_len` at offset `p % shard_len`. That is what lets a healthy read
//! of one blob touch only the one or two data shards that hold its range.

use coffer_types::{ErasureParams, ShardIndex};

use crate::ErasureError;

/// One piece of a pack byte range as it lies in a data shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    pub index: ShardIndex,
    pub offset: u64,
    pub len: u64,
}

/// Maps pack byte range `[offset, offset + len)` onto data-shard ranges, in pack order.
///
/// An empty range inside the pack maps to no pieces. A range that reaches past
/// `pack_len` (or whose end overflows) is an error rather than a clamp, because
/// a chunk index entry pointing outside its pack is corruption to report.
pub fn locate(params: ErasureParams, pack_len: u64, offset: u64, len: u64) -> Result<Vec<ShardRange>, ErasureError> {
    let out_of_pack = ErasureError::RangeOutOfPack { offset, len, pack_len };
    let end = offset.checked_add(len).ok_or_else(|| out_of_pack.clone())?;
    if end > pack_len {
        return Err(out_of_pack);
    }
    let shard_len = params.shard_len(pack_len);
    let mut pieces = Vec::new();
    let mut pos = offset;
    while pos < end {
        let shard = pos / shard_len;
        let within = pos % shard_len;
        let piece_len = (shard_len - within).min(end - pos);
        // `pos < pack_len <= k * shard_len`, so `shard < k <= MAX_SHARDS` and fits a byte;
        // the conversion is still checked so a future change cannot wrap silently.
        let index = u8::try_from(shard).map_err(|_| out_of_pack.clone())?;
        pieces.push(ShardRange { index: ShardIndex(index), offset: within, len: piece_len });
        pos += piece_len;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(k: u32, m: u32) -> ErasureParams {
        ErasureParams::new(k, m).unwrap()
    }

    #[test]
    fn range_inside_one_shard() {
        // 4+2 over 16 bytes: shards of 4 bytes.
        let got = locate(params(4, 2), 16, 5, 2).unwrap();
        assert_eq!(got, vec![ShardRange { index: ShardIndex(1), offset: 1, len: 2 }]);
    }

    #[test]
    fn range_across_shards() {
        let got = locate(params(4, 2), 16, 3, 6).unwrap();
        assert_eq!(
            got,
            vec![
                ShardRange { index: ShardIndex(0), offset: 3, len: 1 },
                ShardRange { index: ShardIndex(1), offset: 0, len: 4 },
                ShardRange { index: ShardIndex(2), offset: 0, len: 1 },
            ]
        );
    }

    #[test]
    fn last_shard_is_short() {
        // 17 bytes over 4 data shards: shards of 5, the last holds 2 real bytes.
        let got = locate(params(4, 2), 17, 14, 3).unwrap();
        assert_eq!(
            got,
            vec![
                ShardRange { index: ShardIndex(2), offset: 4, len: 1 },
                ShardRange { index: ShardIndex(3), offset: 0, len: 2 },
            ]
        );
        assert_eq!(locate(params(4, 2), 17, 0, 17).unwrap().iter().map(|r| r.len).sum::<u64>(), 17);
    }

    #[test]
    fn empty_ranges() {
        assert_eq!(locate(params(4, 2), 16, 16, 0).unwrap(), vec![]);
        assert_eq!(locate(params(4, 2), 0, 0, 0).unwrap(), vec![]);
    }

    #[test]
    fn out_of_pack_is_an_error() {
        let p = params(4, 2);
        assert_eq!(locate(p, 16, 10, 7), Err(ErasureError::RangeOutOfPack { offset: 10, len: 7, pack_len: 16 }));
        assert!(locate(p, 16, 17, 0).is_err());
        assert!(locate(p, 16, u64::MAX, 2).is_err());
        assert!(locate(p, 0, 0, 1).is_err());
    }
}
