//! Disaster-recovery figures measured, not estimated (issue 14): restore
//! drills that verify and record, and fail naming the files when a pack the
//! snapshot needs is beyond repair; recovery plans with dependencies, a dry
//! run and recorded step durations; `--before`; an RPO that grows with the
//! clock and a worst RPO that later good backups do not erase; records that
//! survive a leader change; the backup ratio of a source with an unreadable
//! file; costs from the cluster's prices; cross-site bytes of a restore;
//! paged record listings; an RPO that does not count snapshots hit by data
//! loss.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};
use serde_json::Value;

use crate::{backup, field, list};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A small source tree (no large file: one data pack).
fn source(c: &Cluster, name: &str, seed: u64) -> Result<PathBuf> {
    let dir = c.dir().join(name);
    write_sample_tree(&dir, seed, 0)?;
    Ok(dir)
}

/// Backs up `dir` as the agent's source `name`; returns the snapshot id.
fn backup_source(c: &Cluster, dir: &Path, name: &str) -> Result<String> {
    let tag = format!("source:{name}");
    let s = backup(c, dir, &["--tag", &tag])?;
    Ok(s["snapshot_id"].as_str().context("summary without snapshot_id")?.to_string())
}

fn report(c: &Cluster) -> Result<Value> {
    c.cli(&["report", "--json"])?.ok()?.json()
}

/// The report's line for `source`.
fn source_line(report: &Value, source: &str) -> Result<Value> {
    list(report, "sources")?
        .iter()
        .find(|s| s["source"] == source)
        .cloned()
        .with_context(|| format!("no source {source} in {report}"))
}

fn f64_at(v: &Value, path: &str) -> Result<f64> {
    field(v, path)?.as_f64().with_context(|| format!("{path} is not a number in {v}"))
}

#[test]
fn a_drill_verifies_and_records_and_fails_naming_the_files_when_a_pack_is_lost() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = source(c, "db", 141)?;
        let snap = backup_source(c, &src, "db")?;

        let out = c.cli(&["drill", "db", "--json"])?;
        ensure!(out.code == 0, "a healthy drill exits 0: {} {}", out.stdout, out.stderr);
        let d = out.json()?;
        ensure!(d["verified"] == true && d["snapshot_id"] == snap.as_str(), "drill: {d}");
        ensure!(crate::num(&d, "files")? > 0 && crate::num(&d, "bytes")? > 0, "drill counts nothing: {d}");
        ensure!(list(&d, "failed_files")?.is_empty() && f64_at(&d, "rto_s")? > 0.0, "drill: {d}");
        let r = report(c)?;
        let line = source_line(&r, "db")?;
        ensure!(line["last_drill"]["verified"] == true, "report: {line}");
        ensure!(line["verdict"] == "ok", "a drilled, fresh source without skipped files is ok: {line}");

        // More than m = 2 shards of a data pack gone: beyond repair.
        let data_pack = c
            .storage
            .iter()
            .flat_map(|n| n.shard_files())
            .filter(|f| f.extension().is_some_and(|e| e == "0"))
            .max_by_key(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .and_then(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .context("a data shard")?;
        let mut removed = 0;
        for node in &c.storage {
            for f in node.shard_files() {
                if removed < 3 && f.file_stem().is_some_and(|s| s.to_string_lossy() == data_pack) {
                    std::fs::remove_file(&f)?;
                    removed += 1;
                }
            }
        }
        ensure!(removed == 3, "removed {removed} shards of pack {data_pack}");
        c.expect_error("data lost");
        c.expect_error("fewer than");

        let out = c.cli(&["drill", &snap, "--json"])?;
        ensure!(out.code == 1, "a failed drill exits 1: {} {}", out.stdout, out.stderr);
        let d = out.json()?;
        ensure!(d["verified"] == false, "drill: {d}");
        let failed = list(&d, "failed_files")?;
        ensure!(!failed.is_empty(), "the drill names no file: {d}");
        for f in failed {
            let f = f.as_str().context("a file name")?;
            ensure!(src.join(f).is_file(), "{f} is not a file of the source");
        }
        let r = report(c)?;
        let line = source_line(&r, "db")?;
        ensure!(line["verdict"] == "drill failing", "report: {line}");
        ensure!(line["last_drill"]["verified"] == false, "report: {line}");
        // The failed drill is an incident of its own, with its time and reason.
        let incident = list(&r, "incidents")?
            .iter()
            .find(|i| i["kind"] == "drill")
            .with_context(|| format!("no drill incident in {r}"))?;
        ensure!(incident["source"] == "db" && incident["state"] == "open", "incident: {incident}");
        ensure!(incident["time"] == line["last_drill"]["time"], "incident time: {incident} / {line}");
        ensure!(!incident["reason"].as_str().unwrap_or_default().is_empty(), "incident without reason: {incident}");
        Ok(())
    })
}

