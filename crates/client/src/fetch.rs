//! Reading blobs back from the cluster, healthy or degraded.
//!
//! ```text
//!   chunk id ──LookupChunks──► (pack, offset, len) ──GetPacks──► pack record + node addresses
//!      │
//!      ├─ healthy: locate(range) ──► GetShard on the 1-2 data shards ──► open (authenticate + re-hash)
//!      │
//!      └─ degraded (node down, read failed, DATA_LOSS, blob fails authentication):
//!           whole shards from any k nodes ──BLAKE3 vs record──► reconstruct_data ──► join ──► cut ──► open
//!           (reconstructed packs stay in a small LRU: neighbouring blobs share them)
//! ```
//!
//! The invariant kept here: no plaintext leaves this module unless the blob
//! authenticated under the repository key and its plaintext hashed to the id
//! asked for. A shard used for reconstruction must match the checksum its
//! pack record holds; one that does not is reported and left out, because
//! Reed-Solomon would silently turn a wrong shard into a wrong pack.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use coffer_erasure::{locate, Codec};
use coffer_pack::RepoKey;
use coffer_proto::{location_from_pb, pb};
use coffer_types::{ChunkId, ChunkLocation, NodeId, PackId, PackRecord, RepoName, ShardIndex};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::OnceCell;

use crate::conn::MetaClient;
use crate::pipeline::LOOKUP_BATCH;
use crate::restore::BlobSource;
use crate::shards::ShardPool;
use crate::tree::Tree;
use crate::walk::TreeLoader;
use crate::ClientError;

/// Reconstructed packs kept for the blobs that follow.
const REBUILT_PACKS: usize = 4;
/// Pack ids per GetPacks call.
const GETPACKS_BATCH: usize = 1000;
/// Locations cached before the map is reset; a miss costs one lookup.
const MAX_LOCATIONS: usize = 2_000_000;
/// Blobs at least this large are opened on a blocking thread.
const OPEN_INLINE_MAX: usize = 64 * 1024;

/// A storage node as a pack record's placement names it.
#[derive(Clone, Debug)]
struct NodeRef {
    id: NodeId,
    addr: Option<String>,
    down: bool,
}

/// A pack record with where each of its shards is.
#[derive(Debug)]
struct PackInfo {
    record: PackRecord,
    /// One entry per shard index.
    nodes: Vec<NodeRef>,
}

type Rebuilt = Arc<OnceCell<Arc<Vec<u8>>>>;

/// A small LRU of reconstructed packs. An entry is a cell, so that tasks
/// asking for the same pack at once wait for one reconstruction.
#[derive(Default)]
struct RebuiltCache {
    order: VecDeque<PackId>,
    cells: HashMap<PackId, Rebuilt>,
}

impl RebuiltCache {
    fn cell(&mut self, pack: PackId) -> Rebuilt {
        if let Some(c) = self.cells.get(&pack).cloned() {
            self.order.retain(|p| *p != pack);
            self.order.push_back(pack);
            return c;
        }
        while self.order.len() >= REBUILT_PACKS {
            if let Some(old) = self.order.pop_front() {
                self.cells.remove(&old);
            }
        }
        let c: Rebuilt = Arc::default();
        self.cells.insert(pack, c.clone());
        self.order.push_back(pack);
        c
    }
}

/// What went wrong during reads, for the summary.
#[derive(Default)]
struct Health {
    degraded: HashSet<PackId>,
    bad_shards: BTreeSet<String>,
}

