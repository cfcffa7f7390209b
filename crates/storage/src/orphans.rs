//! Orphan collection: shards of packs the catalog does not know.
//!
//! ```text
//!   every interval: walk shards/ ─► their pack ids, in batches of ≤ MAX_KNOWN_PACKS ─► Catalog.KnownPacks
//!     ─► unknown ones: orphans, timed from the pass that first found them unknown (monotonic clock)
//!          unknown for at least orphan_age, and in the previous pass too ─► deleted
//!          else ─► kept, counted in orphan_bytes (heartbeat, status)
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
//! puts. A shard the catalog has not known for longer than the longest
//! lease plus a margin (the default `orphan_age`) therefore belongs to a
//! pack no session can commit any more. That time is measured on this
//! node's monotonic clock from the pass that first found the shard unknown,
//! never from the file's modification time: the wall clock can jump (a
//! clock set days ahead made fresh shards of packs about to commit look
//! old, found by the chaos suite), and the metadata plane must not trust a
//! node's clock for anything that decides deletion. The count lives in
//! memory, so a restart starts it again: collection then waits one more
//! orphan age, never less. The answer is linearizable (`KnownPacks` passes
//! the leader's read barrier), and a shard is deleted only when two passes,
//! an interval apart, both heard "unknown", so one wrong answer deletes
//! nothing. Never a shard of a known pack: only ids the catalog said it
//! does not know are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A shard of a pack the catalog did not know at the last pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Suspect {
    /// The file's length, header included.
    pub len: u64,
    /// The pass that first found its pack unknown (and every pass since).
    pub since: Instant,
}

/// A shard by its pack and index.
type ShardKey = (PackId, ShardIndex);

/// Judges one pass's orphans against the previous pass's: returns the
/// suspects to keep (each timed from its first finding) and the shards to
/// delete, those unknown in the previous pass too and for at least
/// `min_age` by `now`.
pub(crate) fn judge(
    previous: &BTreeMap<ShardKey, Suspect>,
    found: BTreeMap<ShardKey, u64>,
    now: Instant,
    min_age: Duration,
) -> (BTreeMap<ShardKey, Suspect>, Vec<(ShardKey, u64)>) {
    let mut kept = BTreeMap::new();
    let mut delete = Vec::new();
    for (key, len) in found {
        match previous.get(&key) {
            Some(s) if now.saturating_duration_since(s.since) >= min_age => delete.push((key, len)),
            Some(s) => {
                kept.insert(key, Suspect { len, since: s.since });
            }
            None => {
                kept.insert(key, Suspect { len, since: now });
            }
        }
    }
    (kept, delete)
}

/// The orphan collector of one node.
pub(crate) struct Orphans {
    pub store: ShardStore,
    pub meta: MetaClient,
    pub repair: Arc<Repair>,
    pub min_age: Duration,
    pub interval: Duration,
    /// Orphans found by the last pass and not collected yet.
    pub suspects: BTreeMap<(PackId, ShardIndex), Suspect>,
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

    /// One pass: find the orphans, delete those unknown long enough.
    async fn pass(&mut self) -> Result<(), StorageError> {
        let store = self.store.clone();
        let files = tokio::task::spawn_blocking(move || store.walk())
            .await
            .map_err(|e| StorageError::BlockingTask { reason: e.to_string() })??;
        let packs: BTreeSet<PackId> = files.iter().map(|f| f.pack).collect();
        let known = self.known(&packs).await?;
        let found: BTreeMap<(PackId, ShardIndex), u64> =
            files.iter().filter(|f| !known.contains(&f.pack)).map(|f| ((f.pack, f.index), f.file_len)).collect();
        let (mut kept, delete) = judge(&self.suspects, found, Instant::now(), self.min_age);
        for (key, len) in delete {
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
                    if let Some(s) = self.suspects.get(&key) {
                        kept.insert(key, *s);
                    }
                }
            }
        }
        let new = kept.iter().filter(|(k, _)| !self.suspects.contains_key(k)).count();
        if new > 0 {
            tracing::info!(
                shards = new,
                bytes = kept.values().map(|s| s.len).sum::<u64>(),
                "found orphan shards; collecting them once the catalog has not known their packs for the orphan age"
            );
        }
        self.suspects = kept;
        self.repair.orphan_bytes.store(self.suspects.values().map(|s| s.len).sum(), Ordering::Relaxed);
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
            ("orphan_bytes", self.suspects.values().map(|s| s.len).sum()),
            ("collected_shards", self.collected_shards),
            ("collected_bytes", self.collected_bytes),
        ]
    }

    fn backoff(&self) -> Backoff {
        Backoff { first: Duration::from_secs(1).min(self.interval), max: self.interval.max(Duration::from_secs(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_is_collected_only_after_the_age_on_the_monotonic_clock() {
        let (a, b) = ((PackId([1; 16]), ShardIndex(0)), (PackId([2; 16]), ShardIndex(1)));
        let age = Duration::from_secs(3600);
        let t0 = Instant::now();
        // First finding: timed from now, whatever the file's mtime says.
        let (s1, d1) = judge(&BTreeMap::new(), BTreeMap::from([(a, 10)]), t0, age);
        assert!(d1.is_empty());
        assert_eq!(s1[&a].since, t0);
        // A pass later, well within the age: kept, still timed from t0; a
        // new orphan is timed from its own finding.
        let t1 = t0 + Duration::from_secs(5);
        let (s2, d2) = judge(&s1, BTreeMap::from([(a, 10), (b, 20)]), t1, age);
        assert!(d2.is_empty());
        assert_eq!((s2[&a].since, s2[&b].since), (t0, t1));
        // Once a has been unknown for the age: deleted; b not yet.
        let t2 = t0 + age;
        let (s3, d3) = judge(&s2, BTreeMap::from([(a, 10), (b, 20)]), t2, age);
        assert_eq!(d3, vec![(a, 10)]);
        assert_eq!(s3.keys().collect::<Vec<_>>(), vec![&b]);
        // A shard whose pack became known drops out, and if it is ever
        // unknown again its time starts afresh.
        let (s4, _) = judge(&s3, BTreeMap::new(), t2, age);
        assert!(s4.is_empty());
        let (s5, d5) = judge(&s4, BTreeMap::from([(b, 20)]), t2 + age, age);
        assert!(d5.is_empty());
        assert_eq!(s5[&b].since, t2 + age);
    }
}
