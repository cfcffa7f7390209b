//! Reference lists: the sorted, deduplicated chunk ids one snapshot
//! references. They are stored unencrypted, as system objects, so that the
//! cluster can collect garbage without any repository key; they hold ids
//! only, never content.
//!
//! ```text
//!   "CFRF" | version u8 | count u64 LE | count × id [32], strictly ascending | BLAKE3 of all before [32]
//! ```
//!
//! This module lives in `coffer-types`, not in `coffer-pack`, so that the
//! metadata plane's garbage collector can read reference lists without
//! linking any repository key code; `coffer_pack::decode_refs` wraps it.
//!
//! The invariant kept here: a decoded list is exactly what was encoded,
//! strictly ascending, or an error. Garbage collection must never act on a
//! list that lost or gained an id, since a lost id means a live chunk is
//! deleted.

use crate::ChunkId;

const REFS_MAGIC: &[u8; 4] = b"CFRF";
const REFS_VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 8;
const CHECKSUM_LEN: usize = 32;

/// Why a reference list did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefsError {
    #[error("reference list: {reason}")]
    BadFormat { reason: String },
    #[error("reference list: unsupported version {version}")]
    UnsupportedVersion { version: u8 },
}

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
pub fn decode_refs(bytes: &[u8]) -> Result<Vec<ChunkId>, RefsError> {
    let bad = |reason: String| RefsError::BadFormat { reason };
    let magic = bytes.get(..4).ok_or_else(|| bad(format!("{} bytes is too short", bytes.len())))?;
    if magic != REFS_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = *bytes.get(4).ok_or_else(|| bad("truncated before the version".into()))?;
    if version != REFS_VERSION {
        return Err(RefsError::UnsupportedVersion { version });
    }
    let count = bytes
        .get(5..HEADER_LEN)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| bad("truncated before the count".into()))?;
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

    let ids = covered.get(HEADER_LEN..).ok_or_else(|| bad("truncated header".into()))?;
    let mut out: Vec<ChunkId> = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for raw in ids.chunks_exact(ChunkId::LEN) {
        let Ok(id) = <[u8; ChunkId::LEN]>::try_from(raw) else { break };
        let id = ChunkId(id);
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
