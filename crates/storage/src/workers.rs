//! The storage node's background jobs, as `coffer_worker::Worker`s on the
//! runner that `StorageNode::serve` owns and joins on shutdown.
//!
//! ```text
//!   heartbeat: RegisterNode (back-off on failure) ─► Heartbeat every interval,
//!              carrying this node's worker statuses; known=false ─► RegisterNode again;
//!              then the bad-shard reports scrub queued
//!   scrub:     DIR/scrub-last ─► next pass due at last + interval ─► scrub_pass ─► reports queued,
//!              DIR/scrub-last rewritten (atomically)
//! ```
//!
//! Scrub keeps its schedule across restarts: the time of the last finished
//! pass lives in the data directory, so a node restarted every day still
//! scrubs once per interval instead of waiting a whole interval after every
//! start. A fresh directory (no file) counts its first start as the last
//! pass, so a new node does not scrub at once.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_proto::pb::{HeartbeatRequest, RegisterNodeRequest};
use coffer_rpc::MetaClient;
use coffer_types::{NodeId, SiteId};
use coffer_worker::{Backoff, StatusBoard, StopSignal, Worker, WorkerState};

use crate::repair::scrub_pass;
use crate::service::Repair;
use crate::store::ShardStore;
use crate::StorageError;

/// The longest pause between two registration attempts.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(5);
const MIN_REGISTER_BACKOFF: Duration = Duration::from_millis(100);
/// A metadata call that takes longer than this is abandoned and retried: a
/// peer that accepts connections but never answers must not stall the
/// heartbeat for good.
const META_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The file, in the data directory, that holds when the last scrub pass
/// finished (Unix ms, decimal).
pub const SCRUB_LAST_FILE: &str = "scrub-last";

/// Bounds one metadata call by `META_CALL_TIMEOUT`.
async fn with_timeout<T>(what: &str, call: impl Future<Output = Result<T, StorageError>>) -> Result<T, StorageError> {
    tokio::time::timeout(META_CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(StorageError::Meta(format!("{what}: no answer within {META_CALL_TIMEOUT:?}"))))
}

/// Sends the bad shards queued in `repair` (found by scrubs of node `node`)
/// to the catalog, whose leader plans their repair; keeps them queued if the
/// call fails, for the next heartbeat to try again. Both the heartbeat and
/// the `Scrub` RPC call it: the queue is taken whole under its lock, so a
/// report is sent once.
pub(crate) async fn report_bad_shards(repair: &Repair, meta: &MetaClient, node: NodeId) {
    let pending: Vec<coffer_proto::pb::BadShard> = std::mem::take(&mut *repair.reports.lock().await);
    if pending.is_empty() {
        return;
    }
    let req = coffer_proto::pb::ReportBadShardsRequest {
        node: node.0,
        shards: pending
            .iter()
            .map(|b| coffer_proto::pb::BadShardReport {
                pack_id: b.pack_id.clone(),
                index: b.index,
                reason: b.reason.clone(),
            })
            .collect(),
    };
    let sent = with_timeout("report bad shards", async {
        meta.call("report bad shards", |mut c| {
            let req = req.clone();
            async move { c.report_bad_shards(req).await }
        })
        .await
        .map_err(|e| StorageError::Meta(e.to_string()))
    })
    .await;
    match sent {
        Ok(_) => tracing::info!(shards = pending.len(), "reported bad shards"),
        Err(e) => {
            tracing::warn!(error = %e, "could not report bad shards; will retry");
            repair.reports.lock().await.extend(pending);
        }
    }
}

/// Registration and heartbeats.
pub(crate) struct Heartbeat {
    pub id: NodeId,
    pub site: SiteId,
    pub advertise: String,
    pub capacity_bytes: u64,
    pub interval: Duration,
    pub store: ShardStore,
    pub meta: Arc<MetaClient>,
    pub repair: Arc<Repair>,
    /// This node's workers, reported with every heartbeat.
    pub board: StatusBoard,
    pub registered: bool,
    pub beats: u64,
}

