//! The metadata node's storage engine: one fjall database (an LSM tree per
//! keyspace, one journal for all), and the migration of a store that an
//! earlier version kept in sled.
//!
//! Every other module reads and writes through [`Tree`] and [`Batch`], never
//! through fjall, so the engine is named in this file only. The reasons for
//! an LSM tree rather than sled's B-tree are in ARCHITECTURE.md ("What
//! limits it"): chunk ids are uniformly spread, so once a catalog outgrows
//! the cache every deduplication check of a new chunk read a random leaf
//! from disk; here the keyspace's bloom filters answer an absent key from
//! memory, inserts go to a memtable and reach the disk sequentially, and the
//! block cache has a hard bound.
//!
//! Keyspaces: `log` (Raft entries by big-endian index), `raft` (vote,
//! committed, purged), `sm` and `sm_control` (the state machine, layout in
//! `kv`), `snapshots` (the current snapshot's meta and the install marker).
//! One write batch is atomic across keyspaces and becomes visible to
//! readers at once; iterators and [`Snapshot`]s read one fixed sequence
//! number.
//!
//! The state machine is one ordered map to its readers ([`Db::state_tree`])
//! kept in two keyspaces: `sm_control` holds the records under
//! `kv::CONTROL_PREFIXES` (nodes, incidents, drains, sessions, bad shards,
//! the counters and work lists of the indexes, bookkeeping: few keys, often
//! rewritten), `sm` the rest (chunk entries, packs, snapshots and their
//! indexes: the catalog, which grows). The leader's idle duties read only
//! control records; in one keyspace every such read would step through the
//! catalog's tables, whose number grows with the catalog, and over the
//! versions the catalog's writes leave in the memtable. In a keyspace of
//! their own they are read from a small memtable and a few small tables,
//! whatever the catalog's size. Each key lives in exactly one of the two;
//! reads that span both merge them in key order.

use std::ops::RangeBounds;
use std::path::{Path, PathBuf};

use crate::MetaError;

/// The engine's error, carried by `MetaError::Store`.
pub type StoreError = fjall::Error;

/// A key or value as the engine hands it out: cheap to clone, derefs to `[u8]`.
pub type Bytes = fjall::Slice;

/// The trees of a metadata node's database (`sm` is the state tree, two
/// keyspaces), as sled named them.
pub const KEYSPACES: [&str; 4] = ["log", "raft", "sm", "snapshots"];
/// The state machine's tree.
pub const STATE: &str = "sm";
/// The keyspace of the state machine's control records.
const STATE_CONTROL: &str = "sm_control";
/// A memtable of control records is flushed at this size: it bounds the
/// versions of rewritten counters that a scan of them steps over.
const CONTROL_MEMTABLE_BYTES: u64 = 4 << 20;

/// Where the database lives in a metadata node's directory.
pub const DIR: &str = "raft.fjall";
/// Where an earlier version kept it; migrated once (`open`).
pub const SLED_DIR: &str = "raft.sled";
/// What the sled directory is renamed to once migrated (kept, not deleted:
/// an operator removes it once satisfied).
pub const SLED_MIGRATED_DIR: &str = "raft.sled.migrated";

/// Keys copied per batch by the migration.
const MIGRATE_BATCH: usize = 10_000;

/// The open database. Clones share it.
#[derive(Clone)]
pub struct Db {
    db: fjall::Database,
}

