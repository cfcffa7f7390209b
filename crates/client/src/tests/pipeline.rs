//! The backup and restore pipelines end to end against the fake cluster:
//! real gRPC, real erasure coding and encryption, in-memory catalog and
//! nodes. These check what the unit tests cannot: that packs are cut,
//! placed, retried and committed, that dedup consults the catalog, that the
//! snapshot commits last, and that restores survive lost and corrupt shards.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use coffer_rpc::ShardFailure;
use coffer_types::{BackupKind, ErasureParams, NodeId, PackRecord, RepoName, SnapshotId};

use super::fake_cluster::FakeCluster;
use super::walk_restore::{describe, make_source, noise};
use crate::fetch::ClusterSource;
use crate::{
    create_repo, open_repo, restore_to_writer, BackupOptions, ClientError, Progress, Repository, RestoreTarget,
};

async fn setup(k: u32, m: u32, nodes: usize) -> (FakeCluster, Repository) {
    let cluster = FakeCluster::start(nodes).await;
    let name = RepoName::new("test-repo").unwrap();
    let params = ErasureParams::new(k, m).unwrap();
    create_repo(&cluster.meta, &name, params, b"pw").await.unwrap();
    let again = create_repo(&cluster.meta, &name, params, b"pw").await;
    assert!(matches!(again, Err(ClientError::RepoExists { .. })), "{again:?}");
    let wrong = open_repo(cluster.meta.clone(), &name, b"not it").await;
    assert!(matches!(wrong, Err(ClientError::WrongPassword { .. })), "{wrong:?}");
    let missing = open_repo(cluster.meta.clone(), &RepoName::new("other").unwrap(), b"pw").await;
    assert!(matches!(missing, Err(ClientError::RepoNotFound { .. })), "{missing:?}");
    let repo = open_repo(cluster.meta.clone(), &name, b"pw").await.unwrap();
    (cluster, repo)
}

/// The standard source plus a file large enough for two data packs.
fn big_source(root: &Path) {
    make_source(root);
    fs::write(root.join("sub/large.bin"), noise(20 << 20, 2)).unwrap();
}

fn opts(path: &Path, kind: BackupKind) -> BackupOptions {
    BackupOptions { paths: vec![path.to_path_buf()], kind, host: "host-a".into(), ..BackupOptions::default() }
}

