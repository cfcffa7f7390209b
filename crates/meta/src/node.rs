//! A metadata node: opens the stores, starts openraft, bootstraps when
//! asked, serves the catalog and Raft services on one listener, and owns
//! the runner of its background workers (`workers`): `serve` stops
//! accepting, joins every worker within `SHUTDOWN_DEADLINE`, shuts Raft
//! down and flushes sled before it returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_proto::pb::admin_server::AdminServer;
use coffer_proto::pb::catalog_server::CatalogServer;
use coffer_proto::pb::raft_server::RaftServer;
use coffer_proto::MAX_MESSAGE_BYTES;
use coffer_types::MetaId;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::admin::AdminService;
use crate::catalog::CatalogService;
use crate::liveness::Liveness;
use crate::network::Network;
use crate::raft_service::RaftService;
use crate::types::Raft;
use crate::{LogStore, MetaConfig, MetaError, StateMachineStore};

/// Opens (or creates) the sled database of a metadata node and its stores.
pub fn open_stores(dir: &Path) -> Result<(LogStore, StateMachineStore), MetaError> {
    std::fs::create_dir_all(dir).map_err(|source| MetaError::Io { path: dir.display().to_string(), source })?;
    let db = sled::Config::new().path(dir.join("raft.sled")).open()?;
    Ok((LogStore::open(&db)?, StateMachineStore::open(&db)?))
}

/// How long `serve` waits for the workers to stop once shutdown began.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

pub struct MetaNode {
    pub(crate) config: MetaConfig,
    pub(crate) runner: coffer_worker::Runner,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachineStore,
    pub(crate) liveness: Liveness,
    pub(crate) repair: crate::repair::RepairState,
}

impl std::fmt::Debug for MetaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaNode").field("id", &self.config.id).finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl MetaNode {
    pub async fn start(config: MetaConfig) -> Result<Arc<Self>, MetaError> {
        config.validate()?;
        let (log, sm) = open_stores(&config.data_dir)?;
        let raft = Raft::new(config.id.0, Arc::new(config.raft_config()?), Network, log, sm.clone())
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        if config.init {
            let initialized = raft.is_initialized().await.map_err(|e| MetaError::Raft(e.to_string()))?;
            if initialized {
                tracing::info!(id = %config.id, "already a member of a cluster; --init ignored");
            } else {
                let members = BTreeMap::from([(config.id.0, config.info())]);
                raft.initialize(members)
                    .await
                    .map_err(|e| MetaError::Bootstrap { id: config.id, reason: e.to_string() })?;
                tracing::info!(id = %config.id, "initialised a new cluster");
            }
        }
        let node = Arc::new(Self {
            liveness: Liveness::new(config.suspect_after, config.down_after),
            config,
            raft,
            sm,
            repair: crate::repair::RepairState::default(),
            runner: coffer_worker::Runner::new(),
        });
        let mut join = None;
        if let Some(via) = node.config.join.clone() {
            let initialized = node.raft.is_initialized().await.map_err(|e| MetaError::Raft(e.to_string()))?;
            if initialized {
                tracing::info!(id = %node.config.id, "already a member of a cluster; --join ignored");
            } else {
                // Joining needs this node to serve Raft (the leader replicates
                // to it as a learner), so it runs beside `serve`, as a worker.
                join = Some(via);
            }
        }
        crate::workers::spawn_all(&node, join);
        Ok(node)
    }

    pub fn id(&self) -> MetaId {
        self.config.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This node's workers, as `coffer status` shows them.
    pub fn workers(&self) -> Vec<coffer_worker::WorkerStatus> {
        self.runner.statuses()
    }

    /// The name under which this node's workers are reported.
    pub(crate) fn worker_node_name(&self) -> String {
        format!("meta-{}", self.config.id)
    }

    /// Waits until some node is leader, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<MetaId, MetaError> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow().current_leader {
                    return Ok(MetaId(l));
                }
                if rx.changed().await.is_err() {
                    return Err(MetaError::Raft("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| MetaError::Raft("no leader elected in time".into()))?
    }

    /// Serves the catalog and Raft services until `shutdown` resolves, then
    /// stops Raft.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetaError> {
        let catalog = CatalogServer::new(CatalogService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = AdminServer::new(AdminService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let raft = RaftServer::new(RaftService::new(self.raft.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Catalog and Raft traffic is small request/response messages: with
        // Nagle's algorithm on, each small reply waits for the peer's delayed
        // ACK (~40 ms), which dominated incremental backups and restores.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(stream) = &conn {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            }
            conn
        });
        let served = tonic::transport::Server::builder()
            .add_service(catalog)
            .add_service(admin)
            .add_service(raft)
            .add_service(
                coffer_proto::pb::maintenance_server::MaintenanceServer::new(
                    crate::maint_service::MaintenanceService::new(self.clone()),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        // Workers first (they write through Raft), then Raft, then the store.
        if let Err(e) = self.runner.shutdown(SHUTDOWN_DEADLINE).await {
            tracing::warn!(error = %e, "metadata workers did not all stop in time");
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        if let Err(e) = self.sm.tree().flush_async().await {
            tracing::warn!(error = %e, "could not flush the metadata store");
        }
        tracing::info!(id = %self.config.id, "metadata node stopped");
        served.map_err(MetaError::from)
    }
}
