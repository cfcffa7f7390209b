//! The repository key: a keyring of one chunk-id key and the data-encryption
//! keys of every epoch, and the argon2id parameters that guard its slots.
//!
//! ```text
//!   id_key ──keyed_hash(plaintext)──► ChunkId          (never changes: dedup works across epochs)
//!   epoch 0 enc_key ─┐
//!   epoch 1 enc_key ─┼─(see blob.rs)─► blob keys       (a blob names its epoch in its header)
//!   epoch N enc_key ─┘  ◄── the current epoch: everything written from now on
//! ```
//!
//! A repository starts with a random 32-byte seed from which the chunk-id key
//! and the epoch-0 key are derived with BLAKE3's key derivation mode, one
//! context per purpose (this is also exactly how a version-1 key slot's
//! master key becomes a keyring). `rotate` adds an epoch with a fresh random
//! key; no existing key changes, so old blobs stay readable and chunk ids
//! stay the same. The keyring is stored only inside key slots (`slot.rs`).
//!
//! The invariant kept here: unwrapping a hostile slot costs at most a bounded
//! amount of memory and time, checked before argon2 runs, and gives an
//! error, never a panic.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use coffer_types::ChunkId;
use rand::rngs::OsRng;
use rand::RngCore;
use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};

use crate::kdf_memory::KdfMemory;
use crate::PackError;

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const KDF_SALT_LEN: usize = 16;

/// The largest argon2 memory cost a slot may ask for: 256 MiB, four times
/// the default. A slot comes from the catalog, and a hostile or corrupted
/// one must not make the agent allocate without bound before the password is
/// even checked: an agent is often a small VM or a 2-core host running the
/// very service it protects, where a multi-GiB allocation means the OOM
/// killer, not a slow unlock.
pub const MAX_KDF_M_COST_KIB: u32 = 256 * 1024;
/// The largest argon2 pass count a slot may ask for.
pub const MAX_KDF_T_COST: u32 = 16;
/// The largest argon2 lane count a slot may ask for. Lanes share the
/// memory cost and are computed on rayon's threads, as many at once as
/// there are cores, so more lanes cost time on a small host, not memory.
pub const MAX_KDF_P_COST: u32 = 16;
/// The most memory passes (memory cost times pass count, in KiB) a slot may
/// ask for: 1 GiB of block passes, about five times the default, which
/// keeps a hostile slot's unlock to a few seconds of one core.
pub const MAX_KDF_WORK_KIB: u64 = 1024 * 1024;
/// The most epochs a keyring may hold. Each rotation adds one; the bound
/// keeps a key slot (which carries the whole keyring) a few KiB at most.
pub const MAX_EPOCHS: usize = 256;

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
    /// RFC 9106's second recommended option for argon2id, the one for
    /// memory-constrained (interactive) use: 64 MiB, three passes, four
    /// lanes. It is stronger than OWASP's 19 MiB / two passes, which the
    /// first slots were written with and which still open.
    fn default() -> Self {
        Self { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 4 }
    }
}

impl KdfParams {
    /// Checks the bounds this crate keeps and argon2's own, and returns the
    /// argon2 parameters producing a 32-byte key.
    pub(crate) fn to_argon2(self) -> Result<Params, String> {
        if self.m_cost_kib > MAX_KDF_M_COST_KIB {
            return Err(format!("memory cost {} KiB exceeds {MAX_KDF_M_COST_KIB} KiB", self.m_cost_kib));
        }
        if self.t_cost > MAX_KDF_T_COST {
            return Err(format!("time cost {} exceeds {MAX_KDF_T_COST}", self.t_cost));
        }
        if self.p_cost > MAX_KDF_P_COST {
            return Err(format!("parallelism {} exceeds {MAX_KDF_P_COST}", self.p_cost));
        }
        let work = u64::from(self.m_cost_kib) * u64::from(self.t_cost);
        if work > MAX_KDF_WORK_KIB {
            return Err(format!(
                "memory cost {} KiB times {} passes exceeds {MAX_KDF_WORK_KIB} KiB of passes",
                self.m_cost_kib, self.t_cost
            ));
        }
        Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| format!("argon2 refuses m={} t={} p={}: {e}", self.m_cost_kib, self.t_cost, self.p_cost))
    }

    /// Stretches `password` and `salt` into a wrapping key. The bounds are
    /// checked first, so hostile parameters never reach argon2.
    pub(crate) fn derive(self, password: &[u8], salt: &[u8; KDF_SALT_LEN]) -> Result<[u8; KEY_LEN], String> {
        let params = self.to_argon2()?;
        let mut out = [0u8; KEY_LEN];
        let blocks = params.block_count();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let done = match KdfMemory::new(blocks) {
            Some(mut memory) => argon.hash_password_into_with_memory(password, salt, &mut out, &mut memory),
            None => argon.hash_password_into(password, salt, &mut out),
        };
        done.map_err(|e| format!("argon2id: {e}"))?;
        Ok(out)
    }
}

