//! Key slots: the repository keyring, wrapped so that a password opens it,
//! in a form that another key holder can update without that password.
//!
//! A version-2 slot has two layers. The first is the slot's own X25519
//! secret, sealed under a wrapping key that argon2id stretches from the
//! password; the second is the keyring, sealed to the slot's X25519 public
//! key (ephemeral-static Diffie-Hellman). Anyone holding the keyring can
//! therefore rewrite the second layer of *every* slot (`RepoKey::reseal`),
//! which is what `coffer key rotate` does: the new epoch reaches every
//! password without knowing any of them, and a slot removed before the
//! rotation never sees the new epoch's key.
//!
//! ```text
//!   password ──argon2id(salt)──► KEK ──AES-GCM──► [ slot secret | keyring auth ]
//!   slot secret ──X25519(ephemeral public)──► shared ─┐
//!   keyring auth ─────────────────────────────────────┴─BLAKE3──► envelope key ──AES-GCM──► keyring
//! ```
//!
//! The keyring auth is derived from the chunk-id key, which never changes,
//! and the password layer holds it: a slot's public key alone is not enough
//! to seal a keyring that the slot accepts, so whoever can write the catalog
//! but never held the keyring cannot slip an epoch key of their own into a
//! slot.
//!
//! Layouts (integers little-endian). Version 2:
//!
//! ```text
//!   "CFKS" | 2 | kdf id u8 | m u32 | t u32 | p u32 | salt [16] | created_ms u64 | public [32] | nonce [12]
//!   | AES-GCM_KEK(secret [32] | auth [32]) [64] | tag [16]
//!   | ephemeral public [32] | epoch count u16 | epochs u32 × count
//!   | AES-GCM_envelope(id_key [32] | enc_key [32] × count) | tag [16]
//! ```
//!
//! The first line is the additional data of the password layer; everything
//! before the keyring's ciphertext is the additional data of the envelope,
//! so the epoch list, shown by `coffer key list` without any password, is
//! authenticated once a password opens the slot. Version 1, still read:
//!
//! ```text
//!   "CFKS" | 1 | kdf id u8 | m u32 | t u32 | p u32 | salt [16] | nonce [12] | AES-GCM_KEK(master [32]) | tag [16]
//! ```
//!
//! A version-1 master key is the seed of a keyring with epoch 0 only
//! (`RepoKey::from_seed`); such a slot cannot hold a later epoch.
//!
//! Every length, count and cost is checked before argon2 runs, so a hostile
//! slot costs at most the bounded KDF (`key.rs`) and never panics.

use ring::aead::{Aad, Nonce};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::key::{aead_key, random_key, EpochKey, KdfParams, KDF_SALT_LEN, KEY_LEN, MAX_EPOCHS};
use crate::wire::Take;
use crate::{PackError, RepoKey};

const SLOT_MAGIC: &[u8; 4] = b"CFKS";
const SLOT_V1: u8 = 1;
const SLOT_V2: u8 = 2;
const KDF_ARGON2ID: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Magic, version, kdf id and the three cost parameters.
const COMMON_LEN: usize = 4 + 1 + 1 + 12;
const V1_HEADER_LEN: usize = COMMON_LEN + KDF_SALT_LEN + NONCE_LEN;
/// The exact length of every version-1 key slot.
pub const KEY_SLOT_LEN: usize = V1_HEADER_LEN + KEY_LEN + TAG_LEN;
const V2_HEADER_LEN: usize = COMMON_LEN + KDF_SALT_LEN + 8 + KEY_LEN + NONCE_LEN;
const V2_SECRET_LEN: usize = 2 * KEY_LEN + TAG_LEN;
const WHAT: &str = "key slot";

/// What a key slot says about itself without a password. Nothing here is
/// secret; the epoch list is authenticated only once a password opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// A short stable name for the slot (8 hex digits): from its public key
    /// (version 2), which `reseal` keeps, or from its bytes (version 1).
    pub id: String,
    /// The slot format version.
    pub version: u8,
    /// When the slot was written (milliseconds since the Unix epoch); `None`
    /// for version-1 slots and slots written without a time.
    pub created_ms: Option<u64>,
    pub kdf: KdfParams,
    /// The epochs whose keys the slot holds, oldest first.
    pub epochs: Vec<u32>,
}

