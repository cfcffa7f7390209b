//! A metadata node: opens the stores, starts openraft, bootstraps when
//! asked, serves the catalog and Raft services on one listener, and owns
//! the runner of its background workers (`workers`): `serve` stops
//! accepting, joins every worker within `SHUTDOWN_DEADLINE`, shuts Raft
//! down and flushes the store before it returns.
//!
//! What every service needs of Raft lives here, so that the services depend
//! on the node and not on each other: `raft_write` (propose and wait for
//! apply), `read_barrier` (linearizable reads), `require_leader` (the
//! leader hint) and `members`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_proto::pb::access_server::AccessServer;
use coffer_proto::pb::admin_server::AdminServer;
use coffer_proto::pb::catalog_server::CatalogServer;
use coffer_proto::pb::maintenance_server::MaintenanceServer;
use coffer_proto::pb::raft_server::RaftServer;
use coffer_proto::pb::{self};
use coffer_types::MetaId;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::admin::AdminService;
use crate::catalog::CatalogService;
use crate::command::{Command, CommandResult};
use crate::liveness::Liveness;
use crate::maint_service::MaintenanceService;
use crate::network::Network;
use crate::raft_service::RaftService;
use crate::types::Raft;
use crate::{LogStore, MetaConfig, MetaError, StateMachineStore};

/// Opens (or creates) the database of a metadata node and its stores,
/// with the default block cache (`open_stores_with_cache`).
pub fn open_stores(dir: &Path) -> Result<(LogStore, StateMachineStore), MetaError> {
    open_stores_with_cache(dir, crate::config::DEFAULT_STORE_CACHE_BYTES)
}

