//! The node's identity and its conversation with the metadata plane, against
//! a fake catalog that records registrations and can forget the node.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_proto::pb::catalog_server::{Catalog, CatalogServer};
use coffer_proto::pb::*;
use coffer_types::{NodeId, SiteId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::{StorageConfig, StorageError, StorageNode};

#[derive(Default)]
struct FakeState {
    registrations: Vec<RegisterNodeRequest>,
    /// Heartbeats answered `known = true`.
    heartbeats: usize,
    /// When set, the next heartbeat is answered `known = false` and the
    /// node is forgotten, as after a metadata plane lost its cluster map.
    forget: bool,
    /// The pack ids KnownPacks answers as known.
    known_packs: Vec<Vec<u8>>,
    known_pack_calls: usize,
    /// The most orphan bytes a heartbeat reported.
    orphan_bytes: u64,
}

#[derive(Clone, Default)]
struct FakeCatalog(Arc<Mutex<FakeState>>);

impl FakeCatalog {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

fn fake<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the fake catalog"))
}

#[tonic::async_trait]
impl Catalog for FakeCatalog {
    async fn register_node(&self, r: Request<RegisterNodeRequest>) -> Result<Response<RegisterNodeResponse>, Status> {
        self.state().registrations.push(r.into_inner());
        Ok(Response::new(RegisterNodeResponse {}))
    }
    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let mut s = self.state();
        let id = r.get_ref().id;
        let known = !s.forget && s.registrations.iter().any(|reg| reg.id == id);
        if s.forget {
            s.forget = false;
            s.registrations.clear();
        }
        if known {
            s.heartbeats += 1;
            s.orphan_bytes = s.orphan_bytes.max(r.get_ref().orphan_bytes);
        }
        Ok(Response::new(HeartbeatResponse { known }))
    }
    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        fake()
    }
    async fn create_repo(&self, _: Request<CreateRepoRequest>) -> Result<Response<CreateRepoResponse>, Status> {
        fake()
    }
    async fn get_repo(&self, _: Request<GetRepoRequest>) -> Result<Response<Repo>, Status> {
        fake()
    }
    async fn begin_session(&self, _: Request<BeginSessionRequest>) -> Result<Response<BeginSessionResponse>, Status> {
        fake()
    }
    async fn end_session(&self, _: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        fake()
    }
    async fn lookup_chunks(&self, _: Request<LookupChunksRequest>) -> Result<Response<LookupChunksResponse>, Status> {
        fake()
    }
    async fn allocate_pack(&self, _: Request<AllocatePackRequest>) -> Result<Response<AllocatePackResponse>, Status> {
        fake()
    }
    async fn commit_pack(&self, _: Request<CommitPackRequest>) -> Result<Response<CommitPackResponse>, Status> {
        fake()
    }
    async fn commit_snapshot(
        &self,
        _: Request<CommitSnapshotRequest>,
    ) -> Result<Response<CommitSnapshotResponse>, Status> {
        fake()
    }
    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        fake()
    }
    async fn get_packs(&self, _: Request<GetPacksRequest>) -> Result<Response<GetPacksResponse>, Status> {
        fake()
    }
    async fn report_bad_shards(
        &self,
        _: Request<coffer_proto::pb::ReportBadShardsRequest>,
    ) -> Result<Response<coffer_proto::pb::ReportBadShardsResponse>, Status> {
        fake()
    }
    async fn list_incidents(
        &self,
        _: Request<coffer_proto::pb::ListIncidentsRequest>,
    ) -> Result<Response<coffer_proto::pb::ListIncidentsResponse>, Status> {
        fake()
    }
    async fn drain_node(
        &self,
        _: Request<coffer_proto::pb::DrainNodeRequest>,
    ) -> Result<Response<coffer_proto::pb::DrainNodeResponse>, Status> {
        fake()
    }
    async fn known_packs(&self, req: Request<KnownPacksRequest>) -> Result<Response<KnownPacksResponse>, Status> {
        let mut st = self.state();
        st.known_pack_calls += 1;
        let known = req.into_inner().pack_ids.into_iter().filter(|id| st.known_packs.contains(id)).collect();
        Ok(Response::new(KnownPacksResponse { known }))
    }
    async fn get_key_slots(
        &self,
        _: Request<coffer_proto::pb::GetKeySlotsRequest>,
    ) -> Result<Response<coffer_proto::pb::KeySlots>, Status> {
        fake()
    }
    async fn set_key_slots(
        &self,
        _: Request<coffer_proto::pb::SetKeySlotsRequest>,
    ) -> Result<Response<coffer_proto::pb::SetKeySlotsResponse>, Status> {
        fake()
    }

    async fn record_dr(
        &self,
        _: Request<coffer_proto::pb::RecordDrRequest>,
    ) -> Result<Response<coffer_proto::pb::RecordDrResponse>, Status> {
        fake()
    }

    async fn list_dr(
        &self,
        _: Request<coffer_proto::pb::ListDrRequest>,
    ) -> Result<Response<coffer_proto::pb::ListDrResponse>, Status> {
        fake()
    }

    async fn report_source(
        &self,
        _: Request<coffer_proto::pb::ReportSourceRequest>,
    ) -> Result<Response<coffer_proto::pb::ReportSourceResponse>, Status> {
        fake()
    }

    async fn list_sources(
        &self,
        _: Request<coffer_proto::pb::ListSourcesRequest>,
    ) -> Result<Response<coffer_proto::pb::ListSourcesResponse>, Status> {
        fake()
    }

    async fn remove_source(
        &self,
        _: Request<coffer_proto::pb::RemoveSourceRequest>,
    ) -> Result<Response<coffer_proto::pb::RemoveSourceResponse>, Status> {
        fake()
    }
}

