//! The checks after a schedule has healed, one function per invariant of
//! ARCHITECTURE.md: the cluster recovers (voters, storage nodes, rebuild
//! settled, every pack healthy on the site rule, `check --read-data`
//! clean), the replicas agree (`cluster digest`), every acknowledged and
//! not forgotten snapshot restores byte-identical, at most one leader per
//! term was ever seen, the catalog history is linearizable, and no process
//! crashed, panicked or logged an error that no injected fault explains.
//!
//! A check never passes on missing data: a field absent from a JSON answer
//! or a call that does not answer within its deadline is a finding.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::cluster::{wait, ChaosCluster};
use crate::linear::{self, Verdict};
use crate::workload::{restore_and_compare, Compared, Record, Shared};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    /// An invariant broke: lost or changed data, two leaders in a term,
    /// diverging replicas, a non-linearizable history, a crash or panic,
    /// a cluster that did not recover.
    Safety,
    /// A backup or restore refused while only tolerated faults were active.
    Availability,
    /// An `ERROR` line that no injected fault explains.
    Log,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
}

fn safety(out: &mut Vec<Finding>, what: String) {
    out.push(Finding { severity: Severity::Safety, what });
}

/// Every member's own view, sampled during the run: term -> members that
/// claimed leadership in it, and term -> leaders the members named.
#[derive(Debug, Default)]
pub struct LeaderViews {
    pub claims: BTreeMap<u64, BTreeSet<u64>>,
    pub named: BTreeMap<u64, BTreeSet<u64>>,
    pub samples: u64,
}

impl LeaderViews {
    /// Records one `cluster members --json` answer.
    pub fn record(&mut self, members: &Value) {
        let Some(list) = members["members"].as_array() else { return };
        self.samples += 1;
        for m in list.iter().filter(|m| m["reachable"] == true) {
            let (Some(id), Some(term)) = (m["id"].as_u64(), m["term"].as_u64()) else { continue };
            if m["state"] == "leader" {
                self.claims.entry(term).or_default().insert(id);
            }
            if let Some(l) = m["leader"].as_u64().filter(|l| *l != 0) {
                self.named.entry(term).or_default().insert(l);
            }
        }
    }

    pub fn check(&self, out: &mut Vec<Finding>) {
        for (term, ids) in &self.claims {
            if ids.len() > 1 {
                safety(out, format!("two leaders in term {term}: members {ids:?} each reported itself leader"));
            }
        }
        for (term, ids) in &self.named {
            if ids.len() > 1 {
                safety(out, format!("members named different leaders for term {term}: {ids:?}"));
            }
        }
    }
}

/// Waits for voters and storage nodes, then for the rebuild to settle
/// with every pack healthy and on the site rule.
pub fn recovered(c: &ChaosCluster, out: &mut Vec<Finding>) -> Option<Value> {
    if let Err(e) = c.wait_voters(Duration::from_secs(180)) {
        safety(out, format!("the metadata plane did not recover after healing: {e:#}"));
        return None;
    }
    if let Err(e) = c.wait_storage_up(Duration::from_secs(180)) {
        safety(out, format!("storage nodes did not come back up after healing: {e:#}"));
        return None;
    }
    // Damaged shards are found by a scrub; ask for one now rather than
    // wait for the schedule's, and again until one finds nothing. A node
    // reports what it found before it answers and `status` counts a
    // reported shard as damaged until its repair, so one scrub and the
    // wait below would do; scrubbing until clean also states it: after
    // the repairs, no node holds a bad shard.
    let mut last_scrub = Value::Null;
    let scrubbed = wait("a scrub that finds no bad shard", Duration::from_secs(180), || {
        let v = c.cli(&["scrub", "--json"], Duration::from_secs(120)).ok()?.json().ok()?;
        last_scrub = v.clone();
        let bad: usize = v["nodes"].as_array()?.iter().map(|n| n["bad"].as_array().map_or(0, Vec::len)).sum();
        (bad == 0).then_some(())
    });
    if let Err(e) = scrubbed {
        safety(out, format!("after healing, every scrub still found bad shards: {e:#}; last: {last_scrub}"));
        return None;
    }
    let mut last = Value::Null;
    let settled = wait("every pack healthy and the rebuild settled", Duration::from_secs(420), || {
        let s = c.status().ok()?;
        last = s.clone();
        let p = &s["packs"];
        let zero = |v: &Value| v.as_u64() == Some(0);
        let rebuild_idle = zero(&s["rebuild"]["queued"]) && zero(&s["rebuild"]["in_flight"]);
        let healthy =
            ["degraded", "at_risk", "lost", "short"].iter().all(|k| zero(&p[*k])) && zero(&s["site_degraded"]);
        (healthy && rebuild_idle).then_some(s)
    });
    match settled {
        Ok(s) => Some(s),
        Err(e) => {
            safety(
                out,
                format!("after healing, packs did not all become healthy: {e:#}; last status: {}", brief(&last)),
            );
            None
        }
    }
}

fn brief(s: &Value) -> String {
    serde_json::json!({"packs": s["packs"], "site_degraded": s["site_degraded"], "rebuild": s["rebuild"]}).to_string()
}

/// `coffer check --read-data` reads, decodes and authenticates every pack.
pub fn read_data_clean(c: &ChaosCluster, out: &mut Vec<Finding>) {
    let res = c.cli(&["check", "--read-data", "--json"], Duration::from_secs(600));
    match res {
        Ok(o) => {
            let report = o.json().ok();
            let empty = |k: &str| report.as_ref().and_then(|r| r[k].as_array()).is_some_and(Vec::is_empty);
            if o.code != 0 || !empty("lost") || !empty("repairable") {
                safety(
                    out,
                    format!("`coffer check --read-data` is not clean (exit {}): {}{}", o.code, o.stdout, o.stderr),
                );
            }
        }
        Err(e) => safety(out, format!("run `coffer check --read-data`: {e:#}")),
    }
}

