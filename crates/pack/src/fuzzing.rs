//! The decoders an agent (or the collector) runs on bytes from the cluster,
//! as entry points for the `cargo fuzz` targets in `fuzz/` and for the
//! replay of their corpora in `make test` (`tests/corpus.rs`): both call
//! exactly these functions, so a crash the fuzzer found stays a regression
//! test.
//!
//! Each entry point takes arbitrary bytes and must return without
//! panicking. Where authentication or a checksum would stop the fuzzer at
//! the first byte, the entry point also builds a variant that passes it
//! (sealed under a fixed test key, checksum recomputed), so that the
//! parsing behind it is explored too. None of them runs an expensive KDF.

use coffer_types::ChunkId;

use crate::{decode_refs, encode_refs, inspect_slot, KdfParams, RepoKey};

/// A fixed key: fuzzing needs reproducible inputs, not secrecy.
fn test_key() -> RepoKey {
    RepoKey::from_seed(&[0x42; 32])
}

/// Blobs: `open` on the input as it is (header checks, authentication),
/// then on `data[1..]` sealed as the payload with flags `data[0]`, which
/// reaches the flag check, zstd inflation within its bound and the id check.
pub fn blob(data: &[u8]) {
    let key = test_key();
    let id = ChunkId([7; 32]);
    if let Ok(plain) = key.open(&id, data) {
        assert_eq!(key.chunk_id(&plain), id);
    }
    let Some((&flags, payload)) = data.split_first() else { return };
    let sealed = key.seal_raw(&id, flags, payload);
    if let Ok(plain) = key.open(&id, &sealed) {
        assert_eq!(key.chunk_id(&plain), id);
    }
    let raw = key.seal_raw(&key.chunk_id(payload), 0, payload);
    assert_eq!(key.open(&key.chunk_id(payload), &raw).ok().as_deref(), Some(payload), "a raw blob round-trips");
}

/// Key slots: the parser and the KDF bounds, never the KDF itself unless
/// the slot asks for the cheapest parameters (then the AEAD open runs too).
pub fn key_slot(data: &[u8]) {
    let Ok(info) = inspect_slot(data) else { return };
    let KdfParams { m_cost_kib, t_cost, p_cost } = info.kdf;
    if m_cost_kib <= 64 && t_cost <= 1 && p_cost <= 1 {
        let _ = RepoKey::unwrap(data, b"fuzz");
    }
}

/// Reference lists: as they are, and with the trailing checksum recomputed
/// so that the count and order checks are reached. What decodes must encode
/// to the same bytes.
pub fn refs(data: &[u8]) {
    check_refs(data);
    if data.len() >= 32 {
        let mut fixed = data.to_vec();
        let (covered, sum) = fixed.split_at_mut(data.len() - 32);
        sum.copy_from_slice(blake3::hash(covered).as_bytes());
        check_refs(&fixed);
    }
}

fn check_refs(data: &[u8]) {
    if let Ok(ids) = decode_refs(data) {
        assert_eq!(encode_refs(&ids), data, "a decoded reference list re-encodes to its bytes");
    }
}
