//! The repository key and its key slots.
//!
//! A repository has one 32-byte master key, drawn from the operating system's
//! random source. Two working keys are derived from it with BLAKE3's key
//! derivation mode, one per purpose, so that a chunk id never doubles as an
//! encryption key:
//!
//! ```text
//!   master ──derive_key("coffer v1 chunk id")────────► id_key  ──keyed_hash(plaintext)──► ChunkId
//!          ──derive_key("coffer v1 blob encryption")──► enc_key ──(see blob.rs)──────────► blob keys
//! ```
//!
//! The master key is stored only wrapped, in key slots: argon2id stretches a
//! password and a fresh salt into a wrapping key, and AES-256-GCM seals the
//! master key under it. A slot is versioned and self-describing (it carries
//! its own KDF parameters), so that parameters can be raised later without
//! breaking old slots. The invariant kept here: unwrapping a hostile slot
//! costs at most a bounded amount of memory and time, and gives an error,
//! never a panic.
//!
//! Slot layout (all integers little-endian):
//!
//! ```text
//!   "CFKS" | version u8 | kdf id u8 | m_cost u32 | t_cost u32 | p_cost u32 | salt [16] | nonce [12] | ciphertext [32] | tag [16]
//!   \____________________________ AAD: authenticated, not encrypted __________________________/
//! ```

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use coffer_types::ChunkId;
use rand::rngs::OsRng;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::wire::Take;
use crate::PackError;

const SLOT_MAGIC: &[u8; 4] = b"CFKS";
const SLOT_VERSION: u8 = 1;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Magic, version, kdf id, three cost parameters, salt and nonce.
const SLOT_HEADER_LEN: usize = 4 + 1 + 1 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN;
/// The exact length of every version 1 key slot.
pub const KEY_SLOT_LEN: usize = SLOT_HEADER_LEN + KEY_LEN + TAG_LEN;

/// The largest argon2 memory cost a slot may ask for: 4 GiB. A slot comes
/// from the catalog, and a hostile or corrupted one must not make the agent
/// allocate without bound before the password is even checked.
pub const MAX_KDF_M_COST_KIB: u32 = 4 * 1024 * 1024;
/// The largest argon2 pass count a slot may ask for, for the same reason.
pub const MAX_KDF_T_COST: u32 = 100;
/// The largest argon2 lane count a slot may ask for. The argon2 crate runs
/// the lanes one after another, so more lanes only cost time.
pub const MAX_KDF_P_COST: u32 = 64;

const WHAT_SLOT: &str = "key slot";

/// The argon2id cost parameters of a key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB blocks.
    pub m_cost_kib: u32,
    /// Number of passes over the memory.
    pub t_cost: u32,
    /// Number of lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// The OWASP recommendation for argon2id: 19 MiB, two passes, one lane.
    fn default() -> Self {
        Self { m_cost_kib: 19456, t_cost: 2, p_cost: 1 }
    }
}

impl KdfParams {
    /// Checks the bounds this crate keeps and argon2's own, and returns the
    /// argon2 parameters producing a 32-byte key.
    fn to_argon2(self) -> Result<Params, String> {
        if self.m_cost_kib > MAX_KDF_M_COST_KIB {
            return Err(format!("memory cost {} KiB exceeds {MAX_KDF_M_COST_KIB} KiB", self.m_cost_kib));
        }
        if self.t_cost > MAX_KDF_T_COST {
            return Err(format!("time cost {} exceeds {MAX_KDF_T_COST}", self.t_cost));
        }
        if self.p_cost > MAX_KDF_P_COST {
            return Err(format!("parallelism {} exceeds {MAX_KDF_P_COST}", self.p_cost));
        }
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| format!("argon2 refuses m={} t={} p={}: {e}", self.m_cost_kib, self.t_cost, self.p_cost))
    }

    /// Stretches `password` and `salt` into a wrapping key.
    fn derive(self, password: &[u8], salt: &[u8; SALT_LEN]) -> Result<[u8; KEY_LEN], String> {
        let params = self.to_argon2()?;
        let mut out = [0u8; KEY_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, salt, &mut out)
            .map_err(|e| format!("argon2id: {e}"))?;
        Ok(out)
    }
}

