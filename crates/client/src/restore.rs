//! Restore: recreating a snapshot (or a subtree, or one file on stdout) from
//! its trees and chunks.
//!
//! ```text
//!   root tree ──► --include? walk down to the node
//!        │
//!        ▼
//!   tree loads (up to TREE_LOADS at once) ──► mkdir, symlink ──► file tasks (FILES_IN_FLIGHT at once)
//!                                                                 └─► fetch chunks READ_AHEAD ahead, write in order
//!   at the end: directory modes and mtimes, deepest first
//! ```
//!
//! Where the bytes come from is behind [`BlobSource`]: the cluster in real
//! use, a map in tests. A source returns plaintext only after it has been
//! authenticated and re-hashed against its id, so nothing unverified is ever
//! written. What this module keeps: every name comes from a validated tree
//! (single components only), so nothing is written outside the target; an
//! existing symlink at a restored path is replaced, never followed; and a
//! directory's mode and mtime are set only once nothing more will be created
//! inside it.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use coffer_types::{ChunkId, SnapshotId, SnapshotRecord};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::fetch::ClusterSource;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, Tree};
use crate::ClientError;

/// Trees fetched at once while walking the snapshot.
const TREE_LOADS: usize = 16;
/// Files restored at once.
const FILES_IN_FLIGHT: usize = 16;
/// Chunks of one file fetched ahead of the one being written.
const READ_AHEAD: usize = 4;

/// Where blob plaintext comes from during a restore.
pub trait BlobSource: Send + Sync + 'static {
    /// A hint that `ids` will be fetched soon, so that their locations can be
    /// resolved in bulk. Fetching must work without it.
    fn prepare(&self, ids: Vec<ChunkId>) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// The verified plaintext of the chunk or tree `id`.
    fn fetch(&self, id: ChunkId) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send;

    /// What went wrong but was repaired so far: the number of packs read in
    /// degraded mode, and a line per bad shard.
    fn health(&self) -> (u64, Vec<String>) {
        (0, Vec::new())
    }
}

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Into this directory, created if absent.
    Dir(PathBuf),
    /// The single file of the snapshot (or the file named by `include`) to
    /// standard output.
    Stdout,
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RestoreSummary {
    pub snapshot_id: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Packs that had to be reconstructed from parity.
    pub degraded_packs: u64,
    /// Shards found missing or corrupt, as "pack P shard i on node N: reason".
    pub bad_shards: Vec<String>,
    pub duration_s: f64,
}

impl Repository {
    /// Restores `snap` to `target`; with `include`, only that path inside the
    /// snapshot (relative to its root), kept at its relative path.
    pub async fn restore(
        &self,
        snap: &SnapshotRecord,
        target: RestoreTarget,
        include: Option<&Path>,
    ) -> Result<RestoreSummary, ClientError> {
        let source = Arc::new(ClusterSource::new(self.meta.clone(), self.record.name.clone(), self.key.clone()));
        match target {
            RestoreTarget::Dir(dir) => restore_to_dir(source, snap.id, snap.root, &dir, include).await,
            RestoreTarget::Stdout => {
                let mut out = tokio::io::stdout();
                restore_to_writer(source, snap.id, snap.root, include, &mut out).await
            }
        }
    }
}

/// Fetches and decodes the tree `id`.
pub(crate) async fn load_tree<S: BlobSource>(source: &S, id: ChunkId) -> Result<Tree, ClientError> {
    let bytes = source.fetch(id).await?;
    Tree::decode(&bytes).map_err(|e| match e {
        ClientError::BadTree { reason, .. } => ClientError::BadTree { tree: Some(id), reason },
        other => other,
    })
}

/// The components of an `--include` path, as names to look up.
fn include_components(snapshot: SnapshotId, include: &Path) -> Result<Vec<Vec<u8>>, ClientError> {
    let mut out = Vec::new();
    for c in include.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ClientError::PathNotFound { snapshot, path: include.display().to_string() })
            }
        }
    }
    Ok(out)
}

/// What a restore starts from.
enum Start {
    /// The whole root tree.
    Root(ChunkId),
    /// One node, under the directories leading to it.
    Node { parents: Vec<Node>, node: Node },
}

