//! openraft's `RaftStateMachine` on sled, and its snapshots.
//!
//! The state lives in one sled tree (layout in `kv`). One `apply` call
//! writes all its entries and the new `last_applied` in one atomic batch, so
//! a crash never leaves the state between two entries. The batch is not
//! flushed: the log is flushed before anything is applied, and openraft
//! re-applies committed entries past `last_applied` after a restart.
//!
//! A snapshot is every key of the tree as it was at one `last_applied`,
//! taken without stopping writes: the builder opens a *cut* (briefly
//! excluding apply), then iterates the live tree while apply goes on; apply
//! records the pre-image of every key it changes while a cut is open, and
//! the builder puts those pre-images back over what it read. One cut is
//! open at a time (builds and digests queue for it). Iteration cost
//! grows with the catalog; the pause does not.

// openraft's storage traits return its own `StorageError`, which is large;
// the helpers here return it too rather than convert twice.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::apply::apply;
use crate::codec;
use crate::command::CommandResult;
use crate::kv::{self, Txn, KEY_APPLIED, KEY_MEMBERSHIP, KEY_SCHEMA, SCHEMA_VERSION};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::MetaError;

const SNAPSHOT_FORMAT: u32 = 1;
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current";

/// A state-machine snapshot as it travels and rests: versioned key/values.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotBody {
    format: u32,
    schema: u32,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    snapshots: sled::Tree,
    /// Apply holds it while it writes; a snapshot builder takes it to open a cut.
    cut: RwLock<()>,
    /// While a snapshot is being built: the value each key had at the cut,
    /// for every key written since (None: the key did not exist).
    undo: Mutex<Option<Undo>>,
    /// One cut at a time: there is one undo map, and a second cut opened
    /// while a first is being read would replace it (the first then misses
    /// pre-images, or finds none and fails). Snapshot builds and catalog
    /// digests queue here for the whole read.
    one_cut: tokio::sync::Mutex<()>,
    snapshot_seq: AtomicU64,
}

