//! FastCDC v2020's cut, found with four scans side by side.
//!
//! ```text
//!   window:  [min ......................... center ......................... end)
//!             mask_s (small chunks unlikely)  │  mask_l (large chunks unlikely)
//!   a round: lane 0 ─► lane 1 ─► lane 2 ─► lane 3      each LANE_SPAN bytes, one step of each per turn
//!            (hash carried)  (hash rebuilt from the 64 bytes before the lane)
//! ```
//!
//! `fastcdc::v2020::cut` rolls one 64-bit gear hash over the window,
//! `hash = (hash << 1) + GEAR[byte]`, two bytes per step, and cuts at the
//! first position whose hash has every bit of a mask clear. Each step waits
//! on the one before, so one core runs it at the latency of a shift and two
//! adds per two bytes, with most of its execution units idle.
//!
//! The hash at a position depends only on the 64 bytes up to it: every step
//! shifts older bytes one bit further out. So a stretch of the window can be
//! scanned on its own once its hash is rebuilt from the 64 bytes before it,
//! and four stretches scanned in one loop keep four chains in flight. A
//! round scans four adjacent stretches; when any of them holds a match, the
//! round is scanned again from its start one step at a time, so the first
//! match wins and the cut is the very position `fastcdc::v2020::cut`
//! returns, which is part of the repository format (property tests hold the
//! two equal). Rebuilding
//! costs 64 steps per lane per round, and a round past the cut is wasted;
//! both are small against `LANE_SPAN`.

use std::sync::LazyLock;

use fastcdc::v2020::get_gear_with_seed;

/// Scans run side by side.
const LANES: usize = 4;
/// Bytes each lane scans per round (even, and at least the 64 bytes a hash
/// depends on).
const LANE_SPAN: usize = 4096;
/// Bytes a gear hash depends on.
const HASH_WINDOW: usize = 64;

/// A gear table and the same shifted left by one.
type GearTables = (Box<[u64; 256]>, Box<[u64; 256]>);

/// FastCDC v2020's gear tables, unseeded.
static GEAR: LazyLock<GearTables> = LazyLock::new(|| get_gear_with_seed(0));

/// Where `fastcdc::v2020::cut(source, min, avg, max, mask_s, mask_l,
/// mask_s << 1, mask_l << 1)` cuts `source`: the same length, found faster.
pub(crate) fn cut(source: &[u8], min: usize, avg: usize, max: usize, mask_s: u64, mask_l: u64) -> usize {
    let mut remaining = source.len();
    if remaining <= min {
        return remaining;
    }
    let mut center = avg;
    if remaining > max {
        remaining = max;
    } else if remaining < center {
        center = remaining;
    }
    // FastCDC steps two bytes at a time from min / 2 * 2: a step checks
    // positions a and a + 1, for even a below center / 2 * 2 with mask_s
    // and then below remaining / 2 * 2 with mask_l.
    let start = min & !1;
    let end = remaining & !1;
    let center = (center & !1).clamp(start, end.max(start));
    let hash = match scan(source, start, center, 0, mask_s) {
        Ok(at) => return at,
        Err(hash) => hash,
    };
    match scan(source, center, end, hash, mask_l) {
        Ok(at) => at,
        Err(_) => remaining,
    }
}

/// Scans the steps at even positions `from..to` with `mask`, starting from
/// `hash` (the hash before the byte at `from`): the cut, or the hash after
/// the last step.
fn scan(src: &[u8], from: usize, to: usize, mut hash: u64, mask: u64) -> Result<usize, u64> {
    let mut at = from;
    while to.saturating_sub(at) >= LANES * LANE_SPAN {
        hash = match round_hits(&src[at..at + LANES * LANE_SPAN], hash, mask) {
            Some(last) => last,
            // Some lane matched: the round scanned on its own from its start
            // gives the first cut (lanes before the matching one are scanned
            // in full either way).
            None => match steps(src, at, at + LANES * LANE_SPAN, hash, mask) {
                Ok(cut) => return Ok(cut),
                Err(last) => last,
            },
        };
        at += LANES * LANE_SPAN;
    }
    steps(src, at, to, hash, mask)
}

