//! `ShardStore`: shard files in a directory, with a sled inventory as index.
//!
//! ```text
//!   DIR/shards/<2 hex>/<pack hex>.<index>   shard files: the truth
//!   DIR/tmp/                                puts in progress; emptied on open
//!   DIR/quarantine/                         files that failed to decode; never deleted
//!   DIR/inventory/                          sled: (pack ++ index) -> (version, body_len, checksum)
//! ```
//!
//! Invariants kept here:
//! - A shard file appears under `shards/` only complete, verified and
//!   durable: a put streams into `tmp/`, checks length and BLAKE3, writes
//!   the header, fsyncs, renames into place and fsyncs the directory.
//! - The inventory never disagrees with the files for long: `open` always
//!   reconciles it with the file headers, both ways. This costs one small
//!   read per shard at start-up and is robust to every crash point, a
//!   deleted or corrupt inventory, and files added or removed while the node
//!   was down, so there is no "clean shutdown" marker to get wrong.
//! - Bytes read back are verified per 64 KiB block before they are returned.
//! - Files that do not decode are moved aside, never deleted.
//! - A failed inventory does not stay failed. sled keeps the first write
//!   error it meets (a full disk) and fails every later call until it is
//!   reopened, so any inventory call that fails closes the inventory,
//!   reopens it and reconciles it with the files (the truth) before it is
//!   tried once more; while that cannot be done (the disk is still full)
//!   the call fails, with RESOURCE_EXHAUSTED when the disk is why, and a
//!   call after `REOPEN_BACKOFF` tries again. No restart is needed once
//!   space is back.
//! - A full disk does not keep the node from starting. If the inventory
//!   cannot be opened or reconciled at start because the disk is full, the
//!   store opens without it: reads, stats and heartbeats need only the
//!   files (and the totals their walk gives), while puts are refused
//!   before they write anything, and listings and deletes fail, all with
//!   RESOURCE_EXHAUSTED, until a reopen succeeds. Any other failure to
//!   open the inventory (another process holding its lock, say) still
//!   stops the start: two nodes on one directory must never both serve.
//!
//! The operations are synchronous; the async service calls them through
//! `tokio::task::spawn_blocking`. This file is the store and its inventory
//! (open, reconcile, list, stat, delete); `put` is the put writer and
//! `read` the ranged reader.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use coffer_types::{Hash32, PackId, ShardIndex};

use crate::shard_file::{self, ShardHeader, FIXED_HEADER_LEN};
use crate::StorageError;

mod put;
mod read;

pub use put::PutWriter;
pub use read::ShardReader;

/// Version of the inventory's value encoding.
const INVENTORY_VERSION: u8 = 1;
const INVENTORY_VALUE_LEN: usize = 1 + 8 + 32;
/// The inventory holds a few dozen bytes per shard; sled's default cache is
/// sized for far larger databases.
const INVENTORY_CACHE_BYTES: u64 = 16 << 20;
/// After a failed reopen of the inventory, calls fail at once for this
/// long instead of trying again: a reopen walks every shard file.
const REOPEN_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// One shard as the inventory lists it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShardEntry {
    pub pack: PackId,
    pub index: ShardIndex,
    pub body_len: u64,
    /// BLAKE3 of the body, as the catalog records it.
    pub checksum: Hash32,
}

/// Sizes kept in memory so that heartbeats need no directory walk.
#[derive(Default)]
struct Totals {
    /// The sum of the shard files' sizes, headers included.
    used_bytes: u64,
    shard_count: u64,
    /// Bumped by every put and delete, so that a recount from a walk of
    /// the files is applied only if nothing changed during the walk.
    generation: u64,
}

/// A shard file as a walk of the store sees it.
#[derive(Clone, Copy, Debug)]
pub struct ShardFileInfo {
    pub pack: PackId,
    pub index: ShardIndex,
    /// The file's length, header included.
    pub file_len: u64,
    /// When the file was last written (its put or rebuild).
    pub modified: SystemTime,
}

struct Inner {
    shards_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    inventory_dir: PathBuf,
    /// The inventory; `None` while a reopen after a failure has not
    /// succeeded. Calls hold the read lock while they use it, so that a
    /// reopen (write lock) drops the last handle and sled its file lock.
    db: RwLock<Option<sled::Db>>,
    /// Bumped by every reopen, so that of several calls that failed on the
    /// same handle only the first reopens it.
    db_generation: AtomicU64,
    /// When the last open or reopen of the inventory failed, and why
    /// (whether the disk was full); cleared by one that succeeds.
    open_failed: Mutex<Option<(std::time::Instant, String, bool)>>,
    /// Held while a shard file is renamed into place or removed and the
    /// inventory and totals follow, so that concurrent puts and deletes of
    /// the same shard account for each other.
    totals: Mutex<Totals>,
    /// Bytes the node keeps free on its filesystem; a put that would cross
    /// it is refused (`DiskFull`).
    reserve_bytes: AtomicU64,
    /// Bytes promised to puts in progress, so that concurrent puts cannot
    /// together cross the reserve.
    pending_bytes: AtomicU64,
}

/// Space promised to one put, given back when the put ends (finished or
/// dropped): once finished, the file is on disk and counted by the
/// filesystem's free space instead.
pub(crate) struct SpaceClaim {
    store: ShardStore,
    bytes: u64,
}

impl Drop for SpaceClaim {
    fn drop(&mut self) {
        self.store.release_space(self.bytes);
    }
}

/// A directory of shard files and its inventory. Cheap to clone; clones
/// share the same store.
#[derive(Clone)]
pub struct ShardStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore").field("shards_dir", &self.inner.shards_dir).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::io(path, e)
}

/// Makes a rename or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn create_dir(dir: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(dir).map_err(io_err(dir))
}

fn inventory_key(pack: &PackId, index: ShardIndex) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..16].copy_from_slice(pack.as_bytes());
    key[16] = index.0;
    key
}

/// The (pack, index) a listing page token names: the 17-byte inventory key
/// of the last shard of the previous page.
pub fn decode_page_token(token: &[u8]) -> Option<(PackId, ShardIndex)> {
    decode_inventory_key(token)
}

/// The page token that resumes a listing after `pack`'s shard `index`.
pub fn page_token(pack: &PackId, index: ShardIndex) -> Vec<u8> {
    inventory_key(pack, index).to_vec()
}

