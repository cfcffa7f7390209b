//! The metadata node's background jobs, each a `coffer_worker::Worker` on
//! the node's runner, so that `serve` stops and joins them all on shutdown.
//!
//! ```text
//!   leadership ─┐  (raft metrics change)
//!   planner ────┴─► took_office(term)  (once per term, before the first tick)
//!   planner ──every repair.tick, leader only──► repair::tick_once ──RebuildJob──► rebuild-executor
//!   rebuild-executor ── one task per job in its JoinSet (dropped, so aborted, with the worker)
//!   superfluous-sweep ──every SWEEP_EVERY ticks, leader only──► repair::sweep_once
//!                        (recorded former copies; every node listed at a term's
//!                        first pass and every FULL_SWEEP_EVERY passes)
//!   gc ──every gc_interval, on request (`RunGc`) or with a round open, leader only──► collector::run
//!   join ── asks the cluster to add this node, then done
//! ```
//!
//! Workers hold the node weakly: the node owns the runner, and a worker
//! whose node is gone finishes.

use crate::MetaError;
use std::sync::{Arc, Weak};
use std::time::Duration;

use coffer_worker::{StopSignal, Worker, WorkerState};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::node::MetaNode;
use crate::repair::{self, RebuildJob, SWEEP_EVERY};

/// If this node leads, the term it leads in, after running the leader-change
/// hook for that term (unless a test holds it back, as a worker not yet
/// scheduled would).
fn leading_term(n: &MetaNode) -> Option<u64> {
    if n.failpoints.holding(crate::failpoint::HOLD_FRESH_LEADER) {
        let m = n.raft.metrics();
        let m = m.borrow();
        return (m.current_leader == Some(n.config.id.0)).then_some(m.current_term);
    }
    n.took_office_if_leading()
}

/// Runs the leader-change hook as soon as Raft reports a new term led by
/// this node, so that status answers are right before the planner's tick.
pub(crate) struct Leadership {
    pub node: Weak<MetaNode>,
    pub metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, crate::types::MetaNodeInfo>>,
}

impl Worker for Leadership {
    type Error = String;
    fn name(&self) -> String {
        "leadership".into()
    }
    async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, String> {
        let Some(n) = self.node.upgrade() else { return Ok(WorkerState::Done) };
        leading_term(&n);
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        if self.metrics.changed().await.is_err() {
            // Raft stopped: nothing will change any more.
            std::future::pending::<()>().await
        }
    }
}

/// The repair planner: each tick, on the leader, derives the repair work
/// and hands rebuilds to the executor.
pub(crate) struct Planner {
    pub node: Weak<MetaNode>,
    pub jobs: mpsc::UnboundedSender<RebuildJob>,
    pub tick: Duration,
    pub ticks: u64,
    /// `RepairState::wake`: a pass before the tick.
    pub wake: Arc<tokio::sync::Notify>,
    /// How long the last pass took, and when it ended.
    pub last_pass: Option<(Duration, tokio::time::Instant)>,
}

/// The shortest pause between two planner passes when the second is a
/// wake-up rather than the tick.
const MIN_WAKE_GAP: Duration = Duration::from_millis(20);

impl Planner {
    /// When a wake-up may start the next pass: a pause at least as long as
    /// the last pass took (and `MIN_WAKE_GAP`) after it ended, so that
    /// during a long rebuild, where every finished shard wakes the planner,
    /// its passes take at most half the leader's time however many packs
    /// have work; never later than the tick.
    fn wake_not_before(&self) -> Option<tokio::time::Instant> {
        let (took, ended) = self.last_pass?;
        Some(ended + took.max(MIN_WAKE_GAP).min(self.tick))
    }
}

