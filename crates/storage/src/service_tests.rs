//! The shard service over a real socket: a node bound to an ephemeral port,
//! driven by the same client the agents use. No metadata plane runs; the
//! node's registration keeps failing in the background, which must not stop
//! it from serving.

use std::time::Duration;

use coffer_proto::pb::put_shard_request::Msg;
use coffer_proto::pb::shard_store_client::ShardStoreClient;
use coffer_proto::pb::{self, GetShardRequest, NodeInfoRequest, PutShardRequest, ShardRef};
use coffer_rpc::{shard_client, ShardFailure};
use coffer_types::{PackId, SiteId, MAX_FRAME_BYTES};
use rand::{RngCore, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

use crate::{ShardStore, StorageConfig, StorageError, StorageNode, BLOCK_SIZE};

struct TestNode {
    client: ShardStoreClient<Channel>,
    addr: String,
    store: ShardStore,
    node: coffer_types::NodeId,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), StorageError>>,
    dir: tempfile::TempDir,
}

impl TestNode {
    async fn start() -> anyhow::Result<TestNode> {
        let dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        // Port 1 on loopback refuses connections: the metadata plane is absent.
        let mut config = StorageConfig::new(dir.path(), &addr, SiteId::new("site-a")?, vec!["127.0.0.1:1".into()]);
        config.heartbeat_interval = Duration::from_secs(3600);
        config.capacity_bytes = Some(1 << 30);
        let node = StorageNode::open(config)?;
        let store = node.store().clone();
        let id = node.id();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(TestNode { client: shard_client(&addr)?, addr, store, node: id, stop, task, dir })
    }

    async fn shut_down(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }

    fn tmp_entries(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("tmp")).map(|d| d.count()).unwrap_or(usize::MAX)
    }
}

