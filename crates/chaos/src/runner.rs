//! Runs schedules: a fresh cluster for each, the workload's agents and a
//! leader watcher on threads, the faults injected and healed on the
//! schedule's clock by this thread, everything healed at the end, then the
//! checks; and the report of a whole run (schedules, faults by kind,
//! snapshots checked, bytes compared, findings), written as JSON and
//! Markdown.
//!
//! Every failing schedule is printed with its seed and its events, so that
//! `make chaos CHAOS_SEED=S` runs it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::checks::{self, Finding, LeaderViews, Severity};
use crate::cluster::{ChaosCluster, Cli, ClusterShape, NodeRef};
use crate::faults::{self, Active};
use crate::linear::Verdict;
use crate::membership::{self, Membership};
use crate::realtime::Realtime;
use crate::schedule::{generate, GenOptions, Schedule};
use crate::workload::{self, Agent, Shared};

/// Agents backing up at once.
const AGENTS: usize = 2;

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub schedules: usize,
    pub duration: Duration,
    /// The `coffer` binary.
    pub bin: PathBuf,
    /// Where the report goes (`target/chaos`).
    pub out: PathBuf,
    /// Keep each schedule's directory (logs, data) instead of removing it.
    pub keep: bool,
}

/// What one schedule did and found.
#[derive(Debug, Serialize)]
pub struct ScheduleReport {
    pub schedule: Schedule,
    /// Faults injected, by kind (an injection that failed is not counted).
    pub injected: BTreeMap<String, u64>,
    /// Injections that could not be made (no leader known, say), with why.
    pub not_injected: Vec<String>,
    /// Faults held back for their whole time, by kind: healed storage
    /// faults still left packs short (`faults::Exposure`).
    pub held: BTreeMap<String, u64>,
    /// Faults injected late for the same reason (their end unchanged).
    pub late: BTreeMap<String, u64>,
    pub backups: u64,
    pub backups_refused: u64,
    pub restores_during_run: u64,
    pub restores_refused: u64,
    pub snapshots_checked: u64,
    pub bytes_compared: u64,
    pub history_ops: usize,
    pub linearizability: Option<Verdict>,
    pub leader_samples: u64,
    /// The voter added and removed during the schedule.
    pub membership: Membership,
    /// Snapshots of the real-time source restored and compared after healing.
    pub realtime_checked: u64,
    pub orphan_bytes: Option<u64>,
    pub findings: Vec<Finding>,
    /// Where the logs were kept, when they were.
    pub kept: Option<PathBuf>,
    pub seconds: f64,
    /// When the schedule's clock started (Unix ms), to read the events'
    /// times against the nodes' log timestamps.
    pub clock_started_unix_ms: u64,
}

impl ScheduleReport {
    pub fn has(&self, s: Severity) -> bool {
        self.findings.iter().any(|f| f.severity == s)
    }
}

/// A whole run's report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub minutes: f64,
    pub schedules: Vec<ScheduleReport>,
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Faults held back for their whole time, and injected late, by kind.
    pub faults_held: BTreeMap<String, u64>,
    pub faults_late: BTreeMap<String, u64>,
    pub snapshots_checked: u64,
    pub bytes_compared: u64,
    pub backups: u64,
    pub backups_refused: u64,
    pub netem: bool,
}

