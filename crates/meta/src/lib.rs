//! The metadata plane: an openraft node whose log and state machine live in
//! one fjall database (`store`), serving the catalog API and the internal
//! Raft RPCs on one port.
//!
//! ```text
//!   agents, storage nodes ──gRPC──▶ CatalogService ──client_write──▶ openraft ──▶ log store (fjall)
//!                                        │                              │
//!                                        └──── reads ◀── StateMachine ◀─┘ apply (pure, deterministic)
//!   other meta nodes ◀──gRPC── RaftNetwork / RaftService
//! ```
//!
//! The split: `command` and `apply` are pure (no clocks, no I/O but the
//! store); `store` is the storage engine (fjall, and the migration from sled);
//! `impl_log_store` and `impl_state_machine` adapt it to openraft;
//! `network` and `raft_service` carry Raft over gRPC; `catalog` is the public
//! API; `node` wires it all together and owns leader-only volatile state.

mod admin;
mod apply;
mod auth;
mod catalog;
mod codec;
mod collector;
pub mod command;
mod config;
mod dr;
mod error;
pub mod failpoint;
pub mod fuzzing;
mod gc;
mod impl_log_store;
mod impl_state_machine;
mod index;
mod kv;
mod liveness;
mod maint_service;
mod network;
mod node;
pub mod observe;
pub mod probe;
mod raft_service;
pub mod repair;
mod retention;
mod rewrite;
mod snapshot_file;
mod sources;
mod status_page;
pub mod store;
#[cfg(test)]
mod test_util;
mod tokens;
pub mod types;
mod workers;

pub use auth::AdminToken;
pub use config::{MetaConfig, PriceConfig, DEFAULT_STORE_CACHE_BYTES};
pub use error::MetaError;
pub use impl_log_store::LogStore;
pub use impl_state_machine::StateMachineStore;
pub use node::{open_stores, open_stores_with_cache, MetaNode, SHUTDOWN_DEADLINE};
