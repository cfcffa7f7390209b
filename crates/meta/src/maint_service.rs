//! The maintenance service: retention on the metadata plane (forget a
//! snapshot, hold one, list holds).
//!
//! Like the catalog, writes become Raft commands and reads follow
//! `ensure_linearizable` on the leader. The leader stamps the time a forget
//! is judged against into the command, so holds are enforced identically on
//! every replica (invariant 5). No repository key is needed or seen here.
//! Every call is authorised first (`auth`); forgets and holds that were
//! carried out are logged to `audit`.

use std::sync::Arc;

use coffer_proto::limits::check_count;
use coffer_proto::pb::maintenance_server::Maintenance;
use coffer_proto::pb::{self};
use coffer_proto::{ids_from_bytes, location_from_pb, location_to_pb};
use coffer_types::{ChunkId, ChunkLocation, PackId, RepoName, SnapshotId};
use tonic::{Request, Response, Status};

use crate::auth::{audit_ok, Rpc};
use crate::command::{Command, CommandResult, MAX_CHUNKS_PER_COMMAND};
use crate::kv;
use crate::node::{now_ms, MetaNode};
use crate::retention::holds_of;
use crate::MetaError;

/// At most this many snapshots per forget.
const MAX_FORGET: usize = 10_000;
/// At most this many chunk entries per ListChunks page.
const MAX_LIST_CHUNKS: usize = 50_000;

pub struct MaintenanceService {
    node: Arc<MetaNode>,
}

impl MaintenanceService {
    pub fn new(node: Arc<MetaNode>) -> Self {
        Self { node }
    }

    /// Proposes a command and waits until it is applied.
    async fn write(&self, cmd: Command) -> Result<CommandResult, Status> {
        Ok(self.node.raft_write(cmd).await?)
    }

    async fn read_barrier(&self) -> Result<(), Status> {
        Ok(self.node.read_barrier().await?)
    }

    fn check_repo(&self, repo: &RepoName) -> Result<(), Status> {
        match self.node.sm.tree().contains_key(kv::repo_key(repo)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(MetaError::RepoNotFound { repo: repo.clone() }.into()),
            Err(e) => Err(MetaError::from(e).into()),
        }
    }
}

