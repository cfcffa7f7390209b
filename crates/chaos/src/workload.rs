//! The workload that runs while faults are injected: agents that back up
//! mutating trees and command sources (`--stdin-from-command`), list,
//! restore, forget and ask for garbage collection, all through the `coffer`
//! CLI from the client namespace.
//!
//! Every acknowledged backup's expected content is kept (the tree's digest,
//! or the stream's bytes), keyed by the tag the agent gave it, so that the
//! checks can restore it later and compare. Every catalog operation is
//! recorded with its invocation and completion times for the
//! linearizability checker; a call that failed or timed out is recorded
//! with an unknown outcome, since it may still have taken effect.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use coffer_testkit::{dir_digest, TreeDigest};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::cluster::Cli;
use crate::linear::{Input, Op, Outcome};

/// How long one CLI call may take before it is killed and counted as
/// refused: longer than its own retry window, so that a call waiting out
/// an election is not cut short.
const CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// What an acknowledged snapshot must restore to.
#[derive(Clone, Debug)]
pub enum Expected {
    Tree { digest: TreeDigest, bytes: u64 },
    Stream { name: String, content: String },
}

impl Expected {
    pub fn bytes(&self) -> u64 {
        match self {
            Expected::Tree { bytes, .. } => *bytes,
            Expected::Stream { content, .. } => content.len() as u64,
        }
    }
}

/// A call the cluster refused or did not answer, with the faults active then.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub what: String,
    pub at_ms: u64,
    pub faults: Vec<String>,
    pub error: String,
}

/// Everything the workload recorded.
#[derive(Default)]
pub struct Record {
    pub history: Vec<Op>,
    /// Acknowledged snapshots by tag: their id and expected content.
    pub acked: BTreeMap<String, (String, Expected)>,
    /// Tags whose forget was acknowledged.
    pub forgotten: BTreeSet<String>,
    /// Tags whose forget failed: they may or may not be gone.
    pub maybe_forgotten: BTreeSet<String>,
    /// Tags a forget is in flight for (no other agent picks them).
    busy: BTreeSet<String>,
    pub backups: u64,
    pub backups_refused: Vec<Refusal>,
    pub restores: u64,
    pub restores_refused: Vec<Refusal>,
    /// Restores during the run whose bytes differed: data corruption.
    pub mismatches: Vec<String>,
    pub bytes_compared: u64,
    pub other_refused: Vec<Refusal>,
}

