//! Entry points for `make scale` (`examples/scale.rs`): the catalog reads
//! of the leader's duties, callable on a bare state machine without a Raft
//! node, so that their cost can be measured against the catalog's size.
//! They are the functions the duties themselves call, not copies.

use std::collections::{HashMap, HashSet};

use coffer_types::{NodeId, NodeRecord};

use crate::kv;
use crate::MetaError;

/// The catalog reads of one repair-planner tick when every node is up and
/// nothing is wrong: the node map, bad shards, shard counts, open
/// incidents, drains, and the packs that can have work. Returns how many
/// packs the tick would examine (0 when there is nothing to do).
pub fn idle_tick(tree: &crate::store::Tree) -> Result<usize, MetaError> {
    let nodes: Vec<NodeRecord> = kv::scan(tree, "node", kv::NODE_PREFIX)?;
    let bad = crate::repair::bad_shards(tree)?;
    let held = crate::index::held(tree)?;
    let _open = crate::index::open_incidents(tree)?;
    let draining = kv::draining(tree)?;
    let known: HashSet<NodeId> = nodes.iter().map(|r| r.id).collect();
    let suspect = |n: &NodeId| draining.contains_key(n) || !known.contains(n);
    Ok(crate::repair::packs_with_work(tree, &held, suspect, &bad)?.len())
}

/// What `ClusterStatus` reads of the catalog with every node up: the node
/// map, pack health and the counters. Returns (healthy packs, chunks).
pub fn cluster_status(tree: &crate::store::Tree) -> Result<(u64, u64), MetaError> {
    let nodes: Vec<NodeRecord> = kv::scan(tree, "node", kv::NODE_PREFIX)?;
    let up: HashSet<u64> = nodes.iter().map(|r| r.id.0).collect();
    let health = crate::catalog::pack_health(tree, &up)?;
    let mut counters = HashMap::new();
    for what in ["repos", "snapshots", "chunks"] {
        counters.insert(what, kv::get::<u64>(tree, "counter", &kv::count_key(what))?.unwrap_or(0));
    }
    Ok((health.healthy, counters["chunks"]))
}
