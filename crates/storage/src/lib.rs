//! A storage node: shard files on local disk, a sled inventory that indexes
//! them, the gRPC shard service, and the heartbeat to the metadata plane.
//!
//! ```text
//!   PutShard / GetShard ──► service ──► store ──► DIR/shards/ab/<pack>.<i>   (the truth)
//!                                          └────► DIR/inventory (sled)       (an index)
//!   node: node-id file, serve(listener, shutdown), RegisterNode + Heartbeat ──► meta
//! ```
//!
//! The files are the truth: the inventory is rebuilt from their headers
//! whenever it disagrees. Every byte read from disk or the network is checked
//! against a BLAKE3 hash before it is trusted, and a node never sees
//! plaintext or keys: shard bodies are opaque, already-encrypted bytes.

pub mod error;
pub mod fuzzing;
pub mod node;
mod observe;
pub mod orphans;
pub mod repair;
pub mod service;
pub mod shard_file;
pub mod store;
pub mod workers;

pub use error::{SourceFailure, StorageError};
pub use node::{Reserve, StorageConfig, StorageNode};
pub use service::ShardService;
pub use shard_file::{ShardHeader, BLOCK_SIZE, FORMAT_VERSION};
pub use store::{PutWriter, ShardEntry, ShardReader, ShardStore};

#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod service_tests;