/// Blobs from the cluster: the catalog for locations and placement, the
/// storage nodes for bytes.
pub(crate) struct ClusterSource {
    meta: Arc<MetaClient>,
    repo: RepoName,
    key: Arc<RepoKey>,
    shards: ShardPool,
    locations: Mutex<HashMap<ChunkId, ChunkLocation>>,
    packs: Mutex<HashMap<PackId, Arc<PackInfo>>>,
    rebuilt: Mutex<RebuiltCache>,
    health: Mutex<Health>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterSource {
    pub fn new(meta: Arc<MetaClient>, repo: RepoName, key: Arc<RepoKey>) -> Self {
        ClusterSource {
            meta,
            repo,
            key,
            shards: ShardPool::default(),
            locations: Mutex::default(),
            packs: Mutex::default(),
            rebuilt: Mutex::default(),
            health: Mutex::default(),
        }
    }

    /// Resolves the locations of `ids` that are not cached yet.
    async fn lookup(&self, ids: &[ChunkId]) -> Result<(), ClientError> {
        let missing: Vec<ChunkId> = {
            let locs = lock(&self.locations);
            let mut seen = HashSet::new();
            ids.iter().filter(|id| !locs.contains_key(id) && seen.insert(**id)).copied().collect()
        };
        let mut packs = HashSet::new();
        for batch in missing.chunks(LOOKUP_BATCH) {
            let req = pb::LookupChunksRequest {
                repo: self.repo.to_string(),
                chunk_ids: batch.iter().map(|id| id.0.to_vec()).collect(),
            };
            let resp = self
                .meta
                .call("LookupChunks", |mut c| {
                    let req = req.clone();
                    async move { c.lookup_chunks(req).await }
                })
                .await?;
            let mut locs = lock(&self.locations);
            if locs.len() + resp.found.len() > MAX_LOCATIONS {
                locs.clear();
            }
            for l in &resp.found {
                let (id, loc) = location_from_pb(l)
                    .map_err(|e| ClientError::BadResponse { what: "LookupChunks", reason: e.to_string() })?;
                packs.insert(loc.pack);
                locs.insert(id, loc);
            }
        }
        let packs: Vec<PackId> = packs.into_iter().collect();
        self.load_packs(&packs).await
    }

    /// Fetches the records of `packs` that are not cached yet.
    async fn load_packs(&self, packs: &[PackId]) -> Result<(), ClientError> {
        let missing: Vec<PackId> = {
            let known = lock(&self.packs);
            packs.iter().filter(|p| !known.contains_key(p)).copied().collect()
        };
        for batch in missing.chunks(GETPACKS_BATCH) {
            let req = pb::GetPacksRequest { pack_ids: batch.iter().map(|p| p.0.to_vec()).collect() };
            let resp = self
                .meta
                .call("GetPacks", |mut c| {
                    let req = req.clone();
                    async move { c.get_packs(req).await }
                })
                .await?;
            let nodes: HashMap<u64, pb::Node> = resp.nodes.into_iter().map(|n| (n.id, n)).collect();
            let mut known = lock(&self.packs);
            for p in resp.packs {
                let record = PackRecord::try_from(p)
                    .map_err(|e| ClientError::BadResponse { what: "GetPacks", reason: e.to_string() })?;
                let nodes = record
                    .shards
                    .iter()
                    .map(|s| {
                        let n = nodes.get(&s.node.0);
                        NodeRef {
                            id: s.node,
                            addr: n.map(|n| n.addr.clone()).filter(|a| !a.is_empty()),
                            down: n.is_some_and(|n| n.state == "down"),
                        }
                    })
                    .collect();
                known.insert(record.id, Arc::new(PackInfo { record, nodes }));
            }
        }
        Ok(())
    }

    async fn location(&self, id: ChunkId) -> Result<ChunkLocation, ClientError> {
        if let Some(l) = lock(&self.locations).get(&id).copied() {
            return Ok(l);
        }
        self.lookup(&[id]).await?;
        lock(&self.locations).get(&id).copied().ok_or(ClientError::ChunkNotIndexed { chunk: id })
    }

    async fn pack(&self, pack: PackId) -> Result<Arc<PackInfo>, ClientError> {
        if let Some(p) = lock(&self.packs).get(&pack).cloned() {
            return Ok(p);
        }
        self.load_packs(&[pack]).await?;
        lock(&self.packs).get(&pack).cloned().ok_or(ClientError::PackNotFound { pack })
    }

    fn bad_shard(&self, pack: PackId, index: ShardIndex, node: NodeId, reason: impl std::fmt::Display) {
        let line = format!("pack {pack} shard {index} on node {node}: {reason}");
        // Many blobs share a shard: say each bad one once.
        if lock(&self.health).bad_shards.insert(line.clone()) {
            tracing::warn!("{line}");
        }
    }

    fn is_degraded(&self, pack: PackId) -> bool {
        lock(&self.health).degraded.contains(&pack)
    }

    /// The sealed bytes at `loc` from the data shards that hold them, or
    /// `None` if any of them cannot be read (the failures are recorded).
    async fn read_healthy(&self, info: &PackInfo, loc: &ChunkLocation) -> Result<Option<Vec<u8>>, ClientError> {
        let rec = &info.record;
        let pieces = locate(rec.params, rec.pack_len, loc.offset, loc.len as u64)
            .map_err(|e| ClientError::DataLoss { pack: rec.id, reason: format!("chunk location: {e}") })?;
        let reads = pieces.iter().map(|piece| async move {
            let node = info
                .nodes
                .get(piece.index.0 as usize)
                .ok_or_else(|| (piece.index, None, "no placement".to_string()))?;
            if node.down {
                return Err((piece.index, Some(node.id), "node is down".to_string()));
            }
            let addr =
                node.addr.as_deref().ok_or_else(|| (piece.index, Some(node.id), "node address unknown".to_string()))?;
            self.shards
                .get(addr, rec.id, piece.index, piece.offset, Some(piece.len))
                .await
                .map_err(|e| (piece.index, Some(node.id), e.reason))
        });
        let mut results = futures::future::join_all(reads).await;
        if let [Ok(_)] = results.as_slice() {
            // The usual case: the blob lies in one data shard, and the bytes
            // read are the blob.
            return Ok(results.pop().and_then(Result::ok));
        }
        let mut out = Vec::with_capacity((loc.len as usize).min(coffer_pack::MAX_CHUNK_LEN * 2));
        let mut ok = true;
        for r in results {
            match r {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err((index, node, reason)) => {
                    ok = false;
                    self.bad_shard(rec.id, index, node.unwrap_or_default(), reason);
                }
            }
        }
        Ok(ok.then_some(out))
    }

    /// The whole pack, reconstructed from any k good shards (cached).
    async fn rebuilt_pack(&self, info: &Arc<PackInfo>) -> Result<Arc<Vec<u8>>, ClientError> {
        let pack = info.record.id;
        lock(&self.health).degraded.insert(pack);
        let cell = lock(&self.rebuilt).cell(pack);
        cell.get_or_try_init(|| self.reconstruct(info.clone())).await.cloned()
    }

    async fn reconstruct(&self, info: Arc<PackInfo>) -> Result<Arc<Vec<u8>>, ClientError> {
        let rec = &info.record;
        let k = rec.params.k();
        tracing::info!(pack = %rec.id, "reading pack in degraded mode");
        // Data shards first (fewer to rebuild), nodes believed down last.
        let mut order: Vec<usize> = (0..rec.params.total()).filter(|i| info.nodes.get(*i).is_some()).collect();
        order.sort_by_key(|&i| (info.nodes[i].down, i >= k));
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; rec.params.total()];
        let mut good = 0usize;
        let mut next = 0usize;
        let mut in_flight = FuturesUnordered::new();
        loop {
            while good + in_flight.len() < k && next < order.len() {
                let i = order[next];
                next += 1;
                let node = info.nodes[i].clone();
                let pack = rec.id;
                in_flight.push(async move {
                    let body = match &node.addr {
                        Some(addr) => {
                            self.shards.get(addr, pack, ShardIndex(i as u8), 0, None).await.map_err(|e| e.reason)
                        }
                        None => Err("node address unknown".to_string()),
                    };
                    (i, node.id, body)
                });
            }
            let Some((i, node, body)) = in_flight.next().await else { break };
            let index = ShardIndex(i as u8);
            match body {
                Err(reason) => self.bad_shard(rec.id, index, node, reason),
                Ok(body) if body.len() as u64 != rec.shard_len => self.bad_shard(
                    rec.id,
                    index,
                    node,
                    format!("{} bytes, the record says {}", body.len(), rec.shard_len),
                ),
                Ok(body) => {
                    let expected = rec.shards.get(i).map(|s| s.checksum);
                    if expected.map(|c| c.0) == Some(*blake3::hash(&body).as_bytes()) {
                        shards[i] = Some(body);
                        good += 1;
                    } else {
                        self.bad_shard(rec.id, index, node, "checksum mismatch");
                    }
                }
            }
        }
        if good < k {
            return Err(ClientError::DataLoss {
                pack: rec.id,
                reason: format!("only {good} of the {k} shards needed are readable"),
            });
        }
        let (params, pack_len, pack) = (rec.params, rec.pack_len, rec.id);
        let bytes = tokio::task::spawn_blocking(move || {
            let codec = Codec::new(params)?;
            codec.reconstruct_data(&mut shards)?;
            codec.join(&shards, pack_len)
        })
        .await
        .map_err(|e| ClientError::task("reconstruct pack", e))?
        .map_err(|source| ClientError::Erasure { pack, source })?;
        Ok(Arc::new(bytes))
    }