fn random_body(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn header(pack: &PackId, index: u32, body: &[u8]) -> pb::ShardHeader {
    pb::ShardHeader {
        format_version: 1,
        pack_id: pack.as_bytes().to_vec(),
        index,
        k: 4,
        m: 2,
        length: body.len() as u64,
        checksum: blake3::hash(body).as_bytes().to_vec(),
    }
}

fn header_msg(h: pb::ShardHeader) -> PutShardRequest {
    PutShardRequest { msg: Some(Msg::Header(h)) }
}

fn data_msg(d: &[u8]) -> PutShardRequest {
    PutShardRequest { msg: Some(Msg::Data(bytes::Bytes::copy_from_slice(d))) }
}

fn framed(h: pb::ShardHeader, body: &[u8], frame: usize) -> Vec<PutShardRequest> {
    std::iter::once(header_msg(h)).chain(body.chunks(frame).map(data_msg)).collect()
}

async fn put(client: &mut ShardStoreClient<Channel>, msgs: Vec<PutShardRequest>) -> Result<u64, tonic::Status> {
    Ok(client.put_shard(tokio_stream::iter(msgs)).await?.into_inner().stored_bytes)
}

/// Fetches a range and checks that no frame exceeds the frame limit.
async fn get(
    client: &mut ShardStoreClient<Channel>,
    pack: &PackId,
    index: u32,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let req = GetShardRequest { shard: Some(ShardRef { pack_id: pack.as_bytes().to_vec(), index }), offset, length };
    let mut stream = client.get_shard(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(frame) = stream.message().await? {
        assert!(frame.data.len() <= MAX_FRAME_BYTES, "frame of {} bytes", frame.data.len());
        out.extend_from_slice(&frame.data);
    }
    Ok(out)
}

#[tokio::test]
async fn streaming_put_of_5_mib_then_ranged_gets() -> anyhow::Result<()> {
    let mut n = TestNode::start().await?;
    let body = random_body(5 << 20, 1);
    let pack = PackId::random();
    let stored = put(&mut n.client, framed(header(&pack, 1, &body), &body, MAX_FRAME_BYTES)).await?;
    assert_eq!(stored, body.len() as u64);

    assert_eq!(get(&mut n.client, &pack, 1, 0, 0).await?, body);
    let bs = u64::from(BLOCK_SIZE);
    for (offset, len) in
        [(1_000_000u64, 2_500_000u64), (bs - 1, 2), (body.len() as u64 - 10, 0), (3, 1), (0, bs * 16 + 1)]
    {
        let want = if len == 0 { &body[offset as usize..] } else { &body[offset as usize..(offset + len) as usize] };
        assert_eq!(get(&mut n.client, &pack, 1, offset, len).await?, want, "offset {offset} len {len}");
    }

    let stat = n.client.stat_shard(ShardRef { pack_id: pack.as_bytes().to_vec(), index: 1 }).await?.into_inner();
    assert_eq!(stat, header(&pack, 1, &body));
    let info = n.client.node_info(NodeInfoRequest {}).await?.into_inner();
    assert_eq!(info.node_id, n.node.0);
    assert_eq!(info.site, "site-a");
    assert_eq!(info.shard_count, 1);
    assert!(info.used_bytes > body.len() as u64);
    assert_eq!(info.capacity_bytes, 1 << 30);

    let oob = get(&mut n.client, &pack, 1, body.len() as u64, 1).await.unwrap_err();
    assert_eq!(oob.code(), Code::OutOfRange, "{oob:?}");
    let missing = get(&mut n.client, &pack, 2, 0, 0).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let r = ShardRef { pack_id: pack.as_bytes().to_vec(), index: 1 };
    assert!(n.client.delete_shard(r.clone()).await?.into_inner().existed);
    assert!(!n.client.delete_shard(r).await?.into_inner().existed);
    assert_eq!(get(&mut n.client, &pack, 1, 0, 0).await.unwrap_err().code(), Code::NotFound);
    n.shut_down().await
}

#[tokio::test]
async fn garbage_requests_get_the_right_code_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let mut n = TestNode::start().await?;
    let pack = PackId::random();
    let body = random_body(300_000, 2);
    let good = header(&pack, 0, &body);

    let cases: Vec<(&str, Vec<PutShardRequest>, Code)> = vec![
        ("empty stream", vec![], Code::InvalidArgument),
        ("data before header", vec![data_msg(&body), header_msg(good.clone())], Code::InvalidArgument),
        ("message without payload", vec![PutShardRequest { msg: None }], Code::InvalidArgument),
        (
            // Within the service's message limit, beyond the frame limit.
            "oversize frame",
            {
                let big = random_body(2 * MAX_FRAME_BYTES, 3);
                framed(header(&pack, 0, &big), &big, MAX_FRAME_BYTES + 8192)
            },
            Code::InvalidArgument,
        ),
        (
            "more bytes than declared",
            vec![header_msg(good.clone()), data_msg(&body), data_msg(b"extra")],
            Code::InvalidArgument,
        ),
        ("fewer bytes than declared", vec![header_msg(good.clone()), data_msg(&body[..1000])], Code::InvalidArgument),
        ("second header", vec![header_msg(good.clone()), header_msg(good.clone())], Code::InvalidArgument),
        (
            "unknown format version",
            framed(pb::ShardHeader { format_version: 2, ..good.clone() }, &body, 65536),
            Code::FailedPrecondition,
        ),
        (
            "wrong checksum",
            framed(pb::ShardHeader { checksum: vec![0; 32], ..good.clone() }, &body, 65536),
            Code::InvalidArgument,
        ),
        (
            "short pack id",
            framed(pb::ShardHeader { pack_id: vec![1, 2], ..good.clone() }, &body, 65536),
            Code::InvalidArgument,
        ),
        (
            "index outside the code",
            framed(pb::ShardHeader { index: 6, ..good.clone() }, &body, 65536),
            Code::InvalidArgument,
        ),
        (
            "index beyond a byte",
            framed(pb::ShardHeader { index: 300, ..good.clone() }, &body, 65536),
            Code::InvalidArgument,
        ),
        ("k of zero", framed(pb::ShardHeader { k: 0, ..good.clone() }, &body, 65536), Code::InvalidArgument),
        (
            "absurd length",
            vec![header_msg(pb::ShardHeader { length: u64::MAX, ..good.clone() })],
            Code::InvalidArgument,
        ),
    ];
    for (what, msgs, code) in cases {
        let err = put(&mut n.client, msgs).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        if what == "wrong checksum" {
            assert!(err.message().contains("checksum mismatch: sent bytes do not match the header"), "{err:?}");
        }
        // Nothing stored, nothing left behind.
        assert_eq!(n.store.list()?, vec![], "{what}");
        assert_eq!(n.tmp_entries(), 0, "{what}");
    }

    // A frame past the service's message limit, from a client that does not
    // keep to it: refused by the transport before it is buffered.
    let mut loose = ShardStoreClient::new(coffer_rpc::channel(&n.addr)?).max_encoding_message_size(64 << 20);
    let big = random_body(2 * MAX_FRAME_BYTES, 3);
    let err =
        put(&mut loose, framed(header(&pack, 0, &big), &big, 2 * MAX_FRAME_BYTES)).await.expect_err("a 2 MiB frame");
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
    assert_eq!(n.tmp_entries(), 0);

    // Still serving, and the shard that failed so often now goes in.
    assert_eq!(put(&mut n.client, framed(good.clone(), &body, 100_000)).await?, body.len() as u64);
    assert_eq!(get(&mut n.client, &pack, 0, 0, 0).await?, body);
    // An identical put again is fine.
    assert_eq!(put(&mut n.client, framed(good, &body, MAX_FRAME_BYTES)).await?, body.len() as u64);
    assert_eq!(n.store.shard_count(), 1);

    let bad_ref = GetShardRequest { shard: Some(ShardRef { pack_id: vec![0; 3], index: 0 }), offset: 0, length: 0 };
    assert_eq!(n.client.get_shard(bad_ref).await.unwrap_err().code(), Code::InvalidArgument);
    let no_ref = GetShardRequest { shard: None, offset: 0, length: 0 };
    assert_eq!(n.client.get_shard(no_ref).await.unwrap_err().code(), Code::InvalidArgument);
    n.shut_down().await
}

#[tokio::test]
async fn corrupt_shard_is_data_loss_naming_the_shard() -> anyhow::Result<()> {
    let mut n = TestNode::start().await?;
    let pack = PackId::random();
    let body = random_body(3 * BLOCK_SIZE as usize, 4);
    put(&mut n.client, framed(header(&pack, 5, &body), &body, MAX_FRAME_BYTES)).await?;

    let path = n.store.shard_path(&pack, coffer_types::ShardIndex(5));
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes)?;

    let err = get(&mut n.client, &pack, 5, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&format!("{pack}.5")), "{err:?}");
    // The intact blocks still read.
    assert_eq!(get(&mut n.client, &pack, 5, 0, 2 * u64::from(BLOCK_SIZE)).await?, &body[..2 * BLOCK_SIZE as usize]);

    // A truncated file is data loss too, for stat as for reads.
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let r = ShardRef { pack_id: pack.as_bytes().to_vec(), index: 5 };
    assert_eq!(n.client.stat_shard(r).await.unwrap_err().code(), Code::DataLoss);
    assert_eq!(get(&mut n.client, &pack, 5, 0, 10).await.unwrap_err().code(), Code::DataLoss);
    n.shut_down().await
}

