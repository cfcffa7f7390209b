//! The one error type of the agent library. Every variant says what failed
//! and carries the ids involved (repository, snapshot, pack, chunk, path), so
//! that the CLI can print it and an embedding application can match on it
//! without parsing messages.

use std::path::PathBuf;

use coffer_erasure::ErasureError;
use coffer_pack::PackError;
use coffer_types::{ChunkId, PackId, RepoName, SessionId, SnapshotId};

use coffer_rpc::RpcError;

/// Why a repository, backup or restore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No key slot of the repository opens with the given password.
    #[error("wrong password for repository {repo}")]
    WrongPassword { repo: RepoName },
    #[error("repository {repo} not found")]
    RepoNotFound { repo: RepoName },
    #[error("repository {repo} already exists")]
    RepoExists { repo: RepoName },
    /// The repository record holds no slot this build can read.
    #[error("repository {repo} has no usable key slot: {reason}")]
    BadKeySlot { repo: RepoName, reason: String },
    /// Neither "latest" nor any id prefix matched.
    #[error("snapshot {spec:?} not found")]
    SnapshotNotFound { spec: String },
    /// An id prefix matched several snapshots.
    #[error("snapshot prefix {spec:?} is ambiguous: it matches {}", .candidates.join(", "))]
    AmbiguousSnapshot { spec: String, candidates: Vec<String> },
    /// `--include` named a path the snapshot does not hold.
    #[error("path {path:?} not found in snapshot {snapshot}")]
    PathNotFound { snapshot: SnapshotId, path: String },
    /// Restoring to stdout needs a single regular file.
    #[error("snapshot {snapshot}: {path:?} is not a regular file and cannot be written to stdout")]
    NotAFile { snapshot: SnapshotId, path: String },
    /// The backup source given by the caller cannot be backed up as asked.
    #[error("garbage collection of {repo} gave up: {reason}")]
    GcBusy { repo: RepoName, reason: String },
    #[error("invalid retention policy: {reason}")]
    BadPolicy { reason: String },
    #[error("invalid backup source: {reason}")]
    BadSource { reason: String },
    /// The restore target cannot be written as asked.
    #[error("invalid restore target {path:?}: {reason}")]
    BadTarget { path: PathBuf, reason: String },
    #[error(transparent)]
    Conn(#[from] RpcError),
    #[error("{0}")]
    Pack(#[from] PackError),
    #[error("erasure coding of pack {pack}: {source}")]
    Erasure { pack: PackId, source: ErasureError },
    /// A pack cannot be read back: fewer than k good shards, or a blob that
    /// fails authentication even after reconstruction.
    #[error("pack {pack}: data lost: {reason}")]
    DataLoss { pack: PackId, reason: String },
    /// A chunk or tree that a snapshot references is not in the chunk index.
    #[error("chunk {chunk} is not in the chunk index")]
    ChunkNotIndexed { chunk: ChunkId },
    /// A pack the chunk index points to has no record in the catalog.
    #[error("pack {pack} has no catalog record")]
    PackNotFound { pack: PackId },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A directory listing does not decode or breaks a tree invariant.
    #[error("bad tree{}: {reason}", .tree.map(|t| format!(" {t}")).unwrap_or_default())]
    BadTree { tree: Option<ChunkId>, reason: String },
    /// A pack could not be placed and stored within the allowed attempts.
    #[error("storing pack {pack} failed after {attempts} attempt(s): {reason}")]
    UploadFailed { pack: PackId, attempts: u32, reason: String },
    /// `coffer key remove` named a slot the repository does not have.
    #[error("repository {repo} has no key slot {id}")]
    KeySlotNotFound { repo: RepoName, id: String },
    /// Removing this slot would leave the repository with none.
    #[error("repository {repo}: {id} is its last key slot; add another before removing it")]
    LastKeySlot { repo: RepoName, id: String },
    /// Another change to the key slots landed between reading and writing
    /// them; nothing was changed by this one.
    #[error("repository {repo}: the key slots were changed by someone else meanwhile; nothing was changed, run the command again: {reason}")]
    KeySlotsChanged { repo: RepoName, reason: String },
    /// A slot cannot receive a new key epoch (a version-1 slot, or one that
    /// does not parse); rotation changes nothing until it is removed.
    #[error("repository {repo}: key slot {id} cannot hold the new key epoch ({reason}); open the repository with its password and run `coffer key rotate` with it, or remove it with `coffer key remove {id}`")]
    SlotBlocksRotation { repo: RepoName, id: String, reason: String },
    /// The catalog or a storage node answered with something malformed.
    #[error("bad answer to {what}: {reason}")]
    BadResponse { what: &'static str, reason: String },
    /// The backup session could not be opened or committed.
    #[error("backup session {session}: {reason}")]
    SessionFailed { session: SessionId, reason: String },
    /// A pipeline task panicked or was cancelled; a bug, reported rather than
    /// propagated as a panic.
    #[error("internal task {task} failed: {reason}")]
    Task { task: &'static str, reason: String },
    #[error("garbage collection run {run} did not finish within {wait:?}; it goes on on the metadata leader")]
    GcNotDone { run: u64, wait: std::time::Duration },
}

impl ClientError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ClientError::Io { path: path.into(), source }
    }

    pub(crate) fn bad_tree(tree: Option<ChunkId>, reason: impl Into<String>) -> Self {
        ClientError::BadTree { tree, reason: reason.into() }
    }

    pub(crate) fn task(task: &'static str, err: impl std::fmt::Display) -> Self {
        ClientError::Task { task, reason: err.to_string() }
    }
}
