//! A fake cluster for the pipeline tests: an in-memory catalog and storage
//! nodes served over real gRPC on loopback, with switches to make a node
//! unreachable, refuse writes or corrupt a shard.
//!
//! The fake follows the catalog semantics the agent relies on (idempotent
//! commits, first location wins, snapshot commit checks its root and
//! reference list) but is no model of the real metadata plane: no Raft, no
//! leases (only a switch that refuses renewals), no garbage collection.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_proto::pb::catalog_server::{Catalog, CatalogServer};
use coffer_proto::pb::shard_store_server::{ShardStore, ShardStoreServer};
use coffer_proto::pb::{self, put_shard_request::Msg};
use coffer_types::{PackRecord, MAX_FRAME_BYTES};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use coffer_rpc::MetaClient;

type Res<T> = Result<Response<T>, Status>;

/// A shared fake, as a gRPC service (the service traits are foreign, so they
/// cannot be implemented on `Arc` directly).
pub struct Svc<T>(Arc<T>);

impl<T> std::ops::Deref for Svc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Default)]
pub struct CatalogState {
    pub repos: HashMap<String, pb::Repo>,
    pub sessions: HashSet<Vec<u8>>,
    pub chunks: HashMap<(String, Vec<u8>), pb::ChunkLocation>,
    pub packs: HashMap<Vec<u8>, pb::Pack>,
    pub snapshots: Vec<pb::Snapshot>,
    pub nodes: Vec<pb::Node>,
    /// Each repository's key slot set version (absent: 0).
    pub key_slots_version: HashMap<String, u64>,
}

#[derive(Default)]
pub struct FakeCatalog {
    pub state: Mutex<CatalogState>,
    pub allocations: AtomicU64,
    pub pack_commits: AtomicU64,
    /// Refuse to renew an open session, as the metadata plane does once
    /// its lease has lapsed.
    pub refuse_renewals: AtomicBool,
    pub renewals_refused: AtomicU64,
}

impl FakeCatalog {
    fn st(&self) -> std::sync::MutexGuard<'_, CatalogState> {
        self.state.lock().unwrap()
    }

    /// Marks node `i` (by position) as the failure detector would.
    pub fn set_state(&self, i: usize, state: &str) {
        self.st().nodes[i].state = state.to_string();
    }
}

#[tonic::async_trait]
impl Catalog for Svc<FakeCatalog> {
    async fn register_node(&self, _: Request<pb::RegisterNodeRequest>) -> Res<pb::RegisterNodeResponse> {
        Err(Status::unimplemented("the fake catalog is given its nodes"))
    }

    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Res<pb::HeartbeatResponse> {
        Err(Status::unimplemented("the fake catalog is given its nodes"))
    }

    async fn cluster_status(&self, _: Request<pb::ClusterStatusRequest>) -> Res<pb::ClusterStatusResponse> {
        Err(Status::unimplemented("not used by the agent pipelines"))
    }

    async fn record_dr(&self, _: Request<pb::RecordDrRequest>) -> Res<pb::RecordDrResponse> {
        Err(Status::unimplemented("the fake catalog keeps no disaster-recovery records"))
    }

    async fn list_dr(&self, _: Request<pb::ListDrRequest>) -> Res<pb::ListDrResponse> {
        Err(Status::unimplemented("the fake catalog keeps no disaster-recovery records"))
    }

    async fn create_repo(&self, req: Request<pb::CreateRepoRequest>) -> Res<pb::CreateRepoResponse> {
        let repo = req.into_inner().repo.ok_or_else(|| Status::invalid_argument("no repo"))?;
        let mut st = self.st();
        if st.repos.contains_key(&repo.name) {
            return Err(Status::already_exists(repo.name));
        }
        st.repos.insert(repo.name.clone(), repo);
        Ok(Response::new(pb::CreateRepoResponse {}))
    }

    async fn get_repo(&self, req: Request<pb::GetRepoRequest>) -> Res<pb::Repo> {
        let name = req.into_inner().name;
        self.st().repos.get(&name).cloned().map(Response::new).ok_or_else(|| Status::not_found(name))
    }

    async fn get_key_slots(&self, req: Request<pb::GetKeySlotsRequest>) -> Res<pb::KeySlots> {
        let name = req.into_inner().repo;
        let st = self.st();
        let repo = st.repos.get(&name).ok_or_else(|| Status::not_found(name.clone()))?;
        let version = st.key_slots_version.get(&name).copied().unwrap_or(0);
        Ok(Response::new(pb::KeySlots { key_slots: repo.key_slots.clone(), version }))
    }

