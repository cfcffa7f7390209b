//! `coffer drill`, `coffer recover` and `coffer report`: the
//! disaster-recovery commands (issue 14).
//!
//! The drill and the plan runner live in `coffer-client` (`drill`, `plan`)
//! so that the agent daemon runs the same code on its schedule; this module
//! parses the command line, prints, and maps the outcome onto exit codes
//! (0 verified / succeeded, 1 not). The report is assembled by `build_report`,
//! a pure function of the records (snapshots, disaster-recovery records,
//! incidents) and a time, over the figures of `coffer_types::dr`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use coffer_client::drill::DrillOptions;
use coffer_client::plan::{self, Plan, Repos, RunOptions};
use coffer_client::{open_repo, ClientError};
use coffer_proto::pb;
use coffer_types::dr::{self as figures, source_key};
use coffer_types::time::rfc3339;
use coffer_types::{DrKind, DrRecord, Prices, SnapshotRecord};
use serde::Serialize;
use serde_json::json;

use crate::args::Global;
use crate::shared::{human_bytes, meta_client, open, parse_time, password, repo_name};

/// The report's default window for the worst RPO and the records shown.
const DEFAULT_WINDOW_MS: u64 = 7 * 86_400_000;

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// A source (the agent's source name, or host:path) for its latest
    /// snapshot, or a snapshot id (or unique prefix).
    #[arg(required_unless_present = "plan", conflicts_with = "plan")]
    pub what: Option<String>,
    /// Restore into this directory and keep it (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// Verify a random share of the files (0 < P <= 1), for very large sources.
    #[arg(long)]
    pub sample: Option<f64>,
    /// A command run in the restored tree after verification (COFFER_DRILL_TARGET names it); it must exit 0.
    #[arg(long)]
    pub verify_command: Option<String>,
    /// Run this recovery plan into scratch targets instead: the RTO of the whole service.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// The site this client runs in: shard bytes read from other sites count as cross-site
    /// (default: the site most bytes came from).
    #[arg(long, env = "COFFER_SITE")]
    pub site: Option<String>,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The recovery plan (plan.toml).
    #[arg(long)]
    pub plan: PathBuf,
    /// Restore steps without a snapshot take the newest snapshot that ended before TIME (YYYY-MM-DDTHH:MMZ).
    #[arg(long)]
    pub before: Option<String>,
    /// Print what would be done (snapshots, bytes, estimated durations) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// The site this client runs in: shard bytes read from other sites count as cross-site
    /// (default: the site most bytes came from).
    #[arg(long, env = "COFFER_SITE")]
    pub site: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The window of the worst RPO and of the records listed (default: the last 7 days).
    #[arg(long)]
    pub since: Option<String>,
    /// Records per ListDr page (0: the server's default); the pages are read to the end either way.
    #[arg(long, default_value_t = 0, hide = true)]
    pub page_size: u32,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The snapshot a drill argument names: a snapshot id or prefix, else the
/// latest snapshot of the source of that name.
fn pick_drill_snapshot(what: &str, snaps: &[SnapshotRecord]) -> Result<SnapshotRecord> {
    let lower = what.to_lowercase();
    let by_id: Vec<&SnapshotRecord> = if what.len() >= 4 && what.chars().all(|c| c.is_ascii_hexdigit()) {
        snaps.iter().filter(|s| s.id.to_hex().starts_with(&lower)).collect()
    } else {
        vec![]
    };
    match by_id.as_slice() {
        [one] => return Ok((*one).clone()),
        [] => {}
        _ => bail!("snapshot prefix {what:?} is ambiguous"),
    }
    snaps
        .iter()
        .filter(|s| source_key(s) == what)
        .max_by_key(|s| (s.end_ms, s.id))
        .cloned()
        .with_context(|| format!("{what:?} is neither a snapshot nor a source with snapshots"))
}

pub async fn drill(g: &Global, a: DrillArgs) -> Result<i32> {
    if let Some(p) = a.sample {
        if !(p > 0.0 && p <= 1.0) {
            return Err(crate::config::UsageError(format!("--sample {p}: must be in (0, 1]")).into());
        }
    }
    if let Some(path) = &a.plan {
        let plan = load_plan(path)?;
        let scratch = tempfile::Builder::new().prefix("coffer-plan-drill-").tempdir().context("scratch directory")?;
        let work = std::sync::Arc::new(coffer_client::Work::default());
        let repos = open_plan_repos(g, &plan, &work, a.site.as_deref()).await?;
        let opts = RunOptions { before_ms: None, scratch: Some(scratch.path().to_path_buf()) };
        let watch = crate::progress::watch("drill", g.json, work);
        let outcome = plan::run(&plan, &repos, &opts).await;
        watch.finish();
        let outcome = outcome?;
        print_outcome(g, &outcome);
        return Ok(if outcome.result == "ok" { 0 } else { 1 });
    }
    let what = a.what.as_deref().unwrap_or_default();
    let work = std::sync::Arc::new(coffer_client::Work::default());
    let repo = open(g).await?.with_progress(work.clone()).with_site(a.site.clone());
    let snaps = repo.snapshots().await.context("list snapshots")?;
    let snap = pick_drill_snapshot(what, &snaps)?;
    let opts = DrillOptions { target: a.target, sample: a.sample, verify_command: a.verify_command, record: true };
    let watch = crate::progress::watch("drill", g.json, work);
    let r = repo.drill(&snap, &opts).await;
    watch.finish();
    let r = r.with_context(|| format!("drill of snapshot {}", snap.id.short()))?;
    if g.json {
        println!("{}", serde_json::to_value(&r)?);
    } else {
        println!(
            "drill of {} (snapshot {}): {} in {:.2}s: {} files, {} (checked {})",
            r.source,
            snap.id.short(),
            if r.verified { "verified" } else { "FAILED" },
            r.rto_s,
            r.files,
            human_bytes(r.bytes),
            r.files_checked
        );
        println!(
            "  restore {:.2}s, verify {:.2}s, command {:.2}s",
            r.phases.restore_s, r.phases.verify_s, r.phases.command_s
        );
        if !r.reason.is_empty() {
            println!("  reason: {}", r.reason);
        }
        for f in &r.failed_files {
            println!("  failed: {f}");
        }
    }
    Ok(if r.verified { 0 } else { 1 })
}

