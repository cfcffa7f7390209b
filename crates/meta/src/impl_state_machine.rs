//! openraft's `RaftStateMachine` on sled, and its snapshots.
//!
//! The state lives in one sled tree (layout in `kv`). One `apply` call
//! writes all its entries and the new `last_applied` in one atomic batch, so
//! a crash never leaves the state between two entries. The batch is not
//! flushed: the log is flushed before anything is applied, and openraft
//! re-applies committed entries past `last_applied` after a restart.
//!
//! A snapshot is every key of the tree, taken under a read lock that
//! excludes apply, so it is a consistent cut at `last_applied`.

// openraft's storage traits return its own `StorageError`, which is large;
// the helpers here return it too rather than convert twice.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
struct SnapshotBody {
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
    /// Apply takes it for writing; snapshot building for reading.
    cut: RwLock<()>,
    snapshot_seq: AtomicU64,
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

    async fn build(&self) -> Result<Snapshot, StorageError> {
        let _cut = self.inner.cut.read().await;
        let (applied, membership) = self.read_applied()?;
        let mut pairs = Vec::new();
        for kv in self.inner.tree.iter() {
            let (k, v) = kv.map_err(|e| snap_err(ErrorVerb::Read, e))?;
            pairs.push((k.to_vec(), v.to_vec()));
        }
        drop(_cut);
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
