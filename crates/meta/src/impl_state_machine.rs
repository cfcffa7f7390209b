//! openraft's `RaftStateMachine` on the node's store, and its snapshots.
//!
//! The state lives in the store's state tree (layout in `kv`; two
//! keyspaces, see `store`). One `apply` call
//! writes all its entries and the new `last_applied` in one atomic batch, so
//! a crash never leaves the state between two entries. The batch is not
//! flushed: the log is flushed before anything is applied, and openraft
//! re-applies committed entries past `last_applied` after a restart.
//!
//! A snapshot is every key of the tree as it was at one `last_applied`,
//! taken without stopping writes: the builder opens a *cut* (a read view of
//! the store taken while apply is briefly excluded, so it falls between two
//! apply batches) and reads it while apply goes on. Cuts are independent:
//! builds and catalog digests may read several at once.
//!
//! Snapshots are files (`snapshot_file` is the format) in the snapshot
//! directory beside the database, and openraft's `SnapshotData` is the open
//! file: a build streams records into a file, a transfer reads and writes
//! the file in chunks, an install verifies the received file and then lays
//! it over the tree in batches, and openraft's reading of the current
//! snapshot at start opens the file without reading it. Memory stays
//! bounded by one batch, whatever the size of the catalog. An install is
//! not one atomic batch (it could not be, in bounded memory): a marker in the `snapshots`
//! tree names the snapshot being laid over the tree, and `open` finishes an
//! install that a crash interrupted before anything reads the state.

// openraft's storage traits return its own `StorageError`, which is large;
// the helpers here return it too rather than convert twice.
#![allow(clippy::result_large_err)]

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::apply::apply;
use crate::codec;
use crate::command::CommandResult;
use crate::index;
use crate::kv::{self, Txn, KEY_APPLIED, KEY_MEMBERSHIP, KEY_SCHEMA, SCHEMA_VERSION};
use crate::snapshot_file;
use crate::store::{self, Batch, Db, Tree};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::MetaError;

/// The current snapshot: its meta and its file in the snapshot directory.
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current-file";
/// Format 1 kept the whole snapshot in this record; `open` converts it.
const KEY_LEGACY_SNAPSHOT: &[u8] = b"current";
/// Present while a snapshot is being laid over the tree (see the top).
const KEY_INSTALLING: &[u8] = b"installing";
/// Records per batch when a snapshot is laid over the tree: a batch is
/// held whole in memory until it commits.
const INSTALL_BATCH: usize = 10_000;

/// Format 1 of a snapshot body, read only to convert an old store.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotBody {
    format: u32,
    schema: u32,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Format 1 of the stored snapshot, read only to convert an old store.
#[derive(Serialize, Deserialize)]
struct LegacyStoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// A snapshot at rest: its meta and the name of its file.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    file: String,
}

struct Inner {
    db: Db,
    tree: Tree,
    snapshots: Tree,
    /// Where snapshot files live (built, received, current).
    dir: PathBuf,
    /// Apply holds it while it writes; a snapshot builder takes it to open a cut.
    cut: RwLock<()>,
    /// Snapshots installed since the node started: a build whose cut an
    /// install overtook must not become the current snapshot (it would
    /// replace the installed, newer one).
    installs: AtomicU64,
    /// The file openraft is writing a received snapshot into, by inode, so
    /// that the install keeps that file instead of copying it.
    receiving: Mutex<Option<(u64, PathBuf)>>,
    file_seq: AtomicU64,
}

/// The state machine; cheap to clone, shared with the catalog for reads.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())).into()
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::error(e.to_string())).into()
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

fn inode(file: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| m.ino())
}

