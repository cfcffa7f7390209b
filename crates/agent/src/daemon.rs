//! The daemon: one worker per source on a `coffer_worker::Runner`, the
//! registry reporter, the watches, the control socket, and reload on SIGHUP.
//!
//! ```text
//!   schedule slots ─┐
//!   triggers ───────┼──► source worker ──► run (hooks, backup, keep) ──► state file
//!   watch events ───┘        one run at a time per source; a slot that fires meanwhile is skipped and counted
//!   every run, every report_interval ──► reporter ──► Catalog.ReportSource (a failure is a warning, retried)
//!   control socket ──► status (from every worker's shared view) / trigger (queued, optionally awaited)
//! ```
//!
//! The invariants: never two runs of one source at once (one worker runs
//! them in turn); a run is recorded as started, with the slots it consumes,
//! before it begins (see `state`); a trigger is never dropped (every queued
//! trigger is answered by the next run that starts after it was queued).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use coffer_client::MetaClient;
use coffer_types::time::rfc3339;
use coffer_types::BackupKind;
use coffer_worker::{Backoff, StopSignal, Worker, WorkerState};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};

use crate::config::{AgentConfig, SourceConfig, What};
use crate::run::{Credentials, Runner as SourceRunner};
use crate::schedule::{due, KindKey};
use crate::state::{InProgress, RunRecord, SourceState, StateDir};
use crate::watch::{self, ChangeMark, Watch};

/// How long a reload or shutdown waits for runs in flight before aborting
/// them (an aborted run is caught up at the next start, see `state`).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// The credentials the process was given (environment, flags); a source's
/// `password_file` / `token_file` override them.
#[derive(Clone)]
pub struct Defaults {
    pub password: Option<Vec<u8>>,
    pub token: Option<String>,
    pub retry_for: Duration,
}

impl std::fmt::Debug for Defaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defaults").field("retry_for", &self.retry_for).finish_non_exhaustive()
    }
}

/// A queued trigger and who waits for its run.
#[derive(Debug)]
struct Trigger {
    kind: Option<BackupKind>,
    reply: Option<oneshot::Sender<RunRecord>>,
}

