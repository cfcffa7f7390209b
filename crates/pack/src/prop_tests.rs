//! Property tests over the formats: decode of encode gives the input back,
//! and damaged input gives an error, never a panic. Case counts are moderate
//! because every case runs real AES-GCM, zstd and (for key slots) argon2id.

use coffer_types::ChunkId;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::{decode_refs, encode_refs, Compression, KdfParams, PackError, RepoKey};

/// The smallest parameters argon2 accepts.
const TINY: KdfParams = KdfParams { m_cost_kib: 8, t_cost: 1, p_cost: 1 };

/// Plaintexts that exercise both the raw and the compressed path: random
/// bytes, runs of one byte, and a repeated random pattern.
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        (any::<u8>(), 0usize..20_000).prop_map(|(b, n)| vec![b; n]),
        (prop::collection::vec(any::<u8>(), 1..64), 1usize..200).prop_map(|(pattern, times)| pattern.repeat(times)),
    ]
}

fn ids() -> impl Strategy<Value = Vec<ChunkId>> {
    // Few distinct first bytes so that duplicates and ties occur.
    prop::collection::vec(
        (0u8..8, any::<[u8; 32]>()).prop_map(|(first, mut id)| {
            id[0] = first;
            id[1..].fill(first);
            ChunkId(id)
        }),
        0..64,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trip(data in plaintext(), raw in any::<bool>()) {
        let key = RepoKey::generate();
        let id = key.chunk_id(&data);
        let compression = if raw { Compression::None } else { Compression::Auto };
        let sealed = key.seal_with(&id, &data, compression);
        prop_assert!(!(raw && sealed.compressed));
        prop_assert_eq!(key.open(&id, &sealed.bytes)?, data);
    }

    #[test]
    fn damaged_blob_is_an_error(data in plaintext(), at in any::<Index>(), mask in 1u8..=255, cut in any::<Index>()) {
        let key = RepoKey::generate();
        let id = key.chunk_id(&data);
        let blob = key.seal(&id, &data).bytes;

        let mut flipped = blob.clone();
        let pos = at.index(blob.len());
        flipped[pos] ^= mask;
        prop_assert!(key.open(&id, &flipped).is_err(), "flip {:#x} at {} went unnoticed", mask, pos);

        let len = cut.index(blob.len());
        prop_assert!(key.open(&id, &blob[..len]).is_err(), "truncation to {} went unnoticed", len);
    }

    #[test]
    fn open_never_panics_on_garbage(garbage in prop::collection::vec(any::<u8>(), 0..512)) {
        let key = RepoKey::generate();
        let id = key.chunk_id(b"anything");
        prop_assert!(key.open(&id, &garbage).is_err());
    }

    #[test]
    fn refs_round_trip(ids in ids()) {
        let mut expected = ids.clone();
        expected.sort();
        expected.dedup();
        prop_assert_eq!(decode_refs(&encode_refs(&ids))?, expected);
    }

    #[test]
    fn damaged_refs_are_an_error(ids in ids(), at in any::<Index>(), mask in 1u8..=255, cut in any::<Index>()) {
        let bytes = encode_refs(&ids);
        let mut flipped = bytes.clone();
        let pos = at.index(bytes.len());
        flipped[pos] ^= mask;
        prop_assert!(decode_refs(&flipped).is_err(), "flip {:#x} at {} went unnoticed", mask, pos);
        prop_assert!(decode_refs(&bytes[..cut.index(bytes.len())]).is_err());
    }

    #[test]
    fn decode_refs_never_panics_on_garbage(garbage in prop::collection::vec(any::<u8>(), 0..512)) {
        // Almost all garbage is rejected; the property is the absence of a panic.
        let _ = decode_refs(&garbage);
    }
}

proptest! {
    // Each case runs argon2id a few times, even with the smallest costs.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn key_slot_round_trip(password in prop::collection::vec(any::<u8>(), 0..64), other in prop::collection::vec(any::<u8>(), 0..64)) {
        let key = RepoKey::generate();
        let slot = key.wrap_with(&password, TINY)?;
        let back = RepoKey::unwrap(&slot, &password)?;
        prop_assert_eq!(back.chunk_id(b"probe"), key.chunk_id(b"probe"));
        if other != password {
            prop_assert_eq!(RepoKey::unwrap(&slot, &other).unwrap_err(), PackError::WrongPassword);
        }
    }

    #[test]
    fn unwrap_never_panics_on_garbage(garbage in prop::collection::vec(any::<u8>(), 0..128)) {
        // A slot of the right length and magic still has to pass the cost
        // bounds, so garbage never makes argon2 allocate much.
        prop_assert!(RepoKey::unwrap(&garbage, b"pw").is_err());
    }
}
