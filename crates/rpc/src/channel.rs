//! Channels to peers, and the clients of every coffer service on them with
//! that service's message limits (`coffer_proto::limits`).
//!
//! `ChannelConfig` is the one place a `tonic` endpoint is configured: the
//! connect deadline, keep-alive, `TCP_NODELAY`, the HTTP/2 windows and
//! frame size of shard reads (`http2`), an optional deadline for every
//! call on the channel, and its transport security: plain text, or
//! mutual TLS expecting the peer's certificate to have the role the caller
//! names (`meta` for a metadata endpoint, the default; `storage` for a
//! storage node).

use std::time::Duration;

use coffer_proto::limits;
use coffer_proto::pb::admin_client::AdminClient;
use coffer_proto::pb::catalog_client::CatalogClient;
use coffer_proto::pb::maintenance_client::MaintenanceClient;
use coffer_proto::pb::raft_client::RaftClient;
use coffer_proto::pb::shard_store_client::ShardStoreClient;
use tonic::transport::{Channel, Endpoint};

use crate::http2;
use crate::identity::CertRole;
use crate::timeouts;
use crate::tls::{self, Security, TlsConnector};
use crate::RpcError;

/// How to reach one peer. Building it checks the address; `connect_lazy`
/// makes a channel that connects on first use (and again after a failure),
/// so building one never blocks and a peer that is down is an error of the
/// call, not of start-up.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    endpoint: Endpoint,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
    security: Security,
    peer_role: CertRole,
}

impl ChannelConfig {
    /// `addr` is `host:port` or a URL.
    pub fn new(addr: &str) -> Result<Self, RpcError> {
        let url = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| RpcError::BadEndpoint { addr: addr.to_string(), reason: e.to_string() })?;
        Ok(Self {
            endpoint,
            connect_timeout: timeouts::CONNECT,
            call_timeout: None,
            security: tls::process_default(),
            peer_role: CertRole::Meta,
        })
    }

    /// Talks with `security` instead of the process default.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The role the peer's certificate must have (with TLS); `meta` unless
    /// set.
    pub fn peer_role(mut self, role: CertRole) -> Self {
        self.peer_role = role;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for every call on the channel; a call may still set a
    /// shorter one of its own.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    pub fn connect_lazy(&self) -> Channel {
        let mut ep = self
            .endpoint
            .clone()
            .tcp_nodelay(true)
            .initial_stream_window_size(http2::STREAM_WINDOW)
            .initial_connection_window_size(http2::CONNECTION_WINDOW)
            .max_frame_size(http2::MAX_FRAME)
            .http2_keep_alive_interval(timeouts::KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(timeouts::KEEP_ALIVE_TIMEOUT);
        if let Some(t) = self.call_timeout {
            ep = ep.timeout(t);
        }
        match &self.security {
            Security::Insecure => ep.connect_timeout(self.connect_timeout).connect_lazy(),
            Security::Tls(files) => ep.connect_with_connector_lazy(TlsConnector {
                files: files.clone(),
                expect: self.peer_role,
                timeout: self.connect_timeout,
            }),
        }
    }
}

/// A lazily connecting channel to `addr` with the default settings.
pub fn channel(addr: &str) -> Result<Channel, RpcError> {
    Ok(ChannelConfig::new(addr)?.connect_lazy())
}

/// A catalog client on `ch`.
pub fn catalog_client(ch: Channel) -> CatalogClient<Channel> {
    let l = limits::CATALOG;
    CatalogClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request)
}

/// A maintenance (retention, collection) client on `ch`.
pub fn maintenance_client(ch: Channel) -> MaintenanceClient<Channel> {
    let l = limits::MAINTENANCE;
    MaintenanceClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request)
}

/// A membership and introspection client on `ch`.
pub fn admin_client(ch: Channel) -> AdminClient<Channel> {
    let l = limits::ADMIN;
    AdminClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request)
}

/// A Raft transport client to the member at `addr`, talking with `security`.
pub fn raft_client(addr: &str, security: &Security) -> Result<RaftClient<Channel>, RpcError> {
    let ch = ChannelConfig::new(addr)?
        .security(security.clone())
        .peer_role(CertRole::Meta)
        .connect_timeout(timeouts::RAFT_CONNECT)
        .connect_lazy();
    let l = limits::RAFT;
    Ok(RaftClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request))
}

/// A shard-store client for the storage node at `addr`, with the process
/// default security.
pub fn shard_client(addr: &str) -> Result<ShardStoreClient<Channel>, RpcError> {
    shard_client_with(addr, &tls::process_default())
}

/// A shard-store client for the storage node at `addr`, talking with
/// `security` (the node must present a storage certificate).
pub fn shard_client_with(addr: &str, security: &Security) -> Result<ShardStoreClient<Channel>, RpcError> {
    let ch = ChannelConfig::new(addr)?.security(security.clone()).peer_role(CertRole::Storage).connect_lazy();
    let l = limits::SHARD_STORE;
    Ok(ShardStoreClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request))
}
