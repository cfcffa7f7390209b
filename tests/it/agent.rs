//! The agent daemon against a real cluster: scheduled incrementals, keep
//! rules, a change under an `on_change` source, `trigger --wait`, a failing
//! dump command, SIGKILL in the middle of a run and restart, and a
//! real-time source's measured recovery point.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, AgentProc, Cluster, ClusterSpec};
use serde_json::Value;

use crate::{list, num};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The snapshots of the test repository tagged `source:NAME`.
fn snapshots_of(c: &Cluster, name: &str) -> Result<Vec<Value>> {
    let all = c.cli(&["snapshots", "--json"])?.ok()?.json()?;
    let tag = format!("source:{name}");
    Ok(all
        .as_array()
        .context("snapshots is not a list")?
        .iter()
        .filter(|s| s["tags"].as_array().is_some_and(|t| t.iter().any(|x| x == tag.as_str())))
        .cloned()
        .collect())
}

/// The entry of source `name` in `coffer sources --json`.
fn registry_entry(c: &Cluster, name: &str) -> Result<Value> {
    let all = c.cli(&["sources", "--json"])?.ok()?.json()?;
    all["sources"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name).cloned())
        .with_context(|| format!("no source {name} in {all}"))
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn the_agent_schedules_watches_triggers_and_survives_a_kill() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let root = c.dir().join("agent-src");
        for d in ["ticks", "watched"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::write(root.join("ticks/a.txt"), b"tick tock")?;
        std::fs::write(root.join("watched/old.txt"), b"already here")?;
        let starts = root.join("slow-starts");
        let config = c.dir().join("agent.toml");
        let toml = format!(
            r#"
endpoint = [{endpoint}]
state_dir = "{state}"
jitter = "0s"
report_interval = "1s"

[[source]]
name = "ticks"
repo = "test"
paths = ["{root}/ticks"]
schedule = {{ incremental = "every 2s" }}
keep = {{ last = 3 }}
rpo = "1h"

[[source]]
name = "watched"
repo = "test"
paths = ["{root}/watched"]
exclude = ["*.tmp"]
on_change = {{ debounce = "1s" }}

[[source]]
name = "dump"
repo = "test"
command = "printf 'CREATE TABLE orders;'"
tags = ["db"]

[[source]]
name = "broken"
repo = "test"
command = "echo partial; exit 3"

[[source]]
name = "slow"
repo = "test"
command = "echo started >> {starts}; sleep 3; echo slow-dump"
"#,
            endpoint = c.endpoint().split(',').map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "),
            state = c.dir().join("agent-state").display(),
            root = root.display(),
            starts = starts.display(),
        );
        std::fs::write(&config, toml)?;
        let mut agent = AgentProc::start(c, &config, "main")?;
        agent.wait_ready(c, Duration::from_secs(30))?;

        // Scheduled incrementals every 2 s, thinned to the 3 newest by keep.
        wait_until("five scheduled runs of ticks, thinned to three snapshots", Duration::from_secs(60), || {
            let s = agent.source_status(c, "ticks").ok()?;
            let snaps = snapshots_of(c, "ticks").ok()?;
            (num(&s, "runs_ok").ok()? >= 5 && snaps.len() == 3).then_some(())
        })?;
        let ticks = agent.source_status(c, "ticks")?;
        assert_eq!(ticks["last_run"]["result"], "ok", "{ticks}");
        assert_eq!(ticks["last_run"]["kind"], "incremental", "{ticks}");
        assert!(ticks["next_run"].is_string(), "{ticks}");
        assert!(ticks["retention"].as_str().is_some_and(|r| r.starts_with("forgot")), "{ticks}");

        // A file created under the on_change source is in a snapshot within
        // the debounce and a few seconds; an excluded one never is.
        std::fs::write(root.join("watched/skip.tmp"), b"scratch")?;
        std::fs::write(root.join("watched/new.txt"), b"fresh")?;
        let created = Instant::now();
        let snap = wait_until("new.txt in a snapshot of watched", Duration::from_secs(15), || {
            let s = agent.source_status(c, "watched").ok()?;
            let id = s["newest_snapshot"].as_str()?.to_string();
            let ls = c.cli(&["ls", &id, "--json"]).ok()?.ok().ok()?.json().ok()?;
            ls.as_array()?.iter().any(|e| e["path"].as_str().is_some_and(|p| p.ends_with("new.txt"))).then_some(ls)
        })?;
        eprintln!("on_change: new.txt was in a snapshot {:.1}s after it was written", created.elapsed().as_secs_f64());
        assert!(
            !snap.as_array().unwrap().iter().any(|e| e["path"].as_str().is_some_and(|p| p.ends_with(".tmp"))),
            "an excluded file was backed up: {snap}"
        );

        // trigger --wait returns the snapshot id, and the snapshot carries
        // the source's tag, its own tags and the agent's host.
        let out = agent.cli(c, &["trigger", "dump", "--kind", "full", "--wait", "--json"])?.ok()?;
        let t = out.json()?;
        assert_eq!(t["result"], "ok", "{t}");
        let id = t["snapshot_id"].as_str().context("no snapshot_id")?.to_string();
        let dumps = snapshots_of(c, "dump")?;
        assert_eq!(dumps.len(), 1, "{dumps:?}");
        assert_eq!(dumps[0]["id"], id.as_str());
        assert_eq!(dumps[0]["kind"], "full");
        assert!(list(&dumps[0], "tags")?.iter().any(|x| x == "db"), "{:?}", dumps[0]);
        assert!(!dumps[0]["host"].as_str().unwrap_or("").is_empty());

        // The source registry heard of the run: `coffer sources` lists the
        // source within its target, with the run and its snapshot.
        let reg = wait_until("the dump run in the source registry", Duration::from_secs(20), || {
            let s = registry_entry(c, "dump").ok()?;
            (s["last_run"]["snapshot_id"] == id.as_str()).then_some(s)
        })?;
        assert_eq!(reg["last_run"]["result"], "ok", "{reg}");
        assert_eq!(reg["last_run"]["kind"], "full", "{reg}");
        assert_eq!(reg["within_target"], true, "{reg}");
        assert_eq!(reg["strategy"], "triggered", "{reg}");
        assert_eq!(reg["host"], dumps[0]["host"], "{reg}");
        let ticks = registry_entry(c, "ticks")?;
        assert_eq!(ticks["strategy"], "scheduled", "{ticks}");
        assert_eq!(ticks["rpo_target_s"], 3600.0, "{ticks}");
        assert_eq!(ticks["within_target"], true, "{ticks}");
        assert_eq!(ticks["last_run"]["result"], "ok", "{ticks}");
        assert!(ticks["next_run"].is_string(), "{ticks}");

        // A failing command makes no snapshot, exits 1 and is reported.
        let out = agent.cli(c, &["trigger", "broken", "--wait", "--json"])?;
        assert_eq!(out.code, 1, "{out:?}");
        let t = out.json()?;
        assert_eq!(t["result"], "failed", "{t}");
        assert!(t["error"].as_str().is_some_and(|e| e.contains("no snapshot")), "{t}");
        ensure!(snapshots_of(c, "broken")?.is_empty(), "a failed command left a snapshot");
        let b = agent.source_status(c, "broken")?;
        assert_eq!(num(&b, "runs_failed")?, 1, "{b}");
        assert_eq!(b["last_run"]["result"], "failed", "{b}");
        let reg = wait_until("the failed run in the source registry", Duration::from_secs(20), || {
            let s = registry_entry(c, "broken").ok()?;
            (s["runs_failed"] == 1).then_some(s)
        })?;
        assert_eq!(reg["last_run"]["result"], "failed", "{reg}");
        assert!(reg["last_run"]["snapshot_id"].is_null(), "{reg}");
        assert!(reg["last_run"]["error"].as_str().is_some_and(|e| e.contains("no snapshot")), "{reg}");
        assert_eq!(reg["within_target"], false, "a source without a snapshot is never within target: {reg}");

        // SIGKILL in the middle of a run, then restart: the interrupted run
        // runs again once (no snapshot was committed by it), not twice.
        agent.cli(c, &["trigger", "slow"])?.ok()?;
        wait_until("the slow run to start", Duration::from_secs(20), || (lines(&starts) >= 1).then_some(()))?;
        agent.kill();
        agent.restart(c)?;
        agent.wait_ready(c, Duration::from_secs(30))?;
        let slow = wait_until("the interrupted run to be caught up", Duration::from_secs(30), || {
            let s = agent.source_status(c, "slow").ok()?;
            (num(&s, "runs_ok").ok()? == 1).then_some(s)
        })?;
        assert_eq!(num(&slow, "runs_failed")?, 1, "the interrupted run counts as failed: {slow}");
        assert_eq!(num(&slow, "catch_ups")?, 1, "{slow}");
        assert_eq!(lines(&starts), 2, "the command ran once before the kill and once after");
        // Time passes (ticks keeps running) and nothing runs slow again.
        let ticks_before = num(&agent.source_status(c, "ticks")?, "runs_ok")?;
        wait_until("two more ticks after the restart", Duration::from_secs(30), || {
            (num(&agent.source_status(c, "ticks").ok()?, "runs_ok").ok()? >= ticks_before + 2).then_some(())
        })?;
        assert_eq!(lines(&starts), 2, "the slow source ran again without reason");
        assert_eq!(snapshots_of(c, "slow")?.len(), 1);
        // The state survived the kill: the scheduled source kept its counters.
        assert!(ticks_before >= 5);

        // An agent that dies stops reporting: after three report intervals
        // (1 s each here) its sources are stale.
        agent.kill();
        let stale = wait_until("the killed agent's sources to go stale", Duration::from_secs(30), || {
            let s = registry_entry(c, "ticks").ok()?;
            (s["stale"] == true).then_some(s)
        })?;
        assert_eq!(stale["state"], "stale", "{stale}");

        // A bad configuration is refused with the key named, exit 2.
        let bad = c.dir().join("bad.toml");
        std::fs::write(&bad, "endpoint = [\"127.0.0.1:1\"]\n[[source]]\nname = \"x\"\nrepo = \"test\"\ncommand = \"true\"\nschedule = { full = \"someday\" }\n")?;
        let out = c.cli(&["agent", "--config", &bad.display().to_string()])?;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("source[0].schedule.full"), "{}", out.stderr);
        Ok(())
    })
}