fn decode_inventory_key(key: &[u8]) -> Option<(PackId, ShardIndex)> {
    let (pack, index) = key.split_first_chunk::<16>()?;
    match index {
        [i] => Some((PackId(*pack), ShardIndex(*i))),
        _ => None,
    }
}

fn inventory_value(body_len: u64, checksum: &Hash32) -> [u8; INVENTORY_VALUE_LEN] {
    let mut v = [0u8; INVENTORY_VALUE_LEN];
    v[0] = INVENTORY_VERSION;
    v[1..9].copy_from_slice(&body_len.to_le_bytes());
    v[9..].copy_from_slice(checksum.as_bytes());
    v
}

fn decode_inventory_value(v: &[u8]) -> Option<(u64, Hash32)> {
    let (&version, rest) = v.split_first()?;
    if version != INVENTORY_VERSION {
        return None;
    }
    let (len, sum) = rest.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*len), Hash32::from_slice(sum).ok()?))
}

/// Parses `<pack hex>.<index>` and accepts only the canonical spelling we
/// write, so that two names can never denote the same shard.
fn parse_shard_name(name: &str) -> Option<(PackId, ShardIndex)> {
    let (pack, index) = name.split_once('.')?;
    let pack: PackId = pack.parse().ok()?;
    let index = ShardIndex(index.parse().ok()?);
    (shard_file_name(&pack, index) == name).then_some((pack, index))
}

fn shard_file_name(pack: &PackId, index: ShardIndex) -> String {
    format!("{}.{}", pack.to_hex(), index.0)
}

fn fan_out_dir_name(pack: &PackId) -> String {
    pack.to_hex()[..2].to_string()
}

