//! Disaster-recovery records in the state machine: every restore, drill and
//! plan run an agent reports (`Command::RecordDr`), kept under
//! `y/<repo> 0x00 <started_ms BE> <id BE>` so that one repository's records
//! scan in time order, a window (`since`) starts at a key, and a page
//! cursor is the tail of the last key served.
//!
//! Invariant: a record is written once. A retry of the same record (same
//! key, same content) is `AlreadyApplied`; another record under the same key
//! is refused, so every replica holds the same history. The figures
//! (`coffer_types::dr`) are computed from these records by the reader.

use coffer_types::{DrRecord, RepoName};

use crate::command::{CommandResult, Rejection};
use crate::error::MetaError;
use crate::kv::{self, Txn};

/// Records one `ListDr` page carries unless the caller asks for fewer, and
/// the most it may ask for: a report over a long history reads page after
/// page, and no answer grows past the message limit.
pub(crate) const DEFAULT_PAGE: usize = 1_000;
pub(crate) const MAX_PAGE: usize = 5_000;

/// A page cursor: the started time and id of the last record of the page
/// before, the tail of its key.
pub(crate) const CURSOR_LEN: usize = 16;

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

/// At most `limit` records of `repo` started at or after `since_ms`, oldest
/// first, after the record `after` names (a cursor, see `CURSOR_LEN`), and
/// the cursor of the next page if more follow.
pub(crate) fn page(
    tree: &crate::store::Tree,
    repo: &RepoName,
    since_ms: u64,
    after: Option<&[u8; CURSOR_LEN]>,
    limit: usize,
) -> Result<(Vec<DrRecord>, Option<[u8; CURSOR_LEN]>), MetaError> {
    let p = prefix(repo);
    let from_since = [p.as_slice(), &since_ms.to_be_bytes()].concat();
    // The key right after the cursor's: the cursor followed by a 0 byte.
    let from_cursor = after.map(|c| [p.as_slice(), c.as_slice(), &[0]].concat());
    let start = match from_cursor {
        Some(c) if c > from_since => c,
        _ => from_since,
    };
    // The prefix ends in 0x00, so the repository's keys end before the same
    // prefix ending in 0x01.
    let mut end = p.clone();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    let mut out = Vec::new();
    let mut last = None;
    for kv in tree.range(start..end) {
        let (k, v) = kv?;
        if out.len() == limit {
            // Another record follows: the next page starts after this one's last.
            return Ok((out, last));
        }
        out.push(kv::decode::<DrRecord>("dr record", &v)?);
        let tail: [u8; CURSOR_LEN] = k[p.len()..]
            .try_into()
            .map_err(|_| MetaError::Codec { what: "dr record key", reason: format!("{} bytes", k.len()) })?;
        last = Some(tail);
    }
    Ok((out, None))
}

/// The newest `limit` records of `repo`, oldest first: what the leader's
/// gauges read on every scrape (a source's last drill is among its newest
/// records), so a scrape costs the same however long the history grows.
pub(crate) fn newest(tree: &crate::store::Tree, repo: &RepoName, limit: usize) -> Result<Vec<DrRecord>, MetaError> {
    let p = prefix(repo);
    let mut end = p.clone();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    let mut out = Vec::new();
    for kv in tree.range(p..end).rev().take(limit) {
        let (_, v) = kv?;
        out.push(kv::decode::<DrRecord>("dr record", &v)?);
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
        let tree = crate::test_util::tree();
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
        let ids = |since, limit| -> Vec<u64> {
            page(&tree, &r, since, None, limit).unwrap().0.iter().map(|x| x.id).collect()
        };
        assert_eq!(ids(0, 100), [1, 2, 3]);
        assert_eq!(ids(15, 100), [2, 3]);
        assert_eq!(page(&tree, &other, 0, None, 100).unwrap().0.len(), 1);
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let tree = crate::test_util::tree();
        let r = RepoName::new("r").unwrap();
        let mut txn = Txn::new(&tree);
        let repo =
            RepoRecord { name: r.clone(), params: ErasureParams::new(3, 2).unwrap(), key_slots: vec![], created_ms: 0 };
        txn.put(kv::repo_key(&r), &repo).unwrap();
        // Two records share a start time: the id breaks the tie.
        for (t, id) in [(10, 1), (20, 2), (20, 3), (30, 4), (40, 5)] {
            assert_eq!(record(&mut txn, rec(&r, t, id)).unwrap(), CommandResult::Ok);
        }
        txn.commit().unwrap();
        for (since, limit, want) in
            [(0, 2, vec![1, 2, 3, 4, 5]), (15, 2, vec![2, 3, 4, 5]), (0, 5, vec![1, 2, 3, 4, 5])]
        {
            let mut got = Vec::new();
            let mut cursor = None;
            let mut pages = 0;
            loop {
                let (recs, next) = page(&tree, &r, since, cursor.as_ref(), limit).unwrap();
                assert!(recs.len() <= limit);
                got.extend(recs.iter().map(|x| x.id));
                pages += 1;
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(got, want, "since {since}, pages of {limit}");
            assert_eq!(pages, want.len().div_ceil(limit), "no empty last page");
        }
    }
}
