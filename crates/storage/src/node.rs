//! `StorageNode`: a node's identity, its shard store, its gRPC server and its
//! heartbeat to the metadata plane.
//!
//! ```text
//!   open(config) ─► DIR/node-id (read, or drawn once and written atomically)
//!                └► ShardStore::open(DIR)
//!   serve(listener, shutdown) ─┬─► tonic server (ShardService) until shutdown
//!                              └─► workers (see `workers`): heartbeat, scrub,
//!                                  stopped and joined within SHUTDOWN_DEADLINE
//! ```
//!
//! Invariant: a node's id never changes for the life of its data directory,
//! because the catalog places shards on ids. The id file is written once,
//! atomically, and an unreadable one stops the node instead of being
//! replaced. The advertised address may change between runs; registering at
//! every start tells the catalog. A metadata plane that is down or late never
//! stops the node from serving shards.

use std::fs;
use std::future::Future;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_rpc::{ChannelConfig, MetaClient};
use coffer_types::{NodeId, SiteId};
use tokio::net::TcpListener;

use crate::orphans::{Orphans, DEFAULT_ORPHAN_AGE, DEFAULT_ORPHAN_INTERVAL};
use crate::service::{Repair, ShardService};
use crate::store::ShardStore;
use crate::workers::{Heartbeat, Scrub};
use crate::StorageError;

/// Heartbeat period when the operator does not choose one (the one place
/// this default is written; `coffer storage` takes it from here).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long `serve` waits for the workers to stop once shutdown began.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Bounds on how long one metadata call retries across endpoints.
const MIN_META_RETRY: Duration = Duration::from_millis(200);
const MAX_META_RETRY: Duration = Duration::from_secs(5);

/// How a storage node runs.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Holds the node id, the shard files and the inventory.
    pub data_dir: PathBuf,
    /// `host:port` at which other hosts reach this node's shard service.
    pub advertise: String,
    /// The failure domain this node belongs to.
    pub site: SiteId,
    /// Metadata endpoints (`host:port`), any of them; the client follows the leader.
    pub meta_endpoints: Vec<String>,
    /// Space this node offers; `None` means the total size of the filesystem
    /// that holds `data_dir`.
    pub capacity_bytes: Option<u64>,
    pub heartbeat_interval: Duration,
    /// Time between scheduled scrub passes (None: only on request).
    pub scrub_interval: Option<Duration>,
    /// Bytes per second a scrub pass may read (0: unlimited).
    pub scrub_rate: u64,
    /// Space kept free on the filesystem; `None`: `DEFAULT_RESERVE_BYTES`,
    /// or `DEFAULT_RESERVE_PERCENT` of a filesystem too small for it.
    pub reserve: Option<Reserve>,
    /// A shard of a pack the catalog does not know is collected once the
    /// catalog has not known it for this long, on the node's monotonic
    /// clock (default: the longest session lease and a day).
    pub orphan_age: Duration,
    /// Time between two orphan passes (None: no orphan collection).
    pub orphan_interval: Option<Duration>,
    /// Transport security for the shard server and every call this node
    /// makes: the process default unless set.
    pub security: coffer_rpc::Security,
}

/// Space a node keeps free: puts that would cross it are refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reserve {
    Bytes(u64),
    /// A percentage (0 to 100) of the filesystem's total size.
    Percent(f64),
}

/// The default reserve: 1 GiB, or 5% of a filesystem smaller than 20 GiB.
pub const DEFAULT_RESERVE_BYTES: u64 = 1 << 30;
pub const DEFAULT_RESERVE_PERCENT: f64 = 5.0;

impl Reserve {
    /// Parses `N` (bytes) or `N%` (of the filesystem).
    pub fn parse(s: &str) -> Result<Reserve, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|e| format!("reserve {s:?}: {e}"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("reserve {s:?}: a percentage is between 0 and 100"));
            }
            return Ok(Reserve::Percent(p));
        }
        s.parse::<u64>().map(Reserve::Bytes).map_err(|e| format!("reserve {s:?}: bytes or a percentage ({e})"))
    }

    /// The bytes it keeps free on a filesystem of `total` bytes.
    pub fn bytes(reserve: Option<Reserve>, total: u64) -> u64 {
        let percent = |p: f64| (total as f64 * p / 100.0) as u64;
        match reserve {
            Some(Reserve::Bytes(b)) => b,
            Some(Reserve::Percent(p)) => percent(p),
            None => DEFAULT_RESERVE_BYTES.min(percent(DEFAULT_RESERVE_PERCENT)),
        }
    }
}

