//! The key layout of the state machine in one sled tree, and a write
//! overlay so that one `apply` call commits as a single atomic batch.
//!
//! Everything lives in one tree so that a batch (the entries of one apply
//! call plus `last_applied`) is atomic across record kinds. Keys are a
//! one-letter kind, a slash, and the id's raw bytes:
//!
//! ```text
//!   m/applied  m/membership  m/schema  m/count/<what>     bookkeeping
//!   n/<node id: u64 BE>             NodeRecord
//!   r/<repo name>                   RepoRecord
//!   s/<snapshot id>                 SnapshotRecord
//!   c/<repo name> 0x00 <chunk id>   ChunkLocation
//!   p/<pack id>                     PackRecord
//!   e/<session id>                  SessionRecord
//! ```
//!
//! Values are bincode; the layout as a whole is versioned by `m/schema`.

use std::collections::BTreeMap;

use coffer_types::{ChunkId, NodeId, PackId, RepoName, SessionId, SnapshotId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::MetaError;

pub const SCHEMA_VERSION: u32 = 1;

pub const KEY_APPLIED: &[u8] = b"m/applied";
pub const KEY_MEMBERSHIP: &[u8] = b"m/membership";
pub const KEY_SCHEMA: &[u8] = b"m/schema";

pub fn count_key(what: &str) -> Vec<u8> {
    [b"m/count/".as_slice(), what.as_bytes()].concat()
}

pub fn node_key(id: NodeId) -> Vec<u8> {
    [b"n/".as_slice(), &id.0.to_be_bytes()].concat()
}

pub fn repo_key(name: &RepoName) -> Vec<u8> {
    [b"r/".as_slice(), name.as_str().as_bytes()].concat()
}

pub fn snapshot_key(id: &SnapshotId) -> Vec<u8> {
    [b"s/".as_slice(), id.as_bytes()].concat()
}

pub fn chunk_prefix(repo: &RepoName) -> Vec<u8> {
    [b"c/".as_slice(), repo.as_str().as_bytes(), &[0]].concat()
}

pub fn chunk_key(repo: &RepoName, id: &ChunkId) -> Vec<u8> {
    [chunk_prefix(repo).as_slice(), id.as_bytes()].concat()
}

pub fn pack_key(id: &PackId) -> Vec<u8> {
    [b"p/".as_slice(), id.as_bytes()].concat()
}

pub fn session_key(id: &SessionId) -> Vec<u8> {
    [b"e/".as_slice(), id.as_bytes()].concat()
}

pub const NODE_PREFIX: &[u8] = b"n/";
pub const SNAPSHOT_PREFIX: &[u8] = b"s/";
pub const PACK_PREFIX: &[u8] = b"p/";

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, MetaError> {
    codec::encode(v).map_err(|reason| MetaError::Codec { what: "state machine value", reason })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, MetaError> {
    codec::decode(what, bytes).map_err(|reason| MetaError::Codec { what, reason })
}

/// Reads from a sled tree.
pub fn get<T: DeserializeOwned>(tree: &sled::Tree, what: &'static str, key: &[u8]) -> Result<Option<T>, MetaError> {
    match tree.get(key)? {
        Some(v) => Ok(Some(decode(what, &v)?)),
        None => Ok(None),
    }
}

/// Decoded values of every key under `prefix`.
pub fn scan<T: DeserializeOwned>(tree: &sled::Tree, what: &'static str, prefix: &[u8]) -> Result<Vec<T>, MetaError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(prefix) {
        let (_, v) = kv?;
        out.push(decode(what, &v)?);
    }
    Ok(out)
}

/// Buffered writes over the tree, read back before they are committed.
pub struct Txn<'a> {
    tree: &'a sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub fn new(tree: &'a sled::Tree) -> Self {
        Self { tree, pending: BTreeMap::new() }
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub fn get<T: DeserializeOwned>(&self, what: &'static str, key: &[u8]) -> Result<Option<T>, MetaError> {
        match self.get_raw(key)? {
            Some(v) => Ok(Some(decode(what, &v)?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool, MetaError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.is_some());
        }
        Ok(self.tree.contains_key(key)?)
    }

    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, v: &T) -> Result<(), MetaError> {
        self.pending.insert(key, Some(encode(v)?));
        Ok(())
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    pub fn add_count(&mut self, what: &str, delta: i64) -> Result<(), MetaError> {
        let key = count_key(what);
        let cur: u64 = self.get("counter", &key)?.unwrap_or(0);
        let next = if delta >= 0 { cur.saturating_add(delta as u64) } else { cur.saturating_sub(delta.unsigned_abs()) };
        self.put(key, &next)
    }

    /// The keys this transaction will write or remove.
    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.pending.keys()
    }

    /// Applies every buffered write in one atomic sled batch.
    pub fn commit(self) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}
