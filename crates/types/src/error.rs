//! The one error type of this crate: values that fail validation.

/// A value from the network, disk or command line that is not well formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TypesError {
    #[error("{what}: expected {expected} bytes, got {got}")]
    BadLength { what: &'static str, expected: usize, got: usize },
    #[error("{what}: not valid hex: {input:?}")]
    BadHex { what: &'static str, input: String },
    #[error("invalid erasure parameters k={k} m={m}: {reason}")]
    BadErasure { k: u32, m: u32, reason: &'static str },
    #[error("min_shards {min_shards}: must be between k={k} and k+m={total}")]
    BadMinShards { min_shards: usize, k: usize, total: usize },
    #[error("invalid repository name {name:?}: {reason}")]
    BadRepoName { name: String, reason: &'static str },
    #[error("invalid site name {name:?}: {reason}")]
    BadSiteName { name: String, reason: &'static str },
    #[error("unknown {what} {value:?}")]
    UnknownEnum { what: &'static str, value: String },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
}
