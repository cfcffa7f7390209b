//! The one error type of this crate. Variants are named for what failed and
//! carry the pack and shard index involved, so that whoever handles an error
//! (the shard service, the node loop, scrub) can log and classify it without
//! re-deriving the context. The distinction that matters most downstream is
//! between bad *input* (a header or frame a client sent: `BadHeader`,
//! `BadRequest`, `ChecksumMismatch`, `LengthMismatch`) and damaged *stored*
//! data (`Corrupt`, `CorruptHeader`, `Truncated`), which is data loss.

use std::path::PathBuf;

use coffer_erasure::ErasureError;
use coffer_rpc::ShardFailure;
use coffer_types::{PackId, ShardIndex};

/// One source shard a rebuild could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    pub index: ShardIndex,
    pub addr: String,
    pub failure: ShardFailure,
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} from {}: {}", self.index, self.addr, self.failure)
    }
}

/// Why a shard-store, service or node operation could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A filesystem operation failed on `path`.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A shard header (from a client or from bytes handed to the decoder) is
    /// not well formed.
    #[error("bad shard header: {reason}")]
    BadHeader { reason: String },
    /// The shard format version is not one this node speaks.
    #[error("unsupported shard format version {version}")]
    UnsupportedVersion { version: u32 },
    /// A stored body block does not match its recorded BLAKE3 hash.
    #[error("shard {pack}.{index} is corrupt: block {block} fails its checksum")]
    Corrupt { pack: PackId, index: ShardIndex, block: u32 },
    /// A stored shard file's header or block hash table is damaged or does
    /// not describe the shard its name says it holds.
    #[error("shard {pack}.{index} has a damaged header: {reason}")]
    CorruptHeader { pack: PackId, index: ShardIndex, reason: String },
    /// A stored shard file is shorter or longer than its header says.
    #[error("shard {pack}.{index} file has {actual} bytes, its header calls for {expected}")]
    Truncated { pack: PackId, index: ShardIndex, expected: u64, actual: u64 },
    /// The bytes a client sent do not hash to the checksum its header declared.
    #[error("shard {pack}.{index}: checksum mismatch: sent bytes do not match the header")]
    ChecksumMismatch { pack: PackId, index: ShardIndex },
    /// A client sent more or fewer body bytes than its header declared.
    #[error("shard {pack}.{index}: header declares {declared} bytes, received {received}")]
    LengthMismatch { pack: PackId, index: ShardIndex, declared: u64, received: u64 },
    /// No such shard on this node.
    #[error("shard {pack}.{index} not found")]
    NotFound { pack: PackId, index: ShardIndex },
    /// A requested byte range reaches past the end of the shard body.
    #[error("shard {pack}.{index}: range at offset {offset} of {len} bytes exceeds the body of {body_len} bytes")]
    RangeOutOfBounds { pack: PackId, index: ShardIndex, offset: u64, len: u64, body_len: u64 },
    /// Storing the shard would leave less than the node's reserve free on
    /// its filesystem: the put is refused (RESOURCE_EXHAUSTED), and the
    /// uploader or the repair planner chooses another node.
    #[error("shard {pack}.{index}: disk full: {need} bytes needed, {free} free, {reserve} kept in reserve")]
    DiskFull { pack: PackId, index: ShardIndex, need: u64, free: u64, reserve: u64 },
    /// A request broke the streaming protocol (frame order or size).
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    /// The sled inventory failed (and could not be reopened).
    #[error("inventory: {0}")]
    Inventory(#[from] sled::Error),
    /// The inventory was closed by a reopen that failed meanwhile; the next
    /// call tries to reopen it again.
    #[error("inventory: closed after a failure; retry")]
    InventoryClosed,
    /// The inventory could not be opened moments ago (at the node's start,
    /// or on a reopen after a failure); calls that need it are refused
    /// until a later try succeeds. `disk_full` says a full disk is why.
    #[error("inventory: cannot be opened ({reason}); refused until it can")]
    InventoryUnavailable { reason: String, disk_full: bool },
    /// The node's identity file exists but cannot be used. It is never
    /// replaced silently: a new id would orphan every shard the catalog
    /// places on this node.
    #[error("node id file {path}: {reason}")]
    NodeIdFile { path: PathBuf, reason: String },
    /// The node configuration is invalid.
    #[error("invalid storage configuration: {reason}")]
    Config { reason: String },
    /// A rebuild could read fewer than the k verified shards it needs
    /// from the sources it was given; each failure names its source.
    #[error(
        "rebuild {pack}.{index}: only {read} of the {needed} shards needed could be read ({})",
        .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    TooFewShards { pack: PackId, index: ShardIndex, read: usize, needed: usize, failures: Vec<SourceFailure> },
    /// Reed-Solomon refused to reconstruct from shards that all verified.
    #[error("rebuild {pack}.{index}: reconstruct: {source}")]
    Reconstruct { pack: PackId, index: ShardIndex, source: ErasureError },
    /// A rebuilt shard does not hash to the checksum its pack record holds:
    /// the record and the sources disagree, and nothing is stored.
    #[error("rebuild {pack}.{index}: the rebuilt shard does not match its record")]
    RebuiltMismatch { pack: PackId, index: ShardIndex },
    /// Talking to the metadata plane failed.
    #[error("metadata plane: {0}")]
    Meta(String),
    /// The gRPC server failed.
    #[error("shard server: {0}")]
    Serve(String),
    /// A client's request stream failed (cancelled, or a message that does
    /// not decode); the status is the one tonic reported.
    #[error("request stream: {0}")]
    RequestStream(tonic::Status),
    /// A blocking task that ran a store operation did not complete.
    #[error("blocking task failed: {reason}")]
    BlockingTask { reason: String },
}

impl StorageError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { path: path.into(), source }
    }

    /// True when the node's filesystem is full (a put crossing the reserve,
    /// or a write of a file or of the inventory that the disk refused).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::DiskFull { .. } | StorageError::InventoryUnavailable { disk_full: true, .. } => true,
            StorageError::Io { source, .. } | StorageError::Inventory(sled::Error::Io(source)) => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }

    /// True when the error means stored data is damaged (as opposed to bad
    /// input, a missing shard or a local failure): scrub and rebuild treat
    /// these as losses.
    pub fn is_data_loss(&self) -> bool {
        matches!(
            self,
            StorageError::Corrupt { .. } | StorageError::CorruptHeader { .. } | StorageError::Truncated { .. }
        )
    }
}