    /// Opens a sealed blob, on a blocking thread when it is large.
    async fn open(&self, id: ChunkId, sealed: Vec<u8>) -> Result<Vec<u8>, coffer_pack::PackError> {
        if sealed.len() < OPEN_INLINE_MAX {
            return self.key.open(&id, &sealed);
        }
        let key = self.key.clone();
        match tokio::task::spawn_blocking(move || key.open(&id, &sealed)).await {
            Ok(r) => r,
            Err(e) => Err(coffer_pack::PackError::Io(format!("open task failed: {e}"))),
        }
    }

    async fn fetch_blob(&self, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        let loc = self.location(id).await?;
        let info = self.pack(loc.pack).await?;
        if !self.is_degraded(loc.pack) {
            if let Some(sealed) = self.read_healthy(&info, &loc).await? {
                match self.open(id, sealed).await {
                    Ok(plain) => return Ok(plain),
                    Err(e) => {
                        tracing::warn!(chunk = %id, pack = %loc.pack, error = %e, "blob fails verification; reconstructing its pack")
                    }
                }
            }
        }
        let pack = self.rebuilt_pack(&info).await?;
        // The location comes from the catalog: check it before slicing.
        let range = usize::try_from(loc.offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(loc.len as usize)?))
            .and_then(|r| pack.get(r));
        let sealed = range.ok_or_else(|| ClientError::DataLoss {
            pack: loc.pack,
            reason: format!("chunk {id} lies outside the reconstructed pack"),
        })?;
        self.open(id, sealed.to_vec()).await.map_err(|e| ClientError::DataLoss {
            pack: loc.pack,
            reason: format!("chunk {id}, after reconstruction: {e}"),
        })
    }
}