/// One data-encryption key and the epoch it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct EpochKey {
    pub(crate) epoch: u32,
    pub(crate) key: [u8; KEY_LEN],
}

/// A repository's keyring: the chunk-id key and every epoch's data key,
/// oldest first; the last one is current.
///
/// `Debug` deliberately prints no key material, so that a key can sit in a
/// struct that is logged.
#[derive(Clone)]
pub struct RepoKey {
    pub(crate) id_key: [u8; KEY_LEN],
    /// Sorted by epoch, strictly increasing, never empty.
    pub(crate) epochs: Vec<EpochKey>,
}

impl fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoKey").finish_non_exhaustive()
    }
}

impl RepoKey {
    /// The keyring of a repository whose keys derive from one seed: every
    /// new repository, and every repository opened through a version-1 key
    /// slot, whose master key is that seed.
    pub(crate) fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        Self {
            id_key: blake3::derive_key("coffer v1 chunk id", seed),
            epochs: vec![EpochKey { epoch: 0, key: blake3::derive_key("coffer v1 blob encryption", seed) }],
        }
    }

    /// A new key for a new repository, from the operating system's random
    /// source.
    ///
    /// Panics only if the operating system cannot provide randomness, which
    /// leaves no safe way to make a key at all.
    pub fn generate() -> RepoKey {
        Self::from_seed(&random_key())
    }

    /// The same keyring with one more epoch, whose fresh random key seals
    /// everything written from then on. The chunk-id key and the keys of
    /// the earlier epochs are unchanged. Fails once the keyring holds
    /// `MAX_EPOCHS`.
    pub fn rotate(&self) -> Result<RepoKey, PackError> {
        if self.epochs.len() >= MAX_EPOCHS {
            return Err(PackError::TooManyEpochs { max: MAX_EPOCHS });
        }
        let next = self.current_epoch().checked_add(1).ok_or(PackError::TooManyEpochs { max: MAX_EPOCHS })?;
        let mut out = self.clone();
        out.epochs.push(EpochKey { epoch: next, key: random_key() });
        Ok(out)
    }

    /// The epoch new blobs are sealed in.
    pub fn current_epoch(&self) -> u32 {
        self.epochs.last().map_or(0, |e| e.epoch)
    }

    /// Every epoch this keyring can open, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.epochs.iter().map(|e| e.epoch).collect()
    }

    /// The id of a chunk (or tree) with this plaintext: a keyed hash, so that
    /// whoever holds only ids (storage nodes, the catalog) cannot confirm a
    /// guess of the content.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The current epoch's key, from which new blobs' keys are derived.
    pub(crate) fn current_enc_key(&self) -> &EpochKey {
        // `epochs` is never empty: every constructor and decoder sees to it.
        self.epochs.last().expect("a keyring has at least one epoch")
    }

    /// The key of `epoch`, if this keyring has it.
    pub(crate) fn enc_key(&self, epoch: u32) -> Option<&[u8; KEY_LEN]> {
        self.epochs.binary_search_by_key(&epoch, |e| e.epoch).ok().map(|i| &self.epochs[i].key)
    }

    /// Whether two keyrings hold the same keys. Tests compare keyrings this
    /// way, without exposing key bytes.
    #[cfg(test)]
    pub(crate) fn same_keys(&self, other: &RepoKey) -> bool {
        self.id_key == other.id_key && self.epochs == other.epochs
    }
}

