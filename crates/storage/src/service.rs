//! The `ShardStore` gRPC service over a [`ShardStore`].
//!
//! ```text
//!   PutShard: header ─► begin_put ─► data frames ─► PutWriter::write ─► finish ─► ack
//!   GetShard: open_reader + range check ─► frames of ≤ 1 MiB, each verified ─► client
//! ```
//!
//! Invariants: nothing is acknowledged before it is verified and durable
//! (the store's `finish`), nothing is sent before it is verified (the
//! store's block checks), and a malformed request gets a status and leaves
//! no trace on disk: an unfinished `PutWriter` removes its temporary file
//! when dropped. Store calls block on the filesystem, so they run on
//! tokio's blocking pool. `status` is the one place where a `StorageError`
//! becomes a gRPC code, and where a handled error is logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use coffer_proto::pb;
use coffer_proto::pb::put_shard_request::Msg;
use coffer_proto::pb::shard_store_server::{ShardStore as ShardStoreRpc, ShardStoreServer};
use coffer_proto::pb::{
    DeleteShardResponse, GetShardRequest, NodeInfoRequest, NodeInfoResponse, PutShardRequest, PutShardResponse,
    ShardFrame, ShardRef,
};
use coffer_types::{Hash32, NodeId, PackId, ShardIndex, SiteId, MAX_FRAME_BYTES};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::repair::{rebuild_shard, scrub_pass, Counters, RateLimiter};
use crate::shard_file::{ShardHeader, FORMAT_VERSION};
use crate::store::ShardStore;
use crate::StorageError;

/// Tolerance above `MAX_FRAME_BYTES` for a data frame, for clients that
/// count a frame's limit slightly differently; anything larger is refused.
pub const FRAME_SLACK: usize = 4096;

/// Frames of a GetShard answer in flight per request; bounds the memory a
/// slow reader can pin.
const GET_FRAMES_IN_FLIGHT: usize = 4;

/// The shard service of one storage node.
#[derive(Clone, Debug)]
pub struct ShardService {
    store: ShardStore,
    node: NodeId,
    site: SiteId,
    capacity_bytes: u64,
    repair: Arc<Repair>,
}

/// What the repair RPCs share with the node's background scrub.
#[derive(Debug, Default)]
pub struct Repair {
    pub counters: Counters,
    /// Rebuild reads, bounded by the bandwidth each task carries.
    pub rebuild_limit: RateLimiter,
    /// Scrub reads, bounded by the node's scrub rate.
    pub scrub_limit: RateLimiter,
    pub scrub_rate: u64,
    /// Reported by `scrub` passes; the node's loop forwards them to the metadata plane.
    pub reports: tokio::sync::Mutex<Vec<pb::BadShard>>,
    /// Bytes of orphan shards the last orphan pass found and has not
    /// collected yet (`orphans`), reported with every heartbeat.
    pub orphan_bytes: std::sync::atomic::AtomicU64,
    /// Clients to the other storage nodes, for rebuild reads, with the
    /// node's transport security.
    pub peers: coffer_rpc::ShardPool,
    /// The catalog the node reports to (the heartbeat's client), so that a
    /// `Scrub` call reports what it found before it answers.
    pub catalog: Option<Arc<coffer_rpc::MetaClient>>,
}

impl ShardService {
    pub fn new(store: ShardStore, node: NodeId, site: SiteId, capacity_bytes: u64) -> Self {
        Self { store, node, site, capacity_bytes, repair: Arc::new(Repair::default()) }
    }

    /// With repair state shared with the node's scrub loop.
    pub fn with_repair(mut self, repair: Arc<Repair>) -> Self {
        self.repair = repair;
        self
    }

    /// The tonic service, for `coffer_rpc::Server::service` (which applies
    /// coffer's message limits).
    pub fn into_server(self) -> ShardStoreServer<ShardService> {
        ShardStoreServer::new(self)
    }

