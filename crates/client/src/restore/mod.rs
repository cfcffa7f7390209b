//! Restore: recreating a snapshot (or a subtree, or one file on stdout) from
//! its trees and chunks.
//!
//! ```text
//!   root tree ──► --include? walk down to the node
//!        │
//!        ▼
//!   trees, a breadth-first round at a time ──► mkdir, symlink; each file becomes a slot
//!        │                                      and each of its chunks a (slot, offset) destination
//!        ▼  (a wave: up to WAVE_CHUNKS chunks or WAVE_FILES files)
//!   a slice at a time (FIRST_SLICE chunks, then doubling), two ahead:
//!   prepare (locations in bulk) ──► plan: batches of neighbouring blobs ──► fetch_batch ×BATCHES_IN_FLIGHT
//!                                                                            └─► write each blob at its offsets
//!   a file is closed, chmod-ed and stamped as its last chunk lands;
//!   at the end: directory modes and mtimes, deepest first
//! ```
//!
//! Trees record each chunk's plaintext length, so every chunk's offset in
//! its file is known before anything is read: blobs are fetched in the order
//! the source finds cheapest (the cluster's: one ranged read per run of
//! neighbouring blobs in a shard) and written where they belong, each blob
//! once however many files hold it.
//!
//! Where the bytes come from is behind [`BlobSource`]: the cluster in real
//! use, a map in tests. A source returns plaintext only after it has been
//! authenticated and re-hashed against its id, so nothing unverified is ever
//! written. What this module keeps: every name comes from a validated tree
//! (single components only), so nothing is written outside the target; an
//! existing symlink at a restored path is replaced, never followed; a file
//! is complete (every chunk written, lengths as its tree says) before its
//! mode and mtime are set; and a directory's mode and mtime are set only
//! once nothing more will be created inside it.
//!
//! This file runs a restore (the walk, the waves, the batches in flight,
//! stdout); `plan` decides where it starts and where each chunk of a wave
//! goes; `fs` does the filesystem work.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coffer_types::{ChunkId, SnapshotId, SnapshotRecord};
use futures::stream::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::fetch::ClusterSource;
use crate::pipeline::LOOKUP_BATCH;
use crate::repo::Repository;
use crate::source::{blocking, decode_tree, fetch_all, load_tree, lock, BATCHES_IN_FLIGHT, READ_AHEAD};
pub use crate::source::{BadShard, BlobSource, Deliver};
pub use crate::stats::{RestoreCounters, RestoreStages};
use crate::tree::{Node, NodeKind, Tree};
use crate::ClientError;

mod fs;
mod plan;
mod writeback;

use fs::{finish_file, make_dir, make_symlink, mark_top_dir, open_slot, set_metadata, write_blob, Writers};
use plan::{resolve, Start, Wave};

/// Trees fetched per round of the breadth-first walk.
const TREE_ROUND: usize = 1_000;
/// Chunks of a wave located before its first reads; each later slice is
/// twice the one before, up to a lookup call's worth.
const FIRST_SLICE: usize = 1_024;

/// A wave's chunks, in order, cut into the slices located one after the
/// other (`FIRST_SLICE`, then doubling up to `LOOKUP_BATCH`).
fn slices(order: Vec<ChunkId>) -> Vec<Vec<ChunkId>> {
    let (mut out, mut rest, mut size) = (Vec::new(), order.as_slice(), FIRST_SLICE);
    while !rest.is_empty() {
        let n = size.min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
        size = (size * 2).min(LOOKUP_BATCH.max(FIRST_SLICE));
    }
    out
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
    /// Shards found missing or corrupt, or that could not be read.
    pub bad_shards: Vec<BadShard>,
    pub duration_s: f64,
    pub stages: RestoreStages,
    /// Shard bytes read from storage nodes (trees and data, healthy or for
    /// reconstruction), and those of them read from nodes outside the
    /// reader's site (see `Repository::with_site`).
    pub bytes_shards_read: u64,
    pub bytes_cross_site: u64,
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
        let source = Arc::new(
            ClusterSource::new(self.meta.clone(), self.record.name.clone(), self.key.clone())
                .with_site(self.site.clone()),
        );
        let work = self.progress.as_deref();
        if let Some(w) = work {
            // The snapshot's own figures size a whole restore; a path
            // inside it has no known size until it is walked.
            let (files, bytes) = match include {
                None => (Some(snap.stats.files), Some(snap.stats.bytes_scanned)),
                Some(_) => (None, None),
            };
            w.begin("restore", crate::work::Unit::Files, files, bytes);
        }
        let mut result = match target {
            RestoreTarget::Dir(dir) => {
                restore_into_dir(source.clone(), snap.id, snap.root, &dir, include, self.progress.clone()).await
            }
            RestoreTarget::Stdout => {
                let mut out = tokio::io::stdout();
                let r = restore_to_writer(source.clone(), snap.id, snap.root, include, &mut out).await;
                // The stream is counted whole once written.
                if let Ok(s) = &r {
                    crate::work::add_bytes(work, s.bytes);
                    crate::work::add_item(work);
                }
                r
            }
        };
        // Damage found on the way is repaired by the cluster, whether or not
        // the restore as a whole succeeded.
        source.report_damage().await;
        if let Ok(s) = &mut result {
            (s.bytes_shards_read, s.bytes_cross_site) = source.bytes_by_site();
            coffer_admin::metrics::events().restore_done(self.record.name.as_str(), s.bytes, s.duration_s);
        }
        result
    }
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
    restore_into_dir(source, snapshot, root, target, include, None).await
}

