//! A voter added and removed while the faults run: at a fifth of the
//! schedule a fourth metadata node starts on the clients' network and
//! joins (learner, then voter, through the leader); at three fifths it is
//! removed with `coffer cluster remove`, and once it has left the
//! membership its process stops for good.
//!
//! ```text
//!   0 ──── 20% start meta-4 --join ─► voter? ──── 60% cluster remove 4 ─► gone? ─► retire ──── end
//! ```
//!
//! The faults keep counting one impaired voter at most, which stays a
//! minority of four as of three, and of both configurations of the joint
//! consensus in between. Any step that did not complete during the
//! schedule is an availability finding; a voter still a member at the end
//! is removed before the checks, which then expect exactly three voters.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::checks::{Finding, Severity};
use crate::cluster::{ChaosCluster, Cli};
use crate::workload::Shared;

/// What became of the voter added during a schedule.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Membership {
    /// Its metadata id.
    pub id: Option<u64>,
    /// When (ms into the workload) it was first seen as a voter.
    pub voter_at_ms: Option<u64>,
    /// When it was first seen gone from the membership.
    pub removed_at_ms: Option<u64>,
    /// Attempts that failed, with the faults active then.
    pub errors: Vec<String>,
}

impl Membership {
    /// Availability findings for the steps that did not complete.
    pub fn findings(&self, out: &mut Vec<Finding>) {
        let mut missed = Vec::new();
        if self.voter_at_ms.is_none() {
            missed.push("did not become a voter");
        }
        if self.removed_at_ms.is_none() {
            missed.push("was not removed");
        }
        if !missed.is_empty() {
            out.push(Finding {
                severity: Severity::Availability,
                what: format!(
                    "the voter added during the schedule {} during it; errors: {:?}",
                    missed.join(" and "),
                    self.errors
                ),
            });
        }
    }
}

/// The member with `id` in a `cluster members --json` answer: its role.
fn role_of(members: &serde_json::Value, id: u64) -> Option<String> {
    members["members"].as_array()?.iter().find(|m| m["id"] == id).map(|m| m["role"].as_str().unwrap_or("").to_string())
}

/// Sleeps until `at_ms` of the workload's clock; false if stopped first.
fn sleep_until(sh: &Shared, at_ms: u64) -> bool {
    while (sh.start.elapsed().as_millis() as u64) < at_ms {
        if sh.stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !sh.stop.load(Ordering::SeqCst)
}

/// Adds a voter at a fifth of `duration_ms` and removes it at three fifths.
pub fn run(cluster: &Mutex<ChaosCluster>, cli: &Cli, sh: &Shared, duration_ms: u64, rec: &Mutex<Membership>) {
    let note = |what: String| {
        let faults = sh.active.lock().map(|a| a.clone()).unwrap_or_default();
        let at = sh.start.elapsed().as_millis();
        rec.lock().unwrap_or_else(|p| p.into_inner()).errors.push(format!("at {at} ms with {faults:?}: {what}"));
    };
    if !sleep_until(sh, duration_ms / 5) {
        return;
    }
    let added = cluster.lock().unwrap_or_else(|p| p.into_inner()).add_voter();
    let index = match added {
        Ok(i) => i,
        Err(e) => return note(format!("start the new voter: {e:#}")),
    };
    let id = index as u64 + 1;
    rec.lock().unwrap_or_else(|p| p.into_inner()).id = Some(id);
    let remove_at = duration_ms * 3 / 5;
    while !sh.stop.load(Ordering::SeqCst) && (sh.start.elapsed().as_millis() as u64) < remove_at {
        if cli.members().is_some_and(|m| role_of(&m, id).as_deref() == Some("voter")) {
            rec.lock().unwrap_or_else(|p| p.into_inner()).voter_at_ms = Some(sh.start.elapsed().as_millis() as u64);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !sleep_until(sh, remove_at) {
        return;
    }
    remove(cluster, cli, id, index, sh, rec, &note);
}

/// Removes voter `id` (index `index`) until it is gone or the workload
/// stops, and retires its process once it is gone.
fn remove(
    cluster: &Mutex<ChaosCluster>,
    cli: &Cli,
    id: u64,
    index: usize,
    sh: &Shared,
    rec: &Mutex<Membership>,
    note: &dyn Fn(String),
) {
    let ids = id.to_string();
    loop {
        if let Some(m) = cli.members() {
            if m["members"].as_array().is_some() && role_of(&m, id).is_none() {
                rec.lock().unwrap_or_else(|p| p.into_inner()).removed_at_ms =
                    Some(sh.start.elapsed().as_millis() as u64);
                cluster.lock().unwrap_or_else(|p| p.into_inner()).retire(index);
                return;
            }
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        match cli.cli(&["cluster", "remove", &ids], Duration::from_secs(150)) {
            Ok(o) if o.code == 0 => {}
            Ok(o) => note(format!("cluster remove {id}: exit {}: {}", o.code, o.stderr.trim())),
            Err(e) => note(format!("cluster remove {id}: {e:#}")),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// After the schedule: a voter that is still a member is removed now (the
/// checks expect the three voters of the start).
pub fn finish(c: &mut ChaosCluster, rec: &Mutex<Membership>, out: &mut Vec<Finding>) {
    let m = rec.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(id) = m.id else {
        m.findings(out);
        return;
    };
    let index = id as usize - 1;
    if m.removed_at_ms.is_none() && !c.meta[index].retired {
        let cli = c.reader();
        let gone = crate::cluster::wait("the added voter removed after the schedule", Duration::from_secs(180), || {
            let members = cli.members()?;
            if role_of(&members, id).is_none() {
                return Some(());
            }
            let _ = cli.cli(&["cluster", "remove", &id.to_string()], Duration::from_secs(60));
            None
        });
        match gone {
            Ok(()) => c.retire(index),
            Err(e) => out.push(Finding {
                severity: Severity::Safety,
                what: format!("the voter added during the schedule could not be removed after healing: {e:#}"),
            }),
        }
    }
    m.findings(out);
}
