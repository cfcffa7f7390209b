//! `coffer gc`: reclaiming the space of chunks no snapshot references,
//! without any repository key.
//!
//! The protocol (design brief section 6, with the sweep made safe by
//! condemning only at a quiet moment):
//! 1. Mark: read the reference list (an unencrypted refs pack) of every
//!    live snapshot; their union is what is live. Everything else in the
//!    chunk index is dead.
//! 2. Condemn the dead chunks through Raft. The metadata plane refuses while
//!    a backup session of the repository is open, or if the snapshots changed
//!    since the mark; the collector then marks again, until `wait` runs out.
//!    From condemnation on, lookups treat those chunks as absent, so later
//!    backups upload them again and their commit revives them elsewhere.
//! 3. Sweep: drop the index entries still condemned.
//! 4. Drop the records of packs (seen at the mark) that no entry points into
//!    any more and that are no live snapshot's reference list, then delete
//!    their shards on the storage nodes. A crash in between leaves orphan
//!    shards, which cost space but never correctness.
//!
//! 5. Rewrite packs whose dead share of bytes reaches one half: their live
//!    blobs are copied, still encrypted (no key needed: a blob is an opaque
//!    byte range), into a new pack that is committed like any other; the
//!    entries are then pointed at it (`Relocate`) and the old pack dropped
//!    as in step 4, which the metadata plane allows only once nothing points
//!    into it any more.
//!
//! The invariant: no chunk referenced by a committed snapshot is deleted. A
//! condemned chunk is referenced by no snapshot (the mark was current) and
//! held by no session (none was open); a session begun later lists its
//! parent after it began, and every snapshot it can list references only
//! chunks that are live or were stored again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_pack::decode_refs;
use coffer_proto::pb;
use coffer_types::{ChunkId, ChunkLocation, PackId, PackKind, RepoName, SessionId};
use serde::Serialize;
use tonic::Code;

use crate::check::{chunk_index, placed_packs, read_pack, Placed};
use crate::repo::list_snapshots;
use crate::stats::Counters;
use crate::upload::{PackEntry, PackWriter};
use crate::ClientError;
use coffer_rpc::ShardPool;
use coffer_rpc::{shard_client, MetaClient, RpcError};

/// Ids per Raft command, as the metadata plane bounds them.
const BATCH: usize = 1_000;
/// Pause between attempts to condemn while backups run.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// A partly dead pack is rewritten once at least this share of its bytes is dead.
pub const REWRITE_DEAD_SHARE: f64 = 0.5;

#[derive(Clone, Debug, Serialize, Default)]
pub struct GcSummary {
    pub snapshots: u64,
    pub chunks_indexed: u64,
    pub chunks_live: u64,
    pub chunks_swept: u64,
    pub packs_dropped: u64,
    /// Shard bytes deleted from storage nodes (all k+m shards of each pack).
    pub bytes_freed: u64,
    /// Shards that could not be deleted (node unreachable); their pack
    /// record is gone, so they are orphans that cost only space.
    pub shards_not_deleted: u64,
    /// Packs with some dead chunks that were kept whole (less than half dead).
    pub packs_partly_dead: u64,
    /// Packs whose live blobs were copied into a new pack.
    pub packs_rewritten: u64,
    /// Shard bytes the rewritten packs occupy.
    pub bytes_written: u64,
    /// Marks made before the condemnation went through.
    pub marks: u32,
}

