//! Membership and introspection: joining and removing metadata nodes, each
//! node's own view of Raft, and a digest of its state machine.
//!
//! A new node is always added as a learner first and promoted to voter only
//! once it has caught up (by log or by snapshot), so a slow joiner never
//! counts towards a quorum it cannot yet serve. Every operation is
//! idempotent: joining twice, or removing a node that is gone, is a no-op.
//! The leader makes one membership change at a time, each after the last
//! one has committed, so nodes started together join one after another
//! instead of having openraft refuse all but one.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use coffer_proto::pb::admin_server::Admin;
use coffer_proto::pb::{self};
use coffer_rpc::{timeouts, MetaClient};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use crate::auth::{audit_ok, Rpc};
use crate::node::MetaNode;
use crate::types::{MetaNodeInfo, NodeId};
use crate::MetaError;

/// How long one join attempt follows leader hints and skips unreachable
/// members before the attempt counts as failed and is logged; the node goes
/// on trying until it stops.
const JOIN_ROUND: Duration = Duration::from_secs(10);

pub struct AdminService {
    node: Arc<MetaNode>,
    /// Held for each membership change this node leads, from the wait for
    /// the previous change to commit until its own has: openraft refuses a
    /// change while another is uncommitted (and logs that refusal as an
    /// error), and nodes that start together all ask to join at once.
    changing: tokio::sync::Mutex<()>,
}

impl AdminService {
    pub fn new(node: Arc<MetaNode>) -> Self {
        Self { node, changing: tokio::sync::Mutex::new(()) }
    }

    /// Takes the membership-change lock once the last membership change is
    /// applied here, so the change that follows is never refused as "in
    /// progress". A leader whose previous change cannot commit (no quorum)
    /// answers UNAVAILABLE and the joiner tries again.
    async fn begin_change(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, Status> {
        let guard = self.changing.lock().await;
        self.node
            .raft
            .wait(Some(timeouts::MEMBERSHIP_COMMIT))
            .metrics(
                |m| m.membership_config.log_id().as_ref() <= m.last_applied.as_ref(),
                "the last membership change is applied",
            )
            .await
            .map_err(|e| Status::unavailable(format!("the previous membership change has not committed: {e}")))?;
        Ok(guard)
    }

    fn members(&self) -> Vec<pb::MetaMember> {
        self.node.members()
    }

    /// Fails with a leader hint unless this node is the leader.
    fn require_leader(&self) -> Result<(), Status> {
        Ok(self.node.require_leader()?)
    }

    async fn change(&self, what: &str, changes: ChangeMembers<NodeId, MetaNodeInfo>) -> Result<(), Status> {
        match self.node.raft.change_membership(changes, false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(MetaError::not_leader(f.leader_id, f.leader_node.map(|n| n.addr)).into())
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::failed_precondition(format!("{what}: {e}")))
            }
            Err(e) => Err(Status::unavailable(format!("{what}: {e}"))),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let who = self.node.authorize(&req, Rpc::Join, None)?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("meta node id 0 is reserved"));
        }
        if r.addr.is_empty() {
            return Err(Status::invalid_argument("addr is empty"));
        }
        coffer_proto::limits::check_bytes("addr", r.addr.len(), coffer_proto::limits::MAX_ADDR_BYTES)?;
        coffer_proto::limits::check_bytes("site", r.site.len(), coffer_proto::limits::MAX_SITE_BYTES)?;
        self.require_leader()?;
        let _changing = self.begin_change().await?;
        self.require_leader()?;
        let info = MetaNodeInfo { addr: r.addr.clone(), site: r.site.clone() };
        let membership = self.node.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&r.id).is_none() {
            tracing::info!(id = r.id, addr = %r.addr, site = %r.site, "adding meta node as learner");
            // Blocking: returns once the learner has caught up with the log.
            match self.node.raft.add_learner(r.id, info, true).await {
                Ok(_) => {}
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return Err(MetaError::not_leader(f.leader_id, f.leader_node.map(|n| n.addr)).into())
                }
                Err(e) => return Err(Status::unavailable(format!("add learner {}: {e}", r.id))),
            }
        }
        let is_voter = self.node.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == r.id);
        if r.voter && !is_voter {
            tracing::info!(id = r.id, "promoting meta node to voter");
            self.change("promote to voter", ChangeMembers::AddVoterIds(BTreeSet::from([r.id]))).await?;
        }
        audit_ok(&who, Rpc::Join, None, &format!("meta node {} at {} (voter {})", r.id, r.addr, r.voter));
        Ok(Response::new(pb::JoinResponse { members: self.members() }))
    }

    async fn remove_member(&self, req: Request<pb::RemoveMemberRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let who = self.node.authorize(&req, Rpc::RemoveMember, None)?;
        let id = req.into_inner().id;
        self.require_leader()?;
        let _changing = self.begin_change().await?;
        self.require_leader()?;
        let membership = self.node.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            tracing::info!(id, "removing voter");
            self.change("remove voter", ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
        } else if membership.get_node(&id).is_some() {
            tracing::info!(id, "removing learner");
            self.change("remove learner", ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
        }
        audit_ok(&who, Rpc::RemoveMember, None, &format!("meta node {id}"));
        Ok(Response::new(pb::JoinResponse { members: self.members() }))
    }

    async fn node_metrics(
        &self,
        req: Request<pb::NodeMetricsRequest>,
    ) -> Result<Response<pb::NodeMetricsResponse>, Status> {
        self.node.authorize(&req, Rpc::NodeMetrics, None)?;
        let m = self.node.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(pb::NodeMetricsResponse {
            id: m.id,
            state: state.to_string(),
            term: m.current_term,
            leader: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            members: self.members(),
            addr: self.node.config.advertise.clone(),
            site: self.node.config.site.clone(),
        }))
    }

    async fn catalog_digest(
        &self,
        req: Request<pb::CatalogDigestRequest>,
    ) -> Result<Response<pb::CatalogDigestResponse>, Status> {
        self.node.authorize(&req, Rpc::CatalogDigest, None)?;
        let (applied, keys, digest) =
            self.node.sm.digest().await.map_err(|e| Status::internal(format!("digest the catalog: {e}")))?;
        Ok(Response::new(pb::CatalogDigestResponse { applied_index: applied, keys, digest: digest.to_vec() }))
    }
}