fn write_plan(c: &Cluster, name: &str, text: &str) -> Result<PathBuf> {
    let p = c.dir().join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

#[test]
fn a_plan_runs_in_dependency_order_records_its_steps_and_stops_at_a_failure() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = source(c, "orders", 142)?;
        let snap = backup_source(c, &src, "orders")?;
        let target = c.dir().join("recovered");
        let marker = c.dir().join("loaded");
        let plan = write_plan(
            c,
            "plan.toml",
            &format!(
                r#"name = "orders"
[[step]]
name = "db"
restore = {{ repo = "test", source = "orders", snapshot = "latest", target = "{}" }}
timeout = "5m"
[[step]]
name = "load"
after = ["db"]
run = "test -d \"$COFFER_TARGET_DB/docs\" && touch {}"
[[step]]
name = "health"
after = ["load"]
run = "test -f {}"
timeout = "30s"
"#,
                target.display(),
                marker.display(),
                marker.display()
            ),
        )?;
        let p = plan.display().to_string();
        let dry = c.cli(&["recover", "--plan", &p, "--dry-run", "--json"])?.ok()?.json()?;
        let steps = list(&dry, "steps")?;
        let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
        ensure!(names == ["db", "load", "health"], "dry run: {dry}");
        ensure!(steps[0]["snapshot"] == snap.as_str(), "dry run picks the latest snapshot: {dry}");
        ensure!(!target.exists() && !marker.exists(), "a dry run did something");

        let run = c.cli(&["recover", "--plan", &p, "--json"])?.ok()?.json()?;
        ensure!(run["result"] == "ok", "plan: {run}");
        for s in list(&run, "steps")? {
            ensure!(s["result"] == "ok" && f64_at(s, "duration_s")? >= 0.0, "step: {s}");
        }
        ensure!(marker.is_file() && target.join("docs").is_dir(), "the plan did not restore and load");

        // A failing command stops what depends on it.
        let failing = write_plan(
            c,
            "failing.toml",
            &format!(
                r#"[[step]]
name = "db"
restore = {{ repo = "test", source = "orders", target = "{}" }}
[[step]]
name = "load"
after = ["db"]
run = "exit 3"
[[step]]
name = "health"
after = ["load"]
run = "true"
"#,
                c.dir().join("recovered-2").display()
            ),
        )?;
        let out = c.cli(&["recover", "--plan", &failing.display().to_string(), "--json"])?;
        ensure!(out.code == 1, "a failed plan exits 1: {}", out.stdout);
        let run = out.json()?;
        ensure!(run["result"] == "failed" && run["failed_step"] == "load", "plan: {run}");
        let results: Vec<&str> = list(&run, "steps")?.iter().filter_map(|s| s["result"].as_str()).collect();
        ensure!(results == ["ok", "failed", "skipped"], "steps: {run}");

        let r = report(c)?;
        let runs = list(&r, "plan_runs")?;
        ensure!(runs.len() == 2, "two plan runs recorded: {r}");
        ensure!(runs[0]["ok"] == true && runs[1]["ok"] == false, "plan runs: {r}");
        let steps = list(&runs[1], "steps")?;
        ensure!(steps.len() == 3 && steps[1]["result"] == "failed", "recorded steps: {r}");
        for s in list(&runs[0], "steps")? {
            f64_at(s, "duration_s")?;
        }
        // The restores of the plan are restores of record, with their RTO.
        let restores = list(&r, "restores")?;
        ensure!(restores.len() == 2, "restores: {r}");
        ensure!(crate::num(&restores[0], "bytes")? > 0 && f64_at(&restores[0], "rto_s")? > 0.0, "restore: {r}");
        Ok(())
    })
}