/// Collects the garbage of `repo`, waiting at most `wait` for a moment when
/// no backup of it runs.
pub async fn collect_garbage(
    meta: &Arc<MetaClient>,
    repo: &RepoName,
    wait: Duration,
) -> Result<GcSummary, ClientError> {
    let deadline = Instant::now() + wait;
    let pool = ShardPool::default();
    let mut summary = GcSummary::default();
    let (dead, packs, index, refs_packs) = loop {
        summary.marks += 1;
        let snaps = list_snapshots(meta, repo).await?;
        let index = chunk_index(meta, repo).await?;
        let mut pack_ids: BTreeSet<PackId> = index.values().map(|l| l.pack).collect();
        let refs_packs: HashSet<PackId> = snaps.iter().map(|s| s.refs_pack).collect();
        pack_ids.extend(refs_packs.iter().copied());
        let packs = placed_packs(meta, &pack_ids).await?;
        let mut live: HashSet<ChunkId> = HashSet::new();
        for s in &snaps {
            let p = packs.get(&s.refs_pack).ok_or(ClientError::PackNotFound { pack: s.refs_pack })?;
            let read = read_pack(&pool, p).await;
            let bytes = read.bytes.ok_or_else(|| ClientError::DataLoss {
                pack: s.refs_pack,
                reason: format!(
                    "the reference list of snapshot {} is unreadable ({}); nothing can be collected safely",
                    s.id,
                    read.bad.join("; ")
                ),
            })?;
            live.extend(decode_refs(&bytes)?);
        }
        let dead: Vec<ChunkId> = index.keys().filter(|c| !live.contains(c)).copied().collect();
        summary.snapshots = snaps.len() as u64;
        summary.chunks_indexed = index.len() as u64;
        summary.chunks_live = index.len().saturating_sub(dead.len()) as u64;
        let marked: Vec<Vec<u8>> = snaps.iter().map(|s| s.id.0.to_vec()).collect();
        match condemn(meta, repo, &dead, &marked).await {
            Ok(()) => break (dead, packs, index, refs_packs),
            Err(RpcError::Rpc { status, .. }) if status.code() == Code::FailedPrecondition => {
                if Instant::now() >= deadline {
                    return Err(ClientError::GcBusy { repo: repo.clone(), reason: status.message().to_string() });
                }
                tracing::info!(%repo, reason = status.message(), "garbage collection waits");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => return Err(e.into()),
        }
    };

    for batch in dead.chunks(BATCH) {
        let req = pb::SweepRequest { repo: repo.to_string(), chunk_ids: batch.iter().map(|c| c.0.to_vec()).collect() };
        meta.call_maintenance("Sweep", |mut c| {
            let req = req.clone();
            async move { c.sweep(req).await }
        })
        .await?;
    }
    summary.chunks_swept = dead.len() as u64;

    // Packs seen at the mark: entirely dead ones go, partly dead ones stay.
    let dead_set: HashSet<&ChunkId> = dead.iter().collect();
    let mut live_in: HashMap<PackId, usize> = HashMap::new();
    for (c, loc) in &index {
        if !dead_set.contains(c) {
            *live_in.entry(loc.pack).or_default() += 1;
        }
    }
    // The metadata plane checks again that nothing points into a pack it drops.
    let mut candidates: Vec<PackId> =
        packs.keys().filter(|id| !live_in.contains_key(id) && !refs_packs.contains(id)).copied().collect();
    let partly: HashSet<PackId> = index
        .iter()
        .filter(|(c, l)| dead_set.contains(c) && live_in.contains_key(&l.pack))
        .map(|(_, l)| l.pack)
        .collect();
    for id in &partly {
        let Some(p) = packs.get(id) else { continue };
        let live: Vec<(ChunkId, ChunkLocation)> =
            index.iter().filter(|(c, l)| l.pack == *id && !dead_set.contains(c)).map(|(c, l)| (*c, *l)).collect();
        let live_bytes: u64 = live.iter().map(|(_, l)| l.len as u64).sum();
        let dead_share = 1.0 - live_bytes as f64 / p.record.pack_len.max(1) as f64;
        if dead_share < REWRITE_DEAD_SHARE || p.record.kind == PackKind::Refs {
            summary.packs_partly_dead += 1;
            continue;
        }
        match rewrite(meta, repo, &pool, p, live).await {
            Ok(written) => {
                summary.packs_rewritten += 1;
                summary.bytes_written += written;
                candidates.push(*id);
            }
            Err(e) => {
                tracing::warn!(pack = %id, error = %e, "rewriting a mostly dead pack failed; it is kept whole");
                summary.packs_partly_dead += 1;
            }
        }
    }
    for batch in candidates.chunks(BATCH) {
        let req =
            pb::DropPacksRequest { repo: repo.to_string(), pack_ids: batch.iter().map(|p| p.0.to_vec()).collect() };
        let resp = meta
            .call_maintenance("DropPacks", |mut c| {
                let req = req.clone();
                async move { c.drop_packs(req).await }
            })
            .await?;
        for raw in resp.dropped {
            let id = PackId::from_slice(&raw)
                .map_err(|e| ClientError::BadResponse { what: "DropPacks", reason: e.to_string() })?;
            let Some(p) = packs.get(&id) else { continue };
            summary.packs_dropped += 1;
            for (s, addr) in p.record.shards.iter().zip(&p.addrs) {
                let deleted = match addr {
                    Some(a) => delete_shard(a, id, s.index.0).await,
                    None => Err("its node is unknown".to_string()),
                };
                match deleted {
                    Ok(true) => summary.bytes_freed += p.record.shard_len,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pack = %id, shard = s.index.0, node = %s.node, error = %e, "shard not deleted; it is an orphan now");
                        summary.shards_not_deleted += 1;
                    }
                }
            }
        }
    }
    Ok(summary)
}

