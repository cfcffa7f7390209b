//! The catalog service: the public gRPC API of the metadata plane.
//!
//! Writes become Raft commands; reads are served from the state machine on
//! the leader after `ensure_linearizable`, so a reader never sees less than
//! a write it was told had committed. A follower answers UNAVAILABLE with
//! the leader's address in `coffer-leader`; callers follow it.
//!
//! Every call is authorised first (`auth`: the table of what each needs),
//! on the leader, against the repository it concerns.
//!
//! Every request is validated into typed values before it reaches Raft;
//! errors become gRPC codes only through `From<MetaError> for Status`.

use std::sync::Arc;
use std::time::Duration;

use coffer_placement::{Candidate, Policy};
use coffer_proto::limits::{self, check_bytes, check_count};
use coffer_proto::pb::catalog_server::Catalog;
use coffer_proto::pb::{self};
use coffer_proto::{ids_from_bytes, location_from_pb, location_to_pb, node_to_pb};
use coffer_types::{
    ChunkId, ChunkLocation, NodeId, NodeRecord, NodeState, PackId, PackRecord, RepoName, RepoRecord, SessionId,
    SessionRecord, SiteId, SnapshotId, SnapshotRecord,
};
use tonic::{Request, Response, Status};

use crate::auth::{audit_ok, permit, Rpc};
use crate::command::{Command, CommandResult, MAX_CHUNKS_PER_COMMAND};
use crate::kv;
use crate::liveness::Usage;
use crate::node::{now_ms, MetaNode};
use crate::MetaError;
// The most key slots a repository may have, and the largest one: a
// version-2 slot holding the most epochs the pack format allows is under
// 10 KiB, so the record stays small enough for one Raft entry.
use coffer_proto::limits::{MAX_KEY_SLOTS, MAX_KEY_SLOT_BYTES};

/// Shortest lease a session gets (a request for less is raised to it).
const MIN_LEASE: Duration = Duration::from_secs(1);
/// Nodes one AllocatePack may exclude.
const MAX_EXCLUDE: usize = 1_024;
/// What a bad-shard reason may add to the leader's log.
const MAX_REASON_BYTES: usize = 1_024;

pub struct CatalogService {
    node: Arc<MetaNode>,
}

impl CatalogService {
    pub fn new(node: Arc<MetaNode>) -> Self {
        Self { node }
    }

    fn tree(&self) -> &crate::store::Tree {
        self.node.sm.tree()
    }

    async fn write(&self, cmd: Command) -> Result<CommandResult, Status> {
        Ok(self.node.raft_write(cmd).await?)
    }

