//! `coffer check`: verifying a repository's catalog and, with `read_data`,
//! its data end to end.
//!
//! The catalog check reads every snapshot's reference list (an unencrypted
//! refs pack) and checks that each chunk it names is in the chunk index,
//! that every pack holding them has a record with a full placement, and that
//! every shard is present on its node. Reading the data fetches every shard
//! of the chosen packs whole, checks each against the checksum in the pack
//! record, reconstructs the pack when at least k shards are good, and opens
//! (decrypts, authenticates, re-hashes) every blob in it. A pack with fewer
//! than k good shards is lost; the snapshots that reference any chunk in a
//! lost pack, or whose reference list is lost, are named. The invariant kept:
//! check never writes anything, and never calls a pack healthy on the
//! strength of a shard it did not verify.

use std::collections::{BTreeSet, HashMap, HashSet};

use coffer_erasure::Codec;
use coffer_pack::decode_refs;
use coffer_proto::pb;
use coffer_types::{ChunkId, ChunkLocation, PackId, PackKind, PackRecord, ShardIndex, SnapshotId};
use futures::future::join_all;
use serde::Serialize;

use coffer_types::RepoName;

use crate::repo::Repository;
use crate::ClientError;
use coffer_rpc::MetaClient;
use coffer_rpc::ShardPool;

/// Chunk entries asked for per ListChunks page.
const LIST_PAGE: u32 = 20_000;
/// Pack records asked for per GetPacks call.
const GETPACKS_BATCH: usize = 1_000;

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Read, decode and authenticate the data, not only the catalog.
    pub read_data: bool,
    /// With `read_data`, the percentage of data packs to read (chosen by
    /// pack id, so repeated runs with the same percentage read the same
    /// packs); 100 reads all. Reference lists are always read whole.
    pub subset_percent: f64,
}

/// The state of one pack that is not fully healthy.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PackProblem {
    pub pack: String,
    pub kind: &'static str,
    /// Shards verified good, shards needed, shards placed.
    pub good: usize,
    pub needed: usize,
    pub total: usize,
    pub bad_shards: Vec<String>,
}

/// What a check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub packs: u64,
    pub chunks: u64,
    pub packs_read: u64,
    pub blobs_read: u64,
    /// Blobs read and authenticated, by the key epoch each was sealed in.
    pub blob_epochs: std::collections::BTreeMap<u32, u64>,
    /// Packs that lost shards but keep at least k good: rebuild restores them.
    pub repairable: Vec<PackProblem>,
    /// Packs with fewer than k good shards: their data is gone.
    pub lost: Vec<PackProblem>,
    /// Catalog inconsistencies and blobs that failed authentication.
    pub errors: Vec<String>,
    /// Snapshots that cannot be restored whole.
    pub affected_snapshots: Vec<String>,
}

impl CheckReport {
    /// True when nothing is lost or inconsistent (repairable packs are
    /// reported but do not fail the check).
    pub fn data_intact(&self) -> bool {
        self.lost.is_empty() && self.errors.is_empty() && self.affected_snapshots.is_empty()
    }
}

/// A pack record with the address of each shard's node.
pub(crate) struct Placed {
    pub record: PackRecord,
    pub addrs: Vec<Option<String>>,
}

/// The outcome of reading a pack's shards.
pub(crate) struct Read {
    pub good: usize,
    pub bad: Vec<String>,
    /// The pack's bytes, when at least k shards were good.
    pub bytes: Option<Vec<u8>>,
}

