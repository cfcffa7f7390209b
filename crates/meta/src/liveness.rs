//! Leader-only, volatile liveness of storage nodes.
//!
//! Heartbeats are frequent and carry nothing the catalog must keep, so they
//! are not written through Raft: the leader remembers when it last heard
//! from each node (monotonic clock) and derives `up`/`suspect`/`down`. A new
//! leader knows nothing yet, so it counts every node as heard from at the
//! moment it took office: a leader change never marks a healthy node down.
//! The catalog keeps a coarse last-seen time, written every
//! `persist_seen_every`, for incident records.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
}

pub struct Liveness {
    inner: Mutex<Inner>,
    suspect_after: Duration,
    down_after: Duration,
}

impl Liveness {
    pub fn new(suspect_after: Duration, down_after: Duration) -> Self {
        Self { inner: Mutex::new(Inner { seen: HashMap::new(), baseline: Instant::now() }), suspect_after, down_after }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called when this node becomes leader: start every clock afresh.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.seen.clear();
        inner.baseline = Instant::now();
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
}
