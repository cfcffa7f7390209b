//! Garbage collection in the state machine: condemning unreferenced chunks,
//! sweeping them from the index, and dropping packs nothing points into.
//!
//! A condemned chunk keeps its index entry and gains a marker under
//! `x/<repo> 0x00 <chunk id>` holding the condemnation time. Lookups treat it
//! as absent, so new backups upload it again, and a commit that indexes it
//! anew revives it: the new location replaces the old and the marker goes.
//!
//! The invariant kept (no chunk that a committed, or later committed,
//! snapshot references is ever deleted) rests on checks made here,
//! deterministically, from the state and the command alone, while backups
//! keep running:
//! - Every snapshot commit takes the next number of its repository's commit
//!   sequence and is logged under it (`gl/`, snapshot and reference-list
//!   pack), even if the snapshot is forgotten later, until a round that
//!   re-marked past it ends. Reference-list packs of logged commits are
//!   never dropped, so the collector can always read what it must re-mark.
//! - `GcCondemn` cites the sequence its mark was taken at; it is refused
//!   unless every snapshot of the repository is one it marked from or one
//!   committed after that sequence. `GcCondemnAt`, which the collector
//!   sends now, carries only the sequence and how many snapshots were
//!   marked, so its size does not grow with the catalog: the marked set is
//!   derived (every snapshot not logged after the sequence existed when the
//!   collector read the snapshots) and refused if larger than the count. It opens (or widens) the repository's
//!   *round*: the earliest mark, every session open at any of its
//!   condemnations, and a floor, the sequence at its latest condemnation.
//!   Every lookup afterwards, a recorded session's too, finds condemned
//!   chunks absent, so backups upload them again; their pack commit
//!   revives them.
//! - A commit by a session the round recorded raises the floor to its own
//!   number: such a session may have deduplicated against a chunk before it
//!   was condemned.
//! - `GcSweep` is refused until every recorded session has ended (committed,
//!   ended, or lapsed on the log clock, so it can never commit again), and
//!   unless it cites a re-mark that reached the floor. Chunks the re-marked
//!   snapshots reference are spared (their marker lifted), the rest are
//!   removed. A snapshot committed after the floor comes from a session
//!   begun after every condemnation, which either looked its chunks up
//!   (condemned ones were absent, so it uploaded and revived them) or took
//!   them from a parent that is itself marked, re-marked or, inductively,
//!   of such a session.
//! - `DropPacks` drops only packs that no index entry points into (a
//!   condemned entry too), that no snapshot or logged commit names as its
//!   reference list, and that were not committed by a session still open
//!   (whose reference list or further `IndexChunks` may still point into
//!   it).
//!
//! - `GcRewrite` records a copy of a pack's live blobs, wholly stored,
//!   and moves to it only the entries still in the old pack with the same
//!   length, in one step; the old pack then goes only by `DropPacks`.
//!
//! The older `Condemn` (only with no session open and a current mark) and
//! `Sweep` commands are still applied for logs that carry them; `Sweep` is
//! refused while a round is open, as it would bypass the round's rules.

use std::collections::HashSet;

use coffer_types::{
    ChunkId, ChunkLocation, PackId, PackRecord, RepoName, SessionId, SessionRecord, SnapshotId, SnapshotRecord,
};
use serde::{Deserialize, Serialize};

use crate::command::{CommandResult, Rejection};
use crate::error::MetaError;
use crate::kv::{self, Txn};

fn condemn_prefix(repo: &RepoName) -> Vec<u8> {
    [b"x/".as_slice(), repo.as_str().as_bytes(), &[0]].concat()
}

fn condemn_key(repo: &RepoName, chunk: &ChunkId) -> Vec<u8> {
    [condemn_prefix(repo).as_slice(), chunk.as_bytes()].concat()
}

/// Whether `chunk` is condemned (so absent for deduplication).
pub(crate) fn is_condemned(tree: &crate::store::Tree, repo: &RepoName, chunk: &ChunkId) -> Result<bool, MetaError> {
    Ok(tree.contains_key(condemn_key(repo, chunk))?)
}

/// If `chunk` is condemned, points it at `loc` (a fresh copy) and lifts the
/// condemnation; returns whether it did.
pub(crate) fn revive(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    chunk: &ChunkId,
    loc: &ChunkLocation,
) -> Result<bool, MetaError> {
    let key = condemn_key(repo, chunk);
    if !txn.contains(&key)? {
        return Ok(false);
    }
    txn.remove(key);
    txn.put(kv::chunk_key(repo, chunk), loc)?;
    Ok(true)
}

/// If `chunk`'s entry points into a pack that has no record, points it at
/// `loc` instead; returns whether it did.
pub(crate) fn replace_unplaced(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    chunk: &ChunkId,
    loc: &ChunkLocation,
) -> Result<bool, MetaError> {
    let key = kv::chunk_key(repo, chunk);
    let Some(old) = txn.get::<ChunkLocation>("chunk", &key)? else { return Ok(false) };
    if old.pack == loc.pack || txn.contains(&kv::pack_key(&old.pack))? {
        return Ok(false);
    }
    txn.put(key, loc)?;
    Ok(true)
}

/// `repo`'s snapshots, from the index of snapshots by repository.
fn snapshots_of(txn: &Txn<'_>, repo: &RepoName) -> Result<Vec<SnapshotRecord>, MetaError> {
    let mut out = Vec::new();
    for id in crate::index::snapshots_of(txn, repo)? {
        if let Some(s) = txn.get::<SnapshotRecord>("snapshot", &kv::snapshot_key(&id))? {
            out.push(s);
        }
    }
    Ok(out)
}