impl Repository {
    pub async fn check(&self, opts: &CheckOptions) -> Result<CheckReport, ClientError> {
        let mut report = CheckReport::default();
        let snaps = self.snapshots().await?;
        report.snapshots = snaps.len() as u64;
        let index = chunk_index(self.meta(), self.name()).await?;
        report.chunks = index.len() as u64;
        let mut pack_ids: BTreeSet<PackId> = index.values().map(|l| l.pack).collect();
        pack_ids.extend(snaps.iter().map(|s| s.refs_pack));
        report.packs = pack_ids.len() as u64;
        let packs = placed_packs(self.meta(), &pack_ids).await?;
        let pool = ShardPool::default();
        // Progress counts the packs read whole (every reference list, and
        // with read_data the chosen data packs) and their shard bytes.
        let work = self.progress.as_deref();
        let reads = |p: &&Placed| {
            p.record.kind == PackKind::Refs || (opts.read_data && chosen(&p.record.id, opts.subset_percent))
        };
        if let Some(w) = work {
            let to_read: Vec<&Placed> = packs.values().filter(reads).collect();
            let bytes = to_read.iter().map(|p| shard_bytes(&p.record)).fold(0u64, u64::saturating_add);
            w.begin("read packs", crate::work::Unit::Packs, Some(to_read.len() as u64), Some(bytes));
        }

        // Chunks that cannot be read back, and packs whose loss was recorded.
        let mut lost_chunks: HashSet<ChunkId> = HashSet::new();
        let mut lost_packs: HashSet<PackId> = HashSet::new();
        for id in &pack_ids {
            if !packs.contains_key(id) {
                report.errors.push(format!("pack {id} is referenced but has no catalog record"));
                lost_packs.insert(*id);
            }
        }
        for p in packs.values() {
            let total = p.record.params.total();
            if p.record.shards.len() != total
                || p.record.shards.iter().enumerate().any(|(i, s)| s.index.0 as usize != i)
            {
                report
                    .errors
                    .push(format!("pack {}: placement does not list its {total} shards in order", p.record.id));
            }
            if p.addrs.iter().any(Option::is_none) {
                report
                    .errors
                    .push(format!("pack {}: a shard is placed on a node the cluster does not know", p.record.id));
            }
        }

        // Reference lists: always read, they map chunks to snapshots.
        let mut refs: HashMap<SnapshotId, Vec<ChunkId>> = HashMap::new();
        let mut affected: BTreeSet<SnapshotId> = BTreeSet::new();
        for s in &snaps {
            let Some(p) = packs.get(&s.refs_pack) else {
                affected.insert(s.id);
                continue;
            };
            let read = read_pack(&pool, p).await;
            counted(work, p);
            note(&mut report, p, &read);
            match read.bytes.as_deref().map(decode_refs) {
                Some(Ok(ids)) => {
                    refs.insert(s.id, ids);
                }
                Some(Err(e)) => {
                    report.errors.push(format!("snapshot {}: reference list {}: {e}", s.id, s.refs_pack));
                    affected.insert(s.id);
                }
                None => {
                    lost_packs.insert(s.refs_pack);
                    affected.insert(s.id);
                }
            }
            report.packs_read += 1;
        }
        for (snap, ids) in &refs {
            let missing = ids.iter().filter(|c| !index.contains_key(c)).count();
            if missing > 0 {
                report.errors.push(format!("snapshot {snap}: {missing} referenced chunks are not in the chunk index"));
                affected.insert(*snap);
            }
        }

        // Data packs: presence of every shard, or with read_data the whole
        // pack, decoded and authenticated.
        let mut by_pack: HashMap<PackId, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
        for (id, loc) in &index {
            by_pack.entry(loc.pack).or_default().push((*id, *loc));
        }
        for p in packs.values().filter(|p| p.record.kind != PackKind::Refs) {
            let chunks = by_pack.get(&p.record.id).map(Vec::as_slice).unwrap_or_default();
            if opts.read_data && chosen(&p.record.id, opts.subset_percent) {
                let read = read_pack(&pool, p).await;
                counted(work, p);
                report.packs_read += 1;
                note(&mut report, p, &read);
                match read.bytes {
                    None => {
                        lost_packs.insert(p.record.id);
                        lost_chunks.extend(chunks.iter().map(|(c, _)| *c));
                    }
                    Some(bytes) => {
                        for (id, loc) in chunks {
                            report.blobs_read += 1;
                            let sealed = usize::try_from(loc.offset)
                                .ok()
                                .and_then(|o| bytes.get(o..o.checked_add(loc.len as usize)?));
                            let opened = match sealed {
                                Some(sealed) => self.key.open(id, sealed).map(|_| sealed).map_err(|e| e.to_string()),
                                None => Err("lies outside the pack".to_string()),
                            };
                            match opened {
                                // An opened blob's header has already parsed.
                                Ok(sealed) => {
                                    if let Ok(epoch) = coffer_pack::blob_epoch(sealed) {
                                        *report.blob_epochs.entry(epoch).or_default() += 1;
                                    }
                                }
                                Err(e) => {
                                    report.errors.push(format!("chunk {id} in pack {}: {e}", p.record.id));
                                    lost_chunks.insert(*id);
                                }
                            }
                        }
                    }
                }
            } else {
                let present = presence(&pool, p).await;
                note(&mut report, p, &present);
                if present.good < p.record.params.k() {
                    lost_packs.insert(p.record.id);
                    lost_chunks.extend(chunks.iter().map(|(c, _)| *c));
                }
            }
        }
        for (id, loc) in &index {
            if lost_packs.contains(&loc.pack) {
                lost_chunks.insert(*id);
            }
        }
        for (snap, ids) in &refs {
            if ids.iter().any(|c| lost_chunks.contains(c)) {
                affected.insert(*snap);
            }
        }
        report.affected_snapshots = affected.iter().map(|s| s.to_hex()).collect();
        Ok(report)
    }
}