    async fn read_barrier(&self) -> Result<(), Status> {
        Ok(self.node.read_barrier().await?)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, Status> {
        kv::scan(self.tree(), "node", kv::NODE_PREFIX).map_err(Status::from)
    }

    /// A node record as the caller should see it: live usage and state.
    fn node_view(&self, n: &NodeRecord) -> pb::Node {
        let state = self.node.liveness.state(n.id);
        let mut view = n.clone();
        let seen = self.node.liveness.get(n.id);
        if let Some(seen) = seen {
            view.used_bytes = seen.used_bytes;
            view.capacity_bytes = seen.capacity_bytes;
        }
        let mut out = node_to_pb(&view, state.as_str());
        if let Some(seen) = seen {
            out.free_bytes = seen.free_bytes.unwrap_or_else(|| seen.capacity_bytes.saturating_sub(seen.used_bytes));
            out.reserve_bytes = seen.reserve_bytes;
            out.orphan_bytes = seen.orphan_bytes;
        }
        out.draining = self.tree().contains_key(kv::drain_key(n.id)).unwrap_or(false);
        out
    }

    fn repo(&self, name: &RepoName) -> Result<RepoRecord, Status> {
        kv::get(self.tree(), "repo", &kv::repo_key(name))
            .map_err(Status::from)?
            .ok_or_else(|| Status::not_found(format!("repository {name} does not exist")))
    }

    /// What `ClusterStatus` answers, from this node's state machine and liveness table (the caller decides whether it must be the leader's, after a read barrier).
    pub(crate) fn status_view(&self) -> Result<pb::ClusterStatusResponse, Status> {
        let nodes = self.nodes()?;
        let views: Vec<pb::Node> = nodes.iter().map(|n| self.node_view(n)).collect();
        let up: std::collections::HashSet<u64> = views.iter().filter(|n| n.state == "up").map(|n| n.id).collect();

        let health = pack_health(self.tree(), &up).map_err(Status::from)?;

        let metrics = self.node.raft.metrics().borrow().clone();
        let members = self.node.members();
        let count = |what: &str| -> Result<u64, Status> {
            Ok(kv::get::<u64>(self.tree(), "counter", &kv::count_key(what)).map_err(Status::from)?.unwrap_or(0))
        };
        Ok(pb::ClusterStatusResponse {
            nodes: views.clone(),
            packs: Some(health),
            leader: metrics.current_leader.unwrap_or(0),
            members,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            repos: count("repos")?,
            snapshots: count("snapshots")?,
            chunks: count("chunks")?,
            rebuild: Some({
                let r = self.node.repair.snapshot();
                let workers = self.node.config.repair.parallelism.max(1) as f64;
                pb::RebuildStatus {
                    queued: r.queued,
                    in_flight: r.in_flight,
                    done: r.done,
                    failed: r.failed,
                    bytes_written: r.bytes_written,
                    eta_s: (r.queued + r.in_flight) as f64 * r.secs_per_task / workers,
                    copies_waiting: crate::index::former_copy_count(self.tree()).map_err(Status::from)?,
                }
            }),
            site_degraded: self.node.repair.snapshot().site_degraded,
            orphan_bytes: views.iter().map(|n| n.orphan_bytes).fold(0u64, u64::saturating_add),
            gc: Some(crate::maint_service::gc_status(&self.node)?),
            workers: {
                let me = self.node.worker_node_name();
                let mut w: Vec<pb::WorkerStatus> =
                    self.node.workers().iter().map(|s| coffer_proto::worker_to_pb(&me, s)).collect();
                w.extend(self.node.liveness.workers());
                w
            },
        })
    }

    /// What `ListIncidents` answers, from this node's state machine.
    pub(crate) fn incidents_view(&self) -> Result<pb::ListIncidentsResponse, Status> {
        let nodes = self.nodes()?;
        let incidents = kv::scan::<crate::command::IncidentRecord>(self.tree(), "incident", kv::INCIDENT_PREFIX)
            .map_err(Status::from)?
            .into_iter()
            .map(|i| pb::Incident {
                id: i.id,
                node: i.node.0,
                site: nodes.iter().find(|n| n.id == i.node).map(|n| n.site.to_string()).unwrap_or_default(),
                state: if i.open { "open" } else { "closed" }.to_string(),
                last_seen_ms: i.last_seen_ms,
                detected_ms: i.detected_ms,
                rebuild_started_ms: i.rebuild_started_ms,
                rebuild_finished_ms: i.rebuild_finished_ms,
                shards_lost: i.shards_lost,
                shards_rebuilt: i.shards_rebuilt,
                bytes_read: i.bytes_read,
                bytes_written: i.bytes_written,
                bytes_cross_site: i.bytes_cross_site,
            })
            .collect();
        Ok(pb::ListIncidentsResponse { incidents })
    }
}

fn repo_name(field: &'static str, s: String) -> Result<RepoName, Status> {
    RepoName::new(s).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn session_id(raw: &[u8]) -> Result<SessionId, Status> {
    SessionId::from_slice(raw).map_err(|e| Status::invalid_argument(format!("session_id: {e}")))
}

#[tonic::async_trait]
impl Catalog for CatalogService {
    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        self.node.authorize(&req, Rpc::RegisterNode, None)?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved"));
        }
        let site = SiteId::new(r.site).map_err(|e| Status::invalid_argument(format!("site: {e}")))?;
        if r.addr.is_empty() {
            return Err(Status::invalid_argument("addr is empty"));
        }
        check_bytes("addr", r.addr.len(), limits::MAX_ADDR_BYTES)?;
        let node = NodeRecord {
            id: NodeId(r.id),
            site,
            addr: r.addr,
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            last_heartbeat_ms: now_ms(),
        };
        tracing::info!(node = %node.id, site = %node.site, addr = %node.addr, "storage node registers");
        self.write(Command::RegisterNode { node }).await?;
        self.node.liveness.seen(NodeId(r.id), r.used_bytes, r.capacity_bytes);
        // A node (re)started is a home for the shards short packs lack.
        self.node.repair.wake.notify_one();
        Ok(Response::new(pb::RegisterNodeResponse {}))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.node.authorize(&req, Rpc::Heartbeat, None)?;
        let r = req.into_inner();
        if self.node.failpoints.holding(crate::failpoint::HOLD_FRESH_LEADER)
            || self.node.failpoints.holding(crate::failpoint::HOLD_NO_HEARTBEATS)
        {
            return Err(Status::unavailable("failpoint: this node takes no heartbeat now"));
        }
        // Liveness is the leader's to track.
        self.read_barrier().await?;
        let id = NodeId(r.id);
        let Some(rec) = kv::get::<NodeRecord>(self.tree(), "node", &kv::node_key(id)).map_err(Status::from)? else {
            return Ok(Response::new(pb::HeartbeatResponse { known: false }));
        };
        let returned = self.node.liveness.seen_usage(
            id,
            Usage {
                used_bytes: r.used_bytes,
                capacity_bytes: r.capacity_bytes,
                free_bytes: r.free_bytes,
                reserve_bytes: r.reserve_bytes,
                orphan_bytes: r.orphan_bytes,
            },
        );
        if returned {
            // A node back is a home for the shards short packs lack: the
            // repair planner looks now rather than at its next tick.
            self.node.repair.wake.notify_one();
        }
        self.node.liveness.set_workers(id, reported_workers(id, r.workers));
        let now = now_ms();
        if now.saturating_sub(rec.last_heartbeat_ms) >= self.node.config.persist_seen_every.as_millis() as u64 {
            self.write(Command::NodeSeen {
                node: id,
                used_bytes: r.used_bytes,
                capacity_bytes: r.capacity_bytes,
                time_ms: now,
            })
            .await?;
        }
        Ok(Response::new(pb::HeartbeatResponse { known: true }))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.node.authorize(&req, Rpc::ClusterStatus, None)?;
        self.read_barrier().await?;
        Ok(Response::new(self.status_view()?))
    }

    async fn create_repo(
        &self,
        req: Request<pb::CreateRepoRequest>,
    ) -> Result<Response<pb::CreateRepoResponse>, Status> {
        let who = self.node.authorize(&req, Rpc::CreateRepo, None)?;
        let r = req.into_inner();
        let repo = r.repo.ok_or_else(|| Status::invalid_argument("repo is missing"))?;
        let mut repo = RepoRecord::try_from(repo)?;
        if r.min_shards != 0 {
            repo.params
                .check_min_shards(r.min_shards)
                .map_err(|e| Status::invalid_argument(format!("repository {}: {e}", repo.name)))?;
        }
        if repo.key_slots.is_empty() {
            return Err(Status::invalid_argument("a repository needs at least one key slot"));
        }
        if repo.created_ms == 0 {
            repo.created_ms = now_ms();
        }
        let name = repo.name.clone();
        self.write(Command::CreateRepo { repo }).await?;
        // A second command, since the repository record's layout is fixed:
        // if it never lands, the repository keeps the default, and a retry
        // of the whole call sets it.
        if r.min_shards != 0 {
            self.write(Command::SetMinShards { repo: name.clone(), min_shards: r.min_shards }).await?;
        }
        audit_ok(&who, Rpc::CreateRepo, Some(&name), "repository created");
        Ok(Response::new(pb::CreateRepoResponse {}))
    }