#[test]
fn before_picks_the_newest_snapshot_that_ended_before_the_time() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let first_dir = source(c, "v1", 143)?;
        let first = backup_source(c, &first_dir, "app")?;
        // The first whole second after the first backup ended: the second
        // backup ends after it.
        let cut_ms = (now_ms() / 1000 + 1) * 1000;
        wait_until("the clock to pass the cut", Duration::from_secs(5), || (now_ms() > cut_ms).then_some(()))?;
        let second_dir = source(c, "v2", 144)?;
        let second = backup_source(c, &second_dir, "app")?;
        ensure!(first != second);
        let plan = write_plan(
            c,
            "before.toml",
            &format!(
                "[[step]]\nname = \"app\"\nrestore = {{ repo = \"test\", source = \"app\", target = \"{}\" }}\n",
                c.dir().join("app").display()
            ),
        )?;
        let p = plan.display().to_string();
        let cut = coffer_types::time::rfc3339(cut_ms);
        let dry = c.cli(&["recover", "--plan", &p, "--before", &cut, "--dry-run", "--json"])?.ok()?.json()?;
        ensure!(dry["steps"][0]["snapshot"] == first.as_str(), "--before {cut}: {dry}");
        let dry = c.cli(&["recover", "--plan", &p, "--dry-run", "--json"])?.ok()?.json()?;
        ensure!(dry["steps"][0]["snapshot"] == second.as_str(), "without --before: {dry}");
        // Minutes are enough, as in the issue's example.
        let minute = format!("{}Z", &coffer_types::time::rfc3339(cut_ms + 120_000)[..16]);
        let dry = c.cli(&["recover", "--plan", &p, "--before", &minute, "--dry-run", "--json"])?.ok()?.json()?;
        ensure!(dry["steps"][0]["snapshot"] == second.as_str(), "--before {minute}: {dry}");
        let bad = c.cli(&["recover", "--plan", &p, "--before", "soon", "--dry-run"])?;
        ensure!(bad.code == 2, "a bad --before is a usage error: {}", bad.stderr);
        Ok(())
    })
}

#[test]
fn the_rpo_grows_with_the_clock_and_the_worst_rpo_survives_good_backups() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let dir = source(c, "mail", 145)?;
        backup_source(c, &dir, "mail")?;
        let first = f64_at(&source_line(&report(c)?, "mail")?, "rpo_s")?;
        // The agent stopped: no backup, and the RPO grows with the clock.
        let grown = wait_until("the RPO to grow past 2 s", Duration::from_secs(20), || {
            let rpo = f64_at(&source_line(&report(c).ok()?, "mail").ok()?, "rpo_s").ok()?;
            (rpo > first + 2.0).then_some(rpo)
        })?;
        // A good backup brings the RPO down; the worst one stays.
        backup_source(c, &dir, "mail")?;
        let line = source_line(&report(c)?, "mail")?;
        let (rpo, worst) = (f64_at(&line, "rpo_s")?, f64_at(&line, "worst_rpo_s")?);
        ensure!(rpo < grown, "a new backup lowers the RPO: {line}");
        ensure!(worst >= grown, "the worst RPO {worst} forgot the gap of {grown}: {line}");
        ensure!(line["verdict"] == "never drilled", "report: {line}");
        Ok(())
    })
}

#[test]
fn dr_records_survive_a_leader_change() -> Result<()> {
    let spec = ClusterSpec { meta_nodes: 3, ..ClusterSpec::default() };
    Cluster::run(spec, |c| {
        c.wait_voters(3, Duration::from_secs(30))?;
        let dir = source(c, "files", 146)?;
        backup_source(c, &dir, "files")?;
        let out = c.cli(&["drill", "files", "--json"])?.ok()?.json()?;
        ensure!(out["verified"] == true, "drill: {out}");
        let target = c.dir().join("restored");
        c.cli(&["restore", "latest", &target.display().to_string()])?.ok()?;
        let before = report(c)?;

        let leader = c.leader_index().context("a leader")?;
        let old = c.leader();
        c.kill_meta(leader);
        c.expect_lost_voter();
        wait_until("a new leader", Duration::from_secs(30), || c.leader().filter(|l| Some(*l) != old))?;
        let after = report(c)?;
        for key in ["drills", "restores"] {
            ensure!(list(&after, key)?.len() == 1, "{key} after the leader change: {after}");
            ensure!(after[key] == before[key], "{key} changed with the leader: {before} / {after}");
        }
        ensure!(source_line(&after, "files")?["last_drill"]["verified"] == true, "report: {after}");
        Ok(())
    })
}

/// The cluster's prices, per GiB and per node-hour, as the test sets them.
const PRICES: [(&str, f64); 4] = [
    ("--price-per-gib-read", 2.0),
    ("--price-per-gib-written", 3.0),
    ("--price-per-gib-cross-site", 5.0),
    ("--price-per-node-hour", 7.0),
];

