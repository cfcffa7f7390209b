//! The agent library: the backup and restore pipelines that applications
//! embed, over the connections `coffer-rpc` builds.
//!
//! A backup runs as concurrent stages with bounded queues between them, so
//! reading, hashing, sealing, coding and sending overlap on all cores while
//! memory stays bounded whatever the size of the source:
//!
//! ```text
//!  source ──► walker thread ─────────────► dedup task ──────► seal threads ×N ──► packer task ──► uploads ×2
//!             lstat, read, FastCDC,        LookupChunks       zstd + AES-GCM       data pack,      AllocatePack,
//!             chunk id, trees bottom-up    (≤ 10 000 ids),    per blob             tree pack,      encode k+m,
//!             parent reuse                 session set                             cut at 16 MiB   PutShard ×(k+m),
//!               ▲                                                                                  CommitPack
//!   read-ahead thread: asks the kernel for the next files of the walk
//!
//!  walker done ──► flush packs ──► reference list (refs pack) ──► CommitSnapshot ──► summary
//! ```
//!
//! A restore reads the trees, then every chunk from the data shards that
//! hold it, falling back to reconstruction from any k shards; nothing is
//! written before it is authenticated and re-hashed.
//!
//! The invariant the crate keeps: a backup is acknowledged only once its
//! snapshot is committed, and every byte a restore writes was verified.

pub mod backup;
pub mod browse;
pub mod check;
mod command;
mod direct;
pub mod drill;
mod error;
pub mod exclude;
mod fetch;
pub mod gc;
pub mod keys;
mod parent;
mod pipeline;
pub mod plan;
mod readahead;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod select;
mod source;
mod stats;
pub mod tree;
mod upload;
mod walk;
pub mod work;

#[cfg(test)]
mod tests;

pub use backup::{BackupOptions, BackupSummary, ProgressFn};
/// The cluster connection an embedding application hands to `open_repo`.
pub use coffer_rpc::{MetaClient, RpcError, ShardFailure};
pub use command::CommandOutput;
pub use error::ClientError;
pub use exclude::Excludes;
pub use pipeline::PACK_TARGET;
pub use repo::{create_repo, open_repo, Repository};
pub use restore::{restore_to_dir, restore_to_writer, BadShard, BlobSource, RestoreSummary, RestoreTarget};
pub use select::{parent_for, select_snapshot, LATEST};
pub use stats::{Progress, StageTime, Stages};
pub use work::{Unit, Work, WorkStatus};
