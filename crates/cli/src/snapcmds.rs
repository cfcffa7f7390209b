//! The snapshot-management subcommands: forget (by id or by keep rules),
//! hold, ls and diff, gc and check.
//!
//! `forget --dry-run` prints every decision with its reasons and changes
//! nothing; a real forget sends one command per call, so that the metadata
//! plane either removes every listed snapshot or (if one is held) none.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use coffer_client::retention::{plan_forget, KeepPolicy};
use coffer_types::SnapshotId;
use serde_json::json;

use crate::args::Global;
use crate::shared::{human_bytes, meta_client, open, parse_time};
use coffer_types::time::rfc3339;

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to forget (ids or unique prefixes). Without any, the keep rules decide.
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots of each source.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Weeks start on Monday (UTC).
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every snapshot carrying this tag (repeatable).
    #[arg(long = "keep-tag")]
    pub keep_tags: Vec<String>,
    /// Only list what would be forgotten and why.
    #[arg(long)]
    pub dry_run: bool,
}

impl ForgetArgs {
    fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            tags: self.keep_tags.clone(),
        }
    }
}

pub async fn forget(g: &Global, a: ForgetArgs) -> Result<()> {
    let repo = open(g).await?;
    let policy = a.policy();
    let (holds, now) = repo.holds().await.context("list holds")?;
    let mut gone: Vec<(SnapshotId, String)> = Vec::new();
    let mut report = Vec::new();
    if !a.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("name snapshots or give keep rules, not both");
        }
        for spec in &a.snapshots {
            let s = repo.find_snapshot(spec).await.with_context(|| format!("find snapshot {spec:?}"))?;
            let why = match holds.get(&s.id).filter(|u| **u > now) {
                Some(u) => format!("named, but held until {}", rfc3339(*u)),
                None => "named".to_string(),
            };
            report.push(json!({"id": s.id.to_string(), "source": s.source.to_string(), "time": rfc3339(s.start_ms), "keep": false, "reasons": [why]}));
            gone.push((s.id, s.source.to_string()));
        }
    } else {
        let snaps = repo.snapshots().await.context("list snapshots")?;
        for d in plan_forget(&snaps, &policy, &holds, now)? {
            report.push(json!({"id": d.id.to_string(), "source": d.source.to_string(), "time": rfc3339(d.time_ms), "keep": d.keep, "reasons": d.reasons}));
            if !d.keep {
                gone.push((d.id, d.source.to_string()));
            }
        }
    }
    if !a.dry_run && !gone.is_empty() {
        let ids: Vec<SnapshotId> = gone.iter().map(|(id, _)| *id).collect();
        repo.forget(&ids).await.context("forget snapshots; none was removed")?;
    }
    if g.json {
        println!("{}", json!({"dry_run": a.dry_run, "forgotten": gone.len(), "decisions": report}));
        return Ok(());
    }
    for r in &report {
        let keep = r["keep"].as_bool().unwrap_or(true);
        let reasons: Vec<&str> =
            r["reasons"].as_array().map(|v| v.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
        println!(
            "{} {} {} {}  {}",
            if keep {
                "keep  "
            } else if a.dry_run {
                "would forget"
            } else {
                "forget"
            },
            r["id"].as_str().and_then(|s| s.get(..8)).unwrap_or("?"),
            r["time"].as_str().unwrap_or(""),
            r["source"].as_str().unwrap_or(""),
            reasons.join(", ")
        );
    }
    let verb = if a.dry_run { "would forget" } else { "forgot" };
    println!("{verb} {} snapshots; run `coffer gc` to reclaim their space", gone.len());
    Ok(())
}

pub async fn hold(g: &Global, snapshot: String, until: String) -> Result<()> {
    let repo = open(g).await?;
    let s = repo.find_snapshot(&snapshot).await.with_context(|| format!("find snapshot {snapshot:?}"))?;
    let until_ms = parse_time(&until)?;
    repo.hold(s.id, until_ms).await.with_context(|| format!("hold snapshot {}", s.id.short()))?;
    if g.json {
        println!("{}", json!({"id": s.id.to_string(), "hold_until_ms": until_ms}));
    } else if until_ms == 0 {
        println!("snapshot {} is no longer held", s.id.short());
    } else {
        println!("snapshot {} is held until {}", s.id.short(), rfc3339(until_ms));
    }
    Ok(())
}

pub async fn ls(g: &Global, snapshot: String, path: Option<PathBuf>) -> Result<()> {
    let repo = open(g).await?;
    let s = repo.find_snapshot(&snapshot).await.with_context(|| format!("find snapshot {snapshot:?}"))?;
    let entries = repo.ls(&s, path.as_deref()).await.with_context(|| format!("list snapshot {}", s.id.short()))?;
    if g.json {
        println!("{}", serde_json::to_value(&entries)?);
        return Ok(());
    }
    for e in &entries {
        let size = if e.kind == "file" { human_bytes(e.size) } else { String::new() };
        println!(
            "{:<7} {:>04o} {:>10}  {}  {}",
            e.kind,
            e.mode & 0o7777,
            size,
            rfc3339(e.mtime_s.max(0) as u64 * 1000),
            e.path
        );
    }
    Ok(())
}

