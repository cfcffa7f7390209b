//! Disaster-recovery records and the figures computed from them: backup
//! ratio, RPO and worst RPO, RTO, recovery cost, and the verdict per source.
//!
//! Invariant: every figure here is a pure function of records the catalog
//! holds (snapshots, restore / drill / plan-run records, incidents) and of a
//! time passed in, never of a clock read inside, so that the report, the
//! metrics page and the tests compute the same number from the same records.

use serde::{Deserialize, Serialize};

use crate::{RepoName, SnapshotId, SnapshotRecord, TypesError};

/// The tag an agent puts on every snapshot it makes of a named source.
pub const SOURCE_TAG_PREFIX: &str = "source:";

/// Bounds on what one record may carry, checked on every conversion from the
/// wire so that a hostile client cannot bloat the Raft log.
pub const MAX_DR_TEXT: usize = 4_096;
pub const MAX_DR_FAILED_FILES: usize = 100;
pub const MAX_DR_STEPS: usize = 256;

/// What a disaster-recovery record is the record of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum DrKind {
    /// A `coffer restore`: a real recovery of data.
    Restore,
    /// A restore drill: restore into scratch, verify, time.
    Drill,
    /// A recovery plan run (`coffer recover --plan`, or `coffer drill --plan`).
    PlanRun,
}

impl DrKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DrKind::Restore => "restore",
            DrKind::Drill => "drill",
            DrKind::PlanRun => "plan",
        }
    }
}

impl std::str::FromStr for DrKind {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "restore" => Ok(DrKind::Restore),
            "drill" => Ok(DrKind::Drill),
            "plan" => Ok(DrKind::PlanRun),
            _ => Err(TypesError::UnknownEnum { what: "dr record kind", value: s.to_string() }),
        }
    }
}

/// One step of a recovery plan run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    /// `ok`, `failed`, `timeout` or `skipped` (a dependency failed).
    pub result: String,
    pub duration_ms: u64,
    pub detail: String,
}

/// A restore, a drill or a plan run, as recorded in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrRecord {
    /// Drawn by the recording client; with `started_ms` it orders and names
    /// the record, and a retried record with the same id is a repeat.
    pub id: u64,
    pub kind: DrKind,
    pub repo: RepoName,
    /// The source the snapshot is of (`source_key`), or the plan's name.
    pub source: String,
    pub snapshot: Option<SnapshotId>,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub files: u64,
    /// Restore: it completed; drill: every checked file matched; plan: every
    /// step succeeded.
    pub ok: bool,
    /// Why not, when not `ok`.
    pub reason: String,
    /// Files the drill found missing, unreadable or different (at most
    /// `MAX_DR_FAILED_FILES`; `failed_count` is how many there were).
    pub failed_files: Vec<String>,
    pub failed_count: u64,
    /// Some pack had to be reconstructed from parity.
    pub reconstructed: bool,
    /// Resources spent, as far as the recording agent knows them.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_cross_site: u64,
    pub steps: Vec<StepRecord>,
}

impl DrRecord {
    /// Checks the bounds (see `MAX_DR_*`); the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let texts = [("source", &self.source), ("reason", &self.reason)];
        for (field, t) in texts {
            if t.len() > MAX_DR_TEXT {
                return Err(format!("{field}: {} bytes, at most {MAX_DR_TEXT}", t.len()));
            }
        }
        if self.failed_files.len() > MAX_DR_FAILED_FILES {
            return Err(format!("failed_files: {} entries, at most {MAX_DR_FAILED_FILES}", self.failed_files.len()));
        }
        if self.failed_files.iter().any(|f| f.len() > MAX_DR_TEXT) {
            return Err(format!("failed_files: an entry over {MAX_DR_TEXT} bytes"));
        }
        if self.steps.len() > MAX_DR_STEPS {
            return Err(format!("steps: {} entries, at most {MAX_DR_STEPS}", self.steps.len()));
        }
        for s in &self.steps {
            if s.name.len() > MAX_DR_TEXT || s.result.len() > 64 || s.detail.len() > MAX_DR_TEXT {
                return Err(format!("steps: step {:?} has an over-long field", s.name));
            }
        }
        Ok(())
    }

    /// The measured recovery time of this restore, drill or plan run.
    pub fn rto_s(&self) -> f64 {
        self.duration_ms as f64 / 1000.0
    }

    /// Bytes per second of a completed restore or drill (None for a plan run
    /// or when nothing measurable was moved).
    pub fn throughput(&self) -> Option<f64> {
        (self.kind != DrKind::PlanRun && self.ok && self.bytes > 0 && self.duration_ms > 0)
            .then_some(self.bytes as f64 * 1000.0 / self.duration_ms as f64)
    }
}