    async fn get_repo(&self, req: Request<pb::GetRepoRequest>) -> Result<Response<pb::Repo>, Status> {
        let name = repo_name("name", req.get_ref().name.clone())?;
        self.node.authorize(&req, Rpc::GetRepo, Some(&name))?;
        self.read_barrier().await?;
        Ok(Response::new(pb::Repo::from(&self.repo(&name)?)))
    }

    async fn begin_session(
        &self,
        req: Request<pb::BeginSessionRequest>,
    ) -> Result<Response<pb::BeginSessionResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::BeginSession, Some(&repo))?;
        let r = req.into_inner();
        let id = session_id(&r.session_id)?;
        if r.lease_ms > limits::MAX_LEASE_MS {
            return Err(Status::invalid_argument(format!(
                "lease_ms: {} ms is longer than the longest lease, {} ms",
                r.lease_ms,
                limits::MAX_LEASE_MS
            )));
        }
        let lease = Duration::from_millis(r.lease_ms).max(MIN_LEASE);
        let started_ms = now_ms();
        let session = SessionRecord { id, repo, started_ms, lease_until_ms: started_ms + lease.as_millis() as u64 };
        let lease_until_ms = session.lease_until_ms;
        self.write(Command::BeginSession { session }).await?;
        self.node.failpoints.hang(crate::failpoint::BEGIN_SESSION_APPLIED).await;
        Ok(Response::new(pb::BeginSessionResponse { lease_until_ms }))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let id = session_id(&req.get_ref().session_id)?;
        let who = self.node.authenticate(&req, Rpc::EndSession)?;
        // A session that is gone (a committed snapshot ends it) has nothing
        // left to end; one that is open is ended by its repository's agent.
        let Some(session) =
            kv::get::<SessionRecord>(self.tree(), "session", &kv::session_key(&id)).map_err(Status::from)?
        else {
            return Ok(Response::new(pb::EndSessionResponse {}));
        };
        permit(&who, Rpc::EndSession, Some(&session.repo))?;
        self.write(Command::EndSession { id }).await?;
        Ok(Response::new(pb::EndSessionResponse {}))
    }

    async fn lookup_chunks(
        &self,
        req: Request<pb::LookupChunksRequest>,
    ) -> Result<Response<pb::LookupChunksResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::LookupChunks, Some(&repo))?;
        let r = req.into_inner();
        check_count("chunk_ids", r.chunk_ids.len(), limits::MAX_LOOKUP_IDS)?;
        let ids = ids_from_bytes("chunk_ids", &r.chunk_ids, ChunkId::from_slice)?;
        self.read_barrier().await?;
        let mut found = Vec::new();
        for id in &ids {
            // Condemned chunks count as absent for deduplication, so that
            // backups store them again; readers still find them (a snapshot
            // committed while a chunk it references is condemned restores
            // at once, not only after the sweep's re-mark lifted the mark).
            if !r.include_condemned && crate::gc::is_condemned(self.tree(), &repo, id).map_err(Status::from)? {
                continue;
            }
            if let Some(loc) =
                kv::get::<ChunkLocation>(self.tree(), "chunk", &kv::chunk_key(&repo, id)).map_err(Status::from)?
            {
                found.push(location_to_pb(id, &loc));
            }
        }
        Ok(Response::new(pb::LookupChunksResponse { found }))
    }

    async fn allocate_pack(
        &self,
        req: Request<pb::AllocatePackRequest>,
    ) -> Result<Response<pb::AllocatePackResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::AllocatePack, Some(&repo))?;
        let r = req.into_inner();
        check_count("exclude", r.exclude.len(), MAX_EXCLUDE)?;
        self.read_barrier().await?;
        let record = self.repo(&repo)?;
        let params = record.params;
        let min_shards = crate::apply::min_shards(|k| kv::get::<u32>(self.tree(), "min shards", k), &record)
            .map_err(Status::from)?;
        let nodes = self.nodes()?;
        let draining = kv::draining(self.tree()).map_err(Status::from)?;
        // Candidates in tiers. First the nodes up and not draining. Then,
        // while those cannot hold a full pack, the draining ones that are
        // up: a drain asks that shards move away, it does not stop the node
        // serving, and a shard there beats a short pack or a refused backup
        // (found by the chaos suite: a node draining and m others dead left
        // three, and backups failed; and with a node draining among exactly
        // k + m, every new pack went short). Then, while fewer than
        // `min_shards` remain, suspect ones (not heard from lately, not yet
        // given up on): what a leader cut off from the storage nodes but
        // not from the voters sees of every node, while the agents may
        // well reach them; the puts are the real test, and a failed one is
        // re-placed by the agent without that node. Down nodes stay out.
        let tier = |state: NodeState, drain: bool| -> Vec<Candidate> {
            nodes
                .iter()
                .filter(|n| {
                    !r.exclude.contains(&n.id.0)
                        && draining.contains_key(&n.id) == drain
                        && self.node.liveness.state(n.id) == state
                })
                .map(|n| self.node.placement_candidate(n))
                .collect()
        };
        let mut candidates = tier(NodeState::Up, false);
        let tiers = [
            (NodeState::Up, true, params.total()),
            (NodeState::Suspect, false, min_shards),
            (NodeState::Suspect, true, min_shards),
        ];
        for (state, drain, wanted) in tiers {
            if candidates.len() >= wanted {
                continue;
            }
            let more = tier(state, drain);
            if !more.is_empty() {
                tracing::warn!(
                    placeable = candidates.len(),
                    more = more.len(),
                    wanted,
                    ?state,
                    draining = drain,
                    "too few storage nodes to place a pack on; taking less preferred ones too"
                );
                candidates.extend(more);
            }
        }
        let pack_id = PackId::random();
        let policy = Policy::new(params);
        // The site rule first; if a site is gone and the rule cannot be met,
        // keep node-level redundancy (k+m distinct nodes) so that backups go
        // on. Such packs are site-degraded until rebuild moves shards back.
        // With fewer than k+m nodes up, the pack goes short: one shard on
        // every node there is (down to the repository's min_shards), the
        // rest unplaced until the repair planner writes them.
        let cannot = |e: coffer_placement::PlacementError| {
            Status::failed_precondition(format!(
                "cannot place a {params} pack: {e} (the repository accepts packs with at least {min_shards} shards placed)"
            ))
        };
        let placement = match coffer_placement::place(&policy, &candidates, pack_id.as_bytes()) {
            Ok(p) => p,
            Err(coffer_placement::PlacementError::NotEnoughSites { .. }) => {
                coffer_placement::place_relaxed(&policy, &candidates, pack_id.as_bytes()).map_err(cannot)?
            }
            Err(coffer_placement::PlacementError::NotEnoughNodes { .. }) => {
                coffer_placement::place_short(&policy, &candidates, pack_id.as_bytes(), min_shards).map_err(cannot)?
            }
        };
        if placement.nodes.len() < params.total() {
            tracing::warn!(pack = %pack_id, placed = placement.nodes.len(), shards = params.total(), "placing a short pack: too few storage nodes are up; repair will write the rest");
        }
        if placement.site_degraded {
            tracing::warn!(pack = %pack_id, "placing a site-degraded pack: too few sites are up for the site rule");
        }
        let targets = placement
            .nodes
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let addr = nodes.iter().find(|n| n.id == *id).map(|n| n.addr.clone()).unwrap_or_default();
                pb::Target { index: i as u32, node: id.0, addr }
            })
            .collect();
        Ok(Response::new(pb::AllocatePackResponse {
            pack_id: pack_id.0.to_vec(),
            params: Some(params.into()),
            targets,
            min_shards: min_shards as u32,
        }))
    }

    async fn commit_pack(
        &self,
        req: Request<pb::CommitPackRequest>,
    ) -> Result<Response<pb::CommitPackResponse>, Status> {
        let repo = repo_name("pack.repo", req.get_ref().pack.as_ref().map(|p| p.repo.clone()).unwrap_or_default())?;
        self.node.authorize(&req, Rpc::CommitPack, Some(&repo))?;
        let r = req.into_inner();
        let session = session_id(&r.session_id)?;
        check_count("chunks", r.chunks.len(), limits::MAX_COMMIT_CHUNKS)?;
        let pack = PackRecord::try_from(r.pack.ok_or_else(|| Status::invalid_argument("pack is missing"))?)?;
        let mut chunks = r.chunks.iter().map(location_from_pb).collect::<Result<Vec<_>, _>>()?;
        // Raft entries stay small: the pack goes with the first batch of its
        // chunks, the rest follow. A crash in between leaves some chunks
        // unindexed, which costs only a later re-upload; a retry of the
        // whole call completes the index.
        let rest = chunks.split_off(chunks.len().min(MAX_CHUNKS_PER_COMMAND));
        let (repo, pack_id) = (pack.repo.clone(), pack.id);
        self.write(Command::CommitPack { session, now_ms: now_ms(), pack, chunks }).await?;
        for batch in rest.chunks(MAX_CHUNKS_PER_COMMAND) {
            self.write(Command::IndexChunks { repo: repo.clone(), pack: pack_id, chunks: batch.to_vec() }).await?;
        }
        self.node.failpoints.hang(crate::failpoint::COMMIT_PACK_APPLIED).await;
        Ok(Response::new(pb::CommitPackResponse {}))
    }

    async fn commit_snapshot(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<pb::CommitSnapshotResponse>, Status> {
        let repo =
            repo_name("snapshot.repo", req.get_ref().snapshot.as_ref().map(|s| s.repo.clone()).unwrap_or_default())?;
        self.node.authorize(&req, Rpc::CommitSnapshot, Some(&repo))?;
        let r = req.into_inner();
        let session = session_id(&r.session_id)?;
        let mut snapshot =
            SnapshotRecord::try_from(r.snapshot.ok_or_else(|| Status::invalid_argument("snapshot is missing"))?)?;
        tracing::info!(snapshot = %snapshot.id, repo = %snapshot.repo, "commit snapshot");
        // The coverage travels beside the record (whose layout is fixed), so
        // that a retried commit compares equal to the stored record.
        let cmd = match snapshot.stats.coverage.take() {
            Some(c) => Command::CommitSnapshotCovered {
                session,
                now_ms: now_ms(),
                snapshot,
                coverage: coffer_types::CoverageRecord::V1(c),
            },
            None => Command::CommitSnapshot { session, now_ms: now_ms(), snapshot },
        };
        self.write(cmd).await?;
        self.node.failpoints.hang(crate::failpoint::COMMIT_SNAPSHOT_APPLIED).await;
        Ok(Response::new(pb::CommitSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::ListSnapshots, Some(&repo))?;
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_SNAPSHOT_PAGE,
            n => (n as usize).min(MAX_SNAPSHOT_PAGE),
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(
                SnapshotId::from_slice(&r.page_token)
                    .map_err(|e| Status::invalid_argument(format!("page_token: {e}")))?,
            )
        };
        self.read_barrier().await?;
        self.repo(&repo)?;
        let (page, next) = snapshot_page(self.tree(), &repo, after.as_ref(), limit)?;
        let snapshots = page.iter().map(pb::Snapshot::from).collect();
        let next = next.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots, next }))
    }

    async fn report_bad_shards(
        &self,
        req: Request<pb::ReportBadShardsRequest>,
    ) -> Result<Response<pb::ReportBadShardsResponse>, Status> {
        self.node.authorize(&req, Rpc::ReportBadShards, None)?;
        let r = req.into_inner();
        let node = NodeId(r.node);
        check_count("shards", r.shards.len(), limits::MAX_BAD_SHARD_REPORTS)?;
        // Every report is checked before the first one is written.
        let mut reports = Vec::with_capacity(r.shards.len());
        for b in r.shards {
            let pack = PackId::from_slice(&b.pack_id).map_err(|e| Status::invalid_argument(format!("pack_id: {e}")))?;
            let index = u8::try_from(b.index)
                .ok()
                .filter(|i| u32::from(*i) < coffer_types::MAX_SHARDS)
                .ok_or_else(|| Status::invalid_argument(format!("index: shard index {} out of range", b.index)))?;
            reports.push((pack, index, truncated(b.reason, MAX_REASON_BYTES)));
        }
        for (pack, index, reason) in reports {
            tracing::warn!(%pack, index, %node, reason = %reason, "bad shard reported");
            let cmd = Command::MarkBadShard { pack, index: coffer_types::ShardIndex(index), node, time_ms: now_ms() };
            match self.write(cmd).await {
                // A pack that is gone, or a shard already moved: nothing to repair.
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::FailedPrecondition || s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s),
            }
        }
        Ok(Response::new(pb::ReportBadShardsResponse {}))
    }

    async fn drain_node(&self, req: Request<pb::DrainNodeRequest>) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let who = self.node.authorize(&req, Rpc::DrainNode, None)?;
        let r = req.into_inner();
        let node = NodeId(r.node);
        tracing::info!(%node, drain = r.drain, decommission = r.decommission, "drain requested");
        self.write(Command::SetDrain { node, drain: r.drain, decommission: r.decommission, time_ms: now_ms() }).await?;
        let detail = format!("node {node} drain {} decommission {}", r.drain, r.decommission);
        audit_ok(&who, Rpc::DrainNode, None, &detail);
        Ok(Response::new(pb::DrainNodeResponse {}))
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.node.authorize(&req, Rpc::ListIncidents, None)?;
        self.read_barrier().await?;
        Ok(Response::new(self.incidents_view()?))
    }

    async fn get_packs(&self, req: Request<pb::GetPacksRequest>) -> Result<Response<pb::GetPacksResponse>, Status> {
        let raw = &req.get_ref().pack_ids;
        check_count("pack_ids", raw.len(), limits::MAX_GET_PACKS)?;
        let ids = ids_from_bytes("pack_ids", raw, PackId::from_slice)?;
        let who = self.node.authenticate(&req, Rpc::GetPacks { data: false })?;
        self.read_barrier().await?;
        let mut packs = Vec::new();
        let mut wanted = std::collections::BTreeSet::new();
        // Each repository and kind is judged once: tree and reference-list
        // packs are what a backup reads of its parent, data packs need the
        // right to restore.
        let mut permitted = std::collections::BTreeSet::new();
        for id in &ids {
            if let Some(p) = kv::get::<PackRecord>(self.tree(), "pack", &kv::pack_key(id)).map_err(Status::from)? {
                let data = p.kind == coffer_types::PackKind::Data;
                if permitted.insert((p.repo.clone(), data)) {
                    permit(&who, Rpc::GetPacks { data }, Some(&p.repo))?;
                }
                wanted.extend(p.shards.iter().map(|s| s.node));
                packs.push(pb::Pack::from(&p));
            }
        }
        let nodes = self.nodes()?.iter().filter(|n| wanted.contains(&n.id)).map(|n| self.node_view(n)).collect();
        Ok(Response::new(pb::GetPacksResponse { packs, nodes }))
    }

    async fn known_packs(
        &self,
        req: Request<pb::KnownPacksRequest>,
    ) -> Result<Response<pb::KnownPacksResponse>, Status> {
        self.node.authorize(&req, Rpc::KnownPacks, None)?;
        let r = req.into_inner();
        if r.pack_ids.len() > MAX_KNOWN_PACKS {
            return Err(Status::invalid_argument(format!(
                "{} pack ids in one KnownPacks call; at most {MAX_KNOWN_PACKS}",
                r.pack_ids.len()
            )));
        }
        let ids = ids_from_bytes("pack_ids", &r.pack_ids, PackId::from_slice)?;
        // Linearizable: an orphan collector must never hear "unknown" for a
        // pack that a committed write already recorded.
        self.read_barrier().await?;
        let mut known = Vec::new();
        for id in ids {
            if self.tree().contains_key(kv::pack_key(&id)).map_err(MetaError::from)? {
                known.push(id.as_bytes().to_vec());
            }
        }
        Ok(Response::new(pb::KnownPacksResponse { known }))
    }

    async fn get_key_slots(&self, req: Request<pb::GetKeySlotsRequest>) -> Result<Response<pb::KeySlots>, Status> {
        let name = repo_name("repo", req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::GetKeySlots, Some(&name))?;
        self.read_barrier().await?;
        let record = self.repo(&name)?;
        let version = crate::apply::key_slots_version(self.tree(), &name).map_err(Status::from)?;
        Ok(Response::new(pb::KeySlots { key_slots: record.key_slots, version }))
    }

    async fn set_key_slots(
        &self,
        req: Request<pb::SetKeySlotsRequest>,
    ) -> Result<Response<pb::SetKeySlotsResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        let who = self.node.authorize(&req, Rpc::SetKeySlots, Some(&repo))?;
        let r = req.into_inner();
        // The slots are opaque here; only their number and size are judged.
        if r.key_slots.is_empty() {
            return Err(Status::failed_precondition(format!(
                "repository {repo}: refusing to remove the last key slot"
            )));
        }
        if r.key_slots.len() > MAX_KEY_SLOTS {
            return Err(Status::invalid_argument(format!(
                "{} key slots; a repository has at most {MAX_KEY_SLOTS}",
                r.key_slots.len()
            )));
        }
        if let Some(big) = r.key_slots.iter().find(|s| s.is_empty() || s.len() > MAX_KEY_SLOT_BYTES) {
            return Err(Status::invalid_argument(format!(
                "a key slot of {} bytes; slots are 1 to {MAX_KEY_SLOT_BYTES} bytes",
                big.len()
            )));
        }
        let expected_version = r.expected_version;
        let n_slots = r.key_slots.len();
        self.write(Command::SetKeySlots { repo: repo.clone(), expected_version, slots: r.key_slots }).await?;
        tracing::info!(repo = %repo, version = expected_version + 1, "key slots changed");
        audit_ok(&who, Rpc::SetKeySlots, Some(&repo), &format!("{n_slots} slots, version {}", expected_version + 1));
        Ok(Response::new(pb::SetKeySlotsResponse { version: expected_version + 1 }))
    }

    async fn report_source(
        &self,
        req: Request<pb::ReportSourceRequest>,
    ) -> Result<Response<pb::ReportSourceResponse>, Status> {
        let info = req.get_ref().source.clone().ok_or_else(|| Status::invalid_argument("source is missing"))?;
        let source = coffer_types::SourceRecord::try_from(info)?;
        self.node.authorize(&req, Rpc::ReportSource, Some(&source.repo))?;
        self.write(Command::ReportSource { source, time_ms: now_ms() }).await?;
        Ok(Response::new(pb::ReportSourceResponse {}))
    }

    async fn list_sources(
        &self,
        req: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let repo = match req.get_ref().repo.as_str() {
            "" => None,
            name => Some(repo_name("repo", name.to_string())?),
        };
        self.node.authorize(&req, Rpc::ListSources { all: repo.is_none() }, repo.as_ref())?;
        self.read_barrier().await?;
        let sources = crate::sources::list(self.tree(), repo.as_ref()).map_err(Status::from)?;
        Ok(Response::new(pb::ListSourcesResponse {
            sources: sources.iter().map(pb::SourceInfo::from).collect(),
            now_ms: now_ms(),
        }))
    }

    async fn remove_source(
        &self,
        req: Request<pb::RemoveSourceRequest>,
    ) -> Result<Response<pb::RemoveSourceResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        let name = req.get_ref().name.clone();
        coffer_types::check_source_name(&name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let who = self.node.authorize(&req, Rpc::RemoveSource, Some(&repo))?;
        let removed = self.write(Command::RemoveSource { repo: repo.clone(), name: name.clone() }).await?;
        let removed = matches!(removed, CommandResult::Ok);
        audit_ok(&who, Rpc::RemoveSource, Some(&repo), &format!("source {name}"));
        Ok(Response::new(pb::RemoveSourceResponse { removed }))
    }
    async fn record_dr(&self, req: Request<pb::RecordDrRequest>) -> Result<Response<pb::RecordDrResponse>, Status> {
        let repo = repo_name("record.repo", req.get_ref().record.as_ref().map(|r| r.repo.clone()).unwrap_or_default())?;
        self.node.authorize(&req, Rpc::RecordDr, Some(&repo))?;
        let raw = req.into_inner().record.ok_or_else(|| Status::invalid_argument("record is missing"))?;
        let record = coffer_types::DrRecord::try_from(raw)?;
        tracing::info!(repo = %repo, kind = record.kind.as_str(), source = %record.source, ok = record.ok, "dr record");
        self.write(Command::RecordDr { record }).await?;
        Ok(Response::new(pb::RecordDrResponse {}))
    }

    async fn list_dr(&self, req: Request<pb::ListDrRequest>) -> Result<Response<pb::ListDrResponse>, Status> {
        let repo = repo_name("repo", req.get_ref().repo.clone())?;
        self.node.authorize(&req, Rpc::ListDr, Some(&repo))?;
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => crate::dr::DEFAULT_PAGE,
            n => (n as usize).min(crate::dr::MAX_PAGE),
        };
        let after: Option<[u8; crate::dr::CURSOR_LEN]> = if r.page_token.is_empty() {
            None
        } else {
            Some(r.page_token.as_slice().try_into().map_err(|_| {
                Status::invalid_argument(format!(
                    "page_token: {} bytes, a cursor has {}",
                    r.page_token.len(),
                    crate::dr::CURSOR_LEN
                ))
            })?)
        };
        self.read_barrier().await?;
        self.repo(&repo)?;
        let (records, next) =
            crate::dr::page(self.tree(), &repo, r.since_ms, after.as_ref(), limit).map_err(Status::from)?;
        let nodes = self.nodes()?;
        let up: std::collections::HashSet<u64> =
            nodes.iter().map(|n| self.node_view(n)).filter(|n| n.state == "up").map(|n| n.id).collect();
        let lost = lost_packs(self.tree(), &up, &repo).map_err(Status::from)?;
        let p = &self.node.config.prices;
        let prices = p.is_set().then(|| pb::DrPrices {
            per_gib_read: p.per_gib_read.unwrap_or(0.0),
            per_gib_written: p.per_gib_written.unwrap_or(0.0),
            per_gib_cross_site: p.per_gib_cross_site.unwrap_or(0.0),
            per_node_hour: p.per_node_hour.unwrap_or(0.0),
        });
        Ok(Response::new(pb::ListDrResponse {
            records: records.iter().map(pb::DrRecord::from).collect(),
            next: next.map(|c| c.to_vec()).unwrap_or_default(),
            prices,
            lost_packs: lost.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }))
    }
}

