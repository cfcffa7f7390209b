//! openraft's type configuration for coffer.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::command::{Command, CommandResult};

/// What the Raft membership records of a metadata node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaNodeInfo {
    /// Where its catalog and Raft services listen.
    pub addr: String,
    /// The failure domain it runs in; voters belong in different sites.
    pub site: String,
}

impl fmt::Display for MetaNodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.addr, self.site)
    }
}

openraft::declare_raft_types!(
    /// Raft types of the coffer metadata plane.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MetaNodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MetaNodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MetaNodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