/// A parsed version-2 slot, all lengths checked, nothing decrypted.
struct V2<'a> {
    info: SlotInfo,
    salt: &'a [u8; KDF_SALT_LEN],
    nonce: &'a [u8; NONCE_LEN],
    public: [u8; KEY_LEN],
    /// The password layer's additional data, and its ciphertext and tag.
    header: &'a [u8],
    sealed_secret: &'a [u8],
    ephemeral: [u8; KEY_LEN],
    /// Everything before the keyring's ciphertext (the envelope's AAD).
    envelope_aad: &'a [u8],
    sealed_keyring: &'a [u8],
}

fn bad(reason: impl Into<String>) -> PackError {
    PackError::BadFormat { what: WHAT, reason: reason.into() }
}

/// A short name for a slot: 8 hex digits of a BLAKE3 hash.
fn short_id(bytes: &[u8]) -> String {
    blake3::hash(bytes).as_bytes()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Magic, version, kdf id and costs, shared by both versions.
fn parse_common(take: &mut Take<'_>, slot: &[u8]) -> Result<(u8, KdfParams), PackError> {
    let magic = take.array::<4>().ok_or_else(|| bad(format!("{} bytes is too short", slot.len())))?;
    if magic != SLOT_MAGIC {
        return Err(bad("bad magic"));
    }
    let version = take.u8().ok_or_else(|| bad("truncated before the version"))?;
    if version != SLOT_V1 && version != SLOT_V2 {
        return Err(PackError::UnsupportedVersion { what: WHAT, version });
    }
    let truncated = || bad("truncated");
    let kdf = take.u8().ok_or_else(truncated)?;
    if kdf != KDF_ARGON2ID {
        return Err(bad(format!("unknown kdf id {kdf}")));
    }
    let params = KdfParams {
        m_cost_kib: take.u32_le().ok_or_else(truncated)?,
        t_cost: take.u32_le().ok_or_else(truncated)?,
        p_cost: take.u32_le().ok_or_else(truncated)?,
    };
    // Refused here, before any caller gets as far as argon2.
    params.to_argon2().map_err(bad)?;
    Ok((version, params))
}

fn parse_v2<'a>(slot: &'a [u8], kdf: KdfParams, take: &mut Take<'a>) -> Result<V2<'a>, PackError> {
    let truncated = || bad("truncated");
    let salt = take.array::<KDF_SALT_LEN>().ok_or_else(truncated)?;
    let created_ms = take.u64_le().ok_or_else(truncated)?;
    let public = *take.array::<KEY_LEN>().ok_or_else(truncated)?;
    let nonce = take.array::<NONCE_LEN>().ok_or_else(truncated)?;
    let _sealed_secret = take.array::<V2_SECRET_LEN>().ok_or_else(truncated)?;
    let ephemeral = *take.array::<KEY_LEN>().ok_or_else(truncated)?;
    let count = take.array::<2>().map(|b| u16::from_le_bytes(*b)).ok_or_else(truncated)? as usize;
    if count == 0 || count > MAX_EPOCHS {
        return Err(bad(format!("{count} epochs; a keyring holds 1 to {MAX_EPOCHS}")));
    }
    let mut epochs = Vec::with_capacity(count);
    for _ in 0..count {
        let epoch = take.u32_le().ok_or_else(truncated)?;
        if epochs.last().is_some_and(|&last| epoch <= last) {
            return Err(bad("epochs are not strictly increasing"));
        }
        epochs.push(epoch);
    }
    let aad_len = V2_HEADER_LEN + V2_SECRET_LEN + KEY_LEN + 2 + 4 * count;
    let want = aad_len + KEY_LEN * (1 + count) + TAG_LEN;
    if slot.len() != want {
        return Err(bad(format!("{count} epochs take {want} bytes, the slot has {}", slot.len())));
    }
    let (envelope_aad, sealed_keyring) = slot.split_at(aad_len);
    let (header, rest) = envelope_aad.split_at(V2_HEADER_LEN);
    let sealed_secret = &rest[..V2_SECRET_LEN];
    let info = SlotInfo {
        id: short_id(&public),
        version: SLOT_V2,
        created_ms: (created_ms != 0).then_some(created_ms),
        kdf,
        epochs,
    };
    Ok(V2 { info, salt, nonce, public, header, sealed_secret, ephemeral, envelope_aad, sealed_keyring })
}

/// What a slot says about itself, without a password: its id, version,
/// creation time, KDF parameters and epochs. A malformed slot, or one whose
/// costs are beyond the bounds, is an error.
pub fn inspect_slot(slot: &[u8]) -> Result<SlotInfo, PackError> {
    let mut take = Take::new(slot);
    let (version, kdf) = parse_common(&mut take, slot)?;
    if version == SLOT_V1 {
        if slot.len() != KEY_SLOT_LEN {
            return Err(bad(format!("expected {KEY_SLOT_LEN} bytes, got {}", slot.len())));
        }
        return Ok(SlotInfo { id: short_id(slot), version, created_ms: None, kdf, epochs: vec![0] });
    }
    Ok(parse_v2(slot, kdf, &mut take)?.info)
}

/// The id of a slot as `inspect_slot` gives it, or, for bytes that are no
/// readable slot, a hash of them, so that even a damaged slot can be named
/// (and removed).
pub fn slot_id(slot: &[u8]) -> String {
    inspect_slot(slot).map(|i| i.id).unwrap_or_else(|_| short_id(slot))
}

/// The key the keyring is sealed under for one slot.
fn envelope_key(
    shared: &[u8; KEY_LEN],
    ephemeral: &[u8; KEY_LEN],
    public: &[u8; KEY_LEN],
    auth: &[u8; KEY_LEN],
) -> [u8; KEY_LEN] {
    let mut material = [0u8; 4 * KEY_LEN];
    for (i, part) in [shared, ephemeral, public, auth].into_iter().enumerate() {
        material[i * KEY_LEN..(i + 1) * KEY_LEN].copy_from_slice(part);
    }
    blake3::derive_key("coffer v2 keyring envelope", &material)
}

/// Every key sealed under a derived key is used for one message only (a
/// fresh salt or ephemeral key each time), so the zero nonce is safe.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; NONCE_LEN])
}

