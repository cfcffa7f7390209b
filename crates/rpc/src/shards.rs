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

use bytes::Bytes;
use coffer_proto::pb::shard_store_client::ShardStoreClient;
use coffer_proto::pb::{self, put_shard_request::Msg};
use coffer_types::{Hash32, PackId, ShardIndex, MAX_FRAME_BYTES};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::channel::shard_client;
use crate::timeouts::{REBUILD, SHARD_ADMIN, SHARD_GET as GET_TIMEOUT, SHARD_PUT as PUT_TIMEOUT};

/// The shard format version this agent writes.
pub const SHARD_FORMAT_VERSION: u32 = 1;

/// Why one shard could not be written or read.
#[derive(Debug, Clone)]
pub struct ShardFailure {
    pub reason: String,
    /// The node itself found the shard corrupt or absent: damage to report
    /// for repair, unlike a node that did not answer.
    pub damaged: bool,
}

impl ShardFailure {
    pub fn status(s: tonic::Status) -> Self {
        let damaged = matches!(s.code(), Code::DataLoss | Code::NotFound);
        let reason = match s.code() {
            Code::DataLoss => format!("corrupt on the node ({})", s.message()),
            Code::NotFound => "absent from the node".to_string(),
            Code::Unavailable => format!("unreachable ({})", s.message()),
            code => format!("{code:?}: {}", s.message()),
        };
        ShardFailure { reason, damaged }
    }

    /// A shard that could not be used, which says nothing of its state.
    pub fn other(reason: impl Into<String>) -> Self {
        ShardFailure { reason: reason.into(), damaged: false }
    }

    /// Damage found by the reader: a shard whose bytes do not match its
    /// record.
    pub fn damaged(reason: impl Into<String>) -> Self {
        ShardFailure { reason: reason.into(), damaged: true }
    }
}

impl std::fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
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
#[derive(Default)]
pub struct ShardPool {
    clients: Mutex<HashMap<String, ShardStoreClient<Channel>>>,
}

impl std::fmt::Debug for ShardPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPool").finish_non_exhaustive()
    }
}

impl ShardPool {
    /// The cached client for `addr`, for calls this pool has no method for.
    pub fn client(&self, addr: &str) -> Result<ShardStoreClient<Channel>, ShardFailure> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = shard_client(addr).map_err(|e| ShardFailure::other(e.to_string()))?;
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
        // Frames are copied out of the shared body one at a time as the
        // stream is polled, so a put never holds a second copy of its shard.
        let data = futures::stream::iter(0..frames).map(move |i| {
            let start = i * MAX_FRAME_BYTES;
            let end = (start + MAX_FRAME_BYTES).min(body.len());
            pb::PutShardRequest { msg: Some(Msg::Data(body.slice(start..end).to_vec())) }
        });
        let stream =
            futures::stream::once(async move { pb::PutShardRequest { msg: Some(Msg::Header(header)) } }).chain(data);
        match tokio::time::timeout(PUT_TIMEOUT, client.put_shard(stream)).await {
            Err(_) => Err(ShardFailure::other(format!("no acknowledgement within {PUT_TIMEOUT:?}"))),
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
                        return Err(ShardFailure::other(format!("node sent more than the {want} bytes asked")));
                    }
                }
            }
            Ok(out)
        };
        let out = match tokio::time::timeout(GET_TIMEOUT, read).await {
            Err(_) => return Err(ShardFailure::other(format!("no answer within {GET_TIMEOUT:?}"))),
            Ok(r) => r?,
        };
        if let Some(want) = len {
            if out.len() as u64 != want {
                return Err(ShardFailure::other(format!("short read: {} of {want} bytes", out.len())));
            }
        }
        Ok(out)
    }

    /// Every shard the node at `addr` holds.
    pub async fn list(&self, addr: &str) -> Result<Vec<pb::ShardRef>, ShardFailure> {
        let mut client = self.client(addr)?;
        let mut req = tonic::Request::new(pb::ListShardsRequest {});
        req.set_timeout(SHARD_ADMIN);
        Ok(client.list_shards(req).await.map_err(ShardFailure::status)?.into_inner().shards)
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
        let mut client = self.client(addr).map_err(|f| tonic::Status::unavailable(f.reason))?;
        let mut req = tonic::Request::new(req);
        req.set_timeout(REBUILD);
        Ok(client.rebuild_shard(req).await?.into_inner())
    }
}