    /// The same compare-and-set as the metadata plane's `SetKeySlots`.
    async fn set_key_slots(&self, req: Request<pb::SetKeySlotsRequest>) -> Res<pb::SetKeySlotsResponse> {
        let req = req.into_inner();
        let mut st = self.st();
        let current = st.key_slots_version.get(&req.repo).copied().unwrap_or(0);
        if current != req.expected_version {
            return Err(Status::failed_precondition(format!("key slots at version {current}")));
        }
        if req.key_slots.is_empty() {
            return Err(Status::failed_precondition("refusing to remove the last key slot"));
        }
        let repo = st.repos.get_mut(&req.repo).ok_or_else(|| Status::not_found(req.repo.clone()))?;
        repo.key_slots = req.key_slots;
        st.key_slots_version.insert(req.repo, current + 1);
        Ok(Response::new(pb::SetKeySlotsResponse { version: current + 1 }))
    }

    async fn begin_session(&self, req: Request<pb::BeginSessionRequest>) -> Res<pb::BeginSessionResponse> {
        let req = req.into_inner();
        let mut st = self.st();
        if self.refuse_renewals.load(Ordering::SeqCst) && st.sessions.contains(&req.session_id) {
            self.renewals_refused.fetch_add(1, Ordering::SeqCst);
            return Err(Status::failed_precondition("backup session: its lease ran out"));
        }
        st.sessions.insert(req.session_id);
        Ok(Response::new(pb::BeginSessionResponse { lease_until_ms: req.lease_ms }))
    }

    async fn end_session(&self, req: Request<pb::EndSessionRequest>) -> Res<pb::EndSessionResponse> {
        self.st().sessions.remove(&req.into_inner().session_id);
        Ok(Response::new(pb::EndSessionResponse {}))
    }

    async fn lookup_chunks(&self, req: Request<pb::LookupChunksRequest>) -> Res<pb::LookupChunksResponse> {
        let req = req.into_inner();
        if req.chunk_ids.len() > 10_000 {
            return Err(Status::invalid_argument("too many ids"));
        }
        let st = self.st();
        let found =
            req.chunk_ids.iter().filter_map(|id| st.chunks.get(&(req.repo.clone(), id.clone())).cloned()).collect();
        Ok(Response::new(pb::LookupChunksResponse { found }))
    }

    async fn allocate_pack(&self, req: Request<pb::AllocatePackRequest>) -> Res<pb::AllocatePackResponse> {
        let req = req.into_inner();
        let st = self.st();
        let repo = st.repos.get(&req.repo).ok_or_else(|| Status::not_found("repo"))?;
        let params = repo.params.ok_or_else(|| Status::internal("repo without params"))?;
        let total = (params.k + params.m) as usize;
        let candidates: Vec<&pb::Node> =
            st.nodes.iter().filter(|n| n.state != "down" && !req.exclude.contains(&n.id)).collect();
        if candidates.len() < total {
            return Err(Status::failed_precondition("not enough up nodes"));
        }
        // Rotate so that packs spread over every node.
        let turn = self.allocations.fetch_add(1, Ordering::Relaxed) as usize;
        let targets = (0..total)
            .map(|i| {
                let n = candidates[(turn + i) % candidates.len()];
                pb::Target { index: i as u32, node: n.id, addr: n.addr.clone() }
            })
            .collect();
        Ok(Response::new(pb::AllocatePackResponse {
            pack_id: rand::random::<[u8; 16]>().to_vec(),
            params: Some(params),
            targets,
            min_shards: 0,
        }))
    }

