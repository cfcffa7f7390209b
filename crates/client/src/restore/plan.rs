//! Planning a restore: where it starts (`--include`), and the wave, which
//! files are restored together and where each of their chunks goes.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use coffer_types::{ChunkId, SnapshotId};

use crate::source::{load_tree, BlobSource};
use crate::tree::{Node, NodeKind};
use crate::ClientError;

/// A wave of file content is restored once its plan holds this many
/// distinct chunks...
pub(super) const WAVE_CHUNKS: usize = 100_000;
/// ...or this many files, which bounds the memory of a plan.
pub(super) const WAVE_FILES: usize = 50_000;

/// The components of an `--include` path, as names to look up.
pub(super) fn include_components(snapshot: SnapshotId, include: &Path) -> Result<Vec<Vec<u8>>, ClientError> {
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
pub(super) enum Start {
    /// The whole root tree.
    Root(ChunkId),
    /// One node, under the directories leading to it.
    Node { parents: Vec<Node>, node: Node },
}

pub(super) async fn resolve<S: BlobSource>(
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

/// Where one chunk goes: which file of the wave, at which offset, and the
/// length its tree promises.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dest {
    pub(super) file: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// A restored file, from its creation to its last chunk.
pub(super) struct FileSlot {
    pub(super) path: PathBuf,
    pub(super) mode: u32,
    pub(super) mtime: filetime::FileTime,
    pub(super) size: u64,
    pub(super) state: Mutex<SlotState>,
}

#[derive(Default)]
pub(super) struct SlotState {
    /// Open between writes (unless too many files are); shared with the
    /// writeback thread while a hint for it waits there.
    pub(super) file: Option<std::sync::Arc<std::fs::File>>,
    pub(super) created: bool,
    /// Chunk writes still to come.
    pub(super) remaining: usize,
    pub(super) written: u64,
    /// Written since its last writeback hint.
    pub(super) unhinted: super::writeback::Pending,
}

/// Files whose content is restored together, and where each chunk goes.
#[derive(Default)]
pub(super) struct Wave {
    pub(super) files: Vec<FileSlot>,
    pub(super) dests: HashMap<ChunkId, Vec<Dest>>,
    /// Distinct chunk ids in the order the files reference them.
    pub(super) order: Vec<ChunkId>,
}

impl Wave {
    pub(super) fn is_full(&self) -> bool {
        self.order.len() >= WAVE_CHUNKS || self.files.len() >= WAVE_FILES
    }

    pub(super) fn add(&mut self, path: PathBuf, node: &Node, content: &[ChunkId], lens: &[u32]) {
        let file = self.files.len() as u32;
        let mut offset = 0u64;
        for (id, &len) in content.iter().zip(lens) {
            let dests = self.dests.entry(*id).or_default();
            if dests.is_empty() {
                self.order.push(*id);
            }
            dests.push(Dest { file, offset, len });
            offset += u64::from(len);
        }
        self.files.push(FileSlot {
            path,
            mode: node.permissions(),
            mtime: node.mtime.to_filetime(),
            size: node.size,
            state: Mutex::new(SlotState { remaining: content.len(), ..SlotState::default() }),
        });
    }
}
