//! The decoders a storage node runs on bytes it did not write itself, as
//! entry points for the `cargo fuzz` targets in `fuzz/` and for the replay
//! of their corpora in `make test` (`tests/corpus.rs`): both call exactly
//! these functions, so a crash the fuzzer found stays a regression test.
//!
//! Each entry point takes arbitrary bytes and must return without
//! panicking, whatever they are. Where a checksum would stop the fuzzer at
//! the first field, the first input byte can ask for it to be recomputed,
//! so that the fields behind it are explored too.

use std::path::Path;

use coffer_proto::pb;
use prost::Message;

use crate::shard_file::{self, FIXED_HEADER_LEN};

/// The header checksum's place in the fixed header.
const HEADER_SUM: std::ops::Range<usize> = FIXED_HEADER_LEN - 32..FIXED_HEADER_LEN;

/// Shard file headers (fixed part and block table), as the node reads them
/// from disk, and their wire form (`ShardHeader` of a put).
/// `data[0]` bit 0: recompute the header checksum of `data[1..]`.
pub fn shard_header(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 != 0 {
        fix_header_checksum(&mut bytes);
    }
    if let Ok((header, region)) = shard_file::decode_fixed(&bytes) {
        assert!(region >= FIXED_HEADER_LEN);
        assert!(header.validate().is_ok(), "decode_fixed accepted an invalid header");
    }
    if let Ok((header, hashes, body_offset)) = shard_file::decode_header(&bytes) {
        // What decodes is what encodes.
        let again = shard_file::encode_header(&header, &hashes);
        assert_eq!(again.len() as u64, body_offset);
        assert_eq!(&bytes[..again.len()], &again[..]);
    }
    if let Ok(h) = pb::ShardHeader::decode(rest) {
        if let Ok(header) = crate::service::header_from_pb(&h) {
            assert!(header.validate().is_ok(), "header_from_pb accepted an invalid header");
        }
    }
}

/// Whole shard files through the node's reader: header, block table and
/// body, ranged reads and a full verification. `scratch` is a directory
/// the input is written to. `data[0]` bit 0: recompute the header checksum;
/// bit 1: recompute the block hashes and the body checksum from the body,
/// so that reads get past them.
pub fn shard_file(data: &[u8], scratch: &Path) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 2 != 0 {
        fix_body_checksums(&mut bytes);
    }
    if mode & 1 != 0 {
        fix_header_checksum(&mut bytes);
    }
    let path = scratch.join("fuzz.shard");
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    let Ok(reader) = crate::store::open_reader_at(&path) else { return };
    let body_len = reader.header().body_len;
    if let Ok(body) = reader.read_range(0, 0) {
        assert_eq!(body.len() as u64, body_len);
    }
    // A range named by the input itself, in or out of bounds.
    let pick = |at: usize| bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let (offset, len) = (pick(12) % (body_len + 2), pick(32) % (body_len + 2));
    if let Ok(part) = reader.read_range(offset, len) {
        assert!(offset + part.len() as u64 <= body_len);
    }
    let _ = reader.verify();
}

fn fix_header_checksum(bytes: &mut [u8]) {
    if bytes.len() >= FIXED_HEADER_LEN {
        let sum = blake3::hash(&bytes[..HEADER_SUM.start]);
        bytes[HEADER_SUM].copy_from_slice(sum.as_bytes());
    }
}

/// Rewrites the block table and the body checksum to match the body that
/// follows them, when the fixed header's lengths fit the bytes.
fn fix_body_checksums(bytes: &mut [u8]) {
    if bytes.len() < FIXED_HEADER_LEN {
        return;
    }
    let body_len = u64::from_le_bytes(bytes[32..40].try_into().unwrap_or([0; 8]));
    if body_len > shard_file::MAX_BODY_LEN {
        return;
    }
    let blocks = shard_file::block_count(body_len) as usize;
    let body_at = FIXED_HEADER_LEN + 32 * blocks;
    let Some(body) = bytes.get(body_at..).map(<[u8]>::to_vec) else { return };
    let hashes = shard_file::block_hashes(&body);
    for (i, h) in hashes.iter().take(blocks).enumerate() {
        bytes[FIXED_HEADER_LEN + 32 * i..FIXED_HEADER_LEN + 32 * (i + 1)].copy_from_slice(h.as_bytes());
    }
    bytes[44..48].copy_from_slice(&(blocks as u32).to_le_bytes());
    bytes[48..80].copy_from_slice(blake3::hash(&body).as_bytes());
}