fn repo_name(s: String) -> Result<RepoName, Status> {
    RepoName::new(s).map_err(|e| Status::invalid_argument(format!("repo: {e}")))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn forget(&self, req: Request<pb::ForgetRequest>) -> Result<Response<pb::ForgetResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        let who = self.node.authorize(&req, Rpc::Forget, Some(&repo))?;
        let r = req.into_inner();
        check_count("snapshot_ids", r.snapshot_ids.len(), MAX_FORGET)?;
        let snapshots = ids_from_bytes("snapshot_ids", &r.snapshot_ids, SnapshotId::from_slice)?;
        let count = snapshots.len() as u64;
        tracing::info!(%repo, count, "forget snapshots");
        let result = self.write(Command::Forget { repo: repo.clone(), snapshots, time_ms: now_ms() }).await?;
        let removed = if result == CommandResult::AlreadyApplied { 0 } else { count };
        audit_ok(&who, Rpc::Forget, Some(&repo), &format!("{removed} snapshots forgotten"));
        Ok(Response::new(pb::ForgetResponse { removed }))
    }

    async fn hold(&self, req: Request<pb::HoldRequest>) -> Result<Response<pb::HoldResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        let rpc = Rpc::Hold { lift: req.get_ref().until_ms == 0 };
        let who = self.node.authorize(&req, rpc, Some(&repo))?;
        let r = req.into_inner();
        let snapshot = SnapshotId::from_slice(&r.snapshot_id)
            .map_err(|e| Status::invalid_argument(format!("snapshot_id: {e}")))?;
        let cmd = Command::HoldUntil { repo: repo.clone(), snapshot, until_ms: r.until_ms, time_ms: now_ms() };
        self.write(cmd).await?;
        audit_ok(&who, rpc, Some(&repo), &format!("snapshot {snapshot} held until {} ms", r.until_ms));
        Ok(Response::new(pb::HoldResponse {}))
    }

    async fn list_holds(&self, req: Request<pb::ListHoldsRequest>) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::ListHolds, Some(&repo))?;
        self.read_barrier().await?;
        self.check_repo(&repo)?;
        let holds = holds_of(self.node.sm.tree(), &repo)?;
        Ok(Response::new(pb::ListHoldsResponse {
            holds: holds
                .into_iter()
                .map(|(id, until_ms)| pb::SnapshotHold { snapshot_id: id.0.to_vec(), until_ms })
                .collect(),
            now_ms: now_ms(),
        }))
    }

    async fn condemn(&self, req: Request<pb::CondemnRequest>) -> Result<Response<pb::CondemnResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::Condemn, Some(&repo))?;
        let r = req.into_inner();
        check_count("chunk_ids", r.chunk_ids.len(), MAX_CHUNKS_PER_COMMAND)?;
        check_count("marked_from", r.marked_from.len(), MAX_FORGET)?;
        let chunks = ids_from_bytes("chunk_ids", &r.chunk_ids, ChunkId::from_slice)?;
        let marked_from = ids_from_bytes("marked_from", &r.marked_from, SnapshotId::from_slice)?;
        tracing::info!(%repo, chunks = chunks.len(), "condemn unreferenced chunks");
        self.write(Command::Condemn { repo, chunks, marked_from, time_ms: now_ms() }).await?;
        Ok(Response::new(pb::CondemnResponse {}))
    }

    async fn sweep(&self, req: Request<pb::SweepRequest>) -> Result<Response<pb::SweepResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::Sweep, Some(&repo))?;
        let r = req.into_inner();
        check_count("chunk_ids", r.chunk_ids.len(), MAX_CHUNKS_PER_COMMAND)?;
        let chunks = ids_from_bytes("chunk_ids", &r.chunk_ids, ChunkId::from_slice)?;
        self.write(Command::Sweep { repo, chunks }).await?;
        Ok(Response::new(pb::SweepResponse {}))
    }

    async fn drop_packs(&self, req: Request<pb::DropPacksRequest>) -> Result<Response<pb::DropPacksResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::DropPacks, Some(&repo))?;
        let r = req.into_inner();
        check_count("pack_ids", r.pack_ids.len(), MAX_CHUNKS_PER_COMMAND)?;
        let packs = ids_from_bytes("pack_ids", &r.pack_ids, PackId::from_slice)?;
        self.write(Command::DropPacks { repo, packs: packs.clone() }).await?;
        // Applied on this leader: a record now absent was dropped (or never existed).
        let mut dropped = Vec::new();
        for p in &packs {
            match self.node.sm.tree().contains_key(kv::pack_key(p)) {
                Ok(false) => dropped.push(p.0.to_vec()),
                Ok(true) => {}
                Err(e) => return Err(MetaError::from(e).into()),
            }
        }
        Ok(Response::new(pb::DropPacksResponse { dropped }))
    }

    async fn relocate(&self, req: Request<pb::RelocateRequest>) -> Result<Response<pb::RelocateResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::Relocate, Some(&repo))?;
        let r = req.into_inner();
        check_count("chunks", r.chunks.len(), MAX_CHUNKS_PER_COMMAND)?;
        let from = PackId::from_slice(&r.from_pack).map_err(|e| Status::invalid_argument(format!("from_pack: {e}")))?;
        let chunks = r.chunks.iter().map(location_from_pb).collect::<Result<Vec<_>, _>>()?;
        self.write(Command::Relocate { repo, from, chunks }).await?;
        Ok(Response::new(pb::RelocateResponse {}))
    }

    async fn run_gc(&self, req: Request<pb::RunGcRequest>) -> Result<Response<pb::RunGcResponse>, Status> {
        let who = self.node.authorize(&req, Rpc::RunGc, None)?;
        self.node.require_leader()?;
        self.write(Command::GcRequest { time_ms: now_ms() }).await?;
        // Applied on this leader: the counter now includes this request.
        let run = crate::gc::gc_state(self.node.sm.tree())?.requested;
        audit_ok(&who, Rpc::RunGc, None, &format!("garbage collection run {run} asked for"));
        Ok(Response::new(pb::RunGcResponse { run }))
    }

    async fn gc_status(&self, req: Request<pb::GcStatusRequest>) -> Result<Response<pb::GcStatus>, Status> {
        self.node.authorize(&req, Rpc::GcStatus, None)?;
        self.read_barrier().await?;
        Ok(Response::new(gc_status(&self.node)?))
    }

    async fn list_chunks(
        &self,
        req: Request<pb::ListChunksRequest>,
    ) -> Result<Response<pb::ListChunksResponse>, Status> {
        let repo = repo_name(req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::ListChunks, Some(&repo))?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => MAX_LIST_CHUNKS,
            n => (n as usize).min(MAX_LIST_CHUNKS),
        };
        let prefix = kv::chunk_prefix(&repo);
        let start = if r.after.is_empty() {
            prefix.clone()
        } else {
            let after = ChunkId::from_slice(&r.after).map_err(|e| Status::invalid_argument(format!("after: {e}")))?;
            // The key right after `after`'s: the key with a zero byte appended.
            let mut k = kv::chunk_key(&repo, &after);
            k.push(0);
            k
        };
        self.read_barrier().await?;
        self.check_repo(&repo)?;
        let mut chunks = Vec::new();
        let mut more = false;
        for item in self.node.sm.tree().range(start..) {
            let (k, v) = item.map_err(MetaError::from)?;
            let Some(raw) = k.strip_prefix(prefix.as_slice()) else { break };
            if chunks.len() == limit {
                more = true;
                break;
            }
            let id = ChunkId::from_slice(raw)
                .map_err(|e| MetaError::Codec { what: "chunk index key", reason: e.to_string() })?;
            let loc: ChunkLocation = kv::decode("chunk", &v)?;
            chunks.push(location_to_pb(&id, &loc));
        }
        let next = match chunks.last() {
            Some(last) if more => last.chunk_id.clone(),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::ListChunksResponse { chunks, more, next }))
    }
}