pub(crate) fn condemn(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    chunks: &[ChunkId],
    marked_from: &[SnapshotId],
    time_ms: u64,
) -> Result<CommandResult, MetaError> {
    for v in txn.scan_prefix(b"e/")?.values() {
        let s: SessionRecord = kv::decode("session", v)?;
        if s.repo == *repo && s.lease_until_ms > time_ms {
            return Ok(CommandResult::Rejected(Rejection::BackupRunning { repo: repo.clone(), session: s.id }));
        }
    }
    let now: HashSet<SnapshotId> = snapshots_of(txn, repo)?.iter().map(|s| s.id).collect();
    let marked: HashSet<SnapshotId> = marked_from.iter().copied().collect();
    if now != marked {
        return Ok(CommandResult::Rejected(Rejection::MarkOutdated { repo: repo.clone() }));
    }
    let mut added = 0;
    for c in chunks {
        let key = condemn_key(repo, c);
        if txn.contains(&kv::chunk_key(repo, c))? && !txn.contains(&key)? {
            txn.put(key, &time_ms)?;
            added += 1;
        }
    }
    Ok(if added == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
}

pub(crate) fn sweep(txn: &mut Txn<'_>, repo: &RepoName, chunks: &[ChunkId]) -> Result<CommandResult, MetaError> {
    if txn.contains(&kv::gc_round_key(repo))? {
        return Ok(CommandResult::Rejected(Rejection::GcRoundOpen { repo: repo.clone() }));
    }
    let removed = sweep_condemned(txn, repo, chunks)?;
    Ok(if removed == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
}

/// Removes the index entries of those of `chunks` that are still
/// condemned, with their markers, and counts them out; returns how many.
fn sweep_condemned(txn: &mut Txn<'_>, repo: &RepoName, chunks: &[ChunkId]) -> Result<i64, MetaError> {
    let mut removed = 0i64;
    for c in chunks {
        let key = condemn_key(repo, c);
        if txn.contains(&key)? {
            txn.remove(key);
            txn.remove(kv::chunk_key(repo, c));
            removed += 1;
        }
    }
    txn.add_count("chunks", -removed)?;
    Ok(removed)
}

pub(crate) fn relocate(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    from: PackId,
    chunks: &[(ChunkId, ChunkLocation)],
) -> Result<CommandResult, MetaError> {
    let mut moved = 0;
    for (chunk, loc) in chunks {
        let Some(target) = txn.get::<PackRecord>("pack", &kv::pack_key(&loc.pack))? else {
            return Ok(CommandResult::Rejected(Rejection::UnknownPack(loc.pack)));
        };
        if target.repo != *repo {
            return Ok(CommandResult::Rejected(Rejection::WrongRepo {
                pack: loc.pack,
                repo: target.repo,
                expected: repo.clone(),
            }));
        }
        if loc.offset.checked_add(loc.len as u64).is_none_or(|end| end > target.pack_len) {
            return Ok(CommandResult::Rejected(Rejection::ChunkOutOfRange {
                chunk: *chunk,
                pack: loc.pack,
                pack_len: target.pack_len,
            }));
        }
        let key = kv::chunk_key(repo, chunk);
        match txn.get::<ChunkLocation>("chunk", &key)? {
            Some(current) if current.pack == from => {
                txn.put(key, loc)?;
                moved += 1;
            }
            _ => {}
        }
    }
    Ok(if moved == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
}

/// `GcRewrite`: records the copy of `from`'s live blobs and moves the
/// entries that still lie in `from` to it, in one step, so no entry ever
/// points at a pack that is not wholly stored. The old pack is left to
/// `DropPacks`, which drops it once nothing points into it.
pub(crate) fn rewrite(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    from: PackId,
    pack: PackRecord,
    chunks: &[(ChunkId, ChunkLocation)],
) -> Result<CommandResult, MetaError> {
    let Some(record) = txn.get::<coffer_types::RepoRecord>("repo", &kv::repo_key(repo))? else {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(repo.clone())));
    };
    let key = kv::pack_key(&pack.id);
    if let Some(existing) = txn.get::<PackRecord>("pack", &key)? {
        return Ok(if existing == pack {
            CommandResult::AlreadyApplied
        } else {
            CommandResult::Rejected(Rejection::PackConflict(pack.id))
        });
    }
    let source = txn.get::<PackRecord>("pack", &kv::pack_key(&from))?;
    if pack.repo != *repo
        || pack.kind != coffer_types::PackKind::Data
        || source.is_none_or(|s| s.repo != *repo || s.kind != coffer_types::PackKind::Data)
    {
        return Ok(CommandResult::Rejected(Rejection::RewriteSource { repo: repo.clone(), from, pack: pack.id }));
    }
    if chunks.len() > crate::command::MAX_CHUNKS_PER_COMMAND {
        return Ok(CommandResult::Rejected(Rejection::TooManyChunks {
            got: chunks.len(),
            max: crate::command::MAX_CHUNKS_PER_COMMAND,
        }));
    }
    if let Some(why) = crate::apply::placement_refusal(txn, &record, &pack)? {
        return Ok(CommandResult::Rejected(why));
    }
    if let Some(why) = crate::apply::check_chunks(&pack, chunks) {
        return Ok(CommandResult::Rejected(why));
    }
    // Only entries still in `from` move: one swept, revived elsewhere or
    // condemned since the copy was made keeps what it has (a condemned
    // entry stays with the old pack, which then waits for the sweep).
    for (chunk, loc) in chunks {
        let ckey = kv::chunk_key(repo, chunk);
        let Some(current) = txn.get::<ChunkLocation>("chunk", &ckey)? else { continue };
        if current.pack == from && current.len == loc.len && !txn.contains(&condemn_key(repo, chunk))? {
            txn.put(ckey, loc)?;
        }
    }
    txn.put(key, &pack)?;
    txn.add_count("packs", 1)?;
    Ok(CommandResult::Ok)
}

pub(crate) fn drop_packs(txn: &mut Txn<'_>, repo: &RepoName, packs: &[PackId]) -> Result<CommandResult, MetaError> {
    // A pack is live while a chunk entry or a snapshot points at it (the
    // index counts those, so this costs the packs named, not the catalog),
    // or while the commit log of a pending collection round names it.
    let logged: HashSet<PackId> = commit_log(txn, repo, 0)?.into_iter().map(|(_, e)| e.refs_pack).collect();
    let now = txn.get::<u64>("log clock", kv::KEY_CLOCK)?.unwrap_or(0);
    let mut dropped = 0i64;
    for p in packs {
        let key = kv::pack_key(p);
        let Some(rec) = txn.get::<PackRecord>("pack", &key)? else { continue };
        if rec.repo != *repo || logged.contains(p) || crate::index::referenced(txn, p)? {
            continue;
        }
        if let Some(session) = txn.get::<SessionId>("pack session", &kv::pack_session_key(p))? {
            if session_open(txn, &session, now)? {
                continue;
            }
        }
        txn.remove(kv::pack_session_key(p));
        txn.remove(key);
        // Copies of a dropped pack are the storage nodes' orphans to collect.
        for former in txn.scan_prefix(&kv::former_copies_prefix(p))?.into_keys() {
            txn.remove(former);
        }
        dropped += 1;
    }
    txn.add_count("packs", -dropped)?;
    Ok(if dropped == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
}

/// One snapshot commit, as the commit log keeps it (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLogEntry {
    pub snapshot: SnapshotId,
    pub refs_pack: PackId,
}

/// A repository's open garbage-collection round (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRound {
    /// The commit sequence the earliest mark of the round was taken at.
    pub marked_seq: u64,
    /// Every session open at any condemnation of the round.
    pub sessions: Vec<SessionId>,
    /// The sequence a sweep's re-mark must reach.
    pub floor: u64,
    /// The log time of the round's first condemnation.
    pub started_ms: u64,
}