impl Db {
    /// Opens the database of the metadata node whose directory is `dir`,
    /// with `cache_bytes` of block cache, first migrating a store that an
    /// earlier version kept in sled.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, MetaError> {
        let path = dir.join(DIR);
        let sled_path = dir.join(SLED_DIR);
        if sled_path.exists() && !path.exists() {
            migrate_from_sled(&sled_path, &path, cache_bytes)?;
            std::fs::rename(&sled_path, dir.join(SLED_MIGRATED_DIR)).map_err(io_at(dir))?;
            sync_dir(dir)?;
            tracing::info!(from = %sled_path.display(), to = %path.display(), "migrated the metadata store from sled");
        }
        Self::open_path(&path, cache_bytes)
    }

    /// Opens (or creates) a database at `path` (tests and tools).
    pub fn open_path(path: &Path, cache_bytes: u64) -> Result<Self, MetaError> {
        // The journal bound keeps a node's disk use and its replay at start
        // bounded; 64 MiB is fjall's least.
        let db = fjall::Database::builder(path)
            .cache_size(cache_bytes)
            .max_journaling_size(256 << 20)
            .open()
            .map_err(MetaError::Store)?;
        Ok(Self { db })
    }

    /// A temporary database, removed when the last clone is dropped (tests).
    #[cfg(test)]
    pub fn temporary() -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("coffer-meta-test-{}-{seq}", std::process::id()));
        let db = fjall::Database::builder(&dir).temporary(true).cache_size(16 << 20).open();
        Self { db: db.unwrap_or_else(|e| panic!("temporary metadata store at {}: {e}", dir.display())) }
    }

    /// The tree `name`, created if absent: the state tree for `STATE`
    /// (see the top), else one keyspace.
    pub fn tree(&self, name: &str) -> Result<Tree, MetaError> {
        let ks = self.db.keyspace(name, fjall::KeyspaceCreateOptions::default).map_err(MetaError::Store)?;
        let control = if name == STATE {
            // Every flush of the small memtable is merged into level 1 at
            // once (fjall waits for 4 tables by default): compaction drops
            // the old versions, so the control records stay one small table
            // that a scan consults, not several.
            let options = || {
                fjall::KeyspaceCreateOptions::default().max_memtable_size(CONTROL_MEMTABLE_BYTES).compaction_strategy(
                    std::sync::Arc::new(fjall::compaction::Leveled::default().with_l0_threshold(1)),
                )
            };
            Some(self.db.keyspace(STATE_CONTROL, options).map_err(MetaError::Store)?)
        } else {
            None
        };
        Ok(Tree { db: self.db.clone(), ks, control })
    }

    /// The state machine's tree.
    pub fn state_tree(&self) -> Result<Tree, MetaError> {
        self.tree(STATE)
    }

    /// Makes every write so far durable (the journal, fsynced).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.persist(fjall::PersistMode::SyncAll)
    }

    /// A read view of every keyspace at one point: later writes are not seen.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { snap: self.db.snapshot() }
    }
}

/// An ordered map of byte keys to byte values: one keyspace, or for the
/// state tree two (`control` holds the keys under `kv::CONTROL_PREFIXES`).
#[derive(Clone)]
pub struct Tree {
    db: fjall::Database,
    ks: fjall::Keyspace,
    control: Option<fjall::Keyspace>,
}

/// Whether `key` is a control record of the state tree.
fn is_control(key: &[u8]) -> bool {
    crate::kv::CONTROL_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether some control record's key can start with `prefix`.
fn control_may_hold(prefix: &[u8]) -> bool {
    crate::kv::CONTROL_PREFIXES.iter().any(|p| p.starts_with(prefix) || prefix.starts_with(p))
}

/// Writes to apply at once ([`Tree::apply_batch`]): all or none, seen by
/// readers all at once.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }

    /// Writes `value` under `key`, or removes `key` (None), without a copy.
    pub fn push(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.ops.push((key, value));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

type Item = Result<(Bytes, Bytes), StoreError>;

/// Ordered `(key, value)` pairs of one read, at the sequence number the
/// iterator was opened at: of one keyspace, or of two merged in key order
/// (their keys are disjoint).
pub struct Iter {
    a: Side,
    b: Option<Side>,
}

/// One keyspace's iterator, with the pair taken from each end but not yet
/// handed out.
struct Side {
    iter: fjall::Iter,
    front: Option<Item>,
    back: Option<Item>,
}

impl Side {
    fn new(iter: fjall::Iter) -> Self {
        Self { iter, front: None, back: None }
    }

    /// The next pair from the front, kept until taken. When the iterator
    /// is spent, what is left is the pair held at the back.
    fn peek_front(&mut self) -> Option<&Item> {
        if self.front.is_none() {
            self.front = self.iter.next().map(|g| g.into_inner()).or_else(|| self.back.take());
        }
        self.front.as_ref()
    }

    fn peek_back(&mut self) -> Option<&Item> {
        if self.back.is_none() {
            self.back = self.iter.next_back().map(|g| g.into_inner()).or_else(|| self.front.take());
        }
        self.back.as_ref()
    }
}

/// The key of a pair, or None for an error (which goes first).
fn key_of(item: &Item) -> Option<&[u8]> {
    item.as_ref().ok().map(|(k, _)| &**k)
}

/// Whether the pair peeked on the first side goes out before the one on
/// the second (None: both sides are spent): an error first, then the key
/// that `before` orders first.
fn first(x: Option<&Item>, y: Option<&Item>, before: fn(&[u8], &[u8]) -> bool) -> Option<bool> {
    Some(match (x, y) {
        (None, None) => return None,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some(x), Some(y)) => match (key_of(x), key_of(y)) {
            (None, _) => true,
            (_, None) => false,
            (Some(x), Some(y)) => before(x, y),
        },
    })
}

impl Iter {
    fn one(iter: fjall::Iter) -> Self {
        Self { a: Side::new(iter), b: None }
    }

    fn merged(a: fjall::Iter, b: fjall::Iter) -> Self {
        Self { a: Side::new(a), b: Some(Side::new(b)) }
    }

    /// The keys alone.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Bytes, StoreError>> {
        self.map(|kv| kv.map(|(k, _)| k))
    }
}