/// Polls `cond` until it holds, failing the test after a generous deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_fake_meta() -> anyhow::Result<(FakeCatalog, String, oneshot::Sender<()>)> {
    let catalog = FakeCatalog::default();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = coffer_rpc::Server::new().service(CatalogServer::new(catalog.clone()));
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok((catalog, addr, stop))
}

fn config(dir: &std::path::Path, advertise: &str, meta: &str) -> anyhow::Result<StorageConfig> {
    let mut c = StorageConfig::new(dir, advertise, SiteId::new("site-b")?, vec![meta.to_string()]);
    c.heartbeat_interval = Duration::from_millis(50);
    Ok(c)
}

type Running = (oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), StorageError>>);

async fn serve(node: StorageNode) -> anyhow::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok((stop, task))
}

async fn stop((stop, task): Running) -> anyhow::Result<()> {
    let _ = stop.send(());
    task.await??;
    Ok(())
}

#[tokio::test]
async fn registers_heartbeats_re_registers_and_keeps_its_id_across_restarts() -> anyhow::Result<()> {
    let (catalog, meta, _meta_stop) = start_fake_meta().await?;
    let dir = tempfile::tempdir()?;

    let node = StorageNode::open(config(dir.path(), "10.0.0.1:7000", &meta)?)?;
    let id = node.id();
    let running = serve(node).await?;
    wait_until("a registration and two heartbeats", || {
        let s = catalog.state();
        !s.registrations.is_empty() && s.heartbeats >= 2
    })
    .await;
    {
        let s = catalog.state();
        let reg = &s.registrations[0];
        assert_eq!((reg.id, reg.site.as_str(), reg.addr.as_str()), (id.0, "site-b", "10.0.0.1:7000"));
        assert!(reg.capacity_bytes > 0);
    }

    // The catalog forgets the node: the next heartbeat says so, and the node registers again.
    catalog.state().forget = true;
    wait_until("a second registration", || !catalog.state().registrations.is_empty() && !catalog.state().forget).await;
    stop(running).await?;

    // A restart on the same directory keeps the id and announces the new address.
    catalog.state().registrations.clear();
    let node = StorageNode::open(config(dir.path(), "10.0.0.2:7001", &meta)?)?;
    assert_eq!(node.id(), id);
    let running = serve(node).await?;
    wait_until("a registration from the restarted node", || !catalog.state().registrations.is_empty()).await;
    {
        let s = catalog.state();
        assert_eq!((s.registrations[0].id, s.registrations[0].addr.as_str()), (id.0, "10.0.0.2:7001"));
    }
    stop(running).await
}