/// Reads and checks a plan file; an unreadable or invalid plan is a usage
/// error (exit 2), like a bad flag.
fn load_plan(path: &std::path::Path) -> Result<Plan> {
    plan::load(path).map_err(|e| {
        let msg = match e {
            ClientError::BadSource { reason } => format!("{}: {reason}", path.display()),
            other => format!("read plan: {other}"),
        };
        anyhow::Error::from(crate::config::UsageError(msg))
    })
}

/// Opens every repository a plan restores from, with the global password,
/// each counting its progress into `work` and reading as from `site`.
async fn open_plan_repos(
    g: &Global,
    plan: &Plan,
    work: &std::sync::Arc<coffer_client::Work>,
    site: Option<&str>,
) -> Result<Repos> {
    let meta = meta_client(g)?;
    let pw = password(g)?;
    let mut repos = BTreeMap::new();
    for name in plan.repos() {
        let r = open_repo(meta.clone(), &name, &pw).await.with_context(|| format!("open repository {name}"))?;
        repos.insert(name, r.with_progress(work.clone()).with_site(site.map(str::to_string)));
    }
    Repos::load(repos).await.context("list the plan's snapshots")
}

fn print_outcome(g: &Global, o: &plan::PlanOutcome) {
    if g.json {
        println!("{}", serde_json::to_value(o).unwrap_or_default());
        return;
    }
    println!("plan {}: {} in {:.2}s", o.plan, o.result, o.rto_s);
    for s in &o.steps {
        println!("  {:<20} {:<8} {:>8.2}s  {}", s.name, s.result, s.duration_s, s.detail);
    }
}

pub async fn recover(g: &Global, a: RecoverArgs) -> Result<i32> {
    let before_ms = match &a.before {
        Some(t) => Some(parse_time(t).map_err(|e| crate::config::UsageError(format!("--before: {e:#}")))?),
        None => None,
    };
    let plan = load_plan(&a.plan)?;
    let work = std::sync::Arc::new(coffer_client::Work::default());
    let repos = open_plan_repos(g, &plan, &work, a.site.as_deref()).await?;
    let opts = RunOptions { before_ms, scratch: None };
    let preview = plan::preview(&plan, &repos, &opts).await;
    if a.dry_run {
        if g.json {
            println!("{}", json!({ "plan": plan.name, "dry_run": true, "steps": preview }));
        } else {
            println!("plan {}: {} steps (dry run)", plan.name, preview.len());
            for p in &preview {
                let after = if p.after.is_empty() { String::new() } else { format!(" after {}", p.after.join(", ")) };
                match p.action.as_str() {
                    "restore" => println!(
                        "  {}{after}: restore snapshot {} ({}) to {}{}{}",
                        p.name,
                        p.snapshot.as_deref().unwrap_or("-"),
                        p.bytes.map(human_bytes).unwrap_or_default(),
                        p.target.as_deref().unwrap_or_default(),
                        p.estimate_s.map(|s| format!(", about {s:.1}s")).unwrap_or_default(),
                        p.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default(),
                    ),
                    _ => println!("  {}{after}: run {:?}", p.name, p.command.as_deref().unwrap_or_default()),
                }
            }
        }
        return Ok(if preview.iter().any(|p| p.error.is_some()) { 1 } else { 0 });
    }
    if !g.json {
        for p in &preview {
            if let Some(s) = &p.snapshot {
                println!("{}: snapshot {s}", p.name);
            }
        }
    }
    let watch = crate::progress::watch("recover", g.json, work);
    let outcome = plan::run(&plan, &repos, &opts).await;
    watch.finish();
    let outcome = outcome?;
    print_outcome(g, &outcome);
    Ok(if outcome.result == "ok" { 0 } else { 1 })
}

/// The last drill of a source in the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LastDrill {
    pub time: String,
    pub time_ms: u64,
    pub rto_s: f64,
    pub verified: bool,
    pub failed_files: Vec<String>,
}

/// Entries the newest backup of a source left out, by why.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Skipped {
    pub unreadable: u64,
    pub excluded: u64,
    pub vanished: u64,
    /// A few of them, with why.
    pub examples: Vec<serde_json::Value>,
}

