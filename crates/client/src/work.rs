//! The one progress hook of the long operations other than backup (whose
//! pipeline keeps its own, richer `Progress`): restore, `check` reading
//! data, drills and the restore steps of recovery plans.
//!
//! A [`Work`] is a set of counters the operation adds to as it goes and a
//! caller reads whenever it likes (the CLI a few times a second, for a bar
//! or for JSON status lines); the library never calls out, so reporting can
//! neither slow nor fail an operation. It is installed on a `Repository`
//! (`with_progress`), so every operation on that repository, and every one
//! that runs another (a drill restores, a plan runs restores), reports into
//! the same counters. Totals only grow: each phase adds what it expects to
//! do (a drill restores, then reads back as much again), so `done <= total`
//! holds across phases and one bar covers the whole command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// What the item counts of a [`Work`] count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Files,
    Packs,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Files => "files",
            Unit::Packs => "packs",
        }
    }
}

/// Counters of one long operation (see the module documentation).
#[derive(Debug)]
pub struct Work {
    started: Instant,
    /// The phase running now and what its items are.
    phase: Mutex<(&'static str, Unit)>,
    items: AtomicU64,
    bytes: AtomicU64,
    /// What the phases so far said they would do; 0 while not known.
    total_items: AtomicU64,
    total_bytes: AtomicU64,
    /// Set when some phase could not say how much it would do: the totals
    /// are then a floor, not an estimate to draw an ETA from.
    open_ended: std::sync::atomic::AtomicBool,
}

impl Default for Work {
    fn default() -> Self {
        Work {
            started: Instant::now(),
            phase: Mutex::new(("starting", Unit::Files)),
            items: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_items: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            open_ended: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// A reading of a [`Work`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkStatus {
    pub phase: &'static str,
    pub unit: Unit,
    pub items: u64,
    pub bytes: u64,
    /// `None` while some phase did not know its size.
    pub total_items: Option<u64>,
    pub total_bytes: Option<u64>,
    pub elapsed_s: f64,
}

impl Work {
    /// Starts `phase`, which will handle `items` and `bytes` if it knows
    /// (`None` when it does not, as for a restore of one path).
    pub fn begin(&self, phase: &'static str, unit: Unit, items: Option<u64>, bytes: Option<u64>) {
        if let Ok(mut p) = self.phase.lock() {
            *p = (phase, unit);
        }
        match (items, bytes) {
            (Some(i), Some(b)) => {
                self.total_items.fetch_add(i, Ordering::Relaxed);
                self.total_bytes.fetch_add(b, Ordering::Relaxed);
            }
            _ => self.open_ended.store(true, Ordering::Relaxed),
        }
    }

    /// Counts `bytes` handled.
    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one item (file or pack) finished.
    pub fn add_item(&self) {
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status(&self) -> WorkStatus {
        let (phase, unit) = self.phase.lock().map(|p| *p).unwrap_or(("", Unit::Files));
        let known = !self.open_ended.load(Ordering::Relaxed);
        WorkStatus {
            phase,
            unit,
            items: self.items.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            total_items: known.then(|| self.total_items.load(Ordering::Relaxed)),
            total_bytes: known.then(|| self.total_bytes.load(Ordering::Relaxed)),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Counts into an optional [`Work`], so that the operations need no branch.
pub(crate) fn add_bytes(w: Option<&Work>, bytes: u64) {
    if let Some(w) = w {
        w.add_bytes(bytes);
    }
}

pub(crate) fn add_item(w: Option<&Work>) {
    if let Some(w) = w {
        w.add_item();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_over_phases_and_an_unknown_size_drops_them() {
        let w = Work::default();
        w.begin("restore", Unit::Files, Some(2), Some(100));
        w.add_item();
        w.add_bytes(60);
        let s = w.status();
        assert_eq!((s.phase, s.items, s.bytes, s.total_items, s.total_bytes), ("restore", 1, 60, Some(2), Some(100)));
        w.begin("verify", Unit::Files, Some(2), Some(100));
        assert_eq!(w.status().total_bytes, Some(200));
        w.begin("restore", Unit::Files, None, None);
        let s = w.status();
        assert_eq!((s.total_items, s.total_bytes), (None, None));
        assert_eq!(s.bytes, 60, "counts survive a phase change");
    }
}