/// The source a snapshot belongs to: the name in its `source:NAME` tag (an
/// agent's snapshots), or `host:path` (a manual `coffer backup`).
pub fn source_key(snap: &SnapshotRecord) -> String {
    snap.tags
        .iter()
        .find_map(|t| t.strip_prefix(SOURCE_TAG_PREFIX))
        .map(str::to_string)
        .unwrap_or_else(|| snap.source.to_string())
}

/// Backup ratio of one snapshot: the share of the files the source held that
/// the snapshot protects. `SnapshotStats.errors` counts the entries the walk
/// could not read (skipped); bytes of skipped files are unknown, so the ratio
/// is by files. An empty source is fully protected.
pub fn backup_ratio(files_protected: u64, files_skipped: u64) -> f64 {
    let total = files_protected.saturating_add(files_skipped);
    if total == 0 {
        1.0
    } else {
        files_protected as f64 / total as f64
    }
}

/// Backup ratio from a snapshot's coverage: what it protects over what the
/// source held, in bytes or in files (`Coverage`). A source that held
/// nothing is fully protected.
pub fn coverage_ratio(protected: u64, total: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        protected.min(total) as f64 / total as f64
    }
}

/// Current RPO: the data written since the newest verified snapshot ended is
/// what a failure now would lose. None when there is no verified snapshot.
pub fn rpo_ms(now_ms: u64, newest_verified_end_ms: Option<u64>) -> Option<u64> {
    newest_verified_end_ms.map(|end| now_ms.saturating_sub(end))
}

/// The worst RPO seen in the window `[since_ms, now_ms]`, from the end times
/// of the source's verified snapshots. At any moment the RPO is the time
/// since the last snapshot ended, so it peaks just before each next snapshot
/// ends, and now: the worst is the longest gap ending inside the window, or
/// the open gap up to `now_ms`. A gap that began before the window counts
/// whole (the exposure was real at its end). None without any snapshot.
pub fn worst_rpo_ms(ends_ms: &[u64], since_ms: u64, now_ms: u64) -> Option<u64> {
    let mut ends: Vec<u64> = ends_ms.iter().copied().filter(|&e| e <= now_ms).collect();
    ends.sort_unstable();
    let last = *ends.last()?;
    let mut worst = now_ms.saturating_sub(last);
    for w in ends.windows(2) {
        if w[1] >= since_ms {
            worst = worst.max(w[1] - w[0]);
        }
    }
    Some(worst)
}

/// The parts of a cluster incident's recovery time, counted from the moment
/// of failure (the node's last heartbeat): detection, then rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IncidentTimes {
    pub detect_ms: u64,
    /// From failure to redundancy back; None while the rebuild runs.
    pub recovery_ms: Option<u64>,
}

/// `last_seen`, `detected` and rebuild `finished` (0 while not finished).
pub fn incident_times(last_seen_ms: u64, detected_ms: u64, rebuild_finished_ms: u64, open: bool) -> IncidentTimes {
    let detect_ms = detected_ms.saturating_sub(last_seen_ms);
    let recovery_ms = if open {
        None
    } else {
        // An incident closed without any rebuild (the node came back) took
        // until detection at least.
        Some(rebuild_finished_ms.max(detected_ms).saturating_sub(last_seen_ms))
    };
    IncidentTimes { detect_ms, recovery_ms }
}

/// Prices for the cost figure, all optional, in one currency unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub per_byte_read: f64,
    pub per_byte_written: f64,
    pub per_byte_cross_site: f64,
    pub per_node_hour: f64,
}