async fn resolve<S: BlobSource>(
    source: &S,
    snapshot: SnapshotId,
    root: ChunkId,
    include: Option<&Path>,
) -> Result<Start, ClientError> {
    let comps = match include {
        Some(p) => include_components(snapshot, p)?,
        None => Vec::new(),
    };
    if comps.is_empty() {
        return Ok(Start::Root(root));
    }
    let not_found =
        || ClientError::PathNotFound { snapshot, path: include.map(|p| p.display().to_string()).unwrap_or_default() };
    let mut tree = load_tree(source, root).await?;
    let mut parents = Vec::new();
    for (i, name) in comps.iter().enumerate() {
        let node = tree.get(name).cloned().ok_or_else(not_found)?;
        if i + 1 == comps.len() {
            return Ok(Start::Node { parents, node });
        }
        match node.kind {
            NodeKind::Dir { subtree } => {
                tree = load_tree(source, subtree).await?;
                parents.push(node);
            }
            _ => return Err(not_found()),
        }
    }
    Err(not_found())
}

/// Counts of what was restored.
#[derive(Default)]
struct Tally {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
}

/// Restores into directory `target`.
pub async fn restore_to_dir<S: BlobSource>(
    source: Arc<S>,
    snapshot: SnapshotId,
    root: ChunkId,
    target: &Path,
    include: Option<&Path>,
) -> Result<RestoreSummary, ClientError> {
    let started = Instant::now();
    match tokio::fs::symlink_metadata(target).await {
        Ok(m) if !m.is_dir() => {
            return Err(ClientError::BadTarget {
                path: target.to_path_buf(),
                reason: "exists and is not a directory".into(),
            })
        }
        Ok(_) => {}
        Err(_) => tokio::fs::create_dir_all(target).await.map_err(|e| ClientError::io(target, e))?,
    }
    let start = resolve(&*source, snapshot, root, include).await?;
    let mut run = DirRestore {
        source,
        tally: Tally::default(),
        dir_meta: Vec::new(),
        files: JoinSet::new(),
        slots: Arc::new(Semaphore::new(FILES_IN_FLIGHT)),
    };
    match start {
        Start::Root(tree) => run.walk(target.to_path_buf(), tree).await?,
        Start::Node { parents, node } => {
            let mut dir = target.to_path_buf();
            for p in parents {
                dir.push(p.name_os());
                make_dir(&dir).await?;
                run.dir_meta.push((dir.clone(), p));
            }
            let path = dir.join(node.name_os());
            run.node(path, node).await?;
            run.drain_queue().await?;
        }
    }
    run.finish(snapshot, started).await
}

/// The state of one restore into a directory.
struct DirRestore<S: BlobSource> {
    source: Arc<S>,
    tally: Tally,
    /// Directories created, parents before children, for their metadata.
    dir_meta: Vec<(PathBuf, Node)>,
    files: JoinSet<Result<u64, ClientError>>,
    slots: Arc<Semaphore>,
}

impl<S: BlobSource> DirRestore<S> {
    /// Restores the contents of tree `tree` into `dir` (which exists), and
    /// everything below it.
    async fn walk(&mut self, dir: PathBuf, tree: ChunkId) -> Result<(), ClientError> {
        let mut queue: Vec<(PathBuf, ChunkId)> = vec![(dir, tree)];
        let mut loads = FuturesUnordered::new();
        loop {
            while loads.len() < TREE_LOADS {
                let Some((dir, id)) = queue.pop() else { break };
                let source = self.source.clone();
                loads.push(async move {
                    let tree = load_tree(&*source, id).await;
                    (dir, tree)
                });
            }
            let Some((dir, tree)) = loads.next().await else { break };
            let tree = tree?;
            self.source.prepare(tree.referenced_ids().copied().collect()).await?;
            for node in tree.into_nodes() {
                let path = dir.join(node.name_os());
                if let NodeKind::Dir { subtree } = node.kind {
                    make_dir(&path).await?;
                    self.tally.dirs += 1;
                    self.dir_meta.push((path.clone(), node));
                    queue.push((path, subtree));
                } else {
                    self.node(path, node).await?;
                }
            }
            self.reap()?;
        }
        self.drain_queue().await
    }

