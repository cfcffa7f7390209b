//! One run of one source, start to finish:
//!
//! ```text
//!   pre hook ──exit 0──► backup (paths, or a command's stdout) ──committed──► post hook ──► keep rules
//!      └─ non-zero: failed, no backup                 └─ error: failed, no snapshot     └─ non-zero: failed (snapshot stays)
//! ```
//!
//! Every snapshot carries the tag `source:<name>` (a contract other tools
//! group by) besides the configured tags, and `Source.host` is the agent's
//! host, so the client's parent selection (same host and path) is per
//! source. Retention runs with the agent's own token after each run that
//! committed: a `backup` token may not forget, and then retention is
//! skipped with a warning and the reason shows in the status, never as a
//! failed backup (the snapshot is safe; only thinning waits for a token
//! that may forget, or for the operator's `coffer forget`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_client::backup::{BackupOptions, BackupSummary};
use coffer_client::drill::DrillOptions;
use coffer_client::retention::plan_forget;
use coffer_client::{open_repo, ClientError, CommandOutput, MetaClient, Repository};
use coffer_types::{BackupKind, SnapshotId};
use tonic::Code as tonic_code;

use crate::config::{DrillConfig, SourceConfig, What};
use crate::state::{DrillRun, RunRecord};

/// The credentials a source uses, resolved at start (files read then).
#[derive(Clone)]
pub struct Credentials {
    pub password: Vec<u8>,
    pub meta: Arc<MetaClient>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

/// What a source keeps between its runs: the open repository (opening costs
/// an argon2 derivation, so it is done once, and again after an error).
#[derive(Debug)]
pub struct Runner {
    pub source: SourceConfig,
    pub host: String,
    creds: Credentials,
    repo: Option<Repository>,
}

/// What `run` did, beside the record: the retention outcome.
#[derive(Debug)]
pub struct Finished {
    pub record: RunRecord,
    pub snapshot_end_ms: Option<u64>,
    pub retention: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs `cmd` through `sh -c` in a process group of its own, for at most
/// `timeout`. On expiry the whole group is killed (a hook's `pg_ctl`,
/// `sleep` or `ssh` children too, not only the shell) and the hook fails
/// with an error that names the timeout; no child of it outlives the run.
pub async fn run_hook(phase: &str, cmd: &str, env: &[(&str, &str)], timeout: Duration) -> Result<(), String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(cmd).envs(env.iter().copied()).stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| format!("{phase} hook {cmd:?}: cannot run: {e}"))?;
    let group = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{phase} hook {cmd:?} failed: {status}")),
        Ok(Err(e)) => Err(format!("{phase} hook {cmd:?}: cannot wait for it: {e}")),
        Err(_) => {
            if let Some(pgid) = group {
                // The group may be gone already (the shell exited just now);
                // the error would only say so.
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Err(format!(
                "{phase} hook {cmd:?} did not finish within {} (hook_timeout); its process group was killed",
                humantime_secs(timeout)
            ))
        }
    }
}

/// `timeout` as `1.5s` / `600s`, the way the configuration writes it.
fn humantime_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// Whether the metadata plane refused for want of permission.
fn denied(e: &ClientError) -> bool {
    matches!(e, ClientError::Conn(r) if matches!(r.code(), Some(tonic_code::PermissionDenied | tonic_code::Unauthenticated)))
}

impl Runner {
    pub fn new(source: SourceConfig, host: String, creds: Credentials) -> Self {
        Runner { source, host, creds, repo: None }
    }

    async fn repo(&mut self) -> Result<&Repository, ClientError> {
        if self.repo.is_none() {
            let r = open_repo(self.creds.meta.clone(), &self.source.repo, &self.creds.password).await?;
            self.repo = Some(r);
        }
        Ok(self.repo.as_ref().expect("just opened"))
    }