/// One append: when it was written and where the file ended after it.
struct Append {
    at_ms: u64,
    end: u64,
}

#[test]
fn a_realtime_source_holds_its_recovery_point() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let max_lag = Duration::from_secs(5);
        let wal = c.dir().join("wal");
        std::fs::create_dir_all(&wal)?;
        let log = wal.join("000000010000000000000001");
        let config = c.dir().join("agent-rt.toml");
        std::fs::write(
            &config,
            format!(
                "endpoint = [{}]\nstate_dir = \"{}\"\njitter = \"0s\"\n[[source]]\nname = \"wal\"\nrepo = \"test\"\n\
                 paths = [\"{}\"]\nrealtime = {{ max_lag = \"5s\" }}\n",
                c.endpoint().split(',').map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "),
                c.dir().join("agent-rt-state").display(),
                wal.display()
            ),
        )?;
        // The segment starts with 16 MiB (several chunks), so that appends
        // show whether a run re-reads the file from the start.
        let mut head = vec![0u8; 16 << 20];
        rand::RngCore::fill_bytes(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(13), &mut head);
        std::fs::write(&log, &head)?;
        let agent = AgentProc::start(c, &config, "rt")?;
        agent.wait_ready(c, Duration::from_secs(30))?;

        // Append a record every 100 ms for 30 s, noting when each landed.
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut appends = Vec::new();
        let mut end = head.len() as u64;
        let started = Instant::now();
        let mut i = 0u64;
        while started.elapsed() < Duration::from_secs(30) {
            let rec = format!("{i:08} {} {}\n", now_ms(), "x".repeat(200));
            f.write_all(rec.as_bytes())?;
            f.flush()?;
            end += rec.len() as u64;
            appends.push(Append { at_ms: now_ms(), end });
            i += 1;
            // The appender's pace is the test's subject: 100 ms between records.
            std::thread::sleep(Duration::from_millis(100));
        }
        let finished_ms = now_ms();
        let final_size = end;
        // Every byte reaches a committed snapshot within max_lag and a commit.
        wait_until("the whole file in a committed snapshot", Duration::from_secs(20), || {
            let s = agent.source_status(c, "wal").ok()?;
            let id = s["newest_snapshot"].as_str()?.to_string();
            let ls = c.cli(&["ls", &id, "--json"]).ok()?.ok().ok()?.json().ok()?;
            let size = ls.as_array()?.iter().find(|e| e["kind"] == "file")?["size"].as_u64()?;
            (size == final_size).then_some(())
        })?;

        // Each snapshot: when it started and committed, and how much of the
        // file it holds (the source is that one file, so its bytes scanned).
        let snaps = snapshots_of(c, "wal")?;
        let mut commits: Vec<(u64, u64, u64)> = Vec::new();
        for s in &snaps {
            commits.push((num(s, "end_ms")?, num(s, "start_ms")?, num(s, "stats.bytes_scanned")?));
        }
        commits.sort();
        let status = agent.source_status(c, "wal")?;
        let commit_time = commits.iter().map(|(end, start, _)| end - start).max().unwrap_or(0);
        eprintln!(
            "realtime: {} snapshots for {} appends ({} bytes) in 30 s; longest run {commit_time} ms",
            snaps.len(),
            appends.len(),
            final_size
        );
        // Sizes only grow: the snapshots hold ever longer prefixes.
        ensure!(commits.windows(2).all(|w| w[0].2 <= w[1].2), "a later snapshot holds less: {commits:?}");

        // The recovery point of each append: how long after it was written
        // the first snapshot holding it committed. Every append written up
        // to max_lag before the end must be in a snapshot.
        let mut worst = 0u64;
        let mut lags = Vec::new();
        for a in appends.iter().filter(|a| a.at_ms + max_lag.as_millis() as u64 <= finished_ms) {
            let Some((commit, _, _)) = commits.iter().find(|(_, _, size)| *size >= a.end) else {
                anyhow::bail!("the append ending at byte {} is in no committed snapshot", a.end);
            };
            let lag = commit.saturating_sub(a.at_ms);
            lags.push(lag);
            worst = worst.max(lag);
        }
        lags.sort_unstable();
        let bound = max_lag.as_millis() as u64 + commit_time;
        eprintln!(
            "realtime: RPO over {} appends: p50 {} ms, p99 {} ms, max {worst} ms (bound max_lag + commit = {bound} ms)",
            lags.len(),
            lags[lags.len() / 2],
            lags[lags.len() * 99 / 100]
        );
        ensure!(worst <= bound, "RPO {worst} ms exceeds max_lag + commit time {bound} ms");
        ensure!(num(&status, "runs_failed")? == 0, "{status}");
        // Runs after the first cut the grown file from its last chunk on,
        // not from the start: its old chunks are read and checked
        // (`bytes_verified`), never cut again.
        let read = num(&status, "last_run.bytes_read")?;
        let cut = read.saturating_sub(num(&status, "last_run.bytes_verified")?);
        eprintln!("realtime: the last run read {read} of {final_size} bytes and cut {cut}");
        ensure!(read == final_size, "the last run read {read} of {final_size} bytes");
        ensure!(cut < final_size / 2, "the last run cut {cut} of {final_size} bytes again");

        // The newest snapshot restores byte for byte.
        crate::restore_and_compare(c, status["newest_snapshot"].as_str().context("newest")?, &wal)?;
        Ok(())
    })
}

