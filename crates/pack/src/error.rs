//! The one error type of this crate. Every variant names what failed and
//! carries the chunk id involved where there is one, so that a caller can log
//! it without re-deriving the context. Nothing in this crate panics on bytes
//! it did not produce itself: every malformed key slot, blob or reference list
//! ends up as one of these variants.

use coffer_types::ChunkId;

/// Why a key could not be unwrapped, a blob opened, a reference list decoded
/// or a source chunked.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// The key slot is well formed but does not open with this password.
    /// AES-GCM cannot tell a wrong password from a corrupted ciphertext, so a
    /// damaged slot whose header still parses is reported the same way.
    #[error("wrong password for this key slot")]
    WrongPassword,
    /// The bytes are not a well-formed instance of the format `what`.
    #[error("malformed {what}: {reason}")]
    BadFormat { what: &'static str, reason: String },
    /// The bytes carry a format version this build does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion { what: &'static str, version: u8 },
    /// The caller asked to wrap a key with KDF parameters that argon2 refuses
    /// or that `RepoKey::unwrap` would later reject as hostile.
    #[error("key derivation parameters rejected: {reason}")]
    KdfParamsRejected { reason: String },
    /// The blob's tag does not verify: it is corrupt, or it was sealed under
    /// another chunk id or another repository key.
    #[error("blob for chunk {id} failed authentication (corrupt, moved, or sealed under another key)")]
    AuthenticationFailed { id: ChunkId },
    /// The blob authenticated, but its plaintext does not hash to the id it
    /// was stored under: the writer sealed it under the wrong id.
    #[error("blob plaintext does not hash to chunk {expected}")]
    ChunkIdMismatch { expected: ChunkId },
    /// The blob authenticated but its zstd payload does not decompress.
    #[error("blob for chunk {id} does not decompress: {reason}")]
    Decompress { id: ChunkId, reason: String },
    /// A length exceeds the bound this crate keeps to avoid unbounded allocation.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { what: &'static str, len: u64, max: u64 },
    /// The blob was sealed in a key epoch this keyring does not hold: the
    /// keyring was read from a slot older than the blob (or the blob is
    /// another repository's).
    #[error("blob for chunk {id} was sealed in key epoch {epoch}, which this keyring does not hold")]
    UnknownEpoch { id: ChunkId, epoch: u32 },
    /// A keyring holds at most this many epochs.
    #[error("the keyring already holds the most epochs allowed ({max})")]
    TooManyEpochs { max: usize },
    /// A version-1 key slot holds the key of epoch 0 only and cannot be
    /// given a new epoch without its password.
    #[error("key slot {id} is a version-1 slot, which cannot hold a new key epoch")]
    OldSlot { id: String },
    /// Resealing would drop an epoch the slot already holds.
    #[error("this keyring lacks key epoch {epoch}, which the slot holds; refusing to drop it")]
    StaleKeyring { epoch: u32 },
    /// Reading the source failed while chunking it.
    #[error("read failed while chunking: {0}")]
    Io(String),
}