impl RepoKey {
    /// What binds a slot to this repository's keyring (see the module doc).
    fn keyring_auth(&self) -> [u8; KEY_LEN] {
        blake3::derive_key("coffer v2 keyring auth", &self.id_key)
    }

    /// The envelope part of a version-2 slot: the keyring sealed to
    /// `public`, appended to `slot` (which holds everything before it).
    fn seal_envelope(&self, slot: &mut Vec<u8>, public: &[u8; KEY_LEN]) -> Result<(), PackError> {
        let ephemeral_secret = StaticSecret::from(random_key());
        let ephemeral = PublicKey::from(&ephemeral_secret).to_bytes();
        let shared = ephemeral_secret.diffie_hellman(&PublicKey::from(*public));
        if !shared.was_contributory() {
            return Err(bad("the slot's public key is a low-order point"));
        }
        slot.extend_from_slice(&ephemeral);
        slot.extend_from_slice(&(self.epochs.len() as u16).to_le_bytes());
        for e in &self.epochs {
            slot.extend_from_slice(&e.epoch.to_le_bytes());
        }
        let mut body = Vec::with_capacity(KEY_LEN * (1 + self.epochs.len()) + TAG_LEN);
        body.extend_from_slice(&self.id_key);
        for e in &self.epochs {
            body.extend_from_slice(&e.key);
        }
        let key = envelope_key(shared.as_bytes(), &ephemeral, public, &self.keyring_auth());
        let tag = aead_key(&key)
            .seal_in_place_separate_tag(zero_nonce(), Aad::from(&slot[..]), &mut body)
            .expect("AES-GCM seals a few KiB");
        slot.extend_from_slice(&body);
        slot.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// A key slot for this keyring under `password`, with the default
    /// argon2id parameters and no creation time.
    pub fn wrap(&self, password: &[u8]) -> Result<Vec<u8>, PackError> {
        self.wrap_at(password, KdfParams::default(), 0)
    }

    /// A key slot with explicit argon2id parameters and no creation time.
    pub fn wrap_with(&self, password: &[u8], params: KdfParams) -> Result<Vec<u8>, PackError> {
        self.wrap_at(password, params, 0)
    }

    /// A version-2 key slot for this keyring under `password`, stamped
    /// `created_ms` (the caller's clock; this crate reads none). Tests use
    /// tiny parameters to stay fast; parameters that `unwrap` would reject
    /// are refused here, so every slot written can be read back.
    pub fn wrap_at(&self, password: &[u8], params: KdfParams, created_ms: u64) -> Result<Vec<u8>, PackError> {
        let mut salt = [0u8; KDF_SALT_LEN];
        salt.copy_from_slice(&random_key()[..KDF_SALT_LEN]);
        // The wrapping key is unique per salt, so a random nonce adds margin
        // rather than being what keeps nonces from repeating.
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&random_key()[..NONCE_LEN]);
        let kek = params.derive(password, &salt).map_err(|reason| PackError::KdfParamsRejected { reason })?;
        let secret = StaticSecret::from(random_key());
        let public = PublicKey::from(&secret).to_bytes();

        let mut slot = Vec::with_capacity(V2_HEADER_LEN + V2_SECRET_LEN + 64 + 36 * self.epochs.len());
        slot.extend_from_slice(SLOT_MAGIC);
        slot.push(SLOT_V2);
        slot.push(KDF_ARGON2ID);
        slot.extend_from_slice(&params.m_cost_kib.to_le_bytes());
        slot.extend_from_slice(&params.t_cost.to_le_bytes());
        slot.extend_from_slice(&params.p_cost.to_le_bytes());
        slot.extend_from_slice(&salt);
        slot.extend_from_slice(&created_ms.to_le_bytes());
        slot.extend_from_slice(&public);
        slot.extend_from_slice(&nonce);
        debug_assert_eq!(slot.len(), V2_HEADER_LEN);

        let mut sealed = [0u8; 2 * KEY_LEN];
        sealed[..KEY_LEN].copy_from_slice(secret.as_bytes());
        sealed[KEY_LEN..].copy_from_slice(&self.keyring_auth());
        let tag = aead_key(&kek)
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&slot[..]), &mut sealed)
            .expect("AES-GCM seals 64 bytes");
        slot.extend_from_slice(&sealed);
        slot.extend_from_slice(tag.as_ref());
        self.seal_envelope(&mut slot, &public)?;
        Ok(slot)
    }

    /// The same version-2 slot (same id, password layer, creation time)
    /// holding this keyring instead of the one it held: how a rotation
    /// reaches every password. Refuses a version-1 slot (`OldSlot`), and a
    /// keyring that lacks an epoch the slot holds (`StaleKeyring`), so that
    /// a stale keyring can never drop a key.
    pub fn reseal(&self, slot: &[u8]) -> Result<Vec<u8>, PackError> {
        let mut take = Take::new(slot);
        let (version, kdf) = parse_common(&mut take, slot)?;
        if version == SLOT_V1 {
            return Err(PackError::OldSlot { id: inspect_slot(slot)?.id });
        }
        let parsed = parse_v2(slot, kdf, &mut take)?;
        if let Some(&epoch) = parsed.info.epochs.iter().find(|&&e| self.enc_key(e).is_none()) {
            return Err(PackError::StaleKeyring { epoch });
        }
        let mut out = slot[..V2_HEADER_LEN + V2_SECRET_LEN].to_vec();
        self.seal_envelope(&mut out, &parsed.public)?;
        Ok(out)
    }

    /// Recovers the keyring from a slot. `WrongPassword` if the slot is well
    /// formed but does not open; `BadFormat` or `UnsupportedVersion` if it is
    /// not a slot this build can read, including one asking for KDF costs
    /// beyond the bounds.
    pub fn unwrap(slot: &[u8], password: &[u8]) -> Result<RepoKey, PackError> {
        let mut take = Take::new(slot);
        let (version, kdf) = parse_common(&mut take, slot)?;
        if version == SLOT_V1 {
            return unwrap_v1(slot, kdf, &mut take, password);
        }
        let p = parse_v2(slot, kdf, &mut take)?;
        let kek = kdf.derive(password, p.salt).map_err(bad)?;
        let mut sealed = p.sealed_secret.to_vec();
        let opened = aead_key(&kek)
            .open_in_place(Nonce::assume_unique_for_key(*p.nonce), Aad::from(p.header), &mut sealed)
            .map_err(|_| PackError::WrongPassword)?;
        let (secret, auth) = opened.split_first_chunk::<KEY_LEN>().ok_or_else(|| bad("short secret"))?;
        let auth: [u8; KEY_LEN] = auth.try_into().map_err(|_| bad("short keyring auth"))?;
        let secret = StaticSecret::from(*secret);
        if PublicKey::from(&secret).to_bytes() != p.public {
            return Err(bad("the public key does not match the slot's secret"));
        }
        let shared = secret.diffie_hellman(&PublicKey::from(p.ephemeral));
        if !shared.was_contributory() {
            return Err(bad("the ephemeral key is a low-order point"));
        }
        let key = envelope_key(shared.as_bytes(), &p.ephemeral, &p.public, &auth);
        let mut body = p.sealed_keyring.to_vec();
        let plain = aead_key(&key)
            .open_in_place(zero_nonce(), Aad::from(p.envelope_aad), &mut body)
            .map_err(|_| bad("the keyring does not authenticate (written without this repository's keyring)"))?;
        let (id_key, keys) = plain.split_first_chunk::<KEY_LEN>().ok_or_else(|| bad("short keyring"))?;
        if keys.len() != KEY_LEN * p.info.epochs.len() {
            return Err(bad("the keyring's length does not match its epochs"));
        }
        let epochs = p
            .info
            .epochs
            .iter()
            .zip(keys.chunks_exact(KEY_LEN))
            .map(|(&epoch, k)| Ok(EpochKey { epoch, key: k.try_into().map_err(|_| bad("short epoch key"))? }))
            .collect::<Result<Vec<_>, PackError>>()?;
        let ring = RepoKey { id_key: *id_key, epochs };
        if ring.keyring_auth() != auth {
            return Err(bad("the keyring belongs to another repository"));
        }
        Ok(ring)
    }
}