/// Opens (or creates) the database of a metadata node and its stores,
/// with `cache_bytes` of block cache; a store an earlier version kept in
/// sled is migrated first (`store::Db::open`).
pub fn open_stores_with_cache(dir: &Path, cache_bytes: u64) -> Result<(LogStore, StateMachineStore), MetaError> {
    std::fs::create_dir_all(dir).map_err(|source| MetaError::Io { path: dir.display().to_string(), source })?;
    let db = crate::store::Db::open(dir, cache_bytes)?;
    Ok((LogStore::open(&db)?, StateMachineStore::open(&db, &dir.join("snapshots"))?))
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
    pub(crate) gc: crate::collector::GcShared,
    pub(crate) failpoints: crate::failpoint::Failpoints,
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
    /// `r` as placement sees it: the bytes it can still take are its last
    /// heartbeat's free space above its reserve, or, before any heartbeat
    /// since this node took office, its recorded capacity less its use.
    pub(crate) fn placement_candidate(&self, r: &coffer_types::NodeRecord) -> coffer_placement::Candidate {
        let free_bytes = self
            .liveness
            .get(r.id)
            .map(|s| s.placeable_bytes())
            .unwrap_or_else(|| r.capacity_bytes.saturating_sub(r.used_bytes));
        coffer_placement::Candidate { node: r.id, site: r.site.clone(), free_bytes }
    }

    pub async fn start(config: MetaConfig) -> Result<Arc<Self>, MetaError> {
        config.validate()?;
        if config.admin_token.is_none() {
            tracing::warn!(
                "no cluster admin token (--admin-token-file): only an admin certificate can administer this cluster"
            );
        }
        let (log, sm) = open_stores_with_cache(&config.data_dir, config.store_cache_bytes)?;
        let raft = Raft::new(
            config.id.0,
            Arc::new(config.raft_config()?),
            Network::new(config.security.clone()),
            log,
            sm.clone(),
        )
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
        let repair = crate::repair::RepairState::with_security(config.security.clone());
        let failpoints = crate::failpoint::Failpoints::new(config.failpoints.then_some(config.data_dir.as_path()));
        let node = Arc::new(Self {
            liveness: Liveness::new(config.suspect_after, config.down_after),
            failpoints,
            config,
            raft,
            sm,
            repair,
            runner: coffer_worker::Runner::new(),
            gc: crate::collector::GcShared::default(),
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

    /// Fails with a leader hint unless this node is the leader.
    pub(crate) fn require_leader(&self) -> Result<(), MetaError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.config.id.0) {
            return Ok(());
        }
        let addr = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        Err(MetaError::not_leader(m.current_leader, addr))
    }

    /// The members as the node's latest membership config has them.
    pub(crate) fn members(&self) -> Vec<pb::MetaMember> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| pb::MetaMember {
                id: *id,
                addr: n.addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.to_string(),
                site: n.site.clone(),
            })
            .collect()
    }

    /// Proposes a command and waits until it is applied; a refusal becomes
    /// `Rejected`, a follower answers `NotLeader` (which becomes a leader hint).
    pub(crate) async fn raft_write(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        let command = cmd.name();
        let wait = coffer_rpc::timeouts::SERVER_RAFT_WAIT;
        let Ok(written) = tokio::time::timeout(wait, self.raft.client_write(cmd)).await else {
            tracing::warn!(command, "raft write not applied in time");
            return Err(MetaError::RaftWrite {
                command,
                reason: format!("not applied within {wait:?} (it may still be; retrying is safe)"),
            });
        };
        match written {
            Ok(resp) => match resp.data {
                CommandResult::Rejected(why) => Err(MetaError::Rejected(why)),
                other => Ok(other),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(MetaError::not_leader(f.leader_id, f.leader_node.map(|n| n.addr)))
            }
            Err(e) => {
                tracing::warn!(command, error = %e, "raft write failed");
                Err(MetaError::RaftWrite { command, reason: e.to_string() })
            }
        }
    }

    /// Runs the leader-change hook if this node leads its current term;
    /// returns that term. Idempotent per term (`Liveness::took_office`).
    pub(crate) fn took_office_if_leading(&self) -> Option<u64> {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.config.id.0) {
            return None;
        }
        if self.liveness.took_office(term) {
            tracing::info!(id = %self.config.id, term, "became leader; every storage node counts as seen now");
        }
        Some(term)
    }

    /// Makes the next reads linearizable, or sends the caller to the leader.
    pub(crate) async fn read_barrier(&self) -> Result<(), MetaError> {
        let wait = coffer_rpc::timeouts::SERVER_RAFT_WAIT;
        let Ok(checked) = tokio::time::timeout(wait, self.raft.ensure_linearizable()).await else {
            return Err(MetaError::ReadBarrier { reason: format!("no quorum confirmed leadership within {wait:?}") });
        };
        match checked {
            Ok(_) => {
                // Everything behind a read barrier may judge storage
                // liveness (placement, status, heartbeats), so a node that
                // has just taken office resets liveness here, not only when
                // its workers get round to it: until then its table is that
                // of its last term (or of its start), and a pack allocated
                // in between saw most nodes down ("4 needed, 3 available"
                // right after leader changes, found by the chaos suite).
                self.took_office_if_leading();
                Ok(())
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(MetaError::not_leader(f.leader_id, f.leader_node.map(|n| n.addr)))
            }
            Err(e) => Err(MetaError::ReadBarrier { reason: e.to_string() }),
        }
    }

    /// Serves the catalog and Raft services until `shutdown` resolves, then
    /// stops Raft.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetaError> {
        let served = coffer_rpc::Server::new()
            .security(self.config.security.clone())
            .service(CatalogServer::new(CatalogService::new(self.clone())))
            .service(AdminServer::new(AdminService::new(self.clone())))
            .service(RaftServer::new(RaftService::new(self.raft.clone())))
            .service(MaintenanceServer::new(MaintenanceService::new(self.clone())))
            .service(AccessServer::new(crate::tokens::AccessService::new(self.clone())))
            .serve(listener, shutdown)
            .await;
        // Workers first (they write through Raft), then Raft, then the store.
        if let Err(e) = self.runner.shutdown(SHUTDOWN_DEADLINE).await {
            tracing::warn!(error = %e, "metadata workers did not all stop in time");
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        if let Err(e) = self.sm.tree().flush() {
            tracing::warn!(error = %e, "could not flush the metadata store");
        }
        tracing::info!(id = %self.config.id, "metadata node stopped");
        served.map_err(MetaError::from)
    }
}
