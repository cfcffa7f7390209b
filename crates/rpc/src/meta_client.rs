//! The leader-following client of the metadata plane.
//!
//! `MetaClient` holds every metadata endpoint the operator gave. Writes must
//! reach the Raft leader: a follower answers UNAVAILABLE and names the leader
//! in the `coffer-leader` metadata key, and we follow that hint; an endpoint
//! that does not answer (or does not answer in time) is skipped for the next
//! one. Retries are bounded in time (`retry_for`); they are safe because
//! every catalog write is idempotent (keyed by ids the caller drew).
//!
//! A client made `with_token` sends `authorization: Bearer <token>` on every
//! call of every service (`identity::Bearer` intercepts each request).

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_proto::limits;
use coffer_proto::pb::access_client::AccessClient;
use coffer_proto::pb::admin_client::AdminClient;
use coffer_proto::pb::catalog_client::CatalogClient;
use coffer_proto::pb::maintenance_client::MaintenanceClient;
use coffer_proto::LEADER_HINT_KEY;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::channel::ChannelConfig;
use crate::identity::{Bearer, CertRole};
use crate::tls::{self, Security};
use crate::{timeouts, RpcError};

/// The channel `MetaClient`'s calls run on: one to a metadata endpoint,
/// with the client's token (if any) on every request.
pub type MetaChannel = InterceptedService<Channel, Bearer>;

/// The leader a follower named in its refusal, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    status.metadata().get(LEADER_HINT_KEY).and_then(|v| v.to_str().ok()).map(str::to_string).filter(|h| !h.is_empty())
}

struct Current {
    index: usize,
    channel: Option<Channel>,
    /// Set when a follower named a leader that is not in our list.
    hinted: Option<String>,
}

/// Whether a failed call may be tried again, on another member. Besides
/// UNAVAILABLE (no leader here, connection refused) that is a call that ran
/// out of time: the member may be stalled, and every catalog write is
/// idempotent, so sending it again elsewhere doubles nothing. The same goes
/// for a call whose connection broke under it (a leader killed while it
/// served the call): the write may or may not have been applied, exactly as
/// after a timeout, and the retry is answered by the next leader.
pub(crate) fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // tonic reports its own client-side timeout as CANCELLED.
        Code::Cancelled => status.message().contains("Timeout expired") || transport_failure(status),
        Code::Unknown | Code::Internal => transport_failure(status),
        _ => false,
    }
}

/// Whether `status` was made on this side from a failed connection rather
/// than answered by the server: tonic then keeps the transport error as
/// the status's source ("transport error", code UNKNOWN), or names an
/// HTTP/2 failure of the connection. A server's own answer has no source.
fn transport_failure(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    status.code() == Code::Internal && status.message().starts_with("h2 protocol error")
}

/// A catalog client over every metadata endpoint, following the leader.
pub struct MetaClient {
    endpoints: Vec<String>,
    current: Mutex<Current>,
    retry_for: Duration,
    call_timeout: Duration,
    bearer: Bearer,
    security: Security,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaClient").field("endpoints", &self.endpoints).finish()
    }
}

impl MetaClient {
    /// `endpoints` as given on the command line: comma-separated or a list.
    pub fn new(endpoints: &[String], retry_for: Duration) -> Result<Self, RpcError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(RpcError::NoEndpoints);
        }
        for e in &endpoints {
            ChannelConfig::new(e)?;
        }
        Ok(Self {
            endpoints,
            current: Mutex::new(Current { index: 0, channel: None, hinted: None }),
            retry_for,
            call_timeout: timeouts::META_CALL,
            bearer: Bearer::none(),
            security: tls::process_default(),
        })
    }

    /// Sends `token` as `authorization: Bearer` on every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, RpcError> {
        self.bearer = Bearer::new(token)?;
        Ok(self)
    }

    /// The token this client sends, to attach to calls made outside it.
    pub fn bearer(&self) -> &Bearer {
        &self.bearer
    }

    /// Talks with `security` instead of the process default (the metadata
    /// nodes must present meta certificates).
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// With a deadline other than `timeouts::META_CALL` for each call, for
    /// calls that are slow by nature (a join waits for the learner to catch
    /// up).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel(&self) -> Result<Channel, RpcError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &cur.channel {
            return Ok(c.clone());
        }
        let addr = cur.hinted.clone().unwrap_or_else(|| self.endpoints[cur.index % self.endpoints.len()].clone());
        let ch = ChannelConfig::new(&addr)?
            .security(self.security.clone())
            .peer_role(CertRole::Meta)
            .call_timeout(self.call_timeout)
            .connect_lazy();
        cur.channel = Some(ch.clone());
        Ok(ch)
    }

    /// Moves to the hinted leader, or to the next endpoint.
    fn fail_over(&self, hint: Option<String>) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.channel = None;
        match hint {
            Some(h) => match self.endpoints.iter().position(|e| *e == h) {
                Some(i) => {
                    cur.index = i;
                    cur.hinted = None;
                }
                None => cur.hinted = Some(h),
            },
            None => {
                cur.hinted = None;
                cur.index = (cur.index + 1) % self.endpoints.len();
            }
        }
    }

    /// Runs `f` against the current endpoint, failing over on UNAVAILABLE
    /// until `retry_for` has passed. `what` names the operation in errors.
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RpcError>
    where
        F: FnMut(CatalogClient<MetaChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(what, |ch| {
            let l = limits::CATALOG;
            f(CatalogClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request))
        })
        .await
    }

    /// Like `call`, for the maintenance service (retention) of the same
    /// metadata plane.
    pub async fn call_maintenance<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RpcError>
    where
        F: FnMut(MaintenanceClient<MetaChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(what, |ch| {
            let l = limits::MAINTENANCE;
            f(MaintenanceClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request))
        })
        .await
    }

    /// Like `call`, for the membership service (join, remove, metrics).
    pub async fn call_admin<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RpcError>
    where
        F: FnMut(AdminClient<MetaChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(what, |ch| {
            let l = limits::ADMIN;
            f(AdminClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request))
        })
        .await
    }

    /// Like `call`, for the token service (create, list, revoke).
    pub async fn call_access<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RpcError>
    where
        F: FnMut(AccessClient<MetaChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(what, |ch| {
            let l = limits::ADMIN;
            f(AccessClient::new(ch).max_decoding_message_size(l.response).max_encoding_message_size(l.request))
        })
        .await
    }

    /// Runs `f` on a channel to the current endpoint with the retry and
    /// leader-following rules of `call`.
    async fn call_channel<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RpcError>
    where
        F: FnMut(MetaChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let channel = InterceptedService::new(self.channel()?, self.bearer.clone());
            match f(channel).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) if retryable(&status) => {
                    let hint = leader_hint(&status);
                    let had_hint = hint.is_some();
                    self.fail_over(hint);
                    if start.elapsed() >= self.retry_for {
                        return Err(RpcError::Unreachable {
                            what: what.to_string(),
                            elapsed: start.elapsed(),
                            last: status.message().to_string(),
                        });
                    }
                    tracing::debug!(what, error = %status.message(), "metadata call unavailable; retrying");
                    // A fresh leader hint is worth trying at once; otherwise back off.
                    if !had_hint {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
                Err(status) => return Err(RpcError::Rpc { what: what.to_string(), status }),
            }
        }
    }
}
