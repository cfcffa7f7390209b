//! Connections to the metadata plane and to storage nodes.
//!
//! `MetaClient` holds every metadata endpoint the operator gave. Writes must
//! reach the Raft leader: a follower answers UNAVAILABLE and names the leader
//! in the `coffer-leader` metadata key, and we follow that hint; an endpoint
//! that does not answer (or does not answer in time) is skipped for the next
//! one. Retries are bounded in time (`retry_for`); they are safe because
//! every catalog write is idempotent (keyed by ids the caller drew).

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use coffer_proto::pb::catalog_client::CatalogClient;
use coffer_proto::pb::maintenance_client::MaintenanceClient;
use coffer_proto::pb::shard_store_client::ShardStoreClient;
use coffer_proto::{LEADER_HINT_KEY, MAX_MESSAGE_BYTES};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Builds a lazily connecting channel to `addr` (`host:port` or a URL).
fn url_of(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

pub fn channel(addr: &str) -> Result<Channel, ConnError> {
    let ep = Endpoint::from_shared(url_of(addr))
        .map_err(|e| ConnError::BadEndpoint { addr: addr.to_string(), reason: e.to_string() })?;
    Ok(ep
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// How long one metadata call may take before it counts as unavailable.
/// A node that is stopped (SIGSTOP, a hung host) still accepts connections
/// in the kernel; without a deadline a caller would wait on it forever
/// instead of failing over to another member.
pub const META_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A shard-store client for one storage node with coffer's message limits.
pub fn shard_client(addr: &str) -> Result<ShardStoreClient<Channel>, ConnError> {
    Ok(ShardStoreClient::new(channel(addr)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("invalid endpoint {addr:?}: {reason}")]
    BadEndpoint { addr: String, reason: String },
    #[error("no metadata endpoint given")]
    NoEndpoints,
    #[error("{what}: metadata plane unreachable after {elapsed:?} (last error: {last})")]
    Unreachable { what: String, elapsed: Duration, last: String },
    #[error("{what}: {status}")]
    Rpc { what: String, status: Status },
}

impl ConnError {
    /// The gRPC status code behind this error, if it came from a server.
    pub fn code(&self) -> Option<Code> {
        match self {
            ConnError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
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
/// idempotent, so sending it again elsewhere doubles nothing.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // tonic reports its own client-side timeout as CANCELLED.
        Code::Cancelled => status.message().contains("Timeout expired"),
        _ => false,
    }
}

/// A catalog client over every metadata endpoint, following the leader.
pub struct MetaClient {
    endpoints: Vec<String>,
    current: Mutex<Current>,
    retry_for: Duration,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaClient").field("endpoints", &self.endpoints).finish()
    }
}

impl MetaClient {
    /// `endpoints` as given on the command line: comma-separated or a list.
    pub fn new(endpoints: &[String], retry_for: Duration) -> Result<Self, ConnError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ConnError::NoEndpoints);
        }
        for e in &endpoints {
            channel(e)?;
        }
        Ok(Self { endpoints, current: Mutex::new(Current { index: 0, channel: None, hinted: None }), retry_for })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel(&self) -> Result<Channel, ConnError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &cur.channel {
            return Ok(c.clone());
        }
        let addr = cur.hinted.clone().unwrap_or_else(|| self.endpoints[cur.index % self.endpoints.len()].clone());
        let ch = Endpoint::from_shared(url_of(&addr))
            .map_err(|e| ConnError::BadEndpoint { addr: addr.clone(), reason: e.to_string() })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(META_CALL_TIMEOUT)
            .tcp_nodelay(true)
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
    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ConnError>
    where
        F: FnMut(CatalogClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(what, |ch| {
            f(CatalogClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES))
        })
        .await
    }

    /// Like `call`, for the maintenance service (retention) of the same
    /// metadata plane.
    pub async fn call_maintenance<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ConnError>
    where
        F: FnMut(MaintenanceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_channel(what, |ch| {
            f(MaintenanceClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES))
        })
        .await
    }

    /// Runs `f` on a channel to the current endpoint with the retry and
    /// leader-following rules of `call`.
    async fn call_channel<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ConnError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let channel = self.channel()?;
            match f(channel).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) if retryable(&status) => {
                    let hint = status
                        .metadata()
                        .get(LEADER_HINT_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .filter(|h| !h.is_empty());
                    let had_hint = hint.is_some();
                    self.fail_over(hint);
                    if start.elapsed() >= self.retry_for {
                        return Err(ConnError::Unreachable {
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
                Err(status) => return Err(ConnError::Rpc { what: what.to_string(), status }),
            }
        }
    }
}
