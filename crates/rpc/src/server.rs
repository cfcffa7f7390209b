//! The one way a coffer process serves gRPC: `Server::new()`, the services (`service`)
//! it carries (each gets its message limits and call deadline when added), then
//! `serve(listener, shutdown)`.
//!
//! Servers take a bound listener and a shutdown future, so that a caller
//! (and every test) can bind port 0 and learn the address first. `serve`
//! applies the transport security (`crate::tls`: the TLS handshake and the
//! peer's certificate identity) and the certificate-role table
//! (`crate::policy`) to every service of the cluster.

use std::future::Future;
use std::time::Duration;

use coffer_proto::limits::{self, MessageLimits};
use coffer_proto::pb::access_server::{Access, AccessServer};
use coffer_proto::pb::admin_server::{Admin, AdminServer};
use coffer_proto::pb::catalog_server::{Catalog, CatalogServer};
use coffer_proto::pb::maintenance_server::{Maintenance, MaintenanceServer};
use coffer_proto::pb::raft_server::{Raft, RaftServer};
use coffer_proto::pb::shard_store_server::{ShardStore, ShardStoreServer};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::http2;
use crate::policy::AuthorizeLayer;
use crate::tls::{self, Security};
use crate::{timeouts, RpcError};

/// HTTP/2 streams one client connection may have open at once, and calls
/// of one connection that a server works on at once (the rest wait): a
/// restoring agent keeps a few dozen reads in flight per node, a peer that
/// opens thousands only queues.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
pub const CONCURRENCY_PER_CONNECTION: usize = 128;

/// A generated coffer service that a `Server` can carry.
pub trait RpcService {
    /// Adds the service, with its message limits, to `routes`.
    fn add_to(self, routes: &mut RoutesBuilder);
    /// The longest any call of the service may run on the server, whatever
    /// deadline (or none) the caller sent.
    fn call_deadline(&self) -> Duration;
}

macro_rules! rpc_service {
    ($($server:ident: $service:ident, $limits:expr, $deadline:expr;)*) => {
        $(impl<T: $service> RpcService for $server<T> {
            fn add_to(self, routes: &mut RoutesBuilder) {
                let limits: MessageLimits = $limits;
                routes.add_service(
                    self.max_decoding_message_size(limits.request).max_encoding_message_size(limits.response),
                );
            }
            fn call_deadline(&self) -> Duration {
                $deadline
            }
        })*
    };
}

rpc_service!(
    CatalogServer: Catalog, limits::CATALOG, timeouts::SERVER_CALL;
    AdminServer: Admin, limits::ADMIN, timeouts::JOIN_CALL;
    RaftServer: Raft, limits::RAFT, timeouts::SERVER_CALL;
    MaintenanceServer: Maintenance, limits::MAINTENANCE, timeouts::SERVER_CALL;
    ShardStoreServer: ShardStore, limits::SHARD_STORE, timeouts::SCRUB;
    AccessServer: Access, limits::ADMIN, timeouts::SERVER_CALL;
);

/// A gRPC server being assembled.
pub struct Server {
    routes: RoutesBuilder,
    bulk: bool,
    security: Security,
    /// The longest call deadline of the services added.
    deadline: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            routes: RoutesBuilder::default(),
            bulk: false,
            security: tls::process_default(),
            deadline: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("bulk", &self.bulk)
            .field("tls", &self.security.is_tls())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Server {
    pub fn new() -> Self {
        Self::default()
    }

    /// Large HTTP/2 windows and frames, for a server that receives shard
    /// streams.
    pub fn bulk(mut self) -> Self {
        self.bulk = true;
        self
    }

    /// Serves with `security` instead of the process default.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    pub fn service(mut self, service: impl RpcService) -> Self {
        self.deadline = self.deadline.max(service.call_deadline());
        service.add_to(&mut self.routes);
        self
    }

    /// Serves every added service on `listener` until `shutdown` resolves,
    /// then lets calls in progress finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RpcError> {
        // Limits against peers that open streams and never finish them:
        // bounded streams and work per connection, a deadline on every call
        // (a caller's shorter grpc-timeout still wins), keep-alive pings that
        // close connections to vanished peers.
        let mut server = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
            .timeout(self.deadline.max(timeouts::SERVER_CALL))
            .http2_keepalive_interval(Some(timeouts::KEEP_ALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(timeouts::KEEP_ALIVE_TIMEOUT))
            .tcp_keepalive(Some(timeouts::KEEP_ALIVE_INTERVAL))
            .layer(crate::observe::MetricsLayer)
            .layer(AuthorizeLayer);
        if self.bulk {
            server = server
                .initial_stream_window_size(http2::STREAM_WINDOW)
                .initial_connection_window_size(http2::CONNECTION_WINDOW)
                .max_frame_size(http2::MAX_FRAME);
        }
        // Every port also answers `grpc.health.v1` (SERVING while it
        // serves) and server reflection, for grpcurl and health probes.
        let mut routes = self.routes;
        let (_health, health) = tonic_health::server::health_reporter();
        routes.add_service(health);
        match tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(coffer_proto::pb::DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
        {
            Ok(reflection) => {
                routes.add_service(reflection);
            }
            // The descriptors are compiled in; a failure is a build bug,
            // which must not stop the node from serving.
            Err(e) => tracing::warn!(error = %e, "server reflection is off: cannot load the descriptors"),
        }
        // TCP_NODELAY is set on every accepted connection (see `tls::incoming`).
        let incoming = tls::incoming(listener, self.security);
        server.add_routes(routes.routes()).serve_with_incoming_shutdown(incoming, shutdown).await?;
        Ok(())
    }
}
