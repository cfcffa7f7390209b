//! The one place that builds gRPC channels and servers. Every process of the
//! cluster (metadata nodes, storage nodes, agents, the CLI) talks and listens
//! through this crate, so message limits, keep-alive, connect and call
//! deadlines, and later TLS and authentication, are decided here once.
//!
//! ```text
//!   ChannelConfig::new(addr) ──► Channel ──► catalog / maintenance / admin / raft / shard clients (limits applied)
//!        (connect deadline, keep-alive, call deadline; TLS goes here)
//!   MetaClient  ── every metadata endpoint, follows `coffer-leader` hints, bounded retries
//!   ShardPool   ── one channel per storage node; put / get / list / delete / rebuild → ShardFailure
//!   Server::new().service(svc)….serve(listener, shutdown)   (limits, TCP_NODELAY; TLS and auth go here)
//! ```
//!
//! The crate depends only on `coffer-types`, `coffer-proto` and the gRPC
//! stack: whoever uses it to reach the cluster gets no repository key code
//! with it.

mod channel;
mod error;
pub mod identity;
mod meta_client;
mod server;
mod shards;
pub mod timeouts;

pub use channel::{
    admin_client, catalog_client, channel, maintenance_client, raft_client, shard_client, ChannelConfig,
};
pub use error::RpcError;
pub use meta_client::{leader_hint, MetaChannel, MetaClient};
pub use server::{RpcService, Server};
pub use shards::{ShardFailure, ShardPool, ShardPut, SHARD_FORMAT_VERSION};

#[cfg(test)]
mod tests;
