//! The parent snapshot's trees for the walker of an incremental backup,
//! fetched ahead of it.
//!
//! ```text
//!   prefetch task (async):  root ──► a breadth-first round of trees at a time:
//!                           prepare (bulk lookup) ──► fetch_all (the restore's batches) ──► decode ──► ready
//!                                  └─ pauses while more than PREFETCH_BYTES of trees wait unread
//!   walker (plain thread):  load_tree(id): ready? take it ── in flight? wait ── else fetch it itself
//! ```
//!
//! Without it the walker fetched one tree per directory, each a catalog
//! lookup and a shard read in series, which dominated an incremental backup
//! of an unchanged tree. The prefetch is only an optimisation: a tree it has
//! not fetched (not reached yet, failed, or already taken once) is fetched
//! by the walker exactly as before, so what the walk sees never depends on it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use coffer_types::ChunkId;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::fetch::ClusterSource;
use crate::source::{decode_tree, fetch_all, load_tree, BlobSource};
use crate::stats::RestoreCounters;
use crate::tree::{NodeKind, Tree};
use crate::walk::TreeLoader;
use crate::ClientError;

/// Decoded tree bytes allowed to wait for the walker.
const PREFETCH_BYTES: u64 = 64 << 20;
/// Trees per breadth-first round.
const ROUND: usize = 1_000;

/// What the prefetch task and the walker share.
#[derive(Default)]
struct Ahead {
    state: Mutex<AheadState>,
    /// Signalled when a round lands (or the task ends).
    arrived: Condvar,
    /// Signalled when the walker takes a tree, to resume a paused prefetch.
    taken: Notify,
}

#[derive(Default)]
struct AheadState {
    /// Fetched trees and their encoded size, until the walker takes them.
    ready: HashMap<ChunkId, (Tree, u64)>,
    ready_bytes: u64,
    /// Trees of the round being fetched.
    in_flight: HashSet<ChunkId>,
}

impl Ahead {
    fn lock(&self) -> MutexGuard<'_, AheadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The parent snapshot's trees, as the walker asks for them.
pub(crate) struct ParentTrees {
    source: Arc<ClusterSource>,
    handle: Handle,
    ahead: Arc<Ahead>,
    task: JoinHandle<()>,
}

impl ParentTrees {
    /// Starts fetching the trees under `root` on the runtime of `handle`.
    pub fn start(source: Arc<ClusterSource>, handle: Handle, root: ChunkId) -> Self {
        let ahead = Arc::new(Ahead::default());
        // The root is in flight before the walker can ask for it.
        ahead.lock().in_flight.insert(root);
        let task = handle.spawn(prefetch(source.clone(), ahead.clone(), root));
        ParentTrees { source, handle, ahead, task }
    }
}

impl Drop for ParentTrees {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TreeLoader for ParentTrees {
    fn load_tree(&self, id: &ChunkId) -> Result<Tree, ClientError> {
        let mut st = self.ahead.lock();
        loop {
            if let Some((tree, bytes)) = st.ready.remove(id) {
                st.ready_bytes -= bytes;
                drop(st);
                self.ahead.taken.notify_one();
                return Ok(tree);
            }
            if !st.in_flight.contains(id) {
                break;
            }
            st = self.ahead.arrived.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        self.handle.block_on(load_tree(&*self.source, *id))
    }
}

/// Fetches the trees under `root` breadth first, each distinct id once,
/// pausing while too many wait unread. Ends at the last tree or the first
/// failure (the walker then fetches what it needs itself).
async fn prefetch(source: Arc<ClusterSource>, ahead: Arc<Ahead>, root: ChunkId) {
    let counters = RestoreCounters::default();
    let mut seen: HashSet<ChunkId> = HashSet::from([root]);
    let mut frontier: VecDeque<ChunkId> = VecDeque::from([root]);
    while !frontier.is_empty() {
        loop {
            let taken = ahead.taken.notified();
            if ahead.lock().ready_bytes <= PREFETCH_BYTES {
                break;
            }
            taken.await;
        }
        let round: Vec<ChunkId> = frontier.drain(..frontier.len().min(ROUND)).collect();
        ahead.lock().in_flight.extend(round.iter().copied());
        // A failed round leaves its trees to the walker.
        let fetched = fetch_round(&source, &counters, round.clone()).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "prefetching parent trees failed");
            HashMap::new()
        });
        let mut st = ahead.lock();
        for (id, bytes) in fetched {
            let Ok(tree) = decode_tree(id, &bytes) else { continue };
            for node in tree.nodes() {
                if let NodeKind::Dir { subtree } = node.kind {
                    if seen.insert(subtree) {
                        frontier.push_back(subtree);
                    }
                }
            }
            st.ready_bytes += bytes.len() as u64;
            st.ready.insert(id, (tree, bytes.len() as u64));
        }
        for id in &round {
            st.in_flight.remove(id);
        }
        drop(st);
        ahead.arrived.notify_all();
    }
    // Nothing is in flight any more: a walker waiting on a tree the task
    // failed to fetch wakes and fetches it itself.
    ahead.lock().in_flight.clear();
    ahead.arrived.notify_all();
}

/// The encoded bytes of the trees `ids`, fetched in batches.
async fn fetch_round(
    source: &ClusterSource,
    counters: &RestoreCounters,
    ids: Vec<ChunkId>,
) -> Result<HashMap<ChunkId, Vec<u8>>, ClientError> {
    source.prepare(ids.clone()).await?;
    fetch_all(source, counters, ids).await
}