impl Worker for Heartbeat {
    type Error = StorageError;
    fn name(&self) -> String {
        "heartbeat".into()
    }

    async fn work(&mut self, stop: &StopSignal) -> Result<WorkerState, StorageError> {
        let step = async {
            if !self.registered {
                with_timeout("register node", self.register()).await?;
                tracing::info!(node = %self.id, addr = %self.advertise, "registered with the metadata plane");
                self.registered = true;
                return Ok(WorkerState::Idle);
            }
            if with_timeout("heartbeat", self.beat()).await? {
                self.beats += 1;
                report_bad_shards(&self.repair, &self.meta, self.id).await;
                Ok(WorkerState::Idle)
            } else {
                tracing::info!(node = %self.id, "the cluster map does not know this node; registering again");
                self.registered = false;
                Ok(WorkerState::Busy)
            }
        };
        tokio::select! {
            r = step => r,
            _ = stop.stopped() => Ok(WorkerState::Done),
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await
    }

    fn progress(&self) -> Vec<(&'static str, u64)> {
        vec![("beats", self.beats), ("registered", self.registered as u64)]
    }

    fn backoff(&self) -> Backoff {
        // Never wait much longer than one interval: the leader marks a
        // silent node suspect after a few of them.
        Backoff { first: MIN_REGISTER_BACKOFF, max: self.interval.clamp(MIN_REGISTER_BACKOFF, MAX_REGISTER_BACKOFF) }
    }
}

impl Heartbeat {
    async fn register(&self) -> Result<(), StorageError> {
        let req = RegisterNodeRequest {
            id: self.id.0,
            site: self.site.to_string(),
            addr: self.advertise.clone(),
            capacity_bytes: self.capacity_bytes,
            used_bytes: self.store.used_bytes(),
        };
        self.meta
            .call("register node", |mut c| {
                let req = req.clone();
                async move { c.register_node(req).await }
            })
            .await
            .map_err(|e| StorageError::Meta(e.to_string()))?;
        Ok(())
    }

    /// Sends one heartbeat; returns whether the cluster map knows this node.
    async fn beat(&self) -> Result<bool, StorageError> {
        let me = self.id.to_string();
        let req = HeartbeatRequest {
            id: self.id.0,
            used_bytes: self.store.used_bytes(),
            capacity_bytes: self.capacity_bytes,
            workers: self.board.snapshot().iter().map(|s| coffer_proto::worker_to_pb(&me, s)).collect(),
            free_bytes: match self.store.free_bytes() {
                Ok(free) => Some(free),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the filesystem's free space");
                    None
                }
            },
            reserve_bytes: self.store.reserve_bytes(),
            orphan_bytes: self.repair.orphan_bytes.load(std::sync::atomic::Ordering::Relaxed),
        };
        let resp = self
            .meta
            .call("heartbeat", |mut c| {
                let req = req.clone();
                async move { c.heartbeat(req).await }
            })
            .await
            .map_err(|e| StorageError::Meta(e.to_string()))?;
        Ok(resp.known)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// When the last scrub pass finished, from `DIR/scrub-last`; `None` if the
/// file is missing or unreadable (logged: the node then starts a new schedule).
pub fn read_last_scrub(dir: &Path) -> Option<SystemTime> {
    let path = dir.join(SCRUB_LAST_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(ms) => Some(UNIX_EPOCH + Duration::from_millis(ms)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable scrub time; starting a new schedule");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the scrub time; starting a new schedule");
            None
        }
    }
}

/// Writes `DIR/scrub-last` atomically (temporary file, fsync, rename).
fn write_last_scrub(dir: &Path, at: SystemTime) -> Result<(), StorageError> {
    let path = dir.join(SCRUB_LAST_FILE);
    let tmp = dir.join(format!("{SCRUB_LAST_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{}", unix_ms(at))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| StorageError::io(&path, e))
}

/// The scheduled scrub.
pub(crate) struct Scrub {
    pub dir: PathBuf,
    pub store: ShardStore,
    pub repair: Arc<Repair>,
    pub interval: Duration,
    pub next_due: SystemTime,
    pub passes: u64,
    pub last_verified: u64,
    pub last_bad: u64,
}

impl Scrub {
    /// Reads the schedule from the data directory (writing a first one for a
    /// fresh directory).
    pub fn new(dir: PathBuf, store: ShardStore, repair: Arc<Repair>, interval: Duration) -> Self {
        let now = SystemTime::now();
        let last = match read_last_scrub(&dir) {
            Some(t) => t,
            None => {
                if let Err(e) = write_last_scrub(&dir, now) {
                    tracing::warn!(error = %e, "cannot record the scrub schedule");
                }
                now
            }
        };
        let next_due = last.checked_add(interval).unwrap_or(now);
        Self { dir, store, repair, interval, next_due, passes: 0, last_verified: 0, last_bad: 0 }
    }
}

impl Worker for Scrub {
    type Error = StorageError;
    fn name(&self) -> String {
        "scrub".into()
    }