impl Iterator for Iter {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let Some(b) = self.b.as_mut() else {
            self.a.peek_front();
            return self.a.front.take();
        };
        let take_a = first(self.a.peek_front(), b.peek_front(), |x, y| x < y)?;
        if take_a {
            self.a.front.take()
        } else {
            b.front.take()
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Item> {
        let Some(b) = self.b.as_mut() else {
            self.a.peek_back();
            return self.a.back.take();
        };
        let take_a = first(self.a.peek_back(), b.peek_back(), |x, y| x > y)?;
        if take_a {
            self.a.back.take()
        } else {
            b.back.take()
        }
    }
}

impl Tree {
    /// The keyspace that holds `key`.
    fn part(&self, key: &[u8]) -> &fjall::Keyspace {
        match &self.control {
            Some(c) if is_control(key) => c,
            _ => &self.ks,
        }
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        self.part(key.as_ref()).get(key)
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        self.part(key.as_ref()).contains_key(key)
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.part(key.as_ref()).insert(key.as_ref(), value.as_ref())
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.part(key.as_ref()).remove(key.as_ref())
    }

    pub fn iter(&self) -> Iter {
        match &self.control {
            Some(c) => Iter::merged(self.ks.iter(), c.iter()),
            None => Iter::one(self.ks.iter()),
        }
    }

    /// The pairs whose key starts with `prefix`, from the keyspaces that
    /// can hold such keys.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        match &self.control {
            Some(c) if is_control(prefix) => Iter::one(c.prefix(prefix)),
            Some(c) if control_may_hold(prefix) => Iter::merged(self.ks.prefix(prefix), c.prefix(prefix)),
            _ => Iter::one(self.ks.prefix(prefix)),
        }
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K> + Clone>(&self, range: R) -> Iter {
        match &self.control {
            Some(c) => Iter::merged(self.ks.range(range.clone()), c.range(range)),
            None => Iter::one(self.ks.range(range)),
        }
    }

    /// The last pair in key order.
    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>, StoreError> {
        self.iter().next_back().transpose()
    }

    /// Applies `batch` atomically: every write or none.
    pub fn apply_batch(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = self.db.batch();
        for (k, v) in batch.ops {
            let ks = self.part(&k);
            match v {
                Some(v) => b.insert(ks, k, v),
                None => b.remove(ks, k),
            }
        }
        b.commit()
    }

    /// Removes every key.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.ks.clear()?;
        match &self.control {
            Some(c) => c.clear(),
            None => Ok(()),
        }
    }

    /// Makes every write so far durable (the database's one journal).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.persist(fjall::PersistMode::SyncAll)
    }

    /// Reads of this tree as of `snapshot`.
    pub fn at<'a>(&'a self, snapshot: &'a Snapshot) -> TreeAt<'a> {
        TreeAt { tree: self, snapshot }
    }
}

/// A read view of the whole database at one sequence number.
pub struct Snapshot {
    snap: fjall::Snapshot,
}

/// One tree as a [`Snapshot`] saw it.
pub struct TreeAt<'a> {
    tree: &'a Tree,
    snapshot: &'a Snapshot,
}

