//! Applying retention: forgetting snapshot records and holding them.
//!
//! Holds live under their own key prefix, `h/<snapshot id>` → `until_ms`
//! (u64), beside the snapshot records they protect, so the snapshot record's
//! layout stays as it is. The invariant kept here: a forget never removes a
//! snapshot whose hold lasts beyond the time stamped in the command; such a
//! forget is refused as a whole, the same way on every replica, because the
//! time comes from the command and never from a clock (invariant 5).
//!
//! Holds are write-once, like S3 Object Lock in compliance mode: while a
//! hold lasts (its end is after the log clock), nobody can shorten or lift
//! it, whatever their role; it can only be extended. Once it has ended it
//! may be set anew or cleared. The time it is judged by is the log clock
//! (`m/clock`), which the command's own leader time advances, so every
//! replica decides alike.
//!
//! Forgetting removes only the record (and its hold): the chunks, trees and
//! reference list it pointed at stay until garbage collection proves that
//! no other snapshot references them.

use coffer_types::{RepoName, SnapshotId, SnapshotRecord};

use crate::command::{CommandResult, Rejection};
use crate::error::MetaError;
use crate::kv::{self, Txn};

/// The key prefix of holds.
pub(crate) const HOLD_PREFIX: &[u8] = b"h/";

pub(crate) fn hold_key(id: &SnapshotId) -> Vec<u8> {
    [HOLD_PREFIX, id.as_bytes().as_slice()].concat()
}

/// Removes the records of `snapshots` that exist in `repo`. Ids that do not
/// exist (already forgotten) are skipped, so a retried forget is
/// `AlreadyApplied`; an id of another repository is refused.
pub(crate) fn forget(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    snapshots: &[SnapshotId],
    time_ms: u64,
) -> Result<CommandResult, MetaError> {
    let mut present = Vec::new();
    for id in snapshots {
        let Some(rec) = txn.get::<SnapshotRecord>("snapshot", &kv::snapshot_key(id))? else { continue };
        if rec.repo != *repo {
            return Ok(CommandResult::Rejected(Rejection::UnknownSnapshot(*id)));
        }
        if let Some(until_ms) = txn.get::<u64>("hold", &hold_key(id))? {
            if until_ms > time_ms {
                return Ok(CommandResult::Rejected(Rejection::SnapshotHeld { snapshot: *id, until_ms }));
            }
        }
        if !present.contains(id) {
            present.push(*id);
        }
    }
    if present.is_empty() {
        return Ok(CommandResult::AlreadyApplied);
    }
    for id in &present {
        txn.remove(kv::snapshot_key(id));
        txn.remove(kv::coverage_key(id));
        txn.remove(hold_key(id));
    }
    txn.add_count("snapshots", -(present.len() as i64))?;
    Ok(CommandResult::Ok)
}

/// Sets the hold of an existing snapshot of `repo`; `until_ms` 0 clears it.
/// A hold that lasts beyond `now` (the log clock) only ever grows.
pub(crate) fn set_hold(
    txn: &mut Txn<'_>,
    repo: &RepoName,
    snapshot: SnapshotId,
    until_ms: u64,
    now: u64,
) -> Result<CommandResult, MetaError> {
    match txn.get::<SnapshotRecord>("snapshot", &kv::snapshot_key(&snapshot))? {
        Some(rec) if rec.repo == *repo => {}
        _ => return Ok(CommandResult::Rejected(Rejection::UnknownSnapshot(snapshot))),
    }
    let key = hold_key(&snapshot);
    let current = txn.get::<u64>("hold", &key)?;
    if let Some(current) = current.filter(|&c| c > now) {
        if until_ms < current {
            return Ok(CommandResult::Rejected(Rejection::HoldIsWriteOnce {
                snapshot,
                until_ms: current,
                requested_ms: until_ms,
            }));
        }
    }
    if until_ms == 0 {
        if current.is_none() {
            return Ok(CommandResult::AlreadyApplied);
        }
        txn.remove(key);
        return Ok(CommandResult::Ok);
    }
    if current == Some(until_ms) {
        return Ok(CommandResult::AlreadyApplied);
    }
    txn.put(key, &until_ms)?;
    Ok(CommandResult::Ok)
}