/// What the control socket and the reporter see of one source.
#[derive(Debug)]
pub struct Shared {
    pub config: SourceConfig,
    state: Mutex<SourceState>,
    triggers: Mutex<Vec<Trigger>>,
    wake: Arc<Notify>,
    pub changes: Arc<ChangeMark>,
    running: Mutex<Option<(u64, String)>>,
    next_run_ms: Mutex<Option<u64>>,
    /// When the drill schedule next fires, Unix ms.
    next_drill_ms: Mutex<Option<u64>>,
    /// The source's metadata client (its token reports it to the registry).
    pub meta: Arc<MetaClient>,
    /// A run finished and the registry has not been told yet.
    report_owed: AtomicBool,
    /// The generation's reporter (see `report`).
    report_wake: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Shared {
    /// A source as the daemon starts it: its configuration, the state read
    /// from its file, its metadata client, and the reporter's wake-up.
    pub fn new(config: SourceConfig, state: SourceState, meta: Arc<MetaClient>, report_wake: Arc<Notify>) -> Shared {
        Shared {
            config,
            state: Mutex::new(state),
            triggers: Mutex::new(Vec::new()),
            wake: Arc::new(Notify::new()),
            changes: Arc::new(ChangeMark::default()),
            running: Mutex::new(None),
            next_run_ms: Mutex::new(None),
            next_drill_ms: Mutex::new(None),
            meta,
            report_owed: AtomicBool::new(false),
            report_wake,
        }
    }

    /// Queues a trigger; with `wait`, the receiver gets the run's record.
    pub fn trigger(&self, kind: Option<BackupKind>, wait: bool) -> Option<oneshot::Receiver<RunRecord>> {
        let (tx, rx) = oneshot::channel();
        let (reply, rx) = if wait { (Some(tx), Some(rx)) } else { (None, None) };
        lock(&self.triggers).push(Trigger { kind, reply });
        self.wake.notify_one();
        rx
    }

    /// The source's entry of `agent status --json` (the issue's shape, and
    /// more fields after them).
    pub fn status_json(&self) -> Value {
        let st = lock(&self.state).clone();
        let now = now_ms();
        let rpo_s = st.newest_ok_end_ms.map(|e| now.saturating_sub(e) as f64 / 1000.0);
        let target = crate::report::rpo_target(&self.config).map(|d| d.as_secs_f64());
        let last_run = st.last_run.as_ref().map(|r| {
            json!({
                "time": rfc3339(r.time_ms),
                "kind": r.kind,
                "snapshot_id": r.snapshot_id,
                "result": r.result,
                "error": r.error,
                "end_time": rfc3339(r.end_ms),
                "duration_s": r.duration_s,
                "bytes": r.bytes,
                "bytes_read": r.bytes_read,
                "bytes_verified": r.bytes_verified,
                "reason": r.reason,
            })
        });
        let running = lock(&self.running).clone();
        json!({
            "name": self.config.name,
            "last_run": last_run,
            "next_run": lock(&self.next_run_ms).map(rfc3339),
            "rpo_s": rpo_s,
            "rpo_target_s": target,
            "runs_ok": st.runs_ok,
            "runs_failed": st.runs_failed,
            "repo": self.config.repo.as_str(),
            "mode": mode(&self.config),
            "within_target": match (rpo_s, target) { (Some(r), Some(t)) => Some(r <= t), _ => None },
            "runs_skipped": st.runs_skipped,
            "catch_ups": st.catch_ups,
            "queued_triggers": lock(&self.triggers).len(),
            "running": running.as_ref().map(|(since, kind)| json!({"since": rfc3339(*since), "kind": kind})),
            "newest_snapshot": st.newest_snapshot,
            "retention": st.retention,
            "last_drill": st.last_drill.as_ref().map(|d| json!({
                "time": rfc3339(d.time_ms),
                "snapshot_id": d.snapshot_id,
                "verified": d.verified,
                "rto_s": d.rto_s,
                "files_checked": d.files_checked,
                "reason": d.reason,
            })),
            "next_drill": lock(&self.next_drill_ms).map(rfc3339),
            "drills_ok": st.drills_ok,
            "drills_failed": st.drills_failed,
            "events": self.changes.events.load(std::sync::atomic::Ordering::Relaxed),
            "rescans": self.changes.rescans.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    pub fn state(&self) -> SourceState {
        lock(&self.state).clone()
    }

    /// When the agent will next run the source on its own, Unix ms.
    pub fn next_run_ms(&self) -> Option<u64> {
        *lock(&self.next_run_ms)
    }

    /// Whether a backup or drill of the source is going on.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Triggers queued and not yet answered by a run.
    pub fn queued_triggers(&self) -> usize {
        lock(&self.triggers).len()
    }

    /// Marks the source as owing the registry a report, and wakes the reporter.
    pub fn owe_report(&self) {
        self.report_owed.store(true, Ordering::Release);
        self.report_wake.notify_one();
    }

    /// Whether a report was owed (and clears it).
    pub fn take_report_owed(&self) -> bool {
        self.report_owed.swap(false, Ordering::AcqRel)
    }
}

fn mode(s: &SourceConfig) -> &'static str {
    if s.realtime.is_some() {
        "realtime"
    } else if s.on_change.is_some() {
        "on_change"
    } else if !s.schedules.is_empty() {
        "scheduled"
    } else {
        "triggered"
    }
}

/// Every source the agent runs now (replaced on reload).
pub type Sources = Arc<RwLock<Vec<Arc<Shared>>>>;

/// The worker of one source.
struct SourceWorker {
    shared: Arc<Shared>,
    runner: SourceRunner,
    dir: StateDir,
    recovered: bool,
    /// A run owed for work missed while the agent was down.
    catch_up: Option<BackupKind>,
    wake_at: Option<Instant>,
    _watch: Option<Watch>,
}

impl SourceWorker {
    fn save(&self) -> Result<(), String> {
        let st = lock(&self.shared.state).clone();
        self.dir
            .save(&self.shared.config.name, &st)
            .map_err(|e| format!("write the state of {}: {e}", self.shared.config.name))
    }

    /// At start: settles a run the previous process left in progress.
    async fn recover(&mut self) -> Result<(), String> {
        let name = self.shared.config.name.clone();
        let now_s = (now_ms() / 1000) as i64;
        let in_progress = {
            let mut st = lock(&self.shared.state);
            // A kind never seen before counts from now: a new schedule does
            // not fire for the past.
            for k in self.shared.config.schedules.keys() {
                st.slots.entry(*k).or_insert(now_s);
            }
            if self.shared.config.drill.is_some() {
                st.drill_slot.get_or_insert(now_s);
            }
            st.in_progress.clone()
        };
        if let Some(p) = in_progress {
            let committed = self
                .runner
                .committed_since(p.started_ms)
                .await
                .map_err(|e| format!("source {name}: check whether the interrupted run committed: {e}"))?;
            let mut st = lock(&self.shared.state);
            st.in_progress = None;
            match committed {
                Some((id, end_ms, bytes)) => {
                    tracing::info!(source = %name, snapshot = %id, "the run interrupted by the last stop had committed");
                    st.runs_ok += 1;
                    st.newest_ok_end_ms = Some(end_ms);
                    st.newest_snapshot = Some(id.to_string());
                    st.last_run = Some(RunRecord {
                        time_ms: p.started_ms,
                        end_ms,
                        kind: p.kind.clone(),
                        snapshot_id: Some(id.to_string()),
                        result: "ok".into(),
                        error: None,
                        duration_s: end_ms.saturating_sub(p.started_ms) as f64 / 1000.0,
                        bytes,
                        bytes_read: 0,
                        bytes_verified: 0,
                        reason: p.reason.clone(),
                    });
                }
                None => {
                    tracing::warn!(source = %name, kind = %p.kind, "a run was interrupted by the last stop; running it again once");
                    st.runs_failed += 1;
                    st.last_run = Some(RunRecord {
                        time_ms: p.started_ms,
                        end_ms: now_ms(),
                        kind: p.kind.clone(),
                        result: "failed".into(),
                        error: Some("interrupted: the agent stopped during the run; it runs again once".into()),
                        reason: p.reason.clone(),
                        ..Default::default()
                    });
                    self.catch_up = Some(p.kind.parse().unwrap_or(BackupKind::Incremental));
                }
            }
        }
        // Changes made while no agent watched are unknown: a watched source
        // starts with a rescan (an incremental, cheap when nothing changed).
        if self.shared.config.on_change.is_some() || self.shared.config.realtime.is_some() {
            self.shared.changes.mark();
        }
        // Slots missed while down are one catch-up run, not one per slot.
        let d = due(&self.shared.config.schedules, &lock(&self.shared.state).slots, now_s);
        if let Some(k) = d.kind {
            self.catch_up = Some(self.catch_up.map_or(k, |c| max_kind(c, k)));
            let mut st = lock(&self.shared.state);
            for (k, slot) in d.fired {
                st.slots.insert(k, slot);
            }
        }
        self.save()
    }

    /// What to run now, if anything: the kind, the reason, the waiters.
    fn decide(&mut self) -> Option<(BackupKind, String, Vec<oneshot::Sender<RunRecord>>)> {
        let cfg = &self.shared.config;
        let now = Instant::now();
        let now_s = (now_ms() / 1000) as i64;
        let mut kind: Option<BackupKind> = None;
        let mut reasons = Vec::new();
        let mut add = |k: BackupKind, why: &str, kind: &mut Option<BackupKind>| {
            *kind = Some(kind.map_or(k, |c| max_kind(c, k)));
            reasons.push(why.to_string());
        };
        if let Some(k) = self.catch_up.take() {
            add(k, "catch-up", &mut kind);
        }
        let triggers: Vec<Trigger> = std::mem::take(&mut *lock(&self.shared.triggers));
        let mut waiters = Vec::new();
        for t in triggers {
            add(t.kind.unwrap_or(BackupKind::Incremental), "trigger", &mut kind);
            waiters.extend(t.reply);
        }
        let d = due(&cfg.schedules, &lock(&self.shared.state).slots, now_s);
        if let Some(k) = d.kind {
            add(k, "schedule", &mut kind);
            let mut st = lock(&self.shared.state);
            for (k, slot) in &d.fired {
                st.slots.insert(*k, *slot);
            }
        }
        let mut wake: Option<Instant> = d.next.map(|n| {
            let ms = (n * 1000).saturating_sub(now_ms() as i64).max(0) as u64;
            now + Duration::from_millis(ms)
        });
        // Watched sources: on_change after the changes settle, realtime a
        // quarter of max_lag after the first unsaved change (so that a burst
        // of appends becomes one snapshot, and a commit still lands within
        // max_lag of the change).
        let settle = cfg.on_change.map(|d| (d, false)).or(cfg.realtime.map(|l| (l / 4, true)));
        if let (Some((d, realtime)), Some(dirty)) = (settle, self.shared.changes.peek()) {
            let since = if realtime { dirty.first } else { dirty.last };
            let at = since + d;
            if at <= now {
                self.shared.changes.take();
                add(BackupKind::Incremental, if realtime { "realtime" } else { "change" }, &mut kind);
            } else {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        self.wake_at = wake;
        *lock(&self.shared.next_run_ms) = wake.map(|w| now_ms() + w.saturating_duration_since(now).as_millis() as u64);
        reasons.dedup();
        kind.map(|k| (k, reasons.join("+"), waiters))
    }

    /// Runs one backup of the source and records it (state, registry,
    /// waiters).
    async fn run_backup(
        &mut self,
        kind: BackupKind,
        reason: String,
        waiters: Vec<oneshot::Sender<RunRecord>>,
    ) -> Result<(), String> {
        let name = self.shared.config.name.clone();
        let started_ms = now_ms();
        {
            let mut st = lock(&self.shared.state);
            st.in_progress = Some(InProgress { started_ms, kind: kind.as_str().into(), reason: reason.clone() });
            if reason.contains("catch-up") {
                st.catch_ups += 1;
            }
        }
        // Recorded before the run starts: a crash from here on is settled at
        // the next start.
        self.save()?;
        *lock(&self.shared.running) = Some((started_ms, kind.as_str().to_string()));
        tracing::info!(source = %name, kind = kind.as_str(), reason = %reason, "run starts");
        let done = self.runner.run(kind, &reason).await;
        *lock(&self.shared.running) = None;
        let rec = done.record.clone();
        {
            let mut st = lock(&self.shared.state);
            st.in_progress = None;
            if rec.result == "ok" {
                st.runs_ok += 1;
            } else {
                st.runs_failed += 1;
            }
            if let (Some(end), Some(id)) = (done.snapshot_end_ms, &rec.snapshot_id) {
                st.newest_ok_end_ms = Some(end);
                st.newest_snapshot = Some(id.clone());
            }
            if let Some(r) = done.retention {
                st.retention = Some(r);
            }
            st.last_run = Some(rec.clone());
            // Slots that fired while this run went on are skipped, and counted.
            let now_s = (now_ms() / 1000) as i64;
            let d = due(&self.shared.config.schedules, &st.slots, now_s);
            if !d.fired.is_empty() {
                st.runs_skipped += 1;
                for (k, slot) in d.fired {
                    st.slots.insert(k, slot);
                }
            }
        }
        self.save()?;
        match &rec.error {
            None => tracing::info!(source = %name, snapshot = ?rec.snapshot_id, duration_s = rec.duration_s, "run ok"),
            // Logged as a warning: a failed backup is the source's problem
            // (a failing dump, a hook), reported in status and the registry.
            Some(e) => tracing::warn!(source = %name, error = %e, "run failed"),
        }
        // A watched source whose run failed is still dirty: it runs again
        // after its debounce (or a quarter of max_lag), which is its retry
        // pace. A scheduled one waits for its next slot, as cron would.
        let watched = self.shared.config.on_change.is_some() || self.shared.config.realtime.is_some();
        if rec.snapshot_id.is_none() && watched {
            self.shared.changes.mark();
        }
        // The registry hears of every run, whatever its outcome; a report
        // that fails is the reporter's to retry, never this run's failure.
        self.shared.owe_report();
        for w in waiters {
            let _ = w.send(rec.clone());
        }
        Ok(())
    }

    /// Whether the drill schedule fired since its last slot (consuming the
    /// slot); also moves the worker's wake-up to the next drill.
    fn drill_due(&mut self) -> bool {
        let Some(d) = &self.shared.config.drill else { return false };
        let now_s = (now_ms() / 1000) as i64;
        let fired = {
            let mut st = lock(&self.shared.state);
            let since = st.drill_slot.unwrap_or(now_s);
            let fired = d.schedule.fired(since, now_s);
            if let Some(slot) = fired {
                st.drill_slot = Some(slot);
            }
            fired
        };
        let next = d.schedule.next_fire(now_s);
        *lock(&self.shared.next_drill_ms) = next.map(|n| n as u64 * 1000);
        if let Some(n) = next {
            let at = Instant::now() + Duration::from_millis((n * 1000 - now_ms() as i64).max(0) as u64);
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
        fired.is_some()
    }

    /// Runs the scheduled drill of the source's newest snapshot and records
    /// its outcome.
    async fn run_drill(&mut self) -> Result<(), String> {
        let Some(cfg) = self.shared.config.drill.clone() else { return Ok(()) };
        let name = self.shared.config.name.clone();
        *lock(&self.shared.running) = Some((now_ms(), "drill".to_string()));
        tracing::info!(source = %name, "drill starts");
        let outcome = self.runner.drill(&cfg).await;
        *lock(&self.shared.running) = None;
        let Some(d) = outcome else {
            tracing::info!(source = %name, "drill skipped: the source has no snapshot yet");
            return Ok(());
        };
        if d.verified {
            tracing::info!(source = %name, snapshot = ?d.snapshot_id, rto_s = d.rto_s, "drill verified");
        } else {
            // A warning, like a failed backup: the source's problem, shown
            // in status, the metrics and `coffer report`.
            tracing::warn!(source = %name, snapshot = ?d.snapshot_id, reason = %d.reason, "drill failed");
        }
        {
            let mut st = lock(&self.shared.state);
            if d.verified {
                st.drills_ok += 1;
            } else {
                st.drills_failed += 1;
            }
            st.last_drill = Some(d);
        }
        self.save()
    }
}

fn max_kind(a: BackupKind, b: BackupKind) -> BackupKind {
    KindKey::of(a).max(KindKey::of(b)).kind()
}

impl Worker for SourceWorker {
    type Error = String;

    fn name(&self) -> String {
        format!("source:{}", self.shared.config.name)
    }

    async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, String> {
        if !self.recovered {
            self.recover().await?;
            self.recovered = true;
        }
        let backup = self.decide();
        let drill = self.drill_due();
        if backup.is_none() && !drill {
            self.save()?;
            return Ok(WorkerState::Idle);
        }
        // One after the other in this one worker: a drill never runs at the
        // same time as a backup of its source, and when both are due the
        // drill restores the snapshot the backup just made.
        if let Some((kind, reason, waiters)) = backup {
            self.run_backup(kind, reason, waiters).await?;
        }
        if drill {
            self.save()?;
            self.run_drill().await?;
        }
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) {
        let wake = self.shared.wake.clone();
        match self.wake_at {
            Some(at) => {
                let _ = tokio::time::timeout_at(at.into(), wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff { first: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

/// Resolves a source's credentials and metadata client.
pub fn credentials(cfg: &AgentConfig, s: &SourceConfig, d: &Defaults) -> anyhow::Result<Credentials> {
    use anyhow::Context;
    let password = match &s.password_file {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("source {}: read password_file {}", s.name, p.display()))?;
            bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec()
        }
        None => d.password.clone().with_context(|| {
            format!("source {}: no password: set password_file, or COFFER_PASSWORD / COFFER_PASSWORD_FILE", s.name)
        })?,
    };
    let token = match &s.token_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("source {}: read token_file {}", s.name, p.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string()).filter(|t| !t.is_empty())
        }
        None => d.token.clone(),
    };
    let client = MetaClient::new(&cfg.endpoint, d.retry_for).context("parse endpoint")?;
    let meta = match token {
        Some(t) => client.with_token(&t).with_context(|| format!("source {}: use the token", s.name))?,
        None => client,
    };
    Ok(Credentials { password, meta: Arc::new(meta) })
}

/// One configuration's workers.
struct Generation {
    runner: coffer_worker::Runner,
}

fn start_generation(
    cfg: &AgentConfig,
    defaults: &Defaults,
    dir: &StateDir,
) -> anyhow::Result<(Generation, Vec<Arc<Shared>>)> {
    use anyhow::Context;
    let runner = coffer_worker::Runner::new();
    let report_wake = Arc::new(Notify::new());
    let mut shared_all = Vec::new();
    let mut workers = Vec::new();
    for s in &cfg.sources {
        let creds = credentials(cfg, s, defaults)?;
        let state = dir.load(&s.name).with_context(|| format!("read the state of source {}", s.name))?;
        let shared = Arc::new(Shared::new(s.clone(), state, creds.meta.clone(), report_wake.clone()));
        let watch = match (&s.what, s.on_change.is_some() || s.realtime.is_some()) {
            (What::Paths(paths), true) => Some(
                watch::start(&s.name, paths, s.excludes.clone(), shared.changes.clone(), shared.wake.clone())
                    .with_context(|| format!("source {}: watch its paths", s.name))?,
            ),
            _ => None,
        };
        workers.push(SourceWorker {
            shared: shared.clone(),
            runner: SourceRunner::new(s.clone(), cfg.host.clone(), creds),
            dir: dir.clone(),
            recovered: false,
            catch_up: None,
            wake_at: None,
            _watch: watch,
        });
        shared_all.push(shared);
    }
    for w in workers {
        runner.spawn(w);
    }
    runner.spawn(crate::report::Reporter::new(shared_all.clone(), cfg.host.clone(), cfg.report_interval, report_wake));
    Ok((Generation { runner }, shared_all))
}

/// Runs the agent until SIGTERM or SIGINT; SIGHUP reloads the file (a bad
/// file is logged and the running configuration kept). With `admin`, the
/// admin HTTP port is served on it (see `observe`) and its address written
/// to `STATE_DIR/admin-addr`, so a supervisor that asked for port 0 learns it.
pub async fn run(
    cfg: AgentConfig,
    defaults: Defaults,
    reload_host: String,
    admin: Option<tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("create state_dir {}", cfg.state_dir.display()))?;
    let dir = StateDir::open(&cfg.state_dir).with_context(|| format!("open state_dir {}", cfg.state_dir.display()))?;
    let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;

    let (mut gen, shared) = start_generation(&cfg, &defaults, &dir)?;
    let sources: Sources = Arc::new(RwLock::new(shared));
    let control = crate::control::serve(&cfg.control, sources.clone()).await?;
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    let admin_task = match admin {
        Some(l) => {
            let addr = l.local_addr().context("read the admin port's address")?;
            write_addr(&cfg.state_dir, "admin-addr", &addr.to_string())?;
            tracing::info!(admin = %addr, "admin port serving");
            let server = crate::observe::admin_server(sources.clone(), cfg.control.clone());
            Some(server.spawn(l, async move {
                let _ = admin_stopped.await;
            }))
        }
        None => None,
    };
    tracing::info!(
        sources = cfg.sources.len(),
        control = %cfg.control.display(),
        host = %cfg.host,
        "agent running"
    );
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match crate::config::load(&current.path, &reload_host) {
                    Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
                    Ok(new) => {
                        if new.control != current.control || new.state_dir != current.state_dir || new.admin_listen != current.admin_listen {
                            tracing::warn!("control, state_dir and admin_listen changes take effect at the next start");
                        }
                        if let Err(e) = gen.runner.shutdown(SHUTDOWN_DEADLINE).await {
                            tracing::warn!("reload: {e}");
                        }
                        let new = AgentConfig {
                            control: current.control.clone(),
                            state_dir: current.state_dir.clone(),
                            admin_listen: current.admin_listen.clone(),
                            ..new
                        };
                        match start_generation(&new, &defaults, &dir) {
                            Ok((g, shared)) => {
                                gen = g;
                                *sources.write().unwrap_or_else(|p| p.into_inner()) = shared;
                                tracing::info!(sources = new.sources.len(), "configuration reloaded");
                                current = new;
                            }
                            Err(e) => {
                                tracing::error!("reload failed, restarting the previous configuration: {e:#}");
                                let (g, shared) = start_generation(&current, &defaults, &dir)?;
                                gen = g;
                                *sources.write().unwrap_or_else(|p| p.into_inner()) = shared;
                            }
                        }
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("agent stopping");
    let _ = admin_stop.send(());
    if let Some(t) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    control.abort();
    if let Err(e) = gen.runner.shutdown(SHUTDOWN_DEADLINE).await {
        tracing::warn!("{e}");
    }
    let _ = std::fs::remove_file(&current.control);
    Ok(())
}

/// Writes `value` to `dir/name` through a rename (a reader never sees half
/// a line).
fn write_addr(dir: &std::path::Path, name: &str, value: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let (tmp, path) = (dir.join(format!(".{name}.tmp")), dir.join(name));
    std::fs::write(&tmp, format!("{value}\n")).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
}

/// The whole `agent status --json` object.
pub fn status_json(sources: &Sources) -> Value {
    let list: Vec<Value> = sources.read().unwrap_or_else(|p| p.into_inner()).iter().map(|s| s.status_json()).collect();
    json!({ "sources": list, "time": rfc3339(now_ms()) })
}

/// The named source.
pub fn find(sources: &Sources, name: &str) -> Option<Arc<Shared>> {
    sources.read().unwrap_or_else(|p| p.into_inner()).iter().find(|s| s.config.name == name).cloned()
}