// The default single-threaded runtime: the walker thread waits on parent
// trees through the runtime handle, which must work there too.
#[tokio::test]
async fn backups_restore_and_build_on_each_other() {
    let (cluster, repo) = setup(4, 2, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    big_source(&src);

    let last: Arc<Mutex<Option<Progress>>> = Arc::default();
    let seen = last.clone();
    let mut o = opts(&src, BackupKind::Incremental);
    o.tags = vec!["nightly".into()];
    o.progress = Some(Arc::new(move |p: &Progress| *seen.lock().unwrap() = Some(p.clone())));
    let first = repo.backup(o).await.unwrap();
    assert_eq!(first.kind, BackupKind::Full, "the first backup of a source is full");
    assert_eq!(first.parent, None);
    assert_eq!((first.files, first.errors), (6, 0));
    assert_eq!(first.bytes_read, first.bytes_scanned);
    assert!(first.packs >= 4, "two data packs, a tree pack and the reference list: {}", first.packs);
    assert!(first.chunks_new >= 20 && first.chunks_reused == 0, "{first:?}");
    assert!(first.bytes_stored_raw > first.bytes_stored);
    assert!(first.stages.seal.bytes > 0 && first.stages.send.bytes > 0);
    let done = last.lock().unwrap().clone().unwrap();
    assert!(done.done);
    assert_eq!(done.files, 6);
    assert!(cluster.catalog.state.lock().unwrap().sessions.is_empty(), "the commit ended the session");
    assert_eq!(first.snapshot.tags, vec!["nightly".to_string()]);
    assert_eq!(first.snapshot.refs_count, first.snapshot.stats.chunks_new + 4, "chunks plus four trees");

    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(repo.find_snapshot("latest").await.unwrap().id.to_hex(), first.snapshot_id);
    assert_eq!(repo.find_snapshot(&first.snapshot_id[..6]).await.unwrap().id.to_hex(), first.snapshot_id);

    let t1 = dir.path().join("t1");
    let r = repo.restore(&first.snapshot, RestoreTarget::Dir(t1.clone()), None).await.unwrap();
    assert_eq!(describe(&t1), describe(&src));
    assert_eq!((r.files, r.degraded_packs), (6, 0));
    assert!(r.bad_shards.is_empty());

    let second = repo.backup(opts(&src, BackupKind::Incremental)).await.unwrap();
    assert_eq!(second.kind, BackupKind::Incremental);
    assert_eq!(second.parent.as_deref(), Some(first.snapshot_id.as_str()));
    assert_eq!((second.bytes_read, second.chunks_new, second.bytes_new), (0, 0, 0));
    assert_eq!(second.bytes_scanned, first.bytes_scanned);
    assert_eq!(second.snapshot.root, first.snapshot.root);

    let full = repo.backup(opts(&src, BackupKind::Full)).await.unwrap();
    assert_eq!((full.kind, full.parent.clone()), (BackupKind::Full, None));
    assert_eq!(full.bytes_read, full.bytes_scanned);
    assert_eq!(full.chunks_new, 0, "every chunk dedups against the catalog");

    fs::write(src.join("hello.txt"), b"a new greeting").unwrap();
    let diff = repo.backup(opts(&src, BackupKind::Differential)).await.unwrap();
    assert_eq!(diff.kind, BackupKind::Differential);
    assert_eq!(diff.parent.as_deref(), Some(full.snapshot_id.as_str()));
    assert_eq!(diff.bytes_read, b"a new greeting".len() as u64);

    let t2 = dir.path().join("t2");
    repo.restore(&diff.snapshot, RestoreTarget::Dir(t2.clone()), Some(Path::new("sub"))).await.unwrap();
    assert_eq!(fs::read(t2.join("sub/large.bin")).unwrap(), noise(20 << 20, 2));
    assert!(!t2.join("hello.txt").exists());
    let t3 = dir.path().join("t3");
    repo.restore(&diff.snapshot, RestoreTarget::Dir(t3.clone()), None).await.unwrap();
    assert_eq!(describe(&t3), describe(&src));

    // A source on another host does not build on this one.
    let mut other = opts(&src, BackupKind::Incremental);
    other.host = "host-b".into();
    let other = repo.backup(other).await.unwrap();
    assert_eq!(other.kind, BackupKind::Full);
    assert_eq!(other.chunks_new, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_backs_up_and_restores() {
    let (_cluster, repo) = setup(2, 1, 3).await;
    let data = noise(5 << 20, 4);
    let s = repo
        .backup_stream(std::io::Cursor::new(data.clone()), "db.dump", opts(Path::new("/"), BackupKind::Incremental))
        .await
        .unwrap();
    assert_eq!(s.source.path, "stdin:db.dump");
    assert_eq!((s.files, s.bytes_read), (1, data.len() as u64));

    let source = Arc::new(ClusterSource::new(repo.meta.clone(), repo.name().clone(), repo.key.clone()));
    let mut out = Vec::new();
    restore_to_writer(source, s.snapshot.id, s.snapshot.root, None, &mut out).await.unwrap();
    assert_eq!(out, data);

    let again = repo
        .backup_stream(std::io::Cursor::new(data), "db.dump", opts(Path::new("/"), BackupKind::Incremental))
        .await
        .unwrap();
    assert_eq!(again.parent.as_deref(), Some(s.snapshot_id.as_str()));
    assert_eq!(again.chunks_new, 0);

    let bad = repo.backup_stream(std::io::empty(), "a/b", BackupOptions::default()).await;
    assert!(matches!(bad, Err(ClientError::BadSource { .. })), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_survive_m_lost_or_corrupt_shards() {
    let (cluster, repo) = setup(4, 2, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    big_source(&src);
    let snap = repo.backup(opts(&src, BackupKind::Full)).await.unwrap().snapshot;

    // Node 0 is gone and known to be; node 1 serves corrupt bytes without
    // noticing. With 6 nodes every pack has a shard on each.
    cluster.nodes[0].unreachable.store(true, Ordering::Relaxed);
    cluster.catalog.set_state(0, "down");
    cluster.nodes[1].skip_read_checks.store(true, Ordering::Relaxed);
    assert!(cluster.nodes[1].corrupt_all() > 0);

    let t = dir.path().join("t");
    let r = repo.restore(&snap, RestoreTarget::Dir(t.clone()), None).await.unwrap();
    assert_eq!(describe(&t), describe(&src));
    assert!(r.degraded_packs > 0);
    // Typed: an embedding application can tell which node did what.
    let on = |b: &crate::BadShard, i: u64| b.node == Some(NodeId(100 + i));
    let bad = &r.bad_shards;
    assert!(bad.iter().any(|b| on(b, 1) && matches!(b.failure, ShardFailure::Mismatch { .. })), "{bad:?}");
    assert!(bad.iter().any(|b| on(b, 0) && b.failure == ShardFailure::NodeDown), "{bad:?}");
    assert!(bad.iter().all(|b| on(b, 0) || on(b, 1)), "{bad:?}");

    // A node that checks its reads reports the corruption itself.
    cluster.nodes[1].skip_read_checks.store(false, Ordering::Relaxed);
    let t2 = dir.path().join("t2");
    let r = repo.restore(&snap, RestoreTarget::Dir(t2.clone()), None).await.unwrap();
    assert_eq!(describe(&t2), describe(&src));
    let bad = &r.bad_shards;
    assert!(bad.iter().any(|b| on(b, 1) && matches!(b.failure, ShardFailure::Corrupt { .. })), "{bad:?}");

    // A third loss is beyond what 4+2 survives.
    cluster.nodes[2].unreachable.store(true, Ordering::Relaxed);
    let err = repo.restore(&snap, RestoreTarget::Dir(dir.path().join("t3")), None).await.unwrap_err();
    assert!(matches!(err, ClientError::DataLoss { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_placed_again_around_a_failing_node() {
    let (cluster, repo) = setup(4, 2, 7).await;
    cluster.nodes[3].refuse_puts.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    big_source(&src);
    let s = repo.backup(opts(&src, BackupKind::Full)).await.unwrap();

    let commits = cluster.catalog.pack_commits.load(Ordering::Relaxed);
    assert_eq!(commits, s.packs);
    assert!(cluster.catalog.allocations.load(Ordering::Relaxed) > commits, "some placement was retried");
    let packs: Vec<PackRecord> = cluster
        .catalog
        .state
        .lock()
        .unwrap()
        .packs
        .values()
        .map(|p| PackRecord::try_from(p.clone()).unwrap())
        .collect();
    assert!(packs.iter().all(|p| p.shards.iter().all(|sh| sh.node != NodeId(103))));

    let t = dir.path().join("t");
    repo.restore(&s.snapshot, RestoreTarget::Dir(t.clone()), None).await.unwrap();
    assert_eq!(describe(&t), describe(&src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_cannot_place_packs_fails_and_ends_its_session() {
    // 4+2 needs six nodes; five cannot hold a pack.
    let (cluster, repo) = setup(4, 2, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    big_source(&src);
    let err = repo.backup(opts(&src, BackupKind::Full)).await.unwrap_err();
    match &err {
        ClientError::Conn(e) => assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{err}"),
        other => panic!("expected the placement error, got {other}"),
    }
    {
        let st = cluster.catalog.state.lock().unwrap();
        assert!(st.sessions.is_empty(), "the failed session was ended");
        assert!(st.snapshots.is_empty());
    }

    let missing = repo.find_snapshot("latest").await.unwrap_err();
    assert!(matches!(missing, ClientError::SnapshotNotFound { .. }));
    let mut o = opts(&src, BackupKind::Incremental);
    o.parent = Some(SnapshotId([9; 16]));
    let err = repo.backup(o).await.unwrap_err();
    assert!(matches!(err, ClientError::SnapshotNotFound { .. }), "{err}");
}

/// A stream whose end waits until the fake catalog has refused a lease
/// renewal, so the backup is still running when its lease is lost.
struct UntilRenewalRefused {
    catalog: Arc<super::fake_cluster::FakeCatalog>,
    head: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for UntilRenewalRefused {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.catalog.renewals_refused.load(Ordering::SeqCst) == 0 {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other("no renewal was refused within 30 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_lease_renewal_fails_aborts_without_a_snapshot() {
    let (cluster, repo) = setup(2, 1, 3).await;
    cluster.catalog.refuse_renewals.store(true, Ordering::SeqCst);
    let reader =
        UntilRenewalRefused { catalog: cluster.catalog.clone(), head: std::io::Cursor::new(noise(1 << 20, 5)) };
    // A one-second lease is renewed every third of a second.
    let mut o = opts(Path::new("/"), BackupKind::Full);
    o.session_lease = Some(std::time::Duration::from_secs(1));
    let r = repo.backup_stream(reader, "db.dump", o).await;
    assert!(cluster.catalog.renewals_refused.load(Ordering::SeqCst) >= 1);
    match r {
        Err(ClientError::SessionFailed { reason, .. }) => {
            assert!(reason.contains("lease could not be renewed"), "{reason}")
        }
        other => panic!("the backup should abort: {other:?}"),
    }
    let st = cluster.catalog.state.lock().unwrap();
    assert!(st.snapshots.is_empty(), "no snapshot is committed");
    assert!(st.sessions.is_empty(), "the aborted backup ended its session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_counts_what_the_walk_left_out_and_why() {
    let (_cluster, repo) = setup(2, 1, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    fs::write(src.join("debug.log"), vec![7u8; 1000]).unwrap();
    let mut o = opts(&src, BackupKind::Full);
    // Root reads every file but this one: /proc/self/mem fails with EIO at
    // offset 0.
    o.paths.push("/proc/self/mem".into());
    o.excludes = crate::exclude::Excludes::new(&["*.log".to_string()], &[], false).unwrap();
    let s = repo.backup(o).await.unwrap();
    let c = s.snapshot.stats.coverage.clone().expect("a new snapshot carries its coverage");
    assert_eq!((c.skipped_unreadable, c.skipped_excluded, c.skipped_vanished), (1, 1, 0), "{c:?}");
    assert_eq!(c.files_protected, s.files);
    assert_eq!(c.files_total, s.files + 2);
    // The excluded file's 1000 bytes count in what the source held.
    assert_eq!(c.bytes_total, c.bytes_protected + 1000);
    assert_eq!(c.command_exit, None);
    let reasons: Vec<(String, coffer_types::SkipReason)> =
        c.examples.iter().map(|e| (e.path.clone(), e.reason)).collect();
    assert!(reasons.contains(&("/proc/self/mem".into(), coffer_types::SkipReason::Unreadable)), "{reasons:?}");
    assert!(reasons.iter().any(|(p, r)| p.ends_with("debug.log") && *r == coffer_types::SkipReason::Excluded));

    let o = BackupOptions { command: Some("true".into()), ..opts(Path::new("/"), BackupKind::Full) };
    let s = repo.backup_stream(std::io::Cursor::new(b"dump".to_vec()), "db.dump", o).await.unwrap();
    let c = s.snapshot.stats.coverage.clone().unwrap();
    assert_eq!((c.command_exit, c.files_total, c.files_protected, c.bytes_total), (Some(0), 1, 1, 4));
}
