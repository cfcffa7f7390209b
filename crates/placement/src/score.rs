//! Rendezvous (highest-random-weight) scores: every (seed, node) pair gets a
//! pseudo-random score, and a pack's shards go to the best-scoring nodes.
//!
//! The invariant is determinism on every machine: the score uses BLAKE3 and
//! only IEEE-754 `+ - * /` (which are exactly rounded everywhere), never the
//! platform's `ln`, whose last bits may differ between libm builds. Because a
//! node's score does not depend on the other nodes, adding or removing a node
//! mostly moves only the shards that node wins or held, which keeps
//! rebalancing small.
//!
//! Scores are weighted by free space with the standard weighted-rendezvous
//! form `w / -ln(u)`, `u` uniform in (0, 1): a node with twice the free bytes
//! wins about twice as often among its peers.

use std::cmp::Ordering;

use coffer_types::NodeId;

/// A node's score for one seed; higher wins. Ties (which need equal hashes)
/// fall back to the smaller node id so the order is total.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rank {
    pub score: f64,
    pub node: NodeId,
}

impl Rank {
    pub fn new(seed: &[u8], node: NodeId, free_bytes: u64) -> Rank {
        let mut hasher = blake3::Hasher::new();
        hasher.update(seed);
        hasher.update(&node.0.to_be_bytes());
        let digest = hasher.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest.as_bytes()[..8]);
        let bits = u64::from_be_bytes(head);
        // 53 random bits, centred in their interval, give u strictly inside
        // (0, 1): -ln(u) is then finite and positive.
        let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        Rank { score: free_bytes as f64 / -ln(u), node }
    }

    /// Best first: higher score, then smaller node id.
    pub fn best_first(&self, other: &Rank) -> Ordering {
        other.score.total_cmp(&self.score).then(self.node.cmp(&other.node))
    }
}

/// Natural logarithm of a positive normal `x`, from basic arithmetic only.
///
/// `x = mant * 2^exp` with `mant` in `[sqrt(1/2), sqrt(2))`, and
/// `ln(mant) = 2 atanh(z)` with `z = (mant - 1) / (mant + 1)`, `|z| < 0.172`;
/// twelve terms of the atanh series are below one ulp.
fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut mant = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if mant > std::f64::consts::SQRT_2 {
        mant /= 2.0;
        exp += 1;
    }
    let z = (mant - 1.0) / (mant + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    for n in 0..12 {
        sum += term / (2 * n + 1) as f64;
        term *= z2;
    }
    exp as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_matches_the_platform() {
        // Values on both sides of the mantissa fold at sqrt(1/2) included.
        let fold = std::f64::consts::FRAC_1_SQRT_2;
        for x in [1e-16, 1.1e-12, 0.001, 0.1, 0.25, 0.5, fold * 0.999_999, fold * 1.000_001, 0.9, 0.999_999, 1.0] {
            let (ours, std) = (ln(x), x.ln());
            assert!((ours - std).abs() <= 1e-14 * std.abs().max(1e-300) + 1e-16, "ln({x}): {ours} vs {std}");
        }
    }

    #[test]
    fn scores_are_stable_and_weighted() {
        let a = Rank::new(b"pack-1", NodeId(7), 100);
        let b = Rank::new(b"pack-1", NodeId(7), 100);
        assert_eq!(a.score.to_bits(), b.score.to_bits());
        let double = Rank::new(b"pack-1", NodeId(7), 200);
        assert_eq!(double.score, 2.0 * a.score);
        assert!(a.score > 0.0 && a.score.is_finite());
        assert_eq!(Rank::new(b"pack-1", NodeId(7), 0).score, 0.0);
        assert_ne!(Rank::new(b"pack-2", NodeId(7), 100).score, a.score);
    }

    #[test]
    fn best_first_is_total() {
        let a = Rank { score: 2.0, node: NodeId(5) };
        let b = Rank { score: 1.0, node: NodeId(1) };
        let c = Rank { score: 2.0, node: NodeId(6) };
        assert_eq!(a.best_first(&b), Ordering::Less);
        assert_eq!(a.best_first(&c), Ordering::Less);
        assert_eq!(c.best_first(&a), Ordering::Greater);
        assert_eq!(a.best_first(&a), Ordering::Equal);
    }
}
