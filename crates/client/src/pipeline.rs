//! The concurrent stages of a backup between the walker and the catalog:
//! dedup, sealing and packing.
//!
//! ```text
//!  walker ─(PlainBlob batches, byte budget)─► dedup ─(new blobs, batched)─► seal ×N ─(sealed, batched)─► packer ─► PackWriter ×2 in flight
//!            one thread                            task     LookupChunks           threads                     task     data pack / tree pack
//! ```
//!
//! Blobs travel in batches of about `BATCH_BYTES` (or `BATCH_BLOBS`): every
//! hand-over between the walker thread, the runtime's tasks and the sealing
//! threads may wake a parked thread, and one per blob (some 20,000 for the
//! bench's GiB, most of them a 64 KiB text chunk or a small file) cost the
//! agent a futex call, a context switch and the scheduler's bookkeeping each
//! time.
//!
//! Memory stays bounded whatever the dataset: plaintext between the walker
//! and the sealers is capped by a byte budget (a permit travels with each
//! blob and is released once it is sealed or found to be a duplicate), every
//! channel is bounded, the packer keeps one open pack per kind and at most
//! `MAX_UPLOADS` packs in flight. The invariant kept by dedup: a chunk id is
//! sent to be sealed at most once while it is not yet committed (the
//! `pending` set), so one session never uploads the same chunk twice in
//! flight; once its pack commits, the id moves to a bounded `known` cache and
//! the catalog answers for it after that.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};

use coffer_pack::RepoKey;
use coffer_proto::pb;
use coffer_types::{ChunkId, PackId, PackKind, PackRecord};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::stats::Counters;
use crate::upload::{PackEntry, PackWriter};
use crate::walk::{BlobKind, BlobSink, Stopped};
use crate::ClientError;

/// A pack is cut once it holds this many bytes.
pub const PACK_TARGET: usize = 16 << 20;
/// What a data pack's buffer is allocated with: it overshoots the target by
/// at most one blob, and erasure coding pads it in place by fewer than k
/// bytes.
const DATA_PACK_CAPACITY: usize =
    PACK_TARGET + coffer_pack::MAX_CHUNK_LEN + coffer_pack::BLOB_OVERHEAD + coffer_types::MAX_SHARDS as usize;
/// Or this many blobs, which keeps a CommitPack message (one location per
/// blob) small even when the blobs are tiny files.
const MAX_BLOBS_PER_PACK: usize = 65_536;
/// Packs being coded and sent at once.
const MAX_UPLOADS: usize = 2;
/// The catalog accepts at most this many ids per LookupChunks call.
pub(crate) const LOOKUP_BATCH: usize = 10_000;
/// Plaintext bytes allowed between the walker and the sealers.
pub(crate) const PLAINTEXT_BUDGET: u64 = 32 << 20;
/// A batch is handed on once it holds this many plaintext bytes: small
/// against the budget, so that a batch filling up never starves the sealers,
/// and large against one blob, so that hand-overs are few.
const BATCH_BYTES: u64 = 1 << 20;
/// Or this many blobs, however small.
const BATCH_BLOBS: usize = 256;
/// How many ids the `known` cache holds before it is cleared. Forgetting
/// costs only a catalog lookup, so the cache is a plain set reset when full.
const KNOWN_CACHE: usize = 500_000;

/// A cap on bytes in flight, shared between threads and tasks.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    cap: u64,
    state: Mutex<(u64, bool)>,
    freed: Condvar,
}

/// Bytes held against a budget, given back on drop.
#[derive(Debug)]
pub(crate) struct BudgetPermit {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl ByteBudget {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(ByteBudget { cap, state: Mutex::new((0, false)), freed: Condvar::new() })
    }

    /// Blocks until `bytes` fit (a single request larger than the cap is let
    /// through alone). `None` once the budget is closed.
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Option<BudgetPermit> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.1 {
                return None;
            }
            if st.0 == 0 || st.0 + bytes <= self.cap {
                st.0 += bytes;
                return Some(BudgetPermit { budget: self.clone(), bytes });
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A permit for `bytes` if they fit now, without waiting; `None` if they
    /// do not or the budget is closed.
    pub fn try_acquire(self: &Arc<Self>, bytes: u64) -> Option<BudgetPermit> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1 || !(st.0 == 0 || st.0 + bytes <= self.cap) {
            return None;
        }
        st.0 += bytes;
        Some(BudgetPermit { budget: self.clone(), bytes })
    }

