//! Storing one pack: placement, erasure coding, shard upload, commit.
//!
//! ```text
//!   pack bytes ──AllocatePack──► pack id + a target per placed shard (k+m, or fewer: short)
//!        │
//!        └──Codec::encode_parity──► k data shards (slices of the padded pack) + m parity ──BLAKE3──► checksums
//!                               │
//!                               └──PutShard to every target, all at once──► acks ≥ min_shards? ──CommitPack──► PackRecord
//!                                                                     │ no
//!                                                                     └──► AllocatePack again, excluding the nodes that failed
//! ```
//!
//! The invariant kept here: the record names a node for a shard only after
//! that node acknowledged it, verified and durable. Every shard is computed
//! and checksummed, placed or not, so a shard the pack is committed without
//! (no target, or its put failed) is recorded unplaced with its checksum,
//! and the repair planner writes it later, verified bit for bit. A pack is
//! committed only with at least the repository's `min_shards` (never fewer
//! than k) acknowledged. A failed attempt leaves at most orphan shards
//! under a pack id the catalog never heard of, which storage-side garbage
//! collection removes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coffer_erasure::Codec;
use coffer_proto::{location_to_pb, pb};
use coffer_types::{
    ChunkId, ChunkLocation, ErasureParams, Hash32, NodeId, PackId, PackKind, PackRecord, RepoName, SessionId,
    ShardIndex, ShardRecord,
};
use tonic::Code;

use crate::stats::Counters;
use crate::ClientError;
use coffer_rpc::MetaClient;
use coffer_rpc::{ShardPool, ShardPut};

/// How many placements a pack gets before the backup gives up on it.
const MAX_PLACEMENT_ATTEMPTS: u32 = 5;

/// What the pipeline needs to store packs for one backup session.
pub(crate) struct PackWriter {
    pub meta: Arc<MetaClient>,
    pub repo: RepoName,
    pub session: SessionId,
    pub shards: Arc<ShardPool>,
    pub counters: Arc<Counters>,
}

/// One blob of a pack: its id and byte range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub len: u32,
}

/// A placement the catalog proposed.
struct Allocation {
    pack: PackId,
    params: ErasureParams,
    /// `(node, address)` per shard index, in index order; `None` for a
    /// shard of a short pack that goes nowhere for now.
    targets: Vec<Option<(NodeId, String)>>,
    /// The fewest acknowledged shards the pack may be committed with.
    min_shards: usize,
}

/// The shards of a pack under one set of code parameters.
struct Encoded {
    params: ErasureParams,
    /// The padded pack buffer the data shards are slices of.
    pack: Bytes,
    shards: Vec<Bytes>,
    checksums: Vec<Hash32>,
}

impl Encoded {
    /// The pack buffer, emptied with its capacity kept, once no shard of it
    /// is held anywhere else (a put's frames may still be in flight).
    fn into_spare_buffer(self) -> Option<Vec<u8>> {
        drop(self.shards);
        let mut buf = self.pack.try_into_mut().ok()?;
        // Emptied first, so that turning it into a `Vec` moves no byte.
        buf.clear();
        Some(Vec::from(buf))
    }
}

impl PackWriter {
    /// Stores `bytes` as a pack of `kind` holding `entries`, and returns its
    /// committed record.
    pub async fn store(
        &self,
        kind: PackKind,
        bytes: Vec<u8>,
        entries: &[PackEntry],
    ) -> Result<PackRecord, ClientError> {
        Ok(self.store_returning_buffer(kind, bytes, entries).await?.0)
    }