/// The collector's state as `GcStatus` and `ClusterStatus` report it.
pub(crate) fn gc_status(node: &MetaNode) -> Result<pb::GcStatus, MetaError> {
    use std::sync::atomic::Ordering::Relaxed;
    let state = crate::gc::gc_state(node.sm.tree())?;
    Ok(pb::GcStatus {
        requested: state.requested,
        last: state.last.map(|r| pb::GcRun {
            run: r.run,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            by: r.by,
            snapshots: r.snapshots,
            chunks_indexed: r.chunks_indexed,
            chunks_live: r.chunks_live,
            chunks_condemned: r.chunks_condemned,
            chunks_swept: r.chunks_swept,
            chunks_spared: r.chunks_spared,
            packs_dropped: r.packs_dropped,
            bytes_freed: r.bytes_freed,
            shards_not_deleted: r.shards_not_deleted,
            packs_partly_dead: r.packs_partly_dead,
            packs_rewritten: r.packs_rewritten,
            bytes_written: r.bytes_written,
            marks: r.marks,
            repos_waiting: r.repos_waiting,
            error: r.error,
        }),
        // From the catalog, so that it is right mid-run and on any leader.
        rounds_open: node.sm.tree().scan_prefix(b"gr/").count() as u64,
        running: node.gc.running.load(Relaxed),
        interval_ms: node.config.gc_interval.map_or(0, |d| d.as_millis() as u64),
        rewrite_pending: node.gc.rewrite_pending.load(Relaxed),
        packs_rewritten: node.gc.packs_rewritten.load(Relaxed),
        bytes_rewritten: node.gc.bytes_rewritten.load(Relaxed),
    })
}