/// Copies the live blobs of `p` into a new pack, commits it and points
/// their entries at it; returns the new pack's shard bytes.
async fn rewrite(
    meta: &Arc<MetaClient>,
    repo: &RepoName,
    pool: &ShardPool,
    p: &Placed,
    mut live: Vec<(ChunkId, ChunkLocation)>,
) -> Result<u64, ClientError> {
    let read = read_pack(pool, p).await;
    let bytes = read.bytes.ok_or_else(|| ClientError::DataLoss {
        pack: p.record.id,
        reason: format!("fewer than k shards readable: {}", read.bad.join("; ")),
    })?;
    live.sort_by_key(|(_, l)| l.offset);
    let mut buf = Vec::with_capacity(live.iter().map(|(_, l)| l.len as usize).sum());
    let mut entries = Vec::with_capacity(live.len());
    for (id, loc) in &live {
        let blob = usize::try_from(loc.offset)
            .ok()
            .and_then(|o| bytes.get(o..o.checked_add(loc.len as usize)?))
            .ok_or_else(|| ClientError::BadResponse {
                what: "chunk index",
                reason: format!("chunk {id} lies outside its pack"),
            })?;
        entries.push(PackEntry { id: *id, offset: buf.len() as u64, len: loc.len });
        buf.extend_from_slice(blob);
    }
    // The metadata plane commits a pack only in an open session, so the
    // copy gets one of its own, open just while it is stored (after this
    // run's condemnation, so it holds back only a concurrent collector).
    let session = SessionId::random();
    crate::backup::begin_session(meta, repo, session, crate::backup::SESSION_LEASE).await?;
    let writer = PackWriter {
        meta: meta.clone(),
        repo: repo.clone(),
        session,
        shards: Arc::new(ShardPool::default()),
        counters: Arc::new(Counters::default()),
    };
    let stored = writer.store(p.record.kind, buf, &entries).await;
    crate::backup::end_session(meta, session).await;
    let record = stored?;
    for batch in entries.chunks(BATCH) {
        let req = pb::RelocateRequest {
            repo: repo.to_string(),
            from_pack: p.record.id.0.to_vec(),
            chunks: batch
                .iter()
                .map(|e| {
                    coffer_proto::location_to_pb(
                        &e.id,
                        &ChunkLocation { pack: record.id, offset: e.offset, len: e.len },
                    )
                })
                .collect(),
        };
        meta.call_maintenance("Relocate", |mut c| {
            let req = req.clone();
            async move { c.relocate(req).await }
        })
        .await?;
    }
    Ok(record.shard_len * record.shards.len() as u64)
}

async fn condemn(meta: &MetaClient, repo: &RepoName, dead: &[ChunkId], marked: &[Vec<u8>]) -> Result<(), RpcError> {
    // An empty condemnation still checks that no backup runs, which keeps
    // the later pack drop as safe as the chunk sweep.
    let batches: Vec<&[ChunkId]> = if dead.is_empty() { vec![&[]] } else { dead.chunks(BATCH).collect() };
    for batch in batches {
        let req = pb::CondemnRequest {
            repo: repo.to_string(),
            chunk_ids: batch.iter().map(|c| c.0.to_vec()).collect(),
            marked_from: marked.to_vec(),
        };
        meta.call_maintenance("Condemn", |mut c| {
            let req = req.clone();
            async move { c.condemn(req).await }
        })
        .await?;
    }
    Ok(())
}

/// Deletes one shard; `Ok(false)` when it was already gone.
async fn delete_shard(addr: &str, pack: PackId, index: u8) -> Result<bool, String> {
    let mut client = shard_client(addr).map_err(|e| e.to_string())?;
    let req = pb::ShardRef { pack_id: pack.0.to_vec(), index: index as u32 };
    match client.delete_shard(req).await {
        Ok(_) => Ok(true),
        // Already gone (an earlier, interrupted run): nothing left to free.
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(s.message().to_string()),
    }
}
