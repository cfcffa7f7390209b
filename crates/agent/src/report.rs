//! The registry reporter: tells the catalog's source registry what the
//! agent knows of each of its sources (policy, last run, counters, next
//! run), after every run of a source and at least once per
//! `report_interval`, so that `coffer sources` can judge every source's
//! recovery point, and can tell a silent agent (stale) from a healthy one.
//!
//! The invariant: reporting never stands in the way of a backup. The
//! reporter is its own worker; a report that fails is logged as a warning
//! and sent again at its next turn (the source stays marked as owing one),
//! and nothing of it reaches a source's runs or its state file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_proto::pb;
use coffer_types::{BackupKind, SnapshotId, SourceRecord, SourceRun};
use coffer_worker::{StopSignal, Worker, WorkerState};
use tokio::sync::Notify;

use crate::config::SourceConfig;
use crate::daemon::Shared;
use crate::state::{RunRecord, SourceState};

/// Longest error text a report carries (the registry refuses more).
pub const MAX_ERROR_BYTES: usize = 4096;

/// How a source is protected, as the registry names it: `scheduled`,
/// `on_change`, `realtime`, joined with `+` when several apply; a source
/// with none of them runs only when triggered.
pub fn strategy(s: &SourceConfig) -> String {
    let mut parts = Vec::new();
    if !s.schedules.is_empty() {
        parts.push("scheduled");
    }
    if s.on_change.is_some() {
        parts.push("on_change");
    }
    if s.realtime.is_some() {
        parts.push("realtime");
    }
    if parts.is_empty() {
        "triggered".into()
    } else {
        parts.join("+")
    }
}