    /// The newest snapshot of this source committed at or after `since_ms`
    /// (to tell, after a crash, whether an interrupted run committed).
    pub async fn committed_since(&mut self, since_ms: u64) -> Result<Option<(SnapshotId, u64, u64)>, ClientError> {
        let tag = self.source.source_tag();
        let snaps = self.repo().await?.snapshots().await?;
        Ok(snaps
            .iter()
            .filter(|s| s.tags.contains(&tag) && s.start_ms >= since_ms)
            .max_by_key(|s| s.end_ms)
            .map(|s| (s.id, s.end_ms, s.stats.bytes_scanned)))
    }

    /// Runs the source once as `kind`.
    pub async fn run(&mut self, kind: BackupKind, reason: &str) -> Finished {
        let started = Instant::now();
        let time_ms = now_ms();
        let mut record = RunRecord {
            time_ms,
            kind: kind.as_str().to_string(),
            result: "failed".into(),
            reason: reason.to_string(),
            ..Default::default()
        };
        let mut end = None;
        let mut retention = None;
        let outcome = self.run_inner(kind).await;
        match outcome {
            Ok(summary) => {
                record.snapshot_id = Some(summary.snapshot_id.clone());
                record.bytes = summary.bytes_scanned;
                record.bytes_read = summary.bytes_read;
                record.bytes_verified = summary.bytes_verified;
                record.kind = summary.kind.as_str().to_string();
                end = Some(summary.snapshot.end_ms);
                let post =
                    self.hook("post", self.source.post_hook.clone(), kind, Some(&summary.snapshot_id), true).await;
                match post {
                    Ok(()) => record.result = "ok".into(),
                    Err(e) => record.error = Some(e),
                }
                if let Some(policy) = self.source.keep.clone() {
                    retention = Some(self.apply_keep(&policy).await);
                }
            }
            Err(e) => {
                // The repository may be the problem (a leader change, a
                // revoked token): open it again next time.
                self.repo = None;
                let _ = self.hook("post", self.source.post_hook.clone(), kind, None, false).await;
                record.error = Some(e);
            }
        }
        record.end_ms = now_ms();
        record.duration_s = started.elapsed().as_secs_f64();
        Finished { record, snapshot_end_ms: end, retention }
    }

    async fn run_inner(&mut self, kind: BackupKind) -> Result<BackupSummary, String> {
        self.hook("pre", self.source.pre_hook.clone(), kind, None, true).await?;
        let mut tags = vec![self.source.source_tag()];
        tags.extend(self.source.tags.iter().cloned());
        let opts = BackupOptions {
            kind,
            tags,
            host: self.host.clone(),
            excludes: self.source.excludes.clone(),
            ..Default::default()
        };
        let what = self.source.what.clone();
        let (source_name, repo_name) = (self.source.name.clone(), self.source.repo.clone());
        let repo = self.repo().await.map_err(|e| format!("open repository {repo_name}: {e}"))?;
        match what {
            What::Paths(paths) => {
                let mut opts = opts;
                opts.paths = paths;
                repo.backup(opts).await.map_err(|e| format!("back up: {e}"))
            }
            What::Command { command, name } => {
                let env = [("COFFER_SOURCE", source_name.as_str()), ("COFFER_KIND", kind.as_str())];
                let reader = CommandOutput::spawn(&command, &env).map_err(|e| format!("run {command:?}: {e}"))?;
                let opts = BackupOptions { command: Some(command.clone()), ..opts };
                repo.backup_stream(reader, &name, opts)
                    .await
                    .map_err(|e| format!("back up the output of {command:?}; no snapshot was recorded: {e}"))
            }
        }
    }

    /// Runs a hook with the run's context in the environment (see
    /// [`run_hook`]); a non-zero exit is the hook's verdict.
    async fn hook(
        &self,
        phase: &str,
        hook: Option<String>,
        kind: BackupKind,
        snapshot: Option<&str>,
        ok: bool,
    ) -> Result<(), String> {
        let Some(cmd) = hook else { return Ok(()) };
        let env = [
            ("COFFER_SOURCE", self.source.name.as_str()),
            ("COFFER_KIND", kind.as_str()),
            ("COFFER_PHASE", phase),
            ("COFFER_RESULT", if ok { "ok" } else { "failed" }),
            ("COFFER_SNAPSHOT_ID", snapshot.unwrap_or("")),
        ];
        run_hook(phase, &cmd, &env, self.source.hook_timeout).await
    }

