//! Applying one command to the state: a plain function over a write overlay.
//!
//! This is the deterministic core of the metadata plane (invariant 5): it
//! reads only the store, uses only the times and ids inside the command, and
//! refuses bad commands with a `Rejection` that every replica computes alike.
//! Every command is idempotent, so that a client may retry a commit whose
//! answer it never received without doubling anything.

use coffer_types::{
    ChunkLocation, NodeRecord, PackRecord, RepoName, RepoRecord, SessionId, SessionRecord, SnapshotRecord,
};

use crate::command::{BadShardRecord, Command, CommandResult, DrainRecord, IncidentRecord, Rejection, RepairWork};
use crate::error::MetaError;
use crate::kv::{self, Txn};

pub fn apply(txn: &mut Txn<'_>, cmd: Command) -> Result<CommandResult, MetaError> {
    match cmd {
        Command::RegisterNode { node } => {
            if txn.contains(&kv::retired_key(node.id))? {
                return Ok(CommandResult::Rejected(Rejection::Retired(node.id)));
            }
            let key = kv::node_key(node.id);
            if !txn.contains(&key)? {
                txn.add_count("nodes", 1)?;
            }
            txn.put(key, &node)?;
            Ok(CommandResult::Ok)
        }
        Command::NodeSeen { node, used_bytes, capacity_bytes, time_ms } => {
            let key = kv::node_key(node);
            let Some(mut rec) = txn.get::<NodeRecord>("node", &key)? else {
                return Ok(CommandResult::Rejected(Rejection::UnknownNode(node)));
            };
            rec.used_bytes = used_bytes;
            rec.capacity_bytes = capacity_bytes;
            rec.last_heartbeat_ms = rec.last_heartbeat_ms.max(time_ms);
            txn.put(key, &rec)?;
            Ok(CommandResult::Ok)
        }
        Command::CreateRepo { repo } => {
            let key = kv::repo_key(&repo.name);
            if let Some(existing) = txn.get::<RepoRecord>("repo", &key)? {
                return Ok(if existing == repo {
                    CommandResult::AlreadyApplied
                } else {
                    CommandResult::Rejected(Rejection::RepoExists(repo.name))
                });
            }
            txn.put(key, &repo)?;
            txn.add_count("repos", 1)?;
            Ok(CommandResult::Ok)
        }
        Command::BeginSession { mut session } => {
            let now = log_clock(txn, session.started_ms)?;
            if !txn.contains(&kv::repo_key(&session.repo))? {
                return Ok(CommandResult::Rejected(Rejection::UnknownRepo(session.repo)));
            }
            let key = kv::session_key(&session.id);
            let existing = txn.get::<SessionRecord>("session", &key)?;
            // A lapsed lease is never renewed: garbage collection may already
            // have condemned what the session deduplicated against.
            let lease_until_ms = existing.as_ref().map_or(session.lease_until_ms, |e| e.lease_until_ms);
            if lease_until_ms <= now {
                return Ok(CommandResult::Rejected(Rejection::SessionExpired {
                    session: session.id,
                    lease_until_ms,
                    now_ms: now,
                }));
            }
            if let Some(existing) = existing {
                if existing.repo != session.repo {
                    return Ok(CommandResult::Rejected(Rejection::UnknownSession {
                        repo: session.repo,
                        session: session.id,
                    }));
                }
                // Beginning a session again renews its lease; it keeps its
                // start, which garbage collection orders sessions by.
                session.started_ms = existing.started_ms;
                session.lease_until_ms = session.lease_until_ms.max(existing.lease_until_ms);
                if existing == session {
                    return Ok(CommandResult::AlreadyApplied);
                }
            }
            txn.put(key, &session)?;
            Ok(CommandResult::Ok)
        }
        Command::EndSession { id } => {
            let key = kv::session_key(&id);
            if !txn.contains(&key)? {
                return Ok(CommandResult::AlreadyApplied);
            }
            txn.remove(key);
            Ok(CommandResult::Ok)
        }
        Command::CommitPack { session, now_ms, pack, chunks } => {
            let now = log_clock(txn, now_ms)?;
            commit_pack(txn, session, now, pack, chunks)
        }
        Command::IndexChunks { repo, pack, chunks } => {
            let Some(record) = txn.get::<PackRecord>("pack", &kv::pack_key(&pack))? else {
                return Ok(CommandResult::Rejected(Rejection::UnknownPack(pack)));
            };
            if record.repo != repo {
                return Ok(CommandResult::Rejected(Rejection::WrongRepo { pack, repo: record.repo, expected: repo }));
            }
            if let Some(why) = check_chunks(&record, &chunks) {
                return Ok(CommandResult::Rejected(why));
            }
            let added = index_chunks(txn, &record, &chunks)?;
            Ok(if added == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
        }
        Command::MarkBadShard { pack, index, node, time_ms } => {
            let Some(record) = txn.get::<PackRecord>("pack", &kv::pack_key(&pack))? else {
                return Ok(CommandResult::Rejected(Rejection::UnknownPack(pack)));
            };
            if node == coffer_types::NodeId::UNPLACED
                || record.shards.get(index.0 as usize).map(|s| s.node) != Some(node)
            {
                return Ok(CommandResult::Rejected(Rejection::ShardNotOnNode { pack, index, node }));
            }
            let key = kv::bad_shard_key(&pack, index);
            if txn.contains(&key)? {
                return Ok(CommandResult::AlreadyApplied);
            }
            txn.put(key, &BadShardRecord { node, time_ms })?;
            Ok(CommandResult::Ok)
        }
        Command::MoveShard { pack, index, from, to, checksum, work } => {
            move_shard(txn, pack, index, from, to, checksum, work)
        }
        Command::ForgetCopies { copies } => {
            for (pack, index, node) in copies {
                txn.remove(kv::former_copy_key(&pack, index, node));
            }
            Ok(CommandResult::Ok)
        }
        Command::SetDrain { node, drain, decommission, time_ms } => {
            if !txn.contains(&kv::node_key(node))? {
                return Ok(CommandResult::Rejected(Rejection::UnknownNode(node)));
            }
            let key = kv::drain_key(node);
            if drain {
                txn.put(key, &DrainRecord { since_ms: time_ms, decommission })?;
            } else {
                txn.remove(key);
            }
            Ok(CommandResult::Ok)
        }
        Command::RemoveNode { node } => {
            if !txn.contains(&kv::node_key(node))? {
                return Ok(CommandResult::AlreadyApplied);
            }
            // The index counts the node's shard entries: no scan of the packs.
            let shards = crate::index::held_by(txn, node)?;
            if shards > 0 {
                return Ok(CommandResult::Rejected(Rejection::NodeNotEmpty { node, shards }));
            }
            txn.remove(kv::node_key(node));
            txn.remove(kv::drain_key(node));
            txn.put(kv::retired_key(node), &true)?;
            txn.add_count("nodes", -1)?;
            Ok(CommandResult::Ok)
        }
        Command::OpenIncident { node, last_seen_ms, detected_ms, shards_lost } => {
            if crate::index::open_incident(txn, node)?.is_some() {
                return Ok(CommandResult::AlreadyApplied);
            }
            let id: u64 = txn.get("counter", &kv::count_key("incidents"))?.unwrap_or(0) + 1;
            txn.add_count("incidents", 1)?;
            let record = IncidentRecord {
                id,
                node,
                open: true,
                last_seen_ms,
                detected_ms,
                rebuild_started_ms: 0,
                rebuild_finished_ms: 0,
                shards_lost,
                shards_rebuilt: 0,
                bytes_read: 0,
                bytes_written: 0,
                bytes_cross_site: 0,
            };
            txn.put(kv::incident_key(id), &record)?;
            Ok(CommandResult::Ok)
        }
        Command::CloseIncident { node, time_ms } => {
            let open = crate::index::open_incident(txn, node)?;
            let Some(mut record) = open
                .map(|id| txn.get::<IncidentRecord>("incident", &kv::incident_key(id)))
                .transpose()?
                .flatten()
                .filter(|i| i.open)
            else {
                return Ok(CommandResult::AlreadyApplied);
            };
            record.open = false;
            record.rebuild_finished_ms = time_ms.max(record.rebuild_started_ms);
            txn.put(kv::incident_key(record.id), &record)?;
            Ok(CommandResult::Ok)
        }
        Command::CommitSnapshotCovered { session, now_ms, snapshot, coverage } => {
            let id = snapshot.id;
            let result = apply(txn, Command::CommitSnapshot { session, now_ms, snapshot })?;
            if result == CommandResult::Ok {
                txn.put(kv::coverage_key(&id), &coverage)?;
            }
            Ok(result)
        }
        Command::CommitSnapshot { session, now_ms, snapshot } => {
            let now = log_clock(txn, now_ms)?;
            let of_source = coffer_types::source_of_tags(&snapshot.tags).is_some().then(|| snapshot.clone());
            let result = commit_snapshot(txn, session, now, snapshot)?;
            if !matches!(result, CommandResult::Rejected(_)) {
                txn.remove(kv::session_key(&session));
            }
            if let (CommandResult::Ok, Some(snapshot)) = (&result, of_source) {
                crate::sources::snapshot_committed(txn, &snapshot)?;
            }
            Ok(result)
        }
        Command::Forget { repo, snapshots, time_ms } => crate::retention::forget(txn, &repo, &snapshots, time_ms),
        Command::SetHold { repo, snapshot, until_ms } => {
            let now = txn.get::<u64>("log clock", kv::KEY_CLOCK)?.unwrap_or(0);
            crate::retention::set_hold(txn, &repo, snapshot, until_ms, now)
        }
        Command::HoldUntil { repo, snapshot, until_ms, time_ms } => {
            let now = log_clock(txn, time_ms)?;
            crate::retention::set_hold(txn, &repo, snapshot, until_ms, now)
        }
        Command::CreateToken { token } => crate::tokens::create(txn, token),
        Command::RevokeToken { id, time_ms } => crate::tokens::revoke(txn, id, time_ms),
        Command::Condemn { repo, chunks, marked_from, time_ms } => {
            let now = log_clock(txn, time_ms)?;
            crate::gc::condemn(txn, &repo, &chunks, &marked_from, now)
        }
        Command::Sweep { repo, chunks } => crate::gc::sweep(txn, &repo, &chunks),
        Command::DropPacks { repo, packs } => crate::gc::drop_packs(txn, &repo, &packs),
        Command::Relocate { repo, from, chunks } => crate::gc::relocate(txn, &repo, from, &chunks),
        Command::SetMinShards { repo, min_shards } => {
            let Some(record) = txn.get::<RepoRecord>("repo", &kv::repo_key(&repo))? else {
                return Ok(CommandResult::Rejected(Rejection::UnknownRepo(repo)));
            };
            if record.params.check_min_shards(min_shards).is_err() {
                return Ok(CommandResult::Rejected(Rejection::BadMinShards {
                    repo,
                    min_shards,
                    params: record.params,
                }));
            }
            let key = kv::min_shards_key(&repo);
            if txn.get::<u32>("min shards", &key)? == Some(min_shards) {
                return Ok(CommandResult::AlreadyApplied);
            }
            txn.put(key, &min_shards)?;
            Ok(CommandResult::Ok)
        }
        Command::SetKeySlots { repo, expected_version, slots } => set_key_slots(txn, repo, expected_version, slots),
        Command::ReportSource { source, time_ms } => crate::sources::report(txn, source, time_ms),
        Command::RemoveSource { repo, name } => crate::sources::remove(txn, &repo, &name),
        Command::RecordDr { record } => crate::dr::record(txn, record),
        Command::GcCondemn { repo, chunks, marked_from, marked_seq, time_ms } => {
            let now = log_clock(txn, time_ms)?;
            crate::gc::gc_condemn(txn, &repo, &chunks, &marked_from, marked_seq, now)
        }
        Command::GcSweep { repo, sweep, spare, remarked_through, time_ms } => {
            let now = log_clock(txn, time_ms)?;
            crate::gc::gc_sweep(txn, &repo, &sweep, &spare, remarked_through, now)
        }
        Command::GcRequest { time_ms } => crate::gc::request_run(txn, time_ms),
        Command::GcRunDone { run } => crate::gc::run_done(txn, run),
        Command::GcCondemnAt { repo, chunks, marked_seq, marked_count, time_ms } => {
            let now = log_clock(txn, time_ms)?;
            crate::gc::gc_condemn_at(txn, &repo, &chunks, marked_seq, marked_count, now)
        }
        Command::GcRewrite { repo, from, pack, chunks, time_ms } => {
            log_clock(txn, time_ms)?;
            crate::gc::rewrite(txn, &repo, from, pack, &chunks)
        }
    }
}

/// Compare-and-set of a repository's key slots (see `Command::SetKeySlots`).
fn set_key_slots(
    txn: &mut Txn<'_>,
    repo: RepoName,
    expected_version: u64,
    slots: Vec<Vec<u8>>,
) -> Result<CommandResult, MetaError> {
    let key = kv::repo_key(&repo);
    let Some(mut record) = txn.get::<RepoRecord>("repo", &key)? else {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(repo)));
    };
    let version_key = kv::key_slots_version_key(&repo);
    let current: u64 = txn.get("key slots version", &version_key)?.unwrap_or(0);
    if current != expected_version {
        // The answer to this very change that never reached its caller.
        return Ok(if current == expected_version.wrapping_add(1) && record.key_slots == slots {
            CommandResult::AlreadyApplied
        } else {
            CommandResult::Rejected(Rejection::KeySlotsChanged { repo, expected: expected_version, current })
        });
    }
    if slots.is_empty() {
        return Ok(CommandResult::Rejected(Rejection::LastKeySlot(repo)));
    }
    record.key_slots = slots;
    txn.put(key, &record)?;
    txn.put(version_key, &current.saturating_add(1))?;
    Ok(CommandResult::Ok)
}

