//! Walker and restore tests against an in-memory blob store: a source tree
//! is walked into the store and restored from it, and the result compared
//! with the original, entry by entry (content, kind, mode, mtime, link
//! target). No cluster is involved; the cluster tests live in `tests/`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_pack::RepoKey;
use coffer_types::{ChunkId, SnapshotId};

use crate::source::Deliver;
use crate::stats::Counters;
use crate::stats::RestoreCounters;
use crate::tree::{NodeKind, Tree};
use crate::walk::{BlobKind, BlobSink, Stopped, TreeLoader, WalkOutput, Walker};
use crate::{restore_to_dir, restore_to_writer, BlobSource, ClientError};

/// Blobs by id, in the order they arrived.
#[derive(Default)]
struct MemStore {
    blobs: Mutex<HashMap<ChunkId, (BlobKind, Vec<u8>)>>,
    order: Mutex<Vec<ChunkId>>,
    /// Ids whose fetch fails, to test error paths.
    broken: Mutex<Vec<ChunkId>>,
}

impl MemStore {
    fn get(&self, id: &ChunkId) -> Option<(BlobKind, Vec<u8>)> {
        self.blobs.lock().unwrap().get(id).cloned()
    }
}

struct MemSink(Arc<MemStore>);

impl BlobSink for MemSink {
    fn put(&mut self, id: ChunkId, kind: BlobKind, data: Vec<u8>) -> Result<(), Stopped> {
        self.0.order.lock().unwrap().push(id);
        self.0.blobs.lock().unwrap().insert(id, (kind, data));
        Ok(())
    }
}

impl TreeLoader for MemStore {
    fn load_tree(&self, id: &ChunkId) -> Result<Tree, ClientError> {
        let (_, bytes) = self.get(id).ok_or(ClientError::ChunkNotIndexed { chunk: *id })?;
        Tree::decode(&bytes)
    }
}

impl BlobSource for MemStore {
    async fn prepare(&self, _ids: Vec<ChunkId>) -> Result<(), ClientError> {
        Ok(())
    }

    async fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        if self.broken.lock().unwrap().contains(&id) {
            return Err(ClientError::DataLoss { pack: Default::default(), reason: format!("chunk {id} is broken") });
        }
        self.get(&id).map(|(_, b)| b).ok_or(ClientError::ChunkNotIndexed { chunk: id })
    }
}

/// A source that fetches in an order unrelated to the files: batches of
/// three from the back of the plan, each delivered backwards, so chunks land
/// long before the ones that precede them in their files.
struct Scrambled(Arc<MemStore>);

impl BlobSource for Scrambled {
    async fn prepare(&self, ids: Vec<ChunkId>) -> Result<(), ClientError> {
        self.0.prepare(ids).await
    }

    async fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        self.0.fetch(id).await
    }

    fn plan(&self, mut ids: Vec<ChunkId>) -> Vec<Vec<ChunkId>> {
        ids.reverse();
        ids.chunks(3).map(<[ChunkId]>::to_vec).collect()
    }

    async fn fetch_batch(
        &self,
        batch: Vec<ChunkId>,
        _counters: &RestoreCounters,
        mut deliver: Deliver,
    ) -> Result<(), ClientError> {
        for id in batch.into_iter().rev() {
            let data = self.0.fetch(id).await?;
            deliver(id, &data)?;
        }
        Ok(())
    }
}

/// Deterministic pseudo-random bytes that do not compress or repeat.
pub(super) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// A source tree with every kind of entry the walker handles.
pub(super) fn make_source(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("hello.txt"), b"hello, world\n").unwrap();
    fs::write(root.join("empty.bin"), b"").unwrap();
    fs::write(root.join("sub/big.bin"), noise(3 << 20, 1)).unwrap();
    fs::write(root.join("sub/deeper/note"), b"deep").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1")), b"not utf-8 name").unwrap();
    symlink("hello.txt", root.join("link")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(&root.join("hello.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link"), 1_500_000_000, 0);
    set_mtime(&root.join("sub/deeper/note"), 1_400_000_000, 5);
    set_mtime(&root.join("sub/deeper"), 1_300_000_000, 7);
    set_mtime(&root.join("empty"), 1_200_000_000, 0);
}