/// The shard bytes reading `p` whole fetches.
fn shard_bytes(p: &PackRecord) -> u64 {
    p.shard_len.saturating_mul(p.shards.len() as u64)
}

/// Counts a pack read whole into the progress.
fn counted(work: Option<&crate::work::Work>, p: &Placed) {
    crate::work::add_item(work);
    crate::work::add_bytes(work, shard_bytes(&p.record));
}

/// The whole chunk index of a repository (no key needed).
pub(crate) async fn chunk_index(
    meta: &MetaClient,
    repo: &RepoName,
) -> Result<HashMap<ChunkId, ChunkLocation>, ClientError> {
    let mut out = HashMap::new();
    let mut after = Vec::new();
    loop {
        let req = pb::ListChunksRequest { repo: repo.to_string(), after: after.clone(), limit: LIST_PAGE };
        let resp = meta
            .call_maintenance("ListChunks", |mut c| {
                let req = req.clone();
                async move { c.list_chunks(req).await }
            })
            .await?;
        for l in &resp.chunks {
            let (id, loc) = coffer_proto::location_from_pb(l)
                .map_err(|e| ClientError::BadResponse { what: "ListChunks", reason: e.to_string() })?;
            after = id.0.to_vec();
            out.insert(id, loc);
        }
        if !resp.more || resp.chunks.is_empty() {
            return Ok(out);
        }
    }
}

/// The records of `ids` that exist, with their shards' node addresses.
pub(crate) async fn placed_packs(
    meta: &MetaClient,
    ids: &BTreeSet<PackId>,
) -> Result<HashMap<PackId, Placed>, ClientError> {
    let ids: Vec<PackId> = ids.iter().copied().collect();
    let mut out = HashMap::new();
    for batch in ids.chunks(GETPACKS_BATCH) {
        let req = pb::GetPacksRequest { pack_ids: batch.iter().map(|p| p.0.to_vec()).collect() };
        let resp = meta
            .call("GetPacks", |mut c| {
                let req = req.clone();
                async move { c.get_packs(req).await }
            })
            .await?;
        let nodes: HashMap<u64, String> = resp.nodes.into_iter().map(|n| (n.id, n.addr)).collect();
        for p in resp.packs {
            let record = PackRecord::try_from(p)
                .map_err(|e| ClientError::BadResponse { what: "GetPacks", reason: e.to_string() })?;
            let addrs = record.shards.iter().map(|s| nodes.get(&s.node.0).filter(|a| !a.is_empty()).cloned()).collect();
            out.insert(record.id, Placed { record, addrs });
        }
    }
    Ok(out)
}