/// What one collector run did, in the catalog so that any node can report
/// it and `coffer gc --wait` can wait for it across leader changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GcRunRecord {
    /// The request (`GcState::requested`) the run answers.
    pub run: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// The metadata node that ran it.
    pub by: u64,
    pub snapshots: u64,
    pub chunks_indexed: u64,
    pub chunks_live: u64,
    pub chunks_condemned: u64,
    pub chunks_swept: u64,
    pub chunks_spared: u64,
    pub packs_dropped: u64,
    pub bytes_freed: u64,
    pub shards_not_deleted: u64,
    pub packs_partly_dead: u64,
    pub packs_rewritten: u64,
    pub bytes_written: u64,
    pub marks: u32,
    /// Repositories whose round waits for sessions that were open at
    /// condemnation (their sweep comes in a later run).
    pub repos_waiting: u64,
    /// Why a repository could not be collected, if one could not.
    pub error: String,
}

/// The collector's state in the catalog: the runs asked for and the last
/// one finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GcState {
    pub requested: u64,
    pub requested_ms: u64,
    pub last: Option<GcRunRecord>,
}

pub fn gc_state(tree: &crate::store::Tree) -> Result<GcState, MetaError> {
    Ok(kv::get::<GcState>(tree, "gc state", kv::KEY_GC)?.unwrap_or_default())
}

pub(crate) fn request_run(txn: &mut Txn<'_>, time_ms: u64) -> Result<CommandResult, MetaError> {
    let mut state = txn.get::<GcState>("gc state", kv::KEY_GC)?.unwrap_or_default();
    state.requested += 1;
    state.requested_ms = time_ms;
    txn.put(kv::KEY_GC.to_vec(), &state)?;
    Ok(CommandResult::Ok)
}

pub(crate) fn run_done(txn: &mut Txn<'_>, run: GcRunRecord) -> Result<CommandResult, MetaError> {
    let mut state = txn.get::<GcState>("gc state", kv::KEY_GC)?.unwrap_or_default();
    if state.last.as_ref().is_some_and(|l| *l == run) {
        return Ok(CommandResult::AlreadyApplied);
    }
    // A run never answers a request made after it: the run number is what
    // it read when it started, and it cannot exceed what was asked.
    let mut run = run;
    run.run = run.run.min(state.requested);
    if state.last.as_ref().is_some_and(|l| l.run > run.run) {
        return Ok(CommandResult::AlreadyApplied);
    }
    state.last = Some(run);
    txn.put(kv::KEY_GC.to_vec(), &state)?;
    Ok(CommandResult::Ok)
}

/// The repository's snapshot commit sequence: how many snapshots it has
/// committed since sequences were kept.
pub fn commit_seq(tree: &crate::store::Tree, repo: &RepoName) -> Result<u64, MetaError> {
    Ok(kv::get::<u64>(tree, "commit sequence", &kv::commit_seq_key(repo))?.unwrap_or(0))
}

/// The repository's open round, if any.
pub fn round_of(tree: &crate::store::Tree, repo: &RepoName) -> Result<Option<GcRound>, MetaError> {
    kv::get(tree, "gc round", &kv::gc_round_key(repo))
}

/// Logged commits of `repo` after sequence `after`, in order.
pub(crate) fn commit_log(txn: &Txn<'_>, repo: &RepoName, after: u64) -> Result<Vec<(u64, CommitLogEntry)>, MetaError> {
    let prefix = kv::commit_log_prefix(repo);
    let mut out = Vec::new();
    for (k, v) in txn.scan_prefix(&prefix)? {
        let Some(seq) = k.get(prefix.len()..).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes) else {
            return Err(MetaError::Codec { what: "commit log key", reason: "not a sequence number".into() });
        };
        if seq > after {
            out.push((seq, kv::decode("commit log", &v)?));
        }
    }
    Ok(out)
}

/// The same, read from the store (for the collector).
pub fn logged_commits(
    tree: &crate::store::Tree,
    repo: &RepoName,
    after: u64,
) -> Result<Vec<(u64, CommitLogEntry)>, MetaError> {
    commit_log(&Txn::new(tree), repo, after)
}

/// Every chunk of `repo` that is condemned now.
pub fn condemned_chunks(tree: &crate::store::Tree, repo: &RepoName) -> Result<Vec<ChunkId>, MetaError> {
    let prefix = condemn_prefix(repo);
    let mut out = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (k, _) = item?;
        let raw = k.get(prefix.len()..).unwrap_or_default();
        // `x/` also holds retired node ids; only full chunk-id keys count.
        if let Ok(id) = ChunkId::from_slice(raw) {
            out.push(id);
        }
    }
    Ok(out)
}

fn session_open(txn: &Txn<'_>, id: &SessionId, now: u64) -> Result<bool, MetaError> {
    Ok(txn.get::<SessionRecord>("session", &kv::session_key(id))?.is_some_and(|s| s.lease_until_ms > now))
}

/// Called by `CommitSnapshot` once the snapshot is in: numbers and logs the
/// commit, and raises the round's floor if the session was recorded by it.
pub(crate) fn on_snapshot_committed(
    txn: &mut Txn<'_>,
    session: &SessionId,
    snapshot: &SnapshotRecord,
) -> Result<(), MetaError> {
    let repo = &snapshot.repo;
    let seq_key = kv::commit_seq_key(repo);
    let seq = txn.get::<u64>("commit sequence", &seq_key)?.unwrap_or(0) + 1;
    txn.put(seq_key, &seq)?;
    txn.put(kv::commit_log_key(repo, seq), &CommitLogEntry { snapshot: snapshot.id, refs_pack: snapshot.refs_pack })?;
    let round_key = kv::gc_round_key(repo);
    if let Some(mut round) = txn.get::<GcRound>("gc round", &round_key)? {
        if round.sessions.contains(session) {
            round.floor = round.floor.max(seq);
            txn.put(round_key, &round)?;
        }
    }
    Ok(())
}

