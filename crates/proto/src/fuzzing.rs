//! The pb → types conversions on arbitrary bytes, as the entry point for the
//! `cargo fuzz` target in `fuzz/` and for the replay of its corpus in
//! `make test` (`tests/corpus.rs`): both call exactly this function.
//!
//! The input is decoded as each inbound message (a hostile peer controls
//! every byte of it), and what decodes goes through the conversion a
//! service would apply. Whatever a conversion accepts must keep the
//! invariants the rest of the system relies on.

use coffer_types::{NodeRecord, PackRecord, RepoRecord, SnapshotRecord, MAX_SHARD_LEN};
use prost::Message;

use crate::limits;
use crate::{location_from_pb, params_from_pb, pb};

/// Decodes `data` as every message that carries records into a service,
/// and converts what decodes.
pub fn pb_conversions(data: &[u8]) {
    if let Ok(p) = pb::Pack::decode(data) {
        pack(p);
    }
    if let Ok(r) = pb::CommitPackRequest::decode(data) {
        if let Some(p) = r.pack {
            pack(p);
        }
        for l in r.chunks.iter().take(limits::MAX_COMMIT_CHUNKS) {
            let _ = location_from_pb(l);
        }
    }
    if let Ok(r) = pb::CreateRepoRequest::decode(data) {
        if let Some(repo) = r.repo {
            repo_record(repo);
        }
    }
    if let Ok(r) = pb::Repo::decode(data) {
        repo_record(r);
    }
    if let Ok(r) = pb::CommitSnapshotRequest::decode(data) {
        if let Some(s) = r.snapshot {
            snapshot(s);
        }
    }
    if let Ok(n) = pb::Node::decode(data) {
        if let Ok(rec) = NodeRecord::try_from(n) {
            assert!(rec.addr.len() <= limits::MAX_ADDR_BYTES);
        }
    }
    if let Ok(p) = pb::ErasureParams::decode(data) {
        if let Ok(params) = params_from_pb(Some(p)) {
            assert!(params.k() >= 1 && params.total() <= coffer_types::MAX_SHARDS as usize);
        }
    }
    if let Ok(r) = pb::RelocateRequest::decode(data) {
        for l in &r.chunks {
            let _ = location_from_pb(l);
        }
    }
}

fn pack(p: pb::Pack) {
    let Ok(rec) = PackRecord::try_from(p) else { return };
    assert_eq!(rec.shards.len(), rec.params.total());
    assert!(rec.shard_len <= MAX_SHARD_LEN && rec.pack_len <= limits::MAX_PACK_LEN);
    assert!(u128::from(rec.shard_len) * rec.params.k() as u128 >= u128::from(rec.pack_len));
    // What is accepted goes back out unchanged.
    assert_eq!(PackRecord::try_from(pb::Pack::from(&rec)).ok().as_ref(), Some(&rec));
}

fn repo_record(r: pb::Repo) {
    let Ok(rec) = RepoRecord::try_from(r) else { return };
    assert!(rec.key_slots.len() <= limits::MAX_KEY_SLOTS);
    assert!(rec.key_slots.iter().all(|s| s.len() <= limits::MAX_KEY_SLOT_BYTES));
}

fn snapshot(s: pb::Snapshot) {
    let Ok(rec) = SnapshotRecord::try_from(s) else { return };
    assert!(rec.tags.len() <= limits::MAX_TAGS);
    assert_eq!(SnapshotRecord::try_from(pb::Snapshot::from(&rec)).ok().as_ref(), Some(&rec));
}