/// Every replica reaches the same applied index and catalog digest.
pub fn replicas_agree(c: &ChaosCluster, out: &mut Vec<Finding>) {
    let mut last = Value::Null;
    let agreed = wait("every replica's catalog digest to agree", Duration::from_secs(120), || {
        let d = c.cli(&["cluster", "digest", "--json"], Duration::from_secs(60)).ok()?.ok().ok()?.json().ok()?;
        last = d.clone();
        let members = d["members"].as_array()?;
        let applied: BTreeSet<String> = members.iter().map(|m| m["applied_index"].to_string()).collect();
        let digests: BTreeSet<String> = members.iter().map(|m| m["digest"].to_string()).collect();
        let ok = members.len() == c.voters()
            && applied.len() == 1
            && digests.len() == 1
            && members.iter().all(|m| m["digest"].is_string());
        ok.then_some(())
    });
    if let Err(e) = agreed {
        safety(out, format!("replicas disagree: {e:#}; last digests: {last}"));
    }
}

/// Restores every acknowledged snapshot that was not forgotten; returns
/// (snapshots checked, bytes compared).
pub fn restores(
    c: &ChaosCluster,
    rec: &Record,
    listed: &BTreeMap<String, String>,
    out: &mut Vec<Finding>,
) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    let cli = c.reader();
    for (tag, (id, expected)) in &rec.acked {
        if rec.forgotten.contains(tag) {
            continue;
        }
        // A forget that failed may still have happened: only a snapshot
        // still listed must restore.
        if rec.maybe_forgotten.contains(tag) && !listed.contains_key(tag) {
            continue;
        }
        let target = c.dir.join(format!("final-restore-{tag}"));
        match restore_and_compare(&cli, id, expected, &target) {
            Ok(Compared::Same(b)) => {
                n += 1;
                bytes += b;
            }
            Ok(Compared::Differs(what)) => {
                safety(out, format!("acknowledged snapshot {tag} ({id}) restores differently: {what}"))
            }
            Ok(Compared::Refused(err)) => {
                safety(out, format!("acknowledged snapshot {tag} ({id}) does not restore: {err}"))
            }
            Err(e) => safety(out, format!("restore acknowledged snapshot {tag} ({id}): {e:#}")),
        }
        let _ = std::fs::remove_dir_all(&target);
    }
    for m in &rec.mismatches {
        safety(out, m.clone());
    }
    (n, bytes)
}

pub fn linearizable(rec: &Record, out: &mut Vec<Finding>) -> Verdict {
    let v = linear::check(&rec.history);
    match &v {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { explained, total } => safety(
            out,
            format!("the catalog history of {total} operations is not linearizable (the longest explained prefix has {explained})"),
        ),
        Verdict::Undecided => out.push(Finding {
            severity: Severity::Log,
            what: format!("the linearizability search gave up on {} operations", rec.history.len()),
        }),
    }
    v
}

/// Refusals while only tolerated faults were active: the generator never
/// exceeds the tolerance, so every one of them is reported.
pub fn availability(sh: &Shared, out: &mut Vec<Finding>) {
    let rec = sh.record.lock().unwrap_or_else(|p| p.into_inner());
    for r in rec.backups_refused.iter().chain(&rec.restores_refused) {
        out.push(Finding {
            severity: Severity::Availability,
            what: format!("{} refused at {} ms with faults {:?}: {}", r.what, r.at_ms, r.faults, r.error),
        });
    }
}

/// Failure lines that the faults of this schedule explain: a peer that was
/// cut off, killed or paused, a shard that was damaged, a disk that filled.
pub fn expected_patterns(damaged: &[std::path::PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = [
        // openraft, towards a voter that cannot be reached.
        "Unreachable node",
        "when AppendEntries",
        "when Vote",
        "when InstallSnapshot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in damaged {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        v.push(format!("shard {name} is corrupt"));
        v.push(format!("shard {name} file has"));
        v.push(name);
    }
    v
}

/// Crashes and panics are safety findings; other `ERROR` lines that match
/// none of `expected` are log findings (one per distinct message), and so
/// is every orphan shard collected by a node whose clock was skewed
/// (`skewed`: their log file names): the collector judges age on the
/// node's own clock, so each such deletion is listed for inspection.
pub fn logs(c: &mut ChaosCluster, expected: &[String], skewed: &[String], out: &mut Vec<Finding>) {
    for crash in c.crashed() {
        safety(out, crash);
    }
    let mut seen = BTreeSet::new();
    for log in coffer_testkit::log_files(&c.dir) {
        let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().map(coffer_testkit::strip_ansi) {
            if line.contains("panicked at") {
                safety(out, format!("{name}: {line}"));
                continue;
            }
            if skewed.contains(&name) && line.contains("collected an orphan shard") {
                out.push(Finding {
                    severity: Severity::Log,
                    what: format!("orphan collected under a skewed clock: {name}: {line}"),
                });
                continue;
            }
            if !coffer_testkit::is_failure_line(&line) || expected.iter().any(|e| line.contains(e.as_str())) {
                continue;
            }
            // Without the timestamp, so that repeats count once.
            let message: String = line.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
            if seen.insert((name.clone(), message.clone())) {
                out.push(Finding { severity: Severity::Log, what: format!("{name}: {line}") });
            }
        }
    }
}
