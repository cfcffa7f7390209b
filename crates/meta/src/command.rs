//! The commands the state machine applies and the results it returns.
//!
//! Commands are the Raft log's payload, so they are a persistent format:
//! times and ids arrive *in* the command (stamped by the proposing leader or
//! drawn by the client), never read inside apply (invariant 5).

use coffer_types::{
    ChunkId, ChunkLocation, ErasureParams, Hash32, NodeId, NodeRecord, PackId, PackRecord, RepoName, RepoRecord,
    SessionId, SessionRecord, ShardIndex, SnapshotId, SnapshotRecord, SourceRecord, TokenId, TokenRecord,
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
    /// Begins a session, or renews its lease; `session.started_ms` is the
    /// leader's time and advances the log clock (see `apply::log_clock`).
    BeginSession {
        session: SessionRecord,
    },
    EndSession {
        id: SessionId,
    },
    /// A pack whose every shard has been acknowledged, and the first
    /// `MAX_CHUNKS_PER_COMMAND` of the chunks in it. Refused unless
    /// `session` is open and unexpired at the log's time (`now_ms`, the
    /// leader's, never earlier than any time the log has carried).
    CommitPack {
        session: SessionId,
        now_ms: u64,
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
    /// A shard that failed verification (scrub, or a read); rebuild treats
    /// it as missing until `MoveShard` replaces it.
    MarkBadShard {
        pack: PackId,
        index: ShardIndex,
        node: NodeId,
        time_ms: u64,
    },
    /// Placement change after a rebuilt shard was written and verified on
    /// `to`: shard `index` moves from `from` (lost, bad, or in an over-full
    /// site) to `to`. `from == to` is a repair in place.
    MoveShard {
        pack: PackId,
        index: ShardIndex,
        from: NodeId,
        to: NodeId,
        checksum: Hash32,
        work: RepairWork,
    },
    /// Start (or undo) moving every shard off a node; with `decommission`
    /// the node leaves the cluster map once it holds none.
    SetDrain {
        node: NodeId,
        drain: bool,
        decommission: bool,
        time_ms: u64,
    },
    /// A decommissioned node that holds no placed shard leaves the map.
    RemoveNode {
        node: NodeId,
    },
    /// A storage node was found down: the start of an incident.
    OpenIncident {
        node: NodeId,
        last_seen_ms: u64,
        detected_ms: u64,
        shards_lost: u64,
    },
    /// Every shard the node held has been rebuilt elsewhere (or it came back).
    CloseIncident {
        node: NodeId,
        time_ms: u64,
    },
    /// The last step of a backup; ends the session. Refused, like
    /// `CommitPack`, unless the session is open and unexpired at `now_ms`.
    CommitSnapshot {
        session: SessionId,
        now_ms: u64,
        snapshot: SnapshotRecord,
    },
    /// Removes snapshot records of `repo` and their holds; refused as a whole
    /// if one of them is held beyond `time_ms` (see `retention`).
    Forget {
        repo: RepoName,
        snapshots: Vec<SnapshotId>,
        time_ms: u64,
    },
    /// Sets a snapshot's hold to `until_ms` (0 clears it). Written before
    /// holds carried a time; applied by the same write-once rule as
    /// `HoldUntil`, judged by the log clock alone.
    SetHold {
        repo: RepoName,
        snapshot: SnapshotId,
        until_ms: u64,
    },
    /// Marks unreferenced chunks condemned (see `gc`); at most
    /// `MAX_CHUNKS_PER_COMMAND`. `marked_from` is every snapshot of the
    /// repository the collector read reference lists from.
    Condemn {
        repo: RepoName,
        chunks: Vec<ChunkId>,
        marked_from: Vec<SnapshotId>,
        time_ms: u64,
    },
    /// Removes the index entries of chunks still condemned.
    Sweep {
        repo: RepoName,
        chunks: Vec<ChunkId>,
    },
    /// Drops the records of packs nothing points into.
    DropPacks {
        repo: RepoName,
        packs: Vec<PackId>,
    },
    /// Points the entries that are still in pack `from` at their copies in a
    /// committed pack (a garbage-collection rewrite); at most
    /// `MAX_CHUNKS_PER_COMMAND`.
    Relocate {
        repo: RepoName,
        from: PackId,
        chunks: Vec<(ChunkId, ChunkLocation)>,
    },
    /// Sets the fewest placed shards a new pack of `repo` may be committed
    /// with (`k ..= k + m`); see `ErasureParams::default_min_shards`.
    SetMinShards {
        repo: RepoName,
        min_shards: u32,
    },
    /// Replaces the key slots of `repo` if the slot set is still at
    /// `expected_version` (compare-and-set), and bumps the version. A
    /// retry of a change that already landed is `AlreadyApplied`; any other
    /// stale change is refused, so two concurrent `coffer key add`s cannot
    /// lose one.
    SetKeySlots {
        repo: RepoName,
        expected_version: u64,
        slots: Vec<Vec<u8>>,
    },
    /// Sets a snapshot's hold to `until_ms` (0 lifts it). Holds are
    /// write-once: refused if it would end a hold that still lasts at
    /// `time_ms` (the leader's, advancing the log clock) any earlier.
    HoldUntil {
        repo: RepoName,
        snapshot: SnapshotId,
        until_ms: u64,
        time_ms: u64,
    },
    /// Records a repository token (only its hash; see `auth`).
    CreateToken {
        token: TokenRecord,
    },
    /// Marks a token revoked at `time_ms`; it is refused from then on.
    RevokeToken {
        id: TokenId,
        time_ms: u64,
    },
    /// What an agent says of one of its sources, stamped with the leader's
    /// time (`time_ms`, which staleness is judged by); see `sources`.
    ReportSource {
        source: SourceRecord,
        time_ms: u64,
    },
    /// Drops a source from the registry.
    RemoveSource {
        repo: RepoName,
        name: String,
    },
    /// Records a restore, drill or plan run (`coffer_types::dr`) under
    /// `y/` (see `dr`); a repeat with the same content is `AlreadyApplied`.
    RecordDr {
        record: coffer_types::DrRecord,
    },
    /// Condemns unreferenced chunks while backups may run (see `gc`): at
    /// most `MAX_CHUNKS_PER_COMMAND`. The collector marked from
    /// `marked_from`, every snapshot that existed when the repository's
    /// commit sequence was `marked_seq`. Opens (or widens) the repository's
    /// round, which records the sessions open at `time_ms` (the leader's,
    /// advancing the log clock).
    GcCondemn {
        repo: RepoName,
        chunks: Vec<ChunkId>,
        marked_from: Vec<SnapshotId>,
        marked_seq: u64,
        time_ms: u64,
    },
    /// Ends condemnations of the repository's round: lifts `spare` (chunks a
    /// snapshot committed since the mark references) and removes the entries
    /// of `sweep` still condemned; at most `MAX_CHUNKS_PER_COMMAND` in all.
    /// Refused unless every session the round recorded has ended at
    /// `time_ms` and the collector re-marked from every snapshot committed
    /// up to `remarked_through`, which must cover the round's floor.
    GcSweep {
        repo: RepoName,
        sweep: Vec<ChunkId>,
        spare: Vec<ChunkId>,
        remarked_through: u64,
        time_ms: u64,
    },
    /// `coffer gc`: asks the leader's collector for a run.
    GcRequest {
        time_ms: u64,
    },
    /// The collector finished a run; `run.run` is the request it answers.
    GcRunDone {
        run: crate::gc::GcRunRecord,
    },
    /// `GcCondemn` whose size does not grow with the catalog: the mark is
    /// cited by its commit sequence alone. The collector marked from every
    /// snapshot that existed at a state whose commit sequence was at least
    /// `marked_seq`, `marked_count` of them; apply derives that set (every
    /// snapshot not committed after `marked_seq`) and refuses the mark if
    /// the set is larger than what was marked.
    GcCondemnAt {
        repo: RepoName,
        chunks: Vec<ChunkId>,
        marked_seq: u64,
        marked_count: u64,
        time_ms: u64,
    },
    /// The collector copied the live blobs of pack `from` (still encrypted)
    /// into `pack`, whose every shard is stored: records `pack` and points
    /// each of `chunks` whose entry still lies in `from`, with the same
    /// length, at its copy, in one entry (at most `MAX_CHUNKS_PER_COMMAND`,
    /// so a rewritten pack holds at most that many blobs). `time_ms` is the
    /// leader's, advancing the log clock.
    GcRewrite {
        repo: RepoName,
        from: PackId,
        pack: PackRecord,
        chunks: Vec<(ChunkId, ChunkLocation)>,
        time_ms: u64,
    },
    /// `CommitSnapshot` with the snapshot's coverage (issue 14), which the
    /// snapshot record's fixed layout cannot carry: applied as
    /// `CommitSnapshot`, and on success the coverage is kept under `v/`.
    CommitSnapshotCovered {
        session: SessionId,
        now_ms: u64,
        snapshot: SnapshotRecord,
        coverage: coffer_types::CoverageRecord,
    },
    /// Former copies (`kv::former_copy_key`) the sweep deleted from their
    /// nodes, or that need no deleting any more: their entries go.
    ForgetCopies {
        copies: Vec<(PackId, ShardIndex, NodeId)>,
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
            Command::MarkBadShard { .. } => "mark_bad_shard",
            Command::MoveShard { .. } => "move_shard",
            Command::OpenIncident { .. } => "open_incident",
            Command::SetDrain { .. } => "set_drain",
            Command::RemoveNode { .. } => "remove_node",
            Command::CloseIncident { .. } => "close_incident",
            Command::IndexChunks { .. } => "index_chunks",
            Command::CommitSnapshot { .. } => "commit_snapshot",
            Command::Forget { .. } => "forget",
            Command::SetHold { .. } => "set_hold",
            Command::Condemn { .. } => "condemn",
            Command::Sweep { .. } => "sweep",
            Command::DropPacks { .. } => "drop_packs",
            Command::Relocate { .. } => "relocate",
            Command::SetMinShards { .. } => "set_min_shards",
            Command::SetKeySlots { .. } => "set_key_slots",
            Command::HoldUntil { .. } => "hold_until",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::ReportSource { .. } => "report_source",
            Command::RemoveSource { .. } => "remove_source",
            Command::RecordDr { .. } => "record_dr",
            Command::CommitSnapshotCovered { .. } => "commit_snapshot",
            Command::GcCondemn { .. } => "gc_condemn",
            Command::GcSweep { .. } => "gc_sweep",
            Command::GcRequest { .. } => "gc_request",
            Command::GcRunDone { .. } => "gc_run_done",
            Command::GcCondemnAt { .. } => "gc_condemn_at",
            Command::GcRewrite { .. } => "gc_rewrite",
            Command::ForgetCopies { .. } => "forget_copies",
        }
    }
}