impl Worker for Planner {
    type Error = MetaError;
    fn name(&self) -> String {
        "repair-planner".into()
    }
    async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, MetaError> {
        let Some(n) = self.node.upgrade() else { return Ok(WorkerState::Done) };
        if leading_term(&n).is_some() {
            self.ticks += 1;
            let started = tokio::time::Instant::now();
            let pass = repair::tick_once(&n, &self.jobs).await;
            let ended = tokio::time::Instant::now();
            self.last_pass = Some((ended - started, ended));
            pass?;
        }
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        let not_before = self.wake_not_before();
        tokio::select! {
            _ = tokio::time::sleep(self.tick) => {}
            _ = async {
                self.wake.notified().await;
                if let Some(t) = not_before {
                    tokio::time::sleep_until(t).await;
                }
            } => {}
        }
    }
    fn progress(&self) -> Vec<(&'static str, u64)> {
        let Some(n) = self.node.upgrade() else { return Vec::new() };
        let s = n.repair.snapshot();
        vec![("ticks", self.ticks), ("queued", s.queued), ("site_degraded", s.site_degraded)]
    }
    fn backoff(&self) -> coffer_worker::Backoff {
        // A failed tick is usually a lost leadership or a slow write: retry
        // soon, but never faster than the tick.
        coffer_worker::Backoff { first: self.tick, max: self.tick * 20 }
    }
}

/// Runs the rebuilds the planner dispatches, each in its own task owned by
/// this worker.
pub(crate) struct RebuildExecutor {
    pub node: Weak<MetaNode>,
    pub jobs: mpsc::UnboundedReceiver<RebuildJob>,
    pub running: JoinSet<()>,
    pub next: Option<RebuildJob>,
}

impl RebuildExecutor {
    fn start(&mut self, job: RebuildJob) {
        self.running.spawn(repair::execute(self.node.clone(), job));
    }
}

impl Worker for RebuildExecutor {
    type Error = String;
    fn name(&self) -> String {
        "rebuild-executor".into()
    }
    async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, String> {
        if let Some(job) = self.next.take() {
            self.start(job);
        }
        while let Ok(job) = self.jobs.try_recv() {
            self.start(job);
        }
        let mut failed = None;
        while let Some(done) = self.running.try_join_next() {
            if let Err(e) = done {
                failed = Some(format!("a rebuild task failed: {e}"));
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(WorkerState::Idle),
        }
    }
    async fn wait_for_work(&mut self) {
        tokio::select! {
            job = self.jobs.recv() => match job {
                Some(job) => self.next = Some(job),
                None if self.running.is_empty() => std::future::pending::<()>().await,
                None => { self.running.join_next().await; }
            },
            Some(_) = self.running.join_next(), if !self.running.is_empty() => {}
        }
    }
    fn progress(&self) -> Vec<(&'static str, u64)> {
        let mut out = vec![("running", self.running.len() as u64)];
        if let Some(n) = self.node.upgrade() {
            let s = n.repair.snapshot();
            out.extend([("done", s.done), ("failed", s.failed), ("bytes_written", s.bytes_written)]);
        }
        out
    }
}

/// Deletes shards that up nodes hold but the catalog places elsewhere:
/// the copies moves recorded on every pass, and a full listing of every
/// node at the first pass of each term this node leads (a rebuild the last
/// leader wrote but never committed leaves a copy no move recorded) and
/// then every `FULL_SWEEP_EVERY` passes.
pub(crate) struct Sweep {
    pub node: Weak<MetaNode>,
    pub every: Duration,
    /// The term of the last full pass, and the passes since.
    full: Option<(u64, u32)>,
}

/// Routine passes between two full ones (10 minutes at the default tick).
pub(crate) const FULL_SWEEP_EVERY: u32 = 120;

impl Sweep {
    pub fn new(node: Weak<MetaNode>, tick: Duration) -> Self {
        Self { node, every: tick * SWEEP_EVERY, full: None }
    }
}

impl Worker for Sweep {
    type Error = String;
    fn name(&self) -> String {
        "superfluous-sweep".into()
    }
    async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, String> {
        let Some(n) = self.node.upgrade() else { return Ok(WorkerState::Done) };
        let Some(term) = leading_term(&n) else { return Ok(WorkerState::Idle) };
        let full = match self.full {
            Some((t, passes)) => t != term || passes >= FULL_SWEEP_EVERY,
            None => true,
        };
        let swept = repair::sweep_once(&n, full).await;
        // A full pass that could not list every node is tried again on the
        // next one; a routine pass counts whatever its outcome.
        self.full = match (self.full, full) {
            (_, true) if swept.is_err() => self.full,
            (Some((t, passes)), false) => Some((t, passes + 1)),
            _ => Some((term, 0)),
        };
        swept?;
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.every).await
    }
    fn progress(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(n) = self.node.upgrade() else { return Vec::new() };
        vec![
            ("sweeps", n.repair.sweeps.load(Relaxed)),
            ("nodes_listed", n.repair.sweep_nodes_listed.load(Relaxed)),
            ("list_failures", n.repair.sweep_list_failures.load(Relaxed)),
            ("full_passes", n.repair.sweep_full_passes.load(Relaxed)),
            ("copies_deleted", n.repair.sweep_copies_deleted.load(Relaxed)),
        ]
    }
    fn backoff(&self) -> coffer_worker::Backoff {
        // A node that cannot be listed must not stop the sweep of the others
        // for long: retry on the sweep's own schedule.
        coffer_worker::Backoff { first: self.every, max: self.every * 4 }
    }
}