/// What a restore must reproduce of one entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry {
    File { content: Vec<u8>, mode: u32, mtime: (i64, i64) },
    Dir { mode: u32, mtime: (i64, i64) },
    Link { target: PathBuf, mtime: (i64, i64) },
}

/// Every entry under `root`, by relative path.
pub(super) fn describe(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mtime = (m.mtime(), m.mtime_nsec());
            if m.file_type().is_symlink() {
                out.insert(rel, Entry::Link { target: fs::read_link(&path).unwrap(), mtime });
            } else if m.is_dir() {
                visit(root, &path, out);
                out.insert(rel, Entry::Dir { mode: m.mode() & 0o7777, mtime });
            } else {
                out.insert(rel, Entry::File { content: fs::read(&path).unwrap(), mode: m.mode() & 0o7777, mtime });
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

fn walk(key: &RepoKey, store: &Arc<MemStore>, paths: &[PathBuf], parent: Option<ChunkId>) -> (WalkOutput, Counters) {
    let counters = Counters::default();
    let loader = parent.map(|_| &**store as &dyn TreeLoader);
    let out = Walker::new(key, MemSink(store.clone()), loader, &counters)
        .walk_paths(paths, parent)
        .unwrap_or_else(|e| panic!("walk failed: {e:?}"));
    (out, counters)
}

#[tokio::test]
async fn a_walked_tree_restores_identically() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, counters) = walk(&key, &store, std::slice::from_ref(&src), None);

    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(counters.files.get(), 5);
    assert_eq!(counters.symlinks.get(), 2);
    assert_eq!(counters.dirs.get(), 4, "root, sub, sub/deeper, empty");
    assert_eq!(counters.bytes_read.get(), counters.bytes_scanned.get());
    assert!(counters.bytes_read.get() > 3 << 20);

    // Every tree arrived after everything it names, and the reference list
    // holds every blob, sorted.
    let order = store.order.lock().unwrap().clone();
    let position: HashMap<ChunkId, usize> = order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for (i, id) in order.iter().enumerate() {
        if let Some((BlobKind::Tree, bytes)) = store.get(id) {
            for child in Tree::decode(&bytes).unwrap().referenced_ids() {
                assert!(position[child] < i, "tree {id} was stored before {child}");
            }
        }
    }
    let mut all: Vec<ChunkId> = position.keys().copied().collect();
    all.sort();
    assert_eq!(out.refs, all);
    assert_eq!(*order.last().unwrap(), out.root);

    // The big file spans several chunks, in file order.
    let root = Tree::decode(&store.get(&out.root).unwrap().1).unwrap();
    let NodeKind::Dir { subtree } = root.get(b"sub").unwrap().kind else { panic!("sub is a dir") };
    let sub = Tree::decode(&store.get(&subtree).unwrap().1).unwrap();
    let NodeKind::File { content, .. } = &sub.get(b"big.bin").unwrap().kind else { panic!("big.bin is a file") };
    assert!(content.len() >= 2);
    let joined: Vec<u8> = content.iter().flat_map(|id| store.get(id).unwrap().1).collect();
    assert_eq!(joined, noise(3 << 20, 1));

    let target = dir.path().join("restored");
    let summary = restore_to_dir(store.clone(), SnapshotId::default(), out.root, &target, None).await.unwrap();
    assert_eq!((summary.files, summary.dirs, summary.symlinks), (5, 3, 2));
    assert_eq!(summary.bytes, counters.bytes_scanned.get());
    assert_eq!(describe(&target), describe(&src));

    // Restoring again over the first restore gives the same result.
    restore_to_dir(store.clone(), SnapshotId::default(), out.root, &target, None).await.unwrap();
    assert_eq!(describe(&target), describe(&src));
}

#[tokio::test]
async fn chunks_delivered_out_of_order_land_at_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    // Shared chunks: a copy of the big file, and a file that repeats a
    // block, so one blob has several destinations.
    fs::copy(src.join("sub/big.bin"), src.join("big-copy.bin")).unwrap();
    let block = noise(1 << 20, 2);
    fs::write(src.join("repeats.bin"), [block.as_slice(), &block, &block, &noise(5 << 20, 3)].concat()).unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, counters) = walk(&key, &store, std::slice::from_ref(&src), None);
    let target = dir.path().join("restored");
    let scrambled = Arc::new(Scrambled(store.clone()));
    let summary = restore_to_dir(scrambled, SnapshotId::default(), out.root, &target, None).await.unwrap();
    assert_eq!(summary.bytes, counters.bytes_scanned.get());
    assert_eq!(summary.files, 7);
    assert_eq!(describe(&target), describe(&src));
    assert_eq!(summary.stages.write.bytes, summary.bytes);
}

