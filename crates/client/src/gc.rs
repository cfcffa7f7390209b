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
//! Pack rewrites (copying the live, still encrypted blobs of mostly dead
//! packs into new packs) are the leader's too, so nothing is left to a
//! client process: one that dies after asking leaves nothing undone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::pb;
use serde::Serialize;

use crate::ClientError;
use coffer_rpc::{MetaClient, RpcError};

/// Pause between looks at the collector's status.
const POLL: Duration = Duration::from_millis(500);

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
    /// Packs with some dead chunks that were kept whole (less than half
    /// dead, or their rewrite failed).
    pub packs_partly_dead: u64,
    /// Packs whose live blobs were copied into a new pack.
    pub packs_rewritten: u64,
    /// Shard bytes the rewritten packs occupy.
    pub bytes_written: u64,
    /// Reference-list reads of the runs (marks and re-marks).
    pub marks: u32,
    /// The collector run that answered.
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
    summary.packs_partly_dead += r.packs_partly_dead;
    summary.packs_rewritten += r.packs_rewritten;
    summary.bytes_written += r.bytes_written;
    if !r.error.is_empty() {
        summary.errors.push(r.error.clone());
    }
}

/// Asks for a run and waits for it: everything, pack rewrites included,
/// is done by the leader, so this process may die at any point without
/// leaving work undone (the run goes on, or the next leader runs it).
pub async fn collect_garbage(meta: &Arc<MetaClient>, wait: Duration) -> Result<GcSummary, ClientError> {
    let run = request_run(meta).await?;
    let last = wait_for_run(meta, run, wait).await?;
    let mut summary = GcSummary { run: last.run, ..GcSummary::default() };
    add_run(&mut summary, &last);
    Ok(summary)
}