/// At most `limit` snapshots of `repo` after `after` (exclusive) in id
/// order, and the cursor of the next page if more follow. Reads only the
/// repository's index keys from the cursor on, and the page's records.
fn snapshot_page(
    tree: &crate::store::Tree,
    repo: &RepoName,
    after: Option<&SnapshotId>,
    limit: usize,
) -> Result<(Vec<SnapshotRecord>, Option<SnapshotId>), MetaError> {
    // The index of snapshots by repository: a page reads its own keys only,
    // not the other repositories' snapshots.
    let ids = crate::index::snapshot_ids_after(tree, repo, after, limit + 1)?;
    let mut page: Vec<SnapshotRecord> = Vec::with_capacity(ids.len().min(limit));
    for id in ids.iter().take(limit) {
        if let Some(mut s) = kv::get::<SnapshotRecord>(tree, "snapshot", &kv::snapshot_key(id))? {
            s.stats.coverage = kv::get::<coffer_types::CoverageRecord>(tree, "coverage", &kv::coverage_key(id))?
                .map(coffer_types::CoverageRecord::into_coverage);
            page.push(s);
        }
    }
    let next = if ids.len() > limit { page.last().map(|s| s.id) } else { None };
    Ok((page, next))
}

/// Which shards of the catalog can be read now: a shard is usable when its
/// node is up and it has not been reported bad there (a reported shard
/// stays unusable until its repair moves it, which removes the report).
struct Usable<'a> {
    up: &'a std::collections::HashSet<u64>,
    bad: std::collections::HashMap<(PackId, u8), crate::command::BadShardRecord>,
}

