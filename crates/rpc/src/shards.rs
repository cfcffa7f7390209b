//! Shard I/O against storage nodes: one cached gRPC channel per node address,
//! streamed puts in frames of at most `MAX_FRAME_BYTES`, ranged gets, and the
//! calls the metadata leader makes (list, delete, rebuild).
//!
//! Every call is bounded in time, so a node that hangs becomes a failure the
//! caller can route around (re-placement on write, reconstruction on read)
//! instead of a stuck backup or restore. Failures are values with a reason
//! string, because callers record them per shard rather than abort on them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use coffer_proto::pb::shard_store_client::ShardStoreClient;
use coffer_proto::pb::{self, put_shard_request::Msg};
use coffer_types::{Hash32, PackId, ShardIndex, MAX_FRAME_BYTES};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::channel::shard_client_with;
use crate::timeouts::{REBUILD, SHARD_ADMIN, SHARD_GET as GET_TIMEOUT, SHARD_PUT as PUT_TIMEOUT};
use crate::tls::{self, Security};

/// The shard format version this agent writes.
pub const SHARD_FORMAT_VERSION: u32 = 1;

/// Why one shard could not be written or read. Callers record these per
/// shard (and route around them) rather than abort on them, and an
/// application that embeds the client can tell damage from absence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShardFailure {
    /// The node found the shard corrupt (a block fails its checksum).
    Corrupt { detail: String },
    /// The node does not hold the shard.
    Absent,
    /// The node could not be reached.
    Unreachable { detail: String },
    /// The node did not answer within the call's deadline.
    Timeout { after: Duration },
    /// The node refused the call for another reason.
    Refused { code: Code, detail: String },
    /// The node's answer broke the protocol (more or fewer bytes than asked).
    BadAnswer { detail: String },
    /// The bytes that came back are not the shard the pack record describes.
    Mismatch { detail: String },
    /// The pack record places no node for the shard.
    NotPlaced,
    /// The node holding the shard is down.
    NodeDown,
    /// The cluster map has no usable address for the node.
    NoAddress { detail: String },
}

impl ShardFailure {
    pub fn status(s: tonic::Status) -> Self {
        let detail = s.message().to_string();
        match s.code() {
            Code::DataLoss => ShardFailure::Corrupt { detail },
            Code::NotFound => ShardFailure::Absent,
            Code::Unavailable => ShardFailure::Unreachable { detail },
            code => ShardFailure::Refused { code, detail },
        }
    }

    /// Damage to report for repair: the shard is corrupt, absent, or not
    /// what its record says, unlike a node that did not answer.
    pub fn is_damage(&self) -> bool {
        matches!(self, ShardFailure::Corrupt { .. } | ShardFailure::Absent | ShardFailure::Mismatch { .. })
    }
}

impl std::fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardFailure::Corrupt { detail } => write!(f, "corrupt on the node ({detail})"),
            ShardFailure::Absent => f.write_str("absent from the node"),
            ShardFailure::Unreachable { detail } => write!(f, "unreachable ({detail})"),
            ShardFailure::Timeout { after } => write!(f, "no answer within {after:?}"),
            ShardFailure::Refused { code, detail } => write!(f, "{code:?}: {detail}"),
            ShardFailure::BadAnswer { detail } => write!(f, "bad answer: {detail}"),
            ShardFailure::Mismatch { detail } => write!(f, "does not match its record: {detail}"),
            ShardFailure::NotPlaced => f.write_str("no placement"),
            ShardFailure::NodeDown => f.write_str("node is down"),
            ShardFailure::NoAddress { detail } => write!(f, "node address unknown{detail}"),
        }
    }
}

/// What a shard put carries besides the body.
#[derive(Debug, Clone, Copy)]
pub struct ShardPut {
    pub pack: PackId,
    pub index: ShardIndex,
    pub k: u32,
    pub m: u32,
    pub checksum: Hash32,
}

/// Clients to storage nodes, one channel per address, shared by every task
/// of a backup or restore so that connections are reused.
pub struct ShardPool {
    clients: Mutex<HashMap<String, ShardStoreClient<Channel>>>,
    security: Security,
}

impl Default for ShardPool {
    /// A pool talking with the process default security.
    fn default() -> Self {
        ShardPool::with_security(tls::process_default())
    }
}

impl std::fmt::Debug for ShardPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPool").finish_non_exhaustive()
    }
}

impl ShardPool {
    /// A pool talking with `security`.
    pub fn with_security(security: Security) -> Self {
        ShardPool { clients: Mutex::new(HashMap::new()), security }
    }