impl ShardStore {
    /// Opens the store in `dir`, creating it if needed, removes abandoned
    /// temporary files, quarantines undecodable shard files and reconciles
    /// the inventory with the files.
    pub fn open(dir: impl AsRef<Path>) -> Result<ShardStore, StorageError> {
        let dir = dir.as_ref();
        let shards_dir = dir.join("shards");
        let tmp_dir = dir.join("tmp");
        let quarantine_dir = dir.join("quarantine");
        for d in [dir, &shards_dir, &tmp_dir, &quarantine_dir] {
            create_dir(d)?;
        }
        clean_tmp(&tmp_dir)?;
        let inventory_dir = dir.join("inventory");
        // A full disk must not keep the node from starting (see the module
        // doc); any other failure must.
        let opened = match open_inventory(&inventory_dir, &quarantine_dir) {
            Ok(db) => Ok(db),
            Err(e) if e.is_disk_full() => Err(e),
            Err(e) => return Err(e),
        };
        let store = ShardStore {
            inner: Arc::new(Inner {
                shards_dir,
                tmp_dir,
                quarantine_dir,
                inventory_dir,
                db: RwLock::new(None),
                db_generation: AtomicU64::new(0),
                open_failed: Mutex::new(None),
                totals: Mutex::new(Totals::default()),
                reserve_bytes: AtomicU64::new(0),
                pending_bytes: AtomicU64::new(0),
            }),
        };
        let files = store.scan_files()?;
        let reconciled = opened.and_then(|db| reconcile(&db, &files).map(|()| db).map_err(StorageError::from));
        match reconciled {
            Ok(db) => *store.inner.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db),
            Err(e) if e.is_disk_full() => {
                tracing::warn!(error = %e, "the disk is full: starting without the shard inventory; reads are served from the shard files, puts are refused until it can be opened");
                store.note_open_failure(&e);
            }
            Err(e) => return Err(e),
        }
        let mut totals = store.lock_totals();
        totals.used_bytes = files.values().map(ShardHeader::file_len).sum();
        totals.shard_count = files.len() as u64;
        drop(totals);
        tracing::info!(dir = %dir.display(), shards = files.len(), "shard store open");
        Ok(store)
    }

    fn lock_totals(&self) -> MutexGuard<'_, Totals> {
        // The totals are plain counters: a panic elsewhere cannot leave them
        // in a state worse than slightly off, so a poisoned lock is used as is.
        self.inner.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of the file that holds `pack`'s shard `index`.
    pub fn shard_path(&self, pack: &PackId, index: ShardIndex) -> PathBuf {
        self.inner.shards_dir.join(fan_out_dir_name(pack)).join(shard_file_name(pack, index))
    }

    /// Where files that failed to decode are moved.
    pub fn quarantine_dir(&self) -> &Path {
        &self.inner.quarantine_dir
    }

    /// Lists every shard file and reads its header, quarantining what does
    /// not decode or does not belong.
    fn scan_files(&self) -> Result<BTreeMap<(PackId, ShardIndex), ShardHeader>, StorageError> {
        let mut found = BTreeMap::new();
        let shards_dir = &self.inner.shards_dir;
        for top in fs::read_dir(shards_dir).map_err(io_err(shards_dir))? {
            let top = top.map_err(io_err(shards_dir))?;
            let top_path = top.path();
            let top_name = top.file_name().to_string_lossy().into_owned();
            let is_dir = top.file_type().map_err(io_err(&top_path))?.is_dir();
            let is_fan_out = top_name.len() == 2 && top_name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !is_dir || !is_fan_out {
                self.quarantine(&top_path, "not a shard fan-out directory")?;
                continue;
            }
            for entry in fs::read_dir(&top_path).map_err(io_err(&top_path))? {
                let entry = entry.map_err(io_err(&top_path))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((pack, index)) = parse_shard_name(&name).filter(|(p, _)| fan_out_dir_name(p) == top_name)
                else {
                    self.quarantine(&path, "name is not <pack id>.<index> under its fan-out directory")?;
                    continue;
                };
                match read_shard_header(&path, &pack, index) {
                    Ok(header) => {
                        found.insert((pack, index), header.0);
                    }
                    // Wrong permissions point at the deployment, not at the
                    // file: refuse to start rather than move good shards away.
                    Err(StorageError::Io { source, path }) if source.kind() == ErrorKind::PermissionDenied => {
                        return Err(StorageError::Io { source, path });
                    }
                    Err(e) => self.quarantine(&path, &e.to_string())?,
                }
            }
        }
        Ok(found)
    }

    /// Moves `path` into the quarantine directory under a fresh name.
    fn quarantine(&self, path: &Path, reason: &str) -> Result<(), StorageError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dest = self.inner.quarantine_dir.join(format!("{name}.{:016x}", rand::random::<u64>()));
        fs::rename(path, &dest).map_err(io_err(path))?;
        sync_dir(&self.inner.quarantine_dir)?;
        tracing::warn!(from = %path.display(), to = %dest.display(), reason, "quarantined a shard file");
        Ok(())
    }

    fn read_inventory(&self) -> RwLockReadGuard<'_, Option<sled::Db>> {
        // A panic while the lock was held cannot leave the handle half
        // replaced: it is swapped in one assignment.
        self.inner.db.read().unwrap_or_else(|p| p.into_inner())
    }

    fn note_open_failure(&self, e: &StorageError) {
        let mut slot = self.inner.open_failed.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some((std::time::Instant::now(), e.to_string(), e.is_disk_full()));
    }

    /// The refusal for a call that needs the inventory while it is closed
    /// and the last try to open it failed less than `REOPEN_BACKOFF` ago.
    fn recent_open_failure(&self) -> Option<StorageError> {
        let slot = self.inner.open_failed.lock().unwrap_or_else(|p| p.into_inner());
        let (at, reason, disk_full) = slot.as_ref()?;
        (at.elapsed() < REOPEN_BACKOFF)
            .then(|| StorageError::InventoryUnavailable { reason: reason.clone(), disk_full: *disk_full })
    }

    /// Whether the inventory is open, or can be opened now: what a put
    /// needs before it writes anything.
    fn ensure_inventory(&self) -> Result<(), StorageError> {
        self.with_inventory(|_| Ok(()))
    }

    /// Runs `f` on the inventory; if it fails (or the inventory is closed),
    /// reopens and reconciles the inventory and runs `f` once more. `f`
    /// must be safe to repeat: every inventory write is an idempotent put
    /// or remove of one key.
    fn with_inventory<T>(&self, f: impl Fn(&sled::Db) -> sled::Result<T>) -> Result<T, StorageError> {
        let generation = self.inner.db_generation.load(Ordering::Acquire);
        let failed = {
            let guard = self.read_inventory();
            match guard.as_ref() {
                Some(db) => match f(db) {
                    Ok(v) => return Ok(v),
                    Err(e) => Some(e),
                },
                None => {
                    if let Some(refused) = self.recent_open_failure() {
                        return Err(refused);
                    }
                    None
                }
            }
        };
        self.reopen_inventory(generation, failed)?;
        let guard = self.read_inventory();
        let db = guard.as_ref().ok_or(StorageError::InventoryClosed)?;
        Ok(f(db)?)
    }

    /// Drops the inventory handle that failed (sled keeps its first write
    /// error for ever), opens the inventory again and makes it agree with
    /// the files. Does nothing if another call reopened it since
    /// `generation`. On failure the inventory stays closed and the next
    /// call tries again.
    fn reopen_inventory(&self, generation: u64, failed: Option<sled::Error>) -> Result<(), StorageError> {
        let mut slot = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        if self.inner.db_generation.load(Ordering::Acquire) != generation {
            return Ok(());
        }
        if let Some(e) = &failed {
            tracing::warn!(error = %e, "the shard inventory failed; reopening it and reconciling it with the shard files");
        }
        // The last handle goes here (calls hold the read lock while they
        // use theirs), so sled's flusher stops and its file lock is free.
        *slot = None;
        self.inner.db_generation.fetch_add(1, Ordering::AcqRel);
        let reopened = open_inventory(&self.inner.inventory_dir, &self.inner.quarantine_dir).and_then(|db| {
            let files = self.scan_files()?;
            reconcile(&db, &files)?;
            Ok((db, files))
        });
        let (db, files) = match reopened {
            Ok(v) => v,
            Err(e) => {
                self.note_open_failure(&e);
                return Err(e);
            }
        };
        *self.inner.open_failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *slot = Some(db);
        // The totals are left to the next walk of the files, which resets
        // them: a caller may hold their lock here.
        tracing::info!(shards = files.len(), "the shard inventory is open again");
        Ok(())
    }

    /// Keeps `bytes` of the filesystem free: puts that would cross it fail.
    pub fn set_reserve(&self, bytes: u64) {
        self.inner.reserve_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.inner.reserve_bytes.load(Ordering::Relaxed)
    }

    /// Free space of the filesystem that holds the shards, for an
    /// unprivileged user (statvfs `f_bavail`).
    pub fn free_bytes(&self) -> Result<u64, StorageError> {
        fs2::available_space(&self.inner.shards_dir).map_err(io_err(&self.inner.shards_dir))
    }

    /// Promises `need` bytes to a put, or refuses it when the filesystem's
    /// free space less what other puts were promised would fall below the
    /// reserve.
    fn claim_space(&self, header: &ShardHeader, need: u64) -> Result<(), StorageError> {
        let free = self.free_bytes()?;
        let reserve = self.reserve_bytes();
        let pending = self.inner.pending_bytes.fetch_add(need, Ordering::AcqRel);
        let left = free.saturating_sub(pending);
        if left < need.saturating_add(reserve) {
            self.release_space(need);
            return Err(StorageError::DiskFull { pack: header.pack, index: header.index, need, free: left, reserve });
        }
        Ok(())
    }

    pub(crate) fn release_space(&self, bytes: u64) {
        // Claims and releases pair up, so this never goes below zero; the
        // saturating update keeps a bug from wrapping it.
        let _ = self
            .inner
            .pending_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| Some(p.saturating_sub(bytes)));
    }

    /// Starts a streaming put of the shard `header` describes. Refused with
    /// `DiskFull` when the file would leave less than the reserve free.
    pub fn begin_put(&self, header: ShardHeader) -> Result<PutWriter, StorageError> {
        header.validate()?;
        // A shard that could not be recorded must not be written at all.
        self.ensure_inventory()?;
        let need = header.file_len();
        self.claim_space(&header, need)?;
        let claim = SpaceClaim { store: self.clone(), bytes: need };
        let name = format!("{}.{:016x}.tmp", shard_file_name(&header.pack, header.index), rand::random::<u64>());
        let path = self.inner.tmp_dir.join(name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(io_err(&path))?;
        Ok(PutWriter {
            _claim: claim,
            store: self.clone(),
            header,
            path,
            file,
            body_hasher: blake3::Hasher::new(),
            block_hasher: blake3::Hasher::new(),
            block_fill: 0,
            block_hashes: Vec::with_capacity(header.block_count() as usize),
            received: 0,
            committed: false,
        })
    }

    /// Puts a whole shard held in memory.
    pub fn put(&self, header: ShardHeader, body: &[u8]) -> Result<u64, StorageError> {
        let mut w = self.begin_put(header)?;
        w.write(body)?;
        w.finish()
    }

    /// Moves a finished temporary file into place and records it.
    fn commit(&self, tmp: &Path, header: &ShardHeader) -> Result<(), StorageError> {
        let dest = self.shard_path(&header.pack, header.index);
        let fan_out = dest.parent().unwrap_or(&self.inner.shards_dir).to_path_buf();
        let mut totals = self.lock_totals();
        if !fan_out.is_dir() {
            create_dir(&fan_out)?;
            sync_dir(&self.inner.shards_dir)?;
        }
        let old_len = match fs::metadata(&dest) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::io(&dest, e)),
        };
        fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        sync_dir(&fan_out)?;
        let (key, value) =
            (inventory_key(&header.pack, header.index), inventory_value(header.body_len, &header.body_checksum));
        self.with_inventory(|db| db.insert(key, &value[..]))?;
        totals.used_bytes = totals.used_bytes.saturating_sub(old_len.unwrap_or(0)) + header.file_len();
        if old_len.is_none() {
            totals.shard_count += 1;
        }
        totals.generation += 1;
        drop(totals);
        // Flushing outside the lock lets concurrent puts share fsyncs.
        self.with_inventory(|db| db.flush())?;
        Ok(())
    }

    /// Opens a shard for reading, checking its header and file length.
    pub fn open_reader(&self, pack: &PackId, index: ShardIndex) -> Result<ShardReader, StorageError> {
        let path = self.shard_path(pack, index);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StorageError::NotFound { pack: *pack, index }),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let (header, hashes, body_offset) = read_header_from(&file, &path, pack, index)?;
        let direct = read::DirectFd::open(&path);
        Ok(ShardReader { path, file, direct, header, hashes, body_offset })
    }

    /// Reads `len` bytes of the body from `offset` (`len` 0: to the end),
    /// verifying every block it touches.
    pub fn read_range(&self, pack: &PackId, index: ShardIndex, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.open_reader(pack, index)?.read_range(offset, len)
    }

    /// Reads and checks the whole body.
    pub fn verify(&self, pack: &PackId, index: ShardIndex) -> Result<(), StorageError> {
        self.open_reader(pack, index)?.verify()
    }

    /// The header of a stored shard, read from its file.
    pub fn stat(&self, pack: &PackId, index: ShardIndex) -> Result<ShardHeader, StorageError> {
        Ok(*self.open_reader(pack, index)?.header())
    }

    /// Removes a shard; returns whether its file existed.
    pub fn delete(&self, pack: &PackId, index: ShardIndex) -> Result<bool, StorageError> {
        let path = self.shard_path(pack, index);
        let mut totals = self.lock_totals();
        let len = match fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        if let Some(len) = len {
            fs::remove_file(&path).map_err(io_err(&path))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            totals.used_bytes = totals.used_bytes.saturating_sub(len);
            totals.shard_count = totals.shard_count.saturating_sub(1);
            totals.generation += 1;
        }
        let key = inventory_key(pack, index);
        self.with_inventory(|db| db.remove(key))?;
        drop(totals);
        self.with_inventory(|db| db.flush())?;
        Ok(len.is_some())
    }

    /// Every shard the inventory holds, in (pack, index) order.
    pub fn list(&self) -> Result<Vec<ShardEntry>, StorageError> {
        self.with_inventory(|db| {
            let mut out = Vec::new();
            for item in db.iter() {
                let (key, value) = item?;
                // `open` rewrote every entry it could not decode, and only this
                // module writes entries, so a bad one here is a bug worth a log
                // line but not a failure of the whole listing.
                match (decode_inventory_key(&key), decode_inventory_value(&value)) {
                    (Some((pack, index)), Some((body_len, checksum))) => {
                        out.push(ShardEntry { pack, index, body_len, checksum })
                    }
                    _ => tracing::error!(key = ?key, "undecodable inventory entry skipped"),
                }
            }
            Ok(out)
        })
    }

    /// At most `limit` shards after `after` (exclusive; `None`: from the
    /// start) in (pack, index) order, and whether more follow.
    pub fn list_page(
        &self,
        after: Option<(PackId, ShardIndex)>,
        limit: usize,
    ) -> Result<(Vec<ShardEntry>, bool), StorageError> {
        self.with_inventory(|db| {
            let mut out = Vec::new();
            let iter = match after {
                None => db.iter(),
                Some((pack, index)) => {
                    // The key right after `after`'s: its key with a zero byte appended.
                    let mut start = inventory_key(&pack, index).to_vec();
                    start.push(0);
                    db.range(start..)
                }
            };
            for item in iter {
                let (key, value) = item?;
                match (decode_inventory_key(&key), decode_inventory_value(&value)) {
                    (Some((pack, index)), Some((body_len, checksum))) => {
                        if out.len() == limit {
                            return Ok((out, true));
                        }
                        out.push(ShardEntry { pack, index, body_len, checksum })
                    }
                    _ => tracing::error!(key = ?key, "undecodable inventory entry skipped"),
                }
            }
            Ok((out, false))
        })
    }

    /// Every shard file with its length and modification time, from the
    /// files themselves (a walk of `shards/`, one `stat` per file). Files
    /// that vanish during the walk (a concurrent delete) are skipped; names
    /// that are not shard names are left for `open` to quarantine. Also
    /// resets `used_bytes` and `shard_count` to what the walk found, if no
    /// put or delete happened meanwhile, so that the counters can never
    /// drift from the disk for longer than one walk.
    pub fn walk(&self) -> Result<Vec<ShardFileInfo>, StorageError> {
        let generation = self.lock_totals().generation;
        let mut out = Vec::new();
        let shards_dir = &self.inner.shards_dir;
        for top in fs::read_dir(shards_dir).map_err(io_err(shards_dir))? {
            let top_path = top.map_err(io_err(shards_dir))?.path();
            if !top_path.is_dir() {
                continue;
            }
            let entries = match fs::read_dir(&top_path) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(&top_path, e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&top_path))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((pack, index)) = parse_shard_name(&name) else { continue };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(entry.path(), e)),
                };
                let modified = meta.modified().map_err(io_err(&entry.path()))?;
                out.push(ShardFileInfo { pack, index, file_len: meta.len(), modified });
            }
        }
        out.sort_by_key(|f| (f.pack, f.index));
        let mut totals = self.lock_totals();
        if totals.generation == generation {
            let used: u64 = out.iter().map(|f| f.file_len).sum();
            if used != totals.used_bytes || out.len() as u64 != totals.shard_count {
                tracing::warn!(
                    counted = totals.used_bytes,
                    on_disk = used,
                    shards = out.len(),
                    "used bytes drifted from the shard files; reset to the disk"
                );
                totals.used_bytes = used;
                totals.shard_count = out.len() as u64;
            }
        }
        Ok(out)
    }

    /// The sum of the shard files' sizes.
    pub fn used_bytes(&self) -> u64 {
        self.lock_totals().used_bytes
    }

    pub fn shard_count(&self) -> u64 {
        self.lock_totals().shard_count
    }
}

