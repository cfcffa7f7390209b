//! The snapshot-management subcommands: forget (by id or by keep rules),
//! hold, ls and diff, and the parsing of the times holds are given in.
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
use crate::commands::{human_bytes, open};
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

/// Collects garbage with only the endpoint and the repository name: no
/// password, because the cluster needs no key to do it.
pub async fn gc(g: &Global, wait: std::time::Duration) -> Result<()> {
    let meta = crate::commands::meta_client(g)?;
    let repo = crate::commands::repo_name(g)?;
    let s = coffer_client::gc::collect_garbage(&meta, &repo, wait)
        .await
        .with_context(|| format!("collect the garbage of {repo}"))?;
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
    if s.packs_partly_dead > 0 {
        println!("{} packs hold both live and dead chunks and were kept whole", s.packs_partly_dead);
    }
    if s.shards_not_deleted > 0 {
        println!("{} shards could not be deleted (node unreachable); they are orphans now", s.shards_not_deleted);
    }
    Ok(())
}

/// Exit status of a check that found lost data or an inconsistent catalog.
pub const EXIT_CHECK_FAILED: i32 = 4;

pub async fn check(g: &Global, read_data: bool, subset: f64) -> Result<i32> {
    if !(0.0..=100.0).contains(&subset) || subset.is_nan() {
        bail!("--subset must be a percentage between 0 and 100");
    }
    let repo = open(g).await?;
    let opts = coffer_client::check::CheckOptions { read_data, subset_percent: subset };
    let report = repo.check(&opts).await.context("check the repository")?;
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

/// A time for a hold: `none` (clears it), `+N` with a unit (`s`, `m`, `h`,
/// `d`) from now, a date `YYYY-MM-DD` (midnight UTC), or
/// `YYYY-MM-DDTHH:MM:SSZ`. Returns milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    if let Some(rel) = s.strip_prefix('+') {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let (num, unit) = rel.split_at(split);
        let n: u64 = num.parse().with_context(|| format!("{s:?}: not a number of units"))?;
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => bail!("{s:?}: unknown unit {unit:?} (use s, m, h or d)"),
        };
        return Ok(now_ms().saturating_add(n.saturating_mul(unit_ms)));
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => {
            (d, Some(t.strip_suffix('Z').with_context(|| format!("{s:?}: times must be UTC, ending in Z"))?))
        }
        None => (s, None),
    };
    let num = |p: &str, what: &str| -> Result<i64> { p.parse::<i64>().with_context(|| format!("{s:?}: bad {what}")) };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else { bail!("{s:?}: expected YYYY-MM-DD[THH:MM:SSZ], +7d or none") };
    let (y, m, d) = (num(y, "year")?, num(m, "month")?, num(d, "day")?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        bail!("{s:?}: not a date after 1970");
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(t) = time {
        let hms: Vec<&str> = t.split(':').collect();
        let [h, mi, se] = hms.as_slice() else { bail!("{s:?}: expected HH:MM:SS") };
        let (h, mi, se) = (num(h, "hour")?, num(mi, "minute")?, num(se, "second")?);
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
            bail!("{s:?}: not a time of day");
        }
        secs += h * 3600 + mi * 60 + se;
    }
    Ok(secs as u64 * 1000)
}

/// Howard Hinnant's civil-to-days algorithm.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_round_trip() {
        assert_eq!(parse_time("none").unwrap(), 0);
        assert_eq!(parse_time("2000-02-29").unwrap(), 951_782_400_000);
        assert_eq!(rfc3339(parse_time("2026-11-18T11:06:40Z").unwrap()), "2026-11-18T11:06:40Z");
        let soon = parse_time("+1d").unwrap();
        assert!(soon > now_ms() && soon <= now_ms() + 86_400_000);
        for bad in ["", "2026-13-01", "2026-11-18T11:06:40", "+5y", "tomorrow", "1960-01-01"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
