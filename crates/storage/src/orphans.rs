//! Orphan collection: shards of packs the catalog does not know.
//!
//! ```text
//!   every interval: walk shards/ (length, mtime) ─► older than orphan_age?
//!     ─► their pack ids, in batches of ≤ MAX_KNOWN_PACKS ─► Catalog.KnownPacks
//!     ─► unknown ones: orphans; found unknown in the previous pass too ─► deleted
//!                      first seen now ─► kept, counted in orphan_bytes (heartbeat, status)
//! ```
//!
//! An upload that retries elsewhere, an abandoned backup and a failed GC
//! delete all leave shard files under pack ids that no pack record names.
//! The sweep of the metadata leader skips them (it cannot tell them from a
//! backup in flight), so the node collects them itself.
//!
//! Never a shard of a pack that may still be committed: a pack record is
//! written by `CommitPack`, which the catalog refuses unless the uploading
//! session's lease is unexpired (judged on the log clock), and no lease is
//! longer than `MAX_SESSION_LEASE`; the agent commits a pack right after its
//! puts. A shard older than the longest lease plus a margin (the default
//! `orphan_age`) therefore belongs either to a committed pack (known, kept)
//! or to one no session can commit any more. The answer is linearizable
//! (`KnownPacks` passes the leader's read barrier), and a shard is deleted
//! only when two passes, an interval apart, both heard "unknown", so one
//! wrong answer deletes nothing. Never a shard of a known pack: only ids the
//! catalog said it does not know are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_proto::pb;
use coffer_rpc::MetaClient;
use coffer_types::{PackId, ShardIndex};
use coffer_worker::{Backoff, StopSignal, Worker, WorkerState};

use crate::service::Repair;
use crate::store::ShardStore;
use crate::StorageError;

/// Pack ids per KnownPacks call (the catalog's bound).
pub const KNOWN_PACKS_BATCH: usize = 1_000;

/// The default age past which a shard of an unknown pack is an orphan: the
/// longest session lease and a day of margin.
pub const DEFAULT_ORPHAN_AGE: Duration = Duration::from_secs(coffer_types::MAX_SESSION_LEASE.as_secs() + 24 * 3600);

/// The default time between two orphan passes.
pub const DEFAULT_ORPHAN_INTERVAL: Duration = Duration::from_secs(3600);

/// The orphan collector of one node.
pub(crate) struct Orphans {
    pub store: ShardStore,
    pub meta: MetaClient,
    pub repair: Arc<Repair>,
    pub min_age: Duration,
    pub interval: Duration,
    /// Orphans found by the last pass and not collected yet, with their
    /// file lengths.
    pub suspects: BTreeMap<(PackId, ShardIndex), u64>,
    pub passes: u64,
    pub collected_shards: u64,
    pub collected_bytes: u64,
}

impl Orphans {
    pub fn new(
        store: ShardStore,
        meta: MetaClient,
        repair: Arc<Repair>,
        min_age: Duration,
        interval: Duration,
    ) -> Self {
        Self {
            store,
            meta,
            repair,
            min_age,
            interval,
            suspects: BTreeMap::new(),
            passes: 0,
            collected_shards: 0,
            collected_bytes: 0,
        }
    }

    /// Which of `packs` the catalog knows, asked in bounded batches.
    async fn known(&self, packs: &BTreeSet<PackId>) -> Result<BTreeSet<PackId>, StorageError> {
        let ids: Vec<PackId> = packs.iter().copied().collect();
        let mut known = BTreeSet::new();
        for batch in ids.chunks(KNOWN_PACKS_BATCH) {
            let req = pb::KnownPacksRequest { pack_ids: batch.iter().map(|p| p.as_bytes().to_vec()).collect() };
            let resp = self
                .meta
                .call("known packs", |mut c| {
                    let req = req.clone();
                    async move { c.known_packs(req).await }
                })
                .await
                .map_err(|e| StorageError::Meta(e.to_string()))?;
            for raw in resp.known {
                let id = PackId::from_slice(&raw)
                    .map_err(|e| StorageError::Meta(format!("KnownPacks answered a bad pack id: {e}")))?;
                known.insert(id);
            }
        }
        Ok(known)
    }

    /// One pass: find the orphans, delete those found in the previous pass too.
    async fn pass(&mut self) -> Result<(), StorageError> {
        let store = self.store.clone();
        let files = tokio::task::spawn_blocking(move || store.walk())
            .await
            .map_err(|e| StorageError::BlockingTask { reason: e.to_string() })??;
        let now = SystemTime::now();
        let old: Vec<_> =
            files.iter().filter(|f| now.duration_since(f.modified).is_ok_and(|age| age >= self.min_age)).collect();
        let packs: BTreeSet<PackId> = old.iter().map(|f| f.pack).collect();
        let known = self.known(&packs).await?;
        let found: BTreeMap<(PackId, ShardIndex), u64> =
            old.iter().filter(|f| !known.contains(&f.pack)).map(|f| ((f.pack, f.index), f.file_len)).collect();
        let mut kept = BTreeMap::new();
        for (key, len) in found {
            if !self.suspects.contains_key(&key) {
                kept.insert(key, len);
                continue;
            }
            let (pack, index) = key;
            let store = self.store.clone();
            let deleted = tokio::task::spawn_blocking(move || store.delete(&pack, index))
                .await
                .map_err(|e| StorageError::BlockingTask { reason: e.to_string() })?;
            match deleted {
                Ok(true) => {
                    tracing::info!(%pack, %index, bytes = len, "collected an orphan shard (its pack is unknown to the catalog)");
                    self.collected_shards += 1;
                    self.collected_bytes += len;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%pack, %index, error = %e, "could not delete an orphan shard; will retry");
                    kept.insert(key, len);
                }
            }
        }
        if !kept.is_empty() {
            tracing::info!(
                shards = kept.len(),
                bytes = kept.values().sum::<u64>(),
                "found orphan shards; collecting them next pass if the catalog still does not know their packs"
            );
        }
        self.suspects = kept;
        self.repair.orphan_bytes.store(self.suspects.values().sum(), Ordering::Relaxed);
        self.passes += 1;
        Ok(())
    }
}

impl Worker for Orphans {
    type Error = StorageError;
    fn name(&self) -> String {
        "orphans".into()
    }

    async fn work(&mut self, stop: &StopSignal) -> Result<WorkerState, StorageError> {
        tokio::select! {
            r = self.pass() => r.map(|()| WorkerState::Idle),
            _ = stop.stopped() => Ok(WorkerState::Done),
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await
    }

    fn progress(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("passes", self.passes),
            ("orphan_shards", self.suspects.len() as u64),
            ("orphan_bytes", self.suspects.values().sum()),
            ("collected_shards", self.collected_shards),
            ("collected_bytes", self.collected_bytes),
        ]
    }

    fn backoff(&self) -> Backoff {
        Backoff { first: Duration::from_secs(1).min(self.interval), max: self.interval.max(Duration::from_secs(1)) }
    }
}