/// A repository's key: the master key and the two keys derived from it.
///
/// `Debug` deliberately prints no key material, so that a key can sit in a
/// struct that is logged.
#[derive(Clone)]
pub struct RepoKey {
    master: [u8; KEY_LEN],
    id_key: [u8; KEY_LEN],
    enc_key: [u8; KEY_LEN],
}

impl fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoKey").finish_non_exhaustive()
    }
}

impl RepoKey {
    pub(crate) fn from_master(master: [u8; KEY_LEN]) -> Self {
        Self {
            master,
            id_key: blake3::derive_key("coffer v1 chunk id", &master),
            enc_key: blake3::derive_key("coffer v1 blob encryption", &master),
        }
    }

    /// A new key for a new repository, from the operating system's random
    /// source.
    ///
    /// Panics only if the operating system cannot provide randomness, which
    /// leaves no safe way to make a key at all.
    pub fn generate() -> RepoKey {
        let mut master = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut master);
        Self::from_master(master)
    }

    /// The id of a chunk (or tree) with this plaintext: a keyed hash, so that
    /// whoever holds only ids (storage nodes, the catalog) cannot confirm a
    /// guess of the content.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The key from which every blob's own key is derived (see `blob.rs`).
    pub(crate) fn enc_key(&self) -> &[u8; KEY_LEN] {
        &self.enc_key
    }

    /// A key slot for this key under `password`, with the default (OWASP)
    /// argon2id parameters.
    pub fn wrap(&self, password: &[u8]) -> Result<Vec<u8>, PackError> {
        self.wrap_with(password, KdfParams::default())
    }

    /// A key slot for this key under `password`, with explicit argon2id
    /// parameters. Tests use tiny parameters to stay fast; parameters that
    /// `unwrap` would reject are refused here, so every slot written can be
    /// read back.
    pub fn wrap_with(&self, password: &[u8], params: KdfParams) -> Result<Vec<u8>, PackError> {
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        // The wrapping key is unique per salt, so a random nonce adds margin
        // rather than being what keeps nonces from repeating.
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let wrapping = params.derive(password, &salt).map_err(|reason| PackError::KdfParamsRejected { reason })?;

        let mut slot = Vec::with_capacity(KEY_SLOT_LEN);
        slot.extend_from_slice(SLOT_MAGIC);
        slot.push(SLOT_VERSION);
        slot.push(KDF_ARGON2ID);
        slot.extend_from_slice(&params.m_cost_kib.to_le_bytes());
        slot.extend_from_slice(&params.t_cost.to_le_bytes());
        slot.extend_from_slice(&params.p_cost.to_le_bytes());
        slot.extend_from_slice(&salt);
        slot.extend_from_slice(&nonce);
        debug_assert_eq!(slot.len(), SLOT_HEADER_LEN);

        let mut sealed = self.master;
        let tag = aead_key(&wrapping)
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&slot[..]), &mut sealed)
            .expect("AES-GCM seals 32 bytes");
        slot.extend_from_slice(&sealed);
        slot.extend_from_slice(tag.as_ref());
        debug_assert_eq!(slot.len(), KEY_SLOT_LEN);
        Ok(slot)
    }

    /// Recovers the key from a slot. `WrongPassword` if the slot is well
    /// formed but does not open; `BadFormat` or `UnsupportedVersion` if it is
    /// not a slot this build can read, including one asking for KDF costs
    /// beyond the bounds above.
    pub fn unwrap(slot: &[u8], password: &[u8]) -> Result<RepoKey, PackError> {
        let bad = |reason: String| PackError::BadFormat { what: WHAT_SLOT, reason };
        let parsed = parse_slot(slot)?;
        let wrapping = parsed.params.derive(password, parsed.salt).map_err(bad)?;
        let mut sealed = parsed.body.to_vec();
        let master = aead_key(&wrapping)
            .open_in_place(Nonce::assume_unique_for_key(*parsed.nonce), Aad::from(parsed.header), &mut sealed)
            .map_err(|_| PackError::WrongPassword)?;
        let master: [u8; KEY_LEN] = (&*master).try_into().map_err(|_| bad("master key has the wrong length".into()))?;
        Ok(Self::from_master(master))
    }
}