/// A rebuild that can read fewer than k verified shards fails as its own
/// error, naming each source and why it failed, and the service answers
/// FAILED_PRECONDITION (the cluster lacks the sources), not UNAVAILABLE (a
/// node or the metadata plane down).
#[tokio::test]
async fn rebuild_with_too_few_readable_shards_says_which_and_why() -> anyhow::Result<()> {
    let mut source = TestNode::start().await?;
    let mut target = TestNode::start().await?;
    let pack = PackId::random();
    let body = random_body(200_000, 9);
    let other = random_body(200_000, 10);
    put(&mut source.client, framed(header(&pack, 0, &body), &body, MAX_FRAME_BYTES)).await?;
    put(&mut source.client, framed(header(&pack, 3, &other), &other, MAX_FRAME_BYTES)).await?;
    let addr = source.addr.clone();
    let src =
        |index: u32, addr: &str, sum: &[u8]| pb::ShardSource { index, addr: addr.to_string(), checksum: sum.to_vec() };
    let good_sum = blake3::hash(&body).as_bytes().to_vec();
    let req = pb::RebuildShardRequest {
        pack_id: pack.as_bytes().to_vec(),
        index: 5,
        k: 4,
        m: 2,
        shard_len: body.len() as u64,
        checksum: vec![7; 32],
        sources: vec![
            src(0, &addr, &good_sum),
            // Not on the node.
            src(1, &addr, &good_sum),
            // Port 1 on loopback refuses connections.
            src(2, "127.0.0.1:1", &good_sum),
            // On the node, but not the shard the record describes.
            src(3, &addr, &good_sum),
        ],
        bandwidth_bytes_per_s: 0,
    };

    let err = crate::repair::rebuild_shard(
        &target.store,
        req.clone(),
        &crate::repair::RateLimiter::default(),
        &crate::repair::Counters::default(),
        &coffer_rpc::ShardPool::default(),
    )
    .await
    .unwrap_err();
    let StorageError::TooFewShards { pack: p, index, read, needed, failures } = &err else {
        panic!("expected TooFewShards, got {err:?}");
    };
    assert_eq!((*p, index.0, *read, *needed), (pack, 5, 1, 4), "{err}");
    let why: Vec<(u8, &ShardFailure)> = failures.iter().map(|f| (f.index.0, &f.failure)).collect();
    assert!(
        matches!(
            why.as_slice(),
            [(1, ShardFailure::Absent), (2, ShardFailure::Unreachable { .. }), (3, ShardFailure::Mismatch { .. }),]
        ),
        "{why:?}"
    );

    let status = target.client.rebuild_shard(req).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("only 1 of the 4"), "{status:?}");
    source.shut_down().await?;
    target.shut_down().await
}