    /// Restores one node at `path`.
    async fn node(&mut self, path: PathBuf, node: Node) -> Result<(), ClientError> {
        match &node.kind {
            NodeKind::Dir { subtree } => {
                let subtree = *subtree;
                make_dir(&path).await?;
                self.tally.dirs += 1;
                self.dir_meta.push((path.clone(), node));
                Box::pin(self.walk(path, subtree)).await
            }
            NodeKind::Symlink { target } => {
                make_symlink(&path, target, &node).await?;
                self.tally.symlinks += 1;
                Ok(())
            }
            NodeKind::File { .. } => {
                let permit =
                    self.slots.clone().acquire_owned().await.map_err(|e| ClientError::task("restore file", e))?;
                let source = self.source.clone();
                self.files.spawn(async move {
                    let _permit = permit;
                    let mut file = FileOut(Some(create_file(&path).await?));
                    let written = write_content(&*source, &node, &mut file, &path).await?;
                    drop(file);
                    set_metadata(&path, &node).await?;
                    Ok(written)
                });
                self.tally.files += 1;
                Ok(())
            }
        }
    }

    /// Surfaces the first failure among finished file tasks.
    fn reap(&mut self) -> Result<(), ClientError> {
        while let Some(done) = self.files.try_join_next() {
            self.tally.bytes += done.map_err(|e| ClientError::task("restore file", e))??;
        }
        Ok(())
    }

    /// Waits for every file task.
    async fn drain_queue(&mut self) -> Result<(), ClientError> {
        while let Some(done) = self.files.join_next().await {
            self.tally.bytes += done.map_err(|e| ClientError::task("restore file", e))??;
        }
        Ok(())
    }

    async fn finish(mut self, snapshot: SnapshotId, started: Instant) -> Result<RestoreSummary, ClientError> {
        self.drain_queue().await?;
        // Children were pushed after their parents: going backwards sets a
        // directory's mode (which may forbid writing) only after everything
        // below it is done.
        for (path, node) in self.dir_meta.iter().rev() {
            set_metadata(path, node).await?;
        }
        let (degraded_packs, bad_shards) = self.source.health();
        Ok(RestoreSummary {
            snapshot_id: snapshot.to_hex(),
            files: self.tally.files,
            dirs: self.tally.dirs,
            symlinks: self.tally.symlinks,
            bytes: self.tally.bytes,
            degraded_packs,
            bad_shards,
            duration_s: started.elapsed().as_secs_f64(),
        })
    }
}

