//! The commands the state machine applies and the results it returns.
//!
//! Commands are the Raft log's payload, so they are a persistent format:
//! times and ids arrive *in* the command (stamped by the proposing leader or
//! drawn by the client), never read inside apply (invariant 5).

use coffer_types::{
    ChunkId, ChunkLocation, NodeId, NodeRecord, PackId, PackRecord, RepoName, RepoRecord, SessionId, SessionRecord,
    SnapshotId, SnapshotRecord,
};
use serde::{Deserialize, Serialize};

/// Chunk entries per Raft entry. openraft bounds each replication request
/// by the heartbeat interval, so an entry must stay small (~100 KiB here)
/// whatever the pack holds: a pack of small files carries 100,000 chunks.
pub const MAX_CHUNKS_PER_COMMAND: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Insert or update a storage node (a restart may change its address).
    RegisterNode {
        node: NodeRecord,
    },
    /// Persist a storage node's usage and the time it was last heard from.
    NodeSeen {
        node: NodeId,
        used_bytes: u64,
        capacity_bytes: u64,
        time_ms: u64,
    },
    CreateRepo {
        repo: RepoRecord,
    },
    BeginSession {
        session: SessionRecord,
    },
    EndSession {
        id: SessionId,
    },
    /// A pack whose every shard has been acknowledged, and the first
    /// `MAX_CHUNKS_PER_COMMAND` of the chunks in it.
    CommitPack {
        session: SessionId,
        pack: PackRecord,
        chunks: Vec<(ChunkId, ChunkLocation)>,
    },
    /// More chunk entries of a committed pack, at most
    /// `MAX_CHUNKS_PER_COMMAND`. Entries already indexed keep their first
    /// location.
    IndexChunks {
        repo: RepoName,
        pack: PackId,
        chunks: Vec<(ChunkId, ChunkLocation)>,
    },
    /// The last step of a backup; ends the session.
    CommitSnapshot {
        session: SessionId,
        snapshot: SnapshotRecord,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterNode { .. } => "register_node",
            Command::NodeSeen { .. } => "node_seen",
            Command::CreateRepo { .. } => "create_repo",
            Command::BeginSession { .. } => "begin_session",
            Command::EndSession { .. } => "end_session",
            Command::CommitPack { .. } => "commit_pack",
            Command::IndexChunks { .. } => "index_chunks",
            Command::CommitSnapshot { .. } => "commit_snapshot",
        }
    }
}

/// A deterministic refusal: every replica refuses the same command the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("repository {0} already exists")]
    RepoExists(RepoName),
    #[error("repository {0} does not exist")]
    UnknownRepo(RepoName),
    #[error("storage node {0} is not registered")]
    UnknownNode(NodeId),
    #[error("pack {pack}: shard {index} is placed on unknown node {node}")]
    PackOnUnknownNode { pack: PackId, index: u8, node: NodeId },
    #[error("pack {pack} belongs to repository {repo}, not to {expected}")]
    WrongRepo { pack: PackId, repo: RepoName, expected: RepoName },
    #[error("chunk {chunk} points into pack {pack}, which is not this commit's pack")]
    ChunkOutsidePack { chunk: ChunkId, pack: PackId },
    #[error("chunk {chunk} lies outside pack {pack}'s {pack_len} bytes")]
    ChunkOutOfRange { chunk: ChunkId, pack: PackId, pack_len: u64 },
    #[error("snapshot {snapshot}: root tree {root} is not in the chunk index")]
    RootNotIndexed { snapshot: SnapshotId, root: ChunkId },
    #[error("snapshot {snapshot}: reference list pack {pack} is not committed")]
    RefsNotCommitted { snapshot: SnapshotId, pack: PackId },
    #[error("snapshot {0} already exists with different content")]
    SnapshotConflict(SnapshotId),
    #[error("pack {0} already exists with different content")]
    PackConflict(PackId),
    #[error("pack {0} is not committed")]
    UnknownPack(PackId),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    #[default]
    Ok,
    /// The command was a repeat of one already applied (idempotent retry).
    AlreadyApplied,
    Rejected(Rejection),
}
