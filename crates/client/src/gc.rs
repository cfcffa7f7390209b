//! `coffer gc`: asking the metadata leader's collector for a run and
//! waiting for it, without any repository key.
//!
//! Collection itself is a duty of the cluster (`coffer_meta`'s `gc` worker
//! and the rules of `meta/src/gc.rs`): the leader marks from the
//! unencrypted reference lists, condemns, waits for the sessions open at
//! condemnation, re-marks, sweeps, drops dead packs and deletes their
//! shards, and records each run in the catalog, so a run survives this
//! process and a leader change. `RunGc` asks for a run, `GcStatus` tells
//! when the run that answers the request is done.
//!
//! What is still done here, after the run (`--wait` with a repository):
//! rewriting packs whose dead share of bytes reaches one half. Their live
//! blobs are copied, still encrypted (a blob is an opaque byte range), into
//! a new pack committed in a session of its own; `Relocate` points the
//! entries at it; a second run asked for then drops the old pack, which the
//! metadata plane allows only once nothing points into it. A process that
//! dies half-way leaves at worst a copy nothing points into, which the next
//! run drops.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::pb;
use coffer_types::{ChunkId, ChunkLocation, PackId, PackKind, RepoName, SessionId};
use serde::Serialize;

use crate::check::{chunk_index, placed_packs, read_pack, Placed};
use crate::stats::Counters;
use crate::upload::{PackEntry, PackWriter};
use crate::ClientError;
use coffer_rpc::ShardPool;
use coffer_rpc::{MetaClient, RpcError};

/// Ids per Raft command, as the metadata plane bounds them.
const BATCH: usize = 1_000;
/// Pause between looks at the collector's status.
const POLL: Duration = Duration::from_millis(500);
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
    /// Reference-list reads of the runs (marks and re-marks).
    pub marks: u32,
    /// The collector run that answered (the last one, with rewrites).
    pub run: u64,
    pub chunks_condemned: u64,
    /// Condemned chunks that a snapshot committed during the round
    /// references: kept.
    pub chunks_spared: u64,
    /// Repositories whose sweep waits for sessions that were open at
    /// condemnation; their space comes back in a later run.
    pub repos_waiting: u64,
    /// Repositories the run could not collect, and why.
    pub errors: Vec<String>,
}

/// Asks the leader for a collector run; returns the run's number.
pub async fn request_run(meta: &MetaClient) -> Result<u64, ClientError> {
    let resp = meta.call_maintenance("RunGc", |mut c| async move { c.run_gc(pb::RunGcRequest {}).await }).await?;
    Ok(resp.run)
}

/// The collector's state as the catalog holds it.
pub async fn status(meta: &MetaClient) -> Result<pb::GcStatus, ClientError> {
    Ok(meta.call_maintenance("GcStatus", |mut c| async move { c.gc_status(pb::GcStatusRequest {}).await }).await?)
}

/// Waits until run `run` (or a later one) is done, at most `wait`.
pub async fn wait_for_run(meta: &MetaClient, run: u64, wait: Duration) -> Result<pb::GcRun, ClientError> {
    let deadline = Instant::now() + wait;
    loop {
        // A leader change in between is answered by the next leader.
        match status(meta).await {
            Ok(s) => {
                if let Some(last) = s.last.filter(|l| l.run >= run) {
                    return Ok(last);
                }
            }
            Err(ClientError::Conn(e))
                if matches!(e, RpcError::Unreachable { .. }) || e.code() == Some(tonic::Code::Unavailable) =>
            {
                tracing::info!(error = %e, "garbage collection status unavailable; asking again");
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(ClientError::GcNotDone { run, wait });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn add_run(summary: &mut GcSummary, r: &pb::GcRun) {
    summary.snapshots += r.snapshots;
    summary.chunks_indexed += r.chunks_indexed;
    summary.chunks_live += r.chunks_live;
    summary.chunks_condemned += r.chunks_condemned;
    summary.chunks_swept += r.chunks_swept;
    summary.chunks_spared += r.chunks_spared;
    summary.packs_dropped += r.packs_dropped;
    summary.bytes_freed += r.bytes_freed;
    summary.shards_not_deleted += r.shards_not_deleted;
    summary.marks += r.marks;
    summary.repos_waiting += r.repos_waiting;
    if !r.error.is_empty() {
        summary.errors.push(r.error.clone());
    }
}

/// Asks for a run, waits for it, and, with `repo`, rewrites that
/// repository's mostly dead packs and has a second run drop the old ones.
pub async fn collect_garbage(
    meta: &Arc<MetaClient>,
    repo: Option<&RepoName>,
    wait: Duration,
) -> Result<GcSummary, ClientError> {
    let started = Instant::now();
    let run = request_run(meta).await?;
    let first = wait_for_run(meta, run, wait).await?;
    let mut summary = GcSummary { run: first.run, ..GcSummary::default() };
    add_run(&mut summary, &first);
    summary.packs_partly_dead = first.packs_partly_dead;
    let Some(repo) = repo else { return Ok(summary) };
    if first.repos_waiting > 0 {
        // Condemned chunks still point into packs: a copy would revive them.
        return Ok(summary);
    }
    let pool = ShardPool::default();
    let index = chunk_index(meta, repo).await?;
    let ids: BTreeSet<PackId> = index.values().map(|l| l.pack).collect();
    let packs = placed_packs(meta, &ids).await?;
    let mut rewritten = 0;
    for (id, p) in &packs {
        if p.record.kind != PackKind::Data {
            continue;
        }
        let live: Vec<(ChunkId, ChunkLocation)> =
            index.iter().filter(|(_, l)| l.pack == *id).map(|(c, l)| (*c, *l)).collect();
        let live_bytes: u64 = live.iter().map(|(_, l)| l.len as u64).sum();
        if 1.0 - (live_bytes as f64) / (p.record.pack_len.max(1) as f64) < REWRITE_DEAD_SHARE {
            continue;
        }
        match rewrite(meta, repo, &pool, p, live).await {
            Ok(written) => {
                rewritten += 1;
                summary.bytes_written += written;
            }
            Err(e) => tracing::warn!(pack = %id, error = %e, "rewriting a mostly dead pack failed; it is kept whole"),
        }
    }
    summary.packs_rewritten = rewritten;
    summary.packs_partly_dead = summary.packs_partly_dead.saturating_sub(rewritten);
    if rewritten > 0 {
        let run = request_run(meta).await?;
        let second = wait_for_run(meta, run, wait.saturating_sub(started.elapsed()).max(POLL)).await?;
        summary.run = second.run;
        summary.packs_dropped += second.packs_dropped;
        summary.bytes_freed += second.bytes_freed;
        summary.shards_not_deleted += second.shards_not_deleted;
        summary.chunks_swept += second.chunks_swept;
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