/// Makes the inventory say exactly what the files say.
fn reconcile(db: &sled::Db, files: &BTreeMap<(PackId, ShardIndex), ShardHeader>) -> sled::Result<()> {
    let mut agreeing = BTreeSet::new();
    let mut stale = Vec::new();
    for item in db.iter() {
        let (key, value) = item?;
        let matches = decode_inventory_key(&key).filter(|k| {
            files.get(k).is_some_and(|h| decode_inventory_value(&value) == Some((h.body_len, h.body_checksum)))
        });
        match matches {
            Some(k) => {
                agreeing.insert(k);
            }
            None => stale.push(key),
        }
    }
    for key in &stale {
        db.remove(key)?;
    }
    let mut added = 0usize;
    for ((pack, index), h) in files {
        if !agreeing.contains(&(*pack, *index)) {
            db.insert(inventory_key(pack, *index), &inventory_value(h.body_len, &h.body_checksum)[..])?;
            added += 1;
        }
    }
    db.flush()?;
    if added > 0 || !stale.is_empty() {
        tracing::info!(added, removed = stale.len(), "reconciled the inventory with the shard files");
    }
    Ok(())
}

/// Removes everything in `tmp`: puts that were in flight when the node
/// stopped. Their clients never got an acknowledgement, so nothing is lost.
fn clean_tmp(tmp: &Path) -> Result<(), StorageError> {
    let mut removed = 0usize;
    for entry in fs::read_dir(tmp).map_err(io_err(tmp))? {
        let path = entry.map_err(io_err(tmp))?.path();
        let r = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        r.map_err(io_err(&path))?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(removed, dir = %tmp.display(), "removed abandoned temporary files");
    }
    Ok(())
}

