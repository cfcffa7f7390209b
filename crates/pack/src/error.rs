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
    /// Reading the source failed while chunking it.
    #[error("read failed while chunking: {0}")]
    Io(String),
}
