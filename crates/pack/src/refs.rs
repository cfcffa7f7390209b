//! Reference lists: the sorted, deduplicated chunk ids one snapshot
//! references, stored unencrypted so that the cluster can collect garbage
//! without any repository key. The format and its codec live in
//! `coffer_types::refs` (key-free, so the metadata plane reads lists without
//! linking key code); this module maps its errors into `PackError`.

use coffer_types::refs::RefsError;
use coffer_types::ChunkId;

use crate::PackError;

#[cfg(test)]
const REFS_MAGIC: &[u8; 4] = b"CFRF";
#[cfg(test)]
const REFS_VERSION: u8 = 1;
#[cfg(test)]
const HEADER_LEN: usize = 4 + 1 + 8;
#[cfg(test)]
const CHECKSUM_LEN: usize = 32;
const WHAT: &str = "reference list";

/// Encodes the ids as a reference list, sorting and deduplicating a copy.
pub fn encode_refs(ids: &[ChunkId]) -> Vec<u8> {
    coffer_types::refs::encode_refs(ids)
}

/// Decodes a reference list, checking its magic, version, length, checksum
/// and order.
pub fn decode_refs(bytes: &[u8]) -> Result<Vec<ChunkId>, PackError> {
    coffer_types::refs::decode_refs(bytes).map_err(|e| match e {
        RefsError::BadFormat { reason } => PackError::BadFormat { what: WHAT, reason },
        RefsError::UnsupportedVersion { version } => PackError::UnsupportedVersion { what: WHAT, version },
    })
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
