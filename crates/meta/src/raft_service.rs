//! The server side of the Raft transport: decodes a `RaftMessage`, hands it
//! to the local openraft node, and encodes its typed result.
//!
//! Garbage from the network (an unknown codec version, undecodable bytes)
//! gets INVALID_ARGUMENT and never reaches Raft, and so does a decodable
//! request that breaks what openraft assumes of its peers (it asserts
//! rather than checks): an append or snapshot chunk without a committed
//! leader vote, entries that are not consecutive after `prev_log_id` or
//! claim a later leader than the sender's, a snapshot chunk at an offset
//! past the bytes received so far (the snapshot is written to a file at
//! that offset, so such an offset would make a sparse file of any size).

use std::sync::Mutex;

use coffer_proto::pb::raft_server::Raft as RaftRpc;
use coffer_proto::pb::RaftMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::codec::{self, RPC_CODEC_VERSION};
use crate::types::{NodeId, Raft, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{CommittedLeaderId, Vote};

pub struct RaftService {
    raft: Raft,
    /// The snapshot being received and how many of its bytes have arrived.
    receiving: Mutex<Option<(String, u64)>>,
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        Self { raft, receiving: Mutex::new(None) }
    }

    /// Admits a snapshot chunk that starts at 0 or within what has arrived
    /// of the same snapshot, and records its end.
    fn admit_chunk(&self, req: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Status> {
        check_vote("vote", &req.vote, req.meta.last_log_id.as_ref().map(|l| &l.leader_id))?;
        let id = &req.meta.snapshot_id;
        // No bound but the disk: the snapshot goes to a file, a chunk at a time.
        let Some(end) = req.offset.checked_add(req.data.len() as u64) else {
            return Err(Status::invalid_argument(format!("offset: {} overflows with the chunk's length", req.offset)));
        };
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let received = match &*receiving {
            _ if req.offset == 0 => 0,
            Some((current, received)) if current == id => *received,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "offset: {} in snapshot {id}, which has not started at offset 0",
                    req.offset
                )))
            }
        };
        if req.offset > received {
            return Err(Status::invalid_argument(format!(
                "offset: {} is past the {received} bytes received of snapshot {id}",
                req.offset
            )));
        }
        *receiving = if req.done { None } else { Some((id.clone(), end.max(received))) };
        Ok(())
    }
}

/// A leader's vote: committed, and no older than the log ids it sends.
fn check_vote(field: &str, vote: &Vote<NodeId>, newest: Option<&CommittedLeaderId<NodeId>>) -> Result<(), Status> {
    if !vote.is_committed() {
        return Err(Status::invalid_argument(format!("{field}: {vote} is not a leader's committed vote")));
    }
    if newest.is_some_and(|l| l > vote.leader_id()) {
        return Err(Status::invalid_argument(format!("{field}: {vote} is older than the log ids it sends")));
    }
    Ok(())
}

/// An append's entries follow `prev_log_id` one index at a time, with
/// leader ids that never go back and never pass the sender's vote.
fn check_append(rpc: &AppendEntriesRequest<TypeConfig>) -> Result<(), Status> {
    let newest = rpc.entries.last().map(|e| &e.log_id.leader_id);
    check_vote("vote", &rpc.vote, newest.max(rpc.prev_log_id.as_ref().map(|l| &l.leader_id)))?;
    if let Some(c) = &rpc.leader_commit {
        check_vote("leader_commit", &rpc.vote, Some(&c.leader_id))?;
    }
    let mut prev = rpc.prev_log_id;
    for (i, e) in rpc.entries.iter().enumerate() {
        let next = match prev {
            None => Some(0),
            Some(p) => p.index.checked_add(1),
        };
        if Some(e.log_id.index) != next || prev.is_some_and(|p| p.leader_id > e.log_id.leader_id) {
            return Err(Status::invalid_argument(format!(
                "entries: entry {i} ({}) does not follow {}",
                e.log_id,
                prev.map_or("the start of the log".to_string(), |p| p.to_string())
            )));
        }
        prev = Some(e.log_id);
    }
    Ok(())
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
        check_append(&rpc)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("vote", req.into_inner())?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("install snapshot", req.into_inner())?;
        self.admit_chunk(&rpc)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