/// The resource cost of a recovery: bytes read, written and sent across
/// sites, and node-hours (nodes busy × duration).
pub fn recovery_cost(p: &Prices, read: u64, written: u64, cross_site: u64, nodes: u64, duration_ms: u64) -> f64 {
    let node_hours = nodes as f64 * duration_ms as f64 / 3_600_000.0;
    read as f64 * p.per_byte_read
        + written as f64 * p.per_byte_written
        + cross_site as f64 * p.per_byte_cross_site
        + node_hours * p.per_node_hour
}

/// An estimate of how long restoring `bytes` takes, from the measured
/// throughput of past restores and drills (their total bytes over their
/// total time). None without any measurement.
pub fn estimate_restore_ms(bytes: u64, past: &[DrRecord]) -> Option<u64> {
    let (b, ms) = past
        .iter()
        .filter(|r| r.throughput().is_some())
        .fold((0u128, 0u128), |(b, ms), r| (b + r.bytes as u128, ms + r.duration_ms as u128));
    if b == 0 || ms == 0 {
        return None;
    }
    Some((bytes as u128 * ms / b) as u64)
}

/// The one-line verdict on a source, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    DrillFailing,
    RpoExceeded,
    UnprotectedFiles,
    NeverDrilled,
    Ok,
}

impl Verdict {
    /// The report's contract strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::RpoExceeded => "rpo exceeded",
            Verdict::DrillFailing => "drill failing",
            Verdict::NeverDrilled => "never drilled",
            Verdict::UnprotectedFiles => "unprotected files",
        }
    }
}