/// Every hold of `repo`'s snapshots, as (snapshot, until_ms), read from the
/// state machine (the caller makes the read linearizable).
pub(crate) fn holds_of(tree: &crate::store::Tree, repo: &RepoName) -> Result<Vec<(SnapshotId, u64)>, MetaError> {
    let mut out = Vec::new();
    for kv_pair in tree.scan_prefix(HOLD_PREFIX) {
        let (k, v) = kv_pair?;
        let Some(Ok(id)) = k.strip_prefix(HOLD_PREFIX).map(SnapshotId::from_slice) else {
            return Err(MetaError::Codec { what: "hold key", reason: "not a snapshot id".into() });
        };
        let until: u64 = kv::decode("hold", &v)?;
        if let Some(rec) = kv::get::<SnapshotRecord>(tree, "snapshot", &kv::snapshot_key(&id))? {
            if rec.repo == *repo {
                out.push((id, until));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_util::{run, snapshot, tree};

    fn snap(t: &crate::store::Tree, id: u8) -> SnapshotId {
        let rec = snapshot(id, RepoName::new("r").unwrap());
        // Written directly: commit_snapshot's checks are tested in apply.
        crate::test_util::put(t, kv::snapshot_key(&rec.id), &rec);
        rec.id
    }

    #[test]
    fn held_snapshots_refuse_forget_until_the_hold_expires() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let (a, b) = (snap(&t, 1), snap(&t, 2));
        let hold = Command::HoldUntil { repo: repo.clone(), snapshot: a, until_ms: 1_000, time_ms: 10 };
        assert_eq!(run(&t, hold.clone()), CommandResult::Ok);
        assert_eq!(run(&t, hold), CommandResult::AlreadyApplied);
        assert_eq!(holds_of(&t, &repo).unwrap(), vec![(a, 1_000)]);

        // Held: the whole command is refused and nothing is removed.
        let early = Command::Forget { repo: repo.clone(), snapshots: vec![b, a], time_ms: 999 };
        assert!(matches!(run(&t, early), CommandResult::Rejected(Rejection::SnapshotHeld { .. })));
        assert!(t.contains_key(kv::snapshot_key(&b)).unwrap());

        // Another repository's name cannot forget them.
        let other = Command::Forget { repo: RepoName::new("x").unwrap(), snapshots: vec![b], time_ms: 5 };
        assert!(matches!(run(&t, other), CommandResult::Rejected(Rejection::UnknownSnapshot(_))));

        let late = Command::Forget { repo: repo.clone(), snapshots: vec![a, b], time_ms: 1_000 };
        assert_eq!(run(&t, late.clone()), CommandResult::Ok);
        assert_eq!(run(&t, late), CommandResult::AlreadyApplied);
        assert!(!t.contains_key(kv::snapshot_key(&a)).unwrap());
        assert!(holds_of(&t, &repo).unwrap().is_empty());
        assert!(matches!(
            run(&t, Command::HoldUntil { repo, snapshot: a, until_ms: 5, time_ms: 1_000 }),
            CommandResult::Rejected(Rejection::UnknownSnapshot(_))
        ));
    }

    #[test]
    fn a_hold_is_extended_but_never_shortened_or_lifted_before_it_ends() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let a = snap(&t, 1);
        let hold = |until_ms, time_ms| Command::HoldUntil { repo: repo.clone(), snapshot: a, until_ms, time_ms };
        assert_eq!(run(&t, hold(1_000, 10)), CommandResult::Ok);
        // Shorter, or lifted: refused while it lasts, and nothing changes.
        for (until, at) in [(999, 20), (0, 20), (500, 999)] {
            let r = run(&t, hold(until, at));
            assert!(
                matches!(r, CommandResult::Rejected(Rejection::HoldIsWriteOnce { until_ms: 1_000, .. })),
                "{until} at {at}: {r:?}"
            );
            assert_eq!(holds_of(&t, &repo).unwrap(), vec![(a, 1_000)]);
        }
        // The legacy command obeys the same rule.
        let legacy = Command::SetHold { repo: repo.clone(), snapshot: a, until_ms: 0 };
        assert!(matches!(run(&t, legacy), CommandResult::Rejected(Rejection::HoldIsWriteOnce { .. })));
        // Longer: accepted.
        assert_eq!(run(&t, hold(2_000, 30)), CommandResult::Ok);
        assert_eq!(holds_of(&t, &repo).unwrap(), vec![(a, 2_000)]);
        // A leader whose clock is behind the log cannot make it look ended:
        // the log clock went to 999 above.
        assert!(matches!(run(&t, hold(0, 5)), CommandResult::Rejected(_)));
        // Once it has ended (by the log's time), it may be lifted.
        assert_eq!(run(&t, hold(0, 2_000)), CommandResult::Ok);
        assert!(holds_of(&t, &repo).unwrap().is_empty());
    }
}
