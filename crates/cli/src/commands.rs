//! The agent's subcommands: repo, backup, snapshots, restore, status.
//!
//! Human output goes to stdout as short tables; `--json` prints one JSON
//! object (or JSON lines for backup progress) and nothing else on stdout.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use coffer_client::backup::{BackupOptions, BackupSummary};
use coffer_client::repo::create_repo_with;
use coffer_client::restore::RestoreTarget;
use coffer_client::CommandOutput;
use coffer_proto::pb;
use coffer_types::{BackupKind, ErasureParams, RepoName, SnapshotRecord};
use serde_json::json;

use crate::args::{BackupArgs, Global, RestoreArgs};
use crate::shared::{human_bytes, meta_client, open, parse_time, password};
use coffer_types::time::rfc3339;

/// Exit status of a backup that finished but could not read some files.
pub const EXIT_PARTIAL: i32 = 3;

pub async fn repo_create(g: &Global, name: String, k: u32, m: u32, min_shards: Option<u32>) -> Result<()> {
    let name = RepoName::new(name)?;
    let params = ErasureParams::new(k, m)?;
    let min = match min_shards {
        Some(n) => params.check_min_shards(n)?,
        None => params.default_min_shards(),
    };
    let pw = password(g)?;
    let meta = meta_client(g)?;
    create_repo_with(&meta, &name, params, min_shards, &pw)
        .await
        .with_context(|| format!("create repository {name}"))?;
    if g.json {
        println!("{}", json!({"repo": name.as_str(), "k": params.k(), "m": params.m(), "min_shards": min}));
    } else {
        println!("created repository {name} ({params})");
    }
    Ok(())
}

pub async fn backup(g: &Global, a: BackupArgs) -> Result<i32> {
    let kind: BackupKind = a.kind.parse().context("parse --kind")?;
    let repo = open(g).await?;
    let host = a.host.clone().unwrap_or_else(hostname);
    let json = g.json;
    // A bar on a terminal, status lines with --json (which also carry the
    // pipeline's own counters under "progress", as before), else nothing.
    let reporter = Arc::new(crate::progress::Reporter::new("backup", json));
    let r = reporter.clone();
    let progress: Option<coffer_client::ProgressFn> = Some(Arc::new(move |p: &coffer_client::Progress| {
        let step = crate::progress::Step {
            unit: "files",
            files: p.files,
            bytes: p.bytes_scanned,
            total_bytes: None,
            elapsed_s: p.elapsed_s,
        };
        let extra = serde_json::to_value(p).map(|v| json!({"type": "progress", "progress": v})).unwrap_or_default();
        if !p.done {
            r.update(&step, extra);
        }
    }));
    let hold_until_ms = a.hold_until.as_deref().map(parse_time).transpose().context("parse --hold-until")?;
    let mut opts = BackupOptions { kind, tags: a.tags.clone(), host, progress, hold_until_ms, ..Default::default() };

    let summary: BackupSummary = if let Some(cmd) = &a.stdin_from_command {
        let name = a.stdin_name.clone().unwrap_or_else(|| "stdin".to_string());
        let reader = CommandOutput::spawn(cmd, &[]).with_context(|| format!("run {cmd:?}"))?;
        opts.command = Some(cmd.clone());
        repo.backup_stream(reader, &name, opts)
            .await
            .with_context(|| format!("back up the output of {cmd:?}; no snapshot was recorded"))?
    } else if a.stdin {
        let name = a.stdin_name.clone().ok_or_else(|| anyhow!("--stdin needs --stdin-name"))?;
        repo.backup_stream(std::io::stdin(), &name, opts).await.context("back up stdin; no snapshot was recorded")?
    } else {
        let mut paths = Vec::new();
        for p in &a.paths {
            let abs = std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))?;
            std::fs::symlink_metadata(&abs).with_context(|| format!("back up {}", p.display()))?;
            paths.push(abs);
        }
        opts.paths = paths;
        repo.backup(opts).await.context("back up")?
    };
    reporter.finish();

    if json {
        let mut v = serde_json::to_value(&summary)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!("summary"));
        }
        println!("{v}");
    } else {
        print_backup_summary(&summary);
    }
    Ok(if summary.errors > 0 { EXIT_PARTIAL } else { 0 })
}