/// `restore_to_dir`, counting files and bytes into `work` as they land.
pub(crate) async fn restore_into_dir<S: BlobSource>(
    source: Arc<S>,
    snapshot: SnapshotId,
    root: ChunkId,
    target: &Path,
    include: Option<&Path>,
    work: Option<Arc<crate::work::Work>>,
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
        Err(_) => {
            tokio::fs::create_dir_all(target).await.map_err(|e| ClientError::io(target, e))?;
            let dir = target.to_path_buf();
            blocking("mark the target directory", move || {
                mark_top_dir(&dir);
                Ok(())
            })
            .await?;
        }
    }
    let start = resolve(&*source, snapshot, root, include).await?;
    let mut run = DirRestore {
        source,
        counters: Arc::default(),
        tally: Tally::default(),
        dir_meta: Vec::new(),
        wave: Wave::default(),
        writers: Arc::new(Writers::start()),
        work,
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
            match node.kind {
                NodeKind::Dir { subtree } => {
                    run.add_dir(&path, node).await?;
                    run.walk(path, subtree).await?;
                }
                _ => run.leaf(path, node).await?,
            }
        }
    }
    run.finish(snapshot, started).await
}

/// The state of one restore into a directory.
struct DirRestore<S: BlobSource> {
    source: Arc<S>,
    counters: Arc<RestoreCounters>,
    tally: Tally,
    /// Directories created, parents before children, for their metadata.
    dir_meta: Vec<(PathBuf, Node)>,
    wave: Wave,
    /// Restored files currently open, across the tasks of a wave, and the
    /// thread that starts their writeback.
    writers: Arc<Writers>,
    /// Where files and bytes are counted as they complete.
    work: Option<Arc<crate::work::Work>>,
}

impl<S: BlobSource> DirRestore<S> {
    /// Restores the contents of tree `tree` into `dir` (which exists), and
    /// everything below it, breadth first.
    async fn walk(&mut self, dir: PathBuf, tree: ChunkId) -> Result<(), ClientError> {
        let mut frontier: VecDeque<(PathBuf, ChunkId)> = VecDeque::from([(dir, tree)]);
        while !frontier.is_empty() {
            let round: Vec<(PathBuf, ChunkId)> = frontier.drain(..frontier.len().min(TREE_ROUND)).collect();
            let trees = self.load_trees(round.iter().map(|(_, id)| *id).collect()).await?;
            for ((dir, _), tree) in round.into_iter().zip(trees) {
                for node in tree.into_nodes() {
                    let path = dir.join(node.name_os());
                    match node.kind {
                        NodeKind::Dir { subtree } => {
                            self.add_dir(&path, node).await?;
                            frontier.push_back((path, subtree));
                        }
                        _ => self.leaf(path, node).await?,
                    }
                }
            }
            if self.wave.is_full() {
                self.run_wave().await?;
            }
        }
        Ok(())
    }

    /// The trees `ids`, in order, fetched in batches.
    async fn load_trees(&self, ids: Vec<ChunkId>) -> Result<Vec<Tree>, ClientError> {
        let started = Instant::now();
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        self.prepare(distinct.clone()).await?;
        let bytes = fetch_all(&*self.source, &self.counters, distinct).await?;
        let trees = ids
            .iter()
            .map(|id| decode_tree(*id, bytes.get(id).ok_or(ClientError::ChunkNotIndexed { chunk: *id })?))
            .collect::<Result<Vec<_>, _>>()?;
        let total: usize = bytes.values().map(Vec::len).sum();
        self.counters.trees.add(started.elapsed(), total as u64);
        Ok(trees)
    }

    async fn prepare(&self, ids: Vec<ChunkId>) -> Result<(), ClientError> {
        let started = Instant::now();
        let n = ids.len() as u64;
        self.source.prepare(ids).await?;
        self.counters.lookup.add(started.elapsed(), n);
        Ok(())
    }

    /// Creates directory `path` (whose metadata is set at the end).
    async fn add_dir(&mut self, path: &Path, node: Node) -> Result<(), ClientError> {
        let started = Instant::now();
        make_dir(path).await?;
        self.counters.metadata.add(started.elapsed(), 0);
        self.tally.dirs += 1;
        self.dir_meta.push((path.to_path_buf(), node));
        Ok(())
    }

