//! File-system events for `on_change` and `realtime` sources: a recursive
//! inotify watch (through the `notify` crate) on each path, turned into one
//! "dirty since" mark per source that the source's worker debounces.
//!
//! The watch survives new subdirectories (the recursive inotify backend adds
//! a watch for each directory created). Events are hints, never the list of
//! what changed: a run walks the whole source and compares it with the
//! parent snapshot, so a dropped event costs nothing but latency. When the
//! kernel drops events (IN_Q_OVERFLOW, a rescan flag) or the watcher fails,
//! the source is marked dirty, which is exactly a full rescan. Events on
//! excluded entries and pure reads are ignored.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coffer_client::Excludes;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// When changes were seen and not yet backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirty {
    pub first: Instant,
    pub last: Instant,
}

/// The change mark a watcher sets and the worker takes.
#[derive(Debug, Default)]
pub struct ChangeMark {
    dirty: Mutex<Option<Dirty>>,
    /// Events seen (for status and tests).
    pub events: std::sync::atomic::AtomicU64,
    pub rescans: std::sync::atomic::AtomicU64,
}

impl ChangeMark {
    pub fn mark(&self) {
        let now = Instant::now();
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        *d = Some(match *d {
            Some(Dirty { first, .. }) => Dirty { first, last: now },
            None => Dirty { first: now, last: now },
        });
    }

    pub fn peek(&self) -> Option<Dirty> {
        *self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clears the mark: a run that starts now sees everything before it.
    pub fn take(&self) -> Option<Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A running watch; dropping it stops it.
pub struct Watch {
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Watches `paths` recursively; every relevant event marks `mark` and wakes
/// `wake`.
pub fn start(
    source: &str,
    paths: &[PathBuf],
    excludes: Excludes,
    mark: Arc<ChangeMark>,
    wake: Arc<Notify>,
) -> notify::Result<Watch> {
    use std::sync::atomic::Ordering::Relaxed;
    let name = source.to_string();
    let handler = move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    mark.rescans.fetch_add(1, Relaxed);
                    tracing::warn!(source = %name, "the kernel dropped file events; the next run rescans the source");
                } else if !relevant(&ev, &excludes) {
                    return;
                }
                mark.events.fetch_add(1, Relaxed);
            }
            Err(e) => {
                mark.rescans.fetch_add(1, Relaxed);
                tracing::warn!(source = %name, error = %e, "file watch error; the next run rescans the source");
            }
        }
        mark.mark();
        wake.notify_one();
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    for p in paths {
        let mode = if p.is_dir() { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        watcher.watch(p, mode)?;
    }
    Ok(Watch { _watcher: watcher })
}

/// Whether an event can mean a change worth a backup.
fn relevant(ev: &notify::Event, excludes: &Excludes) -> bool {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if excludes.is_empty() || ev.paths.is_empty() {
        return true;
    }
    ev.paths.iter().any(|p| {
        let excluded_here = p.file_name().is_some_and(|n| excludes.excludes(p, n, p.is_dir()));
        // An entry under an excluded directory is excluded too.
        let under_excluded =
            p.ancestors().skip(1).any(|a| a.file_name().is_some_and(|n| excludes.excludes(a, n, true)));
        !excluded_here && !under_excluded
    })
}
