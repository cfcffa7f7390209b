//! Recovery plans: the steps that bring a service back, from a `plan.toml`
//! (restores of sources and commands, with dependencies), resolved to
//! snapshots, estimated from the measured throughput of past restores, and
//! run with the steps that do not depend on each other in parallel.
//!
//! The file's keys are a contract (add, never rename): `name` (optional),
//! and `[[step]]` tables with `name`, `after` (names), `timeout` (`30s`,
//! `10m`, `2h`), and one of `restore = { repo, source, snapshot, target,
//! include }` or `run = "command"`.
//!
//! Invariants: a step runs only once every step it is `after` has
//! succeeded; a failed (or timed-out) step marks every step that depends on
//! it, directly or not, `skipped`; the plan's result is `ok` only if every
//! step is. A plan is checked whole before anything runs: unique names,
//! known dependencies, no cycle, exactly one action per step.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_types::{DrKind, DrRecord, RepoName, SnapshotRecord, StepRecord};
use serde::{Deserialize, Serialize};

use crate::drill::{now_ms, truncate};
use crate::restore::RestoreTarget;
use crate::{ClientError, Repository};

/// `plan.toml` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    pub name: Option<String>,
    #[serde(default)]
    pub step: Vec<StepFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub name: String,
    #[serde(default)]
    pub after: Vec<String>,
    pub timeout: Option<String>,
    pub restore: Option<RestoreStep>,
    pub run: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreStep {
    pub repo: String,
    /// The source (`source_key`: the agent's source name, or `host:path`);
    /// without it, any snapshot of the repository.
    pub source: Option<String>,
    /// A snapshot id (or prefix), `latest`, or omitted: the newest before
    /// `--before`, or the latest.
    pub snapshot: Option<String>,
    pub target: PathBuf,
    pub include: Option<PathBuf>,
}

/// What a step does, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Restore(RestoreStep),
    Run(String),
}

/// A checked step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub after: Vec<String>,
    pub timeout: Option<Duration>,
    pub action: Action,
}

/// A checked plan: steps in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub steps: Vec<Step>,
}

fn bad(reason: String) -> ClientError {
    ClientError::BadSource { reason: format!("recovery plan: {reason}") }
}

/// `30s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3_600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then_some(Duration::from_secs(secs))
}