    async fn put(&self, stream: &mut Streaming<PutShardRequest>) -> Result<u64, StorageError> {
        let header = match next_message(stream).await? {
            None => return Err(bad_request("the stream ended before the header")),
            Some(Msg::Data(_)) => return Err(bad_request("data frame before the header")),
            Some(Msg::Header(h)) => header_from_pb(&h)?,
        };
        let store = self.store.clone();
        let mut writer = blocking(move || store.begin_put(header)).await?;
        loop {
            match next_message(stream).await? {
                None => break,
                Some(Msg::Header(_)) => return Err(bad_request("a second header in one stream")),
                Some(Msg::Data(data)) => {
                    if data.len() > MAX_FRAME_BYTES + FRAME_SLACK {
                        return Err(bad_request(format!(
                            "data frame of {} bytes exceeds the {MAX_FRAME_BYTES} byte frame limit",
                            data.len()
                        )));
                    }
                    // On error the writer is dropped inside the task, which
                    // removes its temporary file.
                    writer = blocking(move || writer.write(&data).map(|()| writer)).await?;
                }
            }
        }
        blocking(move || writer.finish()).await
    }
}

/// The next message's payload, `None` at the end of the stream. A message
/// without a payload is a protocol error.
/// A client that sends nothing for `SERVER_FRAME_IDLE` is dropped.
async fn next_message(stream: &mut Streaming<PutShardRequest>) -> Result<Option<Msg>, StorageError> {
    let idle = coffer_rpc::timeouts::SERVER_FRAME_IDLE;
    let Ok(next) = tokio::time::timeout(idle, stream.message()).await else {
        return Err(bad_request(format!("no frame for {idle:?}: the put is abandoned")));
    };
    match next.map_err(StorageError::RequestStream)? {
        None => Ok(None),
        Some(PutShardRequest { msg: Some(msg) }) => Ok(Some(msg)),
        Some(PutShardRequest { msg: None }) => Err(bad_request("a message with neither header nor data")),
    }
}

fn bad_request(reason: impl Into<String>) -> StorageError {
    StorageError::BadRequest { reason: reason.into() }
}

fn bad_header(reason: impl Into<String>) -> StorageError {
    StorageError::BadHeader { reason: reason.into() }
}

/// Runs a store operation on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::BlockingTask { reason: e.to_string() })?
}

/// Validates a header that arrived from the network. The version comes
/// first: a header in a format we do not speak is not malformed, just not
/// ours to read.
pub fn header_from_pb(h: &pb::ShardHeader) -> Result<ShardHeader, StorageError> {
    if h.format_version != u32::from(FORMAT_VERSION) {
        return Err(StorageError::UnsupportedVersion { version: h.format_version });
    }
    let small = |what: &str, v: u32| u8::try_from(v).map_err(|_| bad_header(format!("{what} {v} is out of range")));
    let header = ShardHeader {
        pack: PackId::from_slice(&h.pack_id).map_err(|e| bad_header(e.to_string()))?,
        index: ShardIndex(small("shard index", h.index)?),
        k: small("k", h.k)?,
        m: small("m", h.m)?,
        body_len: h.length,
        body_checksum: Hash32::from_slice(&h.checksum).map_err(|e| bad_header(e.to_string()))?,
    };
    header.validate()?;
    Ok(header)
}

pub fn header_to_pb(h: &ShardHeader) -> pb::ShardHeader {
    pb::ShardHeader {
        format_version: u32::from(FORMAT_VERSION),
        pack_id: h.pack.as_bytes().to_vec(),
        index: u32::from(h.index.0),
        k: u32::from(h.k),
        m: u32::from(h.m),
        length: h.body_len,
        checksum: h.body_checksum.as_bytes().to_vec(),
    }
}

fn shard_ref(r: &ShardRef) -> Result<(PackId, ShardIndex), StorageError> {
    let pack = PackId::from_slice(&r.pack_id).map_err(|e| bad_request(e.to_string()))?;
    let index = u8::try_from(r.index).map_err(|_| bad_request(format!("shard index {} is out of range", r.index)))?;
    Ok((pack, ShardIndex(index)))
}