#[derive(Default)]
struct Undo {
    /// Bumped by `install_snapshot`, which invalidates an open cut.
    generation: u64,
    pre_images: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
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

impl StateMachineStore {
    pub fn open(db: &sled::Db) -> Result<Self, MetaError> {
        let tree = db.open_tree("sm")?;
        match kv::get::<u32>(&tree, "schema", KEY_SCHEMA)? {
            None => {
                tree.insert(KEY_SCHEMA, kv::encode(&SCHEMA_VERSION)?)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(found) => return Err(MetaError::UnsupportedSchema { found, known: SCHEMA_VERSION }),
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                tree,
                snapshots: db.open_tree("snapshots")?,
                cut: RwLock::new(()),
                undo: Mutex::new(None),
                one_cut: tokio::sync::Mutex::new(()),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    /// The state tree, for reads. Readers see whole apply batches only.
    pub fn tree(&self) -> &sled::Tree {
        &self.inner.tree
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let read = |e: MetaError| sm_err(ErrorVerb::Read, e);
        let applied: Option<LogId> = kv::get(&self.inner.tree, "last applied", KEY_APPLIED).map_err(read)?.flatten();
        let membership: StoredMembership =
            kv::get(&self.inner.tree, "membership", KEY_MEMBERSHIP).map_err(read)?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn undo(&self) -> std::sync::MutexGuard<'_, Option<Undo>> {
        self.inner.undo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key and value as of one applied index, read without holding
    /// apply back for longer than it takes to open the cut.
    async fn consistent_pairs(
        &self,
    ) -> Result<(Option<LogId>, StoredMembership, Vec<(Vec<u8>, Vec<u8>)>), StorageError> {
        let _one = self.inner.one_cut.lock().await;
        let (applied, membership, generation) = {
            let _cut = self.inner.cut.write().await;
            let (applied, membership) = self.read_applied()?;
            let mut undo = self.undo();
            let generation = undo.as_ref().map(|u| u.generation).unwrap_or(0);
            *undo = Some(Undo { generation, pre_images: BTreeMap::new() });
            (applied, membership, generation)
        };
        let mut state = BTreeMap::new();
        let read = (|| {
            for kv in self.inner.tree.iter() {
                let (k, v) = kv.map_err(|e| snap_err(ErrorVerb::Read, e))?;
                state.insert(k.to_vec(), v.to_vec());
            }
            Ok::<(), StorageError>(())
        })();
        let undo = self.undo().take();
        read?;
        let undo = match undo {
            Some(u) if u.generation == generation => u,
            _ => return Err(snap_err(ErrorVerb::Read, "a snapshot was installed while one was being built")),
        };
        for (k, before) in undo.pre_images {
            match before {
                Some(v) => state.insert(k, v),
                None => state.remove(&k),
            };
        }
        Ok((applied, membership, state.into_iter().collect()))
    }

    /// `(applied index, records, BLAKE3 of the records)`: equal on replicas
    /// that applied the same log. Raft bookkeeping keys are left out.
    pub async fn digest(&self) -> Result<(u64, u64, [u8; 32]), StorageError> {
        let (applied, _, pairs) = self.consistent_pairs().await?;
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        for (k, v) in pairs.iter().filter(|(k, _)| k.as_slice() != KEY_APPLIED && k.as_slice() != KEY_MEMBERSHIP) {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
            n += 1;
        }
        Ok((applied.map(|l| l.index).unwrap_or(0), n, *h.finalize().as_bytes()))
    }

    async fn build(&self) -> Result<Snapshot, StorageError> {
        let (applied, membership, pairs) = self.consistent_pairs().await?;
        let body = SnapshotBody { format: SNAPSHOT_FORMAT, schema: SCHEMA_VERSION, pairs };
        let data = codec::encode(&body).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        self.save_current(&meta, &data).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }

    async fn save_current(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let stored = StoredSnapshot { meta: meta.clone(), data: data.to_vec() };
        let bytes = codec::encode(&stored).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.inner.snapshots.insert(KEY_CURRENT_SNAPSHOT, bytes).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.inner.db.flush_async().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
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
        {
            // A snapshot is being built: keep what these keys held at its cut.
            let mut undo = self.undo();
            if let Some(undo) = undo.as_mut() {
                for k in txn.keys() {
                    if !undo.pre_images.contains_key(k) {
                        let before = self.inner.tree.get(k).map_err(|e| sm_err(ErrorVerb::Read, e))?;
                        undo.pre_images.insert(k.clone(), before.map(|v| v.to_vec()));
                    }
                }
            }
        }
        txn.commit().map_err(write)?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = codec::decode("snapshot", &data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        if body.format != SNAPSHOT_FORMAT || body.schema != SCHEMA_VERSION {
            return Err(snap_err(
                ErrorVerb::Read,
                format!("snapshot format {} schema {} is not supported", body.format, body.schema),
            ));
        }
        let _cut = self.inner.cut.write().await;
        if let Some(undo) = self.undo().as_mut() {
            undo.generation += 1;
            undo.pre_images.clear();
        }
        let mut batch = sled::Batch::default();
        for kv in self.inner.tree.iter() {
            let (k, _) = kv.map_err(|e| snap_err(ErrorVerb::Write, e))?;
            batch.remove(k);
        }
        for (k, v) in body.pairs {
            batch.insert(k, v);
        }
        // The snapshot's own bookkeeping must agree with the meta openraft
        // hands us; write the meta's values to be certain.
        let applied = codec::encode(&meta.last_log_id).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let membership = codec::encode(&meta.last_membership).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        batch.insert(KEY_APPLIED, applied);
        batch.insert(KEY_MEMBERSHIP, membership);
        self.inner.tree.apply_batch(batch).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        drop(_cut);
        self.save_current(meta, &data).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        match self.inner.snapshots.get(KEY_CURRENT_SNAPSHOT).map_err(|e| snap_err(ErrorVerb::Read, e))? {
            Some(bytes) => {
                let stored: StoredSnapshot =
                    codec::decode("stored snapshot", &bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
            }
            None => Ok(None),
        }
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
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, StateMachineStore::open(&db).unwrap())
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
}