fn print_backup_summary(s: &BackupSummary) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("snapshot {} saved ({})", s.snapshot_id, s.kind.as_str());
    println!("  files {:>10}   dirs {:>8}", s.files, s.dirs);
    if let Some(base) = &s.compared_with {
        println!(
            "  against {}: {} new, {} changed, {} unchanged, {} deleted",
            base.get(..8).unwrap_or(base),
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.files_deleted
        );
    }
    println!(
        "  scanned {:>10.1} MiB   read {:>10.1} MiB   new {:>10.1} MiB   stored {:>10.1} MiB ({:.1} MiB with parity)",
        mib(s.bytes_scanned),
        mib(s.bytes_read),
        mib(s.bytes_new),
        mib(s.bytes_stored),
        mib(s.bytes_stored_raw)
    );
    let rate = if s.duration_s > 0.0 { mib(s.bytes_scanned) / s.duration_s } else { 0.0 };
    println!("  chunks new {} reused {}   {:.2}s, {:.1} MiB/s", s.chunks_new, s.chunks_reused, s.duration_s, rate);
    if s.packs_short > 0 {
        println!(
            "  degraded: {} of {} packs stored short of shards (storage nodes down); repair completes them",
            s.packs_short, s.packs
        );
    }
    if s.errors > 0 {
        println!("  {} files could not be read:", s.errors);
        for e in s.error_messages.iter().take(20) {
            println!("    {e}");
        }
    }
}

pub fn snapshot_json(s: &SnapshotRecord) -> serde_json::Value {
    json!({
        "id": s.id.to_string(),
        "short_id": s.id.short(),
        "kind": s.kind.as_str(),
        "parent": s.parent.map(|p| p.to_string()),
        "source": s.source.to_string(),
        "host": s.source.host,
        "path": s.source.path,
        "time": rfc3339(s.start_ms),
        "end_time": rfc3339(s.end_ms),
        "tags": s.tags,
        "start_ms": s.start_ms,
        "end_ms": s.end_ms,
        "stats": {
            "files": s.stats.files,
            "dirs": s.stats.dirs,
            "bytes_scanned": s.stats.bytes_scanned,
            "bytes_new": s.stats.bytes_new,
            "bytes_stored": s.stats.bytes_stored,
        },
    })
}

pub async fn snapshots(g: &Global) -> Result<()> {
    let repo = open(g).await?;
    let snaps = repo.snapshots().await.context("list snapshots")?;
    if g.json {
        println!("{}", serde_json::Value::Array(snaps.iter().map(snapshot_json).collect()));
        return Ok(());
    }
    println!("{:<10} {:<20} {:<12} {:<10} {:>12}  source", "id", "time", "kind", "parent", "size");
    for s in &snaps {
        println!(
            "{:<10} {:<20} {:<12} {:<10} {:>12}  {}",
            s.id.short(),
            rfc3339(s.start_ms).trim_end_matches('Z').replace('T', " "),
            s.kind.as_str(),
            s.parent.map(|p| p.short()).unwrap_or_else(|| "-".into()),
            human_bytes(s.stats.bytes_scanned),
            s.source
        );
    }
    println!("{} snapshots", snaps.len());
    Ok(())
}