impl Report {
    pub fn findings(&self, s: Severity) -> usize {
        self.schedules.iter().map(|r| r.findings.iter().filter(|f| f.severity == s).count()).sum()
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# Chaos run, seed {}\n\n{} schedules of {:.1} min. Latency faults use {}.\n\n",
            self.seed,
            self.schedules.len(),
            self.minutes,
            if self.netem { "netem" } else { "a tbf slow link (this kernel has no netem)" }
        );
        md.push_str(&format!(
            "- backups: {} ({} refused, {:.1}%)\n- acknowledged snapshots restored and compared after healing: {}\n- bytes compared: {}\n- findings: {} safety, {} availability, {} log\n\n",
            self.backups,
            self.backups_refused,
            100.0 * self.backups_refused as f64 / self.backups.max(1) as f64,
            self.snapshots_checked,
            self.bytes_compared,
            self.findings(Severity::Safety),
            self.findings(Severity::Availability),
            self.findings(Severity::Log),
        ));
        md.push_str("## Faults injected, by kind\n\n| kind | count | late | held back |\n|---|---|---|---|\n");
        let mut kinds: std::collections::BTreeSet<&String> = self.faults_by_kind.keys().collect();
        kinds.extend(self.faults_held.keys());
        for k in kinds {
            let n = |m: &BTreeMap<String, u64>| m.get(k).copied().unwrap_or(0);
            md.push_str(&format!(
                "| {k} | {} | {} | {} |\n",
                n(&self.faults_by_kind),
                n(&self.faults_late),
                n(&self.faults_held)
            ));
        }
        md.push_str(
            "\nA storage fault is injected late, or held back, while healed storage faults still leave packs short (a short pack survives only p-k more losses).\n",
        );
        md.push_str("\n## Schedules\n\n| # | nodes/site | faults | backups | refused | checked (real-time) | bytes | voter added / removed (ms) | linearizable | findings (S/A/L) |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.schedules {
            let count = |s| r.findings.iter().filter(|f| f.severity == s).count();
            let at = |t: Option<u64>| t.map_or("-".to_string(), |t| t.to_string());
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} ({}) | {} | {} / {} | {:?} | {}/{}/{} |\n",
                r.schedule.index,
                r.schedule.nodes_per_site,
                r.injected.values().sum::<u64>(),
                r.backups,
                r.backups_refused,
                r.snapshots_checked,
                r.realtime_checked,
                r.bytes_compared,
                at(r.membership.voter_at_ms),
                at(r.membership.removed_at_ms),
                r.linearizability,
                count(Severity::Safety),
                count(Severity::Availability),
                count(Severity::Log),
            ));
        }
        for r in self.schedules.iter().filter(|r| !r.findings.is_empty()) {
            md.push_str(&format!(
                "\n## Schedule {} (seed {}; clock started at Unix ms {})\n\n",
                r.schedule.index, r.schedule.seed, r.clock_started_unix_ms
            ));
            for e in &r.schedule.events {
                md.push_str(&format!("- at {} ms for {} ms: {:?}\n", e.at_ms, e.duration_ms, e.fault));
            }
            md.push('\n');
            for f in &r.findings {
                md.push_str(&format!("- **{:?}**: {}\n", f.severity, f.what));
            }
            if let Some(kept) = &r.kept {
                md.push_str(&format!("\nLogs kept in `{}`.\n", kept.display()));
            }
        }
        md
    }
}

