//! Property tests for the crate's invariant: any `k` of `k + m` shards give
//! the pack back, more than `m` losses give an error (never a panic), and
//! [`locate`] names exactly the data-shard bytes of a pack range.

use coffer_types::ErasureParams;
use proptest::prelude::*;
use proptest::sample::subsequence;

use crate::{locate, Codec, ErasureError};

/// `(k, m, pack, lost)`: a code, a pack of up to 64 KiB, and up to `m` shard
/// positions to lose.
fn code_pack_and_losses() -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<usize>)> {
    (1usize..=8, 1usize..=4).prop_flat_map(|(k, m)| {
        (
            Just(k),
            Just(m),
            prop::collection::vec(any::<u8>(), 0..=64 * 1024),
            subsequence((0..k + m).collect::<Vec<_>>(), 0..=m),
        )
    })
}

/// `(k, m, pack, lost)` with more than `m` positions lost.
fn code_pack_and_too_many_losses() -> impl Strategy<Value = (usize, usize, Vec<u8>, Vec<usize>)> {
    (1usize..=8, 1usize..=4).prop_flat_map(|(k, m)| {
        (
            Just(k),
            Just(m),
            prop::collection::vec(any::<u8>(), 0..=4096),
            subsequence((0..k + m).collect::<Vec<_>>(), m + 1..=k + m),
        )
    })
}

fn codec(k: usize, m: usize) -> Codec {
    Codec::new(ErasureParams::new(k as u32, m as u32).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_k_shards_give_the_pack_back((k, m, pack, lost) in code_pack_and_losses()) {
        let c = codec(k, m);
        let original = c.encode(&pack);
        prop_assert_eq!(original.len(), k + m);
        // Encoding in place gives the same shards: the padded pack holds the
        // data shards end to end.
        let mut in_place = pack.clone();
        let parity = c.encode_parity(&mut in_place);
        prop_assert_eq!(in_place, original[..k].concat());
        prop_assert_eq!(&parity[..], &original[k..]);
        let mut shards: Vec<Option<Vec<u8>>> = original.iter().cloned().map(Some).collect();
        for &i in &lost {
            shards[i] = None;
        }
        let mut data_only = shards.clone();

        c.reconstruct(&mut shards).unwrap();
        prop_assert_eq!(&shards, &original.iter().cloned().map(Some).collect::<Vec<_>>());
        prop_assert_eq!(c.join(&shards, pack.len() as u64).unwrap(), pack.clone());

        c.reconstruct_data(&mut data_only).unwrap();
        prop_assert_eq!(c.join(&data_only, pack.len() as u64).unwrap(), pack);
    }

    #[test]
    fn garbage_caught_by_a_checksum_is_recovered(
        (k, m, pack, hit) in code_pack_and_losses(),
        garbage in any::<u8>(),
    ) {
        let c = codec(k, m);
        let original = c.encode(&pack);
        let mut shards: Vec<Option<Vec<u8>>> = original.iter().cloned().map(Some).collect();
        for &i in &hit {
            if let Some(shard) = shards[i].as_mut() {
                // Flip bytes so the shard always differs from the original.
                for (j, byte) in shard.iter_mut().enumerate() {
                    *byte ^= garbage | 1 | (j as u8);
                }
            }
        }
        // What a checksum check does: a shard whose bytes do not match what was
        // written is treated as missing.
        for (shard, good) in shards.iter_mut().zip(&original) {
            if shard.as_ref() != Some(good) {
                *shard = None;
            }
        }
        prop_assert_eq!(shards.iter().filter(|s| s.is_none()).count(), hit.len());
        c.reconstruct(&mut shards).unwrap();
        prop_assert_eq!(c.join(&shards, pack.len() as u64).unwrap(), pack);
    }

    #[test]
    fn more_than_m_losses_is_an_error((k, m, pack, lost) in code_pack_and_too_many_losses()) {
        let c = codec(k, m);
        let mut shards: Vec<Option<Vec<u8>>> = c.encode(&pack).into_iter().map(Some).collect();
        for &i in &lost {
            shards[i] = None;
        }
        let expected = ErasureError::TooFewShards { present: k + m - lost.len(), needed: k };
        let before = shards.clone();
        prop_assert_eq!(c.reconstruct(&mut shards), Err(expected.clone()));
        prop_assert_eq!(c.reconstruct_data(&mut shards), Err(expected));
        prop_assert_eq!(shards, before, "a failed reconstruction wrote shards");
    }

    #[test]
    fn located_ranges_are_the_pack_range(
        (k, m, pack, _) in code_pack_and_losses(),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let c = codec(k, m);
        let shards = c.encode(&pack);
        let (x, y) = (a.index(pack.len() + 1), b.index(pack.len() + 1));
        let (offset, end) = (x.min(y), x.max(y));
        let pieces = locate(c.params(), pack.len() as u64, offset as u64, (end - offset) as u64).unwrap();
        let mut joined = Vec::new();
        for piece in &pieces {
            let index = usize::from(piece.index.0);
            prop_assert!(index < k, "located a parity shard");
            prop_assert!(piece.len > 0);
            let shard = &shards[index];
            joined.extend_from_slice(&shard[piece.offset as usize..(piece.offset + piece.len) as usize]);
        }
        prop_assert_eq!(&joined[..], &pack[offset..end]);
        // One past the end of the pack is always out of range.
        let past = locate(c.params(), pack.len() as u64, offset as u64, (pack.len() - offset + 1) as u64);
        prop_assert!(matches!(past, Err(ErasureError::RangeOutOfPack { .. })), "range past the end was accepted");
    }
}