#[tokio::test]
async fn a_chunk_longer_than_its_tree_says_fails_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"twelve bytes").unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    // Swap the file's chunk for a longer blob under the same id: the store
    // stands in for a source that authenticated the wrong bytes.
    let root = Tree::decode(&store.get(&out.root).unwrap().1).unwrap();
    let NodeKind::File { content, .. } = &root.get(b"file").unwrap().kind else { panic!("a file") };
    store.blobs.lock().unwrap().insert(content[0], (BlobKind::Data, b"thirteen bytes".to_vec()));
    let err =
        restore_to_dir(store.clone(), SnapshotId::default(), out.root, &dir.path().join("t"), None).await.unwrap_err();
    assert!(matches!(err, ClientError::BadTree { .. }), "{err}");
}

#[tokio::test]
async fn unchanged_files_are_not_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (first, _) = walk(&key, &store, std::slice::from_ref(&src), None);

    let (second, counters) = walk(&key, &store, std::slice::from_ref(&src), Some(first.root));
    assert_eq!(counters.bytes_read.get(), 0);
    assert_eq!(counters.files.get(), 5);
    assert_eq!(second.root, first.root, "an unchanged source gives the same root tree");
    assert_eq!(second.refs, first.refs);

    fs::write(src.join("sub/deeper/note"), b"changed, and longer").unwrap();
    let (third, counters) = walk(&key, &store, std::slice::from_ref(&src), Some(second.root));
    assert_eq!(counters.bytes_read.get(), b"changed, and longer".len() as u64);
    assert_ne!(third.root, second.root);

    // Without a parent everything is read again.
    let (_, counters) = walk(&key, &store, std::slice::from_ref(&src), None);
    assert_eq!(counters.bytes_read.get(), counters.bytes_scanned.get());

    let target = dir.path().join("restored");
    restore_to_dir(store.clone(), SnapshotId::default(), third.root, &target, None).await.unwrap();
    assert_eq!(describe(&target), describe(&src));
}

#[tokio::test]
async fn include_restores_one_subtree_or_file_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    let snap = SnapshotId([3; 16]);

    let t1 = dir.path().join("t1");
    let s = restore_to_dir(store.clone(), snap, out.root, &t1, Some(Path::new("sub/deeper"))).await.unwrap();
    assert_eq!((s.files, s.dirs), (1, 1));
    let got = describe(&t1);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![PathBuf::from("sub"), PathBuf::from("sub/deeper"), PathBuf::from("sub/deeper/note")]
    );
    let want = describe(&src);
    for p in ["sub", "sub/deeper", "sub/deeper/note"] {
        if p != "sub" {
            assert_eq!(got[Path::new(p)], want[Path::new(p)], "{p}");
        }
    }

    let t2 = dir.path().join("t2");
    restore_to_dir(store.clone(), snap, out.root, &t2, Some(Path::new("/hello.txt"))).await.unwrap();
    assert_eq!(fs::read(t2.join("hello.txt")).unwrap(), b"hello, world\n");

    for missing in ["nope", "hello.txt/below", "sub/../hello.txt"] {
        let err = restore_to_dir(store.clone(), snap, out.root, &dir.path().join("t3"), Some(Path::new(missing)))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::PathNotFound { .. }), "{missing}: {err}");
    }
}

#[tokio::test]
async fn a_stream_restores_to_a_writer() {
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let data = noise(2 << 20, 9);
    let counters = Counters::default();
    let out =
        Walker::new(&key, MemSink(store.clone()), None, &counters).walk_stream(&data[..], b"dump.sql", None).unwrap();
    let root = Tree::decode(&store.get(&out.root).unwrap().1).unwrap();
    let node = root.get(b"dump.sql").unwrap();
    assert_eq!(node.permissions(), 0o600);
    assert_eq!(node.size, data.len() as u64);

    let mut written = Vec::new();
    let s = restore_to_writer(store.clone(), SnapshotId::default(), out.root, None, &mut written).await.unwrap();
    assert_eq!(written, data);
    assert_eq!(s.bytes, data.len() as u64);

    let mut again = Vec::new();
    restore_to_writer(store.clone(), SnapshotId::default(), out.root, Some(Path::new("dump.sql")), &mut again)
        .await
        .unwrap();
    assert_eq!(again, data);
}