/// Where a file's chunks are written, in order.
trait ChunkOut: Send {
    fn put(&mut self, data: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Any async writer (standard output, a buffer in tests).
struct AsyncOut<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin + Send> ChunkOut for AsyncOut<'_, W> {
    async fn put(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        self.0.write_all(&data).await
    }
}

/// A restored file. Each chunk is written by a blocking thread that owns the
/// buffer, which spares the copy an async file wrapper would make.
struct FileOut(Option<std::fs::File>);

impl ChunkOut for FileOut {
    async fn put(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = self.0.take().ok_or_else(|| std::io::Error::other("the file was lost by a failed write"))?;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&data);
            (file, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.0 = Some(file);
        written
    }
}

/// Writes a file's chunks, in order, fetching a few ahead.
async fn write_content<S: BlobSource, O: ChunkOut>(
    source: &S,
    node: &Node,
    out: &mut O,
    path: &Path,
) -> Result<u64, ClientError> {
    let NodeKind::File { content } = &node.kind else { return Ok(0) };
    let mut chunks = futures::stream::iter(content.iter().copied()).map(|id| source.fetch(id)).buffered(READ_AHEAD);
    let mut written = 0u64;
    while let Some(data) = chunks.next().await {
        let data = data?;
        let len = data.len() as u64;
        out.put(data).await.map_err(|e| ClientError::io(path, e))?;
        written += len;
    }
    if written != node.size {
        return Err(ClientError::bad_tree(
            None,
            format!("{}: the tree says {} bytes, the chunks hold {written}", path.display(), node.size),
        ));
    }
    Ok(written)
}

/// Restores the single file of the snapshot, or the file `include` names,
/// to `out`.
pub async fn restore_to_writer<S: BlobSource, W: AsyncWrite + Unpin + Send>(
    source: Arc<S>,
    snapshot: SnapshotId,
    root: ChunkId,
    include: Option<&Path>,
    out: &mut W,
) -> Result<RestoreSummary, ClientError> {
    let started = Instant::now();
    let node = match resolve(&*source, snapshot, root, include).await? {
        Start::Node { node, .. } => node,
        Start::Root(root) => {
            let tree = load_tree(&*source, root).await?;
            match tree.into_nodes().as_slice() {
                [only] => only.clone(),
                _ => return Err(ClientError::NotAFile { snapshot, path: "/".into() }),
            }
        }
    };
    let name = PathBuf::from(OsStr::from_bytes(&node.name));
    if !matches!(node.kind, NodeKind::File { .. }) {
        return Err(ClientError::NotAFile { snapshot, path: name.display().to_string() });
    }
    if let NodeKind::File { content } = &node.kind {
        source.prepare(content.clone()).await?;
    }
    let bytes = write_content(&*source, &node, &mut AsyncOut(&mut *out), Path::new("<stdout>")).await?;
    out.flush().await.map_err(|e| ClientError::io("<stdout>", e))?;
    let (degraded_packs, bad_shards) = source.health();
    Ok(RestoreSummary {
        snapshot_id: snapshot.to_hex(),
        files: 1,
        bytes,
        degraded_packs,
        bad_shards,
        duration_s: started.elapsed().as_secs_f64(),
        ..RestoreSummary::default()
    })
}

/// Creates directory `path`, accepting one that already exists.
async fn make_dir(path: &Path) -> Result<(), ClientError> {
    match tokio::fs::create_dir(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match tokio::fs::symlink_metadata(path).await {
            Ok(m) if m.is_dir() => Ok(()),
            _ => {
                Err(ClientError::BadTarget { path: path.to_path_buf(), reason: "exists and is not a directory".into() })
            }
        },
        Err(e) => Err(ClientError::io(path, e)),
    }
}

/// Removes whatever non-directory sits at `path`, so that what is restored
/// there is created fresh and an old symlink is never followed.
async fn clear_path(path: &Path) -> Result<(), ClientError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_dir() => {
            Err(ClientError::BadTarget { path: path.to_path_buf(), reason: "a directory is in the way".into() })
        }
        Ok(_) => tokio::fs::remove_file(path).await.map_err(|e| ClientError::io(path, e)),
        Err(_) => Ok(()),
    }
}

async fn create_file(path: &Path) -> Result<std::fs::File, ClientError> {
    clear_path(path).await?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| ClientError::io(path, e))?;
    Ok(file.into_std().await)
}

async fn make_symlink(path: &Path, target: &[u8], node: &Node) -> Result<(), ClientError> {
    clear_path(path).await?;
    let target = PathBuf::from(OsStr::from_bytes(target));
    tokio::fs::symlink(&target, path).await.map_err(|e| ClientError::io(path, e))?;
    let mtime = node.mtime.to_filetime();
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || filetime::set_symlink_file_times(&p, mtime, mtime))
        .await
        .map_err(|e| ClientError::task("set symlink times", e))?
        .map_err(|e| ClientError::io(path, e))
}

/// Sets the mode and the mtime (and atime, to the same value) of a restored
/// file or directory.
async fn set_metadata(path: &Path, node: &Node) -> Result<(), ClientError> {
    let perms = std::fs::Permissions::from_mode(node.permissions());
    tokio::fs::set_permissions(path, perms).await.map_err(|e| ClientError::io(path, e))?;
    let mtime = node.mtime.to_filetime();
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || filetime::set_file_times(&p, mtime, mtime))
        .await
        .map_err(|e| ClientError::task("set file times", e))?
        .map_err(|e| ClientError::io(path, e))
}