/// What one rebuild cost, carried into the incident it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RepairWork {
    /// The incident of the node the shard was lost with, if any.
    pub incident: Option<u64>,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_cross_site: u64,
}

/// A node being drained (and perhaps decommissioned).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub since_ms: u64,
    pub decommission: bool,
}

/// A shard reported bad.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadShardRecord {
    pub node: NodeId,
    pub time_ms: u64,
}

/// The record of one node loss: when it was last seen, when the loss was
/// detected, how long the rebuild took and what it cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    pub id: u64,
    pub node: NodeId,
    pub open: bool,
    pub last_seen_ms: u64,
    pub detected_ms: u64,
    pub rebuild_started_ms: u64,
    pub rebuild_finished_ms: u64,
    pub shards_lost: u64,
    pub shards_rebuilt: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_cross_site: u64,
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
    #[error("pack {pack}: shard {index} is not on node {node}")]
    ShardNotOnNode { pack: PackId, index: ShardIndex, node: NodeId },
    #[error("pack {pack}: node {node} already holds another shard of it")]
    NodeHoldsShard { pack: PackId, node: NodeId },
    #[error("storage node {0} was decommissioned; wipe its data directory to add the machine again")]
    Retired(NodeId),
    #[error("node {node} still holds {shards} placed shards")]
    NodeNotEmpty { node: NodeId, shards: u64 },
    #[error("pack {pack}: shard {index} checksum does not match the record")]
    ShardChecksum { pack: PackId, index: ShardIndex },
    #[error("snapshot {snapshot} is held until {until_ms} ms since the epoch")]
    SnapshotHeld { snapshot: SnapshotId, until_ms: u64 },
    #[error("snapshot {0} does not exist in this repository")]
    UnknownSnapshot(SnapshotId),
    #[error("repository {repo}: backup session {session} is open; garbage collection waits for it")]
    BackupRunning { repo: RepoName, session: SessionId },
    #[error("repository {repo}: snapshots changed since the mark; mark again")]
    MarkOutdated { repo: RepoName },
    #[error("repository {repo}: min_shards {min_shards} is outside k..=k+m for {params}")]
    BadMinShards { repo: RepoName, min_shards: u32, params: ErasureParams },
    #[error("pack {pack}: {placed} shards placed, the repository needs at least {min_shards}")]
    TooFewShards { pack: PackId, placed: usize, min_shards: usize },
    #[error("repository {repo}: backup session {session} is not open (never begun, ended, or of another repository)")]
    UnknownSession { repo: RepoName, session: SessionId },
    #[error("backup session {session}: its lease ran out at {lease_until_ms} ms, the log is at {now_ms} ms")]
    SessionExpired { session: SessionId, lease_until_ms: u64, now_ms: u64 },
    #[error("repository {repo}: the key slots changed (version {current}, this change was made from version {expected}); read them again and retry")]
    KeySlotsChanged { repo: RepoName, expected: u64, current: u64 },
    #[error("repository {0}: refusing to remove the last key slot")]
    LastKeySlot(RepoName),
    #[error("snapshot {snapshot} is held until {until_ms} ms since the epoch; a hold can be extended, never shortened or lifted before it ends (asked for {requested_ms})")]
    HoldIsWriteOnce { snapshot: SnapshotId, until_ms: u64, requested_ms: u64 },
    #[error("token {0} already exists")]
    TokenExists(TokenId),
    #[error("token {0} does not exist")]
    UnknownToken(TokenId),
    #[error("disaster-recovery record {0:016x} already exists with different content")]
    DrRecordConflict(u64),
    #[error("repository {repo}: backup session {session} was open when chunks were condemned and still is; the sweep waits for it to end")]
    CondemnedUnderSession { repo: RepoName, session: SessionId },
    #[error(
        "repository {repo}: the re-mark reached snapshot commit {remarked_through}, the sweep needs at least {needed}"
    )]
    RemarkBehind { repo: RepoName, remarked_through: u64, needed: u64 },
    #[error("repository {repo}: commit sequence {cited} is ahead of the repository's {current}")]
    CommitSeqAhead { repo: RepoName, cited: u64, current: u64 },
    #[error("repository {repo}: no garbage-collection round is open")]
    NoGcRound { repo: RepoName },
    #[error("repository {repo}: a garbage-collection round is open; this older command would bypass its rules")]
    GcRoundOpen { repo: RepoName },
    #[error("repository {repo}: {found} snapshots predate the mark at commit {marked_seq}, but only {marked} were marked; mark again")]
    MarkIncomplete { repo: RepoName, marked_seq: u64, marked: u64, found: u64 },
    #[error("pack {pack} is rewritten from pack {from}, which is not a data pack of repository {repo}")]
    RewriteSource { repo: RepoName, from: PackId, pack: PackId },
    #[error("{got} chunk entries in one command, at most {max} allowed")]
    TooManyChunks { got: usize, max: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    #[default]
    Ok,
    /// The command was a repeat of one already applied (idempotent retry).
    AlreadyApplied,
    Rejected(Rejection),
}