impl Plan {
    /// Parses and checks a plan; `default_name` names a plan without `name`.
    pub fn parse(text: &str, default_name: &str) -> Result<Plan, ClientError> {
        let file: PlanFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut steps = Vec::new();
        for (i, s) in file.step.into_iter().enumerate() {
            if s.name.is_empty() {
                return Err(bad(format!("step {}: name is empty", i + 1)));
            }
            let action = match (s.restore, s.run) {
                (Some(r), None) => {
                    RepoName::new(r.repo.clone()).map_err(|e| bad(format!("step {:?}: restore.repo: {e}", s.name)))?;
                    Action::Restore(r)
                }
                (None, Some(cmd)) => Action::Run(cmd),
                _ => return Err(bad(format!("step {:?}: exactly one of restore and run", s.name))),
            };
            let timeout = match &s.timeout {
                None => None,
                Some(t) => Some(parse_timeout(t).ok_or_else(|| {
                    bad(format!("step {:?}: timeout {t:?}: expected a duration such as 30s, 10m or 2h", s.name))
                })?),
            };
            steps.push(Step { name: s.name, after: s.after, timeout, action });
        }
        if steps.is_empty() {
            return Err(bad("no [[step]]".into()));
        }
        let plan = Plan { name: file.name.unwrap_or_else(|| default_name.to_string()), steps };
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), ClientError> {
        let mut index = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if index.insert(s.name.as_str(), i).is_some() {
                return Err(bad(format!("step name {:?} is used twice", s.name)));
            }
        }
        for s in &self.steps {
            for a in &s.after {
                if !index.contains_key(a.as_str()) {
                    return Err(bad(format!("step {:?}: after {a:?}: no such step", s.name)));
                }
            }
        }
        // Depth-first search for a cycle (0 unvisited, 1 on the path, 2 done).
        fn visit(i: usize, plan: &Plan, index: &HashMap<&str, usize>, mark: &mut [u8]) -> Result<(), String> {
            match mark[i] {
                1 => return Err(plan.steps[i].name.clone()),
                2 => return Ok(()),
                _ => {}
            }
            mark[i] = 1;
            for a in &plan.steps[i].after {
                visit(index[a.as_str()], plan, index, mark)?;
            }
            mark[i] = 2;
            Ok(())
        }
        let mut mark = vec![0u8; self.steps.len()];
        for i in 0..self.steps.len() {
            visit(i, self, &index, &mut mark).map_err(|n| bad(format!("step {n:?} depends on itself")))?;
        }
        Ok(())
    }

    /// The repositories the plan restores from.
    pub fn repos(&self) -> Vec<RepoName> {
        let mut out: Vec<RepoName> = self
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Restore(r) => RepoName::new(r.repo.clone()).ok(),
                Action::Run(_) => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Picks the snapshot a restore step names among `snaps` (a repository's):
/// of its source, then by id prefix, `latest`, or (omitted) the newest that
/// ended before `before_ms` (or the latest without it).
pub fn pick_snapshot<'a>(
    step: &RestoreStep,
    snaps: &'a [SnapshotRecord],
    before_ms: Option<u64>,
) -> Result<&'a SnapshotRecord, String> {
    let of_source: Vec<&SnapshotRecord> = snaps
        .iter()
        .filter(|s| step.source.as_deref().is_none_or(|src| coffer_types::dr::source_key(s) == src))
        .collect();
    fn newest<'s>(it: impl Iterator<Item = &'s SnapshotRecord>) -> Option<&'s SnapshotRecord> {
        it.max_by_key(|s| (s.end_ms, s.id))
    }
    let what = step.source.as_deref().unwrap_or("any source");
    match step.snapshot.as_deref() {
        None | Some("") => match before_ms {
            Some(t) => newest(of_source.iter().copied().filter(|s| s.end_ms < t))
                .ok_or_else(|| format!("no snapshot of {what} in {} ended before the given time", step.repo)),
            None => newest(of_source.iter().copied()).ok_or_else(|| format!("no snapshot of {what} in {}", step.repo)),
        },
        Some("latest") => {
            newest(of_source.iter().copied()).ok_or_else(|| format!("no snapshot of {what} in {}", step.repo))
        }
        Some(prefix) => {
            let hits: Vec<&SnapshotRecord> =
                of_source.iter().copied().filter(|s| s.id.to_hex().starts_with(&prefix.to_lowercase())).collect();
            match hits.as_slice() {
                [one] => Ok(one),
                [] => Err(format!("snapshot {prefix:?} of {what} not found in {}", step.repo)),
                _ => Err(format!("snapshot prefix {prefix:?} is ambiguous")),
            }
        }
    }
}

/// What the plan would do: one line per step.
#[derive(Clone, Debug, Serialize)]
pub struct StepPreview {
    pub name: String,
    pub after: Vec<String>,
    /// `restore` or `run`.
    pub action: String,
    pub snapshot: Option<String>,
    pub bytes: Option<u64>,
    pub target: Option<String>,
    pub command: Option<String>,
    /// From the measured throughput of past restores of the repository.
    pub estimate_s: Option<f64>,
    /// Why the step cannot run (no such snapshot).
    pub error: Option<String>,
}

/// One step's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct StepOutcome {
    pub name: String,
    /// `ok`, `failed`, `timeout` or `skipped`.
    pub result: String,
    pub duration_s: f64,
    pub detail: String,
    pub snapshot: Option<String>,
    pub bytes: u64,
}

/// A plan run (the JSON of `coffer recover --json`).
#[derive(Clone, Debug, Serialize)]
pub struct PlanOutcome {
    pub plan: String,
    pub result: String,
    pub rto_s: f64,
    pub steps: Vec<StepOutcome>,
    pub failed_step: Option<String>,
}

/// How to run a plan.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub before_ms: Option<u64>,
    /// A drill: restores go into scratch directories under this one instead
    /// of their targets, and commands see `COFFER_DRILL=1`.
    pub scratch: Option<PathBuf>,
}

