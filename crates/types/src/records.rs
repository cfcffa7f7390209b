//! The records the catalog keeps. They are serialised into the Raft log and
//! the state machine, so every change to them is a format change: add fields
//! with `#[serde(default)]`, never repurpose one.

use serde::{Deserialize, Serialize};

use crate::{ChunkId, ErasureParams, Hash32, NodeId, PackId, RepoName, SessionId, ShardIndex, SiteId, SnapshotId};

/// A storage node as the cluster map knows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct NodeRecord {
    pub id: NodeId,
    pub site: SiteId,
    /// Where its shard service listens, as other hosts reach it.
    pub addr: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Time of the last heartbeat, in milliseconds since the Unix epoch, as
    /// stamped by the metadata node that proposed it.
    pub last_heartbeat_ms: u64,
}

/// Liveness as derived from the heartbeat age; never stored.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Suspect,
    Down,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
        }
    }
}

/// A repository: its erasure policy and its key, wrapped by a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RepoRecord {
    pub name: RepoName,
    pub params: ErasureParams,
    /// Key slots: each is an opaque, versioned, password-wrapped copy of the
    /// repository master key. The catalog never sees the key itself.
    pub key_slots: Vec<Vec<u8>>,
    pub created_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
#[serde(rename_all = "lowercase")]
pub enum PackKind {
    /// Encrypted file-content blobs.
    Data,
    /// Encrypted directory listings.
    Tree,
    /// An unencrypted, sorted list of the chunk ids one snapshot references.
    Refs,
}

/// One shard of a pack: where it lives and what its body hashes to.
///
/// A pack committed while too few nodes were up for `k + m` ("short") has
/// shards whose `node` is [`NodeId::UNPLACED`]: the agent computed them (so
/// the checksum is known and a rebuild is verified against it bit for bit)
/// but sent them nowhere. The repair planner writes them like lost shards.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ShardRecord {
    pub index: ShardIndex,
    pub node: NodeId,
    pub checksum: Hash32,
}

impl ShardRecord {
    /// False for a shard of a short pack that no node holds yet.
    pub fn is_placed(&self) -> bool {
        self.node != NodeId::UNPLACED
    }
}

/// A pack as committed: every pack carries its own code parameters, so a
/// policy change never reinterprets old packs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct PackRecord {
    pub id: PackId,
    pub repo: RepoName,
    pub kind: PackKind,
    pub params: ErasureParams,
    /// Bytes of blob data before padding to `k * shard_len`.
    pub pack_len: u64,
    pub shard_len: u64,
    /// `k + m` entries, in shard-index order; unplaced ones in a short pack.
    pub shards: Vec<ShardRecord>,
}

impl PackRecord {
    /// How many shards some node holds (`k + m` unless the pack is short).
    pub fn placed(&self) -> usize {
        self.shards.iter().filter(|s| s.is_placed()).count()
    }
}

/// Where a blob lives: a byte range of a pack.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Full,
    #[default]
    Incremental,
    Differential,
}

impl BackupKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
            BackupKind::Differential => "differential",
        }
    }
}

impl std::str::FromStr for BackupKind {
    type Err = crate::TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(BackupKind::Full),
            "incremental" => Ok(BackupKind::Incremental),
            "differential" => Ok(BackupKind::Differential),
            _ => Err(crate::TypesError::UnknownEnum { what: "backup kind", value: s.to_string() }),
        }
    }
}

/// What was backed up: a host and a path, or a named stream.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Source {
    pub host: String,
    /// The absolute path(s) backed up, or `stdin:NAME` for a stream.
    pub path: String,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.path)
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub bytes_scanned: u64,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub errors: u64,
    /// What the source held against what the snapshot protects (issue 14).
    /// Not part of this record's bincode layout, which is fixed: the
    /// catalog keeps it beside the snapshot (`CoverageRecord` under its own
    /// key) and fills it in on every read. `None` for snapshots made before
    /// it was measured.
    #[serde(skip)]
    pub coverage: Option<Coverage>,
}

