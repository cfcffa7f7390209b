//! The server side of the Raft transport: decodes a `RaftMessage`, hands it
//! to the local openraft node, and encodes its typed result.
//!
//! Garbage from the network (an unknown codec version, undecodable bytes)
//! gets INVALID_ARGUMENT and never reaches Raft.

use coffer_proto::pb::raft_server::Raft as RaftRpc;
use coffer_proto::pb::RaftMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::codec::{self, RPC_CODEC_VERSION};
use crate::types::Raft;

pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        Self { raft }
    }
}

fn decode<T: DeserializeOwned>(what: &str, msg: RaftMessage) -> Result<T, Status> {
    if msg.codec_version != RPC_CODEC_VERSION {
        return Err(Status::invalid_argument(format!(
            "raft codec version {} is not supported (this node speaks {RPC_CODEC_VERSION})",
            msg.codec_version
        )));
    }
    codec::decode(what, &msg.payload).map_err(Status::invalid_argument)
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(v).map_err(Status::internal)?;
    Ok(Response::new(RaftMessage { codec_version: RPC_CODEC_VERSION, payload, error: String::new() }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("append entries", req.into_inner())?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("vote", req.into_inner())?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("install snapshot", req.into_inner())?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