impl TreeAt<'_> {
    pub fn iter(&self) -> Iter {
        use fjall::Readable;
        let snap = &self.snapshot.snap;
        match &self.tree.control {
            Some(c) => Iter::merged(snap.iter(&self.tree.ks), snap.iter(c)),
            None => Iter::one(snap.iter(&self.tree.ks)),
        }
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> MetaError + '_ {
    move |source| MetaError::Io { path: path.display().to_string(), source }
}

fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// Copies every tree of the sled store at `from` into a new database at
/// `to`: first into `to` + `.part` (removed and redone if a crash
/// interrupted an earlier attempt), flushed, then renamed into place, so
/// `to` exists only once complete. Keys and values are copied as they are:
/// the layout of each tree does not depend on the engine.
fn migrate_from_sled(from: &Path, to: &Path, cache_bytes: u64) -> Result<(), MetaError> {
    let part = PathBuf::from(format!("{}.part", to.display()));
    if part.exists() {
        std::fs::remove_dir_all(&part).map_err(io_at(&part))?;
    }
    let old = sled::Config::new()
        .path(from)
        .cache_capacity(cache_bytes)
        .open()
        .map_err(|e| MetaError::Migration { path: from.display().to_string(), reason: e.to_string() })?;
    let fail = |e: sled::Error| MetaError::Migration { path: from.display().to_string(), reason: e.to_string() };
    {
        let new = Db::open_path(&part, cache_bytes)?;
        for name in KEYSPACES {
            let src = old.open_tree(name).map_err(fail)?;
            let dst = new.tree(name)?;
            let mut batch = Batch::default();
            let mut copied = 0u64;
            for item in src.iter() {
                let (k, v) = item.map_err(fail)?;
                batch.insert(k, v);
                copied += 1;
                if batch.len() == MIGRATE_BATCH {
                    dst.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            dst.apply_batch(batch)?;
            tracing::info!(tree = name, keys = copied, "copied from sled");
        }
        new.flush()?;
    }
    std::fs::rename(&part, to).map_err(io_at(to))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_seen_whole_and_a_snapshot_keeps_its_point() {
        let db = Db::temporary();
        let t = db.tree("sm").unwrap();
        t.insert(b"a/1", b"x").unwrap();
        let snap = db.snapshot();
        let mut b = Batch::default();
        b.insert(b"a/2", b"y");
        b.remove(b"a/1");
        t.apply_batch(b).unwrap();
        let live: Vec<_> = t.scan_prefix(b"a/").map(|kv| kv.unwrap().0.to_vec()).collect();
        assert_eq!(live, vec![b"a/2".to_vec()]);
        let then: Vec<_> = t.at(&snap).iter().map(|kv| kv.unwrap().0.to_vec()).collect();
        assert_eq!(then, vec![b"a/1".to_vec()]);
        assert_eq!(t.last().unwrap().map(|(k, _)| k.to_vec()), Some(b"a/2".to_vec()));
        t.clear().unwrap();
        assert!(t.iter().next().is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The state tree reads as one ordered map though its keys live in
        /// two keyspaces: every scan, range and walk from both ends (mixed)
        /// equals the same read of a `BTreeMap` given the same writes.
        #[test]
        fn the_state_tree_reads_as_one_ordered_map(
            writes in proptest::collection::vec((0usize..8, 0u8..6, proptest::option::of(0u8..4)), 1..80),
            ends in proptest::collection::vec(proptest::bool::ANY, 0..40),
        ) {
            const PREFIXES: [&[u8]; 8] = [b"c/", b"ix/h/", b"ix/n/", b"ix/count/", b"m/", b"n/", b"p/", b"i/"];
            let db = Db::temporary();
            let t = db.state_tree().unwrap();
            let mut model = std::collections::BTreeMap::new();
            let mut batch = Batch::default();
            for (p, k, v) in writes {
                let key = [PREFIXES[p], &[k]].concat();
                match v {
                    Some(v) => {
                        batch.insert(&key, [v]);
                        model.insert(key, vec![v]);
                    }
                    None => {
                        batch.remove(&key);
                        model.remove(&key);
                    }
                }
            }
            t.apply_batch(batch).unwrap();
            let pairs = |it: Iter| it.map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect::<Vec<_>>();
            let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            proptest::prop_assert_eq!(pairs(t.iter()), all.clone());
            let mut rev = all.clone();
            rev.reverse();
            proptest::prop_assert_eq!(pairs(t.iter()).into_iter().rev().collect::<Vec<_>>(), rev.clone());
            proptest::prop_assert_eq!(t.iter().rev().map(|kv| kv.unwrap().0.to_vec()).collect::<Vec<_>>(),
                rev.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
            for prefix in [&b""[..], b"i", b"ix/", b"ix/h/", b"ix/n/", b"c/", b"m/", b"n/", b"q"] {
                let want: Vec<_> = all.iter().filter(|(k, _)| k.starts_with(prefix)).cloned().collect();
                proptest::prop_assert_eq!(pairs(t.scan_prefix(prefix)), want);
            }
            let want: Vec<_> = all.iter().filter(|(k, _)| k[..] >= b"i"[..] && k[..] < b"n/"[..]).cloned().collect();
            proptest::prop_assert_eq!(pairs(t.range(b"i".to_vec()..b"n/".to_vec())), want);
            // Both ends at once, in a drawn order.
            let (mut it, mut lo, mut hi) = (t.iter(), 0usize, all.len());
            for front in ends {
                let got = if front { it.next() } else { it.next_back() };
                let want = if lo == hi { None } else if front { lo += 1; Some(&all[lo - 1]) } else { hi -= 1; Some(&all[hi]) };
                proptest::prop_assert_eq!(got.map(|kv| { let (k, v) = kv.unwrap(); (k.to_vec(), v.to_vec()) }), want.cloned());
            }
            proptest::prop_assert_eq!(t.last().unwrap().map(|(k, _)| k.to_vec()), all.last().map(|(k, _)| k.clone()));
            for (k, v) in &all {
                proptest::prop_assert_eq!(t.get(k).unwrap().map(|v| v.to_vec()), Some(v.clone()));
            }
        }
    }

    #[test]
    fn control_records_live_in_their_own_keyspace() {
        let db = Db::temporary();
        let t = db.state_tree().unwrap();
        t.insert(b"n/1", b"node").unwrap();
        t.insert(b"c/1", b"chunk").unwrap();
        let control = db.db.keyspace(STATE_CONTROL, fjall::KeyspaceCreateOptions::default).unwrap();
        let catalog = db.db.keyspace(STATE, fjall::KeyspaceCreateOptions::default).unwrap();
        assert!(control.contains_key(b"n/1").unwrap() && !catalog.contains_key(b"n/1").unwrap());
        assert!(catalog.contains_key(b"c/1").unwrap() && !control.contains_key(b"c/1").unwrap());
    }

    #[test]
    fn a_sled_store_is_migrated_once_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = sled::Config::new().path(dir.path().join(SLED_DIR)).open().unwrap();
            for name in KEYSPACES {
                let t = old.open_tree(name).unwrap();
                for i in 0u64..25_000 {
                    t.insert([name.as_bytes(), &i.to_be_bytes()].concat(), i.to_le_bytes().to_vec()).unwrap();
                }
            }
            old.flush().unwrap();
        }
        // An earlier attempt that a crash interrupted leaves a part behind.
        std::fs::create_dir_all(dir.path().join(format!("{DIR}.part")).join("junk")).unwrap();
        let db = Db::open(dir.path(), 8 << 20).unwrap();
        for name in KEYSPACES {
            let t = db.tree(name).unwrap();
            assert_eq!(t.iter().count(), 25_000, "{name}");
            let k = [name.as_bytes(), &24_999u64.to_be_bytes()].concat();
            assert_eq!(t.get(&k).unwrap().unwrap().to_vec(), 24_999u64.to_le_bytes().to_vec());
        }
        drop(db);
        assert!(!dir.path().join(SLED_DIR).exists());
        assert!(dir.path().join(SLED_MIGRATED_DIR).exists());
        assert!(!dir.path().join(format!("{DIR}.part")).exists());
        // Opened again: no second migration, the data is there.
        let db = Db::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(db.tree("sm").unwrap().iter().count(), 25_000);
    }
}
