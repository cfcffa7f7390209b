//! The one error type of the rpc layer: a bad address, no endpoint, a
//! metadata plane that stayed unreachable, a call the server refused, or a
//! server that could not serve.

use std::time::Duration;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("invalid endpoint {addr:?}: {reason}")]
    BadEndpoint { addr: String, reason: String },
    #[error("no metadata endpoint given")]
    NoEndpoints,
    #[error("{what}: metadata plane unreachable after {elapsed:?} (last error: {last})")]
    Unreachable { what: String, elapsed: Duration, last: String },
    #[error("{what}: {status}")]
    Rpc { what: String, status: Status },
    #[error("unusable token: {reason}")]
    BadToken { reason: String },
    #[error("serve gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl RpcError {
    /// The gRPC status code behind this error, if it came from a server.
    pub fn code(&self) -> Option<Code> {
        match self {
            RpcError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