impl BlobSource for ClusterSource {
    async fn prepare(&self, ids: Vec<ChunkId>) -> Result<(), ClientError> {
        self.lookup(&ids).await
    }

    async fn fetch(&self, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        self.fetch_blob(id).await
    }

    fn health(&self) -> (u64, Vec<String>) {
        let h = lock(&self.health);
        (h.degraded.len() as u64, h.bad_shards.iter().cloned().collect())
    }
}

/// The parent snapshot's trees for the walker, which runs on a plain thread
/// and so waits on the async source through the runtime handle.
pub(crate) struct ParentTrees {
    pub source: Arc<ClusterSource>,
    pub handle: tokio::runtime::Handle,
}

impl TreeLoader for ParentTrees {
    fn load_tree(&self, id: &ChunkId) -> Result<Tree, ClientError> {
        self.handle.block_on(crate::restore::load_tree(&*self.source, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilt_cache_evicts_the_least_recent() {
        let mut c = RebuiltCache::default();
        let ids: Vec<PackId> = (0..=REBUILT_PACKS as u8).map(|i| PackId([i; 16])).collect();
        let first = c.cell(ids[0]);
        for id in &ids[1..REBUILT_PACKS] {
            c.cell(*id);
        }
        // Touch the first so that the second becomes the oldest.
        assert!(Arc::ptr_eq(&first, &c.cell(ids[0])));
        c.cell(ids[REBUILT_PACKS]);
        assert_eq!(c.cells.len(), REBUILT_PACKS);
        assert!(c.cells.contains_key(&ids[0]));
        assert!(!c.cells.contains_key(&ids[1]));
    }
}
