//! Leader-only, volatile liveness of storage nodes.
//!
//! Heartbeats are frequent and carry nothing the catalog must keep, so they
//! are not written through Raft: the leader remembers when it last heard
//! from each node (monotonic clock) and derives `up`/`suspect`/`down`. A new
//! leader knows nothing yet, so it counts every node as heard from at the
//! moment it took office: a leader change never marks a healthy node down.
//! The catalog keeps a coarse last-seen time, written every
//! `persist_seen_every`, for incident records.
//!
//! `took_office` is the one leader-change hook. It is idempotent per term,
//! and both the leadership watcher and the repair planner call it before
//! anything else, so liveness is reset before the first repair tick of a
//! new term whichever of the two notices the new term first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_proto::pb;
use coffer_types::{NodeId, NodeState};

#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub at: Instant,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    /// Free space of the node's filesystem, if it reported one.
    pub free_bytes: Option<u64>,
    /// Space the node keeps free; it refuses puts that would cross it.
    pub reserve_bytes: u64,
    /// Bytes of orphan shards it found and has not collected yet.
    pub orphan_bytes: u64,
}

/// What a node says about its space with a heartbeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: Option<u64>,
    pub reserve_bytes: u64,
    pub orphan_bytes: u64,
}

impl Seen {
    /// Bytes placement may still put on the node: free space above its
    /// reserve, or (a node that reports no free space) capacity - used.
    /// 0 means full: placement skips the node.
    pub fn placeable_bytes(&self) -> u64 {
        match self.free_bytes {
            Some(free) => free.saturating_sub(self.reserve_bytes),
            None => self.capacity_bytes.saturating_sub(self.used_bytes),
        }
    }
}

struct Inner {
    seen: HashMap<NodeId, Seen>,
    baseline: Instant,
    /// The term whose start `baseline` is.
    term: Option<u64>,
    /// Each storage node's workers, as its last heartbeat reported them.
    workers: HashMap<NodeId, Vec<pb::WorkerStatus>>,
}

pub struct Liveness {
    inner: Mutex<Inner>,
    suspect_after: Duration,
    down_after: Duration,
}

impl Liveness {
    pub fn new(suspect_after: Duration, down_after: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                baseline: Instant::now(),
                term: None,
                workers: HashMap::new(),
            }),
            suspect_after,
            down_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leader-change hook: the first call for a term in which this node
    /// leads starts every clock afresh (every node counts as seen now);
    /// later calls for the same term change nothing. Returns whether it reset.
    pub fn took_office(&self, term: u64) -> bool {
        let mut inner = self.lock();
        if inner.term == Some(term) {
            return false;
        }
        inner.term = Some(term);
        inner.seen.clear();
        inner.workers.clear();
        inner.baseline = Instant::now();
        true
    }

    /// Records the workers a node reported with its heartbeat.
    pub fn set_workers(&self, node: NodeId, workers: Vec<pb::WorkerStatus>) {
        self.lock().workers.insert(node, workers);
    }

    /// Every storage node's workers, by node id.
    pub fn workers(&self) -> Vec<pb::WorkerStatus> {
        let inner = self.lock();
        let mut nodes: Vec<&NodeId> = inner.workers.keys().collect();
        nodes.sort();
        nodes.into_iter().flat_map(|n| inner.workers[n].iter().cloned()).collect()
    }

    pub fn seen(&self, node: NodeId, used_bytes: u64, capacity_bytes: u64) {
        let _ = self.seen_usage(node, Usage { used_bytes, capacity_bytes, ..Usage::default() });
    }

    /// Records a heartbeat and the space it reports; true when the node
    /// was not up before it (it comes back, or is heard from first).
    pub fn seen_usage(&self, node: NodeId, u: Usage) -> bool {
        let seen = Seen {
            at: Instant::now(),
            used_bytes: u.used_bytes,
            capacity_bytes: u.capacity_bytes,
            free_bytes: u.free_bytes,
            reserve_bytes: u.reserve_bytes,
            orphan_bytes: u.orphan_bytes,
        };
        let mut inner = self.lock();
        let last = inner.seen.get(&node).map(|s| s.at).unwrap_or(inner.baseline);
        let returned = last.elapsed() >= self.suspect_after;
        inner.seen.insert(node, seen);
        returned
    }

    pub fn get(&self, node: NodeId) -> Option<Seen> {
        self.lock().seen.get(&node).copied()
    }

    pub fn state(&self, node: NodeId) -> NodeState {
        let inner = self.lock();
        let last = inner.seen.get(&node).map(|s| s.at).unwrap_or(inner.baseline);
        let age = last.elapsed();
        if age >= self.down_after {
            NodeState::Down
        } else if age >= self.suspect_after {
            NodeState::Suspect
        } else {
            NodeState::Up
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_nodes_get_a_grace_period_from_the_baseline() {
        let l = Liveness::new(Duration::from_secs(60), Duration::from_secs(120));
        assert_eq!(l.state(NodeId(1)), NodeState::Up);
        let l = Liveness::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(l.state(NodeId(1)), NodeState::Down);
    }

    #[test]
    fn taking_office_resets_once_per_term() {
        let l = Liveness::new(Duration::from_secs(60), Duration::from_secs(120));
        assert!(l.took_office(3));
        l.seen(NodeId(1), 5, 10);
        // The watcher and the planner both call the hook: the second call of
        // the same term must not forget what was heard since.
        assert!(!l.took_office(3));
        assert_eq!(l.get(NodeId(1)).map(|s| s.used_bytes), Some(5));
        assert!(l.took_office(4));
        assert!(l.get(NodeId(1)).is_none(), "a new term starts afresh");
    }

    #[test]
    fn placeable_bytes_keep_the_reserve_free() {
        let l = Liveness::new(Duration::from_secs(60), Duration::from_secs(120));
        let usage =
            Usage { used_bytes: 10, capacity_bytes: 100, free_bytes: Some(50), reserve_bytes: 20, orphan_bytes: 0 };
        l.seen_usage(NodeId(1), usage);
        assert_eq!(l.get(NodeId(1)).map(|s| s.placeable_bytes()), Some(30));
        // A full filesystem is full whatever the announced capacity says.
        l.seen_usage(NodeId(1), Usage { free_bytes: Some(19), ..usage });
        assert_eq!(l.get(NodeId(1)).map(|s| s.placeable_bytes()), Some(0));
        // A node that reports no free space is judged by capacity - used.
        l.seen(NodeId(2), 10, 100);
        assert_eq!(l.get(NodeId(2)).map(|s| s.placeable_bytes()), Some(90));
    }
}