    async fn commit_pack(&self, req: Request<pb::CommitPackRequest>) -> Res<pb::CommitPackResponse> {
        let req = req.into_inner();
        let pack = req.pack.ok_or_else(|| Status::invalid_argument("no pack"))?;
        PackRecord::try_from(pack.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut st = self.st();
        if !st.sessions.contains(&req.session_id) {
            return Err(Status::failed_precondition("no such session"));
        }
        self.pack_commits.fetch_add(1, Ordering::Relaxed);
        for c in req.chunks {
            st.chunks.entry((pack.repo.clone(), c.chunk_id.clone())).or_insert(c);
        }
        st.packs.entry(pack.id.clone()).or_insert(pack);
        Ok(Response::new(pb::CommitPackResponse {}))
    }

    async fn commit_snapshot(&self, req: Request<pb::CommitSnapshotRequest>) -> Res<pb::CommitSnapshotResponse> {
        let req = req.into_inner();
        let snap = req.snapshot.ok_or_else(|| Status::invalid_argument("no snapshot"))?;
        let mut st = self.st();
        if !st.sessions.remove(&req.session_id) {
            return Err(Status::failed_precondition("no such session"));
        }
        if !st.chunks.contains_key(&(snap.repo.clone(), snap.root.clone())) {
            return Err(Status::failed_precondition("root tree not indexed"));
        }
        if !st.packs.contains_key(&snap.refs_pack) {
            return Err(Status::failed_precondition("refs pack not committed"));
        }
        st.snapshots.push(snap);
        st.snapshots.sort_by_key(|s| s.start_ms);
        Ok(Response::new(pb::CommitSnapshotResponse {}))
    }

    async fn list_snapshots(&self, req: Request<pb::ListSnapshotsRequest>) -> Res<pb::ListSnapshotsResponse> {
        let repo = req.into_inner().repo;
        let st = self.st();
        let snapshots = st.snapshots.iter().filter(|s| s.repo == repo).cloned().collect();
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots, next: Vec::new() }))
    }

    async fn known_packs(&self, _: Request<pb::KnownPacksRequest>) -> Res<pb::KnownPacksResponse> {
        Err(Status::unimplemented("the fake catalog collects no orphans"))
    }

    async fn get_packs(&self, req: Request<pb::GetPacksRequest>) -> Res<pb::GetPacksResponse> {
        let st = self.st();
        let packs: Vec<pb::Pack> =
            req.into_inner().pack_ids.iter().filter_map(|id| st.packs.get(id).cloned()).collect();
        let named: HashSet<u64> = packs.iter().flat_map(|p| p.shards.iter().map(|s| s.node)).collect();
        let nodes = st.nodes.iter().filter(|n| named.contains(&n.id)).cloned().collect();
        Ok(Response::new(pb::GetPacksResponse { packs, nodes }))
    }

    // Repair RPCs are not used by the agent paths these tests cover.
    async fn report_bad_shards(&self, _: Request<pb::ReportBadShardsRequest>) -> Res<pb::ReportBadShardsResponse> {
        Err(Status::unimplemented("the fake catalog does not repair"))
    }

    async fn list_incidents(&self, _: Request<pb::ListIncidentsRequest>) -> Res<pb::ListIncidentsResponse> {
        Err(Status::unimplemented("the fake catalog has no incidents"))
    }

    async fn drain_node(&self, _: Request<pb::DrainNodeRequest>) -> Res<pb::DrainNodeResponse> {
        Err(Status::unimplemented("the fake catalog does not drain"))
    }

    async fn report_source(&self, _: Request<pb::ReportSourceRequest>) -> Res<pb::ReportSourceResponse> {
        Err(Status::unimplemented("the fake catalog has no source registry"))
    }

    async fn list_sources(&self, _: Request<pb::ListSourcesRequest>) -> Res<pb::ListSourcesResponse> {
        Err(Status::unimplemented("the fake catalog has no source registry"))
    }

    async fn remove_source(&self, _: Request<pb::RemoveSourceRequest>) -> Res<pb::RemoveSourceResponse> {
        Err(Status::unimplemented("the fake catalog has no source registry"))
    }
}

/// A shard by pack id and index.
type ShardKey = (Vec<u8>, u32);
/// A shard body and the checksum its header declared.
type StoredShard = (Vec<u8>, Vec<u8>);

/// One fake storage node.
#[derive(Default)]
pub struct FakeNode {
    /// Shard bodies with the checksum their header declared.
    pub shards: Mutex<HashMap<ShardKey, StoredShard>>,
    /// Answers every call with UNAVAILABLE, as an unreachable node would look.
    pub unreachable: AtomicBool,
    /// Refuses shard writes.
    pub refuse_puts: AtomicBool,
    /// Serves ranges without checking them, as a node that misses corruption.
    pub skip_read_checks: AtomicBool,
}

impl FakeNode {
    fn gate(&self) -> Result<(), Status> {
        if self.unreachable.load(Ordering::Relaxed) {
            Err(Status::unavailable("node unreachable (test)"))
        } else {
            Ok(())
        }
    }