/// One round over `round`, `LANES` stretches of `LANE_SPAN` bytes, the first
/// starting from `hash` and the others from the bytes before them (which
/// their lane-mates scan). The hash after the last byte, or `None` if any
/// lane matched anywhere.
#[inline(always)]
fn round_hits(round: &[u8], hash: u64, mask: u64) -> Option<u64> {
    let (gear, gear_ls) = (&*GEAR.0, &*GEAR.1);
    let mut h = [hash; LANES];
    for (lane, h) in h.iter_mut().enumerate().skip(1) {
        let lane_at = lane * LANE_SPAN;
        *h = rebuild(&round[lane_at - HASH_WINDOW..lane_at]);
    }
    let lanes: [&[u8]; LANES] = std::array::from_fn(|lane| &round[lane * LANE_SPAN..(lane + 1) * LANE_SPAN]);
    let mask_ls = mask << 1;
    for i in (0..LANE_SPAN).step_by(2) {
        let mut hit = false;
        for lane in 0..LANES {
            let (a, b) = (lanes[lane][i], lanes[lane][i + 1]);
            h[lane] = (h[lane] << 2).wrapping_add(gear_ls[a as usize]);
            hit |= h[lane] & mask_ls == 0;
            h[lane] = h[lane].wrapping_add(gear[b as usize]);
            hit |= h[lane] & mask == 0;
        }
        if hit {
            return None;
        }
    }
    Some(h[LANES - 1])
}

/// The hash after `bytes` (64 of them), whatever came before.
fn rebuild(bytes: &[u8]) -> u64 {
    let gear = &*GEAR.0;
    bytes.iter().fold(0u64, |h, &b| (h << 1).wrapping_add(gear[b as usize]))
}

/// FastCDC's own loop over the steps at even positions `from..to`.
fn steps(src: &[u8], from: usize, to: usize, mut hash: u64, mask: u64) -> Result<usize, u64> {
    let (gear, gear_ls) = (&*GEAR.0, &*GEAR.1);
    let mask_ls = mask << 1;
    let mut a = from;
    while a < to {
        hash = (hash << 2).wrapping_add(gear_ls[src[a] as usize]);
        if hash & mask_ls == 0 {
            return Ok(a);
        }
        hash = hash.wrapping_add(gear[src[a + 1] as usize]);
        if hash & mask == 0 {
            return Ok(a + 1);
        }
        a += 2;
    }
    Err(hash)
}

#[cfg(test)]
mod tests {
    use fastcdc::v2020::{logarithm2, MASKS};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    use super::*;

    /// The chunk sizes in use, and a small set that makes every window
    /// several rounds long with cuts in every lane.
    const SIZES: [(usize, usize, usize); 3] =
        [(16 << 10, 64 << 10, 256 << 10), (256 << 10, 1 << 20, 4 << 20), (64, 4096, 64 << 10)];

    fn masks(avg: usize) -> (u64, u64) {
        let bits = logarithm2(avg as u32);
        (MASKS[(bits + 1) as usize], MASKS[(bits - 1) as usize])
    }

    fn reference(window: &[u8], (min, avg, max): (usize, usize, usize)) -> usize {
        let (s, l) = masks(avg);
        fastcdc::v2020::cut(window, min, avg, max, s, l, s << 1, l << 1).1
    }

    fn lanes(window: &[u8], (min, avg, max): (usize, usize, usize)) -> usize {
        let (s, l) = masks(avg);
        cut(window, min, avg, max, s, l)
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    /// Cuts a whole input window by window, both ways, and compares every cut.
    fn same_cuts(data: &[u8], sizes: (usize, usize, usize)) {
        let mut at = 0;
        while at < data.len() {
            let window = &data[at..(at + sizes.2).min(data.len())];
            let want = reference(window, sizes);
            assert_eq!(lanes(window, sizes), want, "window at {at} of {}, sizes {sizes:?}", data.len());
            at += want;
        }
    }

    #[test]
    fn cuts_equal_fastcdc_on_random_zero_and_periodic_bytes() {
        let random = random(12 << 20, 7);
        let zeros = vec![0u8; 9 << 20];
        let periodic: Vec<u8> = (0..(5 << 20)).map(|i| (i % 251) as u8).collect();
        for sizes in SIZES {
            for data in [&random, &zeros, &periodic] {
                same_cuts(data, sizes);
            }
        }
    }

    #[test]
    fn every_window_length_around_the_boundaries() {
        let data = random(300 << 10, 3);
        let sizes = SIZES[0];
        let mut lens = Vec::new();
        for edge in [0, 1, 2, sizes.0, sizes.1, sizes.2, sizes.0 + LANES * LANE_SPAN, sizes.1 + LANES * LANE_SPAN] {
            lens.extend(edge.saturating_sub(3)..=edge + 3);
        }
        for len in lens.into_iter().filter(|&l| l <= data.len()) {
            for offset in [0, 1, 4095, 77_777] {
                let window = &data[offset..(offset + len).min(data.len())];
                assert_eq!(lanes(window, sizes), reference(window, sizes), "len {len} at {offset}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn cuts_equal_fastcdc(seed in any::<u64>(), len in 0usize..(600 << 10), which in 0usize..3, zero_run in 0usize..(200 << 10)) {
            let mut data = random(len, seed);
            // A run of zeros somewhere: rounds without a match, then with.
            let from = (seed as usize) % (len + 1);
            let to = (from + zero_run).min(len);
            data[from..to].fill(0);
            same_cuts(&data, SIZES[which]);
        }
    }
}