pub async fn restore(g: &Global, a: RestoreArgs) -> Result<()> {
    let work = Arc::new(coffer_client::Work::default());
    let repo = open(g).await?.with_progress(work.clone()).with_site(a.site.clone());
    let snap = repo.find_snapshot(&a.snapshot).await.with_context(|| format!("find snapshot {:?}", a.snapshot))?;
    let target = if a.target == "-" { RestoreTarget::Stdout } else { RestoreTarget::Dir(PathBuf::from(&a.target)) };
    let to_stdout = target == RestoreTarget::Stdout;
    let started_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    // Status lines share stdout with the JSON summary, so not when stdout
    // carries the restored file itself.
    let watch = crate::progress::watch("restore", g.json && !to_stdout, work);
    let result = repo.restore(&snap, target, a.include.as_deref()).await;
    watch.finish();
    // Every restore is recorded with its figures, failed or not, so that the
    // RTO of a real recovery is measured (issue 14). A cluster that cannot
    // take the record does not fail the restore.
    let reason = result.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
    let record = coffer_client::plan::restore_record(&repo, &snap, started_ms, result.as_ref().ok(), &reason);
    if let Err(e) = repo.record_dr(&record).await {
        tracing::warn!(error = %e, "could not record the restore in the catalog");
    }
    let summary = result.with_context(|| format!("restore snapshot {}", snap.id.short()))?;
    if to_stdout {
        // Stdout carries the data; the summary goes to stderr.
        if !summary.bad_shards.is_empty() {
            let bad: Vec<String> = summary.bad_shards.iter().map(ToString::to_string).collect();
            eprintln!("restore: degraded read; bad shards: {}", bad.join("; "));
        }
        return Ok(());
    }
    if g.json {
        let mut v = serde_json::to_value(&summary)?;
        if let Some(o) = v.as_object_mut() {
            // The last line after the status lines, in restic's convention.
            o.insert("message_type".into(), json!("summary"));
        }
        println!("{v}");
    } else {
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} symlinks, {} in {:.2}s",
            snap.id.short(),
            a.target,
            summary.files,
            summary.dirs,
            summary.symlinks,
            human_bytes(summary.bytes),
            summary.duration_s
        );
        if summary.degraded_packs > 0 {
            println!("  {} packs reconstructed from parity", summary.degraded_packs);
        }
        for b in &summary.bad_shards {
            println!("  bad shard: {b}");
        }
    }
    Ok(())
}