/// The workload's shared state: the record, the faults active now (the
/// runner keeps it current), and the clock every history time is read on.
#[derive(Clone)]
pub struct Shared {
    pub record: Arc<Mutex<Record>>,
    pub active: Arc<Mutex<Vec<String>>>,
    pub start: Instant,
    pub stop: Arc<AtomicBool>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            record: Arc::default(),
            active: Arc::default(),
            start: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panicked agent thread leaves a usable record behind.
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refusal(&self, what: &str, error: &str) -> Refusal {
        Refusal {
            what: what.to_string(),
            at_ms: self.start.elapsed().as_millis() as u64,
            faults: self.active.lock().map(|a| a.clone()).unwrap_or_default(),
            error: error.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(300).collect(),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// One agent: its own source tree and command source, its own seeded
/// random stream (which decides content and operations, not timing).
pub struct Agent {
    pub index: usize,
    rng: ChaCha8Rng,
    tree: PathBuf,
    streams: PathBuf,
    ops: u64,
    /// The storage node this agent set draining, until it undoes it.
    draining: Option<String>,
}

impl Agent {
    pub fn new(dir: &Path, seed: u64, index: usize) -> Result<Agent> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_a9e7);
        rng.set_stream(index as u64);
        let tree = dir.join(format!("agent-{index}/tree"));
        let streams = dir.join(format!("agent-{index}/streams"));
        std::fs::create_dir_all(&tree)?;
        std::fs::create_dir_all(&streams)?;
        let mut a = Agent { index, rng, tree, streams, ops: 0, draining: None };
        for i in 0..6 {
            a.write_file(&format!("f{i}"))?;
        }
        Ok(a)
    }

    fn write_file(&mut self, name: &str) -> Result<()> {
        let path = self.tree.join(name);
        let mut f = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        if self.rng.gen_bool(0.5) {
            // Incompressible: new chunks, new packs.
            let mut buf = vec![0u8; self.rng.gen_range(16 << 10..=768 << 10)];
            self.rng.fill_bytes(&mut buf);
            f.write_all(&buf)?;
        } else {
            for j in 0..self.rng.gen_range(100..3_000) {
                writeln!(f, "line {j} of {name}: {}", self.rng.gen::<u64>())?;
            }
        }
        Ok(())
    }

    /// Changes the tree: rewrites, adds and removes files.
    fn mutate(&mut self) -> Result<()> {
        let names: Vec<String> =
            std::fs::read_dir(&self.tree)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        for _ in 0..self.rng.gen_range(1..=3) {
            if let Some(n) = names.get(self.rng.gen_range(0..names.len().max(1))) {
                self.write_file(&n.clone())?;
            }
        }
        if self.rng.gen_bool(0.5) {
            let n = format!("g{}", self.ops);
            self.write_file(&n)?;
        }
        if names.len() > 8 && self.rng.gen_bool(0.5) {
            let victim = &names[self.rng.gen_range(0..names.len())];
            std::fs::remove_file(self.tree.join(victim))?;
        }
        Ok(())
    }

    /// Runs operations until the workload is stopped.
    pub fn run(mut self, c: &Cli, sh: &Shared) {
        while !sh.stop.load(Ordering::SeqCst) {
            self.ops += 1;
            let r = self.rng.gen_range(0..100);
            let result = match r {
                0..=44 => self.backup_tree(c, sh),
                45..=57 => self.backup_stream(c, sh),
                58..=72 => list(c, sh, self.index).map(|_| ()),
                73..=85 => self.restore_one(c, sh),
                86..=94 => self.forget_one(c, sh),
                95..=97 => self.gc(c, sh),
                _ => self.drain(c, sh),
            };
            if let Err(e) = result {
                // The harness's own failure (a file it could not write):
                // record it where the report shows it.
                sh.lock().other_refused.push(sh.refusal("agent", &format!("{e:#}")));
            }
        }
        // A drain left running would move shards during the checks.
        if let Some(node) = self.draining.take() {
            if let Ok(out) = c.cli(&["drain", &node, "--undo"], CALL_TIMEOUT) {
                if out.code != 0 {
                    sh.lock().other_refused.push(sh.refusal(&format!("drain {node} --undo"), &out.stderr));
                }
            }
        }
    }

    /// Starts draining a storage node, or stops the drain this agent began:
    /// shards move while faults run, and redundancy must never drop.
    fn drain(&mut self, c: &Cli, sh: &Shared) -> Result<()> {
        let (args, next) = match self.draining.take() {
            Some(node) => (vec!["drain".to_string(), node, "--undo".into()], None),
            None => {
                let Ok(status) = c.status() else { return Ok(()) };
                let ids: Vec<String> = status["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["id"].as_str().map(String::from))
                    .collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let node = ids[self.rng.gen_range(0..ids.len())].clone();
                (vec!["drain".to_string(), node.clone()], Some(node))
            }
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = c.cli(&argv, CALL_TIMEOUT)?;
        if out.code == 0 {
            self.draining = next;
        } else {
            sh.lock().other_refused.push(sh.refusal(&args.join(" "), &out.stderr));
            // An undo that failed is tried again at the next chance.
            if next.is_none() {
                self.draining = args.get(1).cloned();
            }
        }
        Ok(())
    }

    fn tag(&self) -> String {
        format!("op-{}-{}", self.index, self.ops)
    }

    fn backup_tree(&mut self, c: &Cli, sh: &Shared) -> Result<()> {
        self.mutate()?;
        let digest = dir_digest(&self.tree)?;
        let bytes = tree_bytes(&digest);
        let tag = self.tag();
        let path = self.tree.display().to_string();
        let host = format!("agent-{}", self.index);
        let args = ["backup", &path, "--tag", &tag, "--host", &host, "--json"];
        self.commit(c, sh, &tag, &args, Expected::Tree { digest, bytes })
    }

    fn backup_stream(&mut self, c: &Cli, sh: &Shared) -> Result<()> {
        let tag = self.tag();
        let file = self.streams.join(format!("{tag}.sql"));
        let mut content = String::new();
        for j in 0..self.rng.gen_range(200..4_000) {
            content.push_str(&format!("INSERT INTO orders VALUES ({j}, {});\n", self.rng.gen::<u32>()));
        }
        std::fs::write(&file, &content)?;
        let name = format!("{tag}.sql");
        let cmd = format!("cat {}", file.display());
        let host = format!("agent-{}", self.index);
        let args =
            ["backup", "--stdin-from-command", &cmd, "--stdin-name", &name, "--tag", &tag, "--host", &host, "--json"];
        self.commit(c, sh, &tag, &args, Expected::Stream { name: name.clone(), content })
    }

    fn commit(&mut self, c: &Cli, sh: &Shared, tag: &str, args: &[&str], expected: Expected) -> Result<()> {
        let invoke = sh.now_ns();
        let out = c.cli(args, CALL_TIMEOUT)?;
        let complete = sh.now_ns();
        let id = (out.code == 0)
            .then(|| out.json().ok())
            .flatten()
            .and_then(|v| v["snapshot_id"].as_str().map(String::from));
        let mut rec = sh.lock();
        rec.backups += 1;
        match id {
            Some(id) => {
                rec.history.push(Op {
                    client: self.index,
                    input: Input::Commit(tag.into()),
                    invoke,
                    complete: Some(complete),
                    outcome: Some(Outcome::Ok),
                });
                rec.acked.insert(tag.to_string(), (id, expected));
            }
            None => {
                rec.history.push(Op {
                    client: self.index,
                    input: Input::Commit(tag.into()),
                    invoke,
                    complete: None,
                    outcome: None,
                });
                let r = sh.refusal(&format!("backup {tag}"), &format!("{}{}", out.stderr, out.stdout));
                rec.backups_refused.push(r);
            }
        }
        Ok(())
    }

    /// Restores one acknowledged, live snapshot and compares it.
    fn restore_one(&mut self, c: &Cli, sh: &Shared) -> Result<()> {
        let pick = {
            let rec = sh.lock();
            let live: Vec<_> = rec
                .acked
                .iter()
                .filter(|(t, _)| {
                    !rec.forgotten.contains(*t) && !rec.maybe_forgotten.contains(*t) && !rec.busy.contains(*t)
                })
                .collect();
            if live.is_empty() {
                return Ok(());
            }
            let (t, v) = live[self.rng.gen_range(0..live.len())];
            (t.clone(), v.clone())
        };
        let (tag, (id, expected)) = pick;
        let target = c.dir.join(format!("restore-{}-{}", self.index, self.ops));
        match restore_and_compare(c, &id, &expected, &target) {
            Ok(Compared::Same(bytes)) => {
                let mut rec = sh.lock();
                rec.restores += 1;
                rec.bytes_compared += bytes;
            }
            Ok(Compared::Differs(what)) => {
                let mut rec = sh.lock();
                rec.restores += 1;
                rec.mismatches.push(format!("snapshot {tag} ({id}) restored during the run differs: {what}"));
            }
            Ok(Compared::Refused(err)) => {
                let mut rec = sh.lock();
                rec.restores += 1;
                let r = sh.refusal(&format!("restore {tag}"), &err);
                rec.restores_refused.push(r);
            }
            Err(e) => return Err(e),
        }
        let _ = std::fs::remove_dir_all(&target);
        Ok(())
    }

    fn forget_one(&mut self, c: &Cli, sh: &Shared) -> Result<()> {
        let pick = {
            let mut rec = sh.lock();
            let live: Vec<(String, String)> = rec
                .acked
                .iter()
                .filter(|(t, _)| {
                    !rec.forgotten.contains(*t) && !rec.maybe_forgotten.contains(*t) && !rec.busy.contains(*t)
                })
                .map(|(t, (id, _))| (t.clone(), id.clone()))
                .collect();
            // Keep a few snapshots alive for the checks at the end.
            if live.len() < 4 {
                return Ok(());
            }
            let p = live[self.rng.gen_range(0..live.len())].clone();
            rec.busy.insert(p.0.clone());
            p
        };
        let (tag, id) = pick;
        let invoke = sh.now_ns();
        let out = c.cli(&["forget", &id], CALL_TIMEOUT)?;
        let complete = sh.now_ns();
        let mut rec = sh.lock();
        rec.busy.remove(&tag);
        if out.code == 0 {
            rec.history.push(Op {
                client: self.index,
                input: Input::Forget(tag.clone()),
                invoke,
                complete: Some(complete),
                outcome: Some(Outcome::Ok),
            });
            rec.forgotten.insert(tag);
        } else {
            rec.history.push(Op {
                client: self.index,
                input: Input::Forget(tag.clone()),
                invoke,
                complete: None,
                outcome: None,
            });
            let r = sh.refusal(&format!("forget {tag}"), &out.stderr);
            rec.other_refused.push(r);
            rec.maybe_forgotten.insert(tag);
        }
        Ok(())
    }

    fn gc(&mut self, c: &Cli, sh: &Shared) -> Result<()> {
        let out = c.cli(&["gc", "--json"], CALL_TIMEOUT)?;
        if out.code != 0 {
            sh.lock().other_refused.push(sh.refusal("gc", &out.stderr));
        }
        Ok(())
    }
}

/// Lists the snapshots and records the listing in the history; `None` when
/// the call failed (a failed read says nothing and is not recorded).
pub fn list(c: &Cli, sh: &Shared, client: usize) -> Result<Option<BTreeMap<String, String>>> {
    let invoke = sh.now_ns();
    let out = c.cli(&["snapshots", "--json"], CALL_TIMEOUT)?;
    let complete = sh.now_ns();
    let parsed = (out.code == 0).then(|| out.json().ok()).flatten();
    let Some(v) = parsed.as_ref().and_then(|v| v.as_array()) else {
        sh.lock().other_refused.push(sh.refusal("snapshots", &out.stderr));
        return Ok(None);
    };
    let mut by_tag = BTreeMap::new();
    for s in v {
        let id = s["id"].as_str().unwrap_or_default().to_string();
        for t in s["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str()) {
            if t.starts_with("op-") {
                by_tag.insert(t.to_string(), id.clone());
            }
        }
    }
    let seen: BTreeSet<String> = by_tag.keys().cloned().collect();
    sh.lock().history.push(Op {
        client,
        input: Input::List,
        invoke,
        complete: Some(complete),
        outcome: Some(Outcome::Listed(seen)),
    });
    Ok(Some(by_tag))
}

fn tree_bytes(d: &TreeDigest) -> u64 {
    d.values()
        .filter_map(|v| {
            let mut w = v.split_whitespace();
            (w.next() == Some("file")).then(|| w.nth(2).and_then(|n| n.parse::<u64>().ok())).flatten()
        })
        .sum()
}

/// The result of one restore.
pub enum Compared {
    Same(u64),
    Differs(String),
    Refused(String),
}

/// Restores snapshot `id` into `target` and compares it with `expected`.
pub fn restore_and_compare(c: &Cli, id: &str, expected: &Expected, target: &Path) -> Result<Compared> {
    match expected {
        Expected::Tree { digest, bytes } => {
            let t = target.display().to_string();
            let out = c.cli(&["restore", id, &t, "--json"], CALL_TIMEOUT)?;
            if out.code != 0 {
                return Ok(Compared::Refused(format!("{}{}", out.stderr, out.stdout)));
            }
            let got = dir_digest(target)?;
            if &got == digest {
                return Ok(Compared::Same(*bytes));
            }
            let mut diffs = Vec::new();
            for (k, v) in digest {
                match got.get(k) {
                    Some(g) if g == v => {}
                    Some(g) => diffs.push(format!("{k}: want {v}, got {g}")),
                    None => diffs.push(format!("{k}: missing")),
                }
            }
            diffs.extend(got.keys().filter(|k| !digest.contains_key(*k)).map(|k| format!("{k}: extra")));
            Ok(Compared::Differs(diffs.join("; ")))
        }
        Expected::Stream { content, .. } => {
            let out = c.cli(&["restore", id, "-"], CALL_TIMEOUT)?;
            if out.code != 0 {
                return Ok(Compared::Refused(out.stderr));
            }
            if &out.stdout == content {
                Ok(Compared::Same(content.len() as u64))
            } else {
                Ok(Compared::Differs(format!("stream of {} bytes, want {}", out.stdout.len(), content.len())))
            }
        }
    }
}
