//! `coffer sources`: every source the agents of the cluster protect, from
//! the catalog's source registry, with its recovery point against its
//! target and whether its agent still reports.
//!
//! Figures are judged against the leader's clock (`now_ms` of the answer),
//! by the pure functions of `coffer_types::SourceRecord`, so every machine
//! that asks sees the same verdicts.

use anyhow::{Context, Result};
use coffer_proto::pb;
use coffer_types::time::rfc3339;
use coffer_types::{SourceRecord, SourceRun};
use serde_json::{json, Value};

use crate::args::Global;
use crate::shared::{human_bytes, meta_client, repo_name};

/// The verdict of one source at `now_ms`, for people and scripts.
pub fn state(s: &SourceRecord, now_ms: u64) -> &'static str {
    if s.is_stale(now_ms) {
        "stale"
    } else if s.last_ok_end_ms.is_none() {
        "never backed up"
    } else if s.within_target(now_ms) {
        "ok"
    } else {
        "rpo exceeded"
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn run_json(r: &SourceRun) -> Value {
    json!({
        "time": rfc3339(r.started_ms),
        "kind": r.kind.as_str(),
        "snapshot_id": r.snapshot.map(|id| id.to_string()),
        "result": if r.ok { "ok" } else { "failed" },
        "error": (!r.error.is_empty()).then(|| r.error.clone()),
        "duration_s": secs(r.finished_ms.saturating_sub(r.started_ms)),
        "bytes": r.bytes,
    })
}

/// One source as `coffer sources --json` shows it.
pub fn source_json(s: &SourceRecord, now_ms: u64) -> Value {
    json!({
        "repo": s.repo.to_string(),
        "name": s.name,
        "host": s.host,
        "strategy": s.strategy,
        "rpo_s": s.rpo_ms(now_ms).map(secs),
        "rpo_target_s": (s.rpo_target_ms > 0).then(|| secs(s.rpo_target_ms)),
        "within_target": s.within_target(now_ms),
        "stale": s.is_stale(now_ms),
        "state": state(s, now_ms),
        "reported": rfc3339(s.reported_ms),
        "last_snapshot_end": s.last_ok_end_ms.map(rfc3339),
        "last_run": s.last_run.as_ref().map(run_json),
        "next_run": s.next_run_ms.map(rfc3339),
        "runs_ok": s.runs_ok,
        "runs_failed": s.runs_failed,
    })
}

fn human_secs(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}

pub async fn list(g: &Global) -> Result<()> {
    let repo = g.repo.as_ref().map(|_| repo_name(g)).transpose()?;
    let meta = meta_client(g)?;
    let req = pb::ListSourcesRequest { repo: repo.as_ref().map(|r| r.to_string()).unwrap_or_default() };
    let r = meta
        .call("list sources", |mut c| {
            let req = req.clone();
            async move { c.list_sources(req).await }
        })
        .await
        .context("list sources")?;
    let now = r.now_ms;
    let sources = r
        .sources
        .into_iter()
        .map(SourceRecord::try_from)
        .collect::<Result<Vec<_>, _>>()
        .context("the catalog answered with a malformed source")?;
    if g.json {
        let v: Vec<Value> = sources.iter().map(|s| source_json(s, now)).collect();
        println!("{}", json!({ "sources": v, "now": rfc3339(now) }));
        return Ok(());
    }
    if sources.is_empty() {
        println!("no sources reported");
        return Ok(());
    }
    println!(
        "{:<12} {:<20} {:<16} {:<10} {:>8} {:>8}  {:<16} LAST RUN",
        "REPO", "SOURCE", "HOST", "STRATEGY", "RPO", "TARGET", "STATE"
    );
    for s in &sources {
        let rpo = s.rpo_ms(now).map(|ms| human_secs(secs(ms))).unwrap_or_else(|| "-".into());
        let target = if s.rpo_target_ms > 0 { human_secs(secs(s.rpo_target_ms)) } else { "-".into() };
        let last = match &s.last_run {
            None => "-".to_string(),
            Some(r) if r.ok => format!("{} {} ok, {}", rfc3339(r.started_ms), r.kind.as_str(), human_bytes(r.bytes)),
            Some(r) => format!("{} {} failed: {}", rfc3339(r.started_ms), r.kind.as_str(), r.error),
        };
        println!(
            "{:<12} {:<20} {:<16} {:<10} {:>8} {:>8}  {:<16} {}",
            s.repo.to_string(),
            s.name,
            s.host,
            s.strategy,
            rpo,
            target,
            state(s, now),
            last
        );
    }
    Ok(())
}

pub async fn remove(g: &Global, name: &str) -> Result<()> {
    let repo = repo_name(g)?;
    let meta = meta_client(g)?;
    let req = pb::RemoveSourceRequest { repo: repo.to_string(), name: name.to_string() };
    let r = meta
        .call("remove source", |mut c| {
            let req = req.clone();
            async move { c.remove_source(req).await }
        })
        .await
        .context("remove source")?;
    if g.json {
        println!("{}", json!({ "repo": repo.to_string(), "name": name, "removed": r.removed }));
    } else if r.removed {
        println!("source {name} of {repo} removed from the registry");
    } else {
        println!("repository {repo} has no source {name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_types::RepoName;

    #[test]
    fn the_state_names_the_worst_first() {
        let mut s = SourceRecord {
            repo: RepoName::new("r").unwrap(),
            name: "db".into(),
            host: "h".into(),
            strategy: "scheduled".into(),
            rpo_target_ms: 10_000,
            report_interval_ms: 1_000,
            reported_ms: 100_000,
            last_ok_end_ms: None,
            last_run: None,
            next_run_ms: None,
            runs_ok: 0,
            runs_failed: 1,
        };
        assert_eq!(state(&s, 100_500), "never backed up");
        s.last_ok_end_ms = Some(95_000);
        assert_eq!(state(&s, 100_500), "ok");
        assert_eq!(state(&s, 103_001), "stale", "silence beats a figure that is no longer reported");
        s.reported_ms = 110_000;
        assert_eq!(state(&s, 110_000), "rpo exceeded");
        let v = source_json(&s, 110_000);
        assert_eq!(v["rpo_s"], 15.0);
        assert_eq!(v["rpo_target_s"], 10.0);
        assert_eq!(v["within_target"], false);
    }
}
