//! The source registry: what an agent reports of each source it protects
//! (its policy's recovery-point target, its last run, when it will run
//! next), kept in the catalog per repository and source name, so that any
//! machine can list every source of the cluster and see which are within
//! their target and which agents went silent.
//!
//! The recovery point figures here are pure functions of a record and the
//! time of asking; the record itself is what the agent last said, stamped
//! with the leader's time when it was applied (`reported_ms`).

use serde::{Deserialize, Serialize};

use crate::{BackupKind, RepoName, SnapshotId, TypesError};

/// Longest source name, in bytes.
pub const MAX_SOURCE_NAME_BYTES: usize = 128;

/// An agent that has not reported for this many of its own report
/// intervals is stale: its sources may be unprotected without anybody
/// being told by the agent itself.
pub const STALE_AFTER_INTERVALS: u64 = 3;

/// Checks a source name: 1 to `MAX_SOURCE_NAME_BYTES` bytes of ASCII
/// letters, digits, `.`, `_` and `-`, not starting with `.` (it appears in
/// tags, file names of the agent's state and catalog keys).
pub fn check_source_name(name: &str) -> Result<(), TypesError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SOURCE_NAME_BYTES
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TypesError::Invalid {
            what: "source name",
            why: format!(
                "{name:?}: 1 to {MAX_SOURCE_NAME_BYTES} bytes of letters, digits, '.', '_' and '-', not starting with '.'"
            ),
        })
    }
}

/// The tag every snapshot of an agent's source carries, so that snapshots
/// can be grouped per source whatever paths the source names.
pub fn source_tag(name: &str) -> String {
    format!("source:{name}")
}

/// The source name a snapshot's tags give, if it was made for a source.
pub fn source_of_tags(tags: &[String]) -> Option<&str> {
    tags.iter().find_map(|t| t.strip_prefix("source:"))
}

/// One run of a source as the agent saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRun {
    pub started_ms: u64,
    pub finished_ms: u64,
    pub kind: BackupKind,
    /// The snapshot the run committed; `None` for a failed run.
    pub snapshot: Option<SnapshotId>,
    pub ok: bool,
    /// Why a failed run failed; empty when it succeeded.
    pub error: String,
    /// Bytes the source held that the run read (new and unchanged).
    pub bytes: u64,
}

/// What the catalog keeps of one source (`o/<repo> 0x00 <name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub repo: RepoName,
    pub name: String,
    /// The host the agent runs on.
    pub host: String,
    /// How the source is protected: `scheduled`, `on_change`, `realtime`,
    /// or several of them joined with `+`; for people and reports.
    pub strategy: String,
    /// The recovery-point target of the source's policy; 0 for none.
    pub rpo_target_ms: u64,
    /// How often the agent promises to report (it reports after every run
    /// and at least this often); the record is stale after
    /// `STALE_AFTER_INTERVALS` of these without a report.
    pub report_interval_ms: u64,
    /// The leader's time when the latest report was applied.
    pub reported_ms: u64,
    /// The end of the newest snapshot committed for the source.
    pub last_ok_end_ms: Option<u64>,
    pub last_run: Option<SourceRun>,
    /// When the agent will next run it on its own (schedules only).
    pub next_run_ms: Option<u64>,
    pub runs_ok: u64,
    pub runs_failed: u64,
}

impl SourceRecord {
    /// The recovery point at `now_ms`: how much of the source's history a
    /// loss right now would cost, counted from the end of its newest
    /// snapshot; `None` when it has none.
    pub fn rpo_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_ok_end_ms.map(|end| now_ms.saturating_sub(end))
    }

    /// Whether the recovery point is within its target at `now_ms`. A
    /// source with no target is within it once it has a snapshot; one
    /// without any snapshot never is.
    pub fn within_target(&self, now_ms: u64) -> bool {
        match self.rpo_ms(now_ms) {
            None => false,
            Some(_) if self.rpo_target_ms == 0 => true,
            Some(rpo) => rpo <= self.rpo_target_ms,
        }
    }

    /// Whether the agent has been silent too long at `now_ms`.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        let interval = self.report_interval_ms.max(1);
        now_ms.saturating_sub(self.reported_ms) > interval.saturating_mul(STALE_AFTER_INTERVALS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SourceRecord {
        SourceRecord {
            repo: RepoName::new("orders").unwrap(),
            name: "orders-db".into(),
            host: "db-1".into(),
            strategy: "scheduled".into(),
            rpo_target_ms: 3_600_000,
            report_interval_ms: 60_000,
            reported_ms: 1_000_000,
            last_ok_end_ms: Some(900_000),
            last_run: None,
            next_run_ms: None,
            runs_ok: 1,
            runs_failed: 0,
        }
    }

    #[test]
    fn rpo_counts_from_the_newest_snapshot_and_grows_with_the_clock() {
        let r = record();
        assert_eq!(r.rpo_ms(900_000), Some(0));
        assert_eq!(r.rpo_ms(1_900_000), Some(1_000_000));
        assert_eq!(r.rpo_ms(800_000), Some(0), "a clock behind the snapshot never goes negative");
        assert!(r.within_target(900_000 + 3_600_000));
        assert!(!r.within_target(900_001 + 3_600_000));
        let never = SourceRecord { last_ok_end_ms: None, ..record() };
        assert_eq!(never.rpo_ms(5), None);
        assert!(!never.within_target(5), "a source never backed up is not within any target");
        let untargeted = SourceRecord { rpo_target_ms: 0, ..record() };
        assert!(untargeted.within_target(u64::MAX));
    }

    #[test]
    fn an_agent_is_stale_after_three_silent_intervals() {
        let r = record();
        assert!(!r.is_stale(1_000_000 + 180_000));
        assert!(r.is_stale(1_000_000 + 180_001));
        let zero = SourceRecord { report_interval_ms: 0, ..record() };
        assert!(zero.is_stale(1_000_004), "a zero interval does not make a record fresh forever");
    }

    #[test]
    fn names_and_tags() {
        for ok in ["orders-db", "a", "wal.archive_2"] {
            check_source_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "sp ace", &"x".repeat(129)] {
            assert!(check_source_name(bad).is_err(), "{bad:?}");
        }
        let tags = vec!["x".to_string(), source_tag("orders-db")];
        assert_eq!(source_of_tags(&tags), Some("orders-db"));
        assert_eq!(source_of_tags(&tags[..1]), None);
    }
}
