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
use std::time::Instant;

use coffer_client::backup::{BackupOptions, BackupSummary};
use coffer_client::retention::plan_forget;
use coffer_client::{open_repo, ClientError, CommandOutput, MetaClient, Repository};
use coffer_types::{BackupKind, SnapshotId};
use tonic::Code as tonic_code;

use crate::config::{SourceConfig, What};
use crate::state::RunRecord;

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

    /// Runs a hook through `sh -c` with the run's context in the
    /// environment; a non-zero exit is the hook's verdict.
    async fn hook(
        &self,
        phase: &str,
        hook: Option<String>,
        kind: BackupKind,
        snapshot: Option<&str>,
        ok: bool,
    ) -> Result<(), String> {
        let Some(cmd) = hook else { return Ok(()) };
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c")
            .arg(&cmd)
            .env("COFFER_SOURCE", &self.source.name)
            .env("COFFER_KIND", kind.as_str())
            .env("COFFER_PHASE", phase)
            .env("COFFER_RESULT", if ok { "ok" } else { "failed" })
            .env("COFFER_SNAPSHOT_ID", snapshot.unwrap_or(""))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let status = c.status().await.map_err(|e| format!("{phase} hook {cmd:?}: cannot run: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{phase} hook {cmd:?} failed: {status}"))
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