/// `--join`: asks the cluster (following leader hints) to add this node,
/// then is done.
pub(crate) struct Join {
    pub node: Weak<MetaNode>,
    pub via: String,
}

impl Worker for Join {
    type Error = String;
    fn name(&self) -> String {
        "join".into()
    }
    async fn work(&mut self, stop: &StopSignal) -> Result<WorkerState, String> {
        tokio::select! {
            _ = crate::admin::join_cluster(self.node.clone(), self.via.clone()) => {}
            _ = stop.stopped() => {}
        }
        Ok(WorkerState::Done)
    }
    async fn wait_for_work(&mut self) {}
}

/// Starts every worker of `node` on its runner.
pub(crate) fn spawn_all(node: &Arc<MetaNode>, join: Option<String>) {
    let weak = Arc::downgrade(node);
    let tick = node.config.repair.tick;
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let r = &node.runner;
    r.spawn(Leadership { node: weak.clone(), metrics: node.raft.metrics() });
    r.spawn(Planner {
        node: weak.clone(),
        jobs: jobs_tx,
        tick,
        ticks: 0,
        wake: node.repair.wake.clone(),
        last_pass: None,
    });
    r.spawn(RebuildExecutor { node: weak.clone(), jobs: jobs_rx, running: JoinSet::new(), next: None });
    r.spawn(Sweep::new(weak.clone(), tick));
    r.spawn(crate::collector::Collector {
        node: weak.clone(),
        interval: node.config.gc_interval,
        pool: coffer_rpc::ShardPool::with_security(node.config.security.clone()),
        rewrite_bandwidth: node.config.gc_rewrite_bandwidth,
        since_ms: crate::node::now_ms(),
    });
    if let Some(via) = join {
        r.spawn(Join { node: weak, via });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(tick: Duration) -> Planner {
        let (jobs, _) = mpsc::unbounded_channel();
        Planner { node: Weak::new(), jobs, tick, ticks: 0, wake: Arc::default(), last_pass: None }
    }

    #[tokio::test]
    async fn a_woken_pass_waits_as_long_as_the_last_pass_took_within_the_tick() {
        let mut p = planner(Duration::from_millis(500));
        assert_eq!(p.wake_not_before(), None, "before any pass a wake-up starts one at once");
        let ended = tokio::time::Instant::now();
        p.last_pass = Some((Duration::from_millis(120), ended));
        assert_eq!(p.wake_not_before(), Some(ended + Duration::from_millis(120)));
        p.last_pass = Some((Duration::from_millis(1), ended));
        assert_eq!(p.wake_not_before(), Some(ended + MIN_WAKE_GAP), "never closer than the minimum gap");
        p.last_pass = Some((Duration::from_secs(3), ended));
        assert_eq!(p.wake_not_before(), Some(ended + Duration::from_millis(500)), "never later than the tick");
    }
}
