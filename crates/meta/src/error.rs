//! The one error type of the metadata crate, and the one mapping from it to
//! gRPC statuses that every service of the node (catalog, maintenance,
//! admin) answers with.
//!
//! Variants of the leader's duties carry the pack, shard index and node
//! they concern, so that whoever handles them (the repair worker logs and
//! counts them) has the ids without parsing a message.

use coffer_proto::LEADER_HINT_KEY;
use coffer_types::{MetaId, NodeId, PackId, RepoName, ShardIndex};
use tonic::{Code, Status};

use crate::command::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A store an earlier version kept in sled could not be copied.
    #[error("migrate the metadata store at {path} from sled: {reason}")]
    Migration { path: String, reason: String },
    #[error("decode {what}: {reason}")]
    Codec { what: &'static str, reason: String },
    #[error("state machine schema version {found} is not supported (this build knows {known})")]
    UnsupportedSchema { found: u32, known: u32 },
    #[error("open metadata directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("raft: {0}")]
    Raft(String),
    #[error("node {id}: {reason}")]
    Bootstrap { id: MetaId, reason: String },
    #[error("serve: {0}")]
    Serve(#[from] coffer_rpc::RpcError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This node is not the leader; `leader` is the one it knows of.
    #[error("{}", match .leader {
        Some((id, addr)) => format!("not the leader; meta node {id} at {addr} is"),
        None => "no leader at the moment".to_string(),
    })]
    NotLeader { leader: Option<(MetaId, String)> },
    /// Every replica refused the command the same way.
    #[error(transparent)]
    Rejected(Rejection),
    /// A command could not be committed (no quorum, leadership lost).
    #[error("{command}: {reason}")]
    RaftWrite { command: &'static str, reason: String },
    /// A read could not be made linearizable.
    #[error("read barrier: {reason}")]
    ReadBarrier { reason: String },
    /// No token, or one that is unknown, revoked or expired.
    #[error("{what}: unauthenticated: {reason}")]
    Unauthenticated { what: &'static str, reason: String },
    /// A known caller whose role does not allow the call.
    #[error("{what}: permission denied: {reason}")]
    PermissionDenied { what: &'static str, reason: String },
    #[error("repository {repo} does not exist")]
    RepoNotFound { repo: RepoName },
    /// The target node of a rebuild refused it or did not answer; `code` is
    /// its answer (FAILED_PRECONDITION: too few source shards readable).
    #[error("rebuild {pack}.{index} on node {node}: {code:?}: {message}")]
    RebuildFailed { pack: PackId, index: ShardIndex, node: NodeId, code: Code, message: String },
    /// A rebuilt shard could not be placed: the record no longer has it on
    /// `from` (another rebuild or a move came first).
    #[error("move {pack}.{index} from node {from} to node {to}: {why}")]
    MoveRefused { pack: PackId, index: ShardIndex, from: NodeId, to: NodeId, why: Rejection },
    /// The collector could not read a reference list, so it collects
    /// nothing of that repository (a lost id would delete a live chunk).
    #[error("the reference list pack {pack} is unreadable ({reason}); nothing can be collected safely")]
    GcUnreadable { pack: PackId, reason: String },
    /// The collector could not store the copy of a mostly dead pack; the
    /// pack is kept whole and the copy's shards are orphans.
    #[error("rewriting pack {pack}: {reason}; it is kept whole")]
    GcRewrite { pack: PackId, reason: String },
}

impl MetaError {
    /// The refusal of a node that is not the leader, from openraft's
    /// forward-to-leader answer.
    pub(crate) fn not_leader(id: Option<u64>, addr: Option<String>) -> Self {
        MetaError::NotLeader { leader: id.zip(addr).map(|(id, addr)| (MetaId(id), addr)) }
    }

    fn code(&self) -> Code {
        match self {
            MetaError::NotLeader { .. } | MetaError::RaftWrite { .. } | MetaError::ReadBarrier { .. } => {
                Code::Unavailable
            }
            MetaError::Rejected(why) => match why {
                Rejection::RepoExists(_) => Code::AlreadyExists,
                Rejection::UnknownRepo(_)
                | Rejection::UnknownNode(_)
                | Rejection::UnknownSnapshot(_)
                | Rejection::UnknownToken(_) => Code::NotFound,
                Rejection::TokenExists(_) => Code::AlreadyExists,
                _ => Code::FailedPrecondition,
            },
            MetaError::RepoNotFound { .. } => Code::NotFound,
            MetaError::Unauthenticated { .. } => Code::Unauthenticated,
            MetaError::PermissionDenied { .. } => Code::PermissionDenied,
            MetaError::Codec { .. } => Code::DataLoss,
            MetaError::Config(_) => Code::InvalidArgument,
            MetaError::Store(_)
            | MetaError::Migration { .. }
            | MetaError::UnsupportedSchema { .. }
            | MetaError::Io { .. }
            | MetaError::Raft(_)
            | MetaError::Bootstrap { .. }
            | MetaError::Serve(_)
            | MetaError::RebuildFailed { .. }
            | MetaError::MoveRefused { .. }
            | MetaError::GcUnreadable { .. }
            | MetaError::GcRewrite { .. } => Code::Internal,
        }
    }
}

/// The one mapping from this crate's errors to what a service answers: a
/// follower names the leader in `coffer-leader`, and an undecodable record
/// is logged here, where it is handled.
impl From<MetaError> for Status {
    fn from(e: MetaError) -> Status {
        let code = e.code();
        match code {
            Code::DataLoss => tracing::error!(error = %e, "catalog holds an undecodable record"),
            Code::Internal => tracing::warn!(error = %e, "metadata request failed"),
            _ => {}
        }
        let mut status = Status::new(code, e.to_string());
        if let MetaError::NotLeader { leader: Some((_, addr)) } = &e {
            if let Ok(v) = addr.parse() {
                status.metadata_mut().insert(LEADER_HINT_KEY, v);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_names_the_leader_and_refusals_keep_their_codes() {
        let s = Status::from(MetaError::not_leader(Some(3), Some("10.0.0.3:7000".into())));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_HINT_KEY).and_then(|v| v.to_str().ok()), Some("10.0.0.3:7000"));
        assert_eq!(Status::from(MetaError::not_leader(None, None)).metadata().get(LEADER_HINT_KEY), None);

        let repo = RepoName::new("r").expect("name");
        assert_eq!(Status::from(MetaError::Rejected(Rejection::RepoExists(repo.clone()))).code(), Code::AlreadyExists);
        assert_eq!(Status::from(MetaError::Rejected(Rejection::UnknownRepo(repo.clone()))).code(), Code::NotFound);
        assert_eq!(Status::from(MetaError::RepoNotFound { repo }).code(), Code::NotFound);
        assert_eq!(Status::from(MetaError::Codec { what: "pack", reason: "short".into() }).code(), Code::DataLoss);
        assert_eq!(
            Status::from(MetaError::RaftWrite { command: "CommitPack", reason: "x".into() }).code(),
            Code::Unavailable
        );
    }
}
