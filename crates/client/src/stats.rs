//! Counters shared by the stages of a backup (what was scanned, read, stored
//! and sent, and how long each CPU stage spent on how many bytes) and of a
//! restore (`RestoreCounters`, `RestoreStages`).
//!
//! Every stage runs on its own thread or task, so the counters are atomics
//! that each stage adds to and that the progress reporter and the final
//! summary only read. Relaxed ordering suffices: the numbers are reports,
//! never used to synchronise anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Time and bytes of one stage, as accumulated by its threads.
#[derive(Default, Debug)]
pub(crate) struct StageCounter {
    nanos: AtomicU64,
    bytes: AtomicU64,
}

impl StageCounter {
    pub fn add(&self, elapsed: Duration, bytes: u64) {
        self.nanos.fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Runs `f`, charging its duration and `bytes` to this stage.
    pub fn time<T>(&self, bytes: u64, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(start.elapsed(), bytes);
        out
    }

    pub(crate) fn snapshot(&self) -> StageTime {
        StageTime {
            seconds: self.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A monotonically growing count.
#[derive(Default, Debug)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything a backup counts while it runs.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub files: Count,
    pub dirs: Count,
    pub symlinks: Count,
    pub bytes_scanned: Count,
    pub bytes_read: Count,
    pub bytes_verified: Count,
    pub bytes_new: Count,
    pub bytes_stored: Count,
    pub bytes_stored_raw: Count,
    pub chunks_new: Count,
    pub chunks_reused: Count,
    pub packs: Count,
    /// Packs committed with fewer than k + m shards placed (too few nodes up).
    pub packs_short: Count,
    pub errors: Count,
    /// Entries the walk left out, by why (see `coffer_types::Coverage`),
    /// and their listed bytes.
    pub skipped_unreadable: Count,
    pub skipped_excluded: Count,
    pub skipped_vanished: Count,
    pub bytes_skipped: Count,
    /// Files compared with the parent snapshot (by path): absent from it,
    /// present with other content, present with the same content, and
    /// present in it but gone now.
    pub files_new: Count,
    pub files_changed: Count,
    pub files_unchanged: Count,
    pub files_deleted: Count,
    /// Files that only grew since the parent: read from their last chunk on.
    pub files_appended: Count,
    /// Reading the source and cutting it into chunks (one stage: the chunker
    /// pulls from the reader).
    pub read: StageCounter,
    pub hash: StageCounter,
    pub seal: StageCounter,
    pub encode: StageCounter,
    pub send: StageCounter,
}

impl Counters {
    pub fn progress(&self, started: Instant, done: bool) -> Progress {
        Progress {
            files: self.files.get(),
            dirs: self.dirs.get(),
            bytes_scanned: self.bytes_scanned.get(),
            bytes_read: self.bytes_read.get(),
            bytes_new: self.bytes_new.get(),
            bytes_stored: self.bytes_stored.get(),
            bytes_sent: self.bytes_stored_raw.get(),
            chunks_new: self.chunks_new.get(),
            chunks_reused: self.chunks_reused.get(),
            packs: self.packs.get(),
            errors: self.errors.get(),
            elapsed_s: started.elapsed().as_secs_f64(),
            done,
        }
    }

    pub fn stages(&self) -> Stages {
        Stages {
            read: self.read.snapshot(),
            hash: self.hash.snapshot(),
            seal: self.seal.snapshot(),
            encode: self.encode.snapshot(),
            send: self.send.snapshot(),
        }
    }
}

/// Where a running backup stands; handed to the progress callback.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Progress {
    pub files: u64,
    pub dirs: u64,
    /// Plaintext bytes of every file in the snapshot so far, read or reused.
    pub bytes_scanned: u64,
    /// Plaintext bytes actually read from the source.
    pub bytes_read: u64,
    /// Plaintext bytes of chunks that were new to the repository.
    pub bytes_new: u64,
    /// Sealed bytes of new blobs.
    pub bytes_stored: u64,
    /// Shard bytes acknowledged by storage nodes (after erasure coding).
    pub bytes_sent: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub packs: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    /// True on the last report, sent once the snapshot is committed.
    pub done: bool,
}

/// Time and bytes of one pipeline stage. `seconds` sums the time of every
/// thread of the stage, so it can exceed the wall time of the backup.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StageTime {
    pub seconds: f64,
    pub bytes: u64,
}

/// Per-stage costs of a backup, to see where the time goes.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stages {
    /// Reading the source and content-defined chunking.
    pub read: StageTime,
    /// Computing chunk ids.
    pub hash: StageTime,
    /// Compression and encryption of new blobs.
    pub seal: StageTime,
    /// Erasure coding and shard checksums.
    pub encode: StageTime,
    /// Sending shards until every node acknowledged (wall time per pack).
    pub send: StageTime,
}

/// Where the time of a restore goes, accumulated by its tasks.
#[derive(Default, Debug)]
pub struct RestoreCounters {
    pub(crate) trees: StageCounter,
    pub(crate) lookup: StageCounter,
    pub(crate) read: StageCounter,
    pub(crate) open: StageCounter,
    pub(crate) write: StageCounter,
    pub(crate) metadata: StageCounter,
}

impl RestoreCounters {
    pub(crate) fn stages(&self) -> RestoreStages {
        RestoreStages {
            trees: self.trees.snapshot(),
            lookup: self.lookup.snapshot(),
            read: self.read.snapshot(),
            open: self.open.snapshot(),
            write: self.write.snapshot(),
            metadata: self.metadata.snapshot(),
        }
    }
}

/// Per-stage costs of a restore. `seconds` sums the time of every task of a
/// stage, so stages that overlap can add up to more than the wall time.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RestoreStages {
    /// Fetching and decoding trees (wall time of each walk round; tree bytes).
    pub trees: StageTime,
    /// Resolving chunk locations in the catalog.
    pub lookup: StageTime,
    /// Reading sealed bytes from storage nodes (wall time of each read).
    pub read: StageTime,
    /// Authenticating, decrypting and decompressing (plaintext bytes).
    pub open: StageTime,
    /// Writing plaintext into files.
    pub write: StageTime,
    /// Creating files, directories and links, and setting modes and times.
    pub metadata: StageTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate() {
        let c = Counters::default();
        c.files.add(2);
        c.files.add(3);
        c.seal.add(Duration::from_millis(1500), 10);
        let x = c.seal.time(5, || 7);
        assert_eq!(x, 7);
        let p = c.progress(Instant::now(), true);
        assert_eq!(p.files, 5);
        assert!(p.done);
        let s = c.stages();
        assert_eq!(s.seal.bytes, 15);
        assert!(s.seal.seconds >= 1.5);
    }
}