#[test]
fn coverage_costs_cross_site_bytes_and_pages() -> Result<()> {
    let meta_flags = PRICES.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect();
    let spec = ClusterSpec { meta_flags, ..ClusterSpec::default() };
    Cluster::run(spec, |c| {
        // A file root cannot read either: reading /proc/self/mem at offset 0
        // fails with EIO. The backup finishes with exit 3 and says so.
        let src = source(c, "files", 147)?;
        let src_arg = src.display().to_string();
        let out = c.cli(&["backup", &src_arg, "/proc/self/mem", "--tag", "source:files", "--json"])?;
        ensure!(out.code == 3, "a backup with an unreadable file exits 3: {} {}", out.stdout, out.stderr);
        let files_snap = out.json()?["snapshot_id"].as_str().context("summary without snapshot_id")?.to_string();
        let out =
            c.cli(&["backup", "--stdin-from-command", "echo dump", "--stdin-name", "dump", "--tag", "source:dump"])?;
        out.ok()?;

        let r = report(c)?;
        let files = source_line(&r, "files")?;
        ensure!(crate::num(&files, "files_skipped")? == 1, "files_skipped: {files}");
        ensure!(crate::num(&files, "skipped.unreadable")? == 1, "skipped: {files}");
        ensure!(f64_at(&files, "backup_ratio_files")? < 1.0, "the file ratio counts the unreadable file: {files}");
        ensure!(f64_at(&files, "backup_ratio")? <= 1.0, "backup ratio: {files}");
        ensure!(files["verdict"] == "unprotected files", "verdict: {files}");
        let example = &list(&files, "skipped.examples")?[0];
        ensure!(example["path"] == "/proc/self/mem" && example["reason"] == "unreadable", "example: {files}");
        let dump = source_line(&r, "dump")?;
        ensure!(dump["command_exit"] == 0 && f64_at(&dump, "backup_ratio")? == 1.0, "command source: {dump}");
        ensure!(dump["verdict"] == "never drilled", "command source: {dump}");
        ensure!(r["prices"]["per_node_hour"] == 7.0, "the cluster's prices reach the report: {r}");

        c.cli(&["drill", "dump", "--json"])?.ok()?;
        // One site stopped: a reader in site-a reads shards from site-b.
        c.kill_storage_site("site-c");
        let target = c.dir().join("restored");
        let out = c.cli(&["restore", &files_snap, &target.display().to_string(), "--site", "site-a"])?;
        out.ok()?;

        let r = report(c)?;
        let restore = &list(&r, "restores")?[0];
        ensure!(crate::num(restore, "bytes_cross_site")? > 0, "no cross-site bytes with site-c stopped: {restore}");
        let gib = (1u64 << 30) as f64;
        let want = crate::num(restore, "bytes_read")? as f64 * 2.0 / gib
            + crate::num(restore, "bytes_written")? as f64 * 3.0 / gib
            + crate::num(restore, "bytes_cross_site")? as f64 * 5.0 / gib
            + f64_at(restore, "rto_s")? / 3600.0 * 7.0;
        let cost = f64_at(restore, "cost")?;
        ensure!((cost - want).abs() <= want * 1e-6, "restore cost {cost}, the formula gives {want}: {restore}");
        ensure!(f64_at(&list(&r, "drills")?[0], "cost")? > 0.0, "a drill has a cost: {r}");
        ensure!(restore["rpo_at_failure_s"].is_number(), "the RPO at the time of the restore: {restore}");

        // The same records, one per page.
        let paged = c.cli(&["report", "--json", "--page-size", "1"])?.ok()?.json()?;
        for key in ["restores", "drills"] {
            ensure!(paged[key] == r[key], "{key} differ when paged: {paged} / {r}");
        }
        Ok(())
    })
}

#[test]
fn the_rpo_does_not_count_snapshots_hit_by_data_loss() -> Result<()> {
    let spec = ClusterSpec { down_after: Duration::from_secs(3), ..ClusterSpec::default() };
    Cluster::run(spec, |c| {
        let dir = source(c, "ledger", 148)?;
        backup_source(c, &dir, "ledger")?;
        let line = source_line(&report(c)?, "ledger")?;
        ensure!(line["rpo_s"].is_number() && line["snapshots_lost"] == 0, "report: {line}");

        // Three of six nodes down: more than m = 2 shards of every pack.
        let victims: Vec<usize> = (0..c.storage.len()).filter(|&i| c.storage[i].site != "site-a").take(3).collect();
        ensure!(victims.len() == 3, "three nodes outside site-a");
        for i in victims {
            c.kill_storage(i);
        }
        let r = wait_until("the packs to count as lost", Duration::from_secs(60), || {
            let r = report(c).ok()?;
            (r["cluster"]["packs"]["lost"].as_u64() > Some(0)).then_some(r)
        })?;
        let line = source_line(&r, "ledger")?;
        ensure!(line["snapshots_lost"] == 1, "the snapshot references a lost pack: {line}");
        ensure!(line["rpo_s"].is_null() && line["verdict"] == "rpo exceeded", "no verified snapshot: {line}");
        ensure!(r["cluster"]["redundancy"] == "data lost", "cluster: {}", r["cluster"]);
        Ok(())
    })
}
