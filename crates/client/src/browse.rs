//! Browsing snapshots without restoring them: listing a snapshot's entries
//! (`coffer ls`) and comparing two snapshots (`coffer diff`).
//!
//! Both read only trees, never file content. `diff` descends only into
//! directories whose subtree ids differ: trees are content-addressed, so an
//! equal id means an equal subtree and the comparison costs in proportion to
//! what changed. Every tree is authenticated as it is fetched, like a restore.

use std::path::{Component, Path};
use std::sync::Arc;

use coffer_types::{ChunkId, SnapshotRecord};
use serde::Serialize;

use crate::fetch::ClusterSource;
use crate::repo::Repository;
use crate::source::{load_tree, BlobSource};
use crate::tree::{Node, NodeKind, Tree};
use crate::ClientError;

/// One entry of a listing.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// The path inside the snapshot, starting with `/`.
    pub path: String,
    /// "file", "dir" or "symlink".
    pub kind: &'static str,
    pub size: u64,
    pub mode: u32,
    pub mtime_s: i64,
}

/// How a path differs between two snapshots.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

impl ChangeKind {
    /// The one-character mark used in listings.
    pub fn mark(&self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub change: ChangeKind,
    /// "file", "dir" or "symlink" (the newer kind for a modification).
    pub kind: &'static str,
}

fn kind_name(k: &NodeKind) -> &'static str {
    match k {
        NodeKind::File { .. } => "file",
        NodeKind::Dir { .. } => "dir",
        NodeKind::Symlink { .. } => "symlink",
    }
}

fn join(prefix: &str, node: &Node) -> String {
    format!("{prefix}/{}", node.name_lossy())
}

impl Repository {
    fn tree_source(&self) -> Arc<ClusterSource> {
        Arc::new(ClusterSource::new(self.meta.clone(), self.record.name.clone(), self.key.clone()))
    }

    /// Every entry of `snap` under `path` (the whole snapshot without one),
    /// depth first in name order. A file path lists just that file.
    pub async fn ls(&self, snap: &SnapshotRecord, path: Option<&Path>) -> Result<Vec<Entry>, ClientError> {
        let source = self.tree_source();
        let mut tree = load_tree(&*source, snap.root).await?;
        let mut prefix = String::new();
        let not_found = || ClientError::PathNotFound {
            snapshot: snap.id,
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
        };
        let comps: Vec<_> = path.map(|p| p.components().collect()).unwrap_or_default();
        let mut out = Vec::new();
        for (i, c) in comps.iter().enumerate() {
            let name = match c {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(n) => std::os::unix::ffi::OsStrExt::as_bytes(*n).to_vec(),
                _ => return Err(not_found()),
            };
            let node = tree.get(&name).cloned().ok_or_else(not_found)?;
            prefix = join(&prefix, &node);
            match node.kind {
                NodeKind::Dir { subtree } => tree = load_tree(&*source, subtree).await?,
                _ if i + 1 == comps.len() => {
                    out.push(entry(prefix, &node));
                    return Ok(out);
                }
                _ => return Err(not_found()),
            }
        }
        list_into(&*source, tree, prefix, &mut out).await?;
        Ok(out)
    }

    /// What changed from `older` to `newer`, in path order.
    pub async fn diff(&self, older: &SnapshotRecord, newer: &SnapshotRecord) -> Result<Vec<Change>, ClientError> {
        let source = self.tree_source();
        let mut out = Vec::new();
        diff_trees(&*source, older.root, newer.root, String::new(), &mut out).await?;
        Ok(out)
    }
}

fn entry(path: String, n: &Node) -> Entry {
    Entry { path, kind: kind_name(&n.kind), size: n.size, mode: n.mode, mtime_s: n.mtime.secs }
}

/// Lists `tree` and everything below it into `out`, iteratively so that
/// deep trees cannot exhaust the stack.
async fn list_into<S: BlobSource>(
    source: &S,
    tree: Tree,
    prefix: String,
    out: &mut Vec<Entry>,
) -> Result<(), ClientError> {
    let mut stack = vec![(prefix, tree.into_nodes().into_iter())];
    while let Some((prefix, mut nodes)) = stack.pop() {
        let Some(node) = nodes.next() else { continue };
        let path = join(&prefix, &node);
        out.push(entry(path.clone(), &node));
        stack.push((prefix, nodes));
        if let NodeKind::Dir { subtree } = node.kind {
            let sub = load_tree(source, subtree).await?;
            stack.push((path, sub.into_nodes().into_iter()));
        }
    }
    Ok(())
}

/// Every path below `tree` as one change of kind `change`.
async fn all_of<S: BlobSource>(
    source: &S,
    node: &Node,
    path: String,
    change: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<(), ClientError> {
    out.push(Change { path: path.clone(), change, kind: kind_name(&node.kind) });
    if let NodeKind::Dir { subtree } = node.kind {
        let mut below = Vec::new();
        list_into(source, load_tree(source, subtree).await?, path, &mut below).await?;
        out.extend(below.into_iter().map(|e| Change { path: e.path, change, kind: e.kind }));
    }
    Ok(())
}

async fn diff_trees<S: BlobSource>(
    source: &S,
    older: ChunkId,
    newer: ChunkId,
    prefix: String,
    out: &mut Vec<Change>,
) -> Result<(), ClientError> {
    // Iterative over directory pairs whose subtree ids differ.
    let mut pending = vec![(older, newer, prefix)];
    while let Some((a, b, prefix)) = pending.pop() {
        if a == b {
            continue;
        }
        let (ta, tb) = (load_tree(source, a).await?, load_tree(source, b).await?);
        let (na, nb) = (ta.nodes(), tb.nodes());
        let (mut i, mut j) = (0, 0);
        let mut here = Vec::new();
        while i < na.len() || j < nb.len() {
            let order = match (na.get(i), nb.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    all_of(source, &na[i], join(&prefix, &na[i]), ChangeKind::Removed, &mut here).await?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    all_of(source, &nb[j], join(&prefix, &nb[j]), ChangeKind::Added, &mut here).await?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (&na[i], &nb[j]);
                    let path = join(&prefix, y);
                    match (&x.kind, &y.kind) {
                        (NodeKind::Dir { subtree: sa }, NodeKind::Dir { subtree: sb }) => {
                            if sa != sb {
                                pending.push((*sa, *sb, path));
                            }
                        }
                        (NodeKind::File { content: ca, .. }, NodeKind::File { content: cb, .. }) => {
                            if ca != cb || x.mode != y.mode {
                                here.push(Change { path, change: ChangeKind::Modified, kind: "file" });
                            }
                        }
                        (NodeKind::Symlink { target: la }, NodeKind::Symlink { target: lb }) => {
                            if la != lb {
                                here.push(Change { path, change: ChangeKind::Modified, kind: "symlink" });
                            }
                        }
                        _ => {
                            all_of(source, x, path.clone(), ChangeKind::Removed, &mut here).await?;
                            all_of(source, y, path, ChangeKind::Added, &mut here).await?;
                        }
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend(here);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path).then((a.change as u8).cmp(&(b.change as u8))));
    Ok(())
}