#[tokio::test]
async fn stdout_needs_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    let mut sink = Vec::new();
    let err = restore_to_writer(store.clone(), SnapshotId::default(), out.root, None, &mut sink).await.unwrap_err();
    assert!(matches!(err, ClientError::NotAFile { .. }), "{err}");
    let err = restore_to_writer(store.clone(), SnapshotId::default(), out.root, Some(Path::new("sub")), &mut sink)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotAFile { .. }), "{err}");
    restore_to_writer(store.clone(), SnapshotId::default(), out.root, Some(Path::new("sub/deeper/note")), &mut sink)
        .await
        .unwrap();
    assert_eq!(sink, b"deep");
}

#[tokio::test]
async fn several_paths_become_top_level_entries() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let paths = vec![src.join("sub"), src.join("hello.txt"), src.join("link")];
    crate::walk::check_paths(&paths).unwrap();
    let (out, _) = walk(&key, &store, &paths, None);
    let target = dir.path().join("restored");
    restore_to_dir(store.clone(), SnapshotId::default(), out.root, &target, None).await.unwrap();
    let got = describe(&target);
    let want = describe(&src);
    for p in ["sub/big.bin", "sub/deeper", "sub/deeper/note", "hello.txt", "link"] {
        assert_eq!(got[Path::new(p)], want[Path::new(p)], "{p}");
    }
    assert!(!got.contains_key(Path::new("empty")));

    // A single file is a root with that one entry.
    let (single, _) = walk(&key, &store, &[src.join("hello.txt")], None);
    let root = Tree::decode(&store.get(&single.root).unwrap().1).unwrap();
    assert_eq!(root.len(), 1);
    assert!(root.get(b"hello.txt").is_some());
}

#[test]
fn bad_path_lists_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a/x");
    let b = dir.path().join("b/x");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    assert!(crate::walk::check_paths(&[]).is_err());
    assert!(crate::walk::check_paths(&[PathBuf::from("relative")]).is_err());
    assert!(crate::walk::check_paths(&[dir.path().join("missing")]).is_err());
    assert!(crate::walk::check_paths(&[a.clone(), b]).is_err());
    assert!(crate::walk::check_paths(&[a]).is_ok());
}

#[tokio::test]
async fn unreadable_entries_are_recorded_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("ok"), b"fine").unwrap();
    fs::write(src.join("secret"), b"hidden").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    // A privileged user reads the file anyway; then it must simply be there.
    let privileged = fs::File::open(src.join("secret")).is_ok();

    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, counters) = walk(&key, &store, std::slice::from_ref(&src), None);
    let root = Tree::decode(&store.get(&out.root).unwrap().1).unwrap();
    assert!(root.get(b"ok").is_some());
    if privileged {
        assert!(out.errors.is_empty());
        assert!(root.get(b"secret").is_some());
    } else {
        assert_eq!(counters.errors.get(), 1);
        assert!(out.errors[0].contains("secret"), "{:?}", out.errors);
        assert!(root.get(b"secret").is_none());
    }
}

#[tokio::test]
async fn restore_replaces_symlinks_instead_of_following_them() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"restored content").unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, _) = walk(&key, &store, std::slice::from_ref(&src), None);

    let outside = dir.path().join("outside");
    fs::write(&outside, b"must not change").unwrap();
    let target = dir.path().join("restored");
    fs::create_dir_all(&target).unwrap();
    symlink(&outside, target.join("file")).unwrap();
    restore_to_dir(store.clone(), SnapshotId::default(), out.root, &target, None).await.unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"must not change");
    assert!(fs::symlink_metadata(target.join("file")).unwrap().is_file());
    assert_eq!(fs::read(target.join("file")).unwrap(), b"restored content");
}