/// The repositories a plan needs, opened, with their snapshots.
pub struct Repos {
    pub repos: BTreeMap<RepoName, Repository>,
    pub snapshots: BTreeMap<RepoName, Vec<SnapshotRecord>>,
}

impl Repos {
    /// Lists the snapshots of every repository given.
    pub async fn load(repos: BTreeMap<RepoName, Repository>) -> Result<Repos, ClientError> {
        let mut snapshots = BTreeMap::new();
        for (name, r) in &repos {
            snapshots.insert(name.clone(), r.snapshots().await?);
        }
        Ok(Repos { repos, snapshots })
    }

    fn resolve(&self, r: &RestoreStep, before_ms: Option<u64>) -> Result<(&Repository, SnapshotRecord), String> {
        let name = RepoName::new(r.repo.clone()).map_err(|e| e.to_string())?;
        let repo = self.repos.get(&name).ok_or_else(|| format!("repository {name} is not open"))?;
        let snaps = self.snapshots.get(&name).map(Vec::as_slice).unwrap_or_default();
        Ok((repo, pick_snapshot(r, snaps, before_ms)?.clone()))
    }
}

fn target_of(step: &Step, r: &RestoreStep, opts: &RunOptions) -> PathBuf {
    match &opts.scratch {
        Some(dir) => dir.join(&step.name),
        None => r.target.clone(),
    }
}

/// `COFFER_TARGET_<STEP>` for every restore step, so that commands can name
/// where a restore went in a drill as in a real recovery.
fn target_env(plan: &Plan, opts: &RunOptions) -> Vec<(String, PathBuf)> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Restore(r) => {
                let key: String = s
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                    .collect();
                Some((format!("COFFER_TARGET_{key}"), target_of(s, r, opts)))
            }
            Action::Run(_) => None,
        })
        .collect()
}

/// What the plan would do (`--dry-run`, and the first part of every run).
pub async fn preview(plan: &Plan, repos: &Repos, opts: &RunOptions) -> Vec<StepPreview> {
    let mut past: HashMap<RepoName, Vec<DrRecord>> = HashMap::new();
    for (name, r) in &repos.repos {
        // The estimate needs the records, which need the repository's admin
        // token; without them there is simply no estimate.
        past.insert(name.clone(), r.dr_records(0).await.unwrap_or_default());
    }
    plan.steps
        .iter()
        .map(|s| {
            let mut p = StepPreview {
                name: s.name.clone(),
                after: s.after.clone(),
                action: String::new(),
                snapshot: None,
                bytes: None,
                target: None,
                command: None,
                estimate_s: None,
                error: None,
            };
            match &s.action {
                Action::Run(cmd) => {
                    p.action = "run".into();
                    p.command = Some(cmd.clone());
                }
                Action::Restore(r) => {
                    p.action = "restore".into();
                    p.target = Some(target_of(s, r, opts).display().to_string());
                    match repos.resolve(r, opts.before_ms) {
                        Ok((repo, snap)) => {
                            let bytes = snap.stats.bytes_scanned;
                            p.snapshot = Some(snap.id.to_hex());
                            p.bytes = Some(bytes);
                            p.estimate_s = past
                                .get(repo.name())
                                .and_then(|rs| coffer_types::dr::estimate_restore_ms(bytes, rs))
                                .map(|ms| ms as f64 / 1000.0);
                        }
                        Err(e) => p.error = Some(e),
                    }
                }
            }
            p
        })
        .collect()
}