/// A key slot's fields, checked, before any KDF work.
pub(crate) struct ParsedSlot<'a> {
    pub(crate) params: KdfParams,
    salt: &'a [u8; SALT_LEN],
    nonce: &'a [u8; NONCE_LEN],
    /// The authenticated header and the sealed master key with its tag.
    header: &'a [u8],
    body: &'a [u8],
}

/// Parses a slot and checks its KDF parameters against the bounds, without
/// running the KDF: everything a hostile slot can reach before a password
/// is tried.
pub(crate) fn parse_slot(slot: &[u8]) -> Result<ParsedSlot<'_>, PackError> {
    let bad = |reason: String| PackError::BadFormat { what: WHAT_SLOT, reason };
    let mut take = Take::new(slot);
    let magic = take.array::<4>().ok_or_else(|| bad(format!("{} bytes is too short", slot.len())))?;
    if magic != SLOT_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = take.u8().ok_or_else(|| bad("truncated before the version".into()))?;
    if version != SLOT_VERSION {
        return Err(PackError::UnsupportedVersion { what: WHAT_SLOT, version });
    }
    if slot.len() != KEY_SLOT_LEN {
        return Err(bad(format!("expected {KEY_SLOT_LEN} bytes, got {}", slot.len())));
    }
    let truncated = || bad("truncated".into());
    let kdf = take.u8().ok_or_else(truncated)?;
    if kdf != KDF_ARGON2ID {
        return Err(bad(format!("unknown kdf id {kdf}")));
    }
    let params = KdfParams {
        m_cost_kib: take.u32_le().ok_or_else(truncated)?,
        t_cost: take.u32_le().ok_or_else(truncated)?,
        p_cost: take.u32_le().ok_or_else(truncated)?,
    };
    let salt = take.array::<SALT_LEN>().ok_or_else(truncated)?;
    let nonce = take.array::<NONCE_LEN>().ok_or_else(truncated)?;
    let (header, body) = slot.split_at_checked(SLOT_HEADER_LEN).ok_or_else(truncated)?;
    // The bounds are checked before argon2 runs, so a hostile slot never
    // gets to allocate.
    params.to_argon2().map_err(bad)?;
    Ok(ParsedSlot { params, salt, nonce, header, body })
}

