//! What one message, one batch and one client-supplied value may be, per
//! service. A peer that sends more gets OUT_OF_RANGE (message size, from
//! tonic's length-prefix check) or INVALID_ARGUMENT naming the field and the bound (the
//! checks at the service edges and in the pb → types conversions), before
//! anything of the claimed size is allocated.
//!
//! The sizes follow from the batch bounds: a request carries at most its
//! batch of fixed-size entries, so its limit is that batch's encoded size
//! with a margin, not one number for every service. Answers that are not
//! paginated (ListSnapshots, ListShards, ClusterStatus) keep
//! `MAX_MESSAGE_BYTES`.

use coffer_types::MAX_FRAME_BYTES;

use crate::MAX_MESSAGE_BYTES;

/// The largest encoded `ChunkLocation` inside a repeated field: a 32-byte
/// id, a 16-byte pack id, a varint offset and length, and their tags.
pub const CHUNK_LOCATION_WIRE_BYTES: usize = 2 + 34 + 18 + 11 + 6;

/// Chunk ids in one `LookupChunks` request (the agent sends 10 000).
pub const MAX_LOOKUP_IDS: usize = 10_000;
/// Pack ids in one `GetPacks` request (the agents send 1 000).
pub const MAX_GET_PACKS: usize = 10_000;
/// Chunk locations in one `CommitPack`: one per blob of the pack, and the
/// agent closes a pack at 65 536 blobs.
pub const MAX_COMMIT_CHUNKS: usize = 65_536;
/// Bad-shard reports in one `ReportBadShards` (each becomes a Raft write).
pub const MAX_BAD_SHARD_REPORTS: usize = 1_000;
/// Key slots a repository record may carry, and the size of one.
pub const MAX_KEY_SLOTS: usize = 16;
pub const MAX_KEY_SLOT_BYTES: usize = 16 * 1024;
/// A snapshot's host, path, tags: text the catalog keeps for ever.
pub const MAX_HOST_BYTES: usize = 255;
/// (The path is every backed-up path, comma-joined.)
pub const MAX_PATH_BYTES: usize = 64 << 10;
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_BYTES: usize = 256;
/// A node's or member's advertised address, and its site's name.
pub const MAX_ADDR_BYTES: usize = 512;
pub const MAX_SITE_BYTES: usize = 64;
/// The largest pack the catalog records: far above the agents' 16 MiB packs
/// and a 256 MiB tree, and what one rebuild may hold in memory (k shards).
pub const MAX_PACK_LEN: u64 = 1 << 30;
/// Sources named by one `RebuildShard` (at most one per shard of a pack).
pub const MAX_REBUILD_SOURCES: usize = coffer_types::MAX_SHARDS as usize;
/// The slowest rebuild bandwidth a caller may ask for (0 means no limit).
/// The node's rate limiter is shared by every rebuild, so a request for a
/// few bytes per second would otherwise stall all of them for days.
pub const MIN_REBUILD_BANDWIDTH: u64 = 1 << 20;
/// Longest lease a backup session may ask for (0 asks for the default).
pub const MAX_LEASE_MS: u64 = 7 * 24 * 3600 * 1000;

/// Limits of one service: the largest message it decodes (requests on a
/// server, answers on a client) and encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    pub request: usize,
    pub response: usize,
}

/// Catalog: the largest request is a `CommitPack` of `MAX_COMMIT_CHUNKS`
/// locations (about 4.6 MiB) with its pack record; answers include the
/// unpaginated lists.
pub const CATALOG: MessageLimits =
    MessageLimits { request: MAX_COMMIT_CHUNKS * CHUNK_LOCATION_WIRE_BYTES + (1 << 20), response: MAX_MESSAGE_BYTES };

/// Maintenance: forgets of 10 000 snapshot ids, condemns, sweeps and drops of
/// 1 000 ids, relocations of 1 000 locations: well under 1 MiB. Answers
/// are ListChunks pages (50 000 locations, about 3.5 MiB) and hold lists.
pub const MAINTENANCE: MessageLimits = MessageLimits { request: 1 << 20, response: 16 << 20 };

/// Admin (join, remove, metrics, digest): a few small fields each way.
pub const ADMIN: MessageLimits = MessageLimits { request: 64 << 10, response: 1 << 20 };

/// Raft: an append carries at most `max_payload_entries` (16) entries of
/// commands that the service edges bound to well under 1 MiB each; a
/// snapshot travels in chunks of openraft's `snapshot_max_chunk_size`
/// (3 MiB).
pub const RAFT: MessageLimits = MessageLimits { request: 32 << 20, response: 32 << 20 };

/// Shard store: a put frame is at most `MAX_FRAME_BYTES` of data plus the
/// service's slack; answers are frames of the same size, or unpaginated
/// shard lists.
pub const SHARD_STORE: MessageLimits =
    MessageLimits { request: MAX_FRAME_BYTES + (64 << 10), response: MAX_MESSAGE_BYTES };

/// Refuses more than `max` entries in the repeated field `field`.
pub fn check_count(field: &'static str, len: usize, max: usize) -> Result<(), crate::ProtoError> {
    if len > max {
        return Err(crate::ProtoError::Bad { field, reason: format!("{len} entries; at most {max}") });
    }
    Ok(())
}

/// Refuses more than `max` bytes in the field `field`.
pub fn check_bytes(field: &'static str, len: usize, max: usize) -> Result<(), crate::ProtoError> {
    if len > max {
        return Err(crate::ProtoError::Bad { field, reason: format!("{len} bytes; at most {max}") });
    }
    Ok(())
}

/// A source registry report: its strategy text and the error of its last
/// run (the agent cuts longer errors before reporting).
pub const MAX_SOURCE_STRATEGY_BYTES: usize = 64;
pub const MAX_SOURCE_ERROR_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    #[test]
    fn the_largest_location_fits_its_wire_estimate() {
        let loc = pb::ChunkLocation { chunk_id: vec![0xff; 32], pack: vec![0xff; 16], offset: u64::MAX, len: u32::MAX };
        let req = pb::CommitPackRequest { session_id: vec![], pack: None, chunks: vec![loc] };
        assert!(req.encoded_len() <= CHUNK_LOCATION_WIRE_BYTES, "{}", req.encoded_len());
    }

    #[test]
    fn a_full_commit_pack_fits_the_catalog_limit() {
        let loc = pb::ChunkLocation { chunk_id: vec![0xff; 32], pack: vec![0xff; 16], offset: u64::MAX, len: u32::MAX };
        let shard = pb::Shard { index: 63, node: u64::MAX, checksum: vec![0xff; 32] };
        let pack = pb::Pack {
            id: vec![0xff; 16],
            repo: "r".repeat(64),
            kind: "data".into(),
            params: Some(pb::ErasureParams { k: 32, m: 32 }),
            pack_len: u64::MAX,
            shard_len: u64::MAX,
            shards: vec![shard; 64],
        };
        let req = pb::CommitPackRequest {
            session_id: vec![0xff; 16],
            pack: Some(pack),
            chunks: vec![loc; MAX_COMMIT_CHUNKS],
        };
        assert!(req.encoded_len() <= CATALOG.request, "{} > {}", req.encoded_len(), CATALOG.request);
    }

    #[test]
    fn a_full_put_frame_fits_the_shard_limit() {
        let frame =
            pb::PutShardRequest { msg: Some(pb::put_shard_request::Msg::Data(vec![0; MAX_FRAME_BYTES + 4096].into())) };
        assert!(frame.encoded_len() <= SHARD_STORE.request);
    }
}
