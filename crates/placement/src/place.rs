//! Choosing nodes for a pack's shards: the whole pack ([`place`],
//! [`place_relaxed`]) or one lost shard ([`place_one`]).
//!
//! ```text
//!   candidates ─dedup, drop full─► sites ─rank by rendezvous score─►
//!   fill slots 0..k+m: each slot goes to the site with the fewest shards so
//!   far that has an unused node, ties to the site whose next node scores best
//! ```
//!
//! The invariant: a strict placement puts every shard on a distinct node and
//! at most `max_per_site` shards on any site, so losing one site loses at most
//! `m` shards. It succeeds exactly when `sum over sites of min(nodes, cap)`
//! reaches `k + m`, because the fill spreads shards as evenly as the sites
//! allow (see `fill`). Round-robin over sites also puts the first data
//! shards in different sites, which spreads healthy reads. Everything is a pure function of its inputs: sites are kept
//! in a `BTreeMap` and nodes ranked by a total order, so the candidate order
//! does not matter (except which of two duplicate entries is kept).

use std::collections::{BTreeMap, BTreeSet};

use coffer_types::{ErasureParams, NodeId, SiteId};

use crate::score::Rank;
use crate::PlacementError;

/// A storage node that may receive shards, as the cluster map knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub site: SiteId,
    pub free_bytes: u64,
}

/// The erasure code of the pack and how many of its shards one site may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub params: ErasureParams,
    pub max_per_site: usize,
}

impl Policy {
    /// At most `m` shards per site: exactly what a site loss can cost and
    /// still leave `k` shards to read.
    pub fn new(params: ErasureParams) -> Policy {
        Policy { params, max_per_site: params.m() }
    }
}

/// The nodes for a pack's shards; `nodes[i]` holds shard `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub nodes: Vec<NodeId>,
    /// True when the site rule could not be met; the nodes are still distinct.
    pub site_degraded: bool,
}

/// Places `k + m` shards on distinct nodes with at most `max_per_site` per site.
///
/// `seed` (typically the pack id) makes the choice differ between packs, so
/// load spreads over all nodes, and stay the same for the same pack. Nodes
/// without free space are never chosen; duplicate node ids keep their first entry.
pub fn place(policy: &Policy, candidates: &[Candidate], seed: &[u8]) -> Result<Placement, PlacementError> {
    let needed = policy.params.total();
    let sites = rank_sites(candidates, &BTreeSet::new(), seed);
    let available: usize = sites.values().map(|nodes| nodes.len()).sum();
    if available < needed {
        return Err(PlacementError::NotEnoughNodes { needed, available });
    }
    let capacity: usize = sites.values().map(|nodes| nodes.len().min(policy.max_per_site)).sum();
    let not_enough_sites =
        PlacementError::NotEnoughSites { needed, max_per_site: policy.max_per_site, sites: sites.len(), capacity };
    if capacity < needed {
        return Err(not_enough_sites);
    }
    let nodes = fill(&sites, needed).ok_or(not_enough_sites)?;
    Ok(Placement { nodes, site_degraded: false })
}

/// Like [`place`], but when too few sites remain for the site rule it still
/// places on distinct nodes, as evenly over the sites as possible (the most
/// loaded site holds as few shards as any assignment allows), and reports
/// `site_degraded = true`. Fails only with fewer than `k + m` usable nodes.
pub fn place_relaxed(policy: &Policy, candidates: &[Candidate], seed: &[u8]) -> Result<Placement, PlacementError> {
    match place(policy, candidates, seed) {
        Err(PlacementError::NotEnoughSites { needed, max_per_site, sites, capacity }) => {
            let ranked = rank_sites(candidates, &BTreeSet::new(), seed);
            let nodes = fill(&ranked, needed).ok_or(PlacementError::NotEnoughSites {
                needed,
                max_per_site,
                sites,
                capacity,
            })?;
            Ok(Placement { nodes, site_degraded: true })
        }
        other => other,
    }
}

