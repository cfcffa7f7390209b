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
        self.lock().seen.insert(node, Seen { at: Instant::now(), used_bytes, capacity_bytes });
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
}
