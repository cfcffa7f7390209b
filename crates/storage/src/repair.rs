//! Repair on a storage node: rebuilding a shard from other nodes' shards,
//! scrubbing local shards, and the bandwidth limit and counters for both.
//!
//! ```text
//!   RebuildShard(pack, i, sources) ──► GetShard whole shards from sources, in turn
//!        each verified against its recorded BLAKE3; stop at k good ones
//!        ──► Reed-Solomon reconstruct shard i ──► BLAKE3 == the pack record's? ──► store (fsync, rename)
//! ```
//!
//! Invariants: a rebuilt shard is stored only if it hashes to the checksum
//! the pack record holds, so a rebuild can never put a wrong shard in place
//! (Reed-Solomon reproduces the lost shard exactly, bit for bit). Reads for
//! rebuilds go through one token bucket per node, so the configured
//! bandwidth holds however many rebuilds run at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_erasure::Codec;
use coffer_proto::{limits, pb};
use coffer_rpc::ShardFailure;
use coffer_types::{ErasureParams, Hash32, PackId, ShardIndex};
use tokio_stream::StreamExt;

use crate::error::SourceFailure;
use crate::shard_file::ShardHeader;
use crate::store::ShardStore;
use crate::StorageError;

/// Counters since the node started, reported by NodeInfo.
#[derive(Debug, Default)]
pub struct Counters {
    pub rebuild_bytes_read: AtomicU64,
    pub rebuild_bytes_written: AtomicU64,
    pub rebuilds: AtomicU64,
    pub scrub_bytes: AtomicU64,
    pub scrub_bad: AtomicU64,
}

/// A byte-rate limit shared by every task that draws on it: each caller
/// reserves its bytes on a virtual clock and sleeps until its turn.
#[derive(Debug)]
pub struct RateLimiter {
    next_free: Mutex<Instant>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self { next_free: Mutex::new(Instant::now()) }
    }
}

impl RateLimiter {
    /// Waits until `bytes` fit under `bytes_per_s` (0: no limit).
    pub async fn acquire(&self, bytes: u64, bytes_per_s: u64) {
        if bytes_per_s == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / bytes_per_s as f64);
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + cost;
            start
        };
        // Reserving before reading spends the budget up front, so the rate
        // holds from the first byte.
        tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
    }
}

/// Reads a whole shard of `shard_len` bytes from the node at `addr`, within
/// the rate limit. A source that sends more than `shard_len` is cut off at
/// the first frame past it, so a rebuild holds at most k shard lengths
/// (plus one frame) whatever its sources send.
async fn fetch_shard(
    peers: &coffer_rpc::ShardPool,
    addr: &str,
    pack: PackId,
    index: ShardIndex,
    shard_len: u64,
    limiter: &RateLimiter,
    bytes_per_s: u64,
) -> Result<Vec<u8>, ShardFailure> {
    let mut client = peers.client(addr)?;
    let mut req = tonic::Request::new(pb::GetShardRequest {
        shard: Some(pb::ShardRef { pack_id: pack.0.to_vec(), index: index.0 as u32 }),
        offset: 0,
        length: 0,
    });
    req.set_timeout(coffer_rpc::timeouts::SHARD_FETCH);
    let mut stream = client.get_shard(req).await.map_err(ShardFailure::status)?.into_inner();
    let mut body = Vec::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(ShardFailure::status)?;
        if body.len() as u64 + frame.data.len() as u64 > shard_len {
            let detail = format!("sends more than the shard's {shard_len} bytes");
            return Err(ShardFailure::Mismatch { detail });
        }
        limiter.acquire(frame.data.len() as u64, bytes_per_s).await;
        body.extend_from_slice(&frame.data);
    }
    Ok(body)
}

fn source_failure(index: usize, addr: &str, failure: ShardFailure) -> SourceFailure {
    SourceFailure { index: ShardIndex(index as u8), addr: addr.to_string(), failure }
}

fn bad(reason: impl Into<String>) -> StorageError {
    StorageError::BadRequest { reason: reason.into() }
}

