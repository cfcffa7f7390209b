//! Reading blobs back from the cluster, healthy or degraded.
//!
//! ```text
//!   chunk id ──LookupChunks──► (pack, offset, len) ──GetPacks──► pack record + node addresses
//!      │
//!      ├─ healthy: locate(range) ──► GetShard on the 1-2 data shards ──► open (authenticate + re-hash)
//!      │    (a restore's batch: neighbouring blobs of one data shard ──► one ranged GetShard ──► open each)
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
use std::time::Instant;

use coffer_erasure::{locate, Codec, ShardRange};
use coffer_pack::RepoKey;
use coffer_proto::{location_from_pb, pb};
use coffer_types::{ChunkId, ChunkLocation, NodeId, PackId, PackRecord, RepoName, ShardIndex};
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::pipeline::LOOKUP_BATCH;
use crate::source::{deliver_all, BadShard, BlobSource, Deliver};
use crate::stats::RestoreCounters;
use crate::ClientError;
use coffer_rpc::MetaClient;
use coffer_rpc::{ShardFailure, ShardPool};

mod batch;
mod degraded;
mod locate;

use batch::batches_by_span;
use degraded::RebuiltCache;

/// Reconstructed packs kept for the blobs that follow.
const REBUILT_PACKS: usize = 4;
/// Pack ids per GetPacks call.
const GETPACKS_BATCH: usize = 1000;
/// Locations cached before the map is reset; a miss costs one lookup.
const MAX_LOCATIONS: usize = 2_000_000;
/// Blobs at least this large are opened on a blocking thread.
const OPEN_INLINE_MAX: usize = 64 * 1024;
/// The longest shard range a restore batch reads in one call.
const MAX_SPAN: u64 = 4 << 20;
/// Unwanted bytes between two blobs of a batch that are read through
/// rather than split into two calls.
const MAX_GAP: u64 = 256 << 10;

/// A storage node as a pack record's placement names it.
#[derive(Clone, Debug)]
struct NodeRef {
    id: NodeId,
    addr: Option<String>,
    down: bool,
    /// Its site, for the bytes a restore reads across sites.
    site: String,
}

/// A pack record with where each of its shards is.
#[derive(Debug)]
struct PackInfo {
    record: PackRecord,
    /// One entry per shard index.
    nodes: Vec<NodeRef>,
}