/// The recovery-point target of a source: its `rpo`, or for a real-time
/// source without one its `max_lag` (what it promises); `None` for none.
pub fn rpo_target(s: &SourceConfig) -> Option<Duration> {
    s.rpo.or(s.realtime)
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The registry's view of a run the agent recorded.
fn run_of(r: &RunRecord) -> SourceRun {
    let ok = r.result == "ok";
    SourceRun {
        started_ms: r.time_ms,
        finished_ms: r.end_ms,
        kind: r.kind.parse().unwrap_or(BackupKind::Incremental),
        snapshot: r.snapshot_id.as_deref().and_then(|s| s.parse::<SnapshotId>().ok()),
        ok,
        error: cut(r.error.as_deref().unwrap_or(""), MAX_ERROR_BYTES).to_string(),
        bytes: r.bytes,
    }
}

/// The report of one source: a pure function of its configuration, its
/// state and its next run (the leader stamps `reported_ms`).
pub fn record(
    cfg: &SourceConfig,
    host: &str,
    report_interval: Duration,
    st: &SourceState,
    next_run_ms: Option<u64>,
) -> SourceRecord {
    SourceRecord {
        repo: cfg.repo.clone(),
        name: cfg.name.clone(),
        host: host.to_string(),
        strategy: strategy(cfg),
        rpo_target_ms: rpo_target(cfg).map_or(0, |d| d.as_millis() as u64),
        report_interval_ms: report_interval.as_millis() as u64,
        reported_ms: 0,
        last_ok_end_ms: st.newest_ok_end_ms,
        last_run: st.last_run.as_ref().map(run_of),
        next_run_ms,
        runs_ok: st.runs_ok,
        runs_failed: st.runs_failed,
    }
}

/// The reporter worker of one configuration generation.
pub struct Reporter {
    sources: Vec<Arc<Shared>>,
    host: String,
    interval: Duration,
    wake: Arc<Notify>,
    /// When each source was last reported successfully.
    last_ok: Vec<Option<Instant>>,
    next_at: Option<Instant>,
    sent: u64,
    failed: u64,
}

impl Reporter {
    /// `wake` is the one the sources' `owe_report` notifies.
    pub fn new(sources: Vec<Arc<Shared>>, host: String, interval: Duration, wake: Arc<Notify>) -> Self {
        let n = sources.len();
        Reporter { sources, host, interval, wake, last_ok: vec![None; n], next_at: None, sent: 0, failed: 0 }
    }

    async fn send(&self, s: &Shared) -> Result<(), String> {
        let rec = record(&s.config, &self.host, self.interval, &s.state(), s.next_run_ms());
        let req = pb::ReportSourceRequest { source: Some(pb::SourceInfo::from(&rec)) };
        s.meta
            .call("report source", |mut c| {
                let req = req.clone();
                async move { c.report_source(req).await }
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Worker for Reporter {
    type Error = String;

    fn name(&self) -> String {
        "registry-reporter".into()
    }

    async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, String> {
        // Every source whose run finished since is owed a report now,
        // beside those whose interval is up.
        let now = Instant::now();
        let mut next = now + self.interval;
        let mut any_failed = false;
        let sources = self.sources.clone();
        for (i, s) in sources.iter().enumerate() {
            let owed = s.take_report_owed();
            let due = self.last_ok[i].is_none_or(|t| now.duration_since(t) >= self.interval);
            if !owed && !due {
                next = next.min(self.last_ok[i].map_or(now, |t| t + self.interval));
                continue;
            }
            match self.send(s).await {
                Ok(()) => {
                    self.sent += 1;
                    self.last_ok[i] = Some(Instant::now());
                }
                Err(e) => {
                    // Warned, and owed again: retried at the next turn.
                    self.failed += 1;
                    any_failed = true;
                    s.owe_report();
                    tracing::warn!(source = %s.config.name, error = %e, "report to the source registry failed; retried later");
                }
            }
        }
        // A failed report is retried within a second or two, not a whole
        // interval later, but never in a tight loop.
        if any_failed {
            next = next.min(Instant::now() + Duration::from_secs(1).min(self.interval));
        }
        self.next_at = Some(next);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let at = self.next_at.unwrap_or_else(Instant::now);
        let _ = tokio::time::timeout_at(at.into(), self.wake.notified()).await;
    }

    fn progress(&self) -> Vec<(&'static str, u64)> {
        vec![("sent", self.sent), ("failed", self.failed)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_the_policy_and_passes_the_registry_checks() {
        let text = "endpoint = [\"a:1\"]\nreport_interval = \"2s\"\n\
            [[source]]\nname = \"docs\"\nrepo = \"r\"\npaths = [\"/tmp\"]\nrpo = \"1h\"\n\
            schedule = { incremental = \"every 15m\" }\non_change = { debounce = \"2s\" }\n";
        let cfg = crate::config::parse(text, std::path::Path::new("agent.toml"), "host-1").unwrap();
        let id = SnapshotId::from_slice(&[7; 16]).unwrap();
        let st = SourceState {
            newest_ok_end_ms: Some(1_000),
            runs_ok: 2,
            runs_failed: 1,
            last_run: Some(RunRecord {
                time_ms: 900,
                end_ms: 1_000,
                kind: "incremental".into(),
                snapshot_id: Some(id.to_string()),
                result: "ok".into(),
                bytes: 42,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = record(&cfg.sources[0], &cfg.host, cfg.report_interval, &st, Some(5_000));
        assert_eq!(r.strategy, "scheduled+on_change");
        assert_eq!(r.rpo_target_ms, 3_600_000);
        assert_eq!(r.report_interval_ms, 2_000);
        assert_eq!(r.host, "host-1");
        let run = r.last_run.clone().unwrap();
        assert!(run.ok);
        assert_eq!(run.snapshot, Some(id));
        assert_eq!(run.bytes, 42);
        // What the leader decodes is what was meant.
        let back = SourceRecord::try_from(pb::SourceInfo::from(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn cut_keeps_char_boundaries_and_the_limit() {
        assert_eq!(cut("abc", 4096), "abc");
        let long = "é".repeat(3000); // 6000 bytes
        let c = cut(&long, MAX_ERROR_BYTES);
        assert!(c.len() <= MAX_ERROR_BYTES && c.len() >= MAX_ERROR_BYTES - 1);
        assert!(long.starts_with(c));
    }

    #[test]
    fn a_failed_run_reports_its_error_cut_and_no_snapshot() {
        let r = RunRecord {
            time_ms: 10,
            end_ms: 20,
            kind: "full".into(),
            snapshot_id: None,
            result: "failed".into(),
            error: Some("x".repeat(10_000)),
            bytes: 0,
            ..Default::default()
        };
        let run = run_of(&r);
        assert!(!run.ok);
        assert_eq!(run.snapshot, None);
        assert_eq!(run.kind, BackupKind::Full);
        assert_eq!(run.error.len(), MAX_ERROR_BYTES);
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retried_soon_and_the_run_stays_recorded() {
        // Nothing listens on port 1: every report fails at once.
        let text = "endpoint = [\"127.0.0.1:1\"]\nreport_interval = \"60s\"\n\
            [[source]]\nname = \"db\"\nrepo = \"r\"\ncommand = \"true\"\n";
        let cfg = crate::config::parse(text, std::path::Path::new("agent.toml"), "host-1").unwrap();
        let meta = coffer_client::MetaClient::new(&cfg.endpoint, Duration::from_millis(200)).unwrap();
        let st = SourceState {
            runs_ok: 1,
            newest_ok_end_ms: Some(2_000),
            last_run: Some(RunRecord {
                time_ms: 1_000,
                end_ms: 2_000,
                kind: "full".into(),
                result: "ok".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared::new(cfg.sources[0].clone(), st.clone(), Arc::new(meta), wake.clone()));
        // A run just finished: the source owes the registry a report.
        shared.owe_report();
        let mut r = Reporter::new(vec![shared.clone()], cfg.host.clone(), cfg.report_interval, wake);
        let stop = coffer_worker::Runner::new().stop_signal();
        for attempt in 1..=2u64 {
            let before = Instant::now();
            assert!(matches!(r.work(&stop).await, Ok(WorkerState::Idle)), "a failed report is not the worker's error");
            assert_eq!(r.progress(), vec![("sent", 0), ("failed", attempt)]);
            // Still owed, and the next turn comes within a second or two,
            // not a whole report_interval later.
            assert!(shared.take_report_owed(), "the failed report is no longer owed");
            shared.owe_report();
            let next = r.next_at.unwrap();
            assert!(next <= Instant::now() + Duration::from_secs(2) && next >= before, "{next:?}");
            // The run stays recorded locally, whatever the registry says.
            assert_eq!(shared.state(), st);
        }
    }
}