/// Rebuilds shard `req.index` of a pack from other nodes' shards and stores it.
pub async fn rebuild_shard(
    store: &ShardStore,
    req: pb::RebuildShardRequest,
    limiter: &RateLimiter,
    counters: &Counters,
    peers: &coffer_rpc::ShardPool,
) -> Result<pb::RebuildShardResponse, StorageError> {
    let pack = PackId::from_slice(&req.pack_id).map_err(|e| bad(format!("pack_id: {e}")))?;
    let params = ErasureParams::new(req.k, req.m).map_err(|e| bad(e.to_string()))?;
    if req.index as usize >= params.total() {
        return Err(bad(format!("shard index {} outside a {params} pack", req.index)));
    }
    let index = ShardIndex(req.index as u8);
    let want = Hash32::from_slice(&req.checksum).map_err(|e| bad(format!("checksum: {e}")))?;
    if req.shard_len == 0 || req.shard_len > crate::shard_file::MAX_BODY_LEN {
        return Err(bad(format!(
            "shard_len: {} is out of range (1 to {} bytes)",
            req.shard_len,
            crate::shard_file::MAX_BODY_LEN
        )));
    }
    // A rebuild holds k shards at once: no more than the largest pack the
    // catalog records (k shard lengths are the pack's length rounded up).
    let k = params.k() as u64;
    if req.shard_len.saturating_mul(k) > limits::MAX_PACK_LEN + k {
        return Err(bad(format!(
            "shard_len: {} bytes times k = {k} is more than the largest pack, {} bytes",
            req.shard_len,
            limits::MAX_PACK_LEN
        )));
    }
    if req.bandwidth_bytes_per_s != 0 && req.bandwidth_bytes_per_s < limits::MIN_REBUILD_BANDWIDTH {
        return Err(bad(format!(
            "bandwidth_bytes_per_s: {} is below the slowest rebuild rate, {} bytes/s (0: unlimited)",
            req.bandwidth_bytes_per_s,
            limits::MIN_REBUILD_BANDWIDTH
        )));
    }
    if req.sources.len() > limits::MAX_REBUILD_SOURCES {
        return Err(bad(format!("sources: {} entries; at most {}", req.sources.len(), limits::MAX_REBUILD_SOURCES)));
    }
    if let Some(s) = req.sources.iter().find(|s| s.addr.len() > limits::MAX_ADDR_BYTES) {
        return Err(bad(format!("sources.addr: {} bytes; at most {}", s.addr.len(), limits::MAX_ADDR_BYTES)));
    }
    // Already here and whole: nothing to do (a retried task).
    if let Ok(h) = store.stat(&pack, index) {
        if h.body_checksum == want && store.verify(&pack, index).is_ok() {
            return Ok(pb::RebuildShardResponse::default());
        }
    }

    let codec = Codec::new(params).map_err(|e| bad(e.to_string()))?;
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; params.total()];
    let mut read = 0u64;
    let mut read_from = Vec::new();
    let mut failures = Vec::new();
    for src in &req.sources {
        if read_from.len() >= params.k() {
            break;
        }
        let i = src.index as usize;
        if i >= params.total() || i == index.0 as usize || shards[i].is_some() {
            continue;
        }
        let Ok(sum) = Hash32::from_slice(&src.checksum) else { continue };
        match fetch_shard(
            peers,
            &src.addr,
            pack,
            ShardIndex(i as u8),
            req.shard_len,
            limiter,
            req.bandwidth_bytes_per_s,
        )
        .await
        {
            Ok(body) => {
                read += body.len() as u64;
                if body.len() as u64 == req.shard_len && Hash32(*blake3::hash(&body).as_bytes()) == sum {
                    shards[i] = Some(body);
                    read_from.push(i as u32);
                } else {
                    let detail = "fails its checksum".to_string();
                    failures.push(source_failure(i, &src.addr, ShardFailure::Mismatch { detail }));
                }
            }
            Err(failure) => failures.push(source_failure(i, &src.addr, failure)),
        }
    }
    counters.rebuild_bytes_read.fetch_add(read, Ordering::Relaxed);
    if read_from.len() < params.k() {
        return Err(StorageError::TooFewShards { pack, index, read: read_from.len(), needed: params.k(), failures });
    }
    codec.reconstruct(&mut shards).map_err(|source| StorageError::Reconstruct { pack, index, source })?;
    let body = shards[index.0 as usize].take().ok_or_else(|| bad("reconstruction produced no shard"))?;
    let got = Hash32(*blake3::hash(&body).as_bytes());
    if got != want {
        return Err(StorageError::RebuiltMismatch { pack, index });
    }
    let header = ShardHeader {
        pack,
        index,
        k: params.k() as u8,
        m: params.m() as u8,
        body_len: body.len() as u64,
        body_checksum: want,
    };
    let len = body.len() as u64;
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.put(header, &body))
        .await
        .map_err(|e| StorageError::BlockingTask { reason: e.to_string() })??;
    counters.rebuild_bytes_written.fetch_add(len, Ordering::Relaxed);
    counters.rebuilds.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%pack, %index, bytes_read = read, "rebuilt shard");
    Ok(pb::RebuildShardResponse { bytes_read: read, bytes_written: len, read_from })
}

/// One scrub pass: re-reads and verifies every local shard at most at
/// `bytes_per_s`; returns what it verified and what failed.
pub async fn scrub_pass(
    store: &ShardStore,
    limiter: &RateLimiter,
    bytes_per_s: u64,
    counters: &Counters,
) -> Result<pb::ScrubResponse, StorageError> {
    let entries = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| StorageError::BlockingTask { reason: e.to_string() })??
    };
    let mut out = pb::ScrubResponse::default();
    for e in entries {
        limiter.acquire(e.body_len, bytes_per_s).await;
        let s = store.clone();
        let (pack, index) = (e.pack, e.index);
        let result = tokio::task::spawn_blocking(move || s.verify(&pack, index))
            .await
            .map_err(|e| StorageError::BlockingTask { reason: e.to_string() })?;
        out.bytes += e.body_len;
        counters.scrub_bytes.fetch_add(e.body_len, Ordering::Relaxed);
        match result {
            Ok(()) => out.verified += 1,
            // The file is gone. If the inventory still lists the shard it
            // was lost (deleted behind the node's back); if not, it was
            // deleted properly between the listing and the check.
            Err(StorageError::NotFound { .. }) if !still_listed(store, pack, index).await => {}
            Err(err) => {
                counters.scrub_bad.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%pack, %index, error = %err, "scrub found a bad shard");
                out.bad.push(pb::BadShard { pack_id: pack.0.to_vec(), index: index.0 as u32, reason: err.to_string() });
            }
        }
    }
    Ok(out)
}

async fn still_listed(store: &ShardStore, pack: PackId, index: ShardIndex) -> bool {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.list().map(|l| l.iter().any(|e| e.pack == pack && e.index == index)))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}