    /// Drills the source's newest snapshot with the library's drill (the
    /// one `coffer drill` runs), which records the outcome in the catalog
    /// (`RecordDr`), so `coffer report` shows it as the source's last drill.
    /// `None` when the source has no snapshot yet (nothing to drill). A
    /// drill that cannot run at all (the catalog unreachable) is a failed
    /// drill whose reason says so.
    pub async fn drill(&mut self, cfg: &DrillConfig) -> Option<DrillRun> {
        let time_ms = now_ms();
        let tag = self.source.source_tag();
        let result = async {
            let repo = self.repo().await?;
            let snaps = repo.snapshots().await?;
            let Some(snap) = snaps.into_iter().filter(|s| s.tags.contains(&tag)).max_by_key(|s| (s.end_ms, s.id))
            else {
                return Ok(None);
            };
            let opts = DrillOptions {
                target: None,
                sample: cfg.sample,
                verify_command: cfg.verify_command.clone(),
                record: true,
            };
            repo.drill(&snap, &opts).await.map(Some)
        }
        .await;
        match result {
            Ok(None) => None,
            Ok(Some(r)) => Some(DrillRun {
                time_ms,
                snapshot_id: Some(r.snapshot_id),
                verified: r.verified,
                rto_s: r.rto_s,
                files_checked: r.files_checked,
                reason: r.reason,
            }),
            Err(e) => {
                self.repo = None;
                Some(DrillRun { time_ms, reason: format!("the drill could not run: {e}"), ..Default::default() })
            }
        }
    }

    /// Applies the keep rules to this source's snapshots (by its tag).
    async fn apply_keep(&mut self, policy: &coffer_client::retention::KeepPolicy) -> String {
        let tag = self.source.source_tag();
        let name = self.source.name.clone();
        let result = async {
            let repo = self.repo().await?;
            let snaps = repo.snapshots().await?;
            let mine: Vec<_> = snaps.into_iter().filter(|s| s.tags.contains(&tag)).collect();
            let (holds, now) = repo.holds().await?;
            let plan = plan_forget(&mine, policy, &holds, now)?;
            let gone: Vec<SnapshotId> = plan.iter().filter(|d| !d.keep).map(|d| d.id).collect();
            if !gone.is_empty() {
                repo.forget(&gone).await?;
            }
            Ok::<_, ClientError>((gone.len(), plan.len() - gone.len()))
        }
        .await;
        match result {
            Ok((gone, kept)) => {
                if gone > 0 {
                    tracing::info!(source = %name, forgot = gone, kept, "keep rules applied");
                }
                format!("forgot {gone}, kept {kept}")
            }
            Err(e) if denied(&e) => {
                tracing::warn!(
                    source = %name,
                    "keep rules skipped: the source's token may not forget snapshots (give it a repository \
                     admin token, or run `coffer forget` elsewhere): {e}"
                );
                format!("skipped: the token may not forget ({e})")
            }
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "keep rules failed; retried after the next run");
                format!("failed: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hook_past_its_timeout_fails_and_its_whole_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        // The shell starts a grandchild that would outlive a kill of the
        // shell alone, notes its pid, and waits for it.
        let cmd = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let e = run_hook("pre", &cmd, &[], Duration::from_millis(500)).await.unwrap_err();
        assert!(e.contains("did not finish within 0.500s (hook_timeout)"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30), "the hook was not stopped at its timeout");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // The grandchild is gone (or a zombie about to be reaped by init).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'));
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "the hook's child {pid} survived the timeout");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_hook_within_its_timeout_gives_its_verdict_and_sees_the_context() {
        let env = [("COFFER_PHASE", "pre")];
        run_hook("pre", "test \"$COFFER_PHASE\" = pre", &env, Duration::from_secs(30)).await.unwrap();
        let e = run_hook("post", "exit 4", &env, Duration::from_secs(30)).await.unwrap_err();
        assert!(e.contains("post hook \"exit 4\" failed") && e.contains('4'), "{e}");
    }
}