#[tokio::test]
async fn listing_pages_through_more_shards_than_one_page() -> anyhow::Result<()> {
    let mut n = TestNode::start().await?;
    let mut want = Vec::new();
    for i in 0..25u64 {
        let body = random_body(100 + i as usize, i);
        let pack = PackId::random();
        put(&mut n.client, framed(header(&pack, (i % 6) as u32, &body), &body, MAX_FRAME_BYTES)).await?;
        want.push((pack, (i % 6) as u32));
    }
    want.sort();

    // One page holds at most what was asked, and says where to go on.
    let first =
        n.client.list_shards(pb::ListShardsRequest { page_size: 4, page_token: Vec::new() }).await?.into_inner();
    assert_eq!(first.shards.len(), 4);
    assert!(!first.next.is_empty());

    // Walking the pages lists every shard exactly once, in order.
    let pool = coffer_rpc::ShardPool::default();
    for page_size in [1, 4, 24, 25, 0] {
        let got: Vec<(PackId, u32)> = pool
            .list_paged(&n.addr, page_size)
            .await
            .map_err(|f| anyhow::anyhow!("{f}"))?
            .iter()
            .map(|s| (PackId::from_slice(&s.pack_id).unwrap(), s.index))
            .collect();
        assert_eq!(got, want, "page size {page_size}");
    }
    let all = n.client.list_shards(pb::ListShardsRequest { page_size: 0, page_token: Vec::new() }).await?.into_inner();
    assert_eq!((all.shards.len(), all.next.len()), (25, 0), "the default page holds them all");

    let bad = n.client.list_shards(pb::ListShardsRequest { page_size: 4, page_token: vec![1, 2, 3] }).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    n.shut_down().await
}

