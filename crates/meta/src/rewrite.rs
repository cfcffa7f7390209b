//! Pack rewrites by the leader's collector: reclaiming the space of packs
//! that are mostly dead, without any repository key.
//!
//! A blob is an opaque, authenticated byte range of its pack, so the live
//! blobs of a pack can be copied as they are: the collector reads the pack
//! (its data shards, or any k), copies the byte ranges the chunk index
//! still points at into a new pack, encodes it under the repository's
//! current policy, places it with `coffer_placement` under the site rule,
//! puts every shard through `ShardPool`, and only then commits the new pack
//! and the moved entries in one Raft entry (`GcRewrite`). The old pack is
//! then dropped by the collector's usual `DropPacks`, which the state
//! machine allows only once nothing points into it, and its shards deleted.
//!
//! ```text
//!   old pack ──read k shards──► live ranges ──► new pack ──encode, place, put k+m──► storage nodes
//!                                                   │
//!                                                   └──GcRewrite (pack + moved entries)──► Raft
//!   DropPacks(old) ──► delete old shards
//! ```
//!
//! The invariant kept: no chunk entry ever points at data that is not
//! wholly stored. A leader that stops half-way leaves either shards of a
//! copy never committed (orphans, which storage nodes collect) or a
//! committed copy whose old pack the next run drops; the next leader
//! recomputes what is still mostly dead and goes on. Rewrites are
//! throttled to `MetaConfig::gc_rewrite_bandwidth` shard bytes a second.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_erasure::Codec;
use coffer_placement::{Candidate, Policy};
use coffer_rpc::{ShardPool, ShardPut};
use coffer_types::{
    ChunkId, ChunkLocation, Hash32, NodeRecord, NodeState, PackId, PackKind, PackRecord, RepoName, RepoRecord,
    ShardIndex, ShardRecord,
};
use coffer_worker::StopSignal;

use crate::command::{Command, MAX_CHUNKS_PER_COMMAND};
use crate::gc::GcRunRecord;
use crate::kv;
use crate::node::{now_ms, MetaNode};
use crate::MetaError;

/// A data pack is rewritten once at least this share of its bytes is dead.
pub(crate) const REWRITE_DEAD_SHARE: f64 = 0.5;

/// Whether a data pack of `pack_len` bytes with `live` bytes still indexed
/// is mostly dead (a wholly dead one is dropped, not rewritten).
pub(crate) fn mostly_dead(pack_len: u64, live: u64) -> bool {
    live > 0 && 1.0 - live as f64 / pack_len.max(1) as f64 >= REWRITE_DEAD_SHARE
}

/// Keeps rewrites to a bandwidth: after each copy, waits until the bytes
/// written so far fit the budget since the first.
pub(crate) struct Throttle {
    bytes_per_s: u64,
    start: tokio::time::Instant,
    written: u64,
}

impl Throttle {
    pub(crate) fn new(bytes_per_s: u64) -> Self {
        Self { bytes_per_s: bytes_per_s.max(1), start: tokio::time::Instant::now(), written: 0 }
    }

    async fn spend(&mut self, bytes: u64, stop: &StopSignal) {
        self.written += bytes;
        let due = self.start + Duration::from_secs_f64(self.written as f64 / self.bytes_per_s as f64);
        while tokio::time::Instant::now() < due && !stop.is_stopped() {
            let left = due.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        }
    }
}

/// Rewrites every mostly dead data pack of `repo`. Called only with no
/// round open, so no entry is condemned (the state machine leaves any that
/// became so in the old pack). A pack that cannot be rewritten is kept
/// whole and reported; leadership lost ends the run.
pub(crate) async fn rewrite_mostly_dead(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    repo: &RepoName,
    rec: &mut GcRunRecord,
    throttle: &mut Throttle,
    stop: &StopSignal,
) -> Result<(), MetaError> {
    let tree = n.sm.tree();
    n.read_barrier().await?;
    let Some(record) = kv::get::<RepoRecord>(tree, "repo", &kv::repo_key(repo))? else { return Ok(()) };
    let mut live: HashMap<PackId, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
    let prefix = kv::chunk_prefix(repo);
    for item in tree.scan_prefix(&prefix) {
        let (k, v) = item?;
        let id = ChunkId::from_slice(&k[prefix.len()..])
            .map_err(|e| MetaError::Codec { what: "chunk index key", reason: e.to_string() })?;
        let loc: ChunkLocation = kv::decode("chunk", &v)?;
        live.entry(loc.pack).or_default().push((id, loc));
    }
    let mut todo = Vec::new();
    for p in kv::scan::<PackRecord>(tree, "pack", kv::PACK_PREFIX)? {
        if p.repo != *repo || p.kind != PackKind::Data {
            continue;
        }
        let bytes: u64 = live.get(&p.id).map_or(0, |l| l.iter().map(|(_, loc)| loc.len as u64).sum());
        if mostly_dead(p.pack_len, bytes) {
            todo.push(p);
        }
    }
    n.gc.rewrite_pending.fetch_add(todo.len() as u64, Relaxed);
    for p in todo {
        if stop.is_stopped() {
            return Err(MetaError::Raft("stopping".into()));
        }
        let entries = live.remove(&p.id).unwrap_or_default();
        let result = rewrite_one(n, pool, &record, &p, entries, throttle, stop).await;
        n.gc.rewrite_pending.fetch_sub(1, Relaxed);
        match result {
            Ok(written) => {
                rec.packs_rewritten += 1;
                rec.bytes_written += written;
                n.gc.packs_rewritten.fetch_add(1, Relaxed);
                n.gc.bytes_rewritten.fetch_add(written, Relaxed);
            }
            Err(e @ (MetaError::NotLeader { .. } | MetaError::RaftWrite { .. } | MetaError::ReadBarrier { .. })) => {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!(%repo, pack = %p.id, error = %e, "rewriting a mostly dead pack failed; it is kept whole");
                if !rec.error.is_empty() {
                    rec.error.push_str("; ");
                }
                rec.error.push_str(&format!("{repo}: {e}"));
            }
        }
    }
    Ok(())
}