/// The most example paths a snapshot's coverage keeps per backup.
pub const MAX_SKIPPED_EXAMPLES: usize = 20;
/// The longest example path kept (longer ones are cut on a character boundary).
pub const MAX_SKIPPED_PATH: usize = 1_024;

/// Why the walk left an entry out.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SkipReason {
    /// It was there but could not be listed, opened or read.
    Unreadable,
    /// An exclude pattern or marker file left it out.
    Excluded,
    /// It was listed but gone by the time it was read.
    Vanished,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreadable => "unreadable",
            SkipReason::Excluded => "excluded",
            SkipReason::Vanished => "vanished",
        }
    }
}

impl std::str::FromStr for SkipReason {
    type Err = crate::TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unreadable" => Ok(SkipReason::Unreadable),
            "excluded" => Ok(SkipReason::Excluded),
            "vanished" => Ok(SkipReason::Vanished),
            _ => Err(crate::TypesError::UnknownEnum { what: "skip reason", value: s.to_string() }),
        }
    }
}

/// One entry the walk left out, as an example for the report.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SkippedEntry {
    pub path: String,
    pub reason: SkipReason,
}

/// The source at the time of the backup against what the snapshot holds:
/// the backup ratio's inputs. Totals count protected and skipped entries;
/// the bytes of a skipped entry are its size as listed (0 when not even
/// that could be read, and for an excluded directory, whose content is
/// never walked).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct Coverage {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_protected: u64,
    pub bytes_protected: u64,
    pub skipped_unreadable: u64,
    pub skipped_excluded: u64,
    pub skipped_vanished: u64,
    /// At most `MAX_SKIPPED_EXAMPLES`, in walk order.
    pub examples: Vec<SkippedEntry>,
    /// For a command source (`--stdin-from-command`, an agent's `command`):
    /// the command's exit code. A command that fails leaves no snapshot, so
    /// a recorded one is 0; the field says the source was a command.
    pub command_exit: Option<i32>,
}

impl Coverage {
    /// Entries skipped for any reason.
    pub fn files_skipped(&self) -> u64 {
        self.skipped_unreadable.saturating_add(self.skipped_excluded).saturating_add(self.skipped_vanished)
    }

    /// Entries skipped for a reason other than an exclude: data the owner
    /// meant to protect and did not.
    pub fn files_unprotected(&self) -> u64 {
        self.skipped_unreadable.saturating_add(self.skipped_vanished)
    }

    /// Checks the bounds a record from the wire must keep.
    pub fn validate(&self) -> Result<(), String> {
        if self.examples.len() > MAX_SKIPPED_EXAMPLES {
            return Err(format!("examples: {} entries, at most {MAX_SKIPPED_EXAMPLES}", self.examples.len()));
        }
        if self.examples.iter().any(|e| e.path.len() > MAX_SKIPPED_PATH) {
            return Err(format!("examples: a path over {MAX_SKIPPED_PATH} bytes"));
        }
        if self.files_protected > self.files_total || self.bytes_protected > self.bytes_total {
            return Err("more protected than the source held".into());
        }
        Ok(())
    }
}

/// How the catalog stores a snapshot's `Coverage`: the enum's tag is the
/// layout version, so a later layout is a new variant and old values still
/// decode.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum CoverageRecord {
    V1(Coverage),
}

impl CoverageRecord {
    pub fn into_coverage(self) -> Coverage {
        match self {
            CoverageRecord::V1(c) => c,
        }
    }
}

/// A committed backup. It restores on its own: `root` names a complete tree.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub repo: RepoName,
    pub source: Source,
    pub kind: BackupKind,
    pub parent: Option<SnapshotId>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub root: ChunkId,
    pub stats: SnapshotStats,
    pub tags: Vec<String>,
    /// The reference list: a `Refs` pack holding the sorted chunk ids this
    /// snapshot references, readable without the repository key.
    pub refs_pack: PackId,
    pub refs_count: u64,
}

/// An open backup session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SessionRecord {
    pub id: SessionId,
    pub repo: RepoName,
    pub started_ms: u64,
    pub lease_until_ms: u64,
}