#[test]
fn node_id_file_is_stable_and_never_silently_replaced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path(), "127.0.0.1:9", "127.0.0.1:1")?;
    let first = StorageNode::open(cfg.clone())?.id();
    assert_ne!(first, NodeId(0));
    assert_eq!(StorageNode::open(cfg.clone())?.id(), first);
    assert_eq!(std::fs::read_to_string(dir.path().join("node-id"))?.trim(), first.to_string());

    std::fs::write(dir.path().join("node-id"), "not hex\n")?;
    assert!(matches!(StorageNode::open(cfg.clone()), Err(StorageError::NodeIdFile { .. })));
    assert_eq!(std::fs::read_to_string(dir.path().join("node-id"))?, "not hex\n");

    let mut bad = cfg;
    bad.advertise = String::new();
    assert!(matches!(StorageNode::open(bad), Err(StorageError::Config { .. })));
    Ok(())
}

/// Puts a shard of `pack` with `len` bytes of `index` into `store`.
fn put_shard(
    store: &crate::ShardStore,
    pack: coffer_types::PackId,
    index: u8,
    len: usize,
) -> anyhow::Result<crate::ShardHeader> {
    use coffer_types::{Hash32, ShardIndex};
    let body = vec![index; len];
    let h = crate::ShardHeader {
        pack,
        index: ShardIndex(index),
        k: 4,
        m: 2,
        body_len: len as u64,
        body_checksum: Hash32(*blake3::hash(&body).as_bytes()),
    };
    store.put(h, &body)?;
    Ok(h)
}

#[tokio::test]
async fn orphans_unknown_for_the_age_are_counted_then_collected_and_nothing_else() -> anyhow::Result<()> {
    use coffer_types::PackId;
    let (catalog, meta, _meta_stop) = start_fake_meta().await?;
    let dir = tempfile::tempdir()?;
    let mut c = config(dir.path(), "10.0.0.1:7000", &meta)?;
    c.orphan_age = Duration::from_secs(1);
    c.orphan_interval = Some(Duration::from_millis(300));
    let node = StorageNode::open(c)?;
    let store = node.store().clone();
    let (known, orphan) = (PackId::random(), PackId::random());
    let kept_known = [put_shard(&store, known, 0, 5000)?, put_shard(&store, known, 1, 5000)?];
    let orphans = [put_shard(&store, orphan, 2, 7000)?, put_shard(&store, orphan, 3, 7000)?];
    catalog.state().known_packs = vec![known.as_bytes().to_vec()];
    let orphan_bytes: u64 = orphans.iter().map(|h| h.file_len()).sum();

    let running = serve(node).await?;
    wait_until("the orphans reported by a heartbeat", || catalog.state().orphan_bytes == orphan_bytes).await;
    wait_until("the orphans collected", || orphans.iter().all(|h| !store.shard_path(&h.pack, h.index).exists())).await;
    for h in &kept_known {
        store.verify(&h.pack, h.index)?;
    }
    assert_eq!(store.shard_count(), 2);
    assert!(catalog.state().known_pack_calls >= 2, "asked again before deleting");
    stop(running).await
}

/// A node whose wall clock jumped forward sees a fresh shard's mtime as
/// days old; its pack may still commit, so the shard must wait the orphan
/// age on the monotonic clock (before the fix it went on the second pass).
#[tokio::test]
async fn an_orphan_whose_mtime_looks_old_waits_the_age_on_the_monotonic_clock() -> anyhow::Result<()> {
    use coffer_types::PackId;
    let (catalog, meta, _meta_stop) = start_fake_meta().await?;
    let dir = tempfile::tempdir()?;
    let mut c = config(dir.path(), "10.0.0.1:7000", &meta)?;
    c.orphan_age = Duration::from_secs(3600);
    c.orphan_interval = Some(Duration::from_millis(200));
    let node = StorageNode::open(c)?;
    let store = node.store().clone();
    let h = put_shard(&store, PackId::random(), 0, 4000)?;
    let ten_days_ago = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    filetime::set_file_mtime(store.shard_path(&h.pack, h.index), filetime::FileTime::from_system_time(ten_days_ago))?;

    let running = serve(node).await?;
    wait_until("the orphan reported by a heartbeat", || catalog.state().orphan_bytes == h.file_len()).await;
    let calls = catalog.state().known_pack_calls;
    wait_until("three more passes", || catalog.state().known_pack_calls >= calls + 3).await;
    store.verify(&h.pack, h.index)?;
    stop(running).await
}
