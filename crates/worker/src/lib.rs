//! One shape for every background job of a coffer process: a [`Worker`]
//! with a name, a [`Runner`] that drives it, a [`StopSignal`] it can watch,
//! a status anyone can read, and exponential back-off after errors.
//!
//! ```text
//!   Runner::spawn(worker) ──► loop {
//!       work(&stop) ──Busy──► call again now
//!                   ──Idle──► wait_for_work() or stop
//!                   ──Done──► leave the loop (status "done")
//!                   ──Err───► status "throttled", last_error; sleep back-off (doubling, capped) or stop
//!   }
//!   Runner::shutdown(deadline) ──► stop signalled ──► every task joined, or aborted at the deadline
//! ```
//!
//! The runner never cancels a `work` call by itself: a worker whose step
//! can take long (a rebuild, a scrub pass) watches `stop` and returns early.
//! Waiting (idle or backing off) always ends at the stop signal. At the
//! shutdown deadline the tasks still running are aborted, so no task
//! outlives the runner's owner; the names of those are reported.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a worker says after one step of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// There is more to do right away: call `work` again.
    Busy,
    /// Nothing to do until `wait_for_work` returns (a tick, a message).
    Idle,
    /// The job is finished for the life of the process.
    Done,
}

/// How long to wait after consecutive errors: `first`, doubling, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { first: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The pause after the `consecutive`-th error in a row (1 for the first).
    pub fn delay(&self, consecutive: u32) -> Duration {
        let doublings = consecutive.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// A background job. `work` does one step; the runner decides when the next
/// one happens from what it returns.
pub trait Worker: Send + 'static {
    type Error: fmt::Display + Send;

    /// A short, stable name (`repair-planner`, `scrub`), shown in status.
    fn name(&self) -> String;

    /// One step of work. Long steps should return early once `stop` is set.
    fn work(&mut self, stop: &StopSignal) -> impl Future<Output = Result<WorkerState, Self::Error>> + Send;

    /// After `Idle`: resolves when there may be work again (a tick, a
    /// message). The runner also stops waiting on the stop signal.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// Counters shown in status (`verified`, `done`, ...).
    fn progress(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// How long to pause after errors.
    fn backoff(&self) -> Backoff {
        Backoff::default()
    }
}

/// Set once, when the runner shuts down; cheap to clone and to poll.
#[derive(Clone, Debug)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once stop is signalled (or the runner is gone).
    pub async fn stopped(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The state shown in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Busy,
    Idle,
    /// Backing off after an error.
    Throttled,
    Done,
    /// Left its loop because of the stop signal.
    Stopped,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Busy => "busy",
            RunState::Idle => "idle",
            RunState::Throttled => "throttled",
            RunState::Done => "done",
            RunState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one worker is doing, as a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub state: RunState,
    /// Wall-clock time (Unix ms) when the last step finished.
    pub last_run_ms: Option<u64>,
    /// The most recent error, kept after the worker recovers.
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Errors in a row; 0 once a step succeeds.
    pub consecutive_errors: u32,
    pub runs: u64,
    pub errors: u64,
    pub progress: BTreeMap<String, u64>,
}

impl WorkerStatus {
    fn new(name: String) -> Self {
        Self {
            name,
            state: RunState::Idle,
            last_run_ms: None,
            last_error: None,
            last_error_ms: None,
            consecutive_errors: 0,
            runs: 0,
            errors: 0,
            progress: BTreeMap::new(),
        }
    }
}

/// Some workers were still running at the shutdown deadline and were aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimeout {
    pub aborted: Vec<String>,
}

impl fmt::Display for ShutdownTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workers still running at the shutdown deadline were aborted: {}", self.aborted.join(", "))
    }
}

impl std::error::Error for ShutdownTimeout {}

type Slot = Arc<Mutex<WorkerStatus>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A read-only view of a runner's statuses that can be handed to another
/// worker (the storage heartbeat reports its node's workers with it).
#[derive(Clone, Debug, Default)]
pub struct StatusBoard(Arc<Mutex<Vec<Slot>>>);

impl StatusBoard {
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        lock(&self.0).iter().map(|s| lock(s).clone()).collect()
    }
}

/// Owns a set of workers: spawns them, shows their status, and stops and
/// joins them all on shutdown.
#[derive(Debug)]
pub struct Runner {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<(String, JoinHandle<()>)>>,
    board: StatusBoard,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    pub fn new() -> Self {
        let (stop, _) = watch::channel(false);
        Self { stop, tasks: Mutex::new(Vec::new()), board: StatusBoard::default() }
    }