impl std::fmt::Display for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reserve::Bytes(b) => write!(f, "{b}"),
            Reserve::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl StorageConfig {
    /// A configuration with the default capacity and heartbeat interval.
    pub fn new(data_dir: impl Into<PathBuf>, advertise: impl Into<String>, site: SiteId, meta: Vec<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            advertise: advertise.into(),
            site,
            meta_endpoints: meta,
            capacity_bytes: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            scrub_interval: Some(Duration::from_secs(24 * 3600)),
            scrub_rate: 64 << 20,
            reserve: None,
            orphan_age: DEFAULT_ORPHAN_AGE,
            orphan_interval: Some(DEFAULT_ORPHAN_INTERVAL),
            security: coffer_rpc::tls::process_default(),
        }
    }

    fn validate(&self) -> Result<(), StorageError> {
        let bad = |reason: &str| Err(StorageError::Config { reason: reason.to_string() });
        if self.advertise.trim().is_empty() {
            return bad("the advertised address is empty");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("the heartbeat interval is zero");
        }
        if self.capacity_bytes == Some(0) {
            return bad("the capacity is zero");
        }
        if self.orphan_age.is_zero() {
            return bad("the orphan age is zero");
        }
        if self.orphan_interval.is_some_and(|i| i.is_zero()) {
            return bad("the orphan interval is zero");
        }
        let endpoints: Vec<&str> =
            self.meta_endpoints.iter().flat_map(|e| e.split(',')).map(str::trim).filter(|e| !e.is_empty()).collect();
        if endpoints.is_empty() {
            return bad("no metadata endpoint given");
        }
        // The metadata client is built in `serve`, inside the runtime; its
        // endpoints are checked here so that a typo fails at start-up.
        for e in endpoints {
            if let Err(err) = ChannelConfig::new(e) {
                return Err(StorageError::Config { reason: format!("metadata endpoint {e:?}: {err}") });
            }
        }
        Ok(())
    }
}

/// A storage node, opened and ready to serve.
pub struct StorageNode {
    config: StorageConfig,
    id: NodeId,
    store: ShardStore,
    capacity_bytes: u64,
}

impl std::fmt::Debug for StorageNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageNode").field("id", &self.id).field("config", &self.config).finish()
    }
}

