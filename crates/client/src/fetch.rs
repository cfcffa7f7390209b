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
                            // An unplaced shard reads like one on a down node.
                            down: !s.is_placed() || n.is_some_and(|n| n.state == "down"),
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
            self.shards
                .get(addr, rec.id, piece.index, piece.offset, Some(piece.len))
                .await
                .map_err(|e| (piece.index, Some(node.id), e))
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
        let mut order: Vec<usize> =
            (0..rec.params.total()).filter(|i| info.nodes.get(*i).is_some_and(|n| n.id != NodeId::UNPLACED)).collect();
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
                        Some(addr) => self.shards.get(addr, pack, ShardIndex(i as u8), 0, None).await,
                        None => Err(ShardFailure::NoAddress { detail: String::new() }),
                    };
                    (i, node.id, body)
                });
            }
            let Some((i, node, body)) = in_flight.next().await else { break };
            let index = ShardIndex(i as u8);
            match body {
                Err(bad) => self.bad_shard(rec.id, index, Some(node), bad),
                Ok(body) if body.len() as u64 != rec.shard_len => self.bad_shard(
                    rec.id,
                    index,
                    Some(node),
                    ShardFailure::Mismatch {
                        detail: format!("{} bytes, the record says {}", body.len(), rec.shard_len),
                    },
                ),
                Ok(body) => {
                    let expected = rec.shards.get(i).map(|s| s.checksum);
                    if expected.map(|c| c.0) == Some(*blake3::hash(&body).as_bytes()) {
                        shards[i] = Some(body);
                        good += 1;
                    } else {
                        let detail = "checksum mismatch".to_string();
                        self.bad_shard(rec.id, index, Some(node), ShardFailure::Mismatch { detail });
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

impl ClusterSource {
    /// Where the cached location of `id` lies, when it is one piece of one
    /// data shard: the only blobs a batch read can serve.
    fn single_piece(
        locs: &HashMap<ChunkId, ChunkLocation>,
        packs: &HashMap<PackId, Arc<PackInfo>>,
        id: &ChunkId,
    ) -> Option<(PackId, ShardRange)> {
        let loc = locs.get(id)?;
        let rec = &packs.get(&loc.pack)?.record;
        match locate(rec.params, rec.pack_len, loc.offset, loc.len as u64).ok()?.as_slice() {
            [piece] => Some((loc.pack, *piece)),
            _ => None,
        }
    }

    /// Fetches a batch the plan made: blobs of one data shard, read with a
    /// single ranged call, then opened and delivered one by one on a
    /// blocking thread. Whatever that read cannot serve (a failed read, a
    /// blob that fails authentication, a degraded pack) goes through the
    /// per-blob path.
    async fn fetch_span(
        &self,
        batch: Vec<ChunkId>,
        counters: &RestoreCounters,
        deliver: Deliver,
    ) -> Result<(), ClientError> {
        self.lookup(&batch).await?;
        let pieces: Option<Vec<(PackId, ShardRange)>> = {
            let (locs, packs) = (lock(&self.locations), lock(&self.packs));
            batch.iter().map(|id| Self::single_piece(&locs, &packs, id)).collect()
        };
        let one_shard = pieces.as_ref().and_then(|p| {
            let &(pack, first) = p.first()?;
            p.iter().all(|(q, r)| *q == pack && r.index == first.index).then_some((pack, first.index))
        });
        let (Some(pieces), Some((pack, index))) = (pieces, one_shard) else {
            return self.deliver_each(batch, counters, deliver).await;
        };
        if batch.len() == 1 || self.is_degraded(pack) {
            return self.deliver_each(batch, counters, deliver).await;
        }
        let start = pieces.iter().map(|(_, r)| r.offset).min().unwrap_or(0);
        let end = pieces.iter().map(|(_, r)| r.offset + r.len).max().unwrap_or(0);
        let info = self.pack(pack).await?;
        let Some(node) = info.nodes.get(index.0 as usize) else {
            return self.deliver_each(batch, counters, deliver).await;
        };
        let read_started = Instant::now();
        let span = match (&node.addr, node.down) {
            (_, true) => Err(ShardFailure::NodeDown),
            (None, _) => Err(ShardFailure::NoAddress { detail: String::new() }),
            (Some(addr), false) => self.shards.get(addr, pack, index, start, Some(end - start)).await,
        };
        let span = match span {
            Ok(span) => span,
            Err(bad) => {
                self.bad_shard(pack, index, Some(node.id), bad);
                // Every blob of this pack now comes from its reconstruction.
                lock(&self.health).degraded.insert(pack);
                return self.deliver_each(batch, counters, deliver).await;
            }
        };
        counters.read.add(read_started.elapsed(), span.len() as u64);
        let key = self.key.clone();
        let ranges: Vec<(ChunkId, usize, usize)> =
            batch.iter().zip(&pieces).map(|(id, (_, r))| (*id, (r.offset - start) as usize, r.len as usize)).collect();
        let (deliver, failed, opening, opened) = tokio::task::spawn_blocking(move || {
            let mut deliver = deliver;
            let (mut failed, mut opening, mut opened) = (Vec::new(), std::time::Duration::ZERO, 0u64);
            for (id, at, len) in ranges {
                let started = Instant::now();
                let plain = key.open(&id, &span[at..at + len]);
                opening += started.elapsed();
                match plain {
                    Ok(plain) => {
                        opened += plain.len() as u64;
                        deliver(id, plain)?;
                    }
                    Err(e) => failed.push((id, e)),
                }
            }
            Ok::<_, ClientError>((deliver, failed, opening, opened))
        })
        .await
        .map_err(|e| ClientError::task("open blobs", e))??;
        counters.open.add(opening, opened);
        if failed.is_empty() {
            return Ok(());
        }
        for (id, e) in &failed {
            tracing::warn!(chunk = %id, %pack, error = %e, "blob fails verification; reconstructing its pack");
        }
        lock(&self.health).degraded.insert(pack);
        self.deliver_each(failed.into_iter().map(|(id, _)| id).collect(), counters, deliver).await
    }

    /// Fetches every blob of `ids` on its own (the per-blob path, which
    /// reconstructs when it must) and delivers them.
    async fn deliver_each(
        &self,
        ids: Vec<ChunkId>,
        counters: &RestoreCounters,
        deliver: Deliver,
    ) -> Result<(), ClientError> {
        let started = Instant::now();
        let blobs: Vec<(ChunkId, Vec<u8>)> = futures::stream::iter(ids)
            .map(|id| async move { Ok::<_, ClientError>((id, self.fetch_blob(id).await?)) })
            .buffered(4)
            .try_collect()
            .await?;
        counters.read.add(started.elapsed(), blobs.iter().map(|(_, b)| b.len() as u64).sum());
        deliver_all(deliver, blobs).await.map(drop)
    }
}

/// Cuts blobs, each with the rank of its pack and its piece of one data
/// shard, into batches a single ranged read serves: same pack, same shard,
/// at most `MAX_GAP` unwanted bytes between neighbours, at most `MAX_SPAN`
/// bytes in all (a larger blob is a batch alone). Packs keep their rank
/// order; within a pack, shards and offsets ascend.
fn batches_by_span(mut placed: Vec<(usize, ShardRange, ChunkId)>) -> Vec<Vec<ChunkId>> {
    placed.sort_unstable_by_key(|(rank, piece, _)| (*rank, piece.index, piece.offset));
    let mut batches = Vec::new();
    let mut current: Vec<ChunkId> = Vec::new();
    // (pack rank, shard, first byte, end) of the batch being filled.
    let mut span: Option<(usize, ShardIndex, u64, u64)> = None;
    for (rank, piece, id) in placed {
        let end = piece.offset + piece.len;
        match &mut span {
            Some((r, index, start, span_end))
                if *r == rank
                    && *index == piece.index
                    && piece.offset <= *span_end + MAX_GAP
                    && end.max(*span_end) - *start <= MAX_SPAN =>
            {
                *span_end = end.max(*span_end);
            }
            _ => {
                if !current.is_empty() {
                    batches.push(std::mem::take(&mut current));
                }
                span = Some((rank, piece.index, piece.offset, end));
            }
        }
        current.push(id);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
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