/// Records a pack that is not fully healthy in the report.
fn note(report: &mut CheckReport, p: &Placed, read: &Read) {
    let (k, total) = (p.record.params.k(), p.record.params.total());
    if read.good == total {
        return;
    }
    let problem = PackProblem {
        pack: p.record.id.to_hex(),
        kind: match p.record.kind {
            PackKind::Data => "data",
            PackKind::Tree => "tree",
            PackKind::Refs => "refs",
        },
        good: read.good,
        needed: k,
        total,
        bad_shards: read.bad.clone(),
    };
    if read.good >= k {
        report.repairable.push(problem);
    } else {
        report.lost.push(problem);
    }
}

/// Whether a pack falls in the `percent` subset, by its id.
fn chosen(id: &PackId, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    let v = u16::from_be_bytes([id.0[0], id.0[1]]) as f64;
    v < percent / 100.0 * 65_536.0
}

/// Asks every node for the first byte of its shard: the node verifies the
/// first block of the shard file against its checksum before answering.
async fn presence(pool: &ShardPool, p: &Placed) -> Read {
    let asks = p.record.shards.iter().zip(&p.addrs).map(|(s, addr)| async move {
        match addr {
            None if !s.is_placed() => Err(format!("shard {} not placed yet (short pack)", s.index.0)),
            None => Err(format!("shard {} on unknown node {}", s.index.0, s.node)),
            Some(a) => pool
                .get(a, p.record.id, s.index, 0, Some(1))
                .await
                .map(|_| ())
                .map_err(|e| format!("shard {} on node {}: {e}", s.index.0, s.node)),
        }
    });
    let results = join_all(asks).await;
    let bad: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    Read { good: p.record.shards.len().saturating_sub(bad.len()), bad, bytes: None }
}

/// Fetches every shard of a pack whole, keeps those that match the record's
/// checksum, and rebuilds the pack from them when there are at least k.
pub(crate) async fn read_pack(pool: &ShardPool, p: &Placed) -> Read {
    let rec = &p.record;
    let asks = rec.shards.iter().zip(&p.addrs).map(|(s, addr)| async move {
        let body = match addr {
            None if !s.is_placed() => Err("not placed yet (short pack)".to_string()),
            None => Err("its node is unknown".to_string()),
            Some(a) => pool.get(a, rec.id, s.index, 0, None).await.map_err(|e| e.to_string()),
        };
        let verified = body.and_then(|b| {
            if b.len() as u64 != rec.shard_len {
                Err(format!("{} bytes, the record says {}", b.len(), rec.shard_len))
            } else if *blake3::hash(&b).as_bytes() != s.checksum.0 {
                Err("checksum mismatch".to_string())
            } else {
                Ok(b)
            }
        });
        (s.index, s.node, verified)
    });
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; rec.params.total()];
    let mut bad = Vec::new();
    for (ShardIndex(i), node, r) in join_all(asks).await {
        match r {
            Ok(b) => {
                if let Some(slot) = shards.get_mut(i as usize) {
                    *slot = Some(b);
                }
            }
            Err(e) => bad.push(format!("shard {i} on node {node}: {e}")),
        }
    }
    let good = shards.iter().filter(|s| s.is_some()).count();
    if good < rec.params.k() {
        return Read { good, bad, bytes: None };
    }
    let (params, pack_len) = (rec.params, rec.pack_len);
    let joined = tokio::task::spawn_blocking(move || {
        let codec = Codec::new(params)?;
        codec.reconstruct_data(&mut shards)?;
        codec.join(&shards, pack_len)
    })
    .await;
    match joined {
        Ok(Ok(bytes)) => Read { good, bad, bytes: Some(bytes) },
        Ok(Err(e)) => {
            bad.push(format!("reconstruction failed: {e}"));
            Read { good: 0, bad, bytes: None }
        }
        Err(e) => {
            bad.push(format!("reconstruction task failed: {e}"));
            Read { good: 0, bad, bytes: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_stable_and_bounded() {
        let ids: Vec<PackId> = (0..=255u8).map(|i| PackId([i; 16])).collect();
        assert!(ids.iter().all(|p| chosen(p, 100.0)));
        assert!(!ids.iter().any(|p| chosen(p, 0.0)));
        let half = ids.iter().filter(|p| chosen(p, 50.0)).count();
        assert_eq!(half, 128);
    }
}