/// The repository's current commit sequence, or the refusal of a mark
/// that cites a sequence past it (a mark from a state this one never had).
fn commit_seq_at_least(txn: &Txn<'_>, repo: &RepoName, marked_seq: u64) -> Result<Result<u64, Rejection>, MetaError> {
    let current = txn.get::<u64>("commit sequence", &kv::commit_seq_key(repo))?.unwrap_or(0);
    Ok(if marked_seq > current {
        Err(Rejection::CommitSeqAhead { repo: repo.clone(), cited: marked_seq, current })
    } else {
        Ok(current)
    })
}

pub(crate) fn gc_condemn(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    chunks: &[ChunkId],
    marked_from: &[SnapshotId],
    marked_seq: u64,
    now: u64,
) -> Result<CommandResult, MetaError> {
    let current = match commit_seq_at_least(txn, repo, marked_seq)? {
        Ok(current) => current,
        Err(why) => return Ok(CommandResult::Rejected(why)),
    };
    // Every snapshot is either marked or committed after the mark (so
    // re-marked before any sweep); the collector may have marked more.
    let after: HashSet<SnapshotId> = commit_log(txn, repo, marked_seq)?.into_iter().map(|(_, e)| e.snapshot).collect();
    let marked: HashSet<SnapshotId> = marked_from.iter().copied().collect();
    if snapshots_of(txn, repo)?.iter().any(|s| !marked.contains(&s.id) && !after.contains(&s.id)) {
        return Ok(CommandResult::Rejected(Rejection::MarkOutdated { repo: repo.clone() }));
    }
    open_round(txn, repo, chunks, marked_seq, current, now)
}

/// `GcCondemn` citing the mark by its commit sequence alone (see
/// `Command::GcCondemnAt`): the marked set is derived, not carried.
pub(crate) fn gc_condemn_at(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    chunks: &[ChunkId],
    marked_seq: u64,
    marked_count: u64,
    now: u64,
) -> Result<CommandResult, MetaError> {
    let current = match commit_seq_at_least(txn, repo, marked_seq)? {
        Ok(current) => current,
        Err(why) => return Ok(CommandResult::Rejected(why)),
    };
    // A snapshot not committed after the mark existed when the collector
    // read the snapshots (it read the sequence first, and a snapshot once
    // forgotten never comes back), so the mark covered it. The derived set
    // can only shrink by forgets since; one larger than what was marked
    // means a mark taken from an older state, which must not condemn.
    let after: HashSet<SnapshotId> = commit_log(txn, repo, marked_seq)?.into_iter().map(|(_, e)| e.snapshot).collect();
    let found = crate::index::snapshots_of(txn, repo)?.iter().filter(|s| !after.contains(s)).count() as u64;
    if found > marked_count {
        return Ok(CommandResult::Rejected(Rejection::MarkIncomplete {
            repo: repo.clone(),
            marked_seq,
            marked: marked_count,
            found,
        }));
    }
    open_round(txn, repo, chunks, marked_seq, current, now)
}

/// Opens or widens the repository's round and condemns `chunks` (those
/// still indexed), once the mark has been checked.
fn open_round(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    chunks: &[ChunkId],
    marked_seq: u64,
    current: u64,
    now: u64,
) -> Result<CommandResult, MetaError> {
    let round_key = kv::gc_round_key(repo);
    let before = txn.get::<GcRound>("gc round", &round_key)?;
    let mut round = before.clone().unwrap_or(GcRound { marked_seq, sessions: Vec::new(), floor: 0, started_ms: now });
    round.marked_seq = round.marked_seq.min(marked_seq);
    round.floor = round.floor.max(current);
    for v in txn.scan_prefix(b"e/")?.values() {
        let s: SessionRecord = kv::decode("session", v)?;
        if s.repo == *repo && s.lease_until_ms > now && !round.sessions.contains(&s.id) {
            round.sessions.push(s.id);
        }
    }
    let mut added = 0;
    for c in chunks {
        let key = condemn_key(repo, c);
        if txn.contains(&kv::chunk_key(repo, c))? && !txn.contains(&key)? {
            txn.put(key, &now)?;
            added += 1;
        }
    }
    if added == 0 && before.as_ref() == Some(&round) {
        return Ok(CommandResult::AlreadyApplied);
    }
    txn.put(round_key, &round)?;
    Ok(CommandResult::Ok)
}