impl StorageNode {
    /// Creates the data directory if needed, reads or creates the node id,
    /// and opens the shard store.
    pub fn open(config: StorageConfig) -> Result<StorageNode, StorageError> {
        config.validate()?;
        let dir = &config.data_dir;
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let id = load_or_create_node_id(dir)?;
        let store = ShardStore::open(dir)?;
        let total = fs2::total_space(dir).map_err(|e| StorageError::io(dir, e))?;
        let capacity_bytes = config.capacity_bytes.unwrap_or(total);
        let reserve_bytes = Reserve::bytes(config.reserve, total);
        store.set_reserve(reserve_bytes);
        if config.orphan_interval.is_some() && config.orphan_age < coffer_types::MAX_SESSION_LEASE {
            tracing::warn!(
                orphan_age = ?config.orphan_age,
                "the orphan age is shorter than the longest session lease: a backup slower than it could lose shards"
            );
        }
        tracing::info!(node = %id, site = %config.site, advertise = %config.advertise, capacity_bytes, reserve_bytes, "storage node open");
        Ok(StorageNode { config, id, store, capacity_bytes })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node's shard store; clones share it, so tests and background
    /// workers can hold one while the node serves.
    pub fn store(&self) -> &ShardStore {
        &self.store
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Serves the shard service on `listener` and heartbeats to the metadata
    /// plane, both until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StorageError> {
        self.serve_with_admin(listener, None, shutdown).await
    }

    /// `serve`, and the admin HTTP port (`coffer_admin`: `/livez`,
    /// `/readyz`, `/metrics`) on `admin` if given, until `shutdown`.
    pub async fn serve_with_admin(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StorageError> {
        use futures::FutureExt;
        let shutdown = shutdown.boxed().shared();
        // One heartbeat interval is the natural bound for one call's retries:
        // the loop tries again on its next tick anyway. The client's lazy
        // channels need the runtime, which is why it is built here.
        let retry_for = self.config.heartbeat_interval.clamp(MIN_META_RETRY, MAX_META_RETRY);
        let meta = Arc::new(
            MetaClient::new(&self.config.meta_endpoints, retry_for)
                .map_err(|e| StorageError::Config { reason: e.to_string() })?
                .with_security(self.config.security.clone()),
        );
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let repair = Arc::new(Repair {
            scrub_rate: self.config.scrub_rate,
            peers: coffer_rpc::ShardPool::with_security(self.config.security.clone()),
            catalog: Some(meta.clone()),
            ..Repair::default()
        });
        let service = ShardService::new(self.store.clone(), self.id, self.config.site.clone(), self.capacity_bytes)
            .with_repair(repair.clone());
        let runner = coffer_worker::Runner::new();
        if let Some(interval) = self.config.scrub_interval {
            runner.spawn(Scrub::new(self.config.data_dir.clone(), self.store.clone(), repair.clone(), interval));
        }
        if let Some(interval) = self.config.orphan_interval {
            // A client of its own: a slow KnownPacks must not delay heartbeats.
            let orphan_meta = MetaClient::new(&self.config.meta_endpoints, retry_for)
                .map_err(|e| StorageError::Config { reason: e.to_string() })?
                .with_security(self.config.security.clone());
            runner.spawn(Orphans::new(
                self.store.clone(),
                orphan_meta,
                repair.clone(),
                self.config.orphan_age,
                interval,
            ));
        }
        runner.spawn(Heartbeat {
            id: self.id,
            site: self.config.site.clone(),
            advertise: self.config.advertise.clone(),
            capacity_bytes: self.capacity_bytes,
            interval: self.config.heartbeat_interval,
            store: self.store.clone(),
            meta,
            repair,
            board: runner.board(),
            registered: false,
            beats: 0,
        });

        let admin_task = admin.map(|l| {
            crate::observe::admin_server(crate::observe::Observed {
                id: self.id,
                site: self.config.site.to_string(),
                dir: self.config.data_dir.clone(),
                store: self.store.clone(),
                capacity_bytes: self.capacity_bytes,
                board: runner.board(),
            })
            .spawn(l, shutdown.clone())
        });
        tracing::info!(node = %self.id, listen = %local, "serving shards");
        let served = coffer_rpc::Server::new()
            .bulk()
            .security(self.config.security.clone())
            .service(service.into_server())
            .serve(listener, shutdown)
            .await;
        // The workers stop on the same signal; if the server failed instead,
        // the node must not keep claiming to be alive either.
        if let Err(e) = runner.shutdown(SHUTDOWN_DEADLINE).await {
            tracing::warn!(node = %self.id, error = %e, "storage workers did not all stop in time");
        }
        if let Some(t) = admin_task {
            // It stops on the same signal; a server that failed stops it too.
            t.abort();
        }
        tracing::info!(node = %self.id, "shard server stopped");
        served.map_err(|e| StorageError::Serve(e.to_string()))
    }
}

/// Reads `DIR/node-id`, or draws an id and writes it there atomically.
fn load_or_create_node_id(dir: &Path) -> Result<NodeId, StorageError> {
    let path = dir.join("node-id");
    let bad = |reason: String| StorageError::NodeIdFile { path: path.clone(), reason };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id: NodeId = text.trim().parse().map_err(|e| bad(format!("{e}")))?;
            if id.0 == 0 {
                return Err(bad("node id 0 is reserved".to_string()));
            }
            Ok(id)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let id = NodeId::random();
            let tmp = dir.join("node-id.tmp");
            let write = || -> std::io::Result<()> {
                let mut f = fs::File::create(&tmp)?;
                writeln!(f, "{id}")?;
                f.sync_all()?;
                fs::rename(&tmp, &path)?;
                fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| StorageError::io(&path, e))?;
            tracing::info!(node = %id, path = %path.display(), "drew a new node id");
            Ok(id)
        }
        Err(e) => Err(StorageError::io(&path, e)),
    }
}

#[cfg(test)]
mod reserve_tests {
    use super::*;

    #[test]
    fn reserves_parse_and_resolve() {
        assert_eq!(Reserve::parse("1048576"), Ok(Reserve::Bytes(1 << 20)));
        assert_eq!(Reserve::parse(" 5% "), Ok(Reserve::Percent(5.0)));
        for bad in ["", "-1", "5 %%", "101%", "lots", "-3%"] {
            assert!(Reserve::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Reserve::bytes(Some(Reserve::Percent(10.0)), 1000), 100);
        assert_eq!(Reserve::bytes(Some(Reserve::Bytes(7)), 1000), 7);
        // The default: 1 GiB, or 5% of a small filesystem.
        assert_eq!(Reserve::bytes(None, 1 << 40), DEFAULT_RESERVE_BYTES);
        assert_eq!(Reserve::bytes(None, 64 << 20), (64 << 20) / 20);
    }
}