    /// `store`, also handing back the pack's buffer (empty, its capacity
    /// kept) when nothing else holds it any more, so that the packer fills
    /// the next pack in memory already mapped: a fresh 16 MiB buffer per
    /// pack costs a page fault every 4 KiB.
    pub async fn store_returning_buffer(
        &self,
        kind: PackKind,
        bytes: Vec<u8>,
        entries: &[PackEntry],
    ) -> Result<(PackRecord, Option<Vec<u8>>), ClientError> {
        let pack_len = bytes.len() as u64;
        let mut pending_bytes = Some(bytes);
        let mut encoded: Option<Arc<Encoded>> = None;
        let mut exclude: Vec<NodeId> = Vec::new();
        let mut last = (PackId::default(), String::new());
        for attempt in 1..=MAX_PLACEMENT_ATTEMPTS {
            let alloc = match self.allocate(&exclude).await {
                Ok(a) => a,
                Err(ClientError::Conn(e)) if e.code() == Some(Code::FailedPrecondition) && !exclude.is_empty() => {
                    // Avoiding every node that failed leaves too few: they may
                    // have been restarting, so try them again after a pause.
                    tracing::warn!(error = %e, "placement impossible without the failed nodes; retrying with them");
                    last.1 = e.to_string();
                    exclude.clear();
                    tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            last.0 = alloc.pack;
            let enc = match &encoded {
                Some(e) if e.params == alloc.params => e.clone(),
                _ => {
                    let source = match pending_bytes.take() {
                        Some(b) => b,
                        // The code parameters changed between attempts (a
                        // policy change): the data shards hold the pack.
                        None => rejoin(encoded.as_deref(), pack_len, alloc.pack)?,
                    };
                    let e = Arc::new(self.encode(alloc.pack, alloc.params, source).await?);
                    encoded = Some(e.clone());
                    e
                }
            };
            let failed = self.send(&alloc, &enc).await;
            let placed = alloc.targets.iter().flatten().count();
            // Enough acknowledged shards: commit the pack short rather than
            // place it again (the repair planner writes the rest). The
            // failed ones are recorded unplaced, never on the failed node.
            let commit_short = !failed.is_empty() && placed - failed.len() >= alloc.min_shards;
            if !failed.is_empty() && !commit_short {
                let reason = failed
                    .iter()
                    .map(|(node, index, why)| format!("shard {index} on node {node}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(pack = %alloc.pack, attempt, %reason, "shard upload failed; placing the pack again");
                exclude.extend(failed.iter().map(|(node, _, _)| *node));
                exclude.sort_unstable();
                exclude.dedup();
                last.1 = reason;
                continue;
            }
            let record = PackRecord {
                id: alloc.pack,
                repo: self.repo.clone(),
                kind,
                params: alloc.params,
                pack_len,
                shard_len: alloc.params.shard_len(pack_len),
                shards: alloc
                    .targets
                    .iter()
                    .zip(&enc.checksums)
                    .enumerate()
                    .map(|(i, (target, checksum))| ShardRecord {
                        index: ShardIndex(i as u8),
                        node: match target {
                            Some((node, _)) if !failed.iter().any(|(_, index, _)| index.0 as usize == i) => *node,
                            _ => NodeId::UNPLACED,
                        },
                        checksum: *checksum,
                    })
                    .collect(),
            };
            if commit_short {
                tracing::warn!(pack = %alloc.pack, placed = record.placed(), "some shard uploads failed; committing the pack short, repair writes the rest");
            }
            self.commit(&record, entries).await?;
            self.counters.packs.add(1);
            if record.placed() < alloc.params.total() {
                self.counters.packs_short.add(1);
            }
            self.counters.bytes_stored_raw.add(record.shard_len.saturating_mul(record.placed() as u64));
            drop(enc);
            let spare = encoded.take().and_then(|e| Arc::try_unwrap(e).ok()).and_then(Encoded::into_spare_buffer);
            return Ok((record, spare));
        }
        Err(ClientError::UploadFailed { pack: last.0, attempts: MAX_PLACEMENT_ATTEMPTS, reason: last.1 })
    }

    async fn allocate(&self, exclude: &[NodeId]) -> Result<Allocation, ClientError> {
        let req =
            pb::AllocatePackRequest { repo: self.repo.to_string(), exclude: exclude.iter().map(|n| n.0).collect() };
        let resp = self
            .meta
            .call("AllocatePack", |mut c| {
                let req = req.clone();
                async move { c.allocate_pack(req).await }
            })
            .await?;
        parse_allocation(resp)
    }

    /// Erasure-codes the pack and checksums each shard, off the async threads.
    /// The data shards are slices of the (zero-padded) pack buffer itself;
    /// only the parity shards are new memory.
    async fn encode(&self, pack: PackId, params: ErasureParams, bytes: Vec<u8>) -> Result<Encoded, ClientError> {
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let codec = Codec::new(params).map_err(|source| ClientError::Erasure { pack, source })?;
            let (pack, shards) = split_and_encode(&codec, bytes);
            let checksums = shards.iter().map(|s| Hash32(*blake3::hash(s).as_bytes())).collect();
            let shard_bytes: u64 = shards.iter().map(|s| s.len() as u64).sum();
            counters.encode.add(start.elapsed(), shard_bytes);
            Ok(Encoded { params, pack, shards, checksums })
        })
        .await
        .map_err(|e| ClientError::task("encode pack", e))?
    }

    /// Sends every placed shard to its target at once; returns the failures.
    async fn send(&self, alloc: &Allocation, enc: &Encoded) -> Vec<(NodeId, ShardIndex, String)> {
        let start = Instant::now();
        let (k, m) = (alloc.params.k() as u32, alloc.params.m() as u32);
        let puts = alloc.targets.iter().zip(enc.shards.iter().zip(&enc.checksums)).enumerate().filter_map(
            |(i, (target, (body, checksum)))| {
                let (node, addr) = target.as_ref()?;
                let index = ShardIndex(i as u8);
                let put = ShardPut { pack: alloc.pack, index, k, m, checksum: *checksum };
                Some(async move { (*node, index, self.shards.put(addr, put, body.clone()).await) })
            },
        );
        let results = futures::future::join_all(puts).await;
        let sent: u64 =
            alloc.targets.iter().zip(&enc.shards).filter(|(t, _)| t.is_some()).map(|(_, s)| s.len() as u64).sum();
        self.counters.send.add(start.elapsed(), sent);
        results.into_iter().filter_map(|(node, index, r)| r.err().map(|e| (node, index, e.to_string()))).collect()
    }

    async fn commit(&self, record: &PackRecord, entries: &[PackEntry]) -> Result<(), ClientError> {
        let req = pb::CommitPackRequest {
            session_id: self.session.0.to_vec(),
            pack: Some(pb::Pack::from(record)),
            chunks: entries
                .iter()
                .map(|e| location_to_pb(&e.id, &ChunkLocation { pack: record.id, offset: e.offset, len: e.len }))
                .collect(),
        };
        self.meta
            .call("CommitPack", |mut c| {
                let req = req.clone();
                async move { c.commit_pack(req).await }
            })
            .await?;
        Ok(())
    }
}

/// The padded pack and its `k + m` shards, as `Codec::encode` would cut
/// them: the data shards are slices of the padded pack buffer, the parity
/// shards are computed.
fn split_and_encode(codec: &Codec, mut pack: Vec<u8>) -> (Bytes, Vec<Bytes>) {
    let parity = codec.encode_parity(&mut pack);
    let k = codec.params().k();
    let shard_len = pack.len() / k;
    let data = Bytes::from(pack);
    let shards =
        (0..k).map(|i| data.slice(i * shard_len..(i + 1) * shard_len)).chain(parity.into_iter().map(Bytes::from));
    let shards = shards.collect();
    (data, shards)
}

/// The pack bytes back from its data shards, for re-encoding under new
/// parameters.
fn rejoin(encoded: Option<&Encoded>, pack_len: u64, pack: PackId) -> Result<Vec<u8>, ClientError> {
    let enc = encoded.ok_or_else(|| ClientError::task("store pack", "neither pack bytes nor shards are at hand"))?;
    let codec = Codec::new(enc.params).map_err(|source| ClientError::Erasure { pack, source })?;
    let shards: Vec<Option<Vec<u8>>> = enc.shards.iter().map(|s| Some(s.to_vec())).collect();
    codec.join(&shards, pack_len).map_err(|source| ClientError::Erasure { pack, source })
}

/// Validates an AllocatePack answer: a pack id, sane parameters, at most
/// one target per shard index, on distinct real nodes, and at least
/// `min_shards` of them (which is at least k; a catalog that does not say
/// asks for all k + m).
fn parse_allocation(resp: pb::AllocatePackResponse) -> Result<Allocation, ClientError> {
    let bad = |reason: String| ClientError::BadResponse { what: "AllocatePack", reason };
    let pack = PackId::from_slice(&resp.pack_id).map_err(|e| bad(e.to_string()))?;
    let params = coffer_proto::params_from_pb(resp.params).map_err(|e| bad(e.to_string()))?;
    let min_shards = match resp.min_shards {
        0 => params.total(),
        n => params.check_min_shards(n).map_err(|e| bad(e.to_string()))?,
    };
    let mut targets: Vec<Option<(NodeId, String)>> = vec![None; params.total()];
    for t in resp.targets {
        let slot =
            targets.get_mut(t.index as usize).ok_or_else(|| bad(format!("target index {} out of range", t.index)))?;
        if NodeId(t.node) == NodeId::UNPLACED {
            return Err(bad(format!("shard {} targets node 0", t.index)));
        }
        if slot.replace((NodeId(t.node), t.addr)).is_some() {
            return Err(bad(format!("two targets for shard {}", t.index)));
        }
    }
    let mut nodes: Vec<NodeId> = targets.iter().flatten().map(|(n, _)| *n).collect();
    let placed = nodes.len();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.len() != placed {
        return Err(bad("two shards on one node".to_string()));
    }
    if placed < min_shards {
        return Err(bad(format!("{placed} targets for a {params} pack that needs at least {min_shards}")));
    }
    Ok(Allocation { pack, params, targets, min_shards })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(index: u32, node: u64) -> pb::Target {
        pb::Target { index, node, addr: format!("127.0.0.1:{}", 7000 + node) }
    }

    #[test]
    fn allocations_are_validated() {
        let good = pb::AllocatePackResponse {
            pack_id: vec![7; 16],
            params: Some(pb::ErasureParams { k: 2, m: 1 }),
            targets: vec![target(2, 3), target(0, 1), target(1, 2)],
            min_shards: 0,
        };
        let a = parse_allocation(good.clone()).unwrap();
        assert_eq!(a.targets.iter().flatten().map(|t| t.0 .0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(a.min_shards, 3);

        // Without min_shards every shard needs a target; with it, a short
        // placement down to that many is accepted, and never below k.
        let mut missing = good.clone();
        missing.targets.pop();
        assert!(parse_allocation(missing.clone()).is_err());
        missing.min_shards = 2;
        let short = parse_allocation(missing.clone()).unwrap();
        assert_eq!(short.targets.iter().filter(|t| t.is_none()).count(), 1);
        missing.targets.pop();
        assert!(parse_allocation(missing.clone()).is_err());
        missing.min_shards = 1;
        assert!(parse_allocation(missing).is_err(), "min_shards below k");
        let mut same_node = good.clone();
        same_node.targets[0].node = 1;
        assert!(parse_allocation(same_node).is_err());
        let mut node_zero = good.clone();
        node_zero.targets[0].node = 0;
        assert!(parse_allocation(node_zero).is_err());
        let mut dup = good.clone();
        dup.targets[0].index = 0;
        assert!(parse_allocation(dup).is_err());
        let mut out_of_range = good.clone();
        out_of_range.targets[0].index = 9;
        assert!(parse_allocation(out_of_range).is_err());
        let mut bad_id = good.clone();
        bad_id.pack_id = vec![1];
        assert!(parse_allocation(bad_id).is_err());
        let mut bad_params = good;
        bad_params.params = Some(pb::ErasureParams { k: 0, m: 1 });
        assert!(parse_allocation(bad_params).is_err());
    }

    #[test]
    fn shards_share_the_pack_and_match_the_codec() {
        for (k, m) in [(4, 2), (3, 2), (1, 1)] {
            let codec = Codec::new(ErasureParams::new(k, m).unwrap()).unwrap();
            for len in [0usize, 1, 1001, 4096] {
                let pack: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
                let (_, shards) = split_and_encode(&codec, pack.clone());
                let expected: Vec<Bytes> = codec.encode(&pack).into_iter().map(Bytes::from).collect();
                assert_eq!(shards, expected, "{k}+{m}, {len} bytes");
            }
        }
    }

    #[test]
    fn the_pack_buffer_comes_back_once_no_shard_holds_it() {
        let params = ErasureParams::new(4, 2).unwrap();
        let codec = Codec::new(params).unwrap();
        let filled = || {
            let mut pack = Vec::with_capacity(1 << 20);
            pack.extend((0..100_001u32).map(|i| (i % 251) as u8));
            pack
        };
        let encode = |pack| {
            let (pack, shards) = split_and_encode(&codec, pack);
            Encoded { params, pack, shards, checksums: Vec::new() }
        };
        // A shard still in flight somewhere: nothing comes back.
        let enc = encode(filled());
        let in_flight = enc.shards[1].clone();
        assert!(enc.into_spare_buffer().is_none());
        drop(in_flight);

        let pack = filled();
        let (addr, cap) = (pack.as_ptr(), pack.capacity());
        let spare = encode(pack).into_spare_buffer().expect("no shard is held");
        // The same allocation, emptied, its capacity kept.
        assert_eq!((spare.as_ptr(), spare.capacity(), spare.len()), (addr, cap, 0));
    }

    #[test]
    fn shards_rejoin_into_the_pack() {
        let params = ErasureParams::new(3, 2).unwrap();
        let pack: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let codec = Codec::new(params).unwrap();
        let shards = codec.encode(&pack);
        let enc = Encoded {
            params,
            pack: Bytes::new(),
            checksums: shards.iter().map(|s| Hash32(*blake3::hash(s).as_bytes())).collect(),
            shards: shards.into_iter().map(Bytes::from).collect(),
        };
        assert_eq!(rejoin(Some(&enc), pack.len() as u64, PackId::default()).unwrap(), pack);
        assert!(rejoin(None, 10, PackId::default()).is_err());
    }
}