fn unwrap_v1(slot: &[u8], kdf: KdfParams, take: &mut Take<'_>, password: &[u8]) -> Result<RepoKey, PackError> {
    if slot.len() != KEY_SLOT_LEN {
        return Err(bad(format!("expected {KEY_SLOT_LEN} bytes, got {}", slot.len())));
    }
    let truncated = || bad("truncated");
    let salt = take.array::<KDF_SALT_LEN>().ok_or_else(truncated)?;
    let nonce = take.array::<NONCE_LEN>().ok_or_else(truncated)?;
    let (header, body) = slot.split_at_checked(V1_HEADER_LEN).ok_or_else(truncated)?;
    let kek = kdf.derive(password, salt).map_err(bad)?;
    let mut sealed = body.to_vec();
    let master = aead_key(&kek)
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(header), &mut sealed)
        .map_err(|_| PackError::WrongPassword)?;
    let master: [u8; KEY_LEN] = (&*master).try_into().map_err(|_| bad("master key has the wrong length"))?;
    Ok(RepoKey::from_seed(&master))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest parameters argon2 accepts, so that tests stay fast.
    pub(crate) const TINY: KdfParams = KdfParams { m_cost_kib: 8, t_cost: 1, p_cost: 1 };

    /// A version-1 slot, written by the build before key rotation existed
    /// (TINY parameters, password "pw"), and a version-1 blob of "hello"
    /// sealed with that key, with its chunk id. Compatibility fixtures:
    /// they must open with every later build.
    pub(crate) const V1_SLOT_HEX: &str = include_str!("../testdata/v1_slot.hex");
    pub(crate) const V1_BLOB_HEX: &str = include_str!("../testdata/v1_blob.hex");
    pub(crate) const V1_BLOB_ID_HEX: &str = include_str!("../testdata/v1_blob_id.hex");

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let s = s.trim();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn a_version_1_slot_still_opens() {
        let slot = unhex(V1_SLOT_HEX);
        assert_eq!(slot.len(), KEY_SLOT_LEN);
        let key = RepoKey::unwrap(&slot, b"pw").unwrap();
        assert_eq!(key.epochs(), vec![0]);
        assert_eq!(RepoKey::unwrap(&slot, b"not pw").unwrap_err(), PackError::WrongPassword);
        let info = inspect_slot(&slot).unwrap();
        assert_eq!((info.version, info.created_ms, info.epochs), (1, None, vec![0]));
        assert_eq!(info.kdf, TINY);
        // A version-1 slot cannot take a new epoch.
        let rotated = key.rotate().unwrap();
        assert_eq!(rotated.reseal(&slot).unwrap_err(), PackError::OldSlot { id: info.id });
        // Wrapped again as version 2, its keyring is the same.
        let v2 = key.wrap_with(b"pw", TINY).unwrap();
        assert!(RepoKey::unwrap(&v2, b"pw").unwrap().same_keys(&key));
    }

    #[test]
    fn keyring_round_trip_through_a_slot() {
        let key = RepoKey::generate().rotate().unwrap().rotate().unwrap();
        let slot = key.wrap_at(b"correct horse", TINY, 1_700_000_000_000).unwrap();
        assert_eq!(&slot[..4], SLOT_MAGIC);
        assert_eq!(slot[4], SLOT_V2);
        let back = RepoKey::unwrap(&slot, b"correct horse").unwrap();
        assert!(back.same_keys(&key));
        assert_eq!(back.current_epoch(), 2);
        let info = inspect_slot(&slot).unwrap();
        assert_eq!(info.epochs, vec![0, 1, 2]);
        assert_eq!(info.created_ms, Some(1_700_000_000_000));
        assert_eq!(info.id.len(), 8);
    }

    #[test]
    fn default_params_round_trip() {
        let key = RepoKey::generate();
        let slot = key.wrap(b"pw").unwrap();
        assert!(RepoKey::unwrap(&slot, b"pw").unwrap().same_keys(&key));
        assert_eq!(inspect_slot(&slot).unwrap().kdf, KdfParams { m_cost_kib: 65536, t_cost: 3, p_cost: 4 });
    }

    #[test]
    fn reseal_brings_a_new_epoch_to_a_slot_without_its_password() {
        let key = RepoKey::generate();
        let mine = key.wrap_with(b"mine", TINY).unwrap();
        let theirs = key.wrap_with(b"theirs", TINY).unwrap();
        let rotated = RepoKey::unwrap(&mine, b"mine").unwrap().rotate().unwrap();
        let theirs_now = rotated.reseal(&theirs).unwrap();
        assert_eq!(inspect_slot(&theirs_now).unwrap().id, inspect_slot(&theirs).unwrap().id);
        assert_eq!(inspect_slot(&theirs_now).unwrap().epochs, vec![0, 1]);
        assert!(RepoKey::unwrap(&theirs_now, b"theirs").unwrap().same_keys(&rotated));
        assert_eq!(RepoKey::unwrap(&theirs_now, b"mine").unwrap_err(), PackError::WrongPassword);
        // A keyring that lost an epoch the slot holds must not overwrite it.
        assert_eq!(key.reseal(&theirs_now).unwrap_err(), PackError::StaleKeyring { epoch: 1 });
    }

    #[test]
    fn an_envelope_sealed_without_the_keyring_is_refused() {
        // Someone who can write the catalog and read the slot's public key,
        // but never held this keyring, seals one of their own to the slot.
        let key = RepoKey::generate();
        let slot = key.wrap_with(b"pw", TINY).unwrap();
        let forged = RepoKey::generate().reseal(&slot).unwrap();
        let err = RepoKey::unwrap(&forged, b"pw").unwrap_err();
        assert!(matches!(err, PackError::BadFormat { .. }), "{err:?}");
    }

    #[test]
    fn two_slots_of_one_key_differ() {
        let key = RepoKey::generate();
        let (a, b) = (key.wrap_with(b"pw", TINY).unwrap(), key.wrap_with(b"pw", TINY).unwrap());
        assert_ne!(a, b);
        assert_ne!(inspect_slot(&a).unwrap().id, inspect_slot(&b).unwrap().id);
    }

    #[test]
    fn wrong_password_is_reported_as_such() {
        let slot = RepoKey::generate().wrap_with(b"right", TINY).unwrap();
        assert_eq!(RepoKey::unwrap(&slot, b"wrong").unwrap_err(), PackError::WrongPassword);
        assert_eq!(RepoKey::unwrap(&slot, b"").unwrap_err(), PackError::WrongPassword);
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        for slot in [RepoKey::generate().rotate().unwrap().wrap_with(b"pw", TINY).unwrap(), unhex(V1_SLOT_HEX)] {
            // Flipping every bit of a byte keeps the cost fields either tiny
            // or far beyond the bounds, so no flip makes the test allocate much.
            for pos in 0..slot.len() {
                let mut bad = slot.clone();
                bad[pos] ^= 0xff;
                assert!(RepoKey::unwrap(&bad, b"pw").is_err(), "flip at {pos} of a v{} slot went unnoticed", slot[4]);
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_bad_format() {
        for slot in [RepoKey::generate().rotate().unwrap().wrap_with(b"pw", TINY).unwrap(), unhex(V1_SLOT_HEX)] {
            for len in 0..slot.len() {
                assert!(
                    matches!(RepoKey::unwrap(&slot[..len], b"pw"), Err(PackError::BadFormat { .. })),
                    "truncation to {len} not reported as bad format"
                );
                assert!(inspect_slot(&slot[..len]).is_err());
            }
            let mut long = slot.clone();
            long.push(0);
            assert!(matches!(RepoKey::unwrap(&long, b"pw"), Err(PackError::BadFormat { .. })));
        }
    }

    #[test]
    fn unknown_version_and_kdf_are_rejected() {
        let mut slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        slot[4] = 3;
        assert_eq!(
            RepoKey::unwrap(&slot, b"pw").unwrap_err(),
            PackError::UnsupportedVersion { what: WHAT, version: 3 }
        );
        slot[4] = SLOT_V2;
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
        use crate::key::{MAX_KDF_M_COST_KIB, MAX_KDF_P_COST, MAX_KDF_T_COST};
        for slot in [RepoKey::generate().wrap_with(b"pw", TINY).unwrap(), unhex(V1_SLOT_HEX)] {
            for (m, t, p) in [
                (MAX_KDF_M_COST_KIB + 1, 1, 1),
                (u32::MAX, 1, 1),
                (8, MAX_KDF_T_COST + 1, 1),
                (8, u32::MAX, 1),
                (1024, 1, MAX_KDF_P_COST + 1),
                // 256 MiB × 16 passes: each cost within bounds, the product not.
                (MAX_KDF_M_COST_KIB, MAX_KDF_T_COST, 1),
                (8, 0, 1),
                (8, 1, 0),
                (4, 1, 1),
            ] {
                let hostile = with_costs(&slot, m, t, p);
                let err = RepoKey::unwrap(&hostile, b"pw").unwrap_err();
                assert!(matches!(err, PackError::BadFormat { .. }), "m={m} t={t} p={p}: {err:?}");
                assert!(inspect_slot(&hostile).is_err());
            }
        }
    }

    #[test]
    fn hostile_epoch_lists_are_rejected_before_running_argon2() {
        // The costs are set high enough that running argon2 would take
        // seconds: a quick BadFormat shows the list was judged first.
        let slot = RepoKey::generate().rotate().unwrap().wrap_with(b"pw", TINY).unwrap();
        let count_at = V2_HEADER_LEN + V2_SECRET_LEN + KEY_LEN;
        let slow = |s: &[u8]| with_costs(s, 256 * 1024, 4, 1);
        for count in [0u16, 3, u16::MAX, MAX_EPOCHS as u16 + 1] {
            let mut bad = slow(&slot);
            bad[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
            let started = std::time::Instant::now();
            assert!(matches!(RepoKey::unwrap(&bad, b"pw"), Err(PackError::BadFormat { .. })), "count {count}");
            assert!(started.elapsed() < std::time::Duration::from_millis(200), "count {count} ran the KDF");
        }
        // Epochs out of order.
        let mut bad = slow(&slot);
        bad[count_at + 2..count_at + 6].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(RepoKey::unwrap(&bad, b"pw"), Err(PackError::BadFormat { .. })));
    }

    #[test]
    fn changed_but_valid_costs_fail_authentication() {
        let slot = RepoKey::generate().wrap_with(b"pw", TINY).unwrap();
        assert_eq!(RepoKey::unwrap(&with_costs(&slot, 16, 1, 1), b"pw").unwrap_err(), PackError::WrongPassword);
    }

    #[test]
    fn a_changed_epoch_list_fails_authentication() {
        let slot = RepoKey::generate().rotate().unwrap().wrap_with(b"pw", TINY).unwrap();
        let at = V2_HEADER_LEN + V2_SECRET_LEN + KEY_LEN + 2 + 4;
        let mut bad = slot.clone();
        bad[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(RepoKey::unwrap(&bad, b"pw"), Err(PackError::BadFormat { .. })));
    }

    #[test]
    fn wrap_refuses_params_unwrap_would_reject() {
        use crate::key::{MAX_KDF_M_COST_KIB, MAX_KDF_T_COST};
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