/// 32 bytes from the operating system's random source.
pub(crate) fn random_key() -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut key);
    key
}

/// An AES-256-GCM key. The length is fixed by the type, which is the only
/// thing ring checks.
pub(crate) fn aead_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_from_each_other() {
        let key = RepoKey::generate();
        assert_ne!(key.id_key, key.epochs[0].key);
        assert!(!key.same_keys(&RepoKey::generate()));
        assert_eq!(key.epochs(), vec![0]);
        assert_eq!(key.current_epoch(), 0);
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
        let key = RepoKey::generate().rotate().unwrap();
        assert_eq!(format!("{key:?}"), "RepoKey { .. }");
        // Key bytes would show up as decimal or hex digits, in any formatting.
        assert!(!format!("{key:#?}").chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn rotation_adds_an_epoch_and_keeps_the_rest() {
        let key = RepoKey::generate();
        let next = key.rotate().unwrap();
        assert_eq!(next.epochs(), vec![0, 1]);
        assert_eq!(next.current_epoch(), 1);
        assert_eq!(next.chunk_id(b"x"), key.chunk_id(b"x"), "the chunk-id key must not change");
        assert_eq!(next.enc_key(0), key.enc_key(0));
        assert_ne!(next.enc_key(1), next.enc_key(0));
        assert_eq!(next.enc_key(2), None);
        let again = next.rotate().unwrap();
        assert_eq!(again.epochs(), vec![0, 1, 2]);
        assert_ne!(again.enc_key(2), next.rotate().unwrap().enc_key(2), "each rotation draws a fresh key");
    }

    #[test]
    fn rotation_stops_at_the_epoch_bound() {
        let mut key = RepoKey::generate();
        for _ in 1..MAX_EPOCHS {
            key = key.rotate().unwrap();
        }
        assert_eq!(key.epochs.len(), MAX_EPOCHS);
        assert_eq!(key.rotate().unwrap_err(), PackError::TooManyEpochs { max: MAX_EPOCHS });
    }

    #[test]
    fn params_beyond_the_bounds_are_refused_before_argon2() {
        for params in [
            KdfParams { m_cost_kib: MAX_KDF_M_COST_KIB + 1, t_cost: 1, p_cost: 1 },
            KdfParams { m_cost_kib: 8, t_cost: MAX_KDF_T_COST + 1, p_cost: 1 },
            KdfParams { m_cost_kib: 1024, t_cost: 1, p_cost: MAX_KDF_P_COST + 1 },
            // Each bound alone holds, the product does not.
            KdfParams { m_cost_kib: MAX_KDF_M_COST_KIB, t_cost: MAX_KDF_T_COST, p_cost: 1 },
            KdfParams { m_cost_kib: u32::MAX, t_cost: u32::MAX, p_cost: u32::MAX },
        ] {
            assert!(params.to_argon2().is_err(), "{params:?}");
        }
        assert!(KdfParams::default().to_argon2().is_ok());
        // The parameters of the first slots ever written stay within bounds.
        assert!(KdfParams { m_cost_kib: 19456, t_cost: 2, p_cost: 1 }.to_argon2().is_ok());
    }

    /// The wrapping keys of existing slots must not change with the argon2
    /// implementation (a version upgrade, lanes computed in parallel): these
    /// bytes were derived with argon2 0.5.3, lanes one after another, for
    /// the default parameters and for those of the first slots.
    #[test]
    fn derivation_matches_known_answers() {
        let (password, salt) = (b"correct horse battery staple", b"coffer-kat-salt!");
        let hex = |k: [u8; KEY_LEN]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let cases = [
            (KdfParams::default(), "d41ad22452775f8c60324c508e8cc919e147231282705b204cb07aca8396d723"),
            (
                KdfParams { m_cost_kib: 19456, t_cost: 2, p_cost: 1 },
                "e33e84d67cce0af6c1d325f40070f7e1533b7417037fc478aa0de5e793fac880",
            ),
        ];
        for (params, want) in cases {
            assert_eq!(hex(params.derive(password, salt).unwrap()), want, "{params:?}");
        }
    }
}