/// What went wrong during reads, for the summary.
#[derive(Default)]
struct Health {
    degraded: HashSet<PackId>,
    bad_shards: Vec<BadShard>,
    /// Shards found corrupt or absent, to report to the catalog for repair.
    damaged: BTreeSet<(NodeId, PackId, ShardIndex, String)>,
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
    /// The reader's site, if known (see `with_site`).
    site: Option<String>,
    /// Shard bytes read, by the site of the node they came from.
    read_by_site: Mutex<HashMap<String, u64>>,
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
            site: None,
            read_by_site: Mutex::default(),
        }
    }

    /// Names the reader's own site (`--site`, `COFFER_SITE`): shard bytes
    /// read from nodes elsewhere count as sent across sites.
    pub fn with_site(mut self, site: Option<String>) -> Self {
        self.site = site;
        self
    }

    /// Counts `bytes` of shard data read from a node of `site`.
    fn count_read(&self, site: &str, bytes: usize) {
        *lock(&self.read_by_site).entry(site.to_string()).or_default() += bytes as u64;
    }

    /// Shard bytes read so far, and how many of them crossed sites: those
    /// read from nodes outside the reader's site. A reader that does not
    /// know its site counts as in the site it read the most from, so the
    /// figure is a lower bound then.
    pub fn bytes_by_site(&self) -> (u64, u64) {
        let by_site = lock(&self.read_by_site);
        let total: u64 = by_site.values().sum();
        let local = match &self.site {
            Some(s) => by_site.get(s).copied().unwrap_or(0),
            None => by_site.values().copied().max().unwrap_or(0),
        };
        (total, total - local)
    }

    fn bad_shard(&self, pack: PackId, index: ShardIndex, node: Option<NodeId>, failure: ShardFailure) {
        if node == Some(NodeId::UNPLACED) {
            // A short pack's shard that no node holds yet is no fault to
            // report: the pack is read from the shards it has.
            tracing::debug!(%pack, %index, "shard not placed yet");
            return;
        }
        let mut health = lock(&self.health);
        if let (true, Some(node)) = (failure.is_damage(), node) {
            health.damaged.insert((node, pack, index, failure.to_string()));
        }
        // Many blobs share a shard: say each bad one once.
        let bad = BadShard { pack, index, node, failure };
        if !health.bad_shards.contains(&bad) {
            tracing::warn!("{bad}");
            health.bad_shards.push(bad);
        }
    }

    /// Reports the shards found corrupt or absent so far to the catalog,
    /// which has the leader repair them like those scrub finds (a report
    /// about a shard that has moved since is ignored there). Best effort:
    /// a failure is logged, the reads it concerns already succeeded.
    pub(crate) async fn report_damage(&self) {
        let damaged = std::mem::take(&mut lock(&self.health).damaged);
        let mut by_node: HashMap<NodeId, Vec<pb::BadShardReport>> = HashMap::new();
        for (node, pack, index, reason) in damaged {
            by_node.entry(node).or_default().push(pb::BadShardReport {
                pack_id: pack.0.to_vec(),
                index: u32::from(index.0),
                reason: format!("found by a read: {reason}"),
            });
        }
        for (node, shards) in by_node {
            let n = shards.len();
            let req = pb::ReportBadShardsRequest { node: node.0, shards };
            let sent = self
                .meta
                .call("ReportBadShards", |mut c| {
                    let req = req.clone();
                    async move { c.report_bad_shards(req).await }
                })
                .await;
            match sent {
                Ok(_) => tracing::info!(%node, shards = n, "reported damaged shards for repair"),
                Err(e) => tracing::warn!(%node, error = %e, "could not report damaged shards"),
            }
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
            let node = info.nodes.get(piece.index.0 as usize).ok_or((piece.index, None, ShardFailure::NotPlaced))?;
            if node.down {
                return Err((piece.index, Some(node.id), ShardFailure::NodeDown));
            }
            let addr = node
                .addr
                .as_deref()
                .ok_or_else(|| (piece.index, Some(node.id), ShardFailure::NoAddress { detail: String::new() }))?;
            let got = self
                .shards
                .get(addr, rec.id, piece.index, piece.offset, Some(piece.len))
                .await
                .map_err(|e| (piece.index, Some(node.id), e))?;
            self.count_read(&node.site, got.len());
            Ok(got)
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
                Err((index, node, bad)) => {
                    ok = false;
                    self.bad_shard(rec.id, index, node, bad);
                }
            }
        }
        Ok(ok.then_some(out))
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

    /// Neighbouring blobs of one data shard together, packs in the order
    /// the ids first name them (files complete early), shards and offsets
    /// ascending within a pack. Blobs that straddle shards, or whose
    /// location is unknown, are batches of their own.
    fn plan(&self, ids: Vec<ChunkId>) -> Vec<Vec<ChunkId>> {
        let (locs, packs) = (lock(&self.locations), lock(&self.packs));
        let mut rank: HashMap<PackId, usize> = HashMap::new();
        let mut placed = Vec::with_capacity(ids.len());
        let mut singles = Vec::new();
        for id in ids {
            match Self::single_piece(&locs, &packs, &id) {
                Some((pack, piece)) => {
                    let next = rank.len();
                    let r = *rank.entry(pack).or_insert(next);
                    placed.push((r, piece, id));
                }
                None => singles.push(vec![id]),
            }
        }
        let mut batches = batches_by_span(placed);
        batches.extend(singles);
        batches
    }

    async fn fetch_batch(
        &self,
        batch: Vec<ChunkId>,
        counters: &RestoreCounters,
        deliver: Deliver,
    ) -> Result<(), ClientError> {
        self.fetch_span(batch, counters, deliver).await
    }

    fn health(&self) -> (u64, Vec<BadShard>) {
        let h = lock(&self.health);
        (h.degraded.len() as u64, h.bad_shards.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(index: u8, offset: u64, len: u64) -> ShardRange {
        ShardRange { index: ShardIndex(index), offset, len }
    }

    #[test]
    fn batches_follow_shards_gaps_and_the_span_limit() {
        let id = |n: u8| ChunkId([n; 32]);
        let placed = vec![
            // Pack ranked 1: listed first, fetched second.
            (1, piece(0, 0, 100), id(10)),
            // Pack ranked 0, shard 0: two neighbours, then one past the gap.
            (0, piece(0, 1000, 500), id(2)),
            (0, piece(0, 0, 1000), id(1)),
            (0, piece(0, 1500 + MAX_GAP + 1, 10), id(3)),
            // Shard 1 of the same pack: its own batch even when adjacent.
            (0, piece(1, 0, 10), id(4)),
            // A run longer than the span limit is cut.
            (0, piece(2, 0, MAX_SPAN - 10), id(5)),
            (0, piece(2, MAX_SPAN - 10, 20), id(6)),
            // Within the gap: read through.
            (0, piece(3, 0, 10), id(7)),
            (0, piece(3, 10 + MAX_GAP, 10), id(8)),
        ];
        let got = batches_by_span(placed);
        let want = vec![
            vec![id(1), id(2)],
            vec![id(3)],
            vec![id(4)],
            vec![id(5)],
            vec![id(6)],
            vec![id(7), id(8)],
            vec![id(10)],
        ];
        assert_eq!(got, want);
        assert!(batches_by_span(Vec::new()).is_empty());
    }
}