/// For when fewer than `k + m` usable nodes exist: places shards
/// `0..n` on `n` distinct nodes, one per usable node, and leaves the rest
/// (parity, since `n >= k`) unplaced for the repair planner to write once
/// nodes return. The fill is the same water-filling as [`place_relaxed`], so
/// the shards spread as evenly over the sites as the nodes allow, and
/// `site_degraded` says whether the placed shards break the site rule.
/// With `k + m` or more usable nodes it is [`place_relaxed`]. Fails with
/// fewer than `min_shards` usable nodes (`min_shards` is clamped to
/// `k..=k + m`: never fewer than a read needs).
pub fn place_short(
    policy: &Policy,
    candidates: &[Candidate],
    seed: &[u8],
    min_shards: usize,
) -> Result<Placement, PlacementError> {
    let total = policy.params.total();
    let min_shards = min_shards.clamp(policy.params.k(), total);
    let sites = rank_sites(candidates, &BTreeSet::new(), seed);
    let available: usize = sites.values().map(|nodes| nodes.len()).sum();
    if available >= total {
        return place_relaxed(policy, candidates, seed);
    }
    if available < min_shards {
        return Err(PlacementError::NotEnoughNodes { needed: min_shards, available });
    }
    let nodes = fill(&sites, available).ok_or(PlacementError::NotEnoughNodes { needed: min_shards, available })?;
    let site_of: BTreeMap<NodeId, &SiteId> =
        sites.iter().flat_map(|(site, ranks)| ranks.iter().map(move |r| (r.node, *site))).collect();
    let assigned: Vec<(NodeId, SiteId)> =
        nodes.iter().filter_map(|n| site_of.get(n).map(|s| (*n, (*s).clone()))).collect();
    Ok(Placement { site_degraded: !satisfies(policy, &assigned), nodes })
}

/// Picks a node for one missing shard of an existing pack, for rebuild.
///
/// `current` lists the nodes (and their sites) that hold the pack's other
/// shards; they are never chosen. The target is the best-scoring node of the
/// site holding the fewest of the pack's shards: that site is under the cap
/// whenever any site with a spare node is, and a returning site gets its
/// shards back first. The flag is true when the pack
/// after this choice still breaks the site rule, so the caller can record it
/// as site-degraded.
pub fn place_one(
    policy: &Policy,
    candidates: &[Candidate],
    current: &[(NodeId, SiteId)],
    seed: &[u8],
) -> Result<(NodeId, bool), PlacementError> {
    let taken: BTreeSet<NodeId> = current.iter().map(|(node, _)| *node).collect();
    let mut load: BTreeMap<&SiteId, usize> = BTreeMap::new();
    for (_, site) in current {
        *load.entry(site).or_default() += 1;
    }
    let sites = rank_sites(candidates, &taken, seed);
    let best = sites
        .iter()
        .flat_map(|(site, nodes)| {
            let shards = load.get(site).copied().unwrap_or(0);
            nodes.iter().map(move |rank| (shards, rank, *site))
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.best_first(b.1)));
    let Some((_, rank, site)) = best else {
        return Err(PlacementError::NotEnoughNodes { needed: taken.len() + 1, available: taken.len() });
    };
    let mut after = current.to_vec();
    after.push((rank.node, site.clone()));
    Ok((rank.node, !satisfies(policy, &after)))
}

/// True if the assignment meets the rule: distinct nodes and at most
/// `max_per_site` per site. It does not check the shard count, so it also
/// applies to the partial assignment of a pack under rebuild.
pub fn satisfies(policy: &Policy, assigned: &[(NodeId, SiteId)]) -> bool {
    let mut nodes = BTreeSet::new();
    let mut per_site: BTreeMap<&SiteId, usize> = BTreeMap::new();
    for (node, site) in assigned {
        if !nodes.insert(*node) {
            return false;
        }
        let count = per_site.entry(site).or_default();
        *count += 1;
        if *count > policy.max_per_site {
            return false;
        }
    }
    true
}