/// The verdict from the figures: a failing last drill is worst (the data may
/// not come back at all), then an RPO over its target (or no verified
/// snapshot at all), then files left unprotected, then a source never
/// drilled.
pub fn verdict(
    last_drill_ok: Option<bool>,
    rpo_ms: Option<u64>,
    rpo_target_ms: Option<u64>,
    files_skipped: u64,
) -> Verdict {
    if last_drill_ok == Some(false) {
        return Verdict::DrillFailing;
    }
    match (rpo_ms, rpo_target_ms) {
        (None, _) => return Verdict::RpoExceeded,
        (Some(r), Some(t)) if r > t => return Verdict::RpoExceeded,
        _ => {}
    }
    if files_skipped > 0 {
        return Verdict::UnprotectedFiles;
    }
    if last_drill_ok.is_none() {
        return Verdict::NeverDrilled;
    }
    Verdict::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: DrKind, ok: bool, bytes: u64, duration_ms: u64) -> DrRecord {
        DrRecord {
            id: 1,
            kind,
            repo: RepoName::new("r").unwrap(),
            source: "s".into(),
            snapshot: None,
            started_ms: 0,
            duration_ms,
            bytes,
            files: 1,
            ok,
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
    fn ratio_by_files() {
        assert_eq!(backup_ratio(0, 0), 1.0);
        assert_eq!(backup_ratio(3, 1), 0.75);
        assert_eq!(backup_ratio(0, 5), 0.0);
    }

    #[test]
    fn coverage_ratio_of_bytes_or_files() {
        assert_eq!(coverage_ratio(0, 0), 1.0);
        assert_eq!(coverage_ratio(750, 1_000), 0.75);
        assert_eq!(coverage_ratio(0, 1_000), 0.0);
        // A record that claims more than the total is capped, never above 1.
        assert_eq!(coverage_ratio(2_000, 1_000), 1.0);
    }

    #[test]
    fn rpo_grows_with_the_clock() {
        assert_eq!(rpo_ms(10_000, Some(4_000)), Some(6_000));
        assert_eq!(rpo_ms(20_000, Some(4_000)), Some(16_000));
        assert_eq!(rpo_ms(20_000, None), None);
        // A clock behind the record never gives a negative RPO.
        assert_eq!(rpo_ms(1_000, Some(4_000)), Some(0));
    }

    #[test]
    fn worst_rpo_survives_later_good_backups() {
        // Hourly, then a 3 h outage, then hourly again.
        let h = 3_600_000;
        let ends = [h, 2 * h, 5 * h, 6 * h, 7 * h];
        assert_eq!(worst_rpo_ms(&ends, 0, 7 * h + 10), Some(3 * h));
        // A window that starts after the outage no longer sees it.
        assert_eq!(worst_rpo_ms(&ends, 5 * h + 1, 7 * h + 10), Some(h));
        // The open gap counts: the agent stopped.
        assert_eq!(worst_rpo_ms(&ends, 0, 12 * h), Some(5 * h));
        assert_eq!(worst_rpo_ms(&[], 0, 12 * h), None);
        // Unsorted input and ends after now are handled.
        assert_eq!(worst_rpo_ms(&[5 * h, h, 99 * h], 0, 6 * h), Some(4 * h));
    }

    #[test]
    fn incident_parts() {
        let t = incident_times(1_000, 11_000, 41_000, false);
        assert_eq!(t, IncidentTimes { detect_ms: 10_000, recovery_ms: Some(40_000) });
        assert_eq!(incident_times(1_000, 11_000, 0, true).recovery_ms, None);
        // Closed without a rebuild: recovered when detected (the node was back).
        assert_eq!(incident_times(1_000, 11_000, 0, false).recovery_ms, Some(10_000));
    }

    #[test]
    fn cost_adds_every_resource() {
        let p = Prices { per_byte_read: 1.0, per_byte_written: 2.0, per_byte_cross_site: 10.0, per_node_hour: 100.0 };
        assert_eq!(recovery_cost(&p, 5, 3, 1, 2, 1_800_000), 5.0 + 6.0 + 10.0 + 100.0);
        assert_eq!(recovery_cost(&Prices::default(), 5, 3, 1, 2, 1_800_000), 0.0);
    }

    #[test]
    fn estimate_from_measured_throughput() {
        let past = [
            record(DrKind::Restore, true, 1_000, 1_000),
            record(DrKind::Drill, true, 3_000, 1_000),
            // Failed runs and plan runs do not count.
            record(DrKind::Restore, false, 1, 1_000_000),
            record(DrKind::PlanRun, true, 1, 1_000_000),
        ];
        // 4,000 bytes in 2 s: 2,000 B/s.
        assert_eq!(estimate_restore_ms(10_000, &past), Some(5_000));
        assert_eq!(estimate_restore_ms(10_000, &[]), None);
    }

    #[test]
    fn verdict_worst_first() {
        let h = Some(3_600_000);
        assert_eq!(verdict(Some(true), Some(10), h, 0), Verdict::Ok);
        assert_eq!(verdict(Some(false), Some(10), h, 3), Verdict::DrillFailing);
        assert_eq!(verdict(Some(true), Some(4_000_000), h, 3), Verdict::RpoExceeded);
        assert_eq!(verdict(Some(true), None, None, 0), Verdict::RpoExceeded);
        assert_eq!(verdict(Some(true), Some(10), None, 2), Verdict::UnprotectedFiles);
        assert_eq!(verdict(None, Some(10), h, 0), Verdict::NeverDrilled);
        assert_eq!(Verdict::DrillFailing.as_str(), "drill failing");
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = record(DrKind::Drill, false, 0, 0);
        assert!(r.validate().is_ok());
        r.failed_files = vec!["f".into(); MAX_DR_FAILED_FILES + 1];
        assert!(r.validate().unwrap_err().starts_with("failed_files"));
        r.failed_files.clear();
        r.reason = "x".repeat(MAX_DR_TEXT + 1);
        assert!(r.validate().unwrap_err().starts_with("reason"));
    }

    #[test]
    fn source_key_prefers_the_agent_tag() {
        let mut s = SnapshotRecord {
            id: SnapshotId([1; 16]),
            repo: RepoName::new("r").unwrap(),
            source: crate::Source { host: "h".into(), path: "/p".into() },
            kind: crate::BackupKind::Full,
            parent: None,
            start_ms: 0,
            end_ms: 0,
            root: crate::ChunkId([0; 32]),
            stats: Default::default(),
            tags: vec!["x".into()],
            refs_pack: crate::PackId([0; 16]),
            refs_count: 0,
        };
        assert_eq!(source_key(&s), "h:/p");
        s.tags.push("source:db".into());
        assert_eq!(source_key(&s), "db");
    }
}
