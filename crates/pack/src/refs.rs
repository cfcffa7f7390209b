//! Reference lists: the sorted, deduplicated chunk ids one snapshot
//! references. They are stored unencrypted, as system objects, so that the
//! cluster can collect garbage without any repository key; they hold ids
//! only, never content.
//!
//! ```text
//!   "CFRF" | version u8 | count u64 LE | count × id [32], strictly ascending | BLAKE3 of all before [32]
//! ```
//!
//! The invariant kept here: a decoded list is exactly what was encoded,
//! strictly ascending, or an error. Garbage collection must never act on a
//! list that lost or gained an id, since a lost id means a live chunk is
//! deleted.

use coffer_types::ChunkId;

use crate::wire::Take;
use crate::PackError;

const REFS_MAGIC: &[u8; 4] = b"CFRF";
const REFS_VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8;
const CHECKSUM_LEN: usize = 32;
const WHAT: &str = "reference list";

/// Encodes the ids as a reference list, sorting and deduplicating a copy.
pub fn encode_refs(ids: &[ChunkId]) -> Vec<u8> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(HEADER_LEN + sorted.len() * ChunkId::LEN + CHECKSUM_LEN);
    out.extend_from_slice(REFS_MAGIC);
    out.push(REFS_VERSION);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for id in &sorted {
        out.extend_from_slice(id.as_bytes());
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Decodes a reference list, checking its magic, version, length, checksum
/// and order.
pub fn decode_refs(bytes: &[u8]) -> Result<Vec<ChunkId>, PackError> {
    let bad = |reason: String| PackError::BadFormat { what: WHAT, reason };
    let mut take = Take::new(bytes);
    let magic = take.array::<4>().ok_or_else(|| bad(format!("{} bytes is too short", bytes.len())))?;
    if magic != REFS_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = take.u8().ok_or_else(|| bad("truncated before the version".into()))?;
    if version != REFS_VERSION {
        return Err(PackError::UnsupportedVersion { what: WHAT, version });
    }
    let count = take.u64_le().ok_or_else(|| bad("truncated before the count".into()))?;
    // The length is checked against the count before anything is allocated,
    // so a corrupted count cannot ask for memory the input does not back.
    let expected = count
        .checked_mul(ChunkId::LEN as u64)
        .and_then(|ids| ids.checked_add((HEADER_LEN + CHECKSUM_LEN) as u64))
        .ok_or_else(|| bad(format!("count {count} is impossible")))?;
    if expected != bytes.len() as u64 {
        return Err(bad(format!("count {count} needs {expected} bytes, got {}", bytes.len())));
    }
    let (covered, checksum) = bytes.split_last_chunk::<CHECKSUM_LEN>().ok_or_else(|| bad("no checksum".into()))?;
    if blake3::hash(covered) != *checksum {
        return Err(bad("checksum mismatch".into()));
    }

    let mut ids = Take::new(covered.get(HEADER_LEN..).ok_or_else(|| bad("truncated header".into()))?);
    let mut out: Vec<ChunkId> = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(id) = ids.array::<{ ChunkId::LEN }>() {
        let id = ChunkId(*id);
        if out.last().is_some_and(|prev| *prev >= id) {
            return Err(bad(format!("ids out of order at position {}", out.len())));
        }
        out.push(id);
    }
    if out.len() as u64 != count {
        return Err(bad(format!("holds {} ids, declares {count}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn encode_sorts_and_dedups() {
        let bytes = encode_refs(&[id(3), id(1), id(3), id(2), id(1)]);
        assert_eq!(decode_refs(&bytes).unwrap(), vec![id(1), id(2), id(3)]);
        assert_eq!(bytes.len(), HEADER_LEN + 3 * 32 + CHECKSUM_LEN);
        assert_eq!(&bytes[..4], REFS_MAGIC);
    }

    #[test]
    fn empty_list_round_trips() {
        let bytes = encode_refs(&[]);
        assert_eq!(bytes.len(), HEADER_LEN + CHECKSUM_LEN);
        assert!(decode_refs(&bytes).unwrap().is_empty());
    }

    /// Builds a list without encode's sorting, with a valid checksum.
    fn raw_list(ids: &[ChunkId], count: u64) -> Vec<u8> {
        let mut out = REFS_MAGIC.to_vec();
        out.push(REFS_VERSION);
        out.extend_from_slice(&count.to_le_bytes());
        for id in ids {
            out.extend_from_slice(id.as_bytes());
        }
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    #[test]
    fn unsorted_or_duplicate_ids_are_rejected_even_with_a_good_checksum() {
        for ids in [vec![id(2), id(1)], vec![id(1), id(1)], vec![id(1), id(3), id(2)]] {
            let err = decode_refs(&raw_list(&ids, ids.len() as u64)).unwrap_err();
            assert!(matches!(&err, PackError::BadFormat { reason, .. } if reason.contains("order")), "{err:?}");
        }
    }

    #[test]
    fn a_lying_count_is_rejected_without_allocating() {
        for count in [0, 1, 3, u64::MAX, u64::MAX / 32, 1 << 40] {
            assert!(matches!(decode_refs(&raw_list(&[id(1), id(2)], count)), Err(PackError::BadFormat { .. })));
        }
    }

    #[test]
    fn version_and_magic_are_checked() {
        let mut bytes = encode_refs(&[id(1)]);
        bytes[4] = 9;
        assert_eq!(decode_refs(&bytes).unwrap_err(), PackError::UnsupportedVersion { what: WHAT, version: 9 });
        bytes[4] = REFS_VERSION;
        bytes[0] = b'X';
        assert!(matches!(decode_refs(&bytes), Err(PackError::BadFormat { .. })));
    }

    #[test]
    fn every_flip_and_truncation_is_an_error() {
        let bytes = encode_refs(&[id(1), id(5), id(9)]);
        for pos in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[pos] ^= mask;
                assert!(decode_refs(&bad).is_err(), "flip {mask:#x} at {pos} went unnoticed");
            }
        }
        for len in 0..bytes.len() {
            assert!(decode_refs(&bytes[..len]).is_err(), "truncation to {len} went unnoticed");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_refs(&long).is_err());
    }
}