#[tokio::test]
async fn a_failing_chunk_fails_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    let broken = key.chunk_id(b"deep");
    store.broken.lock().unwrap().push(broken);
    let err =
        restore_to_dir(store.clone(), SnapshotId::default(), out.root, &dir.path().join("t"), None).await.unwrap_err();
    assert!(matches!(err, ClientError::DataLoss { .. }), "{err}");
}

#[test]
fn walks_count_new_changed_unchanged_and_deleted_files_against_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let paths = std::slice::from_ref(&src);
    let (first, c) = walk(&key, &store, paths, None);
    assert_eq!((c.files_new.get(), c.files_deleted.get()), (0, 0), "no parent, nothing to compare with");

    fs::write(src.join("hello.txt"), b"hello again, world\n").unwrap();
    fs::write(src.join("sub/new.txt"), b"new").unwrap();
    fs::remove_file(src.join("sub/deeper/note")).unwrap();
    let (second, c) = walk(&key, &store, paths, Some(first.root));
    let counts =
        |c: &Counters| (c.files_new.get(), c.files_changed.get(), c.files_unchanged.get(), c.files_deleted.get());
    assert_eq!(counts(&c), (1, 1, 3, 1));

    // A full walk reads everything but still compares with the parent.
    let counters = Counters::default();
    let full = Walker::new(&key, MemSink(store.clone()), Some(&*store as &dyn TreeLoader), &counters)
        .read_everything()
        .walk_paths(paths, Some(second.root))
        .unwrap_or_else(|e| panic!("walk failed: {e:?}"));
    assert_eq!(counts(&counters), (0, 0, 5, 0));
    assert_eq!(counters.bytes_read.get(), counters.bytes_scanned.get());

    // A directory gone: every file below it is deleted.
    fs::remove_dir_all(src.join("sub")).unwrap();
    let (_, c) = walk(&key, &store, paths, Some(full.root));
    assert_eq!(counts(&c), (0, 0, 3, 2));
}

#[tokio::test]
async fn a_file_that_only_grew_is_read_from_its_last_chunk() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let log = src.join("wal");
    let head = noise(6 << 20, 21);
    fs::write(&log, &head).unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (first, _) = walk(&key, &store, std::slice::from_ref(&src), None);

    // Appended to: the old chunks are read back and checked, only the old
    // last chunk and the new bytes are cut again (every byte is read once;
    // `bytes_verified` counts the kept ones), and the chunks are the ones a
    // whole read cuts.
    let more = noise(300 << 10, 22);
    fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(&more).unwrap();
    let (second, counters) = walk(&key, &store, std::slice::from_ref(&src), Some(first.root));
    let total = (head.len() + more.len()) as u64;
    assert_eq!(counters.files_appended.get(), 1);
    assert_eq!(counters.bytes_scanned.get(), total);
    assert_eq!(counters.bytes_read.get(), total, "every byte is read once");
    let cut = counters.bytes_read.get() - counters.bytes_verified.get();
    assert!(cut < total, "cut {cut} of {total}");
    assert!(cut >= more.len() as u64);
    let (whole, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    assert_eq!(second.refs, whole.refs, "appending cut other chunks than a whole read");

    // Rewritten in place near its end and grown: the check of the old last
    // chunk fails, so the file is not an appended one; it is cut again from
    // the chunk that differs, and every byte is still read once.
    let mut f = fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.seek(SeekFrom::Start(total - 10)).unwrap();
    f.write_all(b"overwrite!and grow").unwrap();
    drop(f);
    let (third, counters) = walk(&key, &store, std::slice::from_ref(&src), Some(second.root));
    assert_eq!(counters.files_appended.get(), 0);
    assert_eq!(counters.bytes_read.get(), counters.bytes_scanned.get());
    assert!(counters.bytes_verified.get() > 0 && counters.bytes_verified.get() < total);
    let (whole, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    assert_eq!(third.refs, whole.refs, "the rewritten tail cut other chunks than a whole read");

    let target = dir.path().join("restored");
    let (third, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    restore_to_dir(store.clone(), SnapshotId::default(), third.root, &target, None).await.unwrap();
    assert_eq!(describe(&target), describe(&src));
}

/// A file edited in place, same inode and size, with its last chunk
/// untouched: the edit is in the prefix the append shortcut would keep. The
/// bench's edge datasets (1 MiB rewritten inside a random file, 4 KiB
/// written into a sparse file's hole) lost their edits this way.
#[tokio::test]
async fn a_file_edited_in_the_middle_keeps_its_edit_in_the_next_backup() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let file = src.join("image.bin");
    let body = noise(8 << 20, 31);
    fs::write(&file, &body).unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (first, _) = walk(&key, &store, std::slice::from_ref(&src), None);

    let mut f = fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(2 << 20)).unwrap();
    f.write_all(&noise(64 << 10, 32)).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&file).unwrap().len(), body.len() as u64);
    let (second, counters) = walk(&key, &store, std::slice::from_ref(&src), Some(first.root));
    assert_eq!(counters.files_appended.get(), 0, "an edited file was taken for an appended one");
    let (whole, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    assert_eq!(second.refs, whole.refs, "the second backup's chunks are not those of the edited file");

    let target = dir.path().join("restored");
    restore_to_dir(store.clone(), SnapshotId::default(), second.root, &target, None).await.unwrap();
    assert_eq!(describe(&target), describe(&src));
}

