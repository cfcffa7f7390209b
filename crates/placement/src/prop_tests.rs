//! Property tests for the placement invariant on random clusters: a strict
//! placement always meets the site rule and fails only when no assignment
//! can; the relaxed one always succeeds with enough nodes and spreads as
//! evenly as possible; rebuild choices never reuse a node; all of it is
//! deterministic.

use std::collections::{BTreeMap, BTreeSet};

use coffer_types::{ErasureParams, NodeId, SiteId};
use proptest::prelude::*;

use crate::{place, place_one, place_relaxed, place_short, satisfies, Candidate, Placement, PlacementError, Policy};

/// A random cluster: 1..=6 sites of 1..=5 nodes, some of them full, plus a
/// few duplicate entries (with another site and free space) that must be ignored.
fn cluster() -> impl Strategy<Value = Vec<Candidate>> {
    let free = prop_oneof![1 => Just(0u64), 4 => 1u64..=1 << 44];
    let sites = prop::collection::vec(prop::collection::vec(free, 1..=5), 1..=6);
    let dups = prop::collection::vec((any::<prop::sample::Index>(), 0u64..=1 << 44), 0..=2);
    (sites, dups).prop_map(|(sites, dups)| {
        let mut out = Vec::new();
        for (s, nodes) in sites.iter().enumerate() {
            for (n, &free_bytes) in nodes.iter().enumerate() {
                out.push(Candidate {
                    node: NodeId((s * 10 + n + 1) as u64),
                    site: SiteId::new(format!("site-{s}")).unwrap(),
                    free_bytes,
                });
            }
        }
        for (which, free_bytes) in dups {
            let node = out[which.index(out.len())].node;
            out.push(Candidate { node, site: SiteId::new("dup").unwrap(), free_bytes });
        }
        out
    })
}

/// A code with `k` in 1..=6, `m` in 1..=4, and either the default cap `m` or another one.
fn policy() -> impl Strategy<Value = Policy> {
    (1u32..=6, 1u32..=4, prop::option::of(1usize..=4)).prop_map(|(k, m, cap)| {
        let mut policy = Policy::new(ErasureParams::new(k, m).unwrap());
        if let Some(cap) = cap {
            policy.max_per_site = cap;
        }
        policy
    })
}

/// The oracle's view: usable nodes per site, with the first entry of a duplicated node winning.
fn usable(candidates: &[Candidate]) -> BTreeMap<NodeId, Candidate> {
    let mut out = BTreeMap::new();
    for c in candidates {
        out.entry(c.node).or_insert_with(|| c.clone());
    }
    out.retain(|_, c| c.free_bytes > 0);
    out
}

fn nodes_per_site(usable: &BTreeMap<NodeId, Candidate>) -> BTreeMap<SiteId, usize> {
    let mut out = BTreeMap::new();
    for c in usable.values() {
        *out.entry(c.site.clone()).or_default() += 1;
    }
    out
}

fn assigned(usable: &BTreeMap<NodeId, Candidate>, nodes: &[NodeId]) -> Vec<(NodeId, SiteId)> {
    nodes.iter().map(|n| (*n, usable[n].site.clone())).collect()
}

fn max_load(assigned: &[(NodeId, SiteId)]) -> usize {
    let mut per_site: BTreeMap<&SiteId, usize> = BTreeMap::new();
    for (_, site) in assigned {
        *per_site.entry(site).or_default() += 1;
    }
    per_site.into_values().max().unwrap_or(0)
}

