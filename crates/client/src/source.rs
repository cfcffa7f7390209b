//! Where blob plaintext comes from: the `BlobSource` a restore reads from
//! (the cluster's `ClusterSource` in real use, a map in tests), the
//! helpers that fetch trees and batches through it, and the shards a read
//! found bad on the way.
//!
//! A source returns plaintext only after it has been authenticated and
//! re-hashed against its id. `restore` and the backup's parent prefetch
//! (`parent`) both read through this module; neither depends on the other.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use coffer_rpc::ShardFailure;
use coffer_types::{ChunkId, NodeId, PackId, ShardIndex};
use futures::stream::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::stats::RestoreCounters;
use crate::tree::Tree;
use crate::ClientError;

/// Batches fetched and written at once.
pub(crate) const BATCHES_IN_FLIGHT: usize = 12;
/// Ids per batch when a source has no better grouping.
const DEFAULT_BATCH: usize = 16;
/// Chunks fetched ahead of the one being written (stdout, default batches).
pub(crate) const READ_AHEAD: usize = 4;

/// Where blob plaintext comes from during a restore.
pub trait BlobSource: Send + Sync + 'static {
    /// A hint that `ids` will be fetched soon, so that their locations can be
    /// resolved in bulk. Fetching must work without it.
    fn prepare(&self, ids: Vec<ChunkId>) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// The verified plaintext of the chunk or tree `id`.
    fn fetch(&self, id: ChunkId) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send;

    /// Groups distinct `ids` (prepared) into batches that are cheap to fetch
    /// together, in the order to fetch them. Every id lands in exactly one
    /// batch.
    fn plan(&self, ids: Vec<ChunkId>) -> Vec<Vec<ChunkId>> {
        ids.chunks(DEFAULT_BATCH).map(<[ChunkId]>::to_vec).collect()
    }

    /// Hands the verified plaintext of every id of `batch` to `deliver`, in
    /// any order, each exactly once, on a blocking thread.
    fn fetch_batch(
        &self,
        batch: Vec<ChunkId>,
        _counters: &RestoreCounters,
        deliver: Deliver,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        async move {
            let blobs: Vec<(ChunkId, Vec<u8>)> = futures::stream::iter(batch)
                .map(|id| async move { Ok::<_, ClientError>((id, self.fetch(id).await?)) })
                .buffered(READ_AHEAD)
                .try_collect()
                .await?;
            deliver_all(deliver, blobs).await.map(drop)
        }
    }

    /// What went wrong but was repaired so far: the number of packs read in
    /// degraded mode, and each bad shard.
    fn health(&self) -> (u64, Vec<BadShard>) {
        (0, Vec::new())
    }
}

/// The plaintext of `ids` (distinct, prepared), fetched in the source's
/// batches, `BATCHES_IN_FLIGHT` at once, into memory: for trees, which are
/// small, not for file content.
pub(crate) async fn fetch_all<S: BlobSource>(
    source: &S,
    counters: &RestoreCounters,
    ids: Vec<ChunkId>,
) -> Result<HashMap<ChunkId, Vec<u8>>, ClientError> {
    let got: Arc<Mutex<HashMap<ChunkId, Vec<u8>>>> = Arc::default();
    futures::stream::iter(source.plan(ids))
        .map(|batch| {
            let got = got.clone();
            let deliver: Deliver = Box::new(move |id, data| {
                lock(&got).insert(id, data.to_vec());
                Ok(())
            });
            source.fetch_batch(batch, counters, deliver)
        })
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    let out = std::mem::take(&mut *lock(&got));
    Ok(out)
}

/// Takes the plaintext of one blob of a batch (and, on a blocking thread,
/// writes it where it belongs). Blobs are handed over one at a time as they
/// are opened, so a batch never holds all of its plaintext at once.
pub type Deliver = Box<dyn FnMut(ChunkId, &[u8]) -> Result<(), ClientError> + Send>;

/// Hands `blobs` to `deliver` on a blocking thread; gives `deliver` back.
pub(crate) async fn deliver_all(mut deliver: Deliver, blobs: Vec<(ChunkId, Vec<u8>)>) -> Result<Deliver, ClientError> {
    if blobs.is_empty() {
        return Ok(deliver);
    }
    blocking("deliver blobs", move || {
        for (id, data) in blobs {
            deliver(id, &data)?;
        }
        Ok(deliver)
    })
    .await
}

/// A shard a read could not use, and why; the read went on without it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BadShard {
    pub pack: PackId,
    pub index: ShardIndex,
    /// The node the record places it on, if it places it at all.
    pub node: Option<NodeId>,
    pub failure: ShardFailure,
}

impl std::fmt::Display for BadShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pack {} shard {} on node {}: {}", self.pack, self.index, self.node.unwrap_or_default(), self.failure)
    }
}

/// In JSON summaries: the ids as they print, whether it is damage, and why.
impl Serialize for BadShard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("BadShard", 5)?;
        st.serialize_field("pack", &self.pack.to_string())?;
        st.serialize_field("index", &self.index.0)?;
        st.serialize_field("node", &self.node.map(|n| n.to_string()))?;
        st.serialize_field("damaged", &self.failure.is_damage())?;
        st.serialize_field("reason", &self.failure.to_string())?;
        st.end()
    }
}

/// Fetches and decodes the tree `id`.
pub(crate) async fn load_tree<S: BlobSource>(source: &S, id: ChunkId) -> Result<Tree, ClientError> {
    let bytes = source.fetch(id).await?;
    decode_tree(id, &bytes)
}

pub(crate) fn decode_tree(id: ChunkId, bytes: &[u8]) -> Result<Tree, ClientError> {
    Tree::decode(bytes).map_err(|e| match e {
        ClientError::BadTree { reason, .. } => ClientError::BadTree { tree: Some(id), reason },
        other => other,
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ClientError::task(what, e))?
}