#[test]
fn excluded_entries_are_left_out_of_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("marked")).unwrap();
    fs::write(src.join("a.txt"), b"a").unwrap();
    fs::write(src.join("b.tmp"), b"b").unwrap();
    fs::write(src.join("cache/c"), b"c").unwrap();
    fs::write(src.join("keep/d"), b"d").unwrap();
    fs::write(src.join("marked/.nobackup"), b"").unwrap();
    fs::write(src.join("marked/e"), b"e").unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let counters = Counters::default();
    let ex = crate::Excludes::new(&["*.tmp".into(), "cache/".into()], &[".nobackup".into()], false).unwrap();
    Walker::new(&key, MemSink(store.clone()), None, &counters).with_excludes(ex).walk_paths(&[src], None).unwrap();
    // a.txt and keep/d only.
    assert_eq!(counters.files.get(), 2);
    assert_eq!(counters.bytes_read.get(), 2);
}

/// `rows` lines of an SQL dump, numbered from `first`, with varied fields.
fn dump_rows(first: u64, rows: u64) -> Vec<u8> {
    let mut state = first.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::new();
    for id in first..first + rows {
        let (customer, cents, city) =
            (next() % 100_000, next() % 90_000, ["Paris", "Oslo", "Cork"][next() as usize % 3]);
        out.push_str(&format!("INSERT INTO orders VALUES ({id}, {customer}, 'shipped', {cents}, '{city}');\n"));
    }
    out.into_bytes()
}

/// The bytes of the data chunks `after` references and `before` does not.
fn new_data_bytes(store: &MemStore, before: &WalkOutput, after: &WalkOutput) -> usize {
    let old: std::collections::HashSet<_> = before.refs.iter().collect();
    after
        .refs
        .iter()
        .filter(|id| !old.contains(id))
        .filter_map(|id| store.get(id))
        .filter(|(kind, _)| *kind == BlobKind::Data)
        .map(|(_, data)| data.len())
        .sum()
}

#[tokio::test]
async fn a_row_inserted_into_a_dump_re_stores_only_the_text_chunks_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let dump = src.join("shop.sql");
    let rows = dump_rows(0, 100_000);
    assert!(rows.len() > 6 << 20);
    fs::write(&dump, &rows).unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (first, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    assert!(first.refs.len() > 50, "text is cut into small chunks: {} refs", first.refs.len());

    let middle = rows[rows.len() / 2..].iter().position(|&b| b == b'\n').unwrap() + rows.len() / 2 + 1;
    let mut edited = rows[..middle].to_vec();
    edited.extend(dump_rows(1_000_000, 3));
    edited.extend_from_slice(&rows[middle..]);
    fs::write(&dump, &edited).unwrap();
    let (second, _) = walk(&key, &store, std::slice::from_ref(&src), Some(first.root));
    let new = new_data_bytes(&store, &first, &second);
    assert!(new > 0 && new <= 2 * coffer_pack::TEXT_CHUNK_MAX, "three rows re-stored {new} bytes");

    let target = dir.path().join("restored");
    restore_to_dir(store.clone(), SnapshotId::default(), second.root, &target, None).await.unwrap();
    assert_eq!(describe(&target), describe(&src));
}