/// Opens the sled inventory. A corrupt inventory is moved into quarantine
/// and replaced by an empty one, which `reconcile` then fills from the files;
/// any other failure (such as another process holding the lock) is an error.
fn open_inventory(path: &Path, quarantine: &Path) -> Result<sled::Db, StorageError> {
    let open = || sled::Config::new().path(path).cache_capacity(INVENTORY_CACHE_BYTES).open();
    match open() {
        Ok(db) => Ok(db),
        Err(e @ sled::Error::Corruption { .. }) => {
            let dest = quarantine.join(format!("inventory.{:016x}", rand::random::<u64>()));
            tracing::warn!(error = %e, to = %dest.display(), "inventory is corrupt; rebuilding it from the shard files");
            fs::rename(path, &dest).map_err(io_err(path))?;
            Ok(open()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads and checks the header of the shard file at `path`.
fn read_shard_header(
    path: &Path,
    pack: &PackId,
    index: ShardIndex,
) -> Result<(ShardHeader, Vec<Hash32>, u64), StorageError> {
    let file = File::open(path).map_err(io_err(path))?;
    read_header_from(&file, path, pack, index)
}

/// Reads the header region of an open shard file, decodes it, checks that it
/// describes the shard the file name says, and that the file has exactly the
/// length the header calls for. Damage is reported as `CorruptHeader` or
/// `Truncated` for `pack`/`index`.
fn read_header_from(
    file: &File,
    path: &Path,
    pack: &PackId,
    index: ShardIndex,
) -> Result<(ShardHeader, Vec<Hash32>, u64), StorageError> {
    let damaged = |reason: String| StorageError::CorruptHeader { pack: *pack, index, reason };
    let actual = file.metadata().map_err(io_err(path))?.len();
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    read_exact_at(file, path, &mut fixed, 0)?
        .ok_or_else(|| damaged(format!("file of {actual} bytes is shorter than a shard header")))?;
    let (_, region_len) = shard_file::decode_fixed(&fixed).map_err(|e| damaged(e.to_string()))?;
    // `decode_fixed` bounded the region by the format's caps, and the file
    // must hold it before it is allocated.
    if actual < region_len as u64 {
        return Err(damaged(format!("file of {actual} bytes ends inside the block hash table")));
    }
    let mut region = vec![0u8; region_len];
    read_exact_at(file, path, &mut region, 0)?
        .ok_or_else(|| damaged(format!("file of {actual} bytes ends inside the block hash table")))?;
    let (header, hashes, body_offset) = shard_file::decode_header(&region).map_err(|e| damaged(e.to_string()))?;
    if header.pack != *pack || header.index != index {
        return Err(damaged(format!("the header describes shard {}.{} instead", header.pack, header.index)));
    }
    if actual != header.file_len() {
        return Err(StorageError::Truncated { pack: *pack, index, expected: header.file_len(), actual });
    }
    Ok((header, hashes, body_offset))
}

/// Opens the shard file at `path` the way `open_reader` does, for a shard
/// whose id is whatever the file's own header says (for the fuzz targets,
/// which have no store directory).
pub(crate) fn open_reader_at(path: &Path) -> Result<ShardReader, StorageError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    read_exact_at(&file, path, &mut fixed, 0)?.ok_or_else(|| StorageError::BadHeader { reason: "short".into() })?;
    let (claimed, _) = shard_file::decode_fixed(&fixed)?;
    let (header, hashes, body_offset) = read_header_from(&file, path, &claimed.pack, claimed.index)?;
    Ok(ShardReader { path: path.to_path_buf(), file, direct: None, header, hashes, body_offset })
}

/// `read_exact_at` that reports a short file as `Ok(None)` instead of an
/// I/O error, so that callers can name it as damage.
fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<Option<()>, StorageError> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(Some(())),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use rand::{Rng, RngCore, SeedableRng};

    use super::*;
    use crate::shard_file::BLOCK_SIZE;

    fn body(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn header_for(pack: PackId, index: u8, body: &[u8]) -> ShardHeader {
        ShardHeader {
            pack,
            index: ShardIndex(index),
            k: 4,
            m: 2,
            body_len: body.len() as u64,
            body_checksum: Hash32(*blake3::hash(body).as_bytes()),
        }
    }

    fn tmp_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    #[test]
    fn ranged_reads_are_the_same_around_the_page_cache_and_through_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let data = body(7 * BLOCK_SIZE as usize + 4_321, 3);
        let pack = PackId::random();
        store.put(header_for(pack, 1, &data), &data)?;
        let direct = store.open_reader(&pack, ShardIndex(1))?;
        assert!(direct.direct.is_some(), "the test directory's filesystem refuses O_DIRECT");
        let mut cached = store.open_reader(&pack, ShardIndex(1))?;
        cached.direct = None;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..300 {
            let offset = rng.gen_range(0..=data.len());
            let len = rng.gen_range(0..=data.len() - offset);
            let want = if len == 0 { &data[offset..] } else { &data[offset..offset + len] };
            assert_eq!(direct.read_shared(offset as u64, len as u64)?, want, "direct, offset {offset} len {len}");
            assert_eq!(cached.read_shared(offset as u64, len as u64)?, want, "cached, offset {offset} len {len}");
        }
        assert!(direct.direct.as_ref().is_some_and(|d| d.usable()), "a direct read fell back to the cache");

        // A file cut short under an open reader: the direct read sees the
        // end of the file and says so, as the cached read does.
        let path = store.shard_path(&pack, ShardIndex(1));
        std::fs::OpenOptions::new().write(true).open(&path)?.set_len(direct.body_offset + 3 * BLOCK_SIZE as u64)?;
        for reader in [&direct, &cached] {
            let cut = reader.read_shared(2 * BLOCK_SIZE as u64, 2 * BLOCK_SIZE as u64);
            assert!(matches!(cut, Err(StorageError::Truncated { .. })), "{cut:?}");
        }
        Ok(())
    }

    #[test]
    fn put_then_read_ranges_across_block_boundaries() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let data = body(5 * BLOCK_SIZE as usize + 123, 1);
        let pack = PackId::random();
        let h = header_for(pack, 2, &data);
        // Stream in uneven pieces so that block boundaries fall inside writes.
        let mut w = store.begin_put(h)?;
        for piece in data.chunks(40_000) {
            w.write(piece)?;
        }
        assert_eq!(w.finish()?, data.len() as u64);
        assert_eq!(store.stat(&pack, ShardIndex(2))?, h);
        assert_eq!(store.read_range(&pack, ShardIndex(2), 0, 0)?, data);

        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let offset = rng.gen_range(0..=data.len());
            let len = rng.gen_range(0..=data.len() - offset);
            let got = store.read_range(&pack, ShardIndex(2), offset as u64, len as u64)?;
            let want = if len == 0 { &data[offset..] } else { &data[offset..offset + len] };
            assert_eq!(got, want, "offset {offset} len {len}");
        }
        let bs = BLOCK_SIZE as u64;
        assert_eq!(store.read_range(&pack, ShardIndex(2), bs - 1, 2)?, &data[bs as usize - 1..bs as usize + 1]);

        let oob = store.read_range(&pack, ShardIndex(2), data.len() as u64, 1);
        assert!(matches!(oob, Err(StorageError::RangeOutOfBounds { .. })), "{oob:?}");
        let oob = store.read_range(&pack, ShardIndex(2), data.len() as u64 + 1, 0);
        assert!(matches!(oob, Err(StorageError::RangeOutOfBounds { .. })), "{oob:?}");
        let oob = store.read_range(&pack, ShardIndex(2), 5, u64::MAX);
        assert!(matches!(oob, Err(StorageError::RangeOutOfBounds { .. })), "{oob:?}");

        store.verify(&pack, ShardIndex(2))?;
        assert_eq!(store.shard_count(), 1);
        assert_eq!(store.used_bytes(), h.file_len());
        assert_eq!(
            store.list()?,
            vec![ShardEntry { pack, index: ShardIndex(2), body_len: h.body_len, checksum: h.body_checksum }]
        );
        assert_eq!(tmp_files(dir.path()), 0);
        Ok(())
    }

    #[test]
    fn flipped_body_byte_fails_only_its_block() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let data = body(3 * BLOCK_SIZE as usize + 5, 2);
        let pack = PackId::random();
        let h = header_for(pack, 0, &data);
        store.put(h, &data)?;

        let path = store.shard_path(&pack, ShardIndex(0));
        let mut bytes = fs::read(&path)?;
        let bs = BLOCK_SIZE as usize;
        let pos = h.body_offset() as usize + bs + 17;
        bytes[pos] ^= 0x40;
        fs::write(&path, &bytes)?;

        let r = store.read_range(&pack, ShardIndex(0), bs as u64 + 10, 20);
        assert!(matches!(r, Err(StorageError::Corrupt { block: 1, .. })), "{r:?}");
        let r = store.read_range(&pack, ShardIndex(0), 0, 0);
        assert!(matches!(r, Err(StorageError::Corrupt { block: 1, .. })), "{r:?}");
        assert!(r.unwrap_err().to_string().contains(&pack.to_string()));
        assert_eq!(store.read_range(&pack, ShardIndex(0), 0, bs as u64)?, &data[..bs]);
        assert_eq!(store.read_range(&pack, ShardIndex(0), 2 * bs as u64, 0)?, &data[2 * bs..]);
        assert!(store.verify(&pack, ShardIndex(0)).unwrap_err().is_data_loss());
        Ok(())
    }

    #[test]
    fn truncated_or_damaged_files_are_errors() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let data = body(2 * BLOCK_SIZE as usize, 3);
        let pack = PackId::random();
        let h = header_for(pack, 1, &data);
        store.put(h, &data)?;
        let path = store.shard_path(&pack, ShardIndex(1));
        let original = fs::read(&path)?;

        for cut in [0, 5, FIXED_HEADER_LEN - 1, FIXED_HEADER_LEN + 3, original.len() - 1] {
            fs::write(&path, &original[..cut])?;
            let r = store.read_range(&pack, ShardIndex(1), 0, 0);
            assert!(r.as_ref().is_err_and(StorageError::is_data_loss), "cut at {cut}: {r:?}");
        }
        // A file that grew is damaged too.
        let mut longer = original.clone();
        longer.push(0);
        fs::write(&path, &longer)?;
        assert!(matches!(store.stat(&pack, ShardIndex(1)), Err(StorageError::Truncated { .. })));

        // A valid file under another shard's name is not that shard.
        let other = store.shard_path(&pack, ShardIndex(3));
        fs::write(&other, &original)?;
        assert!(matches!(store.stat(&pack, ShardIndex(3)), Err(StorageError::CorruptHeader { .. })));

        assert!(matches!(store.stat(&PackId::random(), ShardIndex(0)), Err(StorageError::NotFound { .. })));
        Ok(())
    }

    #[test]
    fn inventory_is_rebuilt_from_the_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut expected = Vec::new();
        {
            let store = ShardStore::open(dir.path())?;
            for i in 0..5u8 {
                let data = body(1000 * (i as usize + 1), i as u64);
                let pack = PackId::random();
                let h = header_for(pack, i, &data);
                store.put(h, &data)?;
                expected.push(ShardEntry {
                    pack,
                    index: ShardIndex(i),
                    body_len: h.body_len,
                    checksum: h.body_checksum,
                });
            }
            // Deleted shards must not come back.
            let gone = header_for(PackId::random(), 0, b"gone");
            store.put(gone, b"gone")?;
            assert!(store.delete(&gone.pack, gone.index)?);
            assert!(!store.delete(&gone.pack, gone.index)?);
        }
        expected.sort_by_key(|e| (e.pack, e.index));
        let used: u64 = {
            let store = ShardStore::open(dir.path())?;
            assert_eq!(store.list()?, expected);
            store.used_bytes()
        };

        fs::remove_dir_all(dir.path().join("inventory"))?;
        let store = ShardStore::open(dir.path())?;
        assert_eq!(store.list()?, expected);
        assert_eq!(store.shard_count(), 5);
        assert_eq!(store.used_bytes(), used);
        for e in &expected {
            store.verify(&e.pack, e.index)?;
        }
        Ok(())
    }

    #[test]
    fn stale_inventory_entries_are_dropped_on_open() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = body(10, 9);
        let h = header_for(PackId::random(), 0, &data);
        let path = {
            let store = ShardStore::open(dir.path())?;
            store.put(h, &data)?;
            store.shard_path(&h.pack, h.index)
        };
        // The file disappears while the node is down.
        fs::remove_file(path)?;
        let store = ShardStore::open(dir.path())?;
        assert_eq!(store.list()?, vec![]);
        assert_eq!(store.used_bytes(), 0);
        Ok(())
    }

    #[test]
    fn garbage_in_shards_is_quarantined_on_open() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = body(1000, 4);
        let good = header_for(PackId::random(), 0, &data);
        let bad_pack = PackId::random();
        {
            let store = ShardStore::open(dir.path())?;
            store.put(good, &data)?;
            let path = store.shard_path(&bad_pack, ShardIndex(1));
            fs::create_dir_all(path.parent().unwrap())?;
            fs::File::create(&path)?.write_all(b"this is not a shard file")?;
            fs::write(dir.path().join("shards").join("stray.txt"), b"stray")?;
            fs::write(path.with_file_name("not-a-shard-name"), b"x")?;
        }
        let store = ShardStore::open(dir.path())?;
        assert_eq!(store.list()?.len(), 1);
        assert!(!store.shard_path(&bad_pack, ShardIndex(1)).exists());
        let quarantined: Vec<String> = fs::read_dir(store.quarantine_dir())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert_eq!(quarantined.len(), 3, "{quarantined:?}");
        // Quarantine keeps the bytes.
        let kept = quarantined.iter().find(|n| n.starts_with(&bad_pack.to_hex())).unwrap();
        assert_eq!(fs::read(store.quarantine_dir().join(kept))?, b"this is not a shard file");
        assert_eq!(store.read_range(&good.pack, good.index, 0, 0)?, data);
        Ok(())
    }

    #[test]
    fn bad_puts_store_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let data = body(BLOCK_SIZE as usize + 1, 5);
        let pack = PackId::random();

        let mut wrong_sum = header_for(pack, 0, &data);
        wrong_sum.body_checksum = Hash32([0; 32]);
        let r = store.put(wrong_sum, &data);
        assert!(matches!(r, Err(StorageError::ChecksumMismatch { .. })), "{r:?}");

        let short = header_for(pack, 0, &data);
        let mut w = store.begin_put(short)?;
        w.write(&data[..100])?;
        assert!(matches!(w.finish(), Err(StorageError::LengthMismatch { received: 100, .. })));

        let mut w = store.begin_put(short)?;
        w.write(&data)?;
        assert!(matches!(w.write(&[1]), Err(StorageError::LengthMismatch { .. })));
        drop(w);

        let r = store.put(ShardHeader { index: ShardIndex(9), ..short }, &data);
        assert!(matches!(r, Err(StorageError::BadHeader { .. })), "{r:?}");

        assert!(!store.shard_path(&pack, ShardIndex(0)).exists());
        assert_eq!(store.list()?, vec![]);
        assert_eq!(store.shard_count(), 0);
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(tmp_files(dir.path()), 0);
        Ok(())
    }

    #[test]
    fn identical_put_is_idempotent_and_empty_bodies_work() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let data = body(70_000, 6);
        let h = header_for(PackId::random(), 3, &data);
        store.put(h, &data)?;
        store.put(h, &data)?;
        assert_eq!(store.shard_count(), 1);
        assert_eq!(store.used_bytes(), h.file_len());
        assert_eq!(store.read_range(&h.pack, h.index, 0, 0)?, data);

        let empty = header_for(PackId::random(), 0, b"");
        store.put(empty, b"")?;
        assert_eq!(store.read_range(&empty.pack, empty.index, 0, 0)?, Vec::<u8>::new());
        store.verify(&empty.pack, empty.index)?;
        Ok(())
    }

    #[test]
    fn puts_in_flight_count_against_the_reserve() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        // Two puts that declare 1 GiB each (nothing is written yet), with
        // room above the reserve for one and a half: the second must wait
        // for the first.
        let big = |index: u8| ShardHeader {
            pack: PackId::random(),
            index: ShardIndex(index),
            k: 4,
            m: 2,
            body_len: crate::shard_file::MAX_BODY_LEN,
            body_checksum: Hash32([0; 32]),
        };
        let need = big(0).file_len();
        store.set_reserve(store.free_bytes()?.saturating_sub(need + need / 2));
        let first = store.begin_put(big(0))?;
        let second = store.begin_put(big(1));
        assert!(matches!(second, Err(StorageError::DiskFull { .. })), "{second:?}");
        assert_eq!(tmp_files(dir.path()), 1, "a refused put opens no file");
        drop(first);
        let again = store.begin_put(big(1))?;
        drop(again);
        assert_eq!(tmp_files(dir.path()), 0);
        Ok(())
    }

    #[test]
    fn used_bytes_follow_the_files_and_a_walk_corrects_drift() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ShardStore::open(dir.path())?;
        let on_disk = |store: &ShardStore| -> u64 {
            let mut sum = 0;
            for top in fs::read_dir(dir.path().join("shards")).unwrap() {
                for f in fs::read_dir(top.unwrap().path()).unwrap() {
                    sum += f.unwrap().metadata().unwrap().len();
                }
            }
            assert_eq!(store.used_bytes(), sum, "used bytes against the files");
            sum
        };
        let mut headers = Vec::new();
        for i in 0..6u8 {
            let data = body(10_000 * (i as usize + 1), 20 + i as u64);
            let h = header_for(PackId::random(), i % 6, &data);
            store.put(h, &data)?;
            headers.push(h);
        }
        on_disk(&store);
        // An overwrite, deletes, a delete of what is not there.
        let data = body(10_000, 20);
        store.put(headers[0], &data)?;
        assert!(store.delete(&headers[1].pack, headers[1].index)?);
        assert!(store.delete(&headers[2].pack, headers[2].index)?);
        assert!(!store.delete(&headers[2].pack, headers[2].index)?);
        let before = on_disk(&store);

        // A file removed behind the store's back: the counter is stale
        // until the next walk, which resets it to the disk.
        fs::remove_file(store.shard_path(&headers[3].pack, headers[3].index))?;
        assert_eq!(store.used_bytes(), before);
        let walked = store.walk()?;
        assert_eq!(walked.len(), 3);
        assert_eq!(store.shard_count(), 3);
        on_disk(&store);
        Ok(())
    }

    #[test]
    fn abandoned_temp_files_are_removed_on_open() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        drop(ShardStore::open(dir.path())?);
        // What a put in flight leaves behind when the process dies.
        fs::write(dir.path().join("tmp").join("0011.0.abcd.tmp"), b"half a shard")?;
        let store = ShardStore::open(dir.path())?;
        assert_eq!(tmp_files(dir.path()), 0);
        assert_eq!(store.list()?, vec![]);
        Ok(())
    }

    /// A node restarted while its disk is still full: its inventory cannot
    /// be written, which failed the start. The store now opens without
    /// it, serves reads from the files, refuses puts (a full disk, so
    /// RESOURCE_EXHAUSTED) before writing anything, and once space is back
    /// reopens the inventory, reconciled with the files, by itself. The
    /// full disk is the inventory's database file pointing at `/dev/full`,
    /// which refuses every write with ENOSPC as a full filesystem does.
    #[test]
    fn a_store_whose_disk_is_full_at_start_serves_reads_and_recovers_by_itself() -> anyhow::Result<()> {
        if !Path::new("/dev/full").exists() {
            anyhow::bail!("this test needs /dev/full");
        }
        let dir = tempfile::tempdir()?;
        let (a, b) = (PackId::random(), PackId::random());
        let (da, db_) = (body(70_000, 30), body(9_000, 31));
        {
            let store = ShardStore::open(dir.path())?;
            store.put(header_for(a, 0, &da), &da)?;
        }
        let inventory = dir.path().join("inventory");
        fs::remove_dir_all(&inventory)?;
        fs::create_dir(&inventory)?;
        std::os::unix::fs::symlink("/dev/full", inventory.join("db"))?;

        let store = ShardStore::open(dir.path())?;
        assert_eq!(store.read_range(&a, ShardIndex(0), 0, 0)?, da, "reads need only the files");
        assert_eq!(store.stat(&a, ShardIndex(0))?, header_for(a, 0, &da));
        assert_eq!(store.shard_count(), 1, "the totals come from the walk of the files");
        let refused = store.put(header_for(b, 1, &db_), &db_).expect_err("a put without an inventory");
        assert!(refused.is_disk_full(), "{refused:?}");
        assert!(!store.shard_path(&b, ShardIndex(1)).exists(), "a refused put wrote its file");
        assert_eq!(tmp_files(dir.path()), 0);
        assert!(store.list().expect_err("a listing without an inventory").is_disk_full());

        // Space returns: the next try after the backoff opens the inventory.
        fs::remove_file(inventory.join("db"))?;
        let deadline = std::time::Instant::now() + REOPEN_BACKOFF * 10;
        loop {
            match store.put(header_for(b, 1, &db_), &db_) {
                Ok(_) => break,
                Err(e) if e.is_disk_full() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut listed: Vec<(PackId, ShardIndex)> = store.list()?.iter().map(|e| (e.pack, e.index)).collect();
        listed.sort();
        let mut want = vec![(a, ShardIndex(0)), (b, ShardIndex(1))];
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(store.read_range(&b, ShardIndex(1), 0, 0)?, db_);
        Ok(())
    }
}