/// One source's line of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SourceReport {
    pub repo: String,
    pub source: String,
    pub snapshots: usize,
    /// Snapshots that do not count for the RPO: hit by data loss.
    pub snapshots_lost: usize,
    /// Files and bytes the newest snapshot protects.
    pub files: u64,
    /// Entries the newest backup left out, for any reason (`skipped` says
    /// which); of the snapshots made before this was measured, the entries
    /// that could not be read.
    pub files_skipped: u64,
    pub bytes: u64,
    /// What the source held at the newest backup (None: not measured then).
    pub files_total: Option<u64>,
    pub bytes_total: Option<u64>,
    pub skipped: Skipped,
    /// Protected bytes over the bytes the source held (by files for
    /// snapshots made before bytes were measured).
    pub backup_ratio: f64,
    /// Protected files over the files the source held.
    pub backup_ratio_files: f64,
    /// For a command source, the command's exit code.
    pub command_exit: Option<i32>,
    pub rpo_s: Option<f64>,
    pub rpo_target_s: Option<f64>,
    pub worst_rpo_s: Option<f64>,
    pub last_drill: Option<LastDrill>,
    pub verdict: String,
}

/// A restore, drill or plan run in the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunReport {
    pub kind: String,
    pub source: String,
    pub snapshot: Option<String>,
    pub time: String,
    pub rto_s: f64,
    pub bytes: u64,
    pub files: u64,
    pub ok: bool,
    pub reason: String,
    pub reconstructed: bool,
    pub steps: Vec<serde_json::Value>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_cross_site: u64,
    /// The resource cost with the cluster's prices (None: no price set).
    pub cost: Option<f64>,
    /// The data-loss side: the source's RPO when the run started (for a
    /// restore, what a failure at that moment lost). None for a plan run
    /// or without an earlier verified snapshot.
    pub rpo_at_failure_s: Option<f64>,
}

/// An incident in the report: a storage node lost (`kind` "node"), or a
/// drill that failed (`kind` "drill": open until a later drill of the same
/// source verifies).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IncidentReport {
    pub kind: String,
    pub id: u64,
    /// When it failed: the node's last heartbeat, the drill's start.
    pub time: String,
    pub node: String,
    pub site: String,
    pub source: String,
    pub reason: String,
    pub state: String,
    pub detect_s: f64,
    pub recovery_time_s: Option<f64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub bytes_cross_site: u64,
    pub cost: Option<f64>,
    /// The worst RPO of the repository's sources at the moment of failure.
    pub rpo_at_failure_s: Option<f64>,
}

/// Cluster-wide pack health (as `coffer status` counts it).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PackHealthReport {
    pub healthy: u64,
    pub degraded: u64,
    pub at_risk: u64,
    pub lost: u64,
    pub site_degraded: u64,
}

/// One site's storage nodes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SiteReport {
    pub site: String,
    pub nodes: u64,
    pub up: u64,
}

/// Site redundancy: whether the loss of any one site is survivable now.
/// `redundancy` is `full` (every site up, no pack short of shards or of the
/// site rule), `site-degraded` (packs break the site rule), `degraded`
/// (nodes down or packs short of shards) or `data lost`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClusterReport {
    pub packs: PackHealthReport,
    pub sites: Vec<SiteReport>,
    pub redundancy: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub generated: String,
    pub since: String,
    pub sources: Vec<SourceReport>,
    pub restores: Vec<RunReport>,
    pub drills: Vec<RunReport>,
    pub plan_runs: Vec<RunReport>,
    /// Failed drills of the repository, and the cluster's incidents when the
    /// caller may list them (see `cluster_incidents`).
    pub incidents: Vec<IncidentReport>,
    /// Whether cluster incidents were listed (not for a repository token).
    pub cluster_incidents: bool,
    /// None when the caller may not read the cluster's status.
    pub cluster: Option<ClusterReport>,
    /// The prices of the cost figures, per byte (None: no price set).
    pub prices: Option<Prices>,
}

/// What `build_report` reads besides the repository's own records.
#[derive(Clone, Debug, Default)]
pub struct ReportInputs<'a> {
    /// The RPO target of each source the source registry knows.
    pub targets: BTreeMap<String, u64>,
    /// None when the caller may not list incidents.
    pub incidents: Option<&'a [pb::Incident]>,
    pub status: Option<&'a pb::ClusterStatusResponse>,
    pub prices: Option<Prices>,
    /// Snapshots that reference a pack lost now (see
    /// `coffer_client::drill::snapshots_hit_by_loss`).
    pub hit_by_loss: std::collections::BTreeSet<coffer_types::SnapshotId>,
}

/// The cost of a recovery that kept one node busy (the client's host for
/// restores, drills and plan runs; the lost node's slot for an incident).
fn cost(prices: Option<&Prices>, read: u64, written: u64, cross_site: u64, duration_ms: u64) -> Option<f64> {
    prices.map(|p| figures::recovery_cost(p, read, written, cross_site, 1, duration_ms))
}

