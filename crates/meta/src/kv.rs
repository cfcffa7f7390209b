//! The key layout of the state machine in the store's state tree, and a
//! write overlay so that one `apply` call commits as a single atomic batch.
//!
//! Everything lives in one tree so that a batch (the entries of one apply
//! call plus `last_applied`) is atomic across record kinds. Keys are a
//! one-letter kind, a slash, and the id's raw bytes:
//!
//! ```text
//!   m/applied  m/membership  m/schema  m/count/<what>     bookkeeping
//!   m/clock                         u64: the log clock (latest leader time seen)
//!   n/<node id: u64 BE>             NodeRecord
//!   r/<repo name>                   RepoRecord
//!   s/<snapshot id>                 SnapshotRecord
//!   v/<snapshot id>                 CoverageRecord: the snapshot's backup-ratio inputs (see `dr`)
//!   c/<repo name> 0x00 <chunk id>   ChunkLocation
//!   p/<pack id>                     PackRecord
//!   e/<session id>                  SessionRecord
//!   b/<pack id><shard index>        BadShardRecord (shards that failed verification)
//!   i/<incident id: u64 BE>         IncidentRecord
//!   d/<node id: u64 BE>             DrainRecord
//!   x/<node id: u64 BE>             decommissioned (retired) node ids
//!   w/<repo name>                   u32: the repository's min_shards, when set
//!   k/<repo name>                   u64: the version of its key slot set, once changed
//!   h/<snapshot id>                 u64: the snapshot's hold (see `retention`)
//!   a/<token id>                    TokenRecord (a repository token's hash and role; see `auth`)
//!   ix/...                          secondary indexes, kept by `Txn` (see `index`)
//!   y/<repo name> 0x00 <started_ms: u64 BE> <id: u64 BE>
//!                                   DrRecord (a restore, drill or plan run; see `dr`)
//!   gq/<repo name>                  u64: the repository's snapshot commit sequence (see `gc`)
//!   gl/<repo name> 0x00 <seq: u64 BE>  CommitLogEntry: the snapshot committed at that sequence
//!   gr/<repo name>                  GcRound: the pending garbage-collection round
//!   gp/<pack id>                    SessionId: the session that committed the pack
//!   m/gc                            GcState: runs asked for and the last one finished
//! ```
//!
//! Values are bincode; the layout as a whole is versioned by `m/schema`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use coffer_types::{ChunkId, NodeId, PackId, RepoName, SessionId, ShardIndex, SnapshotId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::MetaError;
use crate::store::{Batch, Bytes, Tree};

/// 2: the secondary indexes under `ix/` (see `index`); 3: the index of
/// snapshots by source (`ix/t/`); 4: the count of former copies
/// (`ix/count/copies`); 5: the nodes holding shards (`ix/g/`); 6: the
/// counts of site-rule breakers, open incidents, bad shards and drains
/// (`ix/count/`). A store of an older schema gets its indexes rebuilt once
/// when it is opened (or installed from a snapshot).
pub const SCHEMA_VERSION: u32 = 6;

pub const KEY_APPLIED: &[u8] = b"m/applied";
pub const KEY_MEMBERSHIP: &[u8] = b"m/membership";
pub const KEY_SCHEMA: &[u8] = b"m/schema";
pub const KEY_CLOCK: &[u8] = b"m/clock";

pub fn count_key(what: &str) -> Vec<u8> {
    [b"m/count/".as_slice(), what.as_bytes()].concat()
}

pub fn node_key(id: NodeId) -> Vec<u8> {
    [b"n/".as_slice(), &id.0.to_be_bytes()].concat()
}

pub fn repo_key(name: &RepoName) -> Vec<u8> {
    [b"r/".as_slice(), name.as_str().as_bytes()].concat()
}

