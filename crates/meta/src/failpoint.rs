//! Failpoints: named places in the metadata node where a cluster test can
//! stop it at the one moment that matters (the leader applied a commit but
//! has not answered yet), instead of guessing that moment with sleeps.
//!
//! ```text
//!   test writes DATA/failpoint = "catalog.CommitSnapshot.applied"
//!   node reaches that point ─► renames it to DATA/failpoint-hit, hangs the call
//!   test sees failpoint-hit ─► SIGKILLs the node (the client sees its call die)
//! ```
//!
//! Off unless the process was started with failpoints enabled
//! (`MetaConfig::failpoints`, which only the `COFFER_FAILPOINTS=1`
//! environment of `coffer meta` sets): a production node never reads the
//! file. A *hang* point fires once (the file is renamed before the call
//! hangs), so the leader elected next, armed by nobody, serves the retry. A
//! *hold* point stays in force for as long as the file names it, and only
//! makes the node skip something it would do by itself. A *mark* point
//! changes nothing: it fires once, recording that the node got there, so a
//! test can wait for a moment the node reaches by itself.

use std::path::{Path, PathBuf};

/// The leader applied `CommitSnapshot` and has not answered yet.
pub const COMMIT_SNAPSHOT_APPLIED: &str = "catalog.CommitSnapshot.applied";
/// The leader applied `CommitPack` and has not answered yet.
pub const COMMIT_PACK_APPLIED: &str = "catalog.CommitPack.applied";
/// The leader applied `BeginSession` and has not answered yet.
pub const BEGIN_SESSION_APPLIED: &str = "catalog.BeginSession.applied";
/// (hold) A node that leads stays as it is the moment after its election:
/// its leadership watcher and repair planner do not run the leader-change
/// hook (as if neither had been scheduled yet), and it takes no heartbeat
/// (as if no storage node had found it yet).
pub const HOLD_FRESH_LEADER: &str = "leader.fresh.hold";
/// (hold) The node takes no heartbeat, as a leader cut off from every
/// storage node but not from the voters.
pub const HOLD_NO_HEARTBEATS: &str = "catalog.Heartbeat.refuse";
/// (mark) A pass of the superfluous-copy sweep ended, on a node that
/// believed it led when the pass began (whether it deleted, found nothing,
/// or stopped because a quorum did not confirm its leadership).
pub const MARK_SWEEP_PASSED: &str = "repair.sweep.passed";

#[derive(Clone, Debug, Default)]
pub struct Failpoints {
    dir: Option<PathBuf>,
}

impl Failpoints {
    /// Failpoints armed through files in `dir`, or none.
    pub fn new(dir: Option<&Path>) -> Self {
        Self { dir: dir.map(Path::to_path_buf) }
    }

    fn armed(&self) -> Option<(PathBuf, String)> {
        let dir = self.dir.as_ref()?;
        let file = dir.join("failpoint");
        let name = std::fs::read_to_string(&file).ok()?;
        Some((dir.clone(), name.trim().to_string()))
    }

    /// A hang point: when armed with `point`, records the hit and never
    /// returns (the test kills the process).
    pub async fn hang(&self, point: &str) {
        let Some((dir, name)) = self.armed() else { return };
        if name != point {
            return;
        }
        if let Err(e) = std::fs::rename(dir.join("failpoint"), dir.join("failpoint-hit")) {
            tracing::warn!(point, error = %e, "could not record a failpoint hit; not hanging");
            return;
        }
        tracing::warn!(point, "failpoint hit: this call hangs until the process is killed");
        std::future::pending::<()>().await
    }

    /// A mark point: when armed with `point`, records the hit (once) and
    /// returns at once.
    pub fn mark(&self, point: &str) {
        let Some((dir, name)) = self.armed() else { return };
        if name != point {
            return;
        }
        match std::fs::rename(dir.join("failpoint"), dir.join("failpoint-hit")) {
            Ok(()) => tracing::warn!(point, "failpoint reached"),
            Err(e) => tracing::warn!(point, error = %e, "could not record a failpoint hit"),
        }
    }

    /// A hold point: whether the file names `point` now.
    pub fn holding(&self, point: &str) -> bool {
        self.armed().is_some_and(|(_, name)| name == point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_or_unarmed_points_do_nothing_and_hang_points_fire_once() -> anyhow::Result<()> {
        Failpoints::new(None).hang(COMMIT_PACK_APPLIED).await;
        let dir = tempfile::tempdir()?;
        let f = Failpoints::new(Some(dir.path()));
        f.hang(COMMIT_PACK_APPLIED).await;
        std::fs::write(dir.path().join("failpoint"), HOLD_FRESH_LEADER)?;
        assert!(f.holding(HOLD_FRESH_LEADER));
        assert!(!f.holding(COMMIT_PACK_APPLIED));
        f.hang(COMMIT_PACK_APPLIED).await;
        std::fs::write(dir.path().join("failpoint"), COMMIT_PACK_APPLIED)?;
        let hung = tokio::time::timeout(std::time::Duration::from_millis(200), f.hang(COMMIT_PACK_APPLIED)).await;
        assert!(hung.is_err(), "an armed hang point hangs");
        assert!(dir.path().join("failpoint-hit").exists() && !dir.path().join("failpoint").exists());
        f.hang(COMMIT_PACK_APPLIED).await;
        // A mark point records its hit once and never blocks.
        std::fs::remove_file(dir.path().join("failpoint-hit"))?;
        f.mark(MARK_SWEEP_PASSED);
        assert!(!dir.path().join("failpoint-hit").exists(), "an unarmed mark point records nothing");
        std::fs::write(dir.path().join("failpoint"), MARK_SWEEP_PASSED)?;
        f.mark(COMMIT_PACK_APPLIED);
        assert!(dir.path().join("failpoint").exists(), "another point's mark fires nothing");
        f.mark(MARK_SWEEP_PASSED);
        assert!(dir.path().join("failpoint-hit").exists() && !dir.path().join("failpoint").exists());
        Ok(())
    }
}