fn distinct(nodes: &[NodeId]) -> bool {
    nodes.iter().collect::<BTreeSet<_>>().len() == nodes.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn strict_placement_meets_the_rule_or_none_can(
        candidates in cluster(),
        policy in policy(),
        seed in prop::collection::vec(any::<u8>(), 0..=32),
    ) {
        let needed = policy.params.total();
        let usable = usable(&candidates);
        let per_site = nodes_per_site(&usable);
        let capacity: usize = per_site.values().map(|&n| n.min(policy.max_per_site)).sum();
        match place(&policy, &candidates, &seed) {
            Ok(Placement { nodes, site_degraded }) => {
                prop_assert!(!site_degraded);
                prop_assert_eq!(nodes.len(), needed);
                prop_assert!(distinct(&nodes));
                prop_assert!(nodes.iter().all(|n| usable.contains_key(n)), "placed on a full or unknown node");
                prop_assert!(satisfies(&policy, &assigned(&usable, &nodes)));
                prop_assert!(capacity >= needed);
            }
            Err(PlacementError::NotEnoughNodes { needed: n, available }) => {
                prop_assert_eq!(n, needed);
                prop_assert_eq!(available, usable.len());
                prop_assert!(available < needed);
            }
            Err(PlacementError::NotEnoughSites { needed: n, capacity: cap, sites, .. }) => {
                prop_assert_eq!(n, needed);
                prop_assert_eq!(cap, capacity);
                prop_assert_eq!(sites, per_site.len());
                prop_assert!(usable.len() >= needed && capacity < needed);
            }
        }
    }

    #[test]
    fn placement_is_deterministic(
        candidates in cluster(),
        policy in policy(),
        seed in prop::collection::vec(any::<u8>(), 0..=32),
    ) {
        prop_assert_eq!(place(&policy, &candidates, &seed), place(&policy, &candidates, &seed));
        prop_assert_eq!(place_relaxed(&policy, &candidates, &seed), place_relaxed(&policy, &candidates, &seed));
        // The order of the cluster map does not matter either, once duplicates
        // are resolved the same way.
        let mut reordered: Vec<Candidate> = usable(&candidates).into_values().collect();
        reordered.reverse();
        prop_assert_eq!(place(&policy, &reordered, &seed), place(&policy, &candidates, &seed));
        prop_assert_eq!(place_relaxed(&policy, &reordered, &seed), place_relaxed(&policy, &candidates, &seed));
    }

    #[test]
    fn relaxed_placement_succeeds_with_enough_nodes(
        candidates in cluster(),
        policy in policy(),
        seed in prop::collection::vec(any::<u8>(), 0..=32),
    ) {
        let needed = policy.params.total();
        let usable = usable(&candidates);
        let relaxed = place_relaxed(&policy, &candidates, &seed);
        if usable.len() < needed {
            prop_assert_eq!(relaxed, Err(PlacementError::NotEnoughNodes { needed, available: usable.len() }));
            return Ok(());
        }
        let Placement { nodes, site_degraded } = relaxed.unwrap();
        prop_assert_eq!(nodes.len(), needed);
        prop_assert!(distinct(&nodes));
        prop_assert!(nodes.iter().all(|n| usable.contains_key(n)));
        let assigned = assigned(&usable, &nodes);
        prop_assert_eq!(site_degraded, !satisfies(&policy, &assigned));
        if let Ok(strict) = place(&policy, &candidates, &seed) {
            prop_assert_eq!(&strict.nodes, &nodes);
        }
        // As even as possible: the busiest site holds the least any assignment can,
        // the smallest L with sum over sites of min(nodes, L) >= k + m.
        let per_site = nodes_per_site(&usable);
        let best = (1..=needed).find(|&l| per_site.values().map(|&n| n.min(l)).sum::<usize>() >= needed);
        prop_assert_eq!(Some(max_load(&assigned)), best);
    }

    #[test]
    fn short_placement_uses_every_usable_node_down_to_the_minimum(
        candidates in cluster(),
        policy in policy(),
        seed in prop::collection::vec(any::<u8>(), 0..=32),
        min_shards in 0usize..=12,
    ) {
        let (k, total) = (policy.params.k(), policy.params.total());
        let usable = usable(&candidates);
        let floor = min_shards.clamp(k, total);
        let short = place_short(&policy, &candidates, &seed, min_shards);
        prop_assert_eq!(&short, &place_short(&policy, &candidates, &seed, min_shards));
        if usable.len() >= total {
            prop_assert_eq!(short, place_relaxed(&policy, &candidates, &seed));
            return Ok(());
        }
        if usable.len() < floor {
            prop_assert_eq!(short, Err(PlacementError::NotEnoughNodes { needed: floor, available: usable.len() }));
            return Ok(());
        }
        let Placement { nodes, site_degraded } = short.unwrap();
        prop_assert_eq!(nodes.len(), usable.len());
        prop_assert!(nodes.len() >= k && nodes.len() < total);
        prop_assert!(distinct(&nodes));
        prop_assert!(nodes.iter().all(|n| usable.contains_key(n)));
        let assigned = assigned(&usable, &nodes);
        prop_assert_eq!(site_degraded, !satisfies(&policy, &assigned));
        // Every node holds one shard, so the load per site is its node count:
        // the rule holds exactly when no site has more nodes than the cap.
        let per_site = nodes_per_site(&usable);
        prop_assert_eq!(site_degraded, per_site.values().any(|&n| n > policy.max_per_site));
    }

    #[test]
    fn rebuild_target_is_new_and_keeps_the_rule_when_it_can(
        candidates in cluster(),
        policy in policy(),
        seed in prop::collection::vec(any::<u8>(), 0..=32),
        lost in any::<prop::sample::Index>(),
    ) {
        let usable = usable(&candidates);
        let Ok(Placement { nodes, site_degraded }) = place_relaxed(&policy, &candidates, &seed) else {
            return Ok(());
        };
        let lost = lost.index(nodes.len());
        let current: Vec<(NodeId, SiteId)> =
            assigned(&usable, &nodes).into_iter().enumerate().filter(|(i, _)| *i != lost).map(|(_, a)| a).collect();
        let alive: Vec<Candidate> = candidates.iter().filter(|c| c.node != nodes[lost]).cloned().collect();
        let spare: Vec<&Candidate> =
            usable.values().filter(|c| c.node != nodes[lost] && !nodes.contains(&c.node)).collect();

        let result = place_one(&policy, &alive, &current, &seed);
        prop_assert_eq!(&result, &place_one(&policy, &alive, &current, &seed));
        let Ok((node, degraded)) = result else {
            prop_assert!(spare.is_empty(), "no target chosen though spare nodes exist");
            return Ok(());
        };
        prop_assert!(spare.iter().any(|c| c.node == node), "target is not a spare usable node");
        let mut after = current.clone();
        after.push((node, usable[&node].site.clone()));
        prop_assert_eq!(degraded, !satisfies(&policy, &after));
        // A pack that met the rule keeps meeting it whenever some spare node
        // sits in a site with room.
        let load = |site: &SiteId| current.iter().filter(|(_, s)| s == site).count();
        let room = spare.iter().any(|c| load(&c.site) < policy.max_per_site);
        if !site_degraded && room {
            prop_assert!(!degraded);
        }
    }
}