/// The gRPC status for a storage error.
pub fn status_code(e: &StorageError) -> Code {
    match e {
        StorageError::BadHeader { .. }
        | StorageError::BadRequest { .. }
        | StorageError::ChecksumMismatch { .. }
        | StorageError::LengthMismatch { .. } => Code::InvalidArgument,
        StorageError::UnsupportedVersion { .. } | StorageError::NodeIdFile { .. } | StorageError::Config { .. } => {
            Code::FailedPrecondition
        }
        StorageError::Corrupt { .. } | StorageError::CorruptHeader { .. } | StorageError::Truncated { .. } => {
            Code::DataLoss
        }
        StorageError::NotFound { .. } => Code::NotFound,
        StorageError::RangeOutOfBounds { .. } => Code::OutOfRange,
        e if e.is_disk_full() => Code::ResourceExhausted,
        StorageError::DiskFull { .. } => Code::ResourceExhausted,
        StorageError::InventoryClosed | StorageError::InventoryUnavailable { .. } => Code::Unavailable,
        StorageError::Meta(_) => Code::Unavailable,
        // Not a fault of this node, nor a transient one of the call: the
        // leader tries again with the sources it finds on a later tick.
        StorageError::TooFewShards { .. } => Code::FailedPrecondition,
        StorageError::RebuiltMismatch { .. } => Code::DataLoss,
        StorageError::Reconstruct { .. } => Code::Internal,
        StorageError::RequestStream(status) => status.code(),
        StorageError::Io { .. }
        | StorageError::Inventory(_)
        | StorageError::Serve(_)
        | StorageError::BlockingTask { .. } => Code::Internal,
    }
}

/// Maps a storage error to the status `rpc` answers with, and logs it: this
/// is where service errors are handled.
pub fn status(rpc: &'static str, e: StorageError) -> Status {
    let code = status_code(&e);
    match code {
        Code::DataLoss | Code::Internal => tracing::error!(rpc, error = %e, "shard request failed"),
        // A full node is an expected state the cluster routes around.
        Code::ResourceExhausted => tracing::warn!(rpc, error = %e, "shard request refused"),
        Code::NotFound => tracing::debug!(rpc, error = %e, "shard request failed"),
        _ => tracing::warn!(rpc, error = %e, "shard request refused"),
    }
    match e {
        StorageError::RequestStream(s) => Status::new(s.code(), s.message().to_string()),
        e => Status::new(code, e.to_string()),
    }
}

#[tonic::async_trait]
impl ShardStoreRpc for ShardService {
    async fn put_shard(
        &self,
        request: Request<Streaming<PutShardRequest>>,
    ) -> Result<Response<PutShardResponse>, Status> {
        let mut stream = request.into_inner();
        let stored_bytes = self.put(&mut stream).await.map_err(|e| status("PutShard", e))?;
        Ok(Response::new(PutShardResponse { stored_bytes }))
    }

    type GetShardStream = ReceiverStream<Result<ShardFrame, Status>>;

