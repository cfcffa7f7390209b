//! The one place that builds gRPC channels and servers. Every process of the
//! cluster (metadata nodes, storage nodes, agents, the CLI) talks and listens
//! through this crate, so message limits, keep-alive, connect and call
//! deadlines, transport security (mutual TLS with certificate roles, or
//! `--insecure` plain text) and the certificate-role policy are decided
//! here once.
//!
//! ```text
//!   ChannelConfig::new(addr) ──► Channel ──► catalog / maintenance / admin / raft / shard clients (limits applied)
//!        (connect deadline, keep-alive, call deadline, Security + the peer role expected)
//!   MetaClient  ── every metadata endpoint, follows `coffer-leader` hints, bounded retries
//!   ShardPool   ── one channel per storage node; put / get / list / delete / rebuild → ShardFailure
//!   Server::new().service(svc)….serve(listener, shutdown)   (limits, TCP_NODELAY, TLS, role policy)
//!   tls       ── Security { Insecure | Tls(files re-read on change) }, the process default
//!   identity  ── Peer { role, name } from the SAN URI coffer://ROLE/NAME; peer(), cert_role(), require_role()
//!   policy    ── which certificate roles may call which method (one table, applied by every server)
//!   observe   ── per-call metrics (a tower layer), grpc.health.v1 and reflection on every server
//!   http2     ── the windows and frame size of shard streams, for channels and `bulk` servers
//! ```
//!
//! The crate depends only on `coffer-types`, `coffer-proto`, the gRPC
//! stack and `coffer-admin`'s metric families: whoever uses it to reach the cluster gets no repository key code
//! with it.

mod channel;
mod error;
mod http2;
pub mod identity;
mod meta_client;
pub mod observe;
pub mod policy;
mod server;
mod shards;
pub mod timeouts;
pub mod tls;

pub use channel::{
    admin_client, catalog_client, channel, maintenance_client, raft_client, shard_client, shard_client_with,
    ChannelConfig,
};
pub use error::RpcError;
pub use identity::{cert_role, peer, require_role, Bearer, CertRole, Peer};
pub use meta_client::{leader_hint, MetaChannel, MetaClient};
pub use server::{RpcService, Server};
pub use shards::{ShardFailure, ShardPool, ShardPut, SHARD_FORMAT_VERSION};
pub use tls::{Security, TlsPaths};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