    /// The cached client for `addr`, for calls this pool has no method for.
    pub fn client(&self, addr: &str) -> Result<ShardStoreClient<Channel>, ShardFailure> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = shard_client_with(addr, &self.security)
            .map_err(|e| ShardFailure::NoAddress { detail: format!(" ({e})") })?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Streams `body` to the node at `addr` as shard `put.index` of `put.pack`.
    /// Returns once the node has verified and durably stored it.
    pub async fn put(&self, addr: &str, put: ShardPut, body: Bytes) -> Result<(), ShardFailure> {
        let mut client = self.client(addr)?;
        let header = pb::ShardHeader {
            format_version: SHARD_FORMAT_VERSION,
            pack_id: put.pack.0.to_vec(),
            index: put.index.0 as u32,
            k: put.k,
            m: put.m,
            length: body.len() as u64,
            checksum: put.checksum.0.to_vec(),
        };
        let frames = body.len().div_ceil(MAX_FRAME_BYTES);
        // Each frame is a slice of the shared body, not a copy: the only
        // copy a frame's bytes see on their way out is into tonic's encode
        // buffer.
        let data = futures::stream::iter(0..frames).map(move |i| {
            let start = i * MAX_FRAME_BYTES;
            let end = (start + MAX_FRAME_BYTES).min(body.len());
            pb::PutShardRequest { msg: Some(Msg::Data(body.slice(start..end))) }
        });
        let stream =
            futures::stream::once(async move { pb::PutShardRequest { msg: Some(Msg::Header(header)) } }).chain(data);
        match tokio::time::timeout(PUT_TIMEOUT, client.put_shard(stream)).await {
            Err(_) => Err(ShardFailure::Timeout { after: PUT_TIMEOUT }),
            Ok(Err(status)) => Err(ShardFailure::status(status)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Reads `len` bytes at `offset` of a shard body, or the whole body when
    /// `len` is `None`. The node verifies its block checksums before sending;
    /// the length is checked here.
    pub async fn get(
        &self,
        addr: &str,
        pack: PackId,
        index: ShardIndex,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Vec<u8>, ShardFailure> {
        let mut client = self.client(addr)?;
        let req = pb::GetShardRequest {
            shard: Some(pb::ShardRef { pack_id: pack.0.to_vec(), index: index.0 as u32 }),
            offset,
            length: len.unwrap_or(0),
        };
        let read = async move {
            let mut stream = client.get_shard(req).await.map_err(ShardFailure::status)?.into_inner();
            let mut out = Vec::with_capacity(len.unwrap_or(0).min(64 << 20) as usize);
            while let Some(frame) = stream.next().await {
                let frame = frame.map_err(ShardFailure::status)?;
                out.extend_from_slice(&frame.data);
                if let Some(want) = len {
                    if out.len() as u64 > want {
                        return Err(ShardFailure::BadAnswer {
                            detail: format!("node sent more than the {want} bytes asked"),
                        });
                    }
                }
            }
            Ok(out)
        };
        let out = match tokio::time::timeout(GET_TIMEOUT, read).await {
            Err(_) => return Err(ShardFailure::Timeout { after: GET_TIMEOUT }),
            Ok(r) => r?,
        };
        if let Some(want) = len {
            if out.len() as u64 != want {
                return Err(ShardFailure::BadAnswer { detail: format!("short read: {} of {want} bytes", out.len()) });
            }
        }
        Ok(out)
    }

    /// Every shard the node at `addr` holds, in (pack, index) order, read a
    /// page at a time (the node's default page size).
    pub async fn list(&self, addr: &str) -> Result<Vec<pb::ShardRef>, ShardFailure> {
        self.list_paged(addr, 0).await
    }

    /// `list` with pages of at most `page_size` shards (0: the node's
    /// default). Each page has its own deadline. A node whose cursor does not
    /// advance, or that sends an empty page with a cursor, gets `BadAnswer`
    /// instead of a loop that never ends.
    pub async fn list_paged(&self, addr: &str, page_size: u32) -> Result<Vec<pb::ShardRef>, ShardFailure> {
        let mut client = self.client(addr)?;
        let mut out = Vec::new();
        let mut token = Vec::new();
        loop {
            let mut req = tonic::Request::new(pb::ListShardsRequest { page_size, page_token: token.clone() });
            req.set_timeout(SHARD_ADMIN);
            let page = client.list_shards(req).await.map_err(ShardFailure::status)?.into_inner();
            let last = page.shards.len();
            out.extend(page.shards);
            if page.next.is_empty() {
                return Ok(out);
            }
            if last == 0 || page.next <= token {
                return Err(ShardFailure::BadAnswer { detail: "the shard listing's cursor does not advance".into() });
            }
            token = page.next;
        }
    }

    /// Deletes one shard from the node at `addr`.
    pub async fn delete(&self, addr: &str, pack: PackId, index: ShardIndex) -> Result<(), ShardFailure> {
        let mut client = self.client(addr)?;
        let mut req = tonic::Request::new(pb::ShardRef { pack_id: pack.0.to_vec(), index: index.0 as u32 });
        req.set_timeout(SHARD_ADMIN);
        client.delete_shard(req).await.map_err(ShardFailure::status)?;
        Ok(())
    }

    /// Asks the node at `addr` to rebuild a shard from the sources `req`
    /// names and store it.
    pub async fn rebuild(
        &self,
        addr: &str,
        req: pb::RebuildShardRequest,
    ) -> Result<pb::RebuildShardResponse, tonic::Status> {
        let mut client = self.client(addr).map_err(|f| tonic::Status::unavailable(f.to_string()))?;
        let mut req = tonic::Request::new(req);
        req.set_timeout(REBUILD);
        Ok(client.rebuild_shard(req).await?.into_inner())
    }
}
