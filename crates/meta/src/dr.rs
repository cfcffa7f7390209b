//! Disaster-recovery records in the state machine: every restore, drill and
//! plan run an agent reports (`Command::RecordDr`), kept under
//! `y/<repo> 0x00 <started_ms BE> <id BE>` so that one repository's records
//! scan in time order and a window (`since`) starts at a key.
//!
//! Invariant: a record is written once. A retry of the same record (same
//! key, same content) is `AlreadyApplied`; another record under the same key
//! is refused, so every replica holds the same history. The figures
//! (`coffer_types::dr`) are computed from these records by the reader.

use coffer_types::{DrRecord, RepoName};

use crate::command::{CommandResult, Rejection};
use crate::error::MetaError;
use crate::kv::{self, Txn};

/// The most records one `ListDr` answer carries: the newest ones win, and a
/// report over a longer history narrows it with `since`.
pub(crate) const MAX_LIST: usize = 10_000;

fn prefix(repo: &RepoName) -> Vec<u8> {
    [b"y/".as_slice(), repo.as_str().as_bytes(), &[0]].concat()
}

fn key(repo: &RepoName, started_ms: u64, id: u64) -> Vec<u8> {
    [prefix(repo).as_slice(), &started_ms.to_be_bytes(), &id.to_be_bytes()].concat()
}

/// Applies `Command::RecordDr`.
pub(crate) fn record(txn: &mut Txn<'_>, record: DrRecord) -> Result<CommandResult, MetaError> {
    if !txn.contains(&kv::repo_key(&record.repo))? {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(record.repo)));
    }
    let k = key(&record.repo, record.started_ms, record.id);
    if let Some(existing) = txn.get::<DrRecord>("dr record", &k)? {
        return Ok(if existing == record {
            CommandResult::AlreadyApplied
        } else {
            CommandResult::Rejected(Rejection::DrRecordConflict(record.id))
        });
    }
    txn.put(k, &record)?;
    Ok(CommandResult::Ok)
}

/// The records of `repo` started at or after `since_ms`, oldest first; at
/// most the newest `MAX_LIST`.
pub(crate) fn list(tree: &sled::Tree, repo: &RepoName, since_ms: u64) -> Result<Vec<DrRecord>, MetaError> {
    let p = prefix(repo);
    let start = [p.as_slice(), &since_ms.to_be_bytes()].concat();
    // The prefix ends in 0x00, so the repository's keys end before the same
    // prefix ending in 0x01.
    let mut end = p.clone();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    let mut out = Vec::new();
    for kv in tree.range(start..end).rev() {
        let (_, v) = kv?;
        out.push(kv::decode::<DrRecord>("dr record", &v)?);
        if out.len() == MAX_LIST {
            break;
        }
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::{DrKind, ErasureParams, RepoRecord};

    fn rec(repo: &RepoName, started_ms: u64, id: u64) -> DrRecord {
        DrRecord {
            id,
            kind: DrKind::Drill,
            repo: repo.clone(),
            source: "db".into(),
            snapshot: None,
            started_ms,
            duration_ms: 10,
            bytes: 1,
            files: 1,
            ok: true,
            reason: String::new(),
            failed_files: vec![],
            failed_count: 0,
            reconstructed: false,
            bytes_read: 0,
            bytes_written: 0,
            bytes_cross_site: 0,
            steps: vec![],
        }
    }

    #[test]
    fn records_are_write_once_and_listed_in_time_order() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let r = RepoName::new("r").unwrap();
        let other = RepoName::new("r2").unwrap();
        let mut txn = Txn::new(&tree);
        assert!(matches!(record(&mut txn, rec(&r, 1, 1)).unwrap(), CommandResult::Rejected(Rejection::UnknownRepo(_))));
        for name in [&r, &other] {
            let repo = RepoRecord {
                name: name.clone(),
                params: ErasureParams::new(3, 2).unwrap(),
                key_slots: vec![],
                created_ms: 0,
            };
            txn.put(kv::repo_key(name), &repo).unwrap();
        }
        for (t, id) in [(30, 3), (10, 1), (20, 2)] {
            assert_eq!(record(&mut txn, rec(&r, t, id)).unwrap(), CommandResult::Ok);
        }
        assert_eq!(record(&mut txn, rec(&other, 5, 9)).unwrap(), CommandResult::Ok);
        txn.commit().unwrap();
        let mut txn = Txn::new(&tree);
        assert_eq!(record(&mut txn, rec(&r, 10, 1)).unwrap(), CommandResult::AlreadyApplied);
        let mut changed = rec(&r, 10, 1);
        changed.ok = false;
        assert_eq!(record(&mut txn, changed).unwrap(), CommandResult::Rejected(Rejection::DrRecordConflict(1)));
        let ids: Vec<u64> = list(&tree, &r, 0).unwrap().iter().map(|x| x.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        let ids: Vec<u64> = list(&tree, &r, 15).unwrap().iter().map(|x| x.id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(list(&tree, &other, 0).unwrap().len(), 1);
    }
}