    /// Wakes every waiter and refuses further requests: the pipeline stopped.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.freed.notify_all();
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let mut st = self.budget.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(self.bytes);
        self.budget.freed.notify_all();
    }
}

/// A chunk or tree in plaintext, on its way to be sealed.
pub(crate) struct PlainBlob {
    pub id: ChunkId,
    pub kind: BlobKind,
    pub data: Vec<u8>,
    _permit: BudgetPermit,
}

/// A sealed blob on its way into a pack.
pub(crate) struct SealedOut {
    pub id: ChunkId,
    pub kind: BlobKind,
    pub blob: Vec<u8>,
}

/// The walker's sink in a real backup: batches into a bounded channel to
/// dedup.
///
/// The blobs of the batch being filled hold budget that only the sealers give
/// back, so the batch is sent before the walker waits on the budget: a full
/// budget always has its bytes downstream, where they are being freed.
pub(crate) struct ChannelSink {
    tx: mpsc::Sender<Vec<PlainBlob>>,
    budget: Arc<ByteBudget>,
    batch: Vec<PlainBlob>,
    batch_bytes: u64,
}

impl ChannelSink {
    pub fn new(tx: mpsc::Sender<Vec<PlainBlob>>, budget: Arc<ByteBudget>) -> Self {
        ChannelSink { tx, budget, batch: Vec::new(), batch_bytes: 0 }
    }
}

impl BlobSink for ChannelSink {
    fn put(&mut self, id: ChunkId, kind: BlobKind, data: Vec<u8>) -> Result<(), Stopped> {
        let len = data.len() as u64;
        let permit = match self.budget.try_acquire(len) {
            Some(permit) => permit,
            None => {
                self.flush()?;
                self.budget.acquire(len).ok_or(Stopped)?
            }
        };
        self.batch.push(PlainBlob { id, kind, data, _permit: permit });
        self.batch_bytes += len;
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_BLOBS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Stopped> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        self.tx.blocking_send(std::mem::take(&mut self.batch)).map_err(|_| Stopped)
    }
}

/// What dedup remembers within one session.
#[derive(Default)]
pub(crate) struct DedupState {
    /// Sent to be sealed, pack not committed yet.
    pending: HashSet<ChunkId>,
    /// Known to be in the chunk index.
    known: HashSet<ChunkId>,
}

impl DedupState {
    fn knows(&self, id: &ChunkId) -> bool {
        self.pending.contains(id) || self.known.contains(id)
    }

    fn remember(&mut self, id: ChunkId) {
        if self.known.len() >= KNOWN_CACHE {
            self.known.clear();
        }
        self.known.insert(id);
    }

    /// A pack committed: its ids are now the catalog's to answer for. They
    /// enter `known` before leaving `pending`, so no lookup in between can
    /// miss them.
    fn committed(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            self.remember(id);
            self.pending.remove(&id);
        }
    }
}

/// Shared state of the dedup and packer stages.
pub(crate) struct StageCtx {
    pub writer: PackWriter,
    pub counters: Arc<Counters>,
    pub dedup: Mutex<DedupState>,
    /// For a full backup: the packs verified to have a record with every
    /// shard placed on a known node. A chunk the index puts anywhere else
    /// is stored again. `None` trusts the index.
    pub verified_packs: Option<Mutex<HashSet<PackId>>>,
}