    pub fn stop_signal(&self) -> StopSignal {
        StopSignal(self.stop.subscribe())
    }

    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.board.snapshot()
    }

    /// Starts driving `worker` on the current tokio runtime. A worker spawned
    /// after shutdown began sees the stop signal at once.
    pub fn spawn<W: Worker>(&self, worker: W) {
        let name = worker.name();
        let slot: Slot = Arc::new(Mutex::new(WorkerStatus::new(name.clone())));
        lock(&self.board.0).push(slot.clone());
        let task = tokio::spawn(drive(worker, self.stop_signal(), slot));
        let mut tasks = lock(&self.tasks);
        // Forget workers that finished on their own, so that a long-lived
        // runner does not collect handles.
        tasks.retain(|(_, t)| !t.is_finished());
        tasks.push((name, task));
    }

    /// Signals stop and joins every worker within `deadline`; the ones still
    /// running then are aborted (and awaited) and named in the error.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), ShutdownTimeout> {
        self.stop.send_replace(true);
        let tasks: Vec<(String, JoinHandle<()>)> = std::mem::take(&mut *lock(&self.tasks));
        let until = Instant::now() + deadline;
        let mut aborted = Vec::new();
        for (name, mut task) in tasks {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(worker = %name, error = %e, "worker task failed"),
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    tracing::warn!(worker = %name, "worker did not stop within the shutdown deadline; aborted");
                    aborted.push(name);
                }
            }
        }
        if aborted.is_empty() {
            Ok(())
        } else {
            Err(ShutdownTimeout { aborted })
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // An owner that forgot `shutdown` still takes its workers with it.
        self.stop.send_replace(true);
        for (_, t) in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

async fn drive<W: Worker>(mut worker: W, stop: StopSignal, slot: Slot) {
    let name = worker.name();
    let mut consecutive = 0u32;
    loop {
        if stop.is_stopped() {
            break;
        }
        lock(&slot).state = RunState::Busy;
        let result = worker.work(&stop).await;
        let progress: BTreeMap<String, u64> = worker.progress().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let now = now_ms();
        let next = {
            let mut s = lock(&slot);
            s.runs += 1;
            s.last_run_ms = Some(now);
            s.progress = progress;
            match result {
                Ok(state) => {
                    consecutive = 0;
                    s.consecutive_errors = 0;
                    s.state = match state {
                        WorkerState::Busy => RunState::Busy,
                        WorkerState::Idle => RunState::Idle,
                        WorkerState::Done => RunState::Done,
                    };
                    Ok(state)
                }
                Err(e) => {
                    consecutive = consecutive.saturating_add(1);
                    s.consecutive_errors = consecutive;
                    s.errors += 1;
                    s.state = RunState::Throttled;
                    let text = e.to_string();
                    s.last_error = Some(text.clone());
                    s.last_error_ms = Some(now);
                    Err(text)
                }
            }
        };
        match next {
            Ok(WorkerState::Busy) => tokio::task::yield_now().await,
            Ok(WorkerState::Idle) => {
                tokio::select! {
                    _ = worker.wait_for_work() => {}
                    _ = stop.stopped() => break,
                }
            }
            Ok(WorkerState::Done) => return,
            Err(text) => {
                let delay = worker.backoff().delay(consecutive);
                tracing::warn!(worker = %name, error = %text, errors_in_a_row = consecutive, retry_in = ?delay, "worker step failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.stopped() => break,
                }
            }
        }
    }
    lock(&slot).state = RunState::Stopped;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    /// Plays a script of results, then idles until notified.
    struct Scripted {
        script: Vec<Result<WorkerState, String>>,
        calls: Arc<Mutex<Vec<Instant>>>,
        wake: Arc<Notify>,
    }

    impl Worker for Scripted {
        type Error = String;
        fn name(&self) -> String {
            "scripted".into()
        }
        async fn work(&mut self, _stop: &StopSignal) -> Result<WorkerState, String> {
            lock(&self.calls).push(Instant::now());
            if self.script.is_empty() {
                Ok(WorkerState::Idle)
            } else {
                self.script.remove(0)
            }
        }
        async fn wait_for_work(&mut self) {
            self.wake.notified().await
        }
        fn progress(&self) -> Vec<(&'static str, u64)> {
            vec![("left", self.script.len() as u64)]
        }
        fn backoff(&self) -> Backoff {
            Backoff { first: Duration::from_millis(20), max: Duration::from_millis(80) }
        }
    }

    async fn wait_status(r: &Runner, what: &str, f: impl Fn(&WorkerStatus) -> bool) -> WorkerStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = r.statuses().into_iter().find(|s| f(s)) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", r.statuses());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn scripted(script: Vec<Result<WorkerState, String>>) -> (Scripted, Arc<Mutex<Vec<Instant>>>, Arc<Notify>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let wake = Arc::new(Notify::new());
        (Scripted { script, calls: calls.clone(), wake: wake.clone() }, calls, wake)
    }

    #[tokio::test]
    async fn busy_idle_error_and_recovery_show_in_status() {
        let (w, calls, wake) = scripted(vec![Ok(WorkerState::Busy), Ok(WorkerState::Busy), Ok(WorkerState::Idle)]);
        let r = Runner::new();
        r.spawn(w);
        let s = wait_status(&r, "idle after three runs", |s| s.runs == 3 && s.state == RunState::Idle).await;
        assert_eq!(s.progress.get("left"), Some(&0));
        assert!(s.last_run_ms.is_some());
        assert_eq!(s.last_error, None);
        // Idle means idle: no call until woken.
        assert_eq!(lock(&calls).len(), 3);
        wake.notify_one();
        wait_status(&r, "a fourth run", |s| s.runs == 4).await;
        r.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.statuses()[0].state, RunState::Stopped);
    }

    #[tokio::test]
    async fn errors_throttle_with_doubling_capped_backoff_then_recover() {
        let (w, calls, _wake) = scripted(vec![
            Err("one".into()),
            Err("two".into()),
            Err("three".into()),
            Err("four".into()),
            Ok(WorkerState::Idle),
        ]);
        let r = Runner::new();
        r.spawn(w);
        let s = wait_status(&r, "throttled", |s| s.state == RunState::Throttled).await;
        assert!(s.last_error.is_some());
        let s = wait_status(&r, "recovered", |s| s.runs == 5 && s.state == RunState::Idle).await;
        assert_eq!(s.errors, 4);
        assert_eq!(s.consecutive_errors, 0);
        assert_eq!(s.last_error.as_deref(), Some("four"), "the last error is kept after recovery");
        let calls = lock(&calls).clone();
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        // Sleeps are never shorter than asked: each gap is at least its back-off.
        for (gap, want) in gaps.iter().zip([20u64, 40, 80, 80]) {
            assert!(*gap >= Duration::from_millis(want), "gaps {gaps:?} below back-off");
        }
        r.shutdown(Duration::from_secs(5)).await.unwrap();
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff { first: Duration::from_millis(100), max: Duration::from_secs(1) };
        let d: Vec<u64> = (1..=6).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn done_workers_are_not_called_again() {
        let (w, calls, wake) = scripted(vec![Ok(WorkerState::Done)]);
        let r = Runner::new();
        r.spawn(w);
        wait_status(&r, "done", |s| s.state == RunState::Done).await;
        wake.notify_one();
        r.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(lock(&calls).len(), 1);
        assert_eq!(r.statuses()[0].state, RunState::Done);
    }

    /// Sleeps for an hour inside `work`, optionally watching stop.
    struct Sleeper {
        name: &'static str,
        watch_stop: bool,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl Worker for Sleeper {
        type Error = String;
        fn name(&self) -> String {
            self.name.into()
        }
        async fn work(&mut self, stop: &StopSignal) -> Result<WorkerState, String> {
            if self.watch_stop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stop.stopped() => {}
                }
            } else {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(WorkerState::Idle)
        }
        async fn wait_for_work(&mut self) {
            tokio::time::sleep(Duration::from_secs(3600)).await
        }
    }

    #[tokio::test]
    async fn shutdown_joins_cooperative_workers_and_aborts_the_rest_at_the_deadline() {
        let r = Runner::new();
        let polite = Arc::new(AtomicBool::new(false));
        let stubborn = Arc::new(AtomicBool::new(false));
        r.spawn(Sleeper { name: "polite", watch_stop: true, dropped: polite.clone() });
        r.spawn(Sleeper { name: "stubborn", watch_stop: false, dropped: stubborn.clone() });
        wait_status(&r, "both busy", |s| s.name == "stubborn" && s.state == RunState::Busy).await;
        let started = Instant::now();
        let err = r.shutdown(Duration::from_millis(300)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.aborted, vec!["stubborn".to_string()]);
        assert!(polite.load(Ordering::SeqCst) && stubborn.load(Ordering::SeqCst), "both workers were dropped");
        let polite_status = r.statuses().into_iter().find(|s| s.name == "polite").unwrap();
        assert_eq!(polite_status.state, RunState::Stopped);
    }

    #[tokio::test]
    async fn idle_workers_stop_at_once() {
        let (w, _calls, _wake) = scripted(vec![]);
        let r = Runner::new();
        r.spawn(w);
        wait_status(&r, "idle", |s| s.runs == 1).await;
        r.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.statuses()[0].state, RunState::Stopped);
    }
}