fn cluster_report(s: &pb::ClusterStatusResponse) -> ClusterReport {
    let h = s.packs.unwrap_or_default();
    let mut sites: BTreeMap<String, SiteReport> = BTreeMap::new();
    for n in &s.nodes {
        let e = sites.entry(n.site.clone()).or_insert(SiteReport { site: n.site.clone(), nodes: 0, up: 0 });
        e.nodes += 1;
        e.up += u64::from(n.state == "up");
    }
    let sites: Vec<SiteReport> = sites.into_values().collect();
    let redundancy = if h.lost > 0 {
        "data lost"
    } else if s.site_degraded > 0 {
        "site-degraded"
    } else if h.degraded > 0 || h.at_risk > 0 || sites.iter().any(|x| x.up < x.nodes) {
        "degraded"
    } else {
        "full"
    };
    ClusterReport {
        packs: PackHealthReport {
            healthy: h.healthy,
            degraded: h.degraded,
            at_risk: h.at_risk,
            lost: h.lost,
            site_degraded: s.site_degraded,
        },
        sites,
        redundancy: redundancy.into(),
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn run_report(r: &DrRecord, prices: Option<&Prices>, rpo_at: Option<u64>) -> RunReport {
    RunReport {
        kind: r.kind.as_str().into(),
        source: r.source.clone(),
        snapshot: r.snapshot.map(|s| s.to_hex()),
        time: rfc3339(r.started_ms),
        rto_s: r.rto_s(),
        bytes: r.bytes,
        files: r.files,
        ok: r.ok,
        reason: r.reason.clone(),
        reconstructed: r.reconstructed,
        steps: r
            .steps
            .iter()
            .map(|s| json!({"name": s.name, "result": s.result, "duration_s": secs(s.duration_ms), "detail": s.detail}))
            .collect(),
        bytes_read: r.bytes_read,
        bytes_written: r.bytes_written,
        bytes_cross_site: r.bytes_cross_site,
        cost: cost(prices, r.bytes_read, r.bytes_written, r.bytes_cross_site, r.duration_ms),
        rpo_at_failure_s: rpo_at.map(secs),
    }
}

/// The report, from the records alone: a pure function of the repository's
/// snapshots, its disaster-recovery records, what `inputs` holds (RPO
/// targets by source name from the agents' policies, incidents, the
/// cluster's status and prices), a time and the window. A committed snapshot
/// counts as verified (for the RPO) unless it is hit by data loss: it
/// references a pack that is lost now, or the newest drill of it failed (a
/// drill that could not restore it is data loss the catalog knows of).
pub fn build_report(
    repo: &str,
    snaps: &[SnapshotRecord],
    records: &[DrRecord],
    inputs: &ReportInputs<'_>,
    now_ms: u64,
    since_ms: u64,
) -> Report {
    let prices = inputs.prices.as_ref();
    let mut by_source: BTreeMap<String, Vec<&SnapshotRecord>> = BTreeMap::new();
    for s in snaps {
        by_source.entry(source_key(s)).or_default().push(s);
    }
    let drills: Vec<&DrRecord> = records.iter().filter(|r| r.kind == DrKind::Drill).collect();
    // Drilled sources without snapshots still get a line (their snapshots
    // may all have been forgotten).
    for d in &drills {
        by_source.entry(d.source.clone()).or_default();
    }
    let lost = |s: &SnapshotRecord| {
        inputs.hit_by_loss.contains(&s.id)
            || drills.iter().filter(|d| d.snapshot == Some(s.id)).max_by_key(|d| d.started_ms).is_some_and(|d| !d.ok)
    };
    // The end times of each source's verified snapshots, for the RPO at any
    // moment.
    let verified: BTreeMap<String, Vec<u64>> = by_source
        .iter()
        .map(|(k, list)| (k.clone(), list.iter().filter(|s| !lost(s)).map(|s| s.end_ms).collect()))
        .collect();
    let rpo_at = |source: &str, at_ms: u64| -> Option<u64> {
        let ends = verified.get(source)?;
        figures::rpo_ms(at_ms, ends.iter().copied().filter(|e| *e <= at_ms).max())
    };
    let mut sources = Vec::new();
    for (source, mut list) in by_source.clone() {
        list.sort_by_key(|s| (s.end_ms, s.id));
        let verified_ends = verified.get(&source).cloned().unwrap_or_default();
        let latest = list.last();
        let (files, bytes) = latest.map_or((0, 0), |s| (s.stats.files, s.stats.bytes_scanned));
        let coverage = latest.and_then(|s| s.stats.coverage.clone());
        // Snapshots made before coverage was measured count their unreadable
        // entries (`errors`), by files only.
        let (skipped, unprotected, ratio, ratio_files) = match &coverage {
            Some(c) => (
                c.files_skipped(),
                c.files_unprotected(),
                figures::coverage_ratio(c.bytes_protected, c.bytes_total),
                figures::coverage_ratio(c.files_protected, c.files_total),
            ),
            None => {
                let errors = latest.map_or(0, |s| s.stats.errors);
                let r = figures::backup_ratio(files, errors);
                (errors, errors, r, r)
            }
        };
        let rpo = figures::rpo_ms(now_ms, verified_ends.iter().copied().max());
        let worst = figures::worst_rpo_ms(&verified_ends, since_ms, now_ms);
        let last = drills.iter().filter(|d| d.source == source).max_by_key(|d| d.started_ms);
        // The RPO target comes from the agent's policy through the source
        // registry; 0 there means the policy sets none.
        let target_ms: Option<u64> = inputs.targets.get(&source).copied().filter(|t| *t > 0);
        let verdict = figures::verdict(last.map(|d| d.ok), rpo, target_ms, unprotected);
        sources.push(SourceReport {
            repo: repo.to_string(),
            source,
            snapshots: list.len(),
            snapshots_lost: list.len() - verified_ends.len(),
            files,
            files_skipped: skipped,
            bytes,
            files_total: coverage.as_ref().map(|c| c.files_total),
            bytes_total: coverage.as_ref().map(|c| c.bytes_total),
            skipped: coverage
                .as_ref()
                .map(|c| Skipped {
                    unreadable: c.skipped_unreadable,
                    excluded: c.skipped_excluded,
                    vanished: c.skipped_vanished,
                    examples: c.examples.iter().map(|e| json!({"path": e.path, "reason": e.reason.as_str()})).collect(),
                })
                .unwrap_or(Skipped { unreadable: skipped, ..Skipped::default() }),
            backup_ratio: ratio,
            backup_ratio_files: ratio_files,
            command_exit: coverage.as_ref().and_then(|c| c.command_exit),
            rpo_s: rpo.map(secs),
            rpo_target_s: target_ms.map(secs),
            worst_rpo_s: worst.map(secs),
            last_drill: last.map(|d| LastDrill {
                time: rfc3339(d.started_ms),
                time_ms: d.started_ms,
                rto_s: d.rto_s(),
                verified: d.ok,
                failed_files: d.failed_files.clone(),
            }),
            verdict: verdict.as_str().to_string(),
        });
    }
    let window: Vec<&DrRecord> = records.iter().filter(|r| r.started_ms >= since_ms).collect();
    let of = |k: DrKind| {
        window
            .iter()
            .filter(|r| r.kind == k)
            .map(|r| {
                let rpo = if k == DrKind::PlanRun { None } else { rpo_at(&r.source, r.started_ms) };
                run_report(r, prices, rpo)
            })
            .collect::<Vec<_>>()
    };
    // The worst RPO over the repository's sources at a moment: what a
    // cluster failure then put at risk.
    let worst_rpo_at = |at_ms: u64| by_source.keys().filter_map(|s| rpo_at(s, at_ms)).max();
    let mut incidents: Vec<IncidentReport> = inputs
        .incidents
        .unwrap_or_default()
        .iter()
        .map(|i| {
            let open = i.state == "open";
            let t = figures::incident_times(i.last_seen_ms, i.detected_ms, i.rebuild_finished_ms, open);
            let duration_ms = t.recovery_ms.unwrap_or_else(|| now_ms.saturating_sub(i.last_seen_ms));
            IncidentReport {
                kind: "node".into(),
                id: i.id,
                time: rfc3339(i.last_seen_ms),
                node: format!("{:016x}", i.node),
                site: i.site.clone(),
                source: String::new(),
                reason: format!("node lost ({} shards)", i.shards_lost),
                state: i.state.clone(),
                detect_s: secs(t.detect_ms),
                recovery_time_s: t.recovery_ms.map(secs),
                bytes_read: i.bytes_read,
                bytes_written: i.bytes_written,
                bytes_cross_site: i.bytes_cross_site,
                cost: cost(prices, i.bytes_read, i.bytes_written, i.bytes_cross_site, duration_ms),
                rpo_at_failure_s: worst_rpo_at(i.last_seen_ms).map(secs),
            }
        })
        .collect();
    // A failed drill is an incident of its own: the failure is known when
    // the drill ends, and it is over when a later drill of the same source
    // verifies.
    for d in window.iter().filter(|r| r.kind == DrKind::Drill && !r.ok) {
        let fixed = drills
            .iter()
            .filter(|x| x.source == d.source && x.ok && x.started_ms > d.started_ms)
            .min_by_key(|x| x.started_ms);
        let recovery_ms = fixed.map(|x| (x.started_ms + x.duration_ms).saturating_sub(d.started_ms));
        incidents.push(IncidentReport {
            kind: "drill".into(),
            id: d.id,
            time: rfc3339(d.started_ms),
            node: String::new(),
            site: String::new(),
            source: d.source.clone(),
            reason: d.reason.clone(),
            state: if fixed.is_some() { "closed" } else { "open" }.into(),
            detect_s: d.rto_s(),
            recovery_time_s: recovery_ms.map(secs),
            bytes_read: d.bytes_read,
            bytes_written: d.bytes_written,
            bytes_cross_site: d.bytes_cross_site,
            cost: cost(prices, d.bytes_read, d.bytes_written, d.bytes_cross_site, d.duration_ms),
            rpo_at_failure_s: rpo_at(&d.source, d.started_ms).map(secs),
        });
    }
    Report {
        generated: rfc3339(now_ms),
        since: rfc3339(since_ms),
        sources,
        restores: of(DrKind::Restore),
        drills: of(DrKind::Drill),
        plan_runs: of(DrKind::PlanRun),
        incidents,
        cluster_incidents: inputs.incidents.is_some(),
        cluster: inputs.status.map(cluster_report),
        prices: inputs.prices,
    }
}

pub async fn report(g: &Global, a: ReportArgs) -> Result<()> {
    let now = now_ms();
    let since_ms = match &a.since {
        Some(t) => parse_time(t).map_err(|e| crate::config::UsageError(format!("--since: {e:#}")))?,
        None => now.saturating_sub(DEFAULT_WINDOW_MS),
    };
    let meta = meta_client(g)?;
    let name = repo_name(g)?;
    let snaps = coffer_client::repo::list_snapshots(&meta, &name).await.context("list snapshots")?;
    let listing = coffer_client::drill::list_dr_all(&meta, &name, 0, a.page_size)
        .await
        .context("list disaster-recovery records")?;
    // Incidents and the cluster's status are the cluster administrator's; a
    // repository admin's report goes without them.
    let incidents = match meta
        .call("list incidents", |mut c| async move { c.list_incidents(pb::ListIncidentsRequest {}).await })
        .await
    {
        Ok(r) => Some(r.incidents),
        Err(e) if e.code() == Some(tonic::Code::PermissionDenied) => None,
        Err(e) => return Err(e).context("list incidents"),
    };
    let status = match meta
        .call("cluster status", |mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await
    {
        Ok(r) => Some(r),
        Err(e) if e.code() == Some(tonic::Code::PermissionDenied) => None,
        Err(e) => return Err(e).context("read the cluster status"),
    };
    let registered = meta
        .call("list sources", |mut c| {
            let repo = name.to_string();
            async move { c.list_sources(pb::ListSourcesRequest { repo }).await }
        })
        .await
        .context("list sources")?;
    let hit_by_loss = coffer_client::drill::snapshots_hit_by_loss(&meta, &name, &snaps, &listing.lost_packs)
        .await
        .context("find the snapshots hit by data loss")?;
    let inputs = ReportInputs {
        targets: registered.sources.into_iter().map(|s| (s.name, s.rpo_target_ms)).collect(),
        incidents: incidents.as_deref(),
        status: status.as_ref(),
        prices: listing.prices,
        hit_by_loss,
    };
    let report = build_report(name.as_str(), &snaps, &listing.records, &inputs, now, since_ms);
    if g.json {
        println!("{}", serde_json::to_value(&report)?);
        return Ok(());
    }
    print_report(&report);
    Ok(())
}

fn print_report(report: &Report) {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.0}s")).unwrap_or_else(|| "-".into());
    let money = |v: Option<f64>| v.map(|x| format!(", cost {x:.4}")).unwrap_or_default();
    println!("disaster-recovery report, {} (since {})", report.generated, report.since);
    for s in &report.sources {
        println!("{}/{}: {}", s.repo, s.source, s.verdict);
        let held = match (s.files_total, s.bytes_total) {
            (Some(f), Some(b)) => format!(" of {f} files, {}", human_bytes(b)),
            _ => String::new(),
        };
        println!(
            "  backup ratio {:.1}% ({} files, {}{held}; {} skipped: {} unreadable, {} excluded, {} vanished)",
            s.backup_ratio * 100.0,
            s.files,
            human_bytes(s.bytes),
            s.files_skipped,
            s.skipped.unreadable,
            s.skipped.excluded,
            s.skipped.vanished,
        );
        for e in &s.skipped.examples {
            println!(
                "    skipped {} ({})",
                e["path"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default()
            );
        }
        if let Some(code) = s.command_exit {
            println!("  command source, exit {code}");
        }
        println!("  RPO {} (target {}), worst {}", opt(s.rpo_s), opt(s.rpo_target_s), opt(s.worst_rpo_s));
        match &s.last_drill {
            Some(d) => println!(
                "  last drill {}: {} in {:.1}s",
                d.time,
                if d.verified { "verified" } else { "FAILED" },
                d.rto_s
            ),
            None => println!("  never drilled"),
        }
    }
    for (what, list) in [("restore", &report.restores), ("drill", &report.drills), ("plan run", &report.plan_runs)] {
        for r in list {
            println!(
                "{what} {} {}: {} in {:.1}s, {}; read {}, wrote {}, {} across sites{}{}",
                r.time,
                r.source,
                if r.ok { "ok" } else { "failed" },
                r.rto_s,
                human_bytes(r.bytes),
                human_bytes(r.bytes_read),
                human_bytes(r.bytes_written),
                human_bytes(r.bytes_cross_site),
                money(r.cost),
                r.rpo_at_failure_s.map(|x| format!(", RPO at the time {x:.0}s")).unwrap_or_default(),
            );
        }
    }
    for i in &report.incidents {
        let what = match i.kind.as_str() {
            "drill" => format!("failed drill of {}: {}", i.source, i.reason),
            _ => format!("node {} in {}", i.node, i.site),
        };
        println!(
            "incident {} ({}) at {}, {what}: detected after {:.1}s, recovered {}; read {}, wrote {}, {} across sites{}{}",
            i.id,
            i.state,
            i.time,
            i.detect_s,
            i.recovery_time_s.map(|s| format!("after {s:.1}s")).unwrap_or_else(|| "not yet".into()),
            human_bytes(i.bytes_read),
            human_bytes(i.bytes_written),
            human_bytes(i.bytes_cross_site),
            money(i.cost),
            i.rpo_at_failure_s.map(|x| format!(", RPO at failure {x:.0}s")).unwrap_or_default(),
        );
    }
    if !report.cluster_incidents {
        println!("(cluster incidents need the cluster administrator)");
    }
    if let Some(c) = &report.cluster {
        let p = &c.packs;
        println!(
            "packs: {} healthy, {} degraded, {} at risk, {} lost, {} site-degraded; redundancy {}",
            p.healthy, p.degraded, p.at_risk, p.lost, p.site_degraded, c.redundancy
        );
        for s in &c.sites {
            println!("  site {}: {} of {} nodes up", s.site, s.up, s.nodes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::{BackupKind, ChunkId, PackId, RepoName, SnapshotId, SnapshotStats, Source};

    fn snap(id: u8, end_ms: u64, tag: &str, errors: u64) -> SnapshotRecord {
        SnapshotRecord {
            id: SnapshotId([id; 16]),
            repo: RepoName::new("r").unwrap(),
            source: Source { host: "h".into(), path: "/p".into() },
            kind: BackupKind::Full,
            parent: None,
            start_ms: end_ms.saturating_sub(10),
            end_ms,
            root: ChunkId([0; 32]),
            stats: SnapshotStats { files: 9, errors, ..Default::default() },
            tags: vec![format!("source:{tag}")],
            refs_pack: PackId([0; 16]),
            refs_count: 0,
        }
    }

    fn drill(snapshot: u8, source: &str, started_ms: u64, ok: bool) -> DrRecord {
        DrRecord {
            id: started_ms,
            kind: DrKind::Drill,
            repo: RepoName::new("r").unwrap(),
            source: source.into(),
            snapshot: Some(SnapshotId([snapshot; 16])),
            started_ms,
            duration_ms: 2_000,
            bytes: 10,
            files: 9,
            ok,
            reason: String::new(),
            failed_files: if ok { vec![] } else { vec!["a".into()] },
            failed_count: u64::from(!ok),
            reconstructed: false,
            bytes_read: 0,
            bytes_written: 0,
            bytes_cross_site: 0,
            steps: vec![],
        }
    }

    #[test]
    fn report_from_records() {
        let h = 3_600_000;
        let snaps = [snap(1, h, "db", 0), snap(2, 4 * h, "db", 0), snap(3, 5 * h, "db", 0), snap(4, h, "web", 2)];
        // The newest db snapshot failed its drill: the RPO counts from the
        // one before.
        let records = [drill(3, "db", 5 * h + 10, false)];
        let r = build_report("r", &snaps, &records, &ReportInputs::default(), 6 * h, 0);
        let db = &r.sources[0];
        assert_eq!(db.source, "db");
        assert_eq!(db.rpo_s, Some(secs(2 * h)));
        assert_eq!(db.worst_rpo_s, Some(secs(3 * h)));
        assert_eq!(db.verdict, "drill failing");
        assert_eq!(db.last_drill.as_ref().unwrap().failed_files, vec!["a".to_string()]);
        let web = &r.sources[1];
        assert_eq!(web.verdict, "unprotected files");
        assert!((web.backup_ratio - 9.0 / 11.0).abs() < 1e-9);
        assert_eq!(r.drills.len(), 1);
        // A later good drill of the same snapshot clears it.
        let records = [drill(3, "db", 5 * h + 10, false), drill(3, "db", 5 * h + 20, true)];
        let r = build_report("r", &snaps, &records, &ReportInputs::default(), 6 * h, 0);
        assert_eq!(r.sources[0].verdict, "ok");
        assert_eq!(r.sources[0].rpo_s, Some(secs(h)));
        assert_eq!(r.sources[1].verdict, "unprotected files");
        // With the registry's target of 30 min, an RPO of an hour is exceeded.
        let inputs = ReportInputs { targets: BTreeMap::from([("db".to_string(), h / 2)]), ..Default::default() };
        let r = build_report("r", &snaps, &records, &inputs, 6 * h, 0);
        assert_eq!(r.sources[0].rpo_target_s, Some(secs(h / 2)));
        assert_eq!(r.sources[0].verdict, "rpo exceeded");
    }

    fn coverage(unreadable: u64, excluded: u64) -> coffer_types::Coverage {
        coffer_types::Coverage {
            files_total: 10 + unreadable + excluded,
            bytes_total: 1_000 + 100 * (unreadable + excluded),
            files_protected: 10,
            bytes_protected: 1_000,
            skipped_unreadable: unreadable,
            skipped_excluded: excluded,
            skipped_vanished: 0,
            examples: vec![coffer_types::SkippedEntry {
                path: "/p/x".into(),
                reason: coffer_types::SkipReason::Unreadable,
            }],
            command_exit: None,
        }
    }

    #[test]
    fn backup_ratio_from_coverage_and_only_unprotected_skips_taint_the_verdict() {
        let h = 3_600_000;
        let mut a = snap(1, h, "a", 0);
        a.stats.coverage = Some(coverage(0, 2));
        let mut b = snap(2, h, "b", 1);
        b.stats.coverage = Some(coverage(1, 0));
        let records = [drill(1, "a", h + 1, true), drill(2, "b", h + 1, true)];
        let r = build_report("r", &[a, b], &records, &ReportInputs::default(), h + 10, 0);
        let (a, b) = (&r.sources[0], &r.sources[1]);
        // Excluded entries are not protected (the ratio says so) but were
        // left out on purpose: the verdict stays ok.
        assert_eq!((a.files_skipped, a.skipped.excluded, a.verdict.as_str()), (2, 2, "ok"));
        assert!((a.backup_ratio - 1_000.0 / 1_200.0).abs() < 1e-9);
        assert!((a.backup_ratio_files - 10.0 / 12.0).abs() < 1e-9);
        assert_eq!((a.files_total, a.bytes_total), (Some(12), Some(1_200)));
        assert_eq!((b.files_skipped, b.skipped.unreadable, b.verdict.as_str()), (1, 1, "unprotected files"));
        assert!(b.backup_ratio < 1.0);
        assert_eq!(b.skipped.examples[0]["reason"], "unreadable");
    }

    #[test]
    fn a_snapshot_hit_by_data_loss_does_not_count_for_the_rpo() {
        let h = 3_600_000;
        let snaps = [snap(1, h, "db", 0), snap(2, 2 * h, "db", 0)];
        let inputs = ReportInputs { hit_by_loss: [SnapshotId([2; 16])].into(), ..Default::default() };
        let r = build_report("r", &snaps, &[], &inputs, 3 * h, 0);
        assert_eq!(r.sources[0].rpo_s, Some(secs(2 * h)));
        assert_eq!(r.sources[0].snapshots_lost, 1);
        // Every snapshot lost: no RPO at all, which is over any target.
        let inputs =
            ReportInputs { hit_by_loss: [SnapshotId([1; 16]), SnapshotId([2; 16])].into(), ..Default::default() };
        let r = build_report("r", &snaps, &[], &inputs, 3 * h, 0);
        assert_eq!((r.sources[0].rpo_s, r.sources[0].verdict.as_str()), (None, "rpo exceeded"));
    }

    #[test]
    fn costs_follow_the_formula_and_failed_drills_are_incidents() {
        let h = 3_600_000;
        let prices =
            Prices { per_byte_read: 0.5, per_byte_written: 0.25, per_byte_cross_site: 2.0, per_node_hour: 3.0 };
        let snaps = [snap(1, h, "db", 0)];
        let mut restore = drill(1, "db", 2 * h, true);
        restore.kind = DrKind::Restore;
        (restore.bytes_read, restore.bytes_written, restore.bytes_cross_site, restore.duration_ms) =
            (100, 40, 8, h / 2);
        let failed = drill(1, "db", 3 * h, false);
        let fixed = drill(1, "db", 4 * h, true);
        let incident = pb::Incident {
            id: 7,
            node: 9,
            site: "site-a".into(),
            state: "closed".into(),
            last_seen_ms: 2 * h,
            detected_ms: 2 * h + 10_000,
            rebuild_finished_ms: 2 * h + 60_000,
            bytes_read: 1_000,
            bytes_written: 500,
            bytes_cross_site: 200,
            ..Default::default()
        };
        let incidents = [incident];
        let inputs = ReportInputs { prices: Some(prices), incidents: Some(&incidents), ..Default::default() };
        let records = [restore, failed.clone(), fixed];
        let r = build_report("r", &snaps, &records, &inputs, 5 * h, 0);
        let want = 100.0 * 0.5 + 40.0 * 0.25 + 8.0 * 2.0 + 0.5 * 3.0;
        assert_eq!(r.restores[0].cost, Some(want));
        assert_eq!(r.restores[0].rpo_at_failure_s, Some(secs(h)));
        let node = r.incidents.iter().find(|i| i.kind == "node").unwrap();
        let want = 1_000.0 * 0.5 + 500.0 * 0.25 + 200.0 * 2.0 + 60_000.0 / 3_600_000.0 * 3.0;
        assert!((node.cost.unwrap() - want).abs() < 1e-9);
        assert_eq!(node.rpo_at_failure_s, Some(secs(h)));
        let drill_incident = r.incidents.iter().find(|i| i.kind == "drill").unwrap();
        assert_eq!((drill_incident.id, drill_incident.source.as_str()), (failed.id, "db"));
        assert_eq!(drill_incident.time, rfc3339(3 * h));
        // Closed by the verified drill an hour later, which took 2 s.
        assert_eq!(drill_incident.state, "closed");
        assert_eq!(drill_incident.recovery_time_s, Some(secs(h + 2_000)));
        // Without prices there is no cost figure.
        let r = build_report("r", &snaps, &records, &ReportInputs::default(), 5 * h, 0);
        assert_eq!(r.restores[0].cost, None);
        assert_eq!(r.incidents.len(), 1, "the failed drill without cluster incidents: {:?}", r.incidents);
        assert!(!r.cluster_incidents);
    }

    #[test]
    fn cluster_section_counts_sites_and_names_the_redundancy() {
        let node =
            |id, site: &str, state: &str| pb::Node { id, site: site.into(), state: state.into(), ..Default::default() };
        let mut s = pb::ClusterStatusResponse {
            nodes: vec![node(1, "a", "up"), node(2, "a", "up"), node(3, "b", "up"), node(4, "b", "down")],
            packs: Some(pb::PackHealth { healthy: 3, degraded: 1, ..Default::default() }),
            ..Default::default()
        };
        let c = cluster_report(&s);
        assert_eq!(
            c.sites,
            vec![SiteReport { site: "a".into(), nodes: 2, up: 2 }, SiteReport { site: "b".into(), nodes: 2, up: 1 }]
        );
        assert_eq!((c.packs.healthy, c.packs.degraded, c.redundancy.as_str()), (3, 1, "degraded"));
        s.site_degraded = 2;
        assert_eq!(cluster_report(&s).redundancy, "site-degraded");
        s.packs = Some(pb::PackHealth { lost: 1, ..Default::default() });
        assert_eq!(cluster_report(&s).redundancy, "data lost");
        s = pb::ClusterStatusResponse { nodes: vec![node(1, "a", "up")], ..Default::default() };
        assert_eq!(cluster_report(&s).redundancy, "full");
    }

    #[test]
    fn drill_argument() {
        let snaps = [snap(0xab, 10, "db", 0), snap(0xcd, 20, "db", 0)];
        assert_eq!(pick_drill_snapshot("db", &snaps).unwrap().id, SnapshotId([0xcd; 16]));
        assert_eq!(pick_drill_snapshot("abab", &snaps).unwrap().id, SnapshotId([0xab; 16]));
        assert!(pick_drill_snapshot("nope", &snaps).is_err());
    }
}
