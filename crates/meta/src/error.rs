//! The one error type of the metadata crate.

use coffer_types::MetaId;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store: {0}")]
    Store(#[from] sled::Error),
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
}
