//! Pure data shared by every coffer crate: identifiers as newtypes, erasure
//! parameters, and the records the catalog keeps.
//!
//! Nothing here does I/O, reads a clock or draws randomness except the
//! explicit `random()` constructors, which callers use *outside* the Raft
//! state machine so that ids arrive in commands (invariant 5).

pub mod dr;
mod error;
mod ids;
mod params;
mod records;
pub mod refs;
mod source;
pub mod time;
mod token;

pub use dr::{DrKind, DrRecord, Prices, StepRecord, Verdict};
pub use error::TypesError;
pub use ids::{ChunkId, Hash32, MetaId, NodeId, PackId, RepoName, SessionId, ShardIndex, SiteId, SnapshotId, TokenId};
pub use params::{ErasureParams, MAX_FRAME_BYTES, MAX_SESSION_LEASE, MAX_SHARDS, MAX_SHARD_LEN};
pub use records::{
    BackupKind, ChunkLocation, Coverage, CoverageRecord, NodeRecord, NodeState, PackKind, PackRecord, RepoRecord,
    SessionRecord, ShardRecord, SkipReason, SkippedEntry, SnapshotRecord, SnapshotStats, Source, MAX_SKIPPED_EXAMPLES,
    MAX_SKIPPED_PATH,
};
pub use source::{
    check_source_name, source_of_tags, source_tag, SourceRecord, SourceRun, MAX_SOURCE_NAME_BYTES,
    STALE_AFTER_INTERVALS,
};
pub use token::{TokenRecord, TokenRole};