/// The version of a repository's key slot set, as `SetKeySlots` compares it.
pub(crate) fn key_slots_version(tree: &crate::store::Tree, repo: &RepoName) -> Result<u64, MetaError> {
    Ok(kv::get::<u64>(tree, "key slots version", &kv::key_slots_version_key(repo))?.unwrap_or(0))
}

/// The log clock: the latest leader time carried by a command that judges
/// leases, advanced to `now_ms` if that is later, and returned. Leases are
/// judged by it alone, never by one node's clock. It never goes backwards, so
/// a new leader whose clock is behind cannot make a lease that the log has
/// already seen lapse (and that `Condemn` may have relied on) live again; a
/// leader whose clock is ahead moves it on for every replica alike, which can
/// only end leases early: the backup then aborts, nothing is lost.
pub(crate) fn log_clock(txn: &mut Txn<'_>, now_ms: u64) -> Result<u64, MetaError> {
    let clock = txn.get::<u64>("log clock", kv::KEY_CLOCK)?.unwrap_or(0);
    if now_ms > clock {
        txn.put(kv::KEY_CLOCK.to_vec(), &now_ms)?;
    }
    Ok(clock.max(now_ms))
}

/// Why `session` may not commit into `repo` at log time `now`, if it may
/// not: it must be open, of that repository, and unexpired. `Condemn` counts
/// a session as open while `now < lease_until_ms`; this is the same test, so
/// a session that a condemnation ignored can never commit afterwards.
fn session_refusal(
    txn: &Txn<'_>,
    session: SessionId,
    repo: &RepoName,
    now: u64,
) -> Result<Option<Rejection>, MetaError> {
    let Some(record) = txn.get::<SessionRecord>("session", &kv::session_key(&session))? else {
        return Ok(Some(Rejection::UnknownSession { repo: repo.clone(), session }));
    };
    if record.repo != *repo {
        return Ok(Some(Rejection::UnknownSession { repo: repo.clone(), session }));
    }
    if record.lease_until_ms <= now {
        return Ok(Some(Rejection::SessionExpired { session, lease_until_ms: record.lease_until_ms, now_ms: now }));
    }
    Ok(None)
}