    /// Restores a symlink now, or plans a file's content.
    async fn leaf(&mut self, path: PathBuf, node: Node) -> Result<(), ClientError> {
        match &node.kind {
            NodeKind::Symlink { target } => {
                let started = Instant::now();
                make_symlink(&path, target, &node).await?;
                self.counters.metadata.add(started.elapsed(), 0);
                self.tally.symlinks += 1;
            }
            NodeKind::File { content, lens } => {
                self.wave.add(path, &node, content, lens);
                self.tally.files += 1;
            }
            NodeKind::Dir { .. } => {
                return Err(ClientError::task("restore", "a directory was planned as a leaf"));
            }
        }
        Ok(())
    }

    /// Restores the content of every file of the current wave.
    async fn run_wave(&mut self) -> Result<(), ClientError> {
        let wave = std::mem::take(&mut self.wave);
        if wave.files.is_empty() {
            return Ok(());
        }
        let files = Arc::new(wave.files);
        let dests = Arc::new(wave.dests);
        // Empty files have no chunk to wait for.
        let empty: Vec<usize> = (0..files.len()).filter(|&i| lock(&files[i].state).remaining == 0).collect();
        if !empty.is_empty() {
            let (files, counters, writers) = (files.clone(), self.counters.clone(), self.writers.clone());
            let work = self.work.clone();
            blocking("create empty files", move || {
                for i in empty {
                    let slot = &files[i];
                    let mut st = lock(&slot.state);
                    let file = counters.metadata.time(0, || open_slot(slot, &mut st))?;
                    writers.open.fetch_add(1, Ordering::Relaxed);
                    counters.metadata.time(0, || finish_file(slot, Arc::new(file), &writers.open))?;
                    crate::work::add_item(work.as_deref());
                }
                Ok(())
            })
            .await?;
        }
        let written = Arc::new(AtomicU64::new(0));
        // Located a slice at a time, two lookups ahead, so the first reads
        // start after one short lookup instead of after all of them.
        let this = &*self;
        let batches = futures::stream::iter(slices(wave.order))
            .map(|slice| async move {
                this.prepare(slice.clone()).await?;
                Ok::<_, ClientError>(futures::stream::iter(this.source.plan(slice).into_iter().map(Ok)))
            })
            .buffered(2)
            .try_flatten();
        batches
            .map_ok(|batch| {
                let (files, dests, counters, writers, written) =
                    (files.clone(), dests.clone(), this.counters.clone(), this.writers.clone(), written.clone());
                let work = this.work.clone();
                let deliver: Deliver = Box::new(move |id, data| {
                    let n = write_blob(&files, &dests, id, data, &counters, &writers, work.as_deref())?;
                    written.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                });
                this.source.fetch_batch(batch, &this.counters, deliver)
            })
            .try_buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        self.tally.bytes += written.load(Ordering::Relaxed);
        // Every chunk was delivered exactly once: a file still waiting
        // means the source skipped one.
        for slot in files.iter() {
            let st = lock(&slot.state);
            if st.remaining != 0 || st.written != slot.size {
                return Err(ClientError::task(
                    "restore",
                    format!(
                        "{}: {} of {} bytes written, {} chunks never delivered",
                        slot.path.display(),
                        st.written,
                        slot.size,
                        st.remaining
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn finish(mut self, snapshot: SnapshotId, started: Instant) -> Result<RestoreSummary, ClientError> {
        self.run_wave().await?;
        // Children were pushed after their parents: going backwards sets a
        // directory's mode (which may forbid writing) only after everything
        // below it is done.
        let meta_started = Instant::now();
        for (path, node) in self.dir_meta.iter().rev() {
            set_metadata(path, node).await?;
        }
        self.counters.metadata.add(meta_started.elapsed(), 0);
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
            stages: self.counters.stages(),
            ..RestoreSummary::default()
        })
    }
}

/// Writes a file's chunks, in order, fetching a few ahead.
async fn write_content<S: BlobSource, W: AsyncWrite + Unpin + Send>(
    source: &S,
    node: &Node,
    out: &mut W,
    path: &Path,
) -> Result<u64, ClientError> {
    let NodeKind::File { content, .. } = &node.kind else { return Ok(0) };
    let mut chunks = futures::stream::iter(content.iter().copied()).map(|id| source.fetch(id)).buffered(READ_AHEAD);
    let mut written = 0u64;
    while let Some(data) = chunks.next().await {
        let data = data?;
        out.write_all(&data).await.map_err(|e| ClientError::io(path, e))?;
        written += data.len() as u64;
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
    let NodeKind::File { content, .. } = &node.kind else {
        return Err(ClientError::NotAFile { snapshot, path: name.display().to_string() });
    };
    source.prepare(content.clone()).await?;
    let bytes = write_content(&*source, &node, out, Path::new("<stdout>")).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_is_located_in_growing_slices_that_keep_its_order() {
        assert!(slices(Vec::new()).is_empty());
        let order: Vec<ChunkId> = (0..30_000u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                ChunkId(id)
            })
            .collect();
        let cut = slices(order.clone());
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1_024, 2_048, 4_096, 8_192, 10_000, 4_640]);
        assert_eq!(cut.concat(), order);
        assert_eq!(slices(order[..5].to_vec()), [order[..5].to_vec()]);
    }
}
