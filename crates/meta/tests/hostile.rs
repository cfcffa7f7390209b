//! Hostile but well-formed requests against a real metadata node (one
//! voter, its services on an ephemeral port, the clients the agents use):
//! huge counts, ids of the wrong length, absurd erasure parameters, values
//! past their bounds, messages past their service's size limit. Each gets
//! INVALID_ARGUMENT naming the field (or, for an oversized message, the
//! transport's size error), nothing is written, and the node keeps serving.

use std::time::Duration;

use coffer_meta::types::{Entry, TypeConfig};
use coffer_meta::{MetaConfig, MetaNode};
use coffer_proto::limits;
use coffer_proto::pb::admin_client::AdminClient;
use coffer_proto::pb::maintenance_client::MaintenanceClient;
use coffer_proto::pb::{self, catalog_client::CatalogClient};
use coffer_rpc::identity::Bearer;
use coffer_types::MetaId;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, Vote};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The cluster admin token the node is configured with: the hostile
/// requests come from a caller who may make them, so that what refuses them
/// is their content, not the authorisation.
const ADMIN_TOKEN: &str = "hostile-test-cluster-admin-token-0123456789";

type Authed = InterceptedService<Channel, Bearer>;

fn authed(addr: &str) -> Authed {
    let bearer = Bearer::new(ADMIN_TOKEN).expect("a bearer token");
    InterceptedService::new(coffer_rpc::channel(addr).expect("a channel"), bearer)
}

struct Node {
    catalog: CatalogClient<Authed>,
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), coffer_meta::MetaError>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Node {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("bound address").to_string();
    let mut config = MetaConfig::new(MetaId(1), dir.path().to_path_buf(), addr.clone());
    config.init = true;
    config.admin_token = Some(coffer_meta::AdminToken::new(ADMIN_TOKEN).expect("an admin token"));
    config.raft_heartbeat = Duration::from_millis(50);
    config.election_timeout = (Duration::from_millis(200), Duration::from_millis(400));
    let node = MetaNode::start(config).await.expect("start the metadata node");
    node.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(listener, async move {
        let _ = stopped.await;
    }));
    let l = limits::CATALOG;
    let catalog =
        CatalogClient::new(authed(&addr)).max_decoding_message_size(l.response).max_encoding_message_size(l.request);
    Node { catalog, addr, stop, task, _dir: dir }
}

/// The Raft codec's encoding (bincode 1, fixed-width integers).
fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().serialize(v).expect("encodable")
}

/// The call failed with `code` and a message naming every one of `words`.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, Status>, code: Code, words: &[&str]) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), code, "{what}: {s:?}");
    for w in words {
        assert!(s.message().contains(w), "{what}: {:?} does not name {w:?}", s.message());
    }
}

fn pack(k: u32, m: u32, pack_len: u64) -> pb::Pack {
    pb::Pack {
        id: vec![1; 16],
        repo: "r".into(),
        kind: "data".into(),
        params: Some(pb::ErasureParams { k, m }),
        pack_len,
        shard_len: pack_len.div_ceil(u64::from(k.max(1))),
        shards: (0..k.saturating_add(m).min(64))
            .map(|i| pb::Shard { index: i, node: u64::from(i) + 1, checksum: vec![0; 32] })
            .collect(),
    }
}