/// The fewest placed shards a new pack of `repo` may have: what was set with
/// `SetMinShards`, else the default for its code.
pub(crate) fn min_shards(
    get: impl FnOnce(&[u8]) -> Result<Option<u32>, MetaError>,
    repo: &RepoRecord,
) -> Result<usize, MetaError> {
    Ok(match get(&kv::min_shards_key(&repo.name))? {
        Some(n) => repo.params.check_min_shards(n).unwrap_or(repo.params.total()),
        None => repo.params.default_min_shards(),
    })
}

fn commit_pack(
    txn: &mut Txn<'_>,
    session: SessionId,
    now: u64,
    pack: PackRecord,
    chunks: Vec<(coffer_types::ChunkId, ChunkLocation)>,
) -> Result<CommandResult, MetaError> {
    let Some(repo) = txn.get::<RepoRecord>("repo", &kv::repo_key(&pack.repo))? else {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(pack.repo)));
    };
    let key = kv::pack_key(&pack.id);
    if let Some(existing) = txn.get::<PackRecord>("pack", &key)? {
        return Ok(if existing == pack {
            CommandResult::AlreadyApplied
        } else {
            CommandResult::Rejected(Rejection::PackConflict(pack.id))
        });
    }
    // After the repeat check, so that a retry whose answer was lost still
    // hears that its pack is in; a new pack needs a live session.
    if let Some(why) = session_refusal(txn, session, &pack.repo, now)? {
        return Ok(CommandResult::Rejected(why));
    }
    if let Some(why) = placement_refusal(txn, &repo, &pack)? {
        return Ok(CommandResult::Rejected(why));
    }
    if let Some(why) = check_chunks(&pack, &chunks) {
        return Ok(CommandResult::Rejected(why));
    }
    index_chunks(txn, &pack, &chunks)?;
    // Garbage collection keeps a pack whose session is still open: its
    // reference list or further `IndexChunks` may yet point into it.
    txn.put(kv::pack_session_key(&pack.id), &session)?;
    txn.put(key, &pack)?;
    txn.add_count("packs", 1)?;
    Ok(CommandResult::Ok)
}