#[tokio::test]
async fn a_put_that_would_cross_the_reserve_is_resource_exhausted() -> anyhow::Result<()> {
    let n = TestNode::start().await?;
    let pool = coffer_rpc::ShardPool::default();
    let body = random_body(70_000, 9);
    let put_one = |pack: PackId| {
        let put = coffer_rpc::ShardPut {
            pack,
            index: coffer_types::ShardIndex(0),
            k: 4,
            m: 2,
            checksum: coffer_types::Hash32(*blake3::hash(&body).as_bytes()),
        };
        pool.put(&n.addr, put, bytes::Bytes::from(body.clone()))
    };
    // A reserve beyond the free space: the node is full.
    n.store.set_reserve(n.store.free_bytes()? + (1 << 40));
    let pack = PackId::random();
    match put_one(pack).await {
        Err(ShardFailure::Refused { code: Code::ResourceExhausted, detail }) => {
            assert!(detail.contains("disk full"), "{detail}")
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    assert_eq!((n.store.shard_count(), n.tmp_entries()), (0, 0), "a refused put leaves nothing");
    let info = n.client.clone().node_info(NodeInfoRequest {}).await?.into_inner();
    assert!(info.free_bytes > 0 && info.reserve_bytes > info.free_bytes, "{info:?}");

    n.store.set_reserve(0);
    put_one(pack).await.map_err(|f| anyhow::anyhow!("{f}"))?;
    assert_eq!(n.store.shard_count(), 1);
    n.shut_down().await
}
/// Hostile rebuild requests: values past their bounds get INVALID_ARGUMENT
/// naming the field, before any source is read, and the node keeps serving.
#[tokio::test]
async fn hostile_rebuild_requests_are_refused_naming_the_field() -> anyhow::Result<()> {
    let mut n = TestNode::start().await?;
    let src = pb::ShardSource { index: 0, addr: "127.0.0.1:1".into(), checksum: vec![0; 32] };
    let sane = pb::RebuildShardRequest {
        pack_id: PackId::random().as_bytes().to_vec(),
        index: 5,
        k: 4,
        m: 2,
        shard_len: 1000,
        checksum: vec![7; 32],
        sources: vec![src.clone()],
        bandwidth_bytes_per_s: 0,
    };
    let cases: Vec<(&str, pb::RebuildShardRequest, &str)> = vec![
        ("absurd k", pb::RebuildShardRequest { k: u32::MAX, ..sane.clone() }, "k + m"),
        ("a short pack id", pb::RebuildShardRequest { pack_id: vec![1; 3], ..sane.clone() }, "pack_id"),
        ("a short checksum", pb::RebuildShardRequest { checksum: vec![1; 3], ..sane.clone() }, "checksum"),
        ("an index outside the code", pb::RebuildShardRequest { index: 6, ..sane.clone() }, "shard index"),
        ("a huge shard", pb::RebuildShardRequest { shard_len: u64::MAX, ..sane.clone() }, "shard_len"),
        // Under the per-shard cap, but four of them are more than any pack.
        ("k huge shards", pb::RebuildShardRequest { shard_len: 1 << 29, ..sane.clone() }, "shard_len"),
        // It would stall every rebuild of the node behind a days-long reservation.
        ("a trickle", pb::RebuildShardRequest { bandwidth_bytes_per_s: 1, ..sane.clone() }, "bandwidth_bytes_per_s"),
        ("too many sources", pb::RebuildShardRequest { sources: vec![src.clone(); 65], ..sane.clone() }, "sources"),
        (
            "a huge source address",
            pb::RebuildShardRequest {
                sources: vec![pb::ShardSource { addr: "a".repeat(10_000), ..src.clone() }],
                ..sane.clone()
            },
            "sources.addr",
        ),
    ];
    for (what, req, field) in cases {
        let err = n.client.rebuild_shard(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(field), "{what}: {err:?} does not name {field}");
    }
    for index in [256u32, u32::MAX] {
        let r = ShardRef { pack_id: vec![1; 16], index };
        assert_eq!(n.client.stat_shard(r.clone()).await.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(n.client.delete_shard(r).await.unwrap_err().code(), Code::InvalidArgument);
    }
    let past_end = GetShardRequest {
        shard: Some(ShardRef { pack_id: vec![1; 16], index: 0 }),
        offset: u64::MAX,
        length: u64::MAX,
    };
    assert_eq!(n.client.get_shard(past_end).await.unwrap_err().code(), Code::NotFound);
    let info = n.client.node_info(NodeInfoRequest {}).await?.into_inner();
    assert_eq!((info.shard_count, info.rebuilds), (0, 0));
    n.shut_down().await
}

/// A rebuild source that sends more than the shard's length is cut off at
/// the first frame past it, rather than buffered whole.
#[tokio::test]
async fn a_rebuild_source_that_sends_too_much_is_cut_off() -> anyhow::Result<()> {
    let mut source = TestNode::start().await?;
    let target = TestNode::start().await?;
    let pack = PackId::random();
    let body = random_body(3 * MAX_FRAME_BYTES, 11);
    put(&mut source.client, framed(header(&pack, 0, &body), &body, MAX_FRAME_BYTES)).await?;
    let req = pb::RebuildShardRequest {
        pack_id: pack.as_bytes().to_vec(),
        index: 5,
        k: 1,
        m: 5,
        shard_len: 1000,
        checksum: vec![7; 32],
        sources: vec![pb::ShardSource {
            index: 0,
            addr: source.addr.clone(),
            checksum: blake3::hash(&body).as_bytes().to_vec(),
        }],
        bandwidth_bytes_per_s: 0,
    };
    let counters = crate::repair::Counters::default();
    let peers = coffer_rpc::ShardPool::default();
    let err =
        crate::repair::rebuild_shard(&target.store, req, &crate::repair::RateLimiter::default(), &counters, &peers)
            .await
            .unwrap_err();
    let StorageError::TooFewShards { failures, .. } = &err else { panic!("expected TooFewShards, got {err:?}") };
    assert!(
        matches!(&failures[..], [f] if matches!(&f.failure, ShardFailure::Mismatch { detail } if detail.contains("more than the shard's 1000 bytes"))),
        "{failures:?}"
    );
    // Nothing of the oversized shard was counted as read.
    assert_eq!(counters.rebuild_bytes_read.load(std::sync::atomic::Ordering::Relaxed), 0);
    source.shut_down().await?;
    target.shut_down().await
}