    async fn work(&mut self, stop: &StopSignal) -> Result<WorkerState, StorageError> {
        if SystemTime::now() < self.next_due {
            return Ok(WorkerState::Idle);
        }
        let pass = scrub_pass(&self.store, &self.repair.scrub_limit, self.repair.scrub_rate, &self.repair.counters);
        let r = tokio::select! {
            r = pass => r?,
            // A pass cut short is not recorded: the next start runs it again.
            _ = stop.stopped() => return Ok(WorkerState::Done),
        };
        tracing::info!(verified = r.verified, bad = r.bad.len(), "scrub pass done");
        self.passes += 1;
        self.last_verified = r.verified;
        self.last_bad = r.bad.len() as u64;
        self.repair.reports.lock().await.extend(r.bad);
        let finished = SystemTime::now();
        self.next_due = finished.checked_add(self.interval).unwrap_or(finished);
        write_last_scrub(&self.dir, finished)?;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let wait = self.next_due.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await
    }

    fn progress(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("passes", self.passes),
            ("last_verified", self.last_verified),
            ("last_bad", self.last_bad),
            ("next_due_ms", unix_ms(self.next_due)),
        ]
    }

    fn backoff(&self) -> Backoff {
        // A pass that failed (an unreadable directory) is not worth retrying
        // every second.
        Backoff { first: Duration::from_secs(60), max: Duration::from_secs(3600) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_worker::{RunState, Runner};

    fn scrub_in(dir: &Path, interval: Duration) -> Scrub {
        let store = ShardStore::open(dir).unwrap();
        Scrub::new(dir.to_path_buf(), store, Arc::new(Repair::default()), interval)
    }

    #[test]
    fn a_fresh_directory_starts_its_schedule_now_and_a_restart_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let before = SystemTime::now();
        let first = scrub_in(d.path(), hour);
        assert!(first.next_due >= before + hour, "a new node waits one interval");
        let recorded = read_last_scrub(d.path()).expect("the first start is recorded");
        // A restart later reads the same schedule instead of starting afresh.
        drop(first);
        let again = scrub_in(d.path(), hour);
        assert_eq!(again.next_due, recorded + hour);
    }

    #[tokio::test]
    async fn an_overdue_scrub_runs_at_start_and_records_its_time() {
        let d = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        // The node last scrubbed two hours ago, then was restarted.
        let long_ago = SystemTime::now() - 2 * hour;
        write_last_scrub(d.path(), long_ago).unwrap();
        let scrub = scrub_in(d.path(), hour);
        assert!(scrub.next_due <= SystemTime::now(), "overdue");
        let runner = Runner::new();
        runner.spawn(scrub);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = runner.statuses().pop().unwrap();
            if s.progress.get("passes") == Some(&1) && s.state == RunState::Idle {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no scrub pass: {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = read_last_scrub(d.path()).unwrap();
        assert!(last > long_ago + hour, "the pass rewrote the schedule");
        runner.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
