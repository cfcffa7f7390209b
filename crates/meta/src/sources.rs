//! The source registry in the state machine: one record per repository and
//! source name (`o/<repo> 0x00 <name>`), written by the agent that protects
//! the source (`ReportSource`) and by every snapshot committed for it.
//!
//! A report replaces what the agent says of itself (policy, last run, next
//! run, counters) and is stamped with the leader's time, which is what
//! staleness is judged by. The end of the newest snapshot only moves
//! forward: a commit of a snapshot tagged `source:<name>` advances it in
//! the same `apply`, so the recovery point the catalog shows is that of
//! what was committed, even if the agent died before it could report, and
//! a late or repeated report can never make it look newer than it is.

use coffer_types::{source_of_tags, RepoName, SnapshotRecord, SourceRecord};

use crate::command::{CommandResult, Rejection};
use crate::error::MetaError;
use crate::kv::{self, Txn};

pub(crate) fn repo_prefix(repo: &RepoName) -> Vec<u8> {
    [kv::SOURCE_PREFIX, repo.as_str().as_bytes(), &[0]].concat()
}

pub(crate) fn source_key(repo: &RepoName, name: &str) -> Vec<u8> {
    [repo_prefix(repo).as_slice(), name.as_bytes()].concat()
}

/// Applies a report made at the leader's `time_ms`.
pub(crate) fn report(txn: &mut Txn<'_>, mut source: SourceRecord, time_ms: u64) -> Result<CommandResult, MetaError> {
    if !txn.contains(&kv::repo_key(&source.repo))? {
        return Ok(CommandResult::Rejected(Rejection::UnknownRepo(source.repo)));
    }
    let key = source_key(&source.repo, &source.name);
    let existing = txn.get::<SourceRecord>("source", &key)?;
    source.reported_ms = time_ms;
    if let Some(old) = &existing {
        source.last_ok_end_ms = source.last_ok_end_ms.max(old.last_ok_end_ms);
        source.reported_ms = source.reported_ms.max(old.reported_ms);
        if *old == source {
            return Ok(CommandResult::AlreadyApplied);
        }
    }
    txn.put(key, &source)?;
    Ok(CommandResult::Ok)
}

/// Drops a source's record; dropping one that is not there is a repeat.
pub(crate) fn remove(txn: &mut Txn<'_>, repo: &RepoName, name: &str) -> Result<CommandResult, MetaError> {
    let key = source_key(repo, name);
    if !txn.contains(&key)? {
        return Ok(CommandResult::AlreadyApplied);
    }
    txn.remove(key);
    Ok(CommandResult::Ok)
}

/// After a snapshot committed: if it was made for a registered source, the
/// source's newest snapshot end moves forward to it.
pub(crate) fn snapshot_committed(txn: &mut Txn<'_>, snapshot: &SnapshotRecord) -> Result<(), MetaError> {
    let Some(name) = source_of_tags(&snapshot.tags) else { return Ok(()) };
    let key = source_key(&snapshot.repo, name);
    let Some(mut source) = txn.get::<SourceRecord>("source", &key)? else { return Ok(()) };
    if source.last_ok_end_ms.is_some_and(|end| end >= snapshot.end_ms) {
        return Ok(());
    }
    source.last_ok_end_ms = Some(snapshot.end_ms);
    txn.put(key, &source)?;
    Ok(())
}

/// Every source of `repo`, or of every repository.
pub(crate) fn list(tree: &crate::store::Tree, repo: Option<&RepoName>) -> Result<Vec<SourceRecord>, MetaError> {
    let prefix = repo.map(repo_prefix).unwrap_or_else(|| kv::SOURCE_PREFIX.to_vec());
    kv::scan(tree, "source", &prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_util::{run, tree};
    use coffer_types::{ErasureParams, RepoRecord};

    fn repo(name: &str) -> Command {
        Command::CreateRepo {
            repo: RepoRecord {
                name: RepoName::new(name).unwrap(),
                params: ErasureParams::new(2, 1).unwrap(),
                key_slots: vec![vec![1]],
                created_ms: 1,
            },
        }
    }

    fn source(repo: &str, name: &str, last_ok: Option<u64>) -> SourceRecord {
        SourceRecord {
            repo: RepoName::new(repo).unwrap(),
            name: name.into(),
            host: "h".into(),
            strategy: "scheduled".into(),
            rpo_target_ms: 1000,
            report_interval_ms: 100,
            reported_ms: 0,
            last_ok_end_ms: last_ok,
            last_run: None,
            next_run_ms: None,
            runs_ok: 0,
            runs_failed: 0,
        }
    }

    fn report_cmd(s: SourceRecord, time_ms: u64) -> Command {
        Command::ReportSource { source: s, time_ms }
    }

    #[test]
    fn reports_are_stamped_and_never_move_the_recovery_point_back() {
        let t = tree();
        let r = run(&t, report_cmd(source("r", "db", Some(50)), 10));
        assert!(matches!(r, CommandResult::Rejected(Rejection::UnknownRepo(_))), "{r:?}");
        run(&t, repo("r"));
        run(&t, repo("q"));
        assert_eq!(run(&t, report_cmd(source("r", "db", Some(50)), 10)), CommandResult::Ok);
        assert_eq!(run(&t, report_cmd(source("r", "db", Some(50)), 10)), CommandResult::AlreadyApplied);
        // A late report that knows only an older snapshot keeps the newer end.
        assert_eq!(run(&t, report_cmd(source("r", "db", Some(20)), 30)), CommandResult::Ok);
        run(&t, report_cmd(source("q", "db", None), 40));
        let got = list(&t, Some(&RepoName::new("r").unwrap())).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].last_ok_end_ms, Some(50));
        assert_eq!(got[0].reported_ms, 30);
        assert_eq!(list(&t, None).unwrap().len(), 2);

        assert_eq!(
            run(&t, Command::RemoveSource { repo: RepoName::new("q").unwrap(), name: "db".into() }),
            CommandResult::Ok
        );
        assert_eq!(
            run(&t, Command::RemoveSource { repo: RepoName::new("q").unwrap(), name: "db".into() }),
            CommandResult::AlreadyApplied
        );
        assert_eq!(list(&t, None).unwrap().len(), 1);
    }
}