/// Why a new pack's placement cannot be recorded, if it cannot: fewer
/// shards placed than the repository's minimum (a short pack is accepted
/// down to it, the repair planner writes the rest), or a shard on a node
/// the catalog does not know.
pub(crate) fn placement_refusal(
    txn: &Txn<'_>,
    repo: &RepoRecord,
    pack: &PackRecord,
) -> Result<Option<Rejection>, MetaError> {
    let needed = min_shards(|k| txn.get::<u32>("min shards", k), repo)?;
    let placed = pack.placed();
    if placed < needed {
        return Ok(Some(Rejection::TooFewShards { pack: pack.id, placed, min_shards: needed }));
    }
    for shard in pack.shards.iter().filter(|s| s.is_placed()) {
        if !txn.contains(&kv::node_key(shard.node))? {
            return Ok(Some(Rejection::PackOnUnknownNode { pack: pack.id, index: shard.index.0, node: shard.node }));
        }
    }
    Ok(None)
}

/// Moves (or repairs in place) one shard, once its new copy is verified.
/// Only ever from the node the record names, so a retried or duplicated
/// task can never write a placement twice.
fn move_shard(
    txn: &mut Txn<'_>,
    pack: coffer_types::PackId,
    index: coffer_types::ShardIndex,
    from: coffer_types::NodeId,
    to: coffer_types::NodeId,
    checksum: coffer_types::Hash32,
    work: RepairWork,
) -> Result<CommandResult, MetaError> {
    let key = kv::pack_key(&pack);
    let Some(mut record) = txn.get::<PackRecord>("pack", &key)? else {
        return Ok(CommandResult::Rejected(Rejection::UnknownPack(pack)));
    };
    let Some(current) = record.shards.get(index.0 as usize).cloned() else {
        return Ok(CommandResult::Rejected(Rejection::ShardNotOnNode { pack, index, node: from }));
    };
    if current.checksum != checksum {
        return Ok(CommandResult::Rejected(Rejection::ShardChecksum { pack, index }));
    }
    let bad_key = kv::bad_shard_key(&pack, index);
    // A move never unplaces a shard: that would lower redundancy.
    if to == coffer_types::NodeId::UNPLACED {
        return Ok(CommandResult::Rejected(Rejection::UnknownNode(to)));
    }
    if current.node == to && from != to {
        return Ok(CommandResult::AlreadyApplied);
    }
    if current.node != from {
        return Ok(CommandResult::Rejected(Rejection::ShardNotOnNode { pack, index, node: from }));
    }
    if from != to {
        if !txn.contains(&kv::node_key(to))? {
            return Ok(CommandResult::Rejected(Rejection::UnknownNode(to)));
        }
        if record.shards.iter().any(|s| s.node == to) {
            return Ok(CommandResult::Rejected(Rejection::NodeHoldsShard { pack, node: to }));
        }
        record.shards[index.0 as usize].node = to;
        txn.put(key, &record)?;
        // The file on `from` is now a copy for the sweep to delete (node 0
        // holds no file); a shard moved back to a node is its copy again.
        if from != coffer_types::NodeId::UNPLACED {
            txn.put(kv::former_copy_key(&pack, index, from), &to)?;
        }
        txn.remove(kv::former_copy_key(&pack, index, to));
    }
    txn.remove(bad_key);
    if let Some(id) = work.incident {
        if let Some(mut inc) = txn.get::<IncidentRecord>("incident", &kv::incident_key(id))? {
            if inc.rebuild_started_ms == 0 || work.started_ms < inc.rebuild_started_ms {
                inc.rebuild_started_ms = work.started_ms;
            }
            inc.shards_rebuilt += 1;
            inc.bytes_read += work.bytes_read;
            inc.bytes_written += work.bytes_written;
            inc.bytes_cross_site += work.bytes_cross_site;
            txn.put(kv::incident_key(id), &inc)?;
        }
    }
    Ok(CommandResult::Ok)
}

/// Every entry must point into `pack`, within its bytes.
pub(crate) fn check_chunks(pack: &PackRecord, chunks: &[(coffer_types::ChunkId, ChunkLocation)]) -> Option<Rejection> {
    for (chunk, loc) in chunks {
        if loc.pack != pack.id {
            return Some(Rejection::ChunkOutsidePack { chunk: *chunk, pack: loc.pack });
        }
        if loc.offset.checked_add(loc.len as u64).is_none_or(|end| end > pack.pack_len) {
            return Some(Rejection::ChunkOutOfRange { chunk: *chunk, pack: pack.id, pack_len: pack.pack_len });
        }
    }
    None
}