pub async fn status(g: &Global) -> Result<()> {
    let meta = meta_client(g)?;
    let s = meta
        .call("cluster status", |mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await
        .context("query cluster status")?;
    let packs = s.packs.unwrap_or_default();
    if g.json {
        let v = json!({
            "nodes": s.nodes.iter().map(|n| json!({
                "id": format!("{:016x}", n.id),
                "site": n.site,
                "addr": n.addr,
                "state": n.state,
                "draining": n.draining,
                "used_bytes": n.used_bytes,
                "capacity_bytes": n.capacity_bytes,
                "free_bytes": n.free_bytes,
                "reserve_bytes": n.reserve_bytes,
                "orphan_bytes": n.orphan_bytes,
            })).collect::<Vec<_>>(),
            "orphan_bytes": s.orphan_bytes,
            "packs": {"healthy": packs.healthy, "degraded": packs.degraded, "at_risk": packs.at_risk, "lost": packs.lost, "short": packs.short},
            "meta": {
                "leader": s.leader,
                "term": s.term,
                "last_log_index": s.last_log_index,
                "applied_index": s.applied_index,
                "members": s.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role, "site": m.site})).collect::<Vec<_>>(),
            },
            "catalog": {"repos": s.repos, "snapshots": s.snapshots, "chunks": s.chunks},
            "site_degraded": s.site_degraded,
            "rebuild": s.rebuild.as_ref().map(|r| json!({
                "queued": r.queued, "in_flight": r.in_flight, "done": r.done, "failed": r.failed,
                "bytes_written": r.bytes_written, "eta_s": r.eta_s, "copies_waiting": r.copies_waiting,
            })),
            "gc": s.gc.as_ref().map(|g| json!({
                "requested": g.requested, "running": g.running, "rounds_open": g.rounds_open,
                "interval_s": g.interval_ms / 1000,
                "rewrite_pending": g.rewrite_pending, "packs_rewritten": g.packs_rewritten,
                "bytes_rewritten": g.bytes_rewritten,
                "last": g.last.as_ref().map(|l| json!({
                    "run": l.run, "started": rfc3339(l.started_ms), "finished": rfc3339(l.finished_ms), "by": l.by,
                    "chunks_condemned": l.chunks_condemned, "chunks_swept": l.chunks_swept,
                    "chunks_spared": l.chunks_spared, "packs_dropped": l.packs_dropped,
                    "bytes_freed": l.bytes_freed, "repos_waiting": l.repos_waiting,
                    "packs_rewritten": l.packs_rewritten, "bytes_written": l.bytes_written,
                    "packs_partly_dead": l.packs_partly_dead,
                    "error": (!l.error.is_empty()).then(|| l.error.clone()),
                })),
            })),
            "workers": s.workers.iter().map(|w| {
                let opt = |ms: u64| (ms > 0).then(|| rfc3339(ms));
                json!({
                    "node": w.node,
                    "name": w.name,
                    "state": w.state,
                    "last_run": opt(w.last_run_ms),
                    "last_error": (!w.last_error.is_empty()).then(|| w.last_error.clone()),
                    "last_error_at": opt(w.last_error_ms),
                    "errors": w.errors,
                    "consecutive_errors": w.consecutive_errors,
                    "runs": w.runs,
                    "progress": w.progress.iter().collect::<std::collections::BTreeMap<_, _>>(),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("metadata: leader {} term {}, applied {}", s.leader, s.term, s.applied_index);
    for m in &s.members {
        println!("  meta {} {:<8} {:<10} {}", m.id, m.role, m.site, m.addr);
    }
    let mut nodes = s.nodes.clone();
    nodes.sort_by(|a, b| (&a.site, &a.addr).cmp(&(&b.site, &b.addr)));
    println!("storage nodes:");
    for n in &nodes {
        print!("  {:<10} {:016x} {:<8} {:<22} used {:>10}", n.site, n.id, n.state, n.addr, human_bytes(n.used_bytes));
        print!("  free {:>10}", human_bytes(n.free_bytes));
        if n.free_bytes <= n.reserve_bytes && n.reserve_bytes > 0 {
            print!(" (full: reserve {})", human_bytes(n.reserve_bytes));
        }
        if n.orphan_bytes > 0 {
            print!("  orphans {}", human_bytes(n.orphan_bytes));
        }
        println!();
    }
    if s.orphan_bytes > 0 {
        println!("orphan shards: {} (collected by their nodes)", human_bytes(s.orphan_bytes));
    }
    println!(
        "packs: {} healthy, {} degraded, {} at risk, {} lost",
        packs.healthy, packs.degraded, packs.at_risk, packs.lost
    );
    if packs.short > 0 {
        println!(
            "short packs: {} (stored while too few nodes were up; repair writes their missing shards)",
            packs.short
        );
    }
    if s.site_degraded > 0 {
        println!("site-degraded packs: {} (placed while a site was down)", s.site_degraded);
    }
    if let Some(r) = &s.rebuild {
        println!(
            "rebuild: {} queued, {} in flight, {} done, {} failed{}",
            r.queued,
            r.in_flight,
            r.done,
            r.failed,
            if r.eta_s > 0.0 { format!(", ETA {:.0}s", r.eta_s) } else { String::new() }
        );
        if r.copies_waiting > 0 {
            println!("superfluous copies: {} left behind by moves, waiting for the sweep", r.copies_waiting);
        }
    }
    println!("catalog: {} repositories, {} snapshots, {} chunks", s.repos, s.snapshots, s.chunks);
    if let Some(g) = &s.gc {
        let state = if g.running { "running" } else { "idle" };
        match &g.last {
            Some(l) => println!(
                "gc: {state}, last run {} finished {}: swept {} chunks, dropped {} packs, freed {}{}",
                l.run,
                rfc3339(l.finished_ms),
                l.chunks_swept,
                l.packs_dropped,
                human_bytes(l.bytes_freed),
                if g.rounds_open > 0 { format!("; {} rounds wait for backups", g.rounds_open) } else { String::new() }
            ),
            None => println!("gc: {state}, no run yet"),
        }
        if g.rewrite_pending > 0 || g.packs_rewritten > 0 {
            println!(
                "gc rewrites: {} mostly dead packs pending, {} rewritten ({} written) by this leader",
                g.rewrite_pending,
                g.packs_rewritten,
                human_bytes(g.bytes_rewritten)
            );
        }
    }
    if !s.workers.is_empty() {
        println!("workers:");
        for w in &s.workers {
            let last = if w.last_run_ms > 0 { rfc3339(w.last_run_ms) } else { "never".into() };
            let error = if w.last_error.is_empty() { String::new() } else { format!("  last error: {}", w.last_error) };
            println!("  {:<16} {:<18} {:<9} last run {last}{error}", w.node, w.name, w.state);
        }
    }
    Ok(())
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