/// Where a snapshot's coverage is kept, beside its record (whose layout is fixed).
pub fn coverage_key(id: &SnapshotId) -> Vec<u8> {
    [b"v/".as_slice(), id.as_bytes()].concat()
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

pub fn bad_shard_key(pack: &PackId, index: ShardIndex) -> Vec<u8> {
    [b"b/".as_slice(), pack.as_bytes(), &[index.0]].concat()
}

pub fn incident_key(id: u64) -> Vec<u8> {
    [b"i/".as_slice(), &id.to_be_bytes()].concat()
}

pub fn drain_key(node: NodeId) -> Vec<u8> {
    [b"d/".as_slice(), &node.0.to_be_bytes()].concat()
}

/// A repository's `min_shards`, beside its record (whose layout stays fixed).
pub fn min_shards_key(name: &RepoName) -> Vec<u8> {
    [b"w/".as_slice(), name.as_str().as_bytes()].concat()
}

/// The version of a repository's key slot set (absent: 0, the slots it was
/// created with), beside its record (whose layout stays fixed).
pub fn key_slots_version_key(name: &RepoName) -> Vec<u8> {
    [b"k/".as_slice(), name.as_str().as_bytes()].concat()
}

/// A decommissioned node's id, so that it cannot register again.
pub fn retired_key(node: NodeId) -> Vec<u8> {
    [b"x/".as_slice(), &node.0.to_be_bytes()].concat()
}

/// A repository's snapshot commit sequence (absent: 0).
pub fn commit_seq_key(repo: &RepoName) -> Vec<u8> {
    [b"gq/".as_slice(), repo.as_str().as_bytes()].concat()
}

pub fn commit_log_prefix(repo: &RepoName) -> Vec<u8> {
    [b"gl/".as_slice(), repo.as_str().as_bytes(), &[0]].concat()
}

pub fn commit_log_key(repo: &RepoName, seq: u64) -> Vec<u8> {
    [commit_log_prefix(repo).as_slice(), &seq.to_be_bytes()].concat()
}

pub fn gc_round_key(repo: &RepoName) -> Vec<u8> {
    [b"gr/".as_slice(), repo.as_str().as_bytes()].concat()
}

/// The session a pack was committed in, beside its record (whose layout
/// stays fixed).
pub fn pack_session_key(pack: &PackId) -> Vec<u8> {
    [b"gp/".as_slice(), pack.as_bytes()].concat()
}

pub const KEY_GC: &[u8] = b"m/gc";

/// Copies a move left behind: `f/<pack><index><node>`, written when
/// `MoveShard` takes shard `index` of `pack` off `node`, whose file may
/// still be there (a node that was down, or a drained one). The sweep deletes
/// the file and forgets the entry, so its routine work is proportional to
/// moves, not to the catalog. The value is the node the shard moved to.
pub const FORMER_COPY_PREFIX: &[u8] = b"f/";

pub fn former_copy_key(pack: &PackId, index: ShardIndex, node: NodeId) -> Vec<u8> {
    [FORMER_COPY_PREFIX, pack.as_bytes().as_slice(), &[index.0], &node.0.to_be_bytes()].concat()
}

/// The former copies of `pack`, every index and node.
pub fn former_copies_prefix(pack: &PackId) -> Vec<u8> {
    [FORMER_COPY_PREFIX, pack.as_bytes().as_slice()].concat()
}

/// Parses a `former_copy_key`.
pub fn parse_former_copy_key(key: &[u8]) -> Option<(PackId, ShardIndex, NodeId)> {
    let rest = key.strip_prefix(FORMER_COPY_PREFIX)?;
    if rest.len() != 16 + 1 + 8 {
        return None;
    }
    let pack = PackId::from_slice(&rest[..16]).ok()?;
    let node = u64::from_be_bytes(rest[17..25].try_into().ok()?);
    Some((pack, ShardIndex(rest[16]), NodeId(node)))
}

pub const BAD_SHARD_PREFIX: &[u8] = b"b/";
pub const DRAIN_PREFIX: &[u8] = b"d/";

/// Nodes being drained, by id.
pub fn draining(
    tree: &crate::store::Tree,
) -> Result<std::collections::HashMap<NodeId, crate::command::DrainRecord>, MetaError> {
    let mut out = std::collections::HashMap::new();
    if !crate::index::any_drain(tree)? {
        return Ok(out);
    }
    for item in tree.scan_prefix(DRAIN_PREFIX) {
        let (k, v) = item?;
        let Some(id) = k.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
        out.insert(NodeId(u64::from_be_bytes(id)), decode("drain", &v)?);
    }
    Ok(out)
}
pub const INCIDENT_PREFIX: &[u8] = b"i/";
pub const NODE_PREFIX: &[u8] = b"n/";
pub const SNAPSHOT_PREFIX: &[u8] = b"s/";
/// The source registry (`sources`): `o/<repo> 0x00 <source name>`.
///
/// Prefixes in use: `a/` tokens, `b/` bad shards, `c/` chunks, `d/` drains,
/// `e/` sessions, `f/` former copies, `h/` holds, `i/` incidents, `k/` key-slot versions, `m/`
/// metadata, `n/` nodes, `o/` sources, `p/` packs, `r/` repositories, `s/`
/// snapshots, `v/` snapshot coverage, `w/` minimum shards, `x/` condemned
/// chunks and retired nodes, `y/` disaster-recovery records.
pub const SOURCE_PREFIX: &[u8] = b"o/";
pub const PACK_PREFIX: &[u8] = b"p/";

/// The control records: few keys, often rewritten, read by the leader's
/// every tick (nodes, incidents, drains, sessions, bad shards, sources,
/// repositories and their settings, tokens, the garbage-collection rounds,
/// bookkeeping, and the indexes' counters and work lists). The store keeps
/// them apart from the catalog (`store`: a keyspace of their own), so that
/// reading them costs the same whatever the catalog's size. Every other
/// prefix (chunk entries, packs, snapshots and their coverage, holds,
/// condemned chunks and retired nodes, former copies, disaster-recovery
/// records, the commit log, the indexes by pack, node and snapshot) grows
/// with the catalog.
pub const CONTROL_PREFIXES: &[&[u8]] = &[
    b"a/",
    b"b/",
    b"d/",
    b"e/",
    b"gq/",
    b"gr/",
    b"i/",
    b"ix/count/",
    b"ix/g/",
    b"ix/h/",
    b"ix/o/",
    b"ix/z/",
    b"k/",
    b"m/",
    b"n/",
    b"o/",
    b"r/",
    b"w/",
];

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, MetaError> {
    codec::encode(v).map_err(|reason| MetaError::Codec { what: "state machine value", reason })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, MetaError> {
    codec::decode(what, bytes).map_err(|reason| MetaError::Codec { what, reason })
}

/// Reads from the store.
pub fn get<T: DeserializeOwned>(tree: &Tree, what: &'static str, key: &[u8]) -> Result<Option<T>, MetaError> {
    match tree.get(key)? {
        Some(v) => Ok(Some(decode(what, &v)?)),
        None => Ok(None),
    }
}

/// Decoded values of every key under `prefix`.
pub fn scan<T: DeserializeOwned>(tree: &Tree, what: &'static str, prefix: &[u8]) -> Result<Vec<T>, MetaError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(prefix) {
        let (_, v) = kv?;
        out.push(decode(what, &v)?);
    }
    Ok(out)
}

/// Buffered writes over the tree, read back before they are committed.
///
/// Every write of a record keeps the secondary indexes (`index::on_write`)
/// in the same transaction. `remove` cannot fail, so an error of that
/// upkeep is kept and returned by `commit`, which then writes nothing.
pub struct Txn<'a> {
    tree: &'a Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the tree held at each key this transaction has read: a command
    /// reads a key several times (a new chunk's entry is looked up by the
    /// condemned-copy check, the deduplication check and the index upkeep
    /// of its write), and each read of the store looks through its
    /// memtables and tables. The tree does not change under a transaction
    /// (apply holds the state machine's write lock), so the first answer
    /// stays true; bounded by the keys one apply call touches.
    read: RefCell<HashMap<Vec<u8>, Option<Bytes>>>,
    failed: Option<MetaError>,
}

