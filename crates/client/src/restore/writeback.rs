//! Starting the writeback of restored bytes early, off the writers' threads.
//!
//! ```text
//!   writer threads: write a chunk ──► its file's pending range grows ──► ≥ WRITEBACK_RUN, or the file is complete?
//!                                                                              │ try_send (a full queue drops the hint)
//!                                                                              ▼
//!   writeback thread: posix_fadvise(DONTNEED) on the range ──► the kernel writes it back while the restore reads on
//! ```
//!
//! A restore is done when its bytes are on disk. Writes that start as
//! chunks land overlap with the reads still to come instead of queueing up
//! for the final `sync`. Linux starts the asynchronous writeback of a dirty
//! range on `POSIX_FADV_DONTNEED` (pages still dirty stay cached), but the
//! call does the filesystem's block allocation for the range and waits for
//! the block layer's writeback throttling, which on a busy disk takes
//! milliseconds. The writers used to make it themselves, per chunk, while
//! holding their file's slot: every other writer of the same file (a dump
//! of hundreds of MiB) queued behind it, and a restore of the 1 GiB bench
//! tree spent a fifth of a second of every second with both cores idle.
//! Now writers only note the range, and one thread per restore asks for
//! it, a few MiB at a time: fewer, larger allocations, and no writer ever
//! waits on the disk for a hint. It is only a hint: a hint the thread has
//! no room for, or has not reached when the restore ends, is dropped, and
//! the final `sync` writes those bytes as it would have anyway.

use std::collections::BTreeMap;
use std::fs::File;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A file's written bytes are handed to the writeback thread once this many
/// have gathered (and when the file is complete).
pub(super) const WRITEBACK_RUN: u64 = 4 << 20;
/// Hints waiting for the thread; beyond this they are dropped.
const QUEUE: usize = 256;

/// One range of one file to start writing back.
struct Hint {
    file: Arc<File>,
    offset: u64,
    len: NonZeroU64,
}

/// What of one file is written and not yet hinted. Hints cover only the
/// contiguous written prefix of a file, and end on a page boundary until
/// the file is complete: `POSIX_FADV_DONTNEED` also drops the clean pages
/// of its range, and a page dropped while a neighbouring chunk has still
/// to write the rest of it would have to be read back from disk first
/// (ext4 reads a block it has allocated before a partial write into it;
/// seen in the profile as writers waiting in `ext4_block_write_begin`).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Bytes before this were hinted.
    hinted: u64,
    /// Bytes before this are all written.
    written: u64,
    /// Written ranges beyond `written` (chunks land out of order), start to
    /// end, never touching `written` nor each other.
    ahead: BTreeMap<u64, u64>,
}

/// The page size writeback ranges are aligned to (a multiple of every
/// common one).
const PAGE: u64 = 4096;

impl Pending {
    /// Notes `len` bytes written at `offset`; returns the range to hint,
    /// `(offset, len)`, once `WRITEBACK_RUN` bytes of the written prefix
    /// are unhinted, or when `complete` (every chunk of the file written).
    pub(super) fn add(&mut self, offset: u64, len: u64, complete: bool) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        if offset <= self.written {
            self.written = self.written.max(end);
        } else if len > 0 {
            let (mut start, mut end) = (offset, end);
            // Merge with every range it touches.
            let touching: Vec<u64> = self.ahead.range(..=end).filter(|(_, &e)| e >= start).map(|(&s, _)| s).collect();
            for s in touching {
                let e = self.ahead.remove(&s).unwrap_or(s);
                (start, end) = (start.min(s), end.max(e));
            }
            self.ahead.insert(start, end);
        }
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.written {
                break;
            }
            let e = entry.remove();
            self.written = self.written.max(e);
        }
        let upto = if complete { self.written } else { self.written - self.written % PAGE };
        if upto <= self.hinted || !(complete || upto - self.hinted >= WRITEBACK_RUN) {
            return None;
        }
        let range = (self.hinted, upto - self.hinted);
        self.hinted = upto;
        Some(range)
    }
}

/// The writeback thread of one restore. Dropping it drops the hints not yet
/// acted on and joins the thread.
pub(super) struct Writeback {
    queue: Option<SyncSender<Hint>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writeback {
    /// Starts the thread; without one (it could not be started), hints are
    /// dropped and the final `sync` does all the writing.
    pub(super) fn start() -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        match std::thread::Builder::new().name("coffer-writeback".into()).spawn(move || run(rx, &flag)) {
            Ok(thread) => Writeback { queue: Some(tx), stop, thread: Some(thread) },
            Err(e) => {
                tracing::debug!(error = %e, "no writeback thread; restored bytes are written back by the final sync");
                Writeback { queue: None, stop, thread: None }
            }
        }
    }

    /// Asks for `[offset, offset + len)` of `file` to be written back soon.
    /// Never blocks.
    pub(super) fn hint(&self, file: &Arc<File>, (offset, len): (u64, u64)) {
        let (Some(queue), Some(len)) = (&self.queue, NonZeroU64::new(len)) else { return };
        // A full queue drops the hint; so does a thread that is gone.
        let _ = queue.try_send(Hint { file: file.clone(), offset, len });
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(queue: Receiver<Hint>, stop: &AtomicBool) {
    while let Ok(hint) = queue.recv() {
        if stop.load(Ordering::Relaxed) {
            // The restore is over: what is left is the final sync's.
            return;
        }
        let _ = rustix::fs::fadvise(&*hint.file, hint.offset, Some(hint.len), rustix::fs::Advice::DontNeed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_cover_the_written_prefix_in_whole_pages_until_the_file_is_complete() {
        let run = WRITEBACK_RUN;
        let mut p = Pending::default();
        assert_eq!(p.add(run, run, false), None, "a chunk beyond a hole waits for the hole");
        assert_eq!(p.add(0, run / 2, false), None, "half a run of prefix waits");
        assert_eq!(p.add(run / 2, run / 2 + 100, false), Some((0, 2 * run)), "the hole filled: the prefix so far");
        assert_eq!(p.add(2 * run, 5000, false), None, "a page short of a run");
        let (a, b) = (2 * run + 5000, run);
        assert_eq!(p.add(a, b, false), Some((2 * run, run + 4096)), "ends on the page before the partial one");
        let end = a + b;
        assert_eq!(
            p.add(end, 10, true),
            Some((3 * run + 4096, end + 10 - 3 * run - 4096)),
            "complete: to the last byte"
        );
        assert_eq!(p.add(end + 10, 0, true), None, "nothing new, nothing to hint");

        // Out of order, overlapping and touching ranges merge into one.
        let mut p = Pending::default();
        assert_eq!(p.add(300, 100, false), None);
        assert_eq!(p.add(100, 100, false), None);
        assert_eq!(p.add(200, 100, false), None);
        assert_eq!(p.ahead.len(), 1, "{:?}", p.ahead);
        assert_eq!(p.add(0, 100, true), Some((0, 400)));
        assert!(p.ahead.is_empty());
    }

    #[test]
    fn hints_reach_the_kernel_and_dropping_stops_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(File::create(&path).unwrap());
        std::os::unix::fs::FileExt::write_all_at(&*file, &[7u8; 8192], 0).unwrap();
        let wb = Writeback::start();
        assert!(wb.thread.is_some());
        for _ in 0..QUEUE * 2 {
            wb.hint(&file, (0, 8192)); // more than the queue holds: never blocks
        }
        wb.hint(&file, (0, 0)); // an empty range is no hint
        drop(wb);
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 8192], "a hint changes no byte");
        assert_eq!(Arc::strong_count(&file), 1, "the thread let go of every file");
    }
}