/// An AES-256-GCM key. The length is fixed by the type, which is the only
/// thing ring checks.
pub(crate) fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest parameters argon2 accepts, so that tests stay fast.
    pub(crate) const TINY: KdfParams = KdfParams { m_cost_kib: 8, t_cost: 1, p_cost: 1 };

    fn same_key(a: &RepoKey, b: &RepoKey) -> bool {
        a.master == b.master && a.id_key == b.id_key && a.enc_key == b.enc_key
    }

    #[test]
    fn derived_keys_differ_from_each_other_and_the_master() {
        let key = RepoKey::generate();
        assert_ne!(key.id_key, key.enc_key);
        assert_ne!(key.id_key, key.master);
        assert_ne!(key.enc_key, key.master);
        assert!(!same_key(&key, &RepoKey::generate()));
    }

    #[test]
    fn chunk_id_is_keyed() {
        let (a, b) = (RepoKey::generate(), RepoKey::generate());
        assert_eq!(a.chunk_id(b"hello"), a.chunk_id(b"hello"));
        assert_ne!(a.chunk_id(b"hello"), b.chunk_id(b"hello"));
        assert_ne!(a.chunk_id(b"hello").0, *blake3::hash(b"hello").as_bytes());
    }

    #[test]
    fn debug_prints_no_key_material() {
        let key = RepoKey::generate();
        assert_eq!(format!("{key:?}"), "RepoKey { .. }");
        // Key bytes would show up as decimal or hex digits, in any formatting.
        assert!(!format!("{key:#?}").chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn slot_round_trip() {
        let key = RepoKey::generate();
        let slot = key.wrap_with(b"correct horse", TINY).unwrap();
        assert_eq!(slot.len(), KEY_SLOT_LEN);
        assert_eq!(&slot[..4], SLOT_MAGIC);
        let back = RepoKey::unwrap(&slot, b"correct horse").unwrap();
        assert!(same_key(&key, &back));
    }

    #[test]
    fn default_params_round_trip() {
        let key = RepoKey::generate();
        let slot = key.wrap(b"pw").unwrap();
        assert!(same_key(&key, &RepoKey::unwrap(&slot, b"pw").unwrap()));
        assert_eq!(u32::from_le_bytes(slot[6..10].try_into().unwrap()), 19456);
    }

    #[test]
    fn two_slots_of_one_key_differ() {
        let key = RepoKey::generate();
        assert_ne!(key.wrap_with(b"pw", TINY).unwrap(), key.wrap_with(b"pw", TINY).unwrap());
    }

    #[test]
    fn wrong_password_is_reported_as_such() {
        let slot = RepoKey::generate().wrap_with(b"right", TINY).unwrap();
        assert_eq!(RepoKey::unwrap(&slot, b"wrong").unwrap_err(), PackError::WrongPassword);
        assert_eq!(RepoKey::unwrap(&slot, b"").unwrap_err(), PackError::WrongPassword);
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        // Flipping every bit of a byte keeps the cost fields either tiny or
        // far beyond the bounds, so no flip makes the test allocate much.
        for pos in 0..slot.len() {
            let mut bad = slot.clone();
            bad[pos] ^= 0xff;
            assert!(RepoKey::unwrap(&bad, b"pw").is_err(), "flip at {pos} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_and_extension_is_bad_format() {
        let slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        for len in 0..slot.len() {
            assert!(
                matches!(RepoKey::unwrap(&slot[..len], b"pw"), Err(PackError::BadFormat { .. })),
                "truncation to {len} not reported as bad format"
            );
        }
        let mut long = slot.clone();
        long.push(0);
        assert!(matches!(RepoKey::unwrap(&long, b"pw"), Err(PackError::BadFormat { .. })));
    }

    #[test]
    fn unknown_version_and_kdf_are_rejected() {
        let mut slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        slot[4] = 2;
        assert_eq!(
            RepoKey::unwrap(&slot, b"pw").unwrap_err(),
            PackError::UnsupportedVersion { what: WHAT_SLOT, version: 2 }
        );
        slot[4] = SLOT_VERSION;
        slot[5] = 9;
        assert!(matches!(RepoKey::unwrap(&slot, b"pw"), Err(PackError::BadFormat { .. })));
    }

    /// Writes cost fields into an otherwise valid slot header.
    fn with_costs(slot: &[u8], m: u32, t: u32, p: u32) -> Vec<u8> {
        let mut out = slot.to_vec();
        out[6..10].copy_from_slice(&m.to_le_bytes());
        out[10..14].copy_from_slice(&t.to_le_bytes());
        out[14..18].copy_from_slice(&p.to_le_bytes());
        out
    }

    #[test]
    fn hostile_kdf_costs_are_rejected_before_running_argon2() {
        let slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        for (m, t, p) in [
            (MAX_KDF_M_COST_KIB + 1, 1, 1),
            (u32::MAX, 1, 1),
            (8, MAX_KDF_T_COST + 1, 1),
            (8, u32::MAX, 1),
            (1024, 1, MAX_KDF_P_COST + 1),
            (8, 0, 1),
            (8, 1, 0),
            (4, 1, 1),
        ] {
            let err = RepoKey::unwrap(&with_costs(&slot, m, t, p), b"pw").unwrap_err();
            assert!(matches!(err, PackError::BadFormat { .. }), "m={m} t={t} p={p}: {err:?}");
        }
    }

    #[test]
    fn changed_but_valid_costs_fail_authentication() {
        let slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        assert_eq!(RepoKey::unwrap(&with_costs(&slot, 16, 1, 1), b"pw").unwrap_err(), PackError::WrongPassword);
    }

    #[test]
    fn wrap_refuses_params_unwrap_would_reject() {
        let key = RepoKey::generate();
        for params in [
            KdfParams { m_cost_kib: MAX_KDF_M_COST_KIB + 1, ..TINY },
            KdfParams { t_cost: MAX_KDF_T_COST + 1, ..TINY },
            KdfParams { t_cost: 0, ..TINY },
            KdfParams { m_cost_kib: 1, ..TINY },
        ] {
            assert!(matches!(key.wrap_with(b"pw", params), Err(PackError::KdfParamsRejected { .. })), "{params:?}");
        }
    }
}
