//! Cluster map + policy -> the storage nodes for a pack's `k + m` shards.
//!
//! ```text
//!   candidates (node, site, free bytes) ─┐
//!   policy (k, m, max_per_site) ─────────┼─► place / place_relaxed ─► nodes[shard index]
//!   seed (the pack id) ──────────────────┘   place_one ─► a node for one lost shard
//! ```
//!
//! The invariant: shards go to distinct nodes and any one site holds at most
//! `max_per_site` (by default `m`) of a pack's shards, so a whole site can be
//! lost and the remaining `k` shards still give the pack back. When too few
//! sites remain, the relaxed forms keep node-level redundancy and say the
//! pack is site-degraded; with fewer than `k + m` nodes, `place_short`
//! uses every node there is and leaves the rest of the shards unplaced.
//! Placement is pure and deterministic: the same
//! inputs give the same nodes, on any machine, with no clock or randomness.

mod error;
mod place;
#[cfg(test)]
mod prop_tests;
mod score;

pub use error::PlacementError;
pub use place::{place, place_one, place_relaxed, place_short, satisfies, Candidate, Placement, Policy};
