//! The client-side cryptography and formats of coffer: chunk ids, blob
//! sealing (compression and authenticated encryption), the keyring and its
//! epochs, key slots, content-defined chunking and reference lists.
//!
//! ```text
//!   source ──chunker──► chunk ──RepoKey::chunk_id──► ChunkId
//!                         └────RepoKey::seal──────► blob ──► pack (client) ──► shards (erasure)
//!   snapshot's ChunkIds ──encode_refs──► reference list (unencrypted, for garbage collection)
//!   RepoKey (keyring: chunk-id key + one key per epoch) ──wrap(password)──► key slot (kept in the catalog)
//! ```
//!
//! Only agents use this crate on data: storage nodes and the metadata plane
//! never see plaintext or keys (invariant 6), and read only reference lists,
//! which need no key. Everything here is pure: no tokio, no filesystem, no
//! clock. Every decoder checks its input and returns a `PackError` instead of
//! panicking, and every format carries a version (invariant 7).

mod blob;
mod chunking;
mod error;
pub mod fuzzing;
mod gear;
mod kdf_memory;
mod key;
mod refs;
mod slot;
mod wire;

#[cfg(test)]
mod prop_tests;

pub use blob::{blob_epoch, Compression, SealedBlob, BLOB_OVERHEAD, MAX_DECOMPRESSED_LEN};
pub use chunking::{
    chunker, looks_like_text, ChunkBuffer, Chunker, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, CLASS_SAMPLE_LEN, MAX_CHUNK_LEN,
    TEXT_CHUNK_AVG, TEXT_CHUNK_MAX, TEXT_CHUNK_MIN,
};
pub use error::PackError;
pub use key::{KdfParams, RepoKey, MAX_EPOCHS, MAX_KDF_M_COST_KIB, MAX_KDF_P_COST, MAX_KDF_T_COST, MAX_KDF_WORK_KIB};
pub use refs::{decode_refs, encode_refs};
pub use slot::{inspect_slot, slot_id, SlotInfo, KEY_SLOT_LEN};