/// Indexes the entries not indexed yet; returns how many were new.
fn index_chunks(
    txn: &mut Txn<'_>,
    pack: &PackRecord,
    chunks: &[(coffer_types::ChunkId, ChunkLocation)],
) -> Result<i64, MetaError> {
    let mut added = 0i64;
    for (chunk, loc) in chunks {
        // A condemned chunk stored again moves to the new copy (garbage
        // collection will delete the old one), and so does one whose pack
        // record is gone (a full backup stores such chunks again).
        if crate::gc::revive(txn, &pack.repo, chunk, loc)? || crate::gc::replace_unplaced(txn, &pack.repo, chunk, loc)?
        {
            continue;
        }
        let ckey = kv::chunk_key(&pack.repo, chunk);
        // The first location wins: two sessions may race to store the same
        // chunk, and either copy serves.
        if !txn.contains(&ckey)? {
            txn.put(ckey, loc)?;
            added += 1;
        }
    }
    txn.add_count("chunks", added)?;
    Ok(added)
}

fn commit_snapshot(
    txn: &mut Txn<'_>,
    session: SessionId,
    now: u64,
    snapshot: SnapshotRecord,
) -> Result<CommandResult, MetaError> {
    if !txn.contains(&kv::repo_key(&snapshot.repo))? {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(snapshot.repo)));
    }
    let key = kv::snapshot_key(&snapshot.id);
    if let Some(existing) = txn.get::<SnapshotRecord>("snapshot", &key)? {
        return Ok(if existing == snapshot {
            CommandResult::AlreadyApplied
        } else {
            CommandResult::Rejected(Rejection::SnapshotConflict(snapshot.id))
        });
    }
    // A lapsed session may have had the chunks it deduplicated against
    // condemned and swept: its snapshot could point at nothing.
    if let Some(why) = session_refusal(txn, session, &snapshot.repo, now)? {
        return Ok(CommandResult::Rejected(why));
    }
    if !txn.contains(&kv::chunk_key(&snapshot.repo, &snapshot.root))? {
        return Ok(CommandResult::Rejected(Rejection::RootNotIndexed { snapshot: snapshot.id, root: snapshot.root }));
    }
    match txn.get::<PackRecord>("pack", &kv::pack_key(&snapshot.refs_pack))? {
        Some(p) if p.kind == coffer_types::PackKind::Refs && p.repo == snapshot.repo => {}
        _ => {
            return Ok(CommandResult::Rejected(Rejection::RefsNotCommitted {
                snapshot: snapshot.id,
                pack: snapshot.refs_pack,
            }))
        }
    }
    crate::gc::on_snapshot_committed(txn, &session, &snapshot)?;
    txn.put(key, &snapshot)?;
    txn.add_count("snapshots", 1)?;
    Ok(CommandResult::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{begin, run, snapshot, tree};
    use coffer_types::*;

    fn repo() -> RepoRecord {
        RepoRecord {
            name: RepoName::new("r").unwrap(),
            params: ErasureParams::new(2, 1).unwrap(),
            key_slots: vec![vec![1, 2]],
            created_ms: 5,
        }
    }

    fn pack(nodes: &[NodeId]) -> PackRecord {
        PackRecord {
            id: PackId([7; 16]),
            repo: RepoName::new("r").unwrap(),
            kind: PackKind::Data,
            params: ErasureParams::new(2, 1).unwrap(),
            pack_len: 100,
            shard_len: 50,
            shards: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| ShardRecord { index: ShardIndex(i as u8), node: *n, checksum: Hash32([0; 32]) })
                .collect(),
        }
    }

    #[test]
    fn commands_are_idempotent_and_rejections_change_nothing() {
        let t = tree();
        assert_eq!(run(&t, Command::CreateRepo { repo: repo() }), CommandResult::Ok);
        assert_eq!(run(&t, Command::CreateRepo { repo: repo() }), CommandResult::AlreadyApplied);
        let mut other = repo();
        other.key_slots = vec![];
        assert!(matches!(run(&t, Command::CreateRepo { repo: other }), CommandResult::Rejected(_)));

        let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
        // A pack on unknown nodes is refused and indexes nothing.
        let chunk = ChunkId([1; 32]);
        let loc = ChunkLocation { pack: PackId([7; 16]), offset: 10, len: 20 };
        let session = begin(&t, &repo().name, 0, 1000);
        let cmd = Command::CommitPack { session, now_ms: 2, pack: pack(&nodes), chunks: vec![(chunk, loc)] };
        assert!(matches!(run(&t, cmd.clone()), CommandResult::Rejected(Rejection::PackOnUnknownNode { .. })));
        assert!(t.get(kv::chunk_key(&repo().name, &chunk)).unwrap().is_none());

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
        assert_eq!(run(&t, cmd.clone()), CommandResult::Ok);
        assert_eq!(run(&t, cmd), CommandResult::AlreadyApplied);
        let got: ChunkLocation = kv::get(&t, "c", &kv::chunk_key(&repo().name, &chunk)).unwrap().unwrap();
        assert_eq!(got, loc);
        let count: u64 = kv::get(&t, "n", &kv::count_key("chunks")).unwrap().unwrap();
        assert_eq!(count, 1);

        // Out-of-range chunk entries are refused.
        let mut p2 = pack(&nodes);
        p2.id = PackId([8; 16]);
        let bad = ChunkLocation { pack: p2.id, offset: 90, len: 20 };
        let r = run(&t, Command::CommitPack { session, now_ms: 2, pack: p2, chunks: vec![(chunk, bad)] });
        assert!(matches!(r, CommandResult::Rejected(Rejection::ChunkOutOfRange { .. })));
    }

    fn register(t: &crate::store::Tree, nodes: &[NodeId]) {
        for n in nodes {
            let node = NodeRecord {
                id: *n,
                site: SiteId::new("a").unwrap(),
                addr: "x".into(),
                capacity_bytes: 1,
                used_bytes: 0,
                last_heartbeat_ms: 0,
            };
            run(t, Command::RegisterNode { node });
        }
    }

    #[test]
    fn short_packs_commit_down_to_min_shards_and_fill_in_by_move() {
        let t = tree();
        // A 4+2 repository; min_shards defaults to k.
        let mut r = repo();
        r.params = ErasureParams::new(4, 2).unwrap();
        run(&t, Command::CreateRepo { repo: r.clone() });
        let nodes: Vec<NodeId> = (1..=6).map(NodeId).collect();
        register(&t, &nodes);
        let short = |placed: usize, id: u8| {
            let mut p = pack(&nodes);
            p.id = PackId([id; 16]);
            p.params = r.params;
            p.shard_len = p.params.shard_len(p.pack_len);
            for s in &mut p.shards[placed..] {
                s.node = NodeId::UNPLACED;
            }
            p
        };
        let session = begin(&t, &r.name, 0, 1000);
        let commit = |p: PackRecord| Command::CommitPack { session, now_ms: 2, pack: p, chunks: vec![] };
        assert_eq!(run(&t, commit(short(4, 1))), CommandResult::Ok);
        assert_eq!(run(&t, commit(short(4, 1))), CommandResult::AlreadyApplied);
        assert!(matches!(
            run(&t, commit(short(3, 2))),
            CommandResult::Rejected(Rejection::TooFewShards { placed: 3, min_shards: 4, .. })
        ));
        assert!(t.get(kv::pack_key(&PackId([2; 16]))).unwrap().is_none());

        // min_shards is validated against the code and raises the bar.
        for bad in [3, 7, 0, u32::MAX] {
            let cmd = Command::SetMinShards { repo: r.name.clone(), min_shards: bad };
            assert!(matches!(run(&t, cmd), CommandResult::Rejected(Rejection::BadMinShards { .. })), "{bad}");
        }
        let unknown = Command::SetMinShards { repo: RepoName::new("nope").unwrap(), min_shards: 5 };
        assert!(matches!(run(&t, unknown), CommandResult::Rejected(Rejection::UnknownRepo(_))));
        let set = Command::SetMinShards { repo: r.name.clone(), min_shards: 5 };
        assert_eq!(run(&t, set.clone()), CommandResult::Ok);
        assert_eq!(run(&t, set), CommandResult::AlreadyApplied);
        assert!(matches!(run(&t, commit(short(4, 3))), CommandResult::Rejected(Rejection::TooFewShards { .. })));
        assert_eq!(run(&t, commit(short(5, 3))), CommandResult::Ok);

        // A missing shard moves from nowhere to a node, once, and never to
        // node 0 or onto a node that already holds a shard of the pack.
        let p = short(4, 1);
        let mv = |index: u8, from: NodeId, to: NodeId| Command::MoveShard {
            pack: p.id,
            index: ShardIndex(index),
            from,
            to,
            checksum: p.shards[index as usize].checksum,
            work: RepairWork::default(),
        };
        assert!(matches!(run(&t, mv(4, NodeId::UNPLACED, NodeId(1))), CommandResult::Rejected(_)));
        assert!(matches!(run(&t, mv(4, NodeId(5), NodeId::UNPLACED)), CommandResult::Rejected(_)));
        assert_eq!(run(&t, mv(4, NodeId::UNPLACED, NodeId(5))), CommandResult::Ok);
        assert_eq!(run(&t, mv(4, NodeId::UNPLACED, NodeId(5))), CommandResult::AlreadyApplied);
        let got: PackRecord = kv::get(&t, "p", &kv::pack_key(&p.id)).unwrap().unwrap();
        assert_eq!(got.placed(), 5);
        assert_eq!(got.shards[4].node, NodeId(5));

        // A bad-shard report naming no node is refused.
        let cmd = Command::MarkBadShard { pack: p.id, index: ShardIndex(5), node: NodeId::UNPLACED, time_ms: 1 };
        assert!(matches!(run(&t, cmd), CommandResult::Rejected(Rejection::ShardNotOnNode { .. })));
    }

    #[test]
    fn snapshot_needs_indexed_root_and_committed_refs() {
        let t = tree();
        run(&t, Command::CreateRepo { repo: repo() });
        let session = begin(&t, &repo().name, 0, 1000);
        let snap = snapshot(3, repo().name);
        let r = run(&t, Command::CommitSnapshot { session, now_ms: 2, snapshot: snap });
        assert!(matches!(r, CommandResult::Rejected(Rejection::RootNotIndexed { .. })));
    }

    /// A repository with nodes 1..=3, its refs pack `[4; 16]` and a data
    /// pack `[7; 16]` holding the root `[9; 32]` committed by session 1
    /// (leased until 100), ready for `snapshot(3, ..)`.
    fn ready_to_snapshot(t: &crate::store::Tree) -> SessionId {
        run(t, Command::CreateRepo { repo: repo() });
        let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
        register(t, &nodes);
        let session = begin(t, &repo().name, 1, 100);
        let mut refs = pack(&nodes);
        refs.id = PackId([4; 16]);
        refs.kind = PackKind::Refs;
        assert_eq!(run(t, Command::CommitPack { session, now_ms: 10, pack: refs, chunks: vec![] }), CommandResult::Ok);
        let root = (ChunkId([9; 32]), ChunkLocation { pack: PackId([7; 16]), offset: 0, len: 10 });
        let data = Command::CommitPack { session, now_ms: 10, pack: pack(&nodes), chunks: vec![root] };
        assert_eq!(run(t, data), CommandResult::Ok);
        session
    }

    #[test]
    fn commits_need_an_open_session_of_the_repository() {
        let t = tree();
        let session = ready_to_snapshot(&t);
        let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut other = pack(&nodes);
        other.id = PackId([5; 16]);
        // Never begun, or begun for another repository: refused, nothing indexed.
        let stranger = SessionId([2; 16]);
        let cmd = |session| Command::CommitPack { session, now_ms: 20, pack: other.clone(), chunks: vec![] };
        assert!(matches!(run(&t, cmd(stranger)), CommandResult::Rejected(Rejection::UnknownSession { .. })));
        let mut r2 = repo();
        r2.name = RepoName::new("r2").unwrap();
        run(&t, Command::CreateRepo { repo: r2.clone() });
        let elsewhere = begin(&t, &r2.name, 6, 100);
        assert!(matches!(run(&t, cmd(elsewhere)), CommandResult::Rejected(Rejection::UnknownSession { .. })));
        assert!(t.get(kv::pack_key(&other.id)).unwrap().is_none());
        let snap = |session| Command::CommitSnapshot { session, now_ms: 20, snapshot: snapshot(3, repo().name) };
        assert!(matches!(run(&t, snap(stranger)), CommandResult::Rejected(Rejection::UnknownSession { .. })));
        assert!(t.get(kv::snapshot_key(&SnapshotId([3; 16]))).unwrap().is_none());
        // Its own session commits, once; the session ends with it, and a
        // retry whose answer was lost still hears that it is in.
        assert_eq!(run(&t, snap(session)), CommandResult::Ok);
        assert_eq!(run(&t, snap(session)), CommandResult::AlreadyApplied);
        assert!(t.get(kv::session_key(&session)).unwrap().is_none());
        // An ended session commits no new pack.
        assert!(matches!(run(&t, cmd(session)), CommandResult::Rejected(Rejection::UnknownSession { .. })));
    }

    #[test]
    fn an_expired_session_commits_nothing_and_is_not_renewed() {
        let t = tree();
        let session = ready_to_snapshot(&t);
        let nodes: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let mut other = pack(&nodes);
        other.id = PackId([5; 16]);
        let pack_at = |now_ms| Command::CommitPack { session, now_ms, pack: other.clone(), chunks: vec![] };
        let snap_at = |now_ms| Command::CommitSnapshot { session, now_ms, snapshot: snapshot(3, repo().name) };
        // The lease runs until 100 (exclusive), judged by the command's time.
        for now in [100, 5_000] {
            let r = run(&t, pack_at(now));
            assert!(
                matches!(r, CommandResult::Rejected(Rejection::SessionExpired { lease_until_ms: 100, .. })),
                "{r:?}"
            );
            let r = run(&t, snap_at(now));
            assert!(matches!(r, CommandResult::Rejected(Rejection::SessionExpired { .. })), "{r:?}");
        }
        assert!(t.get(kv::pack_key(&other.id)).unwrap().is_none());
        assert!(t.get(kv::snapshot_key(&SnapshotId([3; 16]))).unwrap().is_none());
        // The log has been at 5000: a leader whose clock says 50 cannot
        // revive the lease, neither by committing nor by renewing.
        let r = run(&t, snap_at(50));
        assert!(matches!(r, CommandResult::Rejected(Rejection::SessionExpired { now_ms: 5_000, .. })), "{r:?}");
        assert!(matches!(run(&t, pack_at(50)), CommandResult::Rejected(Rejection::SessionExpired { .. })));
        let renew = SessionRecord { id: session, repo: repo().name, started_ms: 50, lease_until_ms: 3_650 };
        let r = run(&t, Command::BeginSession { session: renew });
        assert!(matches!(r, CommandResult::Rejected(Rejection::SessionExpired { .. })), "{r:?}");
        assert!(t.get(kv::snapshot_key(&SnapshotId([3; 16]))).unwrap().is_none());
        // Nor can a new session begin already lapsed by the log's time.
        let late = SessionRecord { id: SessionId([8; 16]), repo: repo().name, started_ms: 40, lease_until_ms: 4_000 };
        assert!(matches!(run(&t, Command::BeginSession { session: late }), CommandResult::Rejected(_)));
    }

    #[test]
    fn a_renewed_lease_keeps_the_session_committing() {
        let t = tree();
        let session = ready_to_snapshot(&t);
        let renew = SessionRecord { id: session, repo: repo().name, started_ms: 90, lease_until_ms: 200 };
        assert_eq!(run(&t, Command::BeginSession { session: renew }), CommandResult::Ok);
        let snap = Command::CommitSnapshot { session, now_ms: 150, snapshot: snapshot(3, repo().name) };
        assert_eq!(run(&t, snap), CommandResult::Ok);
    }

    #[test]
    fn condemn_judges_leases_by_the_log_clock() {
        let t = tree();
        let session = ready_to_snapshot(&t);
        let name = repo().name;
        let condemn = |time_ms| Command::Condemn {
            repo: name.clone(),
            chunks: vec![ChunkId([9; 32])],
            marked_from: vec![],
            time_ms,
        };
        // Live at the command's time: refused.
        let r = run(&t, condemn(99));
        assert!(matches!(r, CommandResult::Rejected(Rejection::BackupRunning { .. })), "{r:?}");
        // A commit stamped later moves the log clock past the lease (and is
        // refused); a condemnation from a leader whose clock is behind is then
        // judged at the log's time, so it agrees that the session is over.
        let late = Command::CommitSnapshot { session, now_ms: 100, snapshot: snapshot(3, name.clone()) };
        assert!(matches!(run(&t, late), CommandResult::Rejected(Rejection::SessionExpired { .. })));
        assert_eq!(run(&t, condemn(60)), CommandResult::Ok);
        // And what it condemned stays condemned from the session's view: the
        // session can no longer commit a snapshot on top of it.
        let snap = Command::CommitSnapshot { session, now_ms: 60, snapshot: snapshot(3, name.clone()) };
        assert!(matches!(run(&t, snap), CommandResult::Rejected(Rejection::SessionExpired { .. })));
    }

    #[test]
    fn key_slots_change_by_compare_and_set() {
        let t = tree();
        let r = repo();
        assert_eq!(run(&t, Command::CreateRepo { repo: r.clone() }), CommandResult::Ok);
        let set = |expected_version, slots: Vec<Vec<u8>>| {
            run(&t, Command::SetKeySlots { repo: r.name.clone(), expected_version, slots })
        };
        let slots_of = || kv::get::<RepoRecord>(&t, "repo", &kv::repo_key(&r.name)).unwrap().unwrap().key_slots;
        assert_eq!(key_slots_version(&t, &r.name).unwrap(), 0);

        // Two agents both read version 0 and each add a slot: the first
        // lands, the second is refused, not lost silently.
        let a = vec![vec![1, 2], vec![3]];
        let b = vec![vec![1, 2], vec![4]];
        assert_eq!(set(0, a.clone()), CommandResult::Ok);
        assert_eq!(
            set(0, b),
            CommandResult::Rejected(Rejection::KeySlotsChanged { repo: r.name.clone(), expected: 0, current: 1 })
        );
        assert_eq!(slots_of(), a);
        assert_eq!(key_slots_version(&t, &r.name).unwrap(), 1);
        // The first one's retry is a repeat, not a conflict.
        assert_eq!(set(0, a.clone()), CommandResult::AlreadyApplied);
        assert_eq!(key_slots_version(&t, &r.name).unwrap(), 1);

        // The last slot cannot go; an unknown repository is refused.
        assert_eq!(set(1, vec![]), CommandResult::Rejected(Rejection::LastKeySlot(r.name.clone())));
        assert_eq!(set(1, vec![vec![3]]), CommandResult::Ok);
        assert_eq!(slots_of(), vec![vec![3]]);
        let other = RepoName::new("other").unwrap();
        assert_eq!(
            run(&t, Command::SetKeySlots { repo: other.clone(), expected_version: 0, slots: vec![vec![1]] }),
            CommandResult::Rejected(Rejection::UnknownRepo(other))
        );
        // The rest of the record is untouched.
        let rec = kv::get::<RepoRecord>(&t, "repo", &kv::repo_key(&r.name)).unwrap().unwrap();
        assert_eq!((rec.params, rec.created_ms), (r.params, r.created_ms));
    }

    #[test]
    fn a_tagged_snapshot_moves_its_sources_recovery_point() {
        let t = tree();
        let session = ready_to_snapshot(&t);
        let source = coffer_types::SourceRecord {
            repo: repo().name,
            name: "db".into(),
            host: "h".into(),
            strategy: "scheduled".into(),
            rpo_target_ms: 0,
            report_interval_ms: 1000,
            reported_ms: 0,
            last_ok_end_ms: Some(1),
            last_run: None,
            next_run_ms: None,
            runs_ok: 0,
            runs_failed: 0,
        };
        assert_eq!(run(&t, Command::ReportSource { source, time_ms: 5 }), CommandResult::Ok);
        let mut snap = snapshot(3, repo().name);
        snap.tags = vec![coffer_types::source_tag("db")];
        snap.end_ms = 42;
        assert_eq!(run(&t, Command::CommitSnapshot { session, now_ms: 20, snapshot: snap }), CommandResult::Ok);
        let got = crate::sources::list(&t, Some(&repo().name)).unwrap();
        assert_eq!(got[0].last_ok_end_ms, Some(42), "the commit advanced the source without a report");
        assert_eq!(got[0].reported_ms, 5, "a commit is not a report: staleness is the agent's");
    }

    #[test]
    fn coverage_is_kept_beside_the_snapshot_and_forgotten_with_it() {
        let t = tree();
        let session = ready_to_snapshot(&t);
        let snap = snapshot(3, repo().name);
        let coverage =
            coffer_types::Coverage { files_total: 5, files_protected: 4, skipped_vanished: 1, ..Default::default() };
        let cmd = |snapshot| Command::CommitSnapshotCovered {
            session,
            now_ms: 20,
            snapshot,
            coverage: coffer_types::CoverageRecord::V1(coverage.clone()),
        };
        assert_eq!(run(&t, cmd(snap.clone())), CommandResult::Ok);
        let key = kv::coverage_key(&snap.id);
        let kept: coffer_types::CoverageRecord = kv::get(&t, "coverage", &key).unwrap().unwrap();
        assert_eq!(kept.into_coverage(), coverage);
        // The record's own layout is unchanged: a snapshot with coverage
        // encodes as one without, so records written before still decode.
        let mut with = snap.clone();
        with.stats.coverage = Some(coverage.clone());
        assert_eq!(kv::encode(&with).unwrap(), kv::encode(&snap).unwrap());
        let back: SnapshotRecord = kv::get(&t, "snapshot", &kv::snapshot_key(&snap.id)).unwrap().unwrap();
        assert_eq!(back, snap);
        let forget = Command::Forget { repo: repo().name, snapshots: vec![snap.id], time_ms: 30 };
        assert_eq!(run(&t, forget), CommandResult::Ok);
        assert!(t.get(&key).unwrap().is_none(), "the coverage outlived its snapshot");
    }

    #[test]
    fn a_refused_covered_commit_keeps_no_coverage() {
        let t = tree();
        run(&t, Command::CreateRepo { repo: repo() });
        let session = begin(&t, &repo().name, 0, 1000);
        let snap = snapshot(3, repo().name);
        let cmd = Command::CommitSnapshotCovered {
            session,
            now_ms: 2,
            snapshot: snap.clone(),
            coverage: coffer_types::CoverageRecord::V1(Default::default()),
        };
        assert!(matches!(run(&t, cmd), CommandResult::Rejected(Rejection::RootNotIndexed { .. })));
        assert!(t.get(kv::coverage_key(&snap.id)).unwrap().is_none());
    }
}
