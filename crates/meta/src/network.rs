//! The client side of the Raft transport: openraft's `RaftNetwork` over
//! the `coffer.v1.Raft` gRPC service.
//!
//! openraft's request and response types are serialised with `codec` into
//! an opaque payload. A transport failure becomes `Unreachable` (openraft
//! backs off and retries); an error raised by the remote Raft comes back
//! typed, as `RemoteError`.

use coffer_proto::pb::raft_client::RaftClient;
use coffer_proto::pb::RaftMessage;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::codec::{self, RPC_CODEC_VERSION};
use crate::types::{MetaNodeInfo, NodeId, TypeConfig};

/// Opens Raft connections with the node's transport security.
#[derive(Clone)]
pub struct Network {
    security: coffer_rpc::Security,
}

impl Network {
    pub fn new(security: coffer_rpc::Security) -> Self {
        Network { security }
    }
}

pub struct Connection {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &MetaNodeInfo) -> Connection {
        let client = coffer_rpc::raft_client(&node.addr, &self.security).ok();
        Connection { target, client, addr: node.addr.clone() }
    }
}

type RpcErr<E> = RPCError<NodeId, MetaNodeInfo, RaftError<NodeId, E>>;

impl Connection {
    async fn call<Req, Resp, E>(&mut self, kind: Kind, req: &Req, option: &RPCOption) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(format!(
                "bad address {:?} for meta node {}",
                self.addr, self.target
            )))));
        };
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))?;
        let mut request =
            tonic::Request::new(RaftMessage { codec_version: RPC_CODEC_VERSION, payload, error: String::new() });
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            Kind::Append => client.append_entries(request).await,
            Kind::Vote => client.vote(request).await,
            Kind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| RPCError::Unreachable(Unreachable::new(&AnyError::error(s.to_string()))))?;
        let reply = reply.into_inner();
        if !reply.error.is_empty() {
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(reply.error))));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = codec::decode("raft reply", &reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Kind::Vote, &rpc, &option).await
    }
}