/// Runs every schedule of `opts` and writes the report under `opts.out`.
pub fn run(opts: &RunOptions) -> Result<Report> {
    if let Some(why) = crate::net::unsupported_reason() {
        bail!("SKIPPED: {why}");
    }
    crate::net::clean_leftovers();
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let gen = GenOptions { duration: opts.duration, clock_faults: crate::cluster::find_faketime().is_some() };
    let mut report = Report {
        seed: opts.seed,
        minutes: opts.duration.as_secs_f64() / 60.0,
        schedules: Vec::new(),
        faults_by_kind: BTreeMap::new(),
        faults_held: BTreeMap::new(),
        faults_late: BTreeMap::new(),
        snapshots_checked: 0,
        bytes_compared: 0,
        backups: 0,
        backups_refused: 0,
        netem: false,
    };
    for i in 0..opts.schedules {
        let schedule = generate(opts.seed, i, &gen);
        eprintln!(
            "chaos: schedule {i} of seed {} ({} events, {} nodes per site)",
            opts.seed,
            schedule.events.len(),
            schedule.nodes_per_site
        );
        let r = run_schedule(&schedule, opts, &mut report.netem).with_context(|| {
            format!("schedule {i} of seed {}: {}", opts.seed, serde_json::to_string(&schedule).unwrap_or_default())
        })?;
        for (k, n) in &r.injected {
            *report.faults_by_kind.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &r.held {
            *report.faults_held.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &r.late {
            *report.faults_late.entry(k.clone()).or_default() += n;
        }
        report.snapshots_checked += r.snapshots_checked;
        report.bytes_compared += r.bytes_compared;
        report.backups += r.backups;
        report.backups_refused += r.backups_refused;
        if !r.findings.is_empty() {
            eprintln!(
                "chaos: schedule {i} of seed {} has findings; its schedule:\n{}",
                opts.seed,
                serde_json::to_string_pretty(&r.schedule)?
            );
            for f in &r.findings {
                eprintln!("  {:?}: {}", f.severity, f.what);
            }
        }
        report.schedules.push(r);
        write_report(&report, &opts.out)?;
    }
    Ok(report)
}

fn write_report(report: &Report, out: &Path) -> Result<()> {
    let base = out.join(format!("report-{}", report.seed));
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(report)?)?;
    std::fs::write(base.with_extension("md"), report.markdown())?;
    Ok(())
}

/// Samples every member's view about once a second until stopped.
fn watch_leaders(c: &Cli, sh: &Shared, views: &Mutex<LeaderViews>) {
    while !sh.stop.load(Ordering::SeqCst) {
        if let Some(m) = c.members() {
            views.lock().unwrap_or_else(|p| p.into_inner()).record(&m);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// Samples the cluster's `status --json` about every two seconds until
/// stopped: the pack counts (short, degraded, at risk), the storage nodes'
/// states and the rebuild queue, on the schedule's clock. Kept beside the
/// logs of a schedule with findings, to tell which packs were exposed when
/// a call was refused.
fn watch_status(c: &Cli, sh: &Shared, samples: &Mutex<Vec<serde_json::Value>>) {
    while !sh.stop.load(Ordering::SeqCst) {
        let at_ms = sh.start.elapsed().as_millis() as u64;
        let got = c
            .cli(&["status", "--json", "--retry-for", "2s"], Duration::from_secs(20))
            .ok()
            .and_then(|o| o.ok().ok())
            .and_then(|o| o.json().ok());
        if let Some(s) = got {
            let nodes: Vec<String> = s["nodes"]
                .as_array()
                .map(|ns| {
                    ns.iter()
                        .map(|n| {
                            format!("{}:{}", n["addr"].as_str().unwrap_or("?"), n["state"].as_str().unwrap_or("?"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let sample = serde_json::json!({
                "at_ms": at_ms,
                "packs": s["packs"],
                "site_degraded": s["site_degraded"],
                "rebuild": s["rebuild"],
                "nodes": nodes,
            });
            samples.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
        }
        std::thread::sleep(Duration::from_millis(2_000));
    }
}

/// Runs one schedule on a fresh cluster.
pub fn run_schedule(s: &Schedule, opts: &RunOptions, netem: &mut bool) -> Result<ScheduleReport> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix(&format!("coffer-chaos-{}-{}-", std::process::id(), s.index))
        .tempdir()
        .context("create the schedule's directory")?;
    let shape =
        ClusterShape { sites: s.sites, nodes_per_site: s.nodes_per_site, disk_mib: 384, skewable: s.skewable() };
    let c = ChaosCluster::start(dir.path(), &opts.bin, shape)?;
    *netem = faults::netem_available(&c);
    let mut rt = Realtime::start(&c, s.seed ^ s.index as u64)?;
    let sh = Shared::new();
    let member = Mutex::new(Membership::default());
    let views = Mutex::new(LeaderViews::default());
    let status_samples = Mutex::new(Vec::new());
    let t0_unix = Mutex::new(0u64);
    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_injected = Vec::new();
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    let mut late: BTreeMap<String, u64> = BTreeMap::new();
    let mut damaged = Vec::new();
    let mut findings = Vec::new();

    // The agents and the watcher borrow the cluster for reads while this
    // thread injects faults through a second, mutable handle: the process
    // table is behind a mutex so that both can use it.
    let cluster = Arc::new(Mutex::new(c));
    let agents: Vec<Agent> =
        (0..AGENTS).map(|a| Agent::new(dir.path(), s.seed ^ s.index as u64, a)).collect::<Result<_>>()?;
    let reader = {
        let g = cluster.lock().unwrap_or_else(|p| p.into_inner());
        g.reader()
    };
    std::thread::scope(|scope| -> Result<()> {
        for a in agents {
            let (sh, reader) = (sh.clone(), &reader);
            scope.spawn(move || a.run(reader, &sh));
        }
        {
            let (sh, reader, views) = (sh.clone(), &reader, &views);
            scope.spawn(move || watch_leaders(reader, &sh, views));
        }
        {
            let (sh, reader, samples) = (sh.clone(), &reader, &status_samples);
            scope.spawn(move || watch_status(reader, &sh, samples));
        }
        {
            let (sh, reader, cluster, member) = (sh.clone(), &reader, &*cluster, &member);
            scope.spawn(move || membership::run(cluster, reader, &sh, s.duration_ms, member));
        }
        {
            let (sh, rt) = (sh.clone(), &rt);
            scope.spawn(move || {
                if let Err(e) = rt.append_until_stopped(&sh) {
                    sh.record.lock().unwrap_or_else(|p| p.into_inner()).other_refused.push(workload::Refusal {
                        what: "real-time appender".into(),
                        at_ms: sh.start.elapsed().as_millis() as u64,
                        faults: Vec::new(),
                        error: format!("{e:#}"),
                    });
                }
            });
        }
        // The schedule's clock: inject and heal at their times.
        let mut pending: Vec<_> = s.events.iter().enumerate().collect();
        pending.reverse();
        let mut active: Vec<(u64, Active)> = Vec::new();
        // Faults due but held back while healed storage faults still leave
        // packs short (`faults::Exposure`), in the order they were due.
        let mut waiting: Vec<(usize, &crate::schedule::Event)> = Vec::new();
        let mut exposure = faults::Exposure::default();
        let mut asked_at: Option<Instant> = None;
        let storage_sites = s.storage_sites();
        let t0 = Instant::now();
        *t0_unix.lock().unwrap_or_else(|p| p.into_inner()) = unix_ms();
        loop {
            let mut now = t0.elapsed().as_millis() as u64;
            // With a storage fault due and healed ones still counted, ask
            // the cluster (at most once a second) whether the packs they
            // left short are complete again; an unanswered status keeps
            // them counted.
            let due_storage = waiting
                .iter()
                .chain(pending.iter().rev().take_while(|(_, e)| e.at_ms <= now))
                .any(|(_, e)| e.fault.impact().touches_storage());
            if due_storage && !exposure.is_empty() && asked_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                asked_at = Some(Instant::now());
                // Short, so that heals due meanwhile are not held up long.
                if let Ok(st) = reader
                    .cli(&["status", "--json", "--retry-for", "1s"], Duration::from_secs(5))
                    .and_then(|o| o.ok())
                    .and_then(|o| o.json())
                {
                    let zero = |v: &serde_json::Value| v.as_u64() == Some(0);
                    if zero(&st["packs"]["short"]) && zero(&st["site_degraded"]) {
                        exposure.settled();
                    }
                }
                now = t0.elapsed().as_millis() as u64;
            }
            let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            // Heal what is due first, so that a fault injected at the same
            // moment is judged against the faults that remain.
            let mut k = 0;
            while k < active.len() {
                if active[k].0 <= now {
                    let (_, mut a) = active.remove(k);
                    exposure.healed(&a.fault);
                    if let Err(e) = faults::heal(&mut c, &mut a) {
                        // A node that refuses to start (on a disk another
                        // fault still fills, say) says why and exits; it is
                        // started again after the schedule, where the
                        // checks judge whether it came back.
                        let what = format!("heal {:?}: {e:#}", a.fault);
                        findings.push(Finding { severity: Severity::Availability, what });
                    }
                } else {
                    k += 1;
                }
            }
            while pending.last().is_some_and(|(_, e)| e.at_ms <= now) {
                let Some(due) = pending.pop() else { break };
                waiting.push(due);
            }
            let mut w = 0;
            while w < waiting.len() {
                let (id, e) = waiting[w];
                let impacts: Vec<faults::Impact> = active.iter().map(|(_, a)| a.fault.impact()).collect();
                if !exposure.allows(&impacts, &e.fault.impact(), &storage_sites, s.m) {
                    if e.end_ms() <= now + 1_000 {
                        waiting.remove(w);
                        *held.entry(e.fault.kind().to_string()).or_default() += 1;
                        not_injected.push(format!(
                            "{:?}: held back for its whole time (due at {} ms), packs still short after healing {}",
                            e.fault,
                            e.at_ms,
                            exposure.describe()
                        ));
                    } else {
                        w += 1;
                    }
                    continue;
                }
                waiting.remove(w);
                if now > e.at_ms + 500 {
                    *late.entry(e.fault.kind().to_string()).or_default() += 1;
                    eprintln!(
                        "chaos: {:?} (due at {} ms) injected at {now} ms, once the packs left short were complete",
                        e.fault, e.at_ms
                    );
                }
                match faults::inject(&mut c, &e.fault, id, s.m) {
                    Ok(a) => {
                        *injected.entry(e.fault.kind().to_string()).or_default() += 1;
                        damaged.extend(a.damaged.iter().cloned());
                        active.push((e.end_ms(), a));
                    }
                    Err(err) => not_injected.push(format!("{:?}: {err:#}", e.fault)),
                }
            }
            let names: Vec<String> = active.iter().map(|(_, a)| format!("{:?} on {:?}", a.fault, a.node)).collect();
            *sh.active.lock().unwrap_or_else(|p| p.into_inner()) = names;
            drop(c);
            if now >= s.duration_ms && active.is_empty() && waiting.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sh.stop.store(true, Ordering::SeqCst);
        Ok(())
    })?;

    let mut c = Arc::try_unwrap(cluster)
        .ok()
        .context("the cluster is still shared")?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    // Whatever happened: no rule, no qdisc, every process running.
    faults::heal_network(&c);
    let voters: Vec<usize> = (0..c.meta.len()).filter(|i| !c.meta[*i].retired).collect();
    for i in voters {
        ensure_running(&mut c, NodeRef::Meta(i), &mut findings);
    }
    membership::finish(&mut c, &member, &mut findings);
    for i in 0..c.storage.len() {
        ensure_running(&mut c, NodeRef::Storage(i), &mut findings);
    }
    let status = checks::recovered(&c, &mut findings);
    checks::read_data_clean(&c, &mut findings);
    checks::replicas_agree(&c, &mut findings);
    let listed = workload::list(&c.reader(), &sh, AGENTS)?.unwrap_or_default();
    let rec = sh.record.lock().unwrap_or_else(|p| p.into_inner());
    let (checked, bytes) = checks::restores(&c, &rec, &listed, &mut findings);
    let (rt_checked, rt_bytes) = rt.check(&c, &mut findings);
    rt.stop();
    let verdict = checks::linearizable(&rec, &mut findings);
    views.lock().unwrap_or_else(|p| p.into_inner()).check(&mut findings);
    drop(rec);
    checks::availability(&sh, &mut findings);
    let skewed: Vec<String> = s
        .skewable()
        .iter()
        .filter_map(|i| c.storage[*i].log.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut expected = checks::expected_patterns(&damaged);
    if injected.contains_key("disk-fill") {
        // sled logs its refused writes (ENOSPC) at ERROR on a filled disk.
        expected.push("No space left on device".into());
    }
    checks::logs(&mut c, &expected, &skewed, &mut findings);
    let rec = sh.record.lock().unwrap_or_else(|p| p.into_inner());
    // The logs of a schedule with a safety or an availability finding are
    // kept: a refused backup or restore is diagnosed from them afterwards.
    let keep = opts.keep || findings.iter().any(|f| matches!(f.severity, Severity::Safety | Severity::Availability));
    let report = ScheduleReport {
        schedule: s.clone(),
        injected,
        not_injected,
        held,
        late,
        backups: rec.backups,
        backups_refused: rec.backups_refused.len() as u64,
        restores_during_run: rec.restores,
        restores_refused: rec.restores_refused.len() as u64,
        snapshots_checked: checked + rt_checked,
        bytes_compared: bytes + rt_bytes + rec.bytes_compared,
        history_ops: rec.history.len(),
        linearizability: Some(verdict),
        leader_samples: views.lock().unwrap_or_else(|p| p.into_inner()).samples,
        membership: member.into_inner().unwrap_or_else(|p| p.into_inner()),
        realtime_checked: rt_checked,
        orphan_bytes: status.as_ref().and_then(|s| s["orphan_bytes"].as_u64()),
        findings,
        kept: None,
        seconds: started.elapsed().as_secs_f64(),
        clock_started_unix_ms: t0_unix.into_inner().unwrap_or_else(|p| p.into_inner()),
    };
    drop(rec);
    drop(c);
    let mut report = report;
    if keep {
        // The logs of a schedule with findings outlive the run.
        let dest = opts.out.join(format!("seed-{}-schedule-{}", s.seed, s.index));
        let _ = std::fs::remove_dir_all(&dest);
        copy_logs(dir.path(), &dest)?;
        let samples = status_samples.into_inner().unwrap_or_else(|p| p.into_inner());
        let lines: String = samples.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(dest.join("status.jsonl"), lines)?;
        std::fs::write(dest.join("schedule.json"), serde_json::to_string_pretty(&report)?)?;
        eprintln!("chaos: schedule {} of seed {}: logs kept in {}", s.index, s.seed, dest.display());
        report.kept = Some(dest);
    }
    Ok(report)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn copy_logs(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for log in coffer_testkit::log_files(from) {
        if let Some(name) = log.file_name() {
            std::fs::copy(&log, to.join(name))?;
        }
    }
    Ok(())
}

fn ensure_running(c: &mut ChaosCluster, n: NodeRef, findings: &mut Vec<Finding>) {
    let p = c.proc_mut(n);
    if let Some(status) = p.exited() {
        findings
            .push(Finding { severity: Severity::Safety, what: format!("{} exited by itself ({status})", p.host.role) });
    }
    p.resume();
    if !c.proc_ref(n).is_running() || c.proc_mut(n).exited().is_some() {
        if let Err(e) = c.restart(n) {
            findings.push(Finding { severity: Severity::Safety, what: format!("restart {n:?} after healing: {e:#}") });
        }
    }
}