impl<'a> Usable<'a> {
    fn new(tree: &crate::store::Tree, up: &'a std::collections::HashSet<u64>) -> Result<Self, MetaError> {
        Ok(Usable { up, bad: crate::repair::bad_shards(tree)? })
    }

    /// The only packs that can be short of a usable shard: those with a
    /// shard entry on a node that is not up (down, unknown, or 0 for
    /// unplaced shards), and those with a reported shard. Read through the
    /// indexes, so the cost is the packs touched, not the catalog.
    fn affected(&self, tree: &crate::store::Tree) -> Result<std::collections::BTreeSet<PackId>, MetaError> {
        let mut affected: std::collections::BTreeSet<PackId> = self.bad.keys().map(|(pack, _)| *pack).collect();
        for (node, count) in crate::index::held(tree)? {
            if count > 0 && !self.up.contains(&node.0) {
                affected.extend(crate::index::packs_on(tree, node)?);
            }
        }
        Ok(affected)
    }

    fn count(&self, pack: &PackRecord) -> usize {
        pack.shards
            .iter()
            .filter(|s| self.up.contains(&s.node.0))
            .filter(|s| self.bad.get(&(pack.id, s.index.0)).is_none_or(|b| b.node != s.node))
            .count()
    }
}

/// Pack health from the indexes: only the packs `Usable::affected` names
/// are read, and the rest are healthy. A shard reported bad counts as
/// missing from the report on, not only once the leader has planned its
/// repair: whoever waits for a healthy status after a scrub found damage
/// waits for the repair.
pub(crate) fn pack_health(
    tree: &crate::store::Tree,
    up: &std::collections::HashSet<u64>,
) -> Result<pb::PackHealth, MetaError> {
    let mut health = pb::PackHealth::default();
    let usable = Usable::new(tree, up)?;
    let affected = usable.affected(tree)?;
    let mut counted = 0u64;
    for id in &affected {
        let Some(pack) = kv::get::<PackRecord>(tree, "pack", &kv::pack_key(id))? else { continue };
        counted += 1;
        // An unplaced shard (node 0) is never up, so a short pack counts
        // as degraded (or worse) like one whose nodes are down.
        let available = usable.count(&pack);
        if pack.placed() < pack.params.total() {
            health.short += 1;
        }
        let (k, total) = (pack.params.k(), pack.params.total());
        if available == total {
            health.healthy += 1;
        } else if available < k {
            health.lost += 1;
        } else if available == k {
            health.at_risk += 1;
        } else {
            health.degraded += 1;
        }
    }
    health.healthy += crate::index::pack_count(tree)?.saturating_sub(counted);
    Ok(health)
}