    async fn get_shard(&self, request: Request<GetShardRequest>) -> Result<Response<Self::GetShardStream>, Status> {
        let req = request.into_inner();
        let shard = req.shard.as_ref().ok_or_else(|| status("GetShard", bad_request("shard is missing")))?;
        let (pack, index) = shard_ref(shard).map_err(|e| status("GetShard", e))?;
        let store = self.store.clone();
        // Open and range-check before answering, so that a missing shard or
        // a bad range is the call's status rather than a broken stream.
        let (reader, (start, end)) = blocking(move || {
            let reader = store.open_reader(&pack, index)?;
            let range = reader.resolve_range(req.offset, req.length)?;
            reader.will_need(range.0, range.1);
            Ok((reader, range))
        })
        .await
        .map_err(|e| status("GetShard", e))?;
        let reader = Arc::new(reader);
        let (tx, rx) = mpsc::channel(GET_FRAMES_IN_FLIGHT);
        tokio::spawn(async move {
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(MAX_FRAME_BYTES as u64);
                let r = reader.clone();
                let frame = blocking(move || r.read_shared(pos, n)).await;
                let failed = frame.is_err();
                let item = frame.map(|data| ShardFrame { data }).map_err(|e| status("GetShard", e));
                // A closed channel means the client went away: stop reading.
                if tx.send(item).await.is_err() || failed {
                    return;
                }
                pos += n;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delete_shard(&self, request: Request<ShardRef>) -> Result<Response<DeleteShardResponse>, Status> {
        let (pack, index) = shard_ref(request.get_ref()).map_err(|e| status("DeleteShard", e))?;
        let store = self.store.clone();
        let existed = blocking(move || store.delete(&pack, index)).await.map_err(|e| status("DeleteShard", e))?;
        if existed {
            tracing::info!(%pack, %index, "deleted shard");
        }
        Ok(Response::new(DeleteShardResponse { existed }))
    }

    async fn stat_shard(&self, request: Request<ShardRef>) -> Result<Response<pb::ShardHeader>, Status> {
        let (pack, index) = shard_ref(request.get_ref()).map_err(|e| status("StatShard", e))?;
        let store = self.store.clone();
        let header = blocking(move || store.stat(&pack, index)).await.map_err(|e| status("StatShard", e))?;
        Ok(Response::new(header_to_pb(&header)))
    }

    async fn node_info(&self, _request: Request<NodeInfoRequest>) -> Result<Response<NodeInfoResponse>, Status> {
        Ok(Response::new(NodeInfoResponse {
            node_id: self.node.0,
            site: self.site.to_string(),
            used_bytes: self.store.used_bytes(),
            capacity_bytes: self.capacity_bytes,
            shard_count: self.store.shard_count(),
            rebuild_bytes_read: self.repair.counters.rebuild_bytes_read.load(Ordering::Relaxed),
            rebuild_bytes_written: self.repair.counters.rebuild_bytes_written.load(Ordering::Relaxed),
            rebuilds: self.repair.counters.rebuilds.load(Ordering::Relaxed),
            scrub_bytes: self.repair.counters.scrub_bytes.load(Ordering::Relaxed),
            scrub_bad: self.repair.counters.scrub_bad.load(Ordering::Relaxed),
            free_bytes: self.store.free_bytes().unwrap_or(0),
            reserve_bytes: self.store.reserve_bytes(),
            orphan_bytes: self.repair.orphan_bytes.load(Ordering::Relaxed),
        }))
    }

    async fn rebuild_shard(
        &self,
        request: Request<pb::RebuildShardRequest>,
    ) -> Result<Response<pb::RebuildShardResponse>, Status> {
        let req = request.into_inner();
        rebuild_shard(&self.store, req, &self.repair.rebuild_limit, &self.repair.counters, &self.repair.peers)
            .await
            .map(Response::new)
            .map_err(|e| status("RebuildShard", e))
    }

    async fn scrub(&self, _request: Request<pb::ScrubRequest>) -> Result<Response<pb::ScrubResponse>, Status> {
        let r = scrub_pass(&self.store, &self.repair.scrub_limit, self.repair.scrub_rate, &self.repair.counters)
            .await
            .map_err(|e| status("Scrub", e))?;
        self.repair.reports.lock().await.extend(r.bad.iter().cloned());
        // Reported before the answer, so that whoever asked for the scrub
        // (`coffer scrub`, an operator, the chaos checks) finds the damage
        // in the catalog once it returns. If the catalog cannot be reached,
        // the reports stay queued for the heartbeat; the scrub itself did
        // its work either way.
        if let Some(catalog) = &self.repair.catalog {
            crate::workers::report_bad_shards(&self.repair, catalog, self.node).await;
        }
        Ok(Response::new(r))
    }

    async fn list_shards(
        &self,
        request: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        let req = request.into_inner();
        let after = if req.page_token.is_empty() {
            None
        } else {
            let token = crate::store::decode_page_token(&req.page_token).ok_or_else(|| {
                status("ListShards", bad_request(format!("page_token of {} bytes is not one", req.page_token.len())))
            })?;
            Some(token)
        };
        let limit = page_size(req.page_size);
        let store = self.store.clone();
        let (entries, more) =
            blocking(move || store.list_page(after, limit)).await.map_err(|e| status("ListShards", e))?;
        let next = match entries.last() {
            Some(last) if more => crate::store::page_token(&last.pack, last.index),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::ListShardsResponse {
            shards: entries.iter().map(|e| ShardRef { pack_id: e.pack.0.to_vec(), index: e.index.0 as u32 }).collect(),
            next,
        }))
    }
}

/// The shards one ListShards page holds when the caller names no size.
pub const DEFAULT_LIST_PAGE: usize = 1_000;
/// The most shards one ListShards page holds (about 40 bytes each on the
/// wire, far below the message limit).
pub const MAX_LIST_PAGE: usize = 10_000;

/// A requested page size, bounded: 0 is the default.
fn page_size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_LIST_PAGE,
        n => (n as usize).min(MAX_LIST_PAGE),
    }
}