pub(crate) fn gc_sweep(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    sweep: &[ChunkId],
    spare: &[ChunkId],
    remarked_through: u64,
    now: u64,
) -> Result<CommandResult, MetaError> {
    let round_key = kv::gc_round_key(repo);
    let Some(round) = txn.get::<GcRound>("gc round", &round_key)? else {
        // A retry of the sweep that ended the round finds nothing left to do.
        let pending = sweep.iter().chain(spare).any(|c| is_condemned_in(txn, repo, c).unwrap_or(true));
        return Ok(if pending {
            CommandResult::Rejected(Rejection::NoGcRound { repo: repo.clone() })
        } else {
            CommandResult::AlreadyApplied
        });
    };
    for s in &round.sessions {
        if session_open(txn, s, now)? {
            return Ok(CommandResult::Rejected(Rejection::CondemnedUnderSession { repo: repo.clone(), session: *s }));
        }
    }
    let current = txn.get::<u64>("commit sequence", &kv::commit_seq_key(repo))?.unwrap_or(0);
    if remarked_through > current {
        return Ok(CommandResult::Rejected(Rejection::CommitSeqAhead {
            repo: repo.clone(),
            cited: remarked_through,
            current,
        }));
    }
    if remarked_through < round.floor {
        return Ok(CommandResult::Rejected(Rejection::RemarkBehind {
            repo: repo.clone(),
            remarked_through,
            needed: round.floor,
        }));
    }
    let mut changed = 0i64;
    for c in spare {
        let key = condemn_key(repo, c);
        if txn.contains(&key)? {
            txn.remove(key);
            changed += 1;
        }
    }
    let removed = sweep_condemned(txn, repo, sweep)?;
    // The round ends with its last condemned chunk; the commits it re-marked
    // need not be logged any more (a later round marks what still exists).
    if !any_condemned(txn, repo)? {
        txn.remove(round_key);
        for (seq, _) in commit_log(txn, repo, 0)? {
            if seq > remarked_through {
                break;
            }
            txn.remove(kv::commit_log_key(repo, seq));
        }
        changed += 1;
    }
    Ok(if changed + removed == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
}

fn is_condemned_in(txn: &Txn<'_>, repo: &RepoName, chunk: &ChunkId) -> Result<bool, MetaError> {
    txn.contains(&condemn_key(repo, chunk))
}

fn any_condemned(txn: &Txn<'_>, repo: &RepoName) -> Result<bool, MetaError> {
    // Keys under the prefix are chunk markers (a retired node id key is 10
    // bytes, shorter than prefix plus id); any key counts, conservatively.
    txn.any_under(&condemn_prefix(repo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::command::Command;
    use crate::test_util::{run, snapshot, tree};
    use coffer_types::*;

    #[test]
    fn condemn_needs_a_fresh_mark_and_no_session_and_commits_revive() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let (dead, live) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let old = PackId([7; 16]);
        let loc = ChunkLocation { pack: old, offset: 0, len: 10 };
        for c in [dead, live] {
            crate::test_util::put(&t, kv::chunk_key(&repo, &c), &loc);
        }
        let rec = PackRecord {
            id: old,
            repo: repo.clone(),
            kind: PackKind::Data,
            params: ErasureParams::new(2, 1).unwrap(),
            pack_len: 100,
            shard_len: 50,
            shards: vec![],
        };
        crate::test_util::put(&t, kv::pack_key(&old), &rec);

        // A mark that missed a snapshot is refused.
        let stale = Command::Condemn {
            repo: repo.clone(),
            chunks: vec![dead],
            marked_from: vec![SnapshotId([9; 16])],
            time_ms: 10,
        };
        assert!(matches!(run(&t, stale), CommandResult::Rejected(Rejection::MarkOutdated { .. })));
        // An open session blocks condemnation; an expired one does not.
        let session = SessionRecord { id: SessionId([3; 16]), repo: repo.clone(), started_ms: 1, lease_until_ms: 20 };
        crate::test_util::put(&t, kv::session_key(&session.id), &session);
        let cmd = |time_ms| Command::Condemn { repo: repo.clone(), chunks: vec![dead], marked_from: vec![], time_ms };
        assert!(matches!(run(&t, cmd(10)), CommandResult::Rejected(Rejection::BackupRunning { .. })));
        assert_eq!(run(&t, cmd(20)), CommandResult::Ok);
        assert!(is_condemned(&t, &repo, &dead).unwrap());

        // Sweep removes the condemned entry only; the pack still holds `live`.
        assert_eq!(run(&t, Command::Sweep { repo: repo.clone(), chunks: vec![dead, live] }), CommandResult::Ok);
        assert!(!t.contains_key(kv::chunk_key(&repo, &dead)).unwrap());
        assert!(t.contains_key(kv::chunk_key(&repo, &live)).unwrap());
        let drop = Command::DropPacks { repo: repo.clone(), packs: vec![old] };
        assert_eq!(run(&t, drop.clone()), CommandResult::AlreadyApplied);
        assert!(t.contains_key(kv::pack_key(&old)).unwrap());

        // A condemned chunk indexed again moves to its new copy and is no
        // longer condemned, so it survives the sweep.
        assert_eq!(run(&t, cmd(30)), CommandResult::AlreadyApplied);
        let mut txn = Txn::new(&t);
        let condemn_live =
            Command::Condemn { repo: repo.clone(), chunks: vec![live], marked_from: vec![], time_ms: 30 };
        assert_eq!(apply(&mut txn, condemn_live).unwrap(), CommandResult::Ok);
        let fresh = ChunkLocation { pack: PackId([8; 16]), offset: 0, len: 10 };
        assert!(revive(&mut txn, &repo, &live, &fresh).unwrap());
        txn.commit().unwrap();
        assert_eq!(run(&t, Command::Sweep { repo: repo.clone(), chunks: vec![live] }), CommandResult::AlreadyApplied);
        let got: ChunkLocation = kv::get(&t, "chunk", &kv::chunk_key(&repo, &live)).unwrap().unwrap();
        assert_eq!(got, fresh);
        // Nothing points into the old pack now: it can be dropped.
        assert_eq!(run(&t, drop), CommandResult::Ok);
        assert!(!t.contains_key(kv::pack_key(&old)).unwrap());
    }

    #[test]
    fn an_entry_into_a_pack_without_record_is_replaced_by_a_new_copy() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let chunk = ChunkId([1; 32]);
        let gone = ChunkLocation { pack: PackId([7; 16]), offset: 0, len: 10 };
        crate::test_util::put(&t, kv::chunk_key(&repo, &chunk), &gone);
        let fresh = ChunkLocation { pack: PackId([8; 16]), offset: 5, len: 10 };
        let mut txn = Txn::new(&t);
        assert!(replace_unplaced(&mut txn, &repo, &chunk, &fresh).unwrap());
        txn.commit().unwrap();
        let got: ChunkLocation = kv::get(&t, "chunk", &kv::chunk_key(&repo, &chunk)).unwrap().unwrap();
        assert_eq!(got, fresh);
        // With the pack recorded, the first location stays.
        t.insert(kv::pack_key(&fresh.pack), b"x").unwrap();
        let mut txn = Txn::new(&t);
        assert!(!replace_unplaced(&mut txn, &repo, &chunk, &gone).unwrap());
    }

    /// A repository "r" (2+1) on nodes 1..=3, with its world built by
    /// commands as a cluster would build it.
    struct World {
        t: crate::store::Tree,
        repo: RepoName,
        nodes: Vec<NodeId>,
        clock: u64,
    }

    impl World {
        fn new() -> Self {
            let t = tree();
            let repo = RepoName::new("r").unwrap();
            let record = RepoRecord {
                name: repo.clone(),
                params: ErasureParams::new(2, 1).unwrap(),
                key_slots: vec![vec![1]],
                created_ms: 1,
            };
            assert_eq!(run(&t, Command::CreateRepo { repo: record }), CommandResult::Ok);
            let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
            for n in &nodes {
                let node = NodeRecord {
                    id: *n,
                    site: SiteId::new("a").unwrap(),
                    addr: "x".into(),
                    capacity_bytes: 1,
                    used_bytes: 0,
                    last_heartbeat_ms: 0,
                };
                run(&t, Command::RegisterNode { node });
            }
            Self { t, repo, nodes, clock: 10 }
        }

        fn tick(&mut self) -> u64 {
            self.clock += 1;
            self.clock
        }

        fn begin(&mut self, id: u8, lease_ms: u64) -> SessionId {
            let now = self.tick();
            let session = SessionRecord {
                id: SessionId([id; 16]),
                repo: self.repo.clone(),
                started_ms: now,
                lease_until_ms: now + lease_ms,
            };
            assert_eq!(run(&self.t, Command::BeginSession { session }), CommandResult::Ok);
            SessionId([id; 16])
        }

        fn pack(&self, id: u8, kind: PackKind) -> PackRecord {
            PackRecord {
                id: PackId([id; 16]),
                repo: self.repo.clone(),
                kind,
                params: ErasureParams::new(2, 1).unwrap(),
                pack_len: 1000,
                shard_len: 500,
                shards: self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ShardRecord { index: ShardIndex(i as u8), node: *n, checksum: Hash32([0; 32]) })
                    .collect(),
            }
        }

        /// Commits data pack `pack` holding `chunks` (10 bytes each) in `session`.
        fn store(&mut self, session: SessionId, pack: u8, chunks: &[u8]) {
            let now = self.tick();
            let entries = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (ChunkId([*c; 32]), ChunkLocation { pack: PackId([pack; 16]), offset: i as u64 * 10, len: 10 })
                })
                .collect();
            let cmd =
                Command::CommitPack { session, now_ms: now, pack: self.pack(pack, PackKind::Data), chunks: entries };
            assert_eq!(run(&self.t, cmd), CommandResult::Ok);
        }

        /// Commits snapshot `id` in `session`, with root chunk `root` (already
        /// stored) and reference list pack `refs`; returns its commit number.
        fn commit(&mut self, session: SessionId, id: u8, root: u8, refs: u8) -> u64 {
            let now = self.tick();
            let cmd =
                Command::CommitPack { session, now_ms: now, pack: self.pack(refs, PackKind::Refs), chunks: vec![] };
            assert_eq!(run(&self.t, cmd), CommandResult::Ok);
            let mut snap = snapshot(id, self.repo.clone());
            snap.root = ChunkId([root; 32]);
            snap.refs_pack = PackId([refs; 16]);
            let now = self.tick();
            assert_eq!(
                run(&self.t, Command::CommitSnapshot { session, now_ms: now, snapshot: snap }),
                CommandResult::Ok
            );
            commit_seq(&self.t, &self.repo).unwrap()
        }

        fn condemn(&mut self, chunks: &[u8], marked_from: &[u8], marked_seq: u64) -> CommandResult {
            let time_ms = self.tick();
            run(
                &self.t,
                Command::GcCondemn {
                    repo: self.repo.clone(),
                    chunks: chunks.iter().map(|c| ChunkId([*c; 32])).collect(),
                    marked_from: marked_from.iter().map(|s| SnapshotId([*s; 16])).collect(),
                    marked_seq,
                    time_ms,
                },
            )
        }

        fn sweep(&mut self, sweep: &[u8], spare: &[u8], remarked_through: u64) -> CommandResult {
            let time_ms = self.tick();
            run(
                &self.t,
                Command::GcSweep {
                    repo: self.repo.clone(),
                    sweep: sweep.iter().map(|c| ChunkId([*c; 32])).collect(),
                    spare: spare.iter().map(|c| ChunkId([*c; 32])).collect(),
                    remarked_through,
                    time_ms,
                },
            )
        }

        fn indexed(&self, chunk: u8) -> bool {
            self.t.contains_key(kv::chunk_key(&self.repo, &ChunkId([chunk; 32]))).unwrap()
        }

        fn condemned(&self, chunk: u8) -> bool {
            is_condemned(&self.t, &self.repo, &ChunkId([chunk; 32])).unwrap()
        }
    }

    #[test]
    fn condemnation_runs_beside_an_open_session_and_its_sweep_waits_for_it() {
        let mut w = World::new();
        // Snapshot 1 references chunk 1 (its root); chunk 2 is garbage.
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2]);
        let seq1 = w.commit(s0, 1, 1, 60);
        assert_eq!(seq1, 1);
        // Session A is open and deduplicated against chunk 2 before the
        // condemnation (so it did not upload it again).
        let a = w.begin(2, 1_000);
        w.store(a, 51, &[3]);
        // Condemnation is not refused by A (the old rule refused it).
        assert_eq!(w.condemn(&[2, 3], &[1], seq1), CommandResult::Ok);
        assert!(w.condemned(2) && w.condemned(3));
        let round = round_of(&w.t, &w.repo).unwrap().unwrap();
        assert_eq!(round.sessions, vec![a]);
        // Sessions begun afterwards do not hold the sweep back ...
        let b = w.begin(3, 100_000);
        // ... but A does, whatever the re-mark claims.
        let r = w.sweep(&[2, 3], &[], seq1);
        assert!(
            matches!(r, CommandResult::Rejected(Rejection::CondemnedUnderSession { session, .. }) if session == a),
            "{r:?}"
        );
        // A commits snapshot 2 referencing chunk 2 (root) and 3: the floor rises to its number.
        let seq2 = w.commit(a, 2, 2, 61);
        assert_eq!(round_of(&w.t, &w.repo).unwrap().unwrap().floor, seq2);
        // A sweep that did not re-mark snapshot 2 is refused; so is one that
        // claims a commit that has not happened.
        let r = w.sweep(&[2, 3], &[], seq1);
        assert!(
            matches!(r, CommandResult::Rejected(Rejection::RemarkBehind { needed, .. }) if needed == seq2),
            "{r:?}"
        );
        let r = w.sweep(&[], &[2, 3], seq2 + 1);
        assert!(matches!(r, CommandResult::Rejected(Rejection::CommitSeqAhead { .. })), "{r:?}");
        assert!(w.indexed(2) && w.indexed(3) && w.condemned(2));
        // The re-mark found chunks 2 and 3 in snapshot 2: spared, not swept.
        assert_eq!(w.sweep(&[], &[2, 3], seq2), CommandResult::Ok);
        assert!(w.indexed(2) && w.indexed(3));
        assert!(!w.condemned(2) && !w.condemned(3));
        // The round is over and its re-marked commits are no longer logged.
        assert!(round_of(&w.t, &w.repo).unwrap().is_none());
        assert!(logged_commits(&w.t, &w.repo, 0).unwrap().is_empty());
        // B, begun after the condemnation, never blocked anything.
        assert!(w.t.contains_key(kv::session_key(&b)).unwrap());
    }

    #[test]
    fn the_sweep_removes_what_no_re_marked_snapshot_references_once_sessions_lapse() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2, 4]);
        let seq1 = w.commit(s0, 1, 1, 60);
        let a = w.begin(2, 50);
        assert_eq!(w.condemn(&[2, 4], &[1], seq1), CommandResult::Ok);
        assert!(matches!(
            w.sweep(&[2, 4], &[], seq1),
            CommandResult::Rejected(Rejection::CondemnedUnderSession { .. })
        ));
        // A lapses on the log clock (another command carries a later time);
        // it can never commit now, so the sweep may go on.
        w.clock += 100;
        let late = Command::CommitSnapshot { session: a, now_ms: w.tick(), snapshot: snapshot(9, w.repo.clone()) };
        assert!(matches!(run(&w.t, late), CommandResult::Rejected(Rejection::SessionExpired { .. })));
        assert_eq!(w.sweep(&[2], &[], seq1), CommandResult::Ok);
        assert!(!w.indexed(2) && w.indexed(4) && w.condemned(4));
        // The round stays open until its last condemned chunk is dealt with.
        assert!(round_of(&w.t, &w.repo).unwrap().is_some());
        assert_eq!(w.sweep(&[4], &[], seq1), CommandResult::Ok);
        assert!(!w.indexed(4) && w.indexed(1));
        assert!(round_of(&w.t, &w.repo).unwrap().is_none());
        // A retry of the last sweep hears that it is done.
        assert_eq!(w.sweep(&[4], &[], seq1), CommandResult::AlreadyApplied);
    }

    #[test]
    fn a_mark_must_cover_every_snapshot_not_committed_after_its_sequence() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2]);
        let seq1 = w.commit(s0, 1, 1, 60);
        // Marked at sequence 0 from nothing: snapshot 1 is committed after
        // the mark, so it is accepted (and re-marked before any sweep).
        assert_eq!(w.condemn(&[2], &[], 0), CommandResult::Ok);
        let round = round_of(&w.t, &w.repo).unwrap().unwrap();
        assert_eq!((round.marked_seq, round.floor), (0, seq1));
        assert!(matches!(w.sweep(&[2], &[], 0), CommandResult::Rejected(Rejection::RemarkBehind { .. })));
        assert_eq!(w.sweep(&[], &[2], seq1), CommandResult::Ok);
        // Marked at sequence 1 without snapshot 1: refused, nothing condemned.
        let r = w.condemn(&[2], &[], seq1);
        assert!(matches!(r, CommandResult::Rejected(Rejection::MarkOutdated { .. })), "{r:?}");
        assert!(!w.condemned(2));
        // A mark from the future is refused too.
        assert!(matches!(w.condemn(&[2], &[1], seq1 + 1), CommandResult::Rejected(Rejection::CommitSeqAhead { .. })));
    }

    #[test]
    fn a_forgotten_snapshot_committed_during_a_round_is_still_re_marked() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2]);
        let seq1 = w.commit(s0, 1, 1, 60);
        let a = w.begin(2, 1_000);
        assert_eq!(w.condemn(&[2], &[1], seq1), CommandResult::Ok);
        // A commits snapshot 2 (root chunk 2, deduplicated before the
        // condemnation); a later backup may take it as its parent, and then
        // it is forgotten.
        let seq2 = w.commit(a, 2, 2, 61);
        let forget = Command::Forget { repo: w.repo.clone(), snapshots: vec![SnapshotId([2; 16])], time_ms: w.tick() };
        assert_eq!(run(&w.t, forget), CommandResult::Ok);
        // Its commit is still logged, so the collector re-marks it; and its
        // reference list cannot be dropped meanwhile.
        let logged = logged_commits(&w.t, &w.repo, seq1).unwrap();
        assert_eq!(logged, vec![(seq2, CommitLogEntry { snapshot: SnapshotId([2; 16]), refs_pack: PackId([61; 16]) })]);
        let drop = Command::DropPacks { repo: w.repo.clone(), packs: vec![PackId([61; 16])] };
        assert_eq!(run(&w.t, drop.clone()), CommandResult::AlreadyApplied);
        assert!(w.t.contains_key(kv::pack_key(&PackId([61; 16]))).unwrap());
        assert!(matches!(w.sweep(&[2], &[], seq1), CommandResult::Rejected(Rejection::RemarkBehind { .. })));
        assert_eq!(w.sweep(&[], &[2], seq2), CommandResult::Ok);
        // The round re-marked it and ended: now the list may go.
        assert_eq!(run(&w.t, drop), CommandResult::Ok);
        assert!(!w.t.contains_key(kv::pack_key(&PackId([61; 16]))).unwrap());
    }

    #[test]
    fn packs_of_open_sessions_are_kept_and_old_sweeps_cannot_bypass_a_round() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1]);
        let seq1 = w.commit(s0, 1, 1, 60);
        // Session A committed a reference list and a pack whose chunks were
        // all deduplicated; its snapshot is not committed yet.
        let a = w.begin(2, 1_000);
        let now = w.tick();
        let refs = Command::CommitPack { session: a, now_ms: now, pack: w.pack(62, PackKind::Refs), chunks: vec![] };
        assert_eq!(run(&w.t, refs), CommandResult::Ok);
        let data = Command::CommitPack { session: a, now_ms: now, pack: w.pack(52, PackKind::Data), chunks: vec![] };
        assert_eq!(run(&w.t, data), CommandResult::Ok);
        let drop = Command::DropPacks { repo: w.repo.clone(), packs: vec![PackId([62; 16]), PackId([52; 16])] };
        assert_eq!(run(&w.t, drop.clone()), CommandResult::AlreadyApplied);
        // Once A ended, nothing can point into them any more.
        assert_eq!(run(&w.t, Command::EndSession { id: a }), CommandResult::Ok);
        assert_eq!(run(&w.t, drop), CommandResult::Ok);
        assert!(!w.t.contains_key(kv::pack_key(&PackId([52; 16]))).unwrap());

        // The older Sweep is refused while a round is open.
        let b = w.begin(3, 1_000);
        w.store(b, 53, &[7]);
        assert_eq!(w.condemn(&[7], &[1], seq1), CommandResult::Ok);
        let old = Command::Sweep { repo: w.repo.clone(), chunks: vec![ChunkId([7; 32])] };
        assert!(matches!(run(&w.t, old), CommandResult::Rejected(Rejection::GcRoundOpen { .. })));
        assert!(w.indexed(7));
    }

    #[test]
    fn a_condemned_chunk_uploaded_again_is_revived_and_survives_the_sweep() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2]);
        let seq1 = w.commit(s0, 1, 1, 60);
        assert_eq!(w.condemn(&[2], &[1], seq1), CommandResult::Ok);
        // B begins after the condemnation, finds chunk 2 absent, uploads it
        // again: the commit revives it at its new place.
        let b = w.begin(3, 1_000);
        w.store(b, 54, &[2]);
        assert!(!w.condemned(2));
        let seq2 = w.commit(b, 2, 2, 63);
        // The collector need not re-mark B's snapshot (B began after the
        // condemnation): chunk 2 is no longer condemned, so nothing is swept.
        assert!(seq2 > seq1);
        assert_eq!(w.sweep(&[2], &[], seq1), CommandResult::Ok);
        let got: ChunkLocation = kv::get(&w.t, "chunk", &kv::chunk_key(&w.repo, &ChunkId([2; 32]))).unwrap().unwrap();
        assert_eq!(got.pack, PackId([54; 16]));
    }

    #[test]
    fn a_condemnation_citing_only_its_sequence_checks_the_size_of_the_mark() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2]);
        let seq1 = w.commit(s0, 1, 1, 60);
        let at = |w: &mut World, marked_seq, marked_count| {
            let time_ms = w.tick();
            run(
                &w.t,
                Command::GcCondemnAt {
                    repo: w.repo.clone(),
                    chunks: vec![ChunkId([2; 32])],
                    marked_seq,
                    marked_count,
                    time_ms,
                },
            )
        };
        // Snapshot 1 predates the mark: a mark of no snapshot missed it.
        let r = at(&mut w, seq1, 0);
        assert!(matches!(r, CommandResult::Rejected(Rejection::MarkIncomplete { found: 1, marked: 0, .. })), "{r:?}");
        assert!(!w.condemned(2));
        assert!(matches!(at(&mut w, seq1 + 1, 1), CommandResult::Rejected(Rejection::CommitSeqAhead { .. })));
        // Marked at sequence 0, snapshot 1 is committed after the mark.
        assert_eq!(at(&mut w, 0, 0), CommandResult::Ok);
        assert!(w.condemned(2));
        let round = round_of(&w.t, &w.repo).unwrap().unwrap();
        assert_eq!((round.marked_seq, round.floor), (0, seq1));
        assert_eq!(w.sweep(&[], &[2], seq1), CommandResult::Ok);
        // A mark of one snapshot at sequence 1 is complete.
        assert_eq!(at(&mut w, seq1, 1), CommandResult::Ok);
        assert!(w.condemned(2));
    }

    #[test]
    fn a_rewrite_moves_only_entries_still_in_the_old_pack_and_then_it_drops() {
        let mut w = World::new();
        let s0 = w.begin(1, 1_000);
        w.store(s0, 50, &[1, 2, 3]);
        w.commit(s0, 1, 1, 60);
        // The commit ended the session, so nothing keeps pack 50 but its entries.
        assert_eq!(run(&w.t, Command::EndSession { id: s0 }), CommandResult::AlreadyApplied);
        let at = |chunk: u8, pack: u8, offset: u64, len: u32| {
            (ChunkId([chunk; 32]), ChunkLocation { pack: PackId([pack; 16]), offset, len })
        };
        let rewrite = |w: &mut World, from: u8, pack: u8, chunks: Vec<(ChunkId, ChunkLocation)>| Command::GcRewrite {
            repo: w.repo.clone(),
            from: PackId([from; 16]),
            pack: w.pack(pack, PackKind::Data),
            chunks,
            time_ms: w.tick(),
        };
        // Chunk 2 is named with a length that is not its entry's: it stays.
        let cmd = rewrite(&mut w, 50, 70, vec![at(1, 70, 0, 10), at(2, 70, 10, 9), at(3, 70, 19, 10)]);
        assert_eq!(run(&w.t, cmd.clone()), CommandResult::Ok);
        assert_eq!(run(&w.t, cmd), CommandResult::AlreadyApplied);
        let loc = |w: &World, c: u8| -> ChunkLocation {
            kv::get(&w.t, "chunk", &kv::chunk_key(&w.repo, &ChunkId([c; 32]))).unwrap().unwrap()
        };
        assert_eq!(loc(&w, 1), at(1, 70, 0, 10).1);
        assert_eq!(loc(&w, 3), at(3, 70, 19, 10).1);
        assert_eq!(loc(&w, 2).pack, PackId([50; 16]));
        // The old pack stays while chunk 2 points into it.
        let drop = Command::DropPacks { repo: w.repo.clone(), packs: vec![PackId([50; 16])] };
        assert_eq!(run(&w.t, drop.clone()), CommandResult::AlreadyApplied);
        let cmd = rewrite(&mut w, 50, 71, vec![at(2, 71, 0, 10)]);
        assert_eq!(run(&w.t, cmd), CommandResult::Ok);
        assert_eq!(run(&w.t, drop), CommandResult::Ok);
        // A retry from the dropped pack is refused, and moves nothing.
        let late = rewrite(&mut w, 50, 72, vec![at(1, 72, 0, 10)]);
        assert!(matches!(run(&w.t, late), CommandResult::Rejected(Rejection::RewriteSource { .. })));
        assert_eq!(loc(&w, 1).pack, PackId([70; 16]));
        // A copy whose entries lie outside it is refused.
        let out = rewrite(&mut w, 70, 73, vec![at(1, 73, 995, 10)]);
        assert!(matches!(run(&w.t, out), CommandResult::Rejected(Rejection::ChunkOutOfRange { .. })));
    }
}