fn location() -> pb::ChunkLocation {
    pb::ChunkLocation { chunk_id: vec![2; 32], pack: vec![1; 16], offset: 0, len: 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_the_node_keeps_serving() {
    let mut n = start().await;
    let c = &mut n.catalog;
    let ia = Code::InvalidArgument;

    let repo = |slots: Vec<Vec<u8>>| pb::CreateRepoRequest {
        repo: Some(pb::Repo {
            name: "r".into(),
            params: Some(pb::ErasureParams { k: 2, m: 1 }),
            key_slots: slots,
            created_ms: 0,
        }),
        min_shards: 0,
    };
    refused("too many key slots", c.create_repo(repo(vec![vec![0; 100]; 17])).await, ia, &["repo.key_slots", "16"]);
    refused("a huge key slot", c.create_repo(repo(vec![vec![0; 100_000]])).await, ia, &["repo.key_slots", "16384"]);
    // A repository to aim the rest at.
    c.create_repo(repo(vec![vec![0; 100]])).await.expect("a sane repository");

    let ids = |n: usize, len: usize| vec![vec![3u8; len]; n];
    refused(
        "a lookup of too many ids",
        c.lookup_chunks(pb::LookupChunksRequest {
            repo: "r".into(),
            chunk_ids: ids(limits::MAX_LOOKUP_IDS + 1, 32),
            include_condemned: false,
        })
        .await,
        ia,
        &["chunk_ids", "10000"],
    );
    refused(
        "a chunk id of the wrong length",
        c.lookup_chunks(pb::LookupChunksRequest { repo: "r".into(), chunk_ids: ids(1, 31), include_condemned: false })
            .await,
        ia,
        &["chunk_ids"],
    );
    refused(
        "a get of too many packs",
        c.get_packs(pb::GetPacksRequest { pack_ids: ids(limits::MAX_GET_PACKS + 1, 16) }).await,
        ia,
        &["pack_ids"],
    );
    refused(
        "an endless lease",
        c.begin_session(pb::BeginSessionRequest { repo: "r".into(), session_id: vec![5; 16], lease_ms: u64::MAX })
            .await,
        ia,
        &["lease_ms", &limits::MAX_LEASE_MS.to_string()],
    );
    c.begin_session(pb::BeginSessionRequest { repo: "r".into(), session_id: vec![5; 16], lease_ms: 60_000 })
        .await
        .expect("a sane session");

    let commit = |pack: pb::Pack, chunks: usize| pb::CommitPackRequest {
        session_id: vec![5; 16],
        pack: Some(pack),
        chunks: vec![location(); chunks],
    };
    refused(
        "a pack with too many chunks",
        c.commit_pack(commit(pack(2, 1, 10), limits::MAX_COMMIT_CHUNKS + 1)).await,
        ia,
        &["chunks", "65536"],
    );
    refused("absurd k/m", c.commit_pack(commit(pack(u32::MAX, 2, 10), 1)).await, ia, &["params"]);
    refused("k + m over 64", c.commit_pack(commit(pack(40, 40, 80), 1)).await, ia, &["params"]);
    refused("a pack past the size bound", c.commit_pack(commit(pack(2, 1, u64::MAX / 4), 1)).await, ia, &["pack."]);

    let snapshot = |tags: usize, path: usize| pb::CommitSnapshotRequest {
        session_id: vec![5; 16],
        snapshot: Some(pb::Snapshot {
            id: vec![6; 16],
            repo: "r".into(),
            host: "h".into(),
            path: "p".repeat(path),
            kind: "full".into(),
            root: vec![2; 32],
            tags: vec!["t".into(); tags],
            refs_pack: vec![1; 16],
            ..Default::default()
        }),
    };
    refused("too many tags", c.commit_snapshot(snapshot(65, 1)).await, ia, &["snapshot.tags", "64"]);
    refused("a huge path", c.commit_snapshot(snapshot(1, 100_000)).await, ia, &["snapshot.path", "65536"]);

    let report = pb::BadShardReport { pack_id: vec![1; 16], index: 0, reason: String::new() };
    refused(
        "too many bad-shard reports",
        c.report_bad_shards(pb::ReportBadShardsRequest {
            node: 1,
            shards: vec![report; limits::MAX_BAD_SHARD_REPORTS + 1],
        })
        .await,
        ia,
        &["shards", "1000"],
    );
    refused(
        "a huge node address",
        c.register_node(pb::RegisterNodeRequest {
            id: 7,
            site: "s".into(),
            addr: "a".repeat(10_000),
            capacity_bytes: 1,
            used_bytes: 0,
        })
        .await,
        ia,
        &["addr", "512"],
    );
    refused(
        "a huge exclusion list",
        c.allocate_pack(pb::AllocatePackRequest { repo: "r".into(), exclude: vec![1; 5_000] }).await,
        ia,
        &["exclude"],
    );

    // A message past the catalog's size limit, from a client that does not
    // keep to it: refused by the transport before it is buffered.
    let mut loose =
        CatalogClient::new(authed(&n.addr)).max_encoding_message_size(64 << 20).max_decoding_message_size(64 << 20);
    let big =
        loose.create_repo(repo(vec![vec![0; limits::CATALOG.request + 1]])).await.expect_err("an oversized message");
    assert!(matches!(big.code(), Code::OutOfRange | Code::ResourceExhausted), "{big:?}");

    let l = limits::MAINTENANCE;
    let mut maint = MaintenanceClient::new(authed(&n.addr))
        .max_decoding_message_size(l.response)
        .max_encoding_message_size(l.request);
    refused(
        "a forget of too many snapshots",
        maint.forget(pb::ForgetRequest { repo: "r".into(), snapshot_ids: ids(10_001, 16) }).await,
        ia,
        &["snapshot_ids", "10000"],
    );
    refused(
        "a condemn of too many chunks",
        maint.condemn(pb::CondemnRequest { repo: "r".into(), chunk_ids: ids(1_001, 32), marked_from: vec![] }).await,
        ia,
        &["chunk_ids", "1000"],
    );
    refused(
        "a sweep of ids of the wrong length",
        maint.sweep(pb::SweepRequest { repo: "r".into(), chunk_ids: ids(3, 7) }).await,
        ia,
        &["chunk_ids"],
    );

    let l = limits::ADMIN;
    let mut admin =
        AdminClient::new(authed(&n.addr)).max_decoding_message_size(l.response).max_encoding_message_size(l.request);
    refused(
        "a join with a huge address",
        admin.join(pb::JoinRequest { id: 9, addr: "a".repeat(10_000), site: "s".into(), voter: true }).await,
        ia,
        &["addr"],
    );

    let mut raft = coffer_rpc::raft_client(&n.addr, &coffer_rpc::Security::Insecure).expect("a raft client");
    // A bincode vector claiming 2^60 entries, and plain garbage.
    let mut huge = vec![0u8; 64];
    huge[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let msg = |payload: Vec<u8>| pb::RaftMessage { codec_version: 1, payload, error: String::new() };
    refused("garbage for raft", raft.append_entries(msg(vec![0xff; 100])).await, ia, &["append entries"]);
    // That one decodes: a vote of term 2^60 that no leader committed, which
    // openraft asserts never arrives.
    refused("an uncommitted vote", raft.append_entries(msg(huge)).await, ia, &["vote", "committed"]);
    let leader = CommittedLeaderId::new(1, 1);
    let gap = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(5, 1),
        prev_log_id: Some(LogId::new(leader, 3)),
        entries: vec![Entry { log_id: LogId::new(leader, 9), payload: EntryPayload::Blank }],
        leader_commit: None,
    };
    refused("entries with a gap", raft.append_entries(msg(encode(&gap))).await, ia, &["entries", "does not follow"]);
    let chunk = |offset: u64| InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(5, 1),
        meta: SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: "s".into() },
        offset,
        data: vec![1; 16],
        done: false,
    };
    refused("a chunk at 1 TiB", raft.install_snapshot(msg(encode(&chunk(1 << 40)))).await, ia, &["offset"]);

    // Nothing of the above landed, and the node still answers.
    let status =
        n.catalog.cluster_status(pb::ClusterStatusRequest {}).await.expect("the node still serves").into_inner();
    assert_eq!((status.repos, status.snapshots, status.chunks), (1, 0, 0), "{status:?}");
    assert!(status.nodes.is_empty(), "{:?}", status.nodes);
    let snaps = n
        .catalog
        .list_snapshots(pb::ListSnapshotsRequest { repo: "r".into(), ..Default::default() })
        .await
        .expect("a listing");
    assert!(snaps.into_inner().snapshots.is_empty());

    let _ = n.stop.send(());
    n.task.await.expect("the server task").expect("a clean shutdown");
}