/// Copies the live blobs of `old` into new packs of at most
/// `MAX_CHUNKS_PER_COMMAND` blobs each (so each commits in one entry) and
/// commits them; returns the shard bytes written.
async fn rewrite_one(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    repo: &RepoRecord,
    old: &PackRecord,
    mut live: Vec<(ChunkId, ChunkLocation)>,
    throttle: &mut Throttle,
    stop: &StopSignal,
) -> Result<u64, MetaError> {
    let bytes = crate::collector::read_pack(n, pool, old)
        .await
        .map_err(|reason| MetaError::GcRewrite { pack: old.id, reason })?;
    live.sort_by_key(|(_, l)| l.offset);
    let mut written = 0;
    for group in live.chunks(MAX_CHUNKS_PER_COMMAND) {
        let mut buf = Vec::with_capacity(group.iter().map(|(_, l)| l.len as usize).sum());
        let mut copies = Vec::with_capacity(group.len());
        for (id, loc) in group {
            let blob = usize::try_from(loc.offset)
                .ok()
                .and_then(|o| bytes.get(o..o.checked_add(loc.len as usize)?))
                .ok_or_else(|| MetaError::GcRewrite { pack: old.id, reason: format!("chunk {id} lies outside it") })?;
            copies.push((*id, buf.len() as u64, loc.len));
            buf.extend_from_slice(blob);
        }
        let pack = store(n, pool, repo, buf).await?;
        let chunks =
            copies.into_iter().map(|(id, offset, len)| (id, ChunkLocation { pack: pack.id, offset, len })).collect();
        let size = pack.shard_len * pack.placed() as u64;
        n.raft_write(Command::GcRewrite { repo: repo.name.clone(), from: old.id, pack, chunks, time_ms: now_ms() })
            .await?;
        written += size;
        throttle.spend(size, stop).await;
    }
    Ok(written)
}

/// Encodes `bytes` as a new data pack of `repo`, places it under the site
/// rule (or, with a site gone, on distinct nodes) and puts every shard;
/// returns its record, not yet committed.
async fn store(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    repo: &RepoRecord,
    bytes: Vec<u8>,
) -> Result<PackRecord, MetaError> {
    let tree = n.sm.tree();
    let params = repo.params;
    let id = PackId::random();
    let failed = |reason: String| MetaError::GcRewrite { pack: id, reason };
    let nodes: Vec<NodeRecord> = kv::scan(tree, "node", kv::NODE_PREFIX)?;
    let draining = kv::draining(tree)?;
    let candidates: Vec<Candidate> = nodes
        .iter()
        .filter(|r| n.liveness.state(r.id) == NodeState::Up && !draining.contains_key(&r.id))
        .map(|r| n.placement_candidate(r))
        .collect();
    let policy = Policy::new(params);
    // No short copies: a rewrite can wait for the nodes to come back.
    let placement = match coffer_placement::place(&policy, &candidates, id.as_bytes()) {
        Err(coffer_placement::PlacementError::NotEnoughSites { .. }) => {
            coffer_placement::place_relaxed(&policy, &candidates, id.as_bytes())
        }
        other => other,
    }
    .map_err(|e| failed(format!("cannot place a {params} copy: {e}")))?;
    if placement.nodes.len() != params.total() {
        return Err(failed(format!("only {} of {} shards could be placed", placement.nodes.len(), params.total())));
    }
    let pack_len = bytes.len() as u64;
    let shards = tokio::task::spawn_blocking(move || {
        let codec = Codec::new(params).map_err(|e| e.to_string())?;
        Ok::<_, String>(codec.encode(&bytes))
    })
    .await
    .map_err(|e| failed(format!("encoding task: {e}")))?
    .map_err(failed)?;
    let checksums: Vec<Hash32> = shards.iter().map(|s| Hash32(*blake3::hash(s).as_bytes())).collect();
    let (k, m) = (params.k() as u32, params.m() as u32);
    let puts = placement.nodes.iter().zip(shards.into_iter().zip(&checksums)).enumerate().map(
        |(i, (node, (body, checksum)))| {
            let addr = nodes.iter().find(|r| r.id == *node).map(|r| r.addr.clone()).unwrap_or_default();
            let put = ShardPut { pack: id, index: ShardIndex(i as u8), k, m, checksum: *checksum };
            async move { (i, *node, pool.put(&addr, put, Bytes::from(body)).await) }
        },
    );
    let mut bad = Vec::new();
    for (i, node, r) in futures::future::join_all(puts).await {
        if let Err(e) = r {
            bad.push(format!("shard {i} on node {node}: {e}"));
        }
    }
    if !bad.is_empty() {
        return Err(failed(format!("shards not stored: {}", bad.join("; "))));
    }
    Ok(PackRecord {
        id,
        repo: repo.name.clone(),
        kind: PackKind::Data,
        params,
        pack_len,
        shard_len: params.shard_len(pack_len),
        shards: placement
            .nodes
            .iter()
            .zip(&checksums)
            .enumerate()
            .map(|(i, (node, checksum))| ShardRecord { index: ShardIndex(i as u8), node: *node, checksum: *checksum })
            .collect(),
    })
}
