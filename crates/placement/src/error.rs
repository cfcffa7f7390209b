//! The one error type of this crate: the cluster cannot hold a pack under the policy.

/// Why no placement could be chosen. Both variants carry the counts that
/// were short, which is what an operator needs to decide what to add.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Fewer distinct usable nodes (known, with free space) than shards to place.
    #[error("not enough storage nodes: {needed} needed, {available} available")]
    NotEnoughNodes { needed: usize, available: usize },
    /// Enough nodes, but too few sites to keep at most `max_per_site` shards in each.
    #[error(
        "not enough sites: {needed} shards at most {max_per_site} per site, but {sites} sites hold only {capacity}"
    )]
    NotEnoughSites { needed: usize, max_per_site: usize, sites: usize, capacity: usize },
}