    /// Flips a byte of every shard this node holds.
    pub fn corrupt_all(&self) -> usize {
        let mut shards = self.shards.lock().unwrap();
        for (body, _) in shards.values_mut() {
            if let Some(b) = body.first_mut() {
                *b ^= 0xff;
            }
        }
        shards.len()
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::ShardFrame, Status>> + Send>>;

#[tonic::async_trait]
impl ShardStore for Svc<FakeNode> {
    async fn put_shard(&self, req: Request<Streaming<pb::PutShardRequest>>) -> Res<pb::PutShardResponse> {
        self.gate()?;
        if self.refuse_puts.load(Ordering::Relaxed) {
            return Err(Status::resource_exhausted("disk full (test)"));
        }
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::PutShardRequest { msg: Some(Msg::Header(h)) })) => h,
            _ => return Err(Status::invalid_argument("first message must be the header")),
        };
        if header.format_version != 1 {
            return Err(Status::invalid_argument("format version"));
        }
        let mut body = Vec::with_capacity(header.length.min(64 << 20) as usize);
        let mut hasher = blake3::Hasher::new();
        let mut stored = 0u64;
        while let Some(msg) = stream.next().await {
            match msg?.msg {
                Some(Msg::Data(d)) if d.len() <= MAX_FRAME_BYTES => {
                    hasher.update(&d);
                    stored += d.len() as u64;
                    body.extend_from_slice(&d);
                }
                _ => return Err(Status::invalid_argument("bad frame")),
            }
        }
        if stored != header.length || hasher.finalize().as_bytes()[..] != header.checksum[..] {
            return Err(Status::data_loss("length or checksum mismatch"));
        }
        self.shards.lock().unwrap().insert((header.pack_id, header.index), (body, header.checksum));
        Ok(Response::new(pb::PutShardResponse { stored_bytes: stored }))
    }

    type GetShardStream = FrameStream;

    async fn get_shard(&self, req: Request<pb::GetShardRequest>) -> Res<FrameStream> {
        self.gate()?;
        let req = req.into_inner();
        let shard = req.shard.ok_or_else(|| Status::invalid_argument("no shard"))?;
        let shards = self.shards.lock().unwrap();
        let (body, checksum) =
            shards.get(&(shard.pack_id, shard.index)).ok_or_else(|| Status::not_found("no such shard"))?;
        if !self.skip_read_checks.load(Ordering::Relaxed) && blake3::hash(body).as_bytes()[..] != checksum[..] {
            return Err(Status::data_loss("shard fails its checksum"));
        }
        let start = req.offset as usize;
        let end = if req.length == 0 { body.len() } else { start.saturating_add(req.length as usize) };
        let range = body.get(start..end).ok_or_else(|| Status::out_of_range("range"))?;
        let frames: Vec<Result<pb::ShardFrame, Status>> = range
            .chunks(MAX_FRAME_BYTES)
            .map(|c| Ok(pb::ShardFrame { data: bytes::Bytes::copy_from_slice(c) }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(frames))))
    }

    async fn delete_shard(&self, _: Request<pb::ShardRef>) -> Res<pb::DeleteShardResponse> {
        Err(Status::unimplemented("not used by the agent pipelines"))
    }

    async fn stat_shard(&self, _: Request<pb::ShardRef>) -> Res<pb::ShardHeader> {
        Err(Status::unimplemented("not used by the agent pipelines"))
    }

    async fn node_info(&self, _: Request<pb::NodeInfoRequest>) -> Res<pb::NodeInfoResponse> {
        Err(Status::unimplemented("not used by the agent pipelines"))
    }

    // Repair RPCs are not used by the agent paths these tests cover.
    async fn rebuild_shard(&self, _: Request<pb::RebuildShardRequest>) -> Res<pb::RebuildShardResponse> {
        Err(Status::unimplemented("the fake node does not rebuild"))
    }

    async fn scrub(&self, _: Request<pb::ScrubRequest>) -> Res<pb::ScrubResponse> {
        Err(Status::unimplemented("the fake node does not scrub"))
    }

    async fn list_shards(&self, _: Request<pb::ListShardsRequest>) -> Res<pb::ListShardsResponse> {
        Err(Status::unimplemented("the fake node does not list shards"))
    }
}

pub struct FakeCluster {
    pub catalog: Arc<FakeCatalog>,
    pub nodes: Vec<Arc<FakeNode>>,
    pub meta: Arc<MetaClient>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

async fn listen() -> (String, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (addr, l)
}

impl FakeCluster {
    pub async fn start(n_nodes: usize) -> FakeCluster {
        let catalog = Arc::new(FakeCatalog::default());
        let mut servers = Vec::new();
        let (meta_addr, listener) = listen().await;
        let server = coffer_rpc::Server::new().service(CatalogServer::new(Svc(catalog.clone())));
        servers.push(tokio::spawn(async move {
            let _ = server.serve(listener, std::future::pending()).await;
        }));
        let mut nodes = Vec::new();
        for i in 0..n_nodes {
            let node = Arc::new(FakeNode::default());
            let (addr, listener) = listen().await;
            let server = coffer_rpc::Server::new().bulk().service(ShardStoreServer::new(Svc(node.clone())));
            servers.push(tokio::spawn(async move {
                let _ = server.serve(listener, std::future::pending()).await;
            }));
            catalog.st().nodes.push(pb::Node {
                id: 100 + i as u64,
                site: format!("site{}", i % 3),
                addr,
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                last_heartbeat_ms: 0,
                state: "up".into(),
                ..Default::default()
            });
            nodes.push(node);
        }
        let meta = Arc::new(MetaClient::new(&[meta_addr], Duration::from_secs(5)).unwrap());
        FakeCluster { catalog, nodes, meta, servers }
    }
}