/// The value of the sample `name` whose labels include `labels`.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))).and_then(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        },
    )
}

fn agent_config(c: &Cluster, state: &Path, sources: &str) -> String {
    format!(
        "endpoint = [{}]\nstate_dir = \"{}\"\njitter = \"0s\"\nreport_interval = \"1s\"\nadmin_listen = \"127.0.0.1:0\"\n{sources}",
        c.endpoint().split(',').map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "),
        state.display(),
    )
}

fn sighup(agent: &AgentProc) -> Result<()> {
    let pid = agent.pid().context("the agent is not running")?;
    let st = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
    ensure!(st.success(), "kill -HUP {pid}: {st}");
    Ok(())
}

#[test]
fn the_agent_drills_times_out_hooks_serves_metrics_and_reloads() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let root = c.dir().join("ops-src");
        std::fs::create_dir_all(root.join("docs/sub"))?;
        std::fs::write(root.join("docs/a.txt"), b"the first document")?;
        std::fs::write(root.join("docs/sub/b.txt"), vec![7u8; 300_000])?;
        let state = c.dir().join("agent-ops-state");
        let config = c.dir().join("agent-ops.toml");
        let hung_child = root.join("hung.pid");
        let sources = format!(
            r#"
[[source]]
name = "docs"
repo = "test"
paths = ["{root}/docs"]
schedule = {{ incremental = "every 2s" }}
drill = "every 2s"
rpo = "1h"

[[source]]
name = "hung"
repo = "test"
command = "printf never"
pre_hook = "sleep 120 & echo $! > {hung}; wait"
hook_timeout = "1s"
"#,
            root = root.display(),
            hung = hung_child.display(),
        );
        std::fs::write(&config, agent_config(c, &state, &sources))?;
        let mut agent = AgentProc::start(c, &config, "ops")?;
        agent.wait_ready(c, Duration::from_secs(30))?;

        // The admin port: its address in STATE_DIR/admin-addr, live, and
        // ready once the control socket serves.
        let admin = wait_until("the agent's admin-addr", Duration::from_secs(20), || {
            std::fs::read_to_string(state.join("admin-addr")).ok().map(|s| s.trim().to_string())
        })?;
        ensure!(coffer_testkit::http_get(&admin, "/livez")?.0 == 200, "/livez");
        wait_until("/readyz 200", Duration::from_secs(20), || {
            coffer_testkit::http_get(&admin, "/readyz").ok().filter(|(code, _)| *code == 200)
        })?;

        // The scheduled drill restores the newest snapshot, verifies it and
        // records it: the status shows it and `coffer report` has it as the
        // source's last drill.
        let docs = wait_until("a verified scheduled drill of docs", Duration::from_secs(90), || {
            let s = agent.source_status(c, "docs").ok()?;
            (s["last_drill"]["verified"] == true && num(&s, "drills_ok").ok()? >= 1).then_some(s)
        })?;
        assert!(docs["last_drill"]["rto_s"].as_f64().is_some_and(|r| r > 0.0), "{docs}");
        assert!(docs["last_drill"]["snapshot_id"].is_string(), "{docs}");
        assert!(docs["next_drill"].is_string(), "{docs}");
        assert_eq!(num(&docs, "drills_failed")?, 0, "{docs}");
        let report = c.cli(&["report", "--json"])?.ok()?.json()?;
        let line = list(&report, "sources")?
            .iter()
            .find(|s| s["source"] == "docs")
            .cloned()
            .with_context(|| format!("no docs in {report}"))?;
        assert_eq!(line["last_drill"]["verified"], true, "{line}");
        assert!(line["last_drill"]["rto_s"].as_f64().is_some_and(|r| r > 0.0), "{line}");

        // A hook that outlives hook_timeout: its process group is killed,
        // the run fails with an error that names the timeout, no snapshot.
        let started = Instant::now();
        let out = agent.cli(c, &["trigger", "hung", "--wait", "--json"])?;
        assert_eq!(out.code, 1, "{out:?}");
        let t = out.json()?;
        assert_eq!(t["result"], "failed", "{t}");
        assert!(t["error"].as_str().is_some_and(|e| e.contains("hook_timeout")), "{t}");
        ensure!(started.elapsed() < Duration::from_secs(60), "the hung hook held the run for {:?}", started.elapsed());
        ensure!(snapshots_of(c, "hung")?.is_empty(), "a run whose pre hook timed out made a snapshot");
        let child: u32 = std::fs::read_to_string(&hung_child)?.trim().parse()?;
        wait_until("the hook's child to be killed", Duration::from_secs(10), || {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            (stat.is_empty() || state.starts_with('Z')).then_some(())
        })?;

        // /metrics parses, and holds the per-source figures.
        let (code, text) = coffer_testkit::http_get(&admin, "/metrics")?;
        ensure!(code == 200, "/metrics: {code}");
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).context("parse /metrics")?;
        let docs_l = [("source", "docs")];
        let want = |name: &str, labels: &[(&str, &str)]| {
            metric(&scrape, name, labels).with_context(|| format!("no {name}{labels:?} in:\n{text}"))
        };
        ensure!(want("coffer_build_info", &[("role", "agent")])? == 1.0);
        ensure!(want("coffer_agent_runs_total", &[("source", "docs"), ("result", "ok")])? >= 1.0, "{text}");
        ensure!(want("coffer_agent_runs_total", &[("source", "hung"), ("result", "failed")])? == 1.0, "{text}");
        ensure!(want("coffer_agent_runs_total", &[("source", "hung"), ("result", "ok")])? == 0.0, "{text}");
        ensure!(want("coffer_agent_last_run_success", &[("source", "hung")])? == 0.0, "{text}");
        ensure!(want("coffer_agent_rpo_target_seconds", &docs_l)? == 3600.0, "{text}");
        let rpo = want("coffer_agent_rpo_seconds", &docs_l)?;
        ensure!((0.0..3600.0).contains(&rpo), "rpo {rpo}");
        ensure!(want("coffer_agent_last_run_duration_seconds", &docs_l)? > 0.0, "{text}");
        ensure!(want("coffer_agent_last_run_bytes", &docs_l)? >= 300_000.0, "{text}");
        let last_ok = want("coffer_backup_last_success_timestamp_seconds", &docs_l)?;
        ensure!((now_ms() as f64 / 1000.0 - last_ok).abs() < 3600.0, "last success {last_ok}");
        ensure!(want("coffer_agent_drills_total", &[("source", "docs"), ("result", "verified")])? >= 1.0, "{text}");
        ensure!(want("coffer_agent_last_drill_verified", &docs_l)? == 1.0, "{text}");
        ensure!(want("coffer_agent_last_drill_rto_seconds", &docs_l)? > 0.0, "{text}");

        // SIGHUP: a changed file takes effect (a new source appears and
        // runs), the counters of the kept sources carry over.
        let added = format!("{sources}\n[[source]]\nname = \"added\"\nrepo = \"test\"\ncommand = \"printf added\"\n");
        std::fs::write(&config, agent_config(c, &state, &added))?;
        sighup(&agent)?;
        wait_until("the reloaded configuration's new source", Duration::from_secs(60), || {
            agent.source_status(c, "added").ok().map(|_| ())
        })?;
        let t = agent.cli(c, &["trigger", "added", "--wait", "--json"])?.ok()?.json()?;
        assert_eq!(t["result"], "ok", "{t}");
        assert!(num(&agent.source_status(c, "docs")?, "drills_ok")? >= 1);

        // A bad file is refused with an error line naming the key, and the
        // running configuration stays: every source still there and running.
        c.expect_error("reload refused");
        std::fs::write(&config, agent_config(c, &state, &format!("{added}schedule = {{ full = \"someday\" }}\n")))?;
        sighup(&agent)?;
        let log = wait_until("the refused reload in the agent's log", Duration::from_secs(30), || {
            let log = std::fs::read_to_string(agent.log()).ok()?;
            log.lines().find(|l| l.contains("reload refused")).map(str::to_string)
        })?;
        assert!(log.contains("ERROR") && log.contains("source[2].schedule.full"), "{log}");
        ensure!(agent.is_running(), "a bad file stopped the agent");
        // `agent status` reads the (now bad) file to find the socket, so the
        // running configuration is watched through the admin port instead:
        // docs keeps running, and the source the last good file added is
        // still served.
        let runs_ok = |source: &str| -> Option<f64> {
            let (_, text) = coffer_testkit::http_get(&admin, "/metrics").ok()?;
            let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
            metric(&scrape, "coffer_agent_runs_total", &[("source", source), ("result", "ok")])
        };
        let before = runs_ok("docs").context("no docs runs in /metrics")?;
        wait_until("docs to keep running after the refused reload", Duration::from_secs(30), || {
            (runs_ok("docs")? >= before + 2.0).then_some(())
        })?;
        ensure!(runs_ok("added") == Some(1.0), "the source of the last good file is gone");
        Ok(())
    })
}