/// Runs one step to its end or its timeout.
async fn run_step(step: Step, repos: &Repos, opts: &RunOptions, env: &[(String, PathBuf)]) -> StepOutcome {
    let started = Instant::now();
    let mut snapshot = None;
    let mut bytes = 0;
    let work = async {
        let outcome: Result<String, String> = match &step.action {
            Action::Run(cmd) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(cmd).kill_on_drop(true);
                for (k, v) in env {
                    c.env(k, v);
                }
                if opts.scratch.is_some() {
                    c.env("COFFER_DRILL", "1");
                }
                match c.status().await {
                    Ok(st) if st.success() => Ok(String::new()),
                    Ok(st) => Err(format!("{cmd:?}: {st}")),
                    Err(e) => Err(format!("{cmd:?} could not run: {e}")),
                }
            }
            Action::Restore(r) => {
                let (repo, snap) = match repos.resolve(r, opts.before_ms) {
                    Ok(x) => x,
                    Err(e) => return Err(e),
                };
                snapshot = Some(snap.id.to_hex());
                let target = target_of(&step, r, opts);
                let started_ms = now_ms();
                let res = repo.restore(&snap, RestoreTarget::Dir(target.clone()), r.include.as_deref()).await;
                let (ok, detail) = match &res {
                    Ok(s) => {
                        bytes = s.bytes;
                        (true, format!("{} files, {} bytes to {}", s.files, s.bytes, target.display()))
                    }
                    Err(e) => (false, e.to_string()),
                };
                // A real recovery's restores are restores of record; a
                // drill's are part of the drilled plan run only.
                if opts.scratch.is_none() {
                    let s = res.as_ref().ok();
                    let record = restore_record(repo, &snap, started_ms, s, if ok { "" } else { &detail });
                    if let Err(e) = repo.record_dr(&record).await {
                        tracing::warn!(step = %step.name, error = %e, "could not record the restore");
                    }
                }
                if ok {
                    Ok(detail)
                } else {
                    Err(detail)
                }
            }
        };
        outcome
    };
    let result = match step.timeout {
        Some(t) => tokio::time::timeout(t, work).await.map_err(|_| ()),
        None => Ok(work.await),
    };
    let (result, detail) = match result {
        Ok(Ok(d)) => ("ok", d),
        Ok(Err(d)) => ("failed", d),
        Err(()) => ("timeout", format!("did not finish within {:?}", step.timeout.unwrap_or_default())),
    };
    StepOutcome {
        name: step.name,
        result: result.into(),
        duration_s: started.elapsed().as_secs_f64(),
        detail,
        snapshot,
        bytes,
    }
}

/// The record of one restore (see `coffer_types::dr`).
pub fn restore_record(
    repo: &Repository,
    snap: &SnapshotRecord,
    started_ms: u64,
    summary: Option<&crate::RestoreSummary>,
    reason: &str,
) -> DrRecord {
    let duration_ms = match summary {
        Some(s) => (s.duration_s * 1000.0) as u64,
        None => now_ms().saturating_sub(started_ms),
    };
    DrRecord {
        id: rand::random(),
        kind: DrKind::Restore,
        repo: repo.name().clone(),
        source: coffer_types::dr::source_key(snap),
        snapshot: Some(snap.id),
        started_ms,
        duration_ms,
        bytes: summary.map_or(0, |s| s.bytes),
        files: summary.map_or(0, |s| s.files),
        ok: summary.is_some(),
        reason: truncate(reason),
        failed_files: vec![],
        failed_count: 0,
        reconstructed: summary.is_some_and(|s| s.degraded_packs > 0),
        bytes_read: summary.map_or(0, |s| s.bytes_shards_read.max(s.bytes)),
        bytes_written: summary.map_or(0, |s| s.bytes),
        bytes_cross_site: summary.map_or(0, |s| s.bytes_cross_site),
        steps: vec![],
    }
}