pub async fn diff(g: &Global, older: String, newer: String) -> Result<()> {
    let repo = open(g).await?;
    let a = repo.find_snapshot(&older).await.with_context(|| format!("find snapshot {older:?}"))?;
    let b = repo.find_snapshot(&newer).await.with_context(|| format!("find snapshot {newer:?}"))?;
    let changes = repo.diff(&a, &b).await.with_context(|| format!("compare {} with {}", a.id.short(), b.id.short()))?;
    if g.json {
        println!("{}", serde_json::to_value(&changes)?);
        return Ok(());
    }
    for c in &changes {
        println!("{}  {}", c.change.mark(), c.path);
    }
    println!("{} changes from {} to {}", changes.len(), a.id.short(), b.id.short());
    Ok(())
}

/// Asks the metadata leader's collector for a run, with only the endpoint:
/// no password and no repository, because the cluster needs no key to do
/// it, pack rewrites included. With `--wait`, waits for it and prints
/// what it reclaimed.
pub async fn gc(g: &Global, wait: Option<std::time::Duration>) -> Result<()> {
    let meta = meta_client(g)?;
    let Some(wait) = wait else {
        let run = coffer_client::gc::request_run(&meta).await.context("ask for a garbage collection run")?;
        if g.json {
            println!("{}", serde_json::json!({ "run": run }));
        } else {
            println!("garbage collection run {run} asked for; `coffer status` shows its progress");
        }
        return Ok(());
    };
    let s = coffer_client::gc::collect_garbage(&meta, wait).await.context("collect garbage")?;
    if g.json {
        println!("{}", serde_json::to_value(&s)?);
        return Ok(());
    }
    println!(
        "{} snapshots, {} chunks indexed, {} live; swept {} chunks, dropped {} packs, freed {}",
        s.snapshots,
        s.chunks_indexed,
        s.chunks_live,
        s.chunks_swept,
        s.packs_dropped,
        human_bytes(s.bytes_freed)
    );
    if s.packs_rewritten > 0 {
        println!("rewrote {} mostly dead packs ({} written)", s.packs_rewritten, human_bytes(s.bytes_written));
    }
    if s.packs_partly_dead > 0 {
        println!("{} packs hold both live and dead chunks and were kept whole", s.packs_partly_dead);
    }
    if s.repos_waiting > 0 {
        println!(
            "{} repositories wait for backups that were running at condemnation; a later run sweeps them",
            s.repos_waiting
        );
    }
    if s.shards_not_deleted > 0 {
        println!("{} shards could not be deleted (node unreachable); they are orphans now", s.shards_not_deleted);
    }
    for e in &s.errors {
        println!("not collected: {e}");
    }
    Ok(())
}

/// Exit status of a check that found lost data or an inconsistent catalog.
pub const EXIT_CHECK_FAILED: i32 = 4;

pub async fn check(g: &Global, read_data: bool, subset: f64) -> Result<i32> {
    if !(0.0..=100.0).contains(&subset) || subset.is_nan() {
        bail!("--subset must be a percentage between 0 and 100");
    }
    let mut repo = open(g).await?;
    // Reading the data is the long check: it gets a bar or status lines.
    let watch = read_data.then(|| {
        let work = std::sync::Arc::new(coffer_client::Work::default());
        repo = repo.clone().with_progress(work.clone());
        crate::progress::watch("check", g.json, work)
    });
    let opts = coffer_client::check::CheckOptions { read_data, subset_percent: subset };
    let report = repo.check(&opts).await.context("check the repository");
    if let Some(w) = watch {
        w.finish();
    }
    let report = report?;
    let code = if report.data_intact() { 0 } else { EXIT_CHECK_FAILED };
    if g.json {
        println!("{}", serde_json::to_value(&report)?);
        return Ok(code);
    }
    println!(
        "checked {} snapshots, {} packs, {} chunks; read {} packs, {} blobs",
        report.snapshots, report.packs, report.chunks, report.packs_read, report.blobs_read
    );
    for (label, packs) in [("repairable", &report.repairable), ("DATA LOSS", &report.lost)] {
        for p in packs {
            println!(
                "{label}: {} pack {}: {} of {} shards good, {} needed: {}",
                p.kind,
                p.pack,
                p.good,
                p.total,
                p.needed,
                p.bad_shards.join("; ")
            );
        }
    }
    for e in &report.errors {
        println!("error: {e}");
    }
    if !report.affected_snapshots.is_empty() {
        println!("snapshots that cannot be restored whole: {}", report.affected_snapshots.join(", "));
    }
    if code == 0 {
        println!(
            "no data lost{}",
            if report.repairable.is_empty() { "" } else { "; rebuild restores full redundancy" }
        );
    }
    Ok(code)
}