impl StageCtx {
    fn dedup(&self) -> std::sync::MutexGuard<'_, DedupState> {
        self.dedup.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Dedup: drops blobs the session or the catalog already has, forwards the
/// rest. Batches are whatever has queued up while the previous lookup ran,
/// so lookups are few when the walker is fast and prompt when it is slow.
pub(crate) async fn dedup_stage(
    ctx: Arc<StageCtx>,
    mut rx: mpsc::Receiver<Vec<PlainBlob>>,
    to_seal: mpsc::Sender<Vec<PlainBlob>>,
) -> Result<(), ClientError> {
    while let Some(mut batch) = rx.recv().await {
        // A walker batch holds at most `BATCH_BLOBS`, so a lookup stays
        // within the catalog's limit.
        while batch.len() + BATCH_BLOBS <= LOOKUP_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let mut candidates = Vec::with_capacity(batch.len());
        {
            let state = ctx.dedup();
            let mut in_batch = HashSet::with_capacity(batch.len());
            for b in batch {
                if state.knows(&b.id) || !in_batch.insert(b.id) {
                    reused(&ctx.counters, &b);
                } else {
                    candidates.push(b);
                }
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let found = lookup(&ctx.writer, candidates.iter().map(|b| b.id).collect()).await?;
        let found = match &ctx.verified_packs {
            Some(verified) => placed_only(&ctx.writer, verified, found).await?,
            None => found.into_keys().collect(),
        };
        let mut fresh = Vec::with_capacity(candidates.len());
        {
            let mut state = ctx.dedup();
            for b in candidates {
                if found.contains(&b.id) {
                    state.remember(b.id);
                    reused(&ctx.counters, &b);
                } else {
                    state.pending.insert(b.id);
                    if b.kind == BlobKind::Data {
                        ctx.counters.chunks_new.add(1);
                        ctx.counters.bytes_new.add(b.data.len() as u64);
                    }
                    fresh.push(b);
                }
            }
        }
        for batch in batches(fresh) {
            if to_seal.send(batch).await.is_err() {
                // The sealers stopped; the packer holds the reason.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Splits blobs into batches of about `BATCH_BYTES`, in order, so that every
/// sealer gets a share of a large lookup.
fn batches(blobs: Vec<PlainBlob>) -> Vec<Vec<PlainBlob>> {
    let mut out = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0u64);
    for b in blobs {
        bytes += b.data.len() as u64;
        batch.push(b);
        if bytes >= BATCH_BYTES || batch.len() >= BATCH_BLOBS {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

fn reused(counters: &Counters, b: &PlainBlob) {
    if b.kind == BlobKind::Data {
        counters.chunks_reused.add(1);
    }
}

/// The chunks of `found` whose pack has a record with all its shards placed
/// on nodes the cluster knows; the verdicts are remembered in `verified`.
async fn placed_only(
    writer: &PackWriter,
    verified: &Mutex<HashSet<PackId>>,
    found: HashMap<ChunkId, PackId>,
) -> Result<HashSet<ChunkId>, ClientError> {
    let unknown: Vec<PackId> = {
        let v = verified.lock().unwrap_or_else(|p| p.into_inner());
        let set: HashSet<PackId> = found.values().filter(|p| !v.contains(p)).copied().collect();
        set.into_iter().collect()
    };
    if !unknown.is_empty() {
        let req = pb::GetPacksRequest { pack_ids: unknown.iter().map(|p| p.0.to_vec()).collect() };
        let resp = writer
            .meta
            .call("GetPacks", |mut c| {
                let req = req.clone();
                async move { c.get_packs(req).await }
            })
            .await?;
        let nodes: HashSet<u64> = resp.nodes.iter().map(|n| n.id).collect();
        let mut v = verified.lock().unwrap_or_else(|p| p.into_inner());
        for p in resp.packs {
            let record = PackRecord::try_from(p)
                .map_err(|e| ClientError::BadResponse { what: "GetPacks", reason: e.to_string() })?;
            let placed =
                record.shards.len() == record.params.total() && record.shards.iter().all(|s| nodes.contains(&s.node.0));
            if placed {
                v.insert(record.id);
            }
        }
    }
    let v = verified.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = HashSet::with_capacity(found.len());
    for (chunk, pack) in found {
        if v.contains(&pack) {
            out.insert(chunk);
        } else {
            tracing::warn!(%chunk, %pack, "the index puts this chunk in a pack that is not placed; storing it again");
        }
    }
    Ok(out)
}

/// The ids among `ids` that the chunk index holds, with the pack of each.
async fn lookup(writer: &PackWriter, ids: Vec<ChunkId>) -> Result<HashMap<ChunkId, PackId>, ClientError> {
    let req = pb::LookupChunksRequest {
        repo: writer.repo.to_string(),
        chunk_ids: ids.iter().map(|id| id.0.to_vec()).collect(),
        // Deduplication: a condemned chunk is absent, so it is stored again.
        include_condemned: false,
    };
    let resp = writer
        .meta
        .call("LookupChunks", |mut c| {
            let req = req.clone();
            async move { c.lookup_chunks(req).await }
        })
        .await?;
    resp.found
        .iter()
        .map(|l| {
            coffer_proto::location_from_pb(l)
                .map(|(id, loc)| (id, loc.pack))
                .map_err(|e| ClientError::BadResponse { what: "LookupChunks", reason: e.to_string() })
        })
        .collect()
}

/// One sealing thread: takes batches of plaintext blobs, seals them, passes
/// each batch on. Several run at once; the receiver is shared behind a
/// mutex, which only serialises the hand-out, not the sealing.
pub(crate) fn seal_worker(
    key: Arc<RepoKey>,
    counters: Arc<Counters>,
    rx: Arc<Mutex<mpsc::Receiver<Vec<PlainBlob>>>>,
    tx: mpsc::Sender<Vec<SealedOut>>,
) {
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
        let Some(batch) = next else { return };
        let mut sealed_batch = Vec::with_capacity(batch.len());
        for plain in batch {
            let sealed = counters.seal.time(plain.data.len() as u64, || key.seal(&plain.id, &plain.data));
            let out = SealedOut { id: plain.id, kind: plain.kind, blob: sealed.into_bytes() };
            // Dropping the plaintext gives its bytes back to the budget at
            // once, not at the end of the batch.
            drop(plain);
            counters.bytes_stored.add(out.blob.len() as u64);
            sealed_batch.push(out);
        }
        if tx.blocking_send(sealed_batch).is_err() {
            return;
        }
    }
}

/// A pack being filled.
struct OpenPack {
    kind: PackKind,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl OpenPack {
    fn new(kind: PackKind) -> Self {
        OpenPack { kind, bytes: Vec::new(), entries: Vec::new() }
    }

    fn push(&mut self, id: ChunkId, blob: &[u8]) -> Result<(), ClientError> {
        let len = u32::try_from(blob.len()).map_err(|_| ClientError::BadSource {
            reason: format!("blob {id} of {} bytes is too large for a pack", blob.len()),
        })?;
        if self.bytes.capacity() == 0 && self.kind == PackKind::Data {
            // One allocation for the whole data pack (a spare buffer already
            // has it). Tree packs are usually small and grow as needed.
            self.bytes.reserve(DATA_PACK_CAPACITY);
        }
        self.entries.push(PackEntry { id, offset: self.bytes.len() as u64, len });
        self.bytes.extend_from_slice(blob);
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET || self.entries.len() >= MAX_BLOBS_PER_PACK
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The filled pack; the next one is filled into `spare` if given (an
    /// emptied buffer of an earlier pack).
    fn take(&mut self, spare: Option<Vec<u8>>) -> (PackKind, Vec<u8>, Vec<PackEntry>) {
        let next = spare.unwrap_or_default();
        (self.kind, std::mem::replace(&mut self.bytes, next), std::mem::take(&mut self.entries))
    }
}

/// What an upload task hands back: the ids it committed, and its pack's
/// buffer when it can be filled again.
type UploadDone = (Vec<ChunkId>, Option<Vec<u8>>);

/// Emptied data-pack buffers waiting to be filled again. At most one per
/// upload in flight is kept, so the packer's memory stays what it was:
/// `MAX_UPLOADS` packs sending and one filling.
#[derive(Default)]
struct SpareBuffers(Vec<Vec<u8>>);

impl SpareBuffers {
    fn give(&mut self, buf: Vec<u8>) {
        if buf.capacity() >= DATA_PACK_CAPACITY && self.0.len() < MAX_UPLOADS {
            self.0.push(buf);
        }
    }

    fn take_for(&mut self, kind: PackKind) -> Option<Vec<u8>> {
        if kind == PackKind::Data {
            self.0.pop()
        } else {
            None
        }
    }
}

/// The packer: appends sealed blobs to the open data or tree pack and stores
/// each pack once full; at the end flushes both and waits for every upload.
/// A data pack's buffer comes back from its upload and holds a later pack.
pub(crate) async fn packer_stage(
    ctx: Arc<StageCtx>,
    mut rx: mpsc::Receiver<Vec<SealedOut>>,
) -> Result<(), ClientError> {
    let mut data = OpenPack::new(PackKind::Data);
    let mut trees = OpenPack::new(PackKind::Tree);
    let mut uploads: JoinSet<Result<UploadDone, ClientError>> = JoinSet::new();
    let mut spares = SpareBuffers::default();
    while let Some(batch) = rx.recv().await {
        for s in batch {
            let open = match s.kind {
                BlobKind::Data => &mut data,
                BlobKind::Tree => &mut trees,
            };
            open.push(s.id, &s.blob)?;
            drop(s);
            if open.is_full() {
                let pack = open.take(spares.take_for(open.kind));
                start_upload(&ctx, &mut uploads, &mut spares, pack).await?;
            }
        }
    }
    for open in [&mut data, &mut trees] {
        if !open.is_empty() {
            let pack = open.take(None);
            start_upload(&ctx, &mut uploads, &mut spares, pack).await?;
        }
    }
    while let Some(done) = uploads.join_next().await {
        finish_upload(&ctx, &mut spares, done)?;
    }
    Ok(())
}

async fn start_upload(
    ctx: &Arc<StageCtx>,
    uploads: &mut JoinSet<Result<UploadDone, ClientError>>,
    spares: &mut SpareBuffers,
    (kind, bytes, entries): (PackKind, Vec<u8>, Vec<PackEntry>),
) -> Result<(), ClientError> {
    while uploads.len() >= MAX_UPLOADS {
        match uploads.join_next().await {
            Some(done) => finish_upload(ctx, spares, done)?,
            None => break,
        }
    }
    let ctx = ctx.clone();
    uploads.spawn(async move {
        let (_, spare) = ctx.writer.store_returning_buffer(kind, bytes, &entries).await?;
        Ok((entries.into_iter().map(|e| e.id).collect(), spare))
    });
    Ok(())
}

fn finish_upload(
    ctx: &StageCtx,
    spares: &mut SpareBuffers,
    done: Result<Result<UploadDone, ClientError>, tokio::task::JoinError>,
) -> Result<(), ClientError> {
    let (ids, spare) = done.map_err(|e| ClientError::task("upload pack", e))??;
    ctx.dedup().committed(ids);
    if let Some(buf) = spare {
        spares.give(buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_blocks_until_freed_and_closes() {
        let budget = ByteBudget::new(10);
        let a = budget.acquire(6).unwrap();
        let b2 = budget.clone();
        let waiter = std::thread::spawn(move || b2.acquire(6).map(|p| p.bytes));
        drop(a);
        assert_eq!(waiter.join().unwrap(), Some(6));
        // Oversized requests pass alone.
        let big = budget.acquire(100).unwrap();
        drop(big);
        let held = budget.acquire(10).unwrap();
        let b3 = budget.clone();
        let blocked = std::thread::spawn(move || b3.acquire(1).is_none());
        budget.close();
        assert!(blocked.join().unwrap());
        drop(held);
        assert!(budget.acquire(1).is_none());
    }

    fn wait_for<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(v) = poll() {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_sink_batches_and_sends_its_batch_before_waiting_on_the_budget() {
        const KIB: usize = 1024;
        let budget = ByteBudget::new(1024 * KIB as u64);
        let (tx, mut rx) = mpsc::channel(8);
        let mut sink = ChannelSink::new(tx, budget.clone());
        let walker = std::thread::spawn(move || {
            for i in 0..3u8 {
                sink.put(ChunkId([i; 32]), BlobKind::Data, vec![i; 600 * KIB]).unwrap();
            }
            sink.flush().unwrap();
        });
        // The second blob does not fit beside the first: the first is sent
        // alone rather than held while the walker waits.
        let first = wait_for("the first batch", || rx.try_recv().ok());
        assert_eq!(first.iter().map(|b| b.id.0[0]).collect::<Vec<_>>(), vec![0]);
        assert!(rx.try_recv().is_err(), "nothing else fits until the first is sealed");
        drop(first);
        let second = wait_for("the second batch", || rx.try_recv().ok());
        assert_eq!(second.iter().map(|b| b.id.0[0]).collect::<Vec<_>>(), vec![1]);
        drop(second);
        // The last one goes out on the flush at the end of the walk.
        let third = wait_for("the flushed batch", || rx.try_recv().ok());
        assert_eq!(third.iter().map(|b| b.id.0[0]).collect::<Vec<_>>(), vec![2]);
        walker.join().unwrap();

        // Small blobs travel together, up to a batch's bytes or count.
        let (tx, mut rx) = mpsc::channel(8);
        let mut sink = ChannelSink::new(tx, ByteBudget::new(PLAINTEXT_BUDGET));
        for i in 0..(BATCH_BLOBS + 3) {
            sink.put(ChunkId([(i % 251) as u8; 32]), BlobKind::Data, vec![0; 100]).unwrap();
        }
        assert_eq!(rx.try_recv().unwrap().len(), BATCH_BLOBS);
        assert!(rx.try_recv().is_err(), "a partial batch waits for more or for the flush");
        sink.flush().unwrap();
        assert_eq!(rx.try_recv().unwrap().len(), 3);
    }

    #[test]
    fn new_blobs_reach_the_sealers_in_batches_in_order() {
        let budget = ByteBudget::new(u64::MAX);
        let blob = |i: usize, len: usize| PlainBlob {
            id: ChunkId([(i % 251) as u8; 32]),
            kind: BlobKind::Data,
            data: vec![0; len],
            _permit: budget.acquire(len as u64).unwrap(),
        };
        let small: Vec<_> = (0..600).map(|i| blob(i, 10)).collect();
        assert_eq!(batches(small).iter().map(Vec::len).collect::<Vec<_>>(), vec![256, 256, 88]);
        let large: Vec<_> = (0..5).map(|i| blob(i, 600 << 10)).collect();
        let out = batches(large);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let order: Vec<u8> = out.iter().flatten().map(|b| b.id.0[0]).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn dedup_state_moves_ids_from_pending_to_known() {
        let mut st = DedupState::default();
        let id = ChunkId([1; 32]);
        assert!(!st.knows(&id));
        st.pending.insert(id);
        assert!(st.knows(&id));
        st.committed([id]);
        assert!(st.knows(&id));
        assert!(st.pending.is_empty());
    }

    #[test]
    fn open_packs_record_offsets_and_fill_up() {
        let mut p = OpenPack::new(PackKind::Data);
        assert!(p.is_empty());
        p.push(ChunkId([1; 32]), &[1, 2, 3]).unwrap();
        p.push(ChunkId([2; 32]), &[4, 5]).unwrap();
        assert!(!p.is_full());
        let (kind, bytes, entries) = p.take(None);
        assert_eq!(kind, PackKind::Data);
        assert_eq!(bytes, vec![1, 2, 3, 4, 5]);
        assert_eq!((entries[1].offset, entries[1].len), (3, 2));
        assert!(p.is_empty());
        p.push(ChunkId([3; 32]), &vec![0u8; PACK_TARGET]).unwrap();
        assert!(p.is_full());
    }

    #[test]
    fn a_spare_buffer_holds_the_next_data_pack() {
        let mut spares = SpareBuffers::default();
        // Too small to hold a data pack without growing: not kept.
        spares.give(Vec::with_capacity(PACK_TARGET));
        assert!(spares.take_for(PackKind::Data).is_none());
        for _ in 0..MAX_UPLOADS + 1 {
            spares.give(Vec::with_capacity(DATA_PACK_CAPACITY));
        }
        assert_eq!(spares.0.len(), MAX_UPLOADS, "one spare per upload in flight at most");
        assert!(spares.take_for(PackKind::Tree).is_none(), "tree packs are small and not pooled");

        let mut p = OpenPack::new(PackKind::Data);
        p.push(ChunkId([1; 32]), &[1, 2, 3]).unwrap();
        let spare = spares.take_for(PackKind::Data).unwrap();
        let addr = spare.as_ptr();
        let (_, bytes, _) = p.take(Some(spare));
        assert_eq!(bytes, vec![1, 2, 3]);
        p.push(ChunkId([2; 32]), &[4, 5]).unwrap();
        let (_, bytes, entries) = p.take(None);
        assert_eq!((bytes.as_ptr(), &bytes[..], entries[0].offset), (addr, &[4u8, 5][..], 0));
    }
}