/// Usable candidates grouped by site, each site's nodes best first.
/// Duplicates keep their first entry; full nodes and `excluded` ones are dropped.
fn rank_sites<'a>(
    candidates: &'a [Candidate],
    excluded: &BTreeSet<NodeId>,
    seed: &[u8],
) -> BTreeMap<&'a SiteId, Vec<Rank>> {
    let mut seen = BTreeSet::new();
    let mut sites: BTreeMap<&SiteId, Vec<Rank>> = BTreeMap::new();
    for candidate in candidates {
        if !seen.insert(candidate.node) || candidate.free_bytes == 0 || excluded.contains(&candidate.node) {
            continue;
        }
        sites.entry(&candidate.site).or_default().push(Rank::new(seed, candidate.node, candidate.free_bytes));
    }
    for nodes in sites.values_mut() {
        nodes.sort_by(Rank::best_first);
    }
    sites
}

/// Fills `slots` shard slots, one at a time, into the least-loaded site that
/// has an unused node; ties go to the site whose next node scores best.
/// Returns `None` if it runs out of nodes first.
///
/// This is water-filling, so the busiest site ends with the fewest shards any
/// assignment allows: the smallest `L` for which the sum over sites of
/// `min(nodes, L)` reaches `slots`. Whenever the site rule can be met at all, `L <= max_per_site`,
/// so the fill needs no cap of its own, and the strict and relaxed forms
/// choose the same nodes whenever the strict one succeeds.
fn fill(sites: &BTreeMap<&SiteId, Vec<Rank>>, slots: usize) -> Option<Vec<NodeId>> {
    // Per site: how many of its ranked nodes are used so far. Nodes are used
    // best first, so that count is also the index of the next node.
    let mut used: Vec<(usize, &Vec<Rank>)> = sites.values().map(|nodes| (0, nodes)).collect();
    let mut chosen = Vec::with_capacity(slots);
    for _ in 0..slots {
        let (count, nodes) = used
            .iter_mut()
            .filter(|(count, nodes)| *count < nodes.len())
            .min_by(|(ca, na), (cb, nb)| ca.cmp(cb).then(na[*ca].best_first(&nb[*cb])))?;
        chosen.push(nodes[*count].node);
        *count += 1;
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> SiteId {
        SiteId::new(name).unwrap()
    }

    /// `sites` sites named s0.., `per_site` nodes each, ids 1.., equal free space.
    fn cluster(sites: usize, per_site: usize) -> Vec<Candidate> {
        let mut out = Vec::new();
        for s in 0..sites {
            for n in 0..per_site {
                out.push(Candidate {
                    node: NodeId((s * per_site + n + 1) as u64),
                    site: site(&format!("s{s}")),
                    free_bytes: 1 << 30,
                });
            }
        }
        out
    }

    fn policy(k: u32, m: u32) -> Policy {
        Policy::new(ErasureParams::new(k, m).unwrap())
    }

    fn with_sites(candidates: &[Candidate], nodes: &[NodeId]) -> Vec<(NodeId, SiteId)> {
        nodes.iter().map(|n| (*n, candidates.iter().find(|c| c.node == *n).unwrap().site.clone())).collect()
    }

    fn per_site(candidates: &[Candidate], nodes: &[NodeId]) -> BTreeMap<SiteId, usize> {
        let mut out = BTreeMap::new();
        for (_, s) in with_sites(candidates, nodes) {
            *out.entry(s).or_default() += 1;
        }
        out
    }

    #[test]
    fn default_policy_fills_three_sites_evenly() {
        let c = cluster(3, 2);
        let p = place(&policy(4, 2), &c, b"pack").unwrap();
        assert_eq!(p.nodes.len(), 6);
        assert!(!p.site_degraded);
        assert!(satisfies(&policy(4, 2), &with_sites(&c, &p.nodes)));
        assert!(per_site(&c, &p.nodes).values().all(|&n| n == 2));
        // The data shards already cover every site, so reads spread too.
        assert_eq!(per_site(&c, &p.nodes[..3]).len(), 3);
    }

    #[test]
    fn lost_site_is_an_error_strictly_and_degraded_relaxed() {
        let c = cluster(2, 3);
        let pol = policy(4, 2);
        assert_eq!(
            place(&pol, &c, b"pack"),
            Err(PlacementError::NotEnoughSites { needed: 6, max_per_site: 2, sites: 2, capacity: 4 })
        );
        let p = place_relaxed(&pol, &c, b"pack").unwrap();
        assert!(p.site_degraded);
        assert_eq!(p.nodes.iter().collect::<BTreeSet<_>>().len(), 6);
        assert!(per_site(&c, &p.nodes).values().all(|&n| n == 3));

        let small = cluster(2, 2);
        let short = Err(PlacementError::NotEnoughNodes { needed: 6, available: 4 });
        assert_eq!(place(&pol, &small, b"pack"), short);
        assert_eq!(place_relaxed(&pol, &small, b"pack"), short);
    }

    #[test]
    fn short_placement_uses_every_node_left_and_keeps_the_site_rule() {
        let pol = policy(4, 2);
        // One node of the default topology down: five shards, at most two
        // per site, data shards spread over the three sites.
        let c: Vec<Candidate> = cluster(3, 2).into_iter().filter(|x| x.node != NodeId(3)).collect();
        assert_eq!(place(&pol, &c, b"pack"), Err(PlacementError::NotEnoughNodes { needed: 6, available: 5 }));
        let p = place_short(&pol, &c, b"pack", 4).unwrap();
        assert_eq!(p.nodes.len(), 5);
        assert!(!p.site_degraded);
        assert_eq!(p.nodes.iter().collect::<BTreeSet<_>>().len(), 5);
        assert!(satisfies(&pol, &with_sites(&c, &p.nodes)));
        assert_eq!(per_site(&c, &p.nodes[..3]).len(), 3);
        // A whole site down: four shards, two per remaining site.
        let c: Vec<Candidate> = cluster(3, 2).into_iter().filter(|x| x.site != site("s0")).collect();
        let p = place_short(&pol, &c, b"pack", 4).unwrap();
        assert_eq!(p.nodes.len(), 4);
        assert!(!p.site_degraded);
        // Below the minimum it still fails, naming the minimum.
        assert_eq!(place_short(&pol, &c, b"pack", 5), Err(PlacementError::NotEnoughNodes { needed: 5, available: 4 }));
        let c: Vec<Candidate> = c.into_iter().filter(|x| x.node != NodeId(6)).collect();
        assert_eq!(place_short(&pol, &c, b"pack", 0), Err(PlacementError::NotEnoughNodes { needed: 4, available: 3 }));
        // With enough nodes it is the full placement.
        let c = cluster(3, 2);
        assert_eq!(place_short(&pol, &c, b"pack", 4), place(&pol, &c, b"pack"));
        // Three nodes on one site and one on another: placed, site-degraded.
        let mut c = cluster(1, 3);
        c.push(Candidate { node: NodeId(9), site: site("s9"), free_bytes: 1 << 30 });
        let p = place_short(&pol, &c, b"pack", 4).unwrap();
        assert_eq!(p.nodes.len(), 4);
        assert!(p.site_degraded);
    }

    #[test]
    fn relaxed_equals_strict_when_strict_works() {
        let c = cluster(4, 3);
        for seed in 0u32..50 {
            let seed = seed.to_be_bytes();
            assert_eq!(place(&policy(4, 2), &c, &seed), place_relaxed(&policy(4, 2), &c, &seed));
        }
    }

    #[test]
    fn full_and_duplicate_nodes_are_skipped() {
        let mut c = cluster(3, 2);
        c[0].free_bytes = 0;
        // A second entry for node 1 (full above) must not bring it back.
        c.push(Candidate { node: NodeId(1), site: site("s9"), free_bytes: 1 << 40 });
        assert_eq!(place(&policy(4, 2), &c, b"pack"), Err(PlacementError::NotEnoughNodes { needed: 6, available: 5 }));
        c.push(Candidate { node: NodeId(99), site: site("s0"), free_bytes: 1 });
        let p = place(&policy(4, 2), &c, b"pack").unwrap();
        assert!(!p.nodes.contains(&NodeId(1)));
        assert!(p.nodes.contains(&NodeId(99)));
    }

    #[test]
    fn seeds_spread_load_over_every_node() {
        let c = cluster(4, 3);
        let mut hits: BTreeMap<NodeId, usize> = BTreeMap::new();
        let packs = 600;
        for seed in 0u32..packs {
            for node in place(&policy(4, 2), &c, &seed.to_be_bytes()).unwrap().nodes {
                *hits.entry(node).or_default() += 1;
            }
        }
        let mean = (packs as usize * 6) / c.len();
        assert_eq!(hits.len(), c.len());
        for (node, n) in hits {
            assert!(n > mean * 2 / 3 && n < mean * 4 / 3, "{node:?} got {n} shards, mean {mean}");
        }
    }

    #[test]
    fn free_space_weights_the_choice_within_a_site() {
        let mut c = cluster(1, 3);
        c[0].free_bytes = 1 << 20;
        c[1].free_bytes = 1 << 40;
        c[2].free_bytes = 1 << 40;
        let pol = Policy { params: ErasureParams::new(1, 1).unwrap(), max_per_site: 2 };
        let small = (0u32..1000)
            .filter(|seed| place(&pol, &c, &seed.to_be_bytes()).unwrap().nodes.contains(&NodeId(1)))
            .count();
        assert!(small < 20, "a nearly full node was chosen {small} times in 1000");
    }

    #[test]
    fn place_one_refills_the_site_that_lost_a_shard() {
        let c = cluster(3, 3);
        let pol = policy(4, 2);
        let p = place(&pol, &c, b"pack").unwrap();
        let lost = p.nodes[0];
        let survivors: Vec<Candidate> = c.iter().filter(|x| x.node != lost).cloned().collect();
        let current = with_sites(&c, &p.nodes[1..]);
        let (node, degraded) = place_one(&pol, &survivors, &current, b"pack/0").unwrap();
        assert!(!degraded);
        assert!(!p.nodes.contains(&node));
        let lost_site = &c.iter().find(|x| x.node == lost).unwrap().site;
        assert_eq!(&c.iter().find(|x| x.node == node).unwrap().site, lost_site);
    }

    #[test]
    fn place_one_degrades_when_only_full_sites_have_nodes() {
        // Site s0 is gone; s1 and s2 hold two shards each and one spare node each.
        let c = cluster(3, 3);
        let pol = policy(4, 2);
        let current: Vec<(NodeId, SiteId)> = with_sites(&c, &[NodeId(4), NodeId(5), NodeId(7), NodeId(8)]);
        let alive: Vec<Candidate> = c.iter().filter(|x| x.site != site("s0")).cloned().collect();
        let (node, degraded) = place_one(&pol, &alive, &current, b"seed").unwrap();
        assert!(degraded);
        assert!([NodeId(6), NodeId(9)].contains(&node));
        // With s0 back, the same call prefers it and the pack is whole again.
        let (node, degraded) = place_one(&pol, &c, &current, b"seed").unwrap();
        assert!(!degraded);
        assert!([NodeId(1), NodeId(2), NodeId(3)].contains(&node));
    }

    #[test]
    fn place_one_without_spare_nodes_is_an_error() {
        let c = cluster(3, 2);
        let current = with_sites(&c, &[NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)]);
        let alive: Vec<Candidate> = c.iter().filter(|x| x.node != NodeId(6)).cloned().collect();
        assert_eq!(
            place_one(&policy(4, 2), &alive, &current, b"seed"),
            Err(PlacementError::NotEnoughNodes { needed: 6, available: 5 })
        );
    }

    #[test]
    fn satisfies_checks_both_rules() {
        let pol = policy(2, 1);
        let a = (NodeId(1), site("a"));
        let b = (NodeId(2), site("b"));
        let a2 = (NodeId(3), site("a"));
        assert!(satisfies(&pol, &[a.clone(), b.clone()]));
        assert!(!satisfies(&pol, &[a.clone(), a.clone()]));
        assert!(!satisfies(&pol, &[a, b, a2]));
        assert!(satisfies(&pol, &[]));
    }
}