/// The packs of `repo` with fewer than k usable shards: lost until those
/// nodes return or the reported shards are repaired. Like `pack_health`,
/// only the packs `Usable::affected` names are read.
pub(crate) fn lost_packs(
    tree: &crate::store::Tree,
    up: &std::collections::HashSet<u64>,
    repo: &RepoName,
) -> Result<Vec<PackId>, MetaError> {
    let usable = Usable::new(tree, up)?;
    let mut lost = Vec::new();
    for id in usable.affected(tree)? {
        let Some(pack) = kv::get::<PackRecord>(tree, "pack", &kv::pack_key(&id))? else { continue };
        if pack.repo == *repo && usable.count(&pack) < pack.params.k() {
            lost.push(id);
        }
    }
    Ok(lost)
}

/// Snapshots in one ListSnapshots page when the caller names no size, and
/// at most (a snapshot record is a few hundred bytes on the wire).
pub const DEFAULT_SNAPSHOT_PAGE: usize = 1_000;
pub const MAX_SNAPSHOT_PAGE: usize = 10_000;

/// The most pack ids one KnownPacks call may ask about.
pub const MAX_KNOWN_PACKS: usize = 1_000;

/// What a heartbeat says of its node's workers, bounded: the node field is
/// the sender's id whatever it claims, and a misbehaving node cannot make
/// the leader keep more than a few short entries.
fn reported_workers(id: NodeId, mut workers: Vec<pb::WorkerStatus>) -> Vec<pb::WorkerStatus> {
    const MAX_WORKERS: usize = 32;
    const MAX_TEXT: usize = 512;
    workers.truncate(MAX_WORKERS);
    for w in &mut workers {
        w.node = id.to_string();
        for text in [&mut w.name, &mut w.state, &mut w.last_error] {
            *text = truncated(std::mem::take(text), MAX_TEXT);
        }
        if w.progress.len() > MAX_WORKERS {
            w.progress = w.progress.drain().take(MAX_WORKERS).collect();
        }
    }
    workers
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::snapshot;

    #[test]
    fn snapshot_pages_list_a_repository_once_and_skip_the_others() {
        let t = crate::test_util::tree();
        let (mine, other) = (RepoName::new("mine").unwrap(), RepoName::new("other").unwrap());
        for id in 1..=20u8 {
            let repo = if id % 3 == 0 { other.clone() } else { mine.clone() };
            let s = snapshot(id, repo);
            crate::test_util::put(&t, kv::snapshot_key(&s.id), &s);
        }
        let want: Vec<SnapshotId> = (1..=20u8).filter(|i| i % 3 != 0).map(|i| SnapshotId([i; 16])).collect();
        for limit in [1, 2, 5, want.len(), 100] {
            let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
            loop {
                let (page, next) = snapshot_page(&t, &mine, after.as_ref(), limit).unwrap();
                assert!(page.len() <= limit);
                pages += 1;
                got.extend(page.iter().map(|s| s.id));
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got, want, "limit {limit}");
            assert_eq!(pages, want.len().div_ceil(limit), "no empty last page (limit {limit})");
        }
    }

    /// What a scrape and `ClusterStatus` report of pack health comes from
    /// the indexes (`held`, `packs_on`, the pack count) and reads only the
    /// packs on nodes that are not up; it must equal a classification of
    /// every pack record, whatever is down.
    #[test]
    fn pack_health_from_the_indexes_equals_a_full_scan() {
        use coffer_types::{ErasureParams, Hash32, PackKind, ShardIndex, ShardRecord};
        let t = crate::test_util::tree();
        let params = ErasureParams::new(2, 2).unwrap();
        // Twelve packs of 2+2 over five nodes; pack 9 is short (one shard unplaced).
        let mut packs = Vec::new();
        for p in 0..12u8 {
            let shards = (0..4u8)
                .map(|i| {
                    let node = if p == 9 && i == 3 { NodeId::UNPLACED } else { NodeId(u64::from((p + i) % 5 + 1)) };
                    ShardRecord { index: ShardIndex(i), node, checksum: Hash32([0; 32]) }
                })
                .collect();
            let pack = PackRecord {
                id: PackId([p + 1; 16]),
                repo: RepoName::new("r").unwrap(),
                kind: PackKind::Data,
                params,
                pack_len: 10,
                shard_len: 5,
                shards,
            };
            crate::test_util::put(&t, kv::pack_key(&pack.id), &pack);
            packs.push(pack);
        }
        let check = |bad: &[(usize, u8, u64)]| {
            for down in [vec![], vec![2u64], vec![2, 3], vec![1, 2, 3], vec![1, 2, 3, 4, 5]] {
                let up: std::collections::HashSet<u64> = (1..=5u64).filter(|n| !down.contains(n)).collect();
                // The full scan: shards on nodes up, not reported there.
                let available = |n: usize, p: &PackRecord| {
                    let reported =
                        |s: &ShardRecord| bad.iter().any(|&(bp, bi, bn)| bp == n && bi == s.index.0 && bn == s.node.0);
                    p.shards.iter().filter(|s| up.contains(&s.node.0) && !reported(s)).count()
                };
                let mut want = pb::PackHealth::default();
                for (n, p) in packs.iter().enumerate() {
                    if p.placed() < 4 {
                        want.short += 1;
                    }
                    match available(n, p) {
                        4 => want.healthy += 1,
                        0 | 1 => want.lost += 1,
                        2 => want.at_risk += 1,
                        _ => want.degraded += 1,
                    }
                }
                assert_eq!(pack_health(&t, &up).unwrap(), want, "down {down:?}, reported {bad:?}");
                let lost: Vec<PackId> =
                    packs.iter().enumerate().filter(|&(n, p)| available(n, p) < 2).map(|(_, p)| p.id).collect();
                let r = RepoName::new("r").unwrap();
                assert_eq!(lost_packs(&t, &up, &r).unwrap(), lost, "down {down:?}, reported {bad:?}");
            }
        };
        check(&[]);
        // Reports go through the state machine, as a node's would: one
        // shard of pack 0, two of pack 4 (so it is at risk with all nodes
        // up), and one naming a node that no longer holds the shard (the
        // command is refused and changes nothing).
        let mut bad = Vec::new();
        for (p, i) in [(0usize, 1u8), (4, 0), (4, 2)] {
            let node = packs[p].shards[i as usize].node;
            let cmd = Command::MarkBadShard { pack: packs[p].id, index: ShardIndex(i), node, time_ms: 1 };
            assert_eq!(crate::test_util::run(&t, cmd), CommandResult::Ok);
            bad.push((p, i, node.0));
        }
        let stale = Command::MarkBadShard { pack: packs[7].id, index: ShardIndex(0), node: NodeId(99), time_ms: 1 };
        assert_ne!(crate::test_util::run(&t, stale), CommandResult::Ok);
        check(&bad);
    }
}