#[test]
fn a_grown_text_log_cuts_like_a_whole_read() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let log = src.join("access.log");
    fs::write(&log, dump_rows(0, 40_000)).unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (first, _) = walk(&key, &store, std::slice::from_ref(&src), None);

    let more = dump_rows(40_000, 2_000);
    fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(&more).unwrap();
    let (second, counters) = walk(&key, &store, std::slice::from_ref(&src), Some(first.root));
    assert_eq!(counters.files_appended.get(), 1);
    let cut = counters.bytes_read.get() - counters.bytes_verified.get();
    assert!(cut <= (more.len() + coffer_pack::TEXT_CHUNK_MAX) as u64, "cut {cut}");
    let (whole, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    assert_eq!(second.refs, whole.refs, "appending cut other chunks than a whole read");
}

/// A dump edited in the middle (and written anew, under a new inode) is
/// compared with its parent chunk by chunk and cut again only from the
/// chunk of its first edit; a shrunk file and a file of new content fall
/// back as far as they must. Every byte is read once, and the chunks are
/// always the ones a whole read cuts.
#[tokio::test]
async fn a_changed_file_is_cut_again_only_from_the_chunk_of_its_first_edit() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let dump = src.join("shop.sql");
    let rows = dump_rows(0, 100_000);
    fs::write(&dump, &rows).unwrap();
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (mut parent, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    let max = coffer_pack::TEXT_CHUNK_MAX as u64;

    let at = rows[rows.len() * 3 / 4..].iter().position(|&b| b == b'\n').unwrap() + rows.len() * 3 / 4 + 1;
    let mut edited = rows[..at].to_vec();
    edited.extend(dump_rows(1_000_000, 3));
    edited.extend_from_slice(&rows[at..]);
    let shrunk = edited[..edited.len() / 3].to_vec();
    let other = noise(edited.len() / 3, 41);
    // (content, bytes the parent's chunks can keep at most, at least)
    let cases: [(&[u8], u64, u64); 3] = [
        (&edited, at as u64, (at as u64).saturating_sub(max)),
        (&shrunk, shrunk.len() as u64, (shrunk.len() as u64).saturating_sub(2 * max)),
        (&other, 0, 0),
    ];
    for (i, (content, most, least)) in cases.into_iter().enumerate() {
        let tmp = src.join(".shop.sql.new");
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, &dump).unwrap();
        let (next, c) = walk(&key, &store, std::slice::from_ref(&src), Some(parent.root));
        let len = content.len() as u64;
        assert_eq!(c.bytes_read.get(), len, "case {i}: every byte is read once");
        let kept = c.bytes_verified.get();
        assert!(kept <= most && kept >= least, "case {i}: kept {kept} bytes, expected {least}..={most}");
        let (whole, _) = walk(&key, &store, std::slice::from_ref(&src), None);
        assert_eq!(next.refs, whole.refs, "case {i}: cut other chunks than a whole read");
        let target = dir.path().join(format!("restored-{i}"));
        restore_to_dir(store.clone(), SnapshotId::default(), next.root, &target, None).await.unwrap();
        assert_eq!(describe(&target), describe(&src), "case {i}");
        parent = next;
    }
}

#[tokio::test]
async fn a_target_the_restore_creates_is_marked_top_of_hierarchy_and_an_existing_one_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_source(&src);
    let key = RepoKey::generate();
    let store = Arc::new(MemStore::default());
    let (out, _) = walk(&key, &store, std::slice::from_ref(&src), None);
    let flags = |p: &Path| rustix::fs::ioctl_getflags(fs::File::open(p).unwrap());
    if flags(dir.path()).is_err() {
        // A filesystem without inode flags (tmpfs): nothing to mark.
        return;
    }
    let fresh = dir.path().join("fresh");
    restore_to_dir(store.clone(), SnapshotId::default(), out.root, &fresh, None).await.unwrap();
    assert!(flags(&fresh).unwrap().contains(rustix::fs::IFlags::TOPDIR));
    assert_eq!(describe(&fresh), describe(&src));
    let existing = dir.path().join("existing");
    fs::create_dir(&existing).unwrap();
    let before = flags(&existing).unwrap();
    restore_to_dir(store, SnapshotId::default(), out.root, &existing, None).await.unwrap();
    assert_eq!(flags(&existing).unwrap(), before);
    assert!(!before.contains(rustix::fs::IFlags::TOPDIR));
}