impl StateMachineStore {
    /// Opens the state machine in `db`, with its snapshot files in
    /// `snapshot_dir`; finishes an interrupted install and converts a
    /// snapshot of format 1 first.
    pub fn open(db: &Db, snapshot_dir: &Path) -> Result<Self, MetaError> {
        let io = |source| MetaError::Io { path: snapshot_dir.display().to_string(), source };
        std::fs::create_dir_all(snapshot_dir).map_err(io)?;
        let tree = db.state_tree()?;
        let store = Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                tree,
                snapshots: db.tree("snapshots")?,
                dir: snapshot_dir.to_path_buf(),
                cut: RwLock::new(()),
                installs: AtomicU64::new(0),
                receiving: Mutex::new(None),
                file_seq: AtomicU64::new(0),
            }),
        };
        let fail = |e: String| MetaError::Raft(format!("snapshot store: {e}"));
        store.inner.convert_legacy().map_err(fail)?;
        if let Some(bytes) = store.inner.snapshots.get(KEY_INSTALLING)? {
            let stored: StoredSnapshot = kv::decode("installing snapshot", &bytes)?;
            tracing::warn!(snapshot = %stored.meta.snapshot_id, "finishing a snapshot install that was interrupted");
            store.inner.lay_over(&stored).map_err(fail)?;
        }
        store.inner.remove_stale_files().map_err(fail)?;
        let tree = &store.inner.tree;
        match kv::get::<u32>(tree, "schema", KEY_SCHEMA)? {
            None => {
                tree.insert(KEY_SCHEMA, kv::encode(&SCHEMA_VERSION)?)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(found @ (1..=5)) => {
                // Schema 1 had no secondary indexes, schema 2 not the one of
                // snapshots by source, schema 3 not the count of former
                // copies, schema 4 not the holders, schema 5 not the counts
                // of the work lists: build them all once,
                // then mark the store (a crash in between builds them again
                // from scratch).
                tracing::info!("upgrading the state machine from schema {found}: building its indexes");
                index::rebuild(tree)?;
                tree.insert(KEY_SCHEMA, kv::encode(&SCHEMA_VERSION)?)?;
                db.flush()?;
            }
            Some(found) => return Err(MetaError::UnsupportedSchema { found, known: SCHEMA_VERSION }),
        }
        Ok(store)
    }

    /// The state tree, for reads. Readers see whole apply batches only.
    pub fn tree(&self) -> &Tree {
        &self.inner.tree
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let read = |e: MetaError| sm_err(ErrorVerb::Read, e);
        let applied: Option<LogId> = kv::get(&self.inner.tree, "last applied", KEY_APPLIED).map_err(read)?.flatten();
        let membership: StoredMembership =
            kv::get(&self.inner.tree, "membership", KEY_MEMBERSHIP).map_err(read)?.unwrap_or_default();
        Ok((applied, membership))
    }

    /// Reads the state as of one applied index, record by record, without
    /// holding apply back for longer than it takes to open the cut; `each`
    /// gets the cut, a read view of the store. Runs the read on a blocking
    /// thread. Also returns the count of installs at the cut.
    async fn with_cut<T: Send + 'static>(
        &self,
        each: impl FnOnce(&Inner, &store::Snapshot) -> Result<T, String> + Send + 'static,
    ) -> Result<(Option<LogId>, StoredMembership, u64, T), StorageError> {
        let (applied, membership, installs, cut) = {
            let _cut = self.inner.cut.write().await;
            let (applied, membership) = self.read_applied()?;
            (applied, membership, self.inner.installs.load(Ordering::SeqCst), self.inner.db.snapshot())
        };
        let inner = self.inner.clone();
        let out = tokio::task::spawn_blocking(move || each(&inner, &cut))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        if self.inner.installs.load(Ordering::SeqCst) != installs {
            return Err(snap_err(ErrorVerb::Read, "a snapshot was installed while one was being built"));
        }
        Ok((applied, membership, installs, out))
    }

    /// `(applied index, records, BLAKE3 of the records)`: equal on replicas
    /// that applied the same log. Raft bookkeeping keys are left out.
    pub async fn digest(&self) -> Result<(u64, u64, [u8; 32]), StorageError> {
        let (applied, _, _, (n, hash)) = self
            .with_cut(|inner, cut| {
                let mut h = blake3::Hasher::new();
                let mut n = 0u64;
                inner.read_cut(cut, |k, v| {
                    if k != KEY_APPLIED && k != KEY_MEMBERSHIP {
                        h.update(&(k.len() as u64).to_le_bytes());
                        h.update(k);
                        h.update(&(v.len() as u64).to_le_bytes());
                        h.update(v);
                        n += 1;
                    }
                    Ok(())
                })?;
                Ok((n, *h.finalize().as_bytes()))
            })
            .await?;
        Ok((applied.map(|l| l.index).unwrap_or(0), n, hash))
    }

    async fn build(&self) -> Result<Snapshot, StorageError> {
        let name = self.inner.file_name("snapshot", "snap");
        let part = self.inner.dir.join(format!("{name}.part"));
        let path = self.inner.dir.join(&name);
        let (applied, membership, installs, ()) = {
            let (part_in, path_in) = (part.clone(), path.clone());
            let built = self
                .with_cut(move |inner, cut| {
                    let (part, path) = (part_in, path_in);
                    let file = std::fs::File::create(&part).map_err(io_at(&part))?;
                    let mut w = snapshot_file::Writer::new(BufWriter::with_capacity(1 << 20, file), SCHEMA_VERSION)
                        .map_err(io_at(&part))?;
                    inner.read_cut(cut, |k, v| w.push(k, v).map_err(io_at(&part)))?;
                    let (out, _) = w.finish().map_err(io_at(&part))?;
                    let file = out.into_inner().map_err(|e| io_at(&part)(e.into_error()))?;
                    file.sync_all().map_err(io_at(&part))?;
                    std::fs::rename(&part, &path).map_err(io_at(&path))?;
                    sync_dir(&inner.dir)
                })
                .await;
            if built.is_err() {
                // Nothing refers to a failed build's file.
                let _ = std::fs::remove_file(&part);
            }
            built?
        };
        let seq = self.inner.file_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), file: name };
        // Opened first: a build that finishes next replaces this one as the
        // current snapshot and removes its file.
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, io_at(&path)(e)))?;
        {
            // An install that overtook the cut made a newer snapshot current.
            let _cut = self.inner.cut.write().await;
            if self.inner.installs.load(Ordering::SeqCst) != installs {
                let _ = std::fs::remove_file(&path);
                return Err(snap_err(ErrorVerb::Write, "a snapshot was installed while one was being built"));
            }
            // Builds may overlap (openraft starts one at a time, but nothing
            // here relies on it): the newest cut stays current, whichever
            // build finishes last.
            let current = self.inner.current().map_err(|e| snap_err(ErrorVerb::Read, e))?;
            if current.is_some_and(|c| c.meta.last_log_id > stored.meta.last_log_id) {
                let _ = std::fs::remove_file(&path);
            } else {
                self.inner.save_current(&stored).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            }
        }
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl Inner {
    fn file_name(&self, kind: &str, ext: &str) -> String {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{kind}-{nanos}-{}.{ext}", self.file_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Calls `emit` on every key of the tree in order with its value at
    /// `cut`.
    fn read_cut(
        &self,
        cut: &store::Snapshot,
        mut emit: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        for item in self.tree.at(cut).iter() {
            let (k, v) = item.map_err(|e| e.to_string())?;
            emit(&k, &v)?;
        }
        Ok(())
    }

    /// Records `stored` as the current snapshot (durably) and removes the
    /// file of the one it replaces. A transfer still reading that file keeps
    /// its open descriptor.
    fn save_current(&self, stored: &StoredSnapshot) -> Result<(), String> {
        let previous = self.current().ok().flatten();
        let bytes = codec::encode(stored)?;
        self.snapshots.insert(KEY_CURRENT_SNAPSHOT, bytes).map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        if let Some(previous) = previous.filter(|p| p.file != stored.file) {
            let _ = std::fs::remove_file(self.dir.join(previous.file));
        }
        Ok(())
    }

    fn current(&self) -> Result<Option<StoredSnapshot>, String> {
        match self.snapshots.get(KEY_CURRENT_SNAPSHOT).map_err(|e| e.to_string())? {
            Some(bytes) => Ok(Some(codec::decode("stored snapshot", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Installs the received snapshot `file`: keeps it (as the file openraft
    /// wrote into, or a copy), verifies it whole, then lays it over the tree.
    fn install(&self, meta: &SnapshotMeta, mut file: std::fs::File) -> Result<(), String> {
        let received = self.receiving.lock().unwrap_or_else(|p| p.into_inner()).take();
        let name = self.file_name("snapshot", "snap");
        let path = self.dir.join(&name);
        let ours = received.as_ref().is_some_and(|(ino, _)| inode(&file) == Some(*ino));
        match received.clone().filter(|_| ours) {
            Some((_, part)) => {
                file.sync_all().map_err(io_at(&part))?;
                std::fs::rename(&part, &path).map_err(io_at(&path))?;
            }
            None => {
                // Not the file we handed out (openraft's storage suite hands
                // over another store's snapshot): keep a copy of it.
                if let Some((_, part)) = received {
                    let _ = std::fs::remove_file(part);
                }
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(0)).map_err(|e| e.to_string())?;
                let part = self.dir.join(format!("{name}.part"));
                let mut out = std::fs::File::create(&part).map_err(io_at(&part))?;
                std::io::copy(&mut file, &mut out).map_err(io_at(&part))?;
                out.sync_all().map_err(io_at(&part))?;
                std::fs::rename(&part, &path).map_err(io_at(&path))?;
            }
        }
        sync_dir(&self.dir)?;
        let checked = std::fs::File::open(&path)
            .map_err(io_at(&path))
            .and_then(|f| snapshot_file::verify(BufReader::with_capacity(1 << 20, f)).map_err(io_at(&path)));
        match checked {
            Ok((1..=SCHEMA_VERSION, _)) => {}
            Ok((schema, _)) => {
                let _ = std::fs::remove_file(&path);
                return Err(format!("snapshot schema {schema} is not supported (this node keeps {SCHEMA_VERSION})"));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
        let stored = StoredSnapshot { meta: meta.clone(), file: name };
        self.snapshots.insert(KEY_INSTALLING, codec::encode(&stored)?).map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        self.save_current(&stored)?;
        self.lay_over(&stored)
    }

    /// Replaces the tree with the records of a verified snapshot file, in
    /// batches, then its meta's `last_applied` and membership, and clears
    /// the install marker. Idempotent, so `open` can run it again.
    fn lay_over(&self, stored: &StoredSnapshot) -> Result<(), String> {
        let path = self.dir.join(&stored.file);
        let file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut reader = snapshot_file::Reader::new(BufReader::with_capacity(1 << 20, file)).map_err(io_at(&path))?;
        self.tree.clear().map_err(|e| e.to_string())?;
        let mut batch = Batch::default();
        let mut n = 0;
        while let Some((k, v)) = reader.next_record().map_err(io_at(&path))? {
            batch.insert(k, v);
            n += 1;
            if n == INSTALL_BATCH {
                self.tree.apply_batch(std::mem::take(&mut batch)).map_err(|e| e.to_string())?;
                n = 0;
            }
        }
        // The snapshot's own bookkeeping must agree with the meta openraft
        // hands us; write the meta's values to be certain.
        batch.insert(KEY_APPLIED, codec::encode(&stored.meta.last_log_id)?);
        batch.insert(KEY_MEMBERSHIP, codec::encode(&stored.meta.last_membership)?);
        self.tree.apply_batch(batch).map_err(|e| e.to_string())?;
        if reader.schema < SCHEMA_VERSION {
            // A snapshot of an older schema (from a leader of a previous
            // version) lacks indexes: build them as an upgrade would.
            index::rebuild(&self.tree).map_err(|e| e.to_string())?;
            self.tree.insert(KEY_SCHEMA, codec::encode(&SCHEMA_VERSION)?).map_err(|e| e.to_string())?;
        }
        self.snapshots.remove(KEY_INSTALLING).map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A store written by format 1 kept its current snapshot inside one
    /// record; write it out as a file of the current format, once.
    fn convert_legacy(&self) -> Result<(), String> {
        let Some(bytes) = self.snapshots.get(KEY_LEGACY_SNAPSHOT).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let legacy: LegacyStoredSnapshot = codec::decode("stored snapshot (format 1)", &bytes)?;
        let body: SnapshotBody = codec::decode("snapshot (format 1)", &legacy.data)?;
        if body.format != 1 || !(1..=SCHEMA_VERSION).contains(&body.schema) {
            return Err(format!("snapshot format {} schema {} is not supported", body.format, body.schema));
        }
        let name = self.file_name("snapshot", "snap");
        let path = self.dir.join(&name);
        let file = std::fs::File::create(&path).map_err(io_at(&path))?;
        let mut w = snapshot_file::Writer::new(BufWriter::new(file), body.schema).map_err(io_at(&path))?;
        for (k, v) in &body.pairs {
            w.push(k, v).map_err(io_at(&path))?;
        }
        let (out, _) = w.finish().map_err(io_at(&path))?;
        out.into_inner().map_err(|e| io_at(&path)(e.into_error()))?.sync_all().map_err(io_at(&path))?;
        sync_dir(&self.dir)?;
        self.save_current(&StoredSnapshot { meta: legacy.meta, file: name })?;
        self.snapshots.remove(KEY_LEGACY_SNAPSHOT).map_err(|e| e.to_string())?;
        self.db.flush().map_err(|e| e.to_string())?;
        tracing::info!("converted the current snapshot to snapshot format {}", snapshot_file::FORMAT);
        Ok(())
    }

    /// Files of builds and receptions a restart interrupted, and snapshots
    /// that are no longer current.
    fn remove_stale_files(&self) -> Result<(), String> {
        let current = self.current()?.map(|c| c.file);
        let entries = std::fs::read_dir(&self.dir).map_err(io_at(&self.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("snapshot-") && Some(&name) != current.as_ref() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.build().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let _cut = self.inner.cut.write().await;
        let write = |e: MetaError| sm_err(ErrorVerb::Write, e);
        let mut txn = Txn::new(&self.inner.tree);
        let mut results = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Ok,
                EntryPayload::Normal(cmd) => {
                    let name = cmd.name();
                    let r = apply(&mut txn, cmd).map_err(write)?;
                    if let CommandResult::Rejected(why) = &r {
                        tracing::debug!(command = name, %why, "command rejected");
                    }
                    r
                }
                EntryPayload::Membership(m) => {
                    txn.put(KEY_MEMBERSHIP.to_vec(), &StoredMembership::new(Some(entry.log_id), m)).map_err(write)?;
                    CommandResult::Ok
                }
            };
            results.push(result);
        }
        if let Some(last) = last {
            txn.put(KEY_APPLIED.to_vec(), &Some(last)).map_err(write)?;
        }
        txn.commit().map_err(write)?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let part = self.inner.dir.join(format!("{}.part", self.inner.file_name("snapshot", "snap")));
        let fail = |e: std::io::Error| snap_err(ErrorVerb::Write, io_at(&part)(e));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&part).map_err(fail)?;
        let previous = self
            .inner
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((inode(&file).unwrap_or(u64::MAX), part.clone()));
        if let Some((_, previous)) = previous {
            // A reception openraft gave up on (a newer snapshot replaced it).
            let _ = std::fs::remove_file(previous);
        }
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let _cut = self.inner.cut.write().await;
        self.inner.installs.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || inner.install(&meta, file))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(stored) = self.inner.current().map_err(|e| snap_err(ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        let path = self.inner.dir.join(&stored.file);
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, io_at(&path)(e)))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(file) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use coffer_types::{NodeId, NodeRecord, SiteId};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(i: u64) -> Entry {
        let node = NodeRecord {
            id: NodeId(i % 500 + 1),
            site: SiteId::new("site-a").unwrap(),
            addr: format!("127.0.0.1:{i}"),
            capacity_bytes: i,
            used_bytes: i,
            last_heartbeat_ms: i,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Command::RegisterNode { node }),
        }
    }

    fn store() -> (tempfile::TempDir, StateMachineStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_path(&dir.path().join("db"), 16 << 20).unwrap();
        let sm = StateMachineStore::open(&db, &dir.path().join("snapshots")).unwrap();
        (dir, sm)
    }

    /// A node record per id, so that the tree holds many keys.
    fn distinct(i: u64, id: u64) -> Entry {
        let mut e = entry(i);
        if let EntryPayload::Normal(Command::RegisterNode { node }) = &mut e.payload {
            node.id = NodeId(id);
        }
        e
    }

    /// Snapshot builds and catalog digests at the same time, while apply
    /// runs: every one succeeds, and every snapshot is a consistent cut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cuts_each_see_a_consistent_state() {
        const KEYS: u64 = 20_000;
        let (_d1, mut sm) = store();
        for chunk in (1..=KEYS).collect::<Vec<_>>().chunks(500) {
            sm.apply(chunk.iter().map(|&i| distinct(i, i))).await.unwrap();
        }
        let writer = {
            let mut sm = sm.clone();
            tokio::spawn(async move {
                for i in KEYS + 1..=KEYS + 3000 {
                    sm.apply([distinct(i, i % KEYS + 1)]).await.unwrap();
                }
            })
        };
        let mut cuts = Vec::new();
        for _ in 0..3 {
            let digests: Vec<_> = (0..3)
                .map(|_| {
                    let sm = sm.clone();
                    tokio::spawn(async move { sm.digest().await })
                })
                .collect();
            let builds: Vec<_> = (0..2)
                .map(|_| {
                    let sm = sm.clone();
                    tokio::spawn(async move { sm.build().await })
                })
                .collect();
            for d in digests {
                d.await.unwrap().expect("a digest failed while another cut was open");
            }
            for b in builds {
                cuts.push(b.await.unwrap().expect("a snapshot build failed while another cut was open"));
            }
        }
        writer.await.unwrap();
        for snap in cuts.into_iter().step_by(3) {
            let cut = snap.meta.last_log_id.unwrap().index;
            let (_d2, mut installed) = store();
            installed.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            let (_d3, mut replica) = store();
            let upto: Vec<u64> = (1..=cut).collect();
            for chunk in upto.chunks(500) {
                replica
                    .apply(chunk.iter().map(|&i| if i <= KEYS { distinct(i, i) } else { distinct(i, i % KEYS + 1) }))
                    .await
                    .unwrap();
            }
            assert_eq!(installed.digest().await.unwrap(), replica.digest().await.unwrap(), "snapshot at {cut}");
        }
    }

    /// A snapshot built while apply keeps writing equals, key for key, the
    /// state of a replica that applied exactly up to the snapshot's index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_are_consistent_cuts_while_apply_runs() {
        let (_d1, mut sm) = store();
        for i in 1..=2000 {
            sm.apply([entry(i)]).await.unwrap();
        }
        let writer = {
            let mut sm = sm.clone();
            tokio::spawn(async move {
                for i in 2001..=6000 {
                    sm.apply([entry(i)]).await.unwrap();
                }
            })
        };
        let snap = sm.build().await.unwrap();
        writer.await.unwrap();
        let cut = snap.meta.last_log_id.unwrap().index;
        assert!(cut >= 2000);

        let (_d2, mut installed) = store();
        installed.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        let (_d3, mut replica) = store();
        for i in 1..=cut {
            replica.apply([entry(i)]).await.unwrap();
        }
        assert_eq!(installed.digest().await.unwrap(), replica.digest().await.unwrap());
    }

    /// Sends `snap` to `follower` as openraft's chunked transport does, in
    /// chunks of `chunk` bytes through openraft's own receiver, sending the
    /// second chunk twice (a retry), and stopping after `upto` bytes.
    async fn transfer(
        snap: &mut Snapshot,
        follower: &mut StateMachineStore,
        chunk: usize,
        upto: Option<u64>,
    ) -> Box<tokio::fs::File> {
        use openraft::network::snapshot_transport::Streaming;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let data = follower.begin_receiving_snapshot().await.unwrap();
        let mut streaming: Streaming<TypeConfig> = Streaming::new(snap.meta.snapshot_id.clone(), data);
        let end = snap.snapshot.seek(std::io::SeekFrom::End(0)).await.unwrap();
        let stop = upto.unwrap_or(end).min(end);
        let vote = openraft::Vote::new_committed(1, 1);
        let mut offsets = vec![];
        let mut o = 0;
        while o < stop {
            offsets.push(o);
            if offsets.len() == 2 {
                offsets.push(o);
            }
            o += chunk as u64;
        }
        for offset in offsets {
            snap.snapshot.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
            let len = (chunk as u64).min(stop - offset) as usize;
            let mut data = vec![0u8; len];
            snap.snapshot.read_exact(&mut data).await.unwrap();
            let done = offset + len as u64 == end;
            let req = openraft::raft::InstallSnapshotRequest { vote, meta: snap.meta.clone(), offset, data, done };
            streaming.receive(req).await.unwrap();
        }
        streaming.into_snapshot_data()
    }

    /// A snapshot many transfer chunks long reaches a follower chunk by
    /// chunk (with a retried chunk) and installs there: the follower's
    /// catalog digest equals the leader's, and a restart of the follower
    /// finds the same state and the same current snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_of_many_chunks_is_sent_and_installed_streamed() {
        let (_d1, mut leader) = store();
        for chunk in (1..=5000u64).collect::<Vec<_>>().chunks(500) {
            leader.apply(chunk.iter().map(|&i| distinct(i, i))).await.unwrap();
        }
        let mut snap = leader.build().await.unwrap();
        let (d2, mut follower) = store();
        let data = transfer(&mut snap, &mut follower, 16 << 10, None).await;
        follower.install_snapshot(&snap.meta, data).await.unwrap();
        let want = leader.digest().await.unwrap();
        assert_eq!(follower.digest().await.unwrap(), want);
        let current = follower.get_current_snapshot().await.unwrap().expect("a current snapshot");
        assert_eq!(current.meta, snap.meta);
        let bytes =
            std::fs::read(std::fs::read_dir(d2.path().join("snapshots")).unwrap().next().unwrap().unwrap().path())
                .unwrap();
        assert!(bytes.len() > 10 * (16 << 10), "the snapshot spans many chunks ({} bytes)", bytes.len());
        drop(current);
        drop(follower);
        let db = Db::open_path(&d2.path().join("db"), 16 << 20).unwrap();
        let mut reopened = StateMachineStore::open(&db, &d2.path().join("snapshots")).unwrap();
        assert_eq!(reopened.digest().await.unwrap(), want);
        assert_eq!(reopened.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
    }

    /// A node whose store an earlier version kept in sled starts with the
    /// same catalog, current snapshot and vote: the store written here is
    /// copied key for key into a sled directory laid out as that version
    /// did, and `open_stores` migrates it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_kept_in_sled_is_migrated_with_its_catalog_snapshot_and_vote() {
        use openraft::storage::RaftLogStorage;
        let d1 = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = crate::node::open_stores(d1.path()).unwrap();
        for chunk in (1..=3000u64).collect::<Vec<_>>().chunks(500) {
            sm.apply(chunk.iter().map(|&i| distinct(i, i))).await.unwrap();
        }
        let snap = sm.build().await.unwrap();
        sm.apply([distinct(3001, 7)]).await.unwrap();
        let vote = openraft::Vote::new_committed(3, 2);
        log.save_vote(&vote).await.unwrap();
        let want = sm.digest().await.unwrap();
        drop((log, sm, snap.snapshot));

        let d2 = tempfile::tempdir().unwrap();
        {
            let db = Db::open_path(&d1.path().join(store::DIR), 16 << 20).unwrap();
            let old = sled::Config::new().path(d2.path().join(store::SLED_DIR)).open().unwrap();
            for name in store::KEYSPACES {
                let (from, to) = (db.tree(name).unwrap(), old.open_tree(name).unwrap());
                for kv in from.iter() {
                    let (k, v) = kv.unwrap();
                    to.insert(&k[..], &v[..]).unwrap();
                }
            }
            old.flush().unwrap();
        }
        std::fs::create_dir_all(d2.path().join("snapshots")).unwrap();
        for f in std::fs::read_dir(d1.path().join("snapshots")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), d2.path().join("snapshots").join(f.file_name())).unwrap();
        }

        let (mut log, mut sm) = crate::node::open_stores(d2.path()).unwrap();
        assert!(d2.path().join(store::SLED_MIGRATED_DIR).exists());
        assert_eq!(sm.digest().await.unwrap(), want);
        assert_eq!(sm.get_current_snapshot().await.unwrap().expect("the current snapshot").meta, snap.meta);
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(sm.applied_state().await.unwrap().0.map(|l| l.index), Some(3001));
    }

    /// A transfer cut short is refused at install (the trailer does not
    /// match), and the follower keeps the state it had.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_snapshot_is_refused_and_changes_nothing() {
        let (_d1, mut leader) = store();
        for chunk in (1..=2000u64).collect::<Vec<_>>().chunks(500) {
            leader.apply(chunk.iter().map(|&i| distinct(i, i))).await.unwrap();
        }
        let mut snap = leader.build().await.unwrap();
        let (_d2, mut follower) = store();
        follower.apply([distinct(1, 9999)]).await.unwrap();
        let before = follower.digest().await.unwrap();
        let data = transfer(&mut snap, &mut follower, 16 << 10, Some(40 << 10)).await;
        let e = follower.install_snapshot(&snap.meta, data).await.unwrap_err().to_string();
        assert!(e.contains("snapshot"), "{e}");
        assert_eq!(follower.digest().await.unwrap(), before);
        assert!(follower.get_current_snapshot().await.unwrap().is_none());
    }
}
