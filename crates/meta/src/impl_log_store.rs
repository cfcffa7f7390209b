//! openraft's `RaftLogStorage` on the node's store.
//!
//! The log is a keyspace keyed by big-endian index, so the store's ordered
//! iteration is log order. The vote, the committed id and the last purged id
//! live in a small `raft` keyspace. Every write that openraft must be able
//! to rely on after a crash (appends, the vote) is flushed to disk before it
//! is acknowledged; the store has one journal, so that flush also makes the
//! state machine's earlier batches durable.

// openraft's storage traits return its own `StorageError`, which is large;
// the helpers here return it too rather than convert twice.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};

use crate::codec;
use crate::store::{Batch, Db, StoreError, Tree};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use crate::MetaError;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    log: Tree,
    raft: Tree,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn read_logs_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl LogStore {
    pub fn open(db: &Db) -> Result<Self, MetaError> {
        Ok(Self { log: db.tree("log")?, raft: db.tree("raft")? })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.raft.get(key).map_err(read_logs_err)? {
            Some(v) => codec::decode("raft state", &v).map(Some).map_err(read_logs_err),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(v).map_err(write_logs_err)?;
        self.raft.insert(key, bytes).map_err(write_logs_err)?;
        Ok(())
    }

    /// Fsyncs the journal on a blocking thread.
    async fn flush(&self) -> Result<(), StoreError> {
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || log.flush()).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

fn index_of(key: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| read_logs_err("log key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.log.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(read_logs_err)?;
            let idx = index_of(&k)?;
            if !range.contains(&idx) {
                break;
            }
            out.push(codec::decode::<Entry>("log entry", &v).map_err(read_logs_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta::<Option<LogId>>(KEY_PURGED)?.flatten();
        let last = match self.log.last().map_err(read_logs_err)? {
            Some((_, v)) => Some(codec::decode::<Entry>("log entry", &v).map_err(read_logs_err)?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = codec::encode(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.raft.insert(KEY_VOTE, bytes).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.flush().await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: losing it only means re-applying from the
        // last applied index, which openraft does.
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(write_logs_err)?;
            batch.insert(entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch).map_err(write_logs_err)?;
        let res = self.flush().await.map_err(std::io::Error::other);
        let failed = res.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(write_logs_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        for k in self.log.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(k.map_err(write_logs_err)?);
        }
        self.log.apply_batch(batch).map_err(write_logs_err)?;
        self.flush().await.map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two steps leaves
        // extra entries behind it, which is harmless.
        self.put_meta(KEY_PURGED, &Some(log_id))?;
        let mut batch = Batch::default();
        for k in self.log.range(..=log_id.index.to_be_bytes()).keys() {
            batch.remove(k.map_err(write_logs_err)?);
        }
        self.log.apply_batch(batch).map_err(write_logs_err)?;
        self.flush().await.map_err(write_logs_err)
    }
}