impl<'a> Txn<'a> {
    pub fn new(tree: &'a Tree) -> Self {
        Self { tree, pending: BTreeMap::new(), read: RefCell::new(HashMap::new()), failed: None }
    }

    /// Writes `value` under `key` (None: removes it) and keeps the indexes.
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), MetaError> {
        let old = self.get_raw(&key)?;
        self.pending.insert(key.clone(), value.clone());
        crate::index::on_write(self, &key, old.as_deref(), value.as_deref())
    }

    /// Writes an index key (None: removes it); for `index` only.
    pub(crate) fn put_index(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.pending.insert(key, value);
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self.stored(key)?.map(|v| v.to_vec()))
    }

    /// The tree's value at `key`, read once per transaction.
    fn stored(&self, key: &[u8]) -> Result<Option<Bytes>, MetaError> {
        if let Some(v) = self.read.borrow().get(key) {
            return Ok(v.clone());
        }
        let v = self.tree.get(key)?;
        self.read.borrow_mut().insert(key.to_vec(), v.clone());
        Ok(v)
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
        Ok(self.stored(key)?.is_some())
    }

    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, v: &T) -> Result<(), MetaError> {
        let value = encode(v)?;
        self.write(key, Some(value))
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        if let Err(e) = self.write(key, None) {
            self.failed.get_or_insert(e);
        }
    }

    pub fn add_count(&mut self, what: &str, delta: i64) -> Result<(), MetaError> {
        let key = count_key(what);
        let cur: u64 = self.get("counter", &key)?.unwrap_or(0);
        let next = if delta >= 0 { cur.saturating_add(delta as u64) } else { cur.saturating_sub(delta.unsigned_abs()) };
        self.put(key, &next)
    }

    /// Decoded values of every key under `prefix`, as the transaction sees
    /// them: only valid for prefixes it has not written to. Only for prefixes
    /// that stay small (sessions, drains): `apply` reads catalog-sized ones
    /// through `index`.
    #[allow(dead_code)]
    pub fn scan<T: DeserializeOwned>(&self, what: &'static str, prefix: &[u8]) -> Result<Vec<T>, MetaError> {
        scan(self.tree, what, prefix)
    }

    /// Every (key, value) under `prefix` as this transaction sees it: the
    /// store with the buffered writes and removals laid over it.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, MetaError> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.insert(k.to_vec(), v.to_vec());
        }
        for (k, v) in self.pending.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    /// Whether any key under `prefix` exists as this transaction sees it,
    /// without reading the whole range.
    pub fn any_under(&self, prefix: &[u8]) -> Result<bool, MetaError> {
        let pending = self.pending.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix));
        if pending.clone().any(|(_, v)| v.is_some()) {
            return Ok(true);
        }
        for kv in self.tree.scan_prefix(prefix) {
            let (k, _) = kv?;
            if !matches!(self.pending.get(k.as_ref()), Some(None)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Applies every buffered write in one atomic batch.
    pub fn commit(mut self) -> Result<(), MetaError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut batch = Batch::default();
        for (k, v) in std::mem::take(&mut self.pending) {
            // Removing a key the store does not hold writes nothing: in an
            // LSM tree a removal is a tombstone that every scan of its
            // prefix steps over until compaction drops it, and the index
            // upkeep removes absent keys routinely (every pack that keeps the
            // site rule removes its `ix/z/` key).
            if v.is_none() && self.stored(&k)?.is_none() {
                continue;
            }
            batch.push(k, v);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}
