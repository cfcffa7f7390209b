//! Garbage collection in the state machine: condemning unreferenced chunks,
//! sweeping them from the index, and dropping packs nothing points into.
//!
//! A condemned chunk keeps its index entry and gains a marker under
//! `x/<repo> 0x00 <chunk id>` holding the condemnation time. Lookups treat it
//! as absent, so new backups upload it again, and a commit that indexes it
//! anew revives it: the new location replaces the old and the marker goes.
//!
//! The invariant kept (no chunk referenced by a committed snapshot is ever
//! deleted) rests on two checks made here, deterministically, from the state
//! and the command's time alone:
//! - `Condemn` is refused unless the repository's snapshots are exactly the
//!   ones the collector marked from (none committed or forgotten since), and
//!   unless no backup session of the repository is open (unexpired) at the
//!   command's time. So a condemned chunk is referenced by no snapshot, and
//!   no session can hold it from a lookup or a parent made before.
//!   Sessions begun afterwards see it as absent and upload it again.
//! - `Sweep` removes only entries that are still condemned, and `DropPacks`
//!   drops only packs that no index entry points into and that are not the
//!   reference list of a snapshot.

use std::collections::HashSet;

use coffer_types::{ChunkId, ChunkLocation, PackId, PackRecord, RepoName, SessionRecord, SnapshotId, SnapshotRecord};

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
pub(crate) fn is_condemned(tree: &sled::Tree, repo: &RepoName, chunk: &ChunkId) -> Result<bool, MetaError> {
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
    Ok(if removed == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
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

pub(crate) fn drop_packs(txn: &mut Txn<'_>, repo: &RepoName, packs: &[PackId]) -> Result<CommandResult, MetaError> {
    // A pack is live while a chunk entry or a snapshot points at it; the
    // index counts those, so this costs the packs named, not the catalog.
    let mut dropped = 0i64;
    for p in packs {
        let key = kv::pack_key(p);
        let Some(rec) = txn.get::<PackRecord>("pack", &key)? else { continue };
        if rec.repo != *repo || crate::index::referenced(txn, p)? {
            continue;
        }
        txn.remove(key);
        dropped += 1;
    }
    txn.add_count("packs", -dropped)?;
    Ok(if dropped == 0 { CommandResult::AlreadyApplied } else { CommandResult::Ok })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::command::Command;
    use crate::test_util::{run, tree};
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
        t.insert(kv::pack_key(&fresh.pack), b"x".to_vec()).unwrap();
        let mut txn = Txn::new(&t);
        assert!(!replace_unplaced(&mut txn, &repo, &chunk, &gone).unwrap());
    }
}