/// Asks the cluster, through `via` and then whoever it names as leader, to
/// add this node as a voter; retries until it succeeds or the node stops.
/// `MetaClient` follows the leader hints; a refusal that is not about
/// leadership is logged and tried again after a pause.
pub async fn join_cluster(node: Weak<MetaNode>, via: String) {
    let Some(node) = node.upgrade() else { return };
    let security = node.config.security.clone();
    // Without a certificate, a joining node shows the cluster admin token
    // it was given (every member is configured with the same one).
    let token = node.config.admin_token.as_ref().map(|t| t.token().to_string());
    let node = Arc::downgrade(&node);
    let client = MetaClient::new(std::slice::from_ref(&via), JOIN_ROUND).and_then(|c| match &token {
        Some(t) => c.with_token(t),
        None => Ok(c),
    });
    let client = match client {
        Ok(c) => c.with_call_timeout(timeouts::JOIN_CALL).with_security(security),
        Err(e) => {
            tracing::error!(via = %via, error = %e, "cannot join the metadata cluster");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(n) = node.upgrade() else { return };
        let req = pb::JoinRequest {
            id: n.config.id.0,
            addr: n.config.advertise.clone(),
            site: n.config.site.clone(),
            voter: true,
        };
        let id = n.config.id;
        drop(n);
        let result = client
            .call_admin("join", |mut c| {
                let req = req.clone();
                async move { c.join(req).await }
            })
            .await;
        match result {
            Ok(resp) => {
                tracing::info!(%id, via = %via, members = resp.members.len(), "joined the metadata cluster");
                return;
            }
            Err(e) => tracing::warn!(%id, via = %via, error = %e, "join failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