/// Runs the plan: every step whose dependencies have succeeded starts at
/// once; a step that fails or times out skips its dependents. Records the
/// run (kind `PlanRun`, source the plan's name, `drill:NAME` for a drill) in
/// the first repository the plan restores from.
pub async fn run(plan: &Plan, repos: &Repos, opts: &RunOptions) -> Result<PlanOutcome, ClientError> {
    let started_ms = now_ms();
    let started = Instant::now();
    let env = target_env(plan, opts);
    let mut done: HashMap<String, StepOutcome> = HashMap::new();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut started_names = std::collections::HashSet::new();
    loop {
        // Start every step that can start; skip those that never can.
        let mut changed = true;
        while changed {
            changed = false;
            for s in &plan.steps {
                if started_names.contains(&s.name) {
                    continue;
                }
                let deps: Vec<Option<&StepOutcome>> = s.after.iter().map(|a| done.get(a)).collect();
                if let Some(failed) = deps.iter().flatten().find(|d| d.result != "ok") {
                    started_names.insert(s.name.clone());
                    let detail = format!("step {:?} did not succeed", failed.name);
                    let skipped = StepOutcome {
                        name: s.name.clone(),
                        result: "skipped".into(),
                        duration_s: 0.0,
                        detail,
                        snapshot: None,
                        bytes: 0,
                    };
                    done.insert(s.name.clone(), skipped);
                    changed = true;
                } else if deps.iter().all(Option::is_some) {
                    started_names.insert(s.name.clone());
                    running.push(run_step(s.clone(), repos, opts, &env));
                }
            }
        }
        use futures::StreamExt;
        match running.next().await {
            Some(out) => {
                done.insert(out.name.clone(), out);
            }
            None => break,
        }
    }
    let steps: Vec<StepOutcome> = plan.steps.iter().filter_map(|s| done.remove(&s.name)).collect();
    let failed_step = steps.iter().find(|s| s.result != "ok" && s.result != "skipped").map(|s| s.name.clone());
    let ok = steps.iter().all(|s| s.result == "ok");
    let duration_ms = started.elapsed().as_millis() as u64;
    let outcome = PlanOutcome {
        plan: plan.name.clone(),
        result: if ok { "ok" } else { "failed" }.into(),
        rto_s: duration_ms as f64 / 1000.0,
        steps,
        failed_step,
    };
    if let Some(repo) = plan.repos().first().and_then(|n| repos.repos.get(n)) {
        let record = DrRecord {
            id: rand::random(),
            kind: DrKind::PlanRun,
            repo: repo.name().clone(),
            source: truncate(&if opts.scratch.is_some() { format!("drill:{}", plan.name) } else { plan.name.clone() }),
            snapshot: None,
            started_ms,
            duration_ms,
            bytes: outcome.steps.iter().map(|s| s.bytes).sum(),
            files: 0,
            ok,
            reason: outcome.failed_step.as_ref().map(|s| format!("step {s:?} failed")).unwrap_or_default(),
            failed_files: vec![],
            failed_count: 0,
            reconstructed: false,
            bytes_read: 0,
            bytes_written: 0,
            bytes_cross_site: 0,
            steps: outcome
                .steps
                .iter()
                .take(coffer_types::dr::MAX_DR_STEPS)
                .map(|s| StepRecord {
                    name: truncate(&s.name),
                    result: s.result.clone(),
                    duration_ms: (s.duration_s * 1000.0) as u64,
                    detail: truncate(&s.detail),
                })
                .collect(),
        };
        repo.record_dr(&record).await?;
    }
    Ok(outcome)
}

/// Reads and checks a plan file.
pub fn load(path: &Path) -> Result<Plan, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::Io { path: path.to_path_buf(), source: e })?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plan".into());
    Plan::parse(&text, &stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let p = Plan::parse(
            r#"
            name = "orders"
            [[step]]
            name = "db"
            restore = { repo = "r", source = "db", target = "/tmp/x" }
            [[step]]
            name = "load"
            after = ["db"]
            run = "true"
            timeout = "30s"
            "#,
            "f",
        )
        .unwrap();
        assert_eq!(p.name, "orders");
        assert_eq!(p.steps[1].timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.repos(), vec![RepoName::new("r").unwrap()]);

        let err = |t: &str| Plan::parse(t, "f").unwrap_err().to_string();
        assert!(err("[[step]]\nname = \"a\"\nrun = \"x\"\nafter = [\"b\"]").contains("no such step"));
        assert!(err("[[step]]\nname = \"a\"\nrun = \"x\"\nafter = [\"a\"]").contains("depends on itself"));
        assert!(err("[[step]]\nname = \"a\"").contains("exactly one"));
        assert!(err("[[step]]\nname = \"a\"\nrun = \"x\"\n[[step]]\nname = \"a\"\nrun = \"y\"").contains("twice"));
        assert!(err("[[step]]\nname = \"a\"\nrun = \"x\"\ntimeout = \"soon\"").contains("timeout"));
        assert!(err("[[step]]\nname = \"a\"\nrun = \"x\"\nbogus = 1").contains("bogus"));
        assert!(err("").contains("no [[step]]"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_timeout("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("0s"), None);
        assert_eq!(parse_timeout("1w"), None);
    }
}
