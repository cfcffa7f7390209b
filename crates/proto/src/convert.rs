//! pb <-> types conversions. Outbound is infallible (`From`); inbound
//! validates (`TryFrom`) and names the field that was wrong.

use coffer_types::{
    BackupKind, ChunkId, ChunkLocation, Coverage, DrKind, DrRecord, ErasureParams, Hash32, NodeId, NodeRecord, PackId,
    PackKind, PackRecord, Prices, RepoName, RepoRecord, ShardIndex, ShardRecord, SiteId, SkipReason, SkippedEntry,
    SnapshotId, SnapshotRecord, SnapshotStats, Source, SourceRecord, SourceRun, StepRecord, TypesError, MAX_SHARD_LEN,
};

use crate::limits::{self, check_bytes, check_count};
use crate::pb;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("field {field}: {source}")]
    Invalid { field: &'static str, source: TypesError },
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error("field {field}: {reason}")]
    Bad { field: &'static str, reason: String },
}

impl From<ProtoError> for tonic::Status {
    fn from(e: ProtoError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn field<T>(field: &'static str, r: Result<T, TypesError>) -> Result<T, ProtoError> {
    r.map_err(|source| ProtoError::Invalid { field, source })
}

/// Decodes a list of raw ids, naming the field on failure.
pub fn ids_from_bytes<T>(
    name: &'static str,
    raw: &[Vec<u8>],
    parse: fn(&[u8]) -> Result<T, TypesError>,
) -> Result<Vec<T>, ProtoError> {
    raw.iter().map(|b| field(name, parse(b))).collect()
}

impl From<ErasureParams> for pb::ErasureParams {
    fn from(p: ErasureParams) -> Self {
        pb::ErasureParams { k: p.k() as u32, m: p.m() as u32 }
    }
}

/// Validates erasure parameters from the wire.
pub fn params_from_pb(p: Option<pb::ErasureParams>) -> Result<ErasureParams, ProtoError> {
    let p = p.ok_or(ProtoError::Missing { field: "params" })?;
    field("params", ErasureParams::new(p.k, p.m))
}

/// A node record with its derived state, for answers.
pub fn node_to_pb(n: &NodeRecord, state: &str) -> pb::Node {
    pb::Node {
        id: n.id.0,
        site: n.site.to_string(),
        addr: n.addr.clone(),
        capacity_bytes: n.capacity_bytes,
        used_bytes: n.used_bytes,
        last_heartbeat_ms: n.last_heartbeat_ms,
        state: state.to_string(),
        draining: false,
        // Heartbeat figures, filled in by whoever knows them.
        free_bytes: 0,
        reserve_bytes: 0,
        orphan_bytes: 0,
    }
}

impl TryFrom<pb::Node> for NodeRecord {
    type Error = ProtoError;
    fn try_from(n: pb::Node) -> Result<Self, ProtoError> {
        check_bytes("node.addr", n.addr.len(), limits::MAX_ADDR_BYTES)?;
        Ok(NodeRecord {
            id: NodeId(n.id),
            site: field("site", SiteId::new(n.site))?,
            addr: n.addr,
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            last_heartbeat_ms: n.last_heartbeat_ms,
        })
    }
}

impl From<&RepoRecord> for pb::Repo {
    fn from(r: &RepoRecord) -> Self {
        pb::Repo {
            name: r.name.to_string(),
            params: Some(r.params.into()),
            key_slots: r.key_slots.clone(),
            created_ms: r.created_ms,
        }
    }
}

impl TryFrom<pb::Repo> for RepoRecord {
    type Error = ProtoError;
    fn try_from(r: pb::Repo) -> Result<Self, ProtoError> {
        check_count("repo.key_slots", r.key_slots.len(), limits::MAX_KEY_SLOTS)?;
        for slot in &r.key_slots {
            check_bytes("repo.key_slots", slot.len(), limits::MAX_KEY_SLOT_BYTES)?;
        }
        Ok(RepoRecord {
            name: field("repo.name", RepoName::new(r.name))?,
            params: params_from_pb(r.params)?,
            key_slots: r.key_slots,
            created_ms: r.created_ms,
        })
    }
}

fn pack_kind_str(k: PackKind) -> &'static str {
    match k {
        PackKind::Data => "data",
        PackKind::Tree => "tree",
        PackKind::Refs => "refs",
    }
}

fn pack_kind_parse(s: &str) -> Result<PackKind, ProtoError> {
    match s {
        "data" => Ok(PackKind::Data),
        "tree" => Ok(PackKind::Tree),
        "refs" => Ok(PackKind::Refs),
        _ => Err(ProtoError::Bad { field: "pack.kind", reason: format!("unknown pack kind {s:?}") }),
    }
}

impl From<&PackRecord> for pb::Pack {
    fn from(p: &PackRecord) -> Self {
        pb::Pack {
            id: p.id.0.to_vec(),
            repo: p.repo.to_string(),
            kind: pack_kind_str(p.kind).to_string(),
            params: Some(p.params.into()),
            pack_len: p.pack_len,
            shard_len: p.shard_len,
            shards: p
                .shards
                .iter()
                .map(|s| pb::Shard { index: s.index.0 as u32, node: s.node.0, checksum: s.checksum.0.to_vec() })
                .collect(),
        }
    }
}

impl TryFrom<pb::Pack> for PackRecord {
    type Error = ProtoError;
    fn try_from(p: pb::Pack) -> Result<Self, ProtoError> {
        let params = params_from_pb(p.params)?;
        if p.shards.len() != params.total() {
            return Err(ProtoError::Bad {
                field: "pack.shards",
                reason: format!("{} shards for a {params} pack", p.shards.len()),
            });
        }
        let mut shards = Vec::with_capacity(p.shards.len());
        for (i, s) in p.shards.into_iter().enumerate() {
            if s.index as usize != i {
                return Err(ProtoError::Bad { field: "pack.shards", reason: "shards out of index order".into() });
            }
            shards.push(ShardRecord {
                index: ShardIndex(i as u8),
                node: NodeId(s.node),
                checksum: field("shard.checksum", Hash32::from_slice(&s.checksum))?,
            });
        }
        if p.pack_len > limits::MAX_PACK_LEN {
            return Err(ProtoError::Bad {
                field: "pack.pack_len",
                reason: format!("{} bytes; at most {}", p.pack_len, limits::MAX_PACK_LEN),
            });
        }
        // Bounded, so that `k * shard_len` and every sum of shard bytes
        // downstream stays far from overflow.
        if p.shard_len > MAX_SHARD_LEN {
            return Err(ProtoError::Bad {
                field: "pack.shard_len",
                reason: format!("{} is above the {MAX_SHARD_LEN}-byte shard limit", p.shard_len),
            });
        }
        if p.shard_len != params.shard_len(p.pack_len) {
            return Err(ProtoError::Bad {
                field: "pack.shard_len",
                reason: format!("{} does not match pack_len {} for {params}", p.shard_len, p.pack_len),
            });
        }
        Ok(PackRecord {
            id: field("pack.id", PackId::from_slice(&p.id))?,
            repo: field("pack.repo", RepoName::new(p.repo))?,
            kind: pack_kind_parse(&p.kind)?,
            params,
            pack_len: p.pack_len,
            shard_len: p.shard_len,
            shards,
        })
    }
}

/// A chunk index entry with the id it is for.
pub fn location_to_pb(id: &ChunkId, l: &ChunkLocation) -> pb::ChunkLocation {
    pb::ChunkLocation { chunk_id: id.0.to_vec(), pack: l.pack.0.to_vec(), offset: l.offset, len: l.len }
}

pub fn location_from_pb(l: &pb::ChunkLocation) -> Result<(ChunkId, ChunkLocation), ProtoError> {
    Ok((
        field("chunk_id", ChunkId::from_slice(&l.chunk_id))?,
        ChunkLocation { pack: field("pack", PackId::from_slice(&l.pack))?, offset: l.offset, len: l.len },
    ))
}

impl From<&SnapshotStats> for pb::SnapshotStats {
    fn from(s: &SnapshotStats) -> Self {
        pb::SnapshotStats {
            files: s.files,
            dirs: s.dirs,
            bytes_scanned: s.bytes_scanned,
            bytes_read: s.bytes_read,
            bytes_new: s.bytes_new,
            bytes_stored: s.bytes_stored,
            chunks_new: s.chunks_new,
            chunks_reused: s.chunks_reused,
            errors: s.errors,
            coverage: s.coverage.as_ref().map(pb::SnapshotCoverage::from),
        }
    }
}

impl TryFrom<pb::SnapshotStats> for SnapshotStats {
    type Error = ProtoError;
    fn try_from(s: pb::SnapshotStats) -> Result<Self, ProtoError> {
        Ok(SnapshotStats {
            files: s.files,
            dirs: s.dirs,
            bytes_scanned: s.bytes_scanned,
            bytes_read: s.bytes_read,
            bytes_new: s.bytes_new,
            bytes_stored: s.bytes_stored,
            chunks_new: s.chunks_new,
            chunks_reused: s.chunks_reused,
            errors: s.errors,
            coverage: s.coverage.map(Coverage::try_from).transpose()?,
        })
    }
}

impl From<&Coverage> for pb::SnapshotCoverage {
    fn from(c: &Coverage) -> Self {
        pb::SnapshotCoverage {
            files_total: c.files_total,
            bytes_total: c.bytes_total,
            files_protected: c.files_protected,
            bytes_protected: c.bytes_protected,
            skipped_unreadable: c.skipped_unreadable,
            skipped_excluded: c.skipped_excluded,
            skipped_vanished: c.skipped_vanished,
            examples: c
                .examples
                .iter()
                .map(|e| pb::SkippedEntry { path: e.path.clone(), reason: e.reason.as_str().to_string() })
                .collect(),
            command_exit: c.command_exit,
        }
    }
}

/// A snapshot's coverage from the wire, within `Coverage::validate`'s bounds.
impl TryFrom<pb::SnapshotCoverage> for Coverage {
    type Error = ProtoError;
    fn try_from(c: pb::SnapshotCoverage) -> Result<Self, ProtoError> {
        let mut examples = Vec::with_capacity(c.examples.len().min(coffer_types::MAX_SKIPPED_EXAMPLES + 1));
        for e in c.examples {
            let reason = field("stats.coverage.examples.reason", e.reason.parse::<SkipReason>())?;
            examples.push(SkippedEntry { path: e.path, reason });
        }
        let coverage = Coverage {
            files_total: c.files_total,
            bytes_total: c.bytes_total,
            files_protected: c.files_protected,
            bytes_protected: c.bytes_protected,
            skipped_unreadable: c.skipped_unreadable,
            skipped_excluded: c.skipped_excluded,
            skipped_vanished: c.skipped_vanished,
            examples,
            command_exit: c.command_exit,
        };
        coverage.validate().map_err(|reason| ProtoError::Bad { field: "stats.coverage", reason })?;
        Ok(coverage)
    }
}

/// The cluster's prices on the wire are per GiB; the figures are per byte.
pub fn prices_from_pb(p: &pb::DrPrices) -> Prices {
    const GIB: f64 = (1u64 << 30) as f64;
    Prices {
        per_byte_read: p.per_gib_read / GIB,
        per_byte_written: p.per_gib_written / GIB,
        per_byte_cross_site: p.per_gib_cross_site / GIB,
        per_node_hour: p.per_node_hour,
    }
}

impl From<&SnapshotRecord> for pb::Snapshot {
    fn from(s: &SnapshotRecord) -> Self {
        pb::Snapshot {
            id: s.id.0.to_vec(),
            repo: s.repo.to_string(),
            host: s.source.host.clone(),
            path: s.source.path.clone(),
            kind: s.kind.as_str().to_string(),
            parent: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            root: s.root.0.to_vec(),
            stats: Some((&s.stats).into()),
            tags: s.tags.clone(),
            refs_pack: s.refs_pack.0.to_vec(),
            refs_count: s.refs_count,
        }
    }
}

impl TryFrom<pb::Snapshot> for SnapshotRecord {
    type Error = ProtoError;
    fn try_from(s: pb::Snapshot) -> Result<Self, ProtoError> {
        check_bytes("snapshot.host", s.host.len(), limits::MAX_HOST_BYTES)?;
        check_bytes("snapshot.path", s.path.len(), limits::MAX_PATH_BYTES)?;
        check_count("snapshot.tags", s.tags.len(), limits::MAX_TAGS)?;
        for tag in &s.tags {
            check_bytes("snapshot.tags", tag.len(), limits::MAX_TAG_BYTES)?;
        }
        Ok(SnapshotRecord {
            id: field("snapshot.id", SnapshotId::from_slice(&s.id))?,
            repo: field("snapshot.repo", RepoName::new(s.repo))?,
            source: Source { host: s.host, path: s.path },
            kind: field("snapshot.kind", s.kind.parse::<BackupKind>())?,
            parent: if s.parent.is_empty() {
                None
            } else {
                Some(field("snapshot.parent", SnapshotId::from_slice(&s.parent))?)
            },
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            root: field("snapshot.root", ChunkId::from_slice(&s.root))?,
            stats: s.stats.map(SnapshotStats::try_from).transpose()?.unwrap_or_default(),
            tags: s.tags,
            refs_pack: field("snapshot.refs_pack", PackId::from_slice(&s.refs_pack))?,
            refs_count: s.refs_count,
        })
    }
}

impl From<&DrRecord> for pb::DrRecord {
    fn from(r: &DrRecord) -> Self {
        pb::DrRecord {
            id: r.id,
            kind: r.kind.as_str().to_string(),
            repo: r.repo.to_string(),
            source: r.source.clone(),
            snapshot: r.snapshot.map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
            started_ms: r.started_ms,
            duration_ms: r.duration_ms,
            bytes: r.bytes,
            files: r.files,
            ok: r.ok,
            reason: r.reason.clone(),
            failed_files: r.failed_files.clone(),
            failed_count: r.failed_count,
            reconstructed: r.reconstructed,
            bytes_read: r.bytes_read,
            bytes_written: r.bytes_written,
            bytes_cross_site: r.bytes_cross_site,
            steps: r
                .steps
                .iter()
                .map(|s| pb::DrStep {
                    name: s.name.clone(),
                    result: s.result.clone(),
                    duration_ms: s.duration_ms,
                    detail: s.detail.clone(),
                })
                .collect(),
        }
    }
}

/// A disaster-recovery record from the wire, within `coffer_types::dr`'s bounds.
impl TryFrom<pb::DrRecord> for DrRecord {
    type Error = ProtoError;
    fn try_from(r: pb::DrRecord) -> Result<Self, ProtoError> {
        let record = DrRecord {
            id: r.id,
            kind: field("record.kind", r.kind.parse::<DrKind>())?,
            repo: field("record.repo", RepoName::new(r.repo))?,
            source: r.source,
            snapshot: if r.snapshot.is_empty() {
                None
            } else {
                Some(field("record.snapshot", SnapshotId::from_slice(&r.snapshot))?)
            },
            started_ms: r.started_ms,
            duration_ms: r.duration_ms,
            bytes: r.bytes,
            files: r.files,
            ok: r.ok,
            reason: r.reason,
            failed_files: r.failed_files,
            failed_count: r.failed_count,
            reconstructed: r.reconstructed,
            bytes_read: r.bytes_read,
            bytes_written: r.bytes_written,
            bytes_cross_site: r.bytes_cross_site,
            steps: r
                .steps
                .into_iter()
                .map(|s| StepRecord { name: s.name, result: s.result, duration_ms: s.duration_ms, detail: s.detail })
                .collect(),
        };
        record.validate().map_err(|reason| ProtoError::Bad { field: "record", reason })?;
        Ok(record)
    }
}

/// A worker's status as `node` reports it (heartbeats, cluster status).
pub fn worker_to_pb(node: &str, s: &coffer_worker::WorkerStatus) -> pb::WorkerStatus {
    pb::WorkerStatus {
        node: node.to_string(),
        name: s.name.clone(),
        state: s.state.as_str().to_string(),
        last_run_ms: s.last_run_ms.unwrap_or(0),
        last_error: s.last_error.clone().unwrap_or_default(),
        last_error_ms: s.last_error_ms.unwrap_or(0),
        consecutive_errors: s.consecutive_errors,
        runs: s.runs,
        errors: s.errors,
        progress: s.progress.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

impl From<&SourceRecord> for pb::SourceInfo {
    fn from(s: &SourceRecord) -> Self {
        pb::SourceInfo {
            repo: s.repo.to_string(),
            name: s.name.clone(),
            host: s.host.clone(),
            strategy: s.strategy.clone(),
            rpo_target_ms: s.rpo_target_ms,
            report_interval_ms: s.report_interval_ms,
            reported_ms: s.reported_ms,
            last_ok_end_ms: s.last_ok_end_ms.unwrap_or(0),
            last_run: s.last_run.as_ref().map(|r| pb::SourceRun {
                started_ms: r.started_ms,
                finished_ms: r.finished_ms,
                kind: r.kind.as_str().to_string(),
                snapshot_id: r.snapshot.map(|id| id.0.to_vec()).unwrap_or_default(),
                ok: r.ok,
                error: r.error.clone(),
                bytes: r.bytes,
            }),
            next_run_ms: s.next_run_ms.unwrap_or(0),
            runs_ok: s.runs_ok,
            runs_failed: s.runs_failed,
        }
    }
}

/// A report as an agent sends it; `reported_ms` is the leader's to set.
impl TryFrom<pb::SourceInfo> for SourceRecord {
    type Error = ProtoError;
    fn try_from(s: pb::SourceInfo) -> Result<Self, ProtoError> {
        field("source.name", coffer_types::check_source_name(&s.name))?;
        check_bytes("source.host", s.host.len(), limits::MAX_HOST_BYTES)?;
        check_bytes("source.strategy", s.strategy.len(), limits::MAX_SOURCE_STRATEGY_BYTES)?;
        let last_run = match s.last_run {
            None => None,
            Some(r) => {
                check_bytes("source.last_run.error", r.error.len(), limits::MAX_SOURCE_ERROR_BYTES)?;
                Some(SourceRun {
                    started_ms: r.started_ms,
                    finished_ms: r.finished_ms,
                    kind: field("source.last_run.kind", r.kind.parse::<BackupKind>())?,
                    snapshot: if r.snapshot_id.is_empty() {
                        None
                    } else {
                        Some(field("source.last_run.snapshot_id", SnapshotId::from_slice(&r.snapshot_id))?)
                    },
                    ok: r.ok,
                    error: r.error,
                    bytes: r.bytes,
                })
            }
        };
        let nonzero = |v: u64| (v != 0).then_some(v);
        Ok(SourceRecord {
            repo: field("source.repo", RepoName::new(s.repo))?,
            name: s.name,
            host: s.host,
            strategy: s.strategy,
            rpo_target_ms: s.rpo_target_ms,
            report_interval_ms: s.report_interval_ms,
            reported_ms: s.reported_ms,
            last_ok_end_ms: nonzero(s.last_ok_end_ms),
            last_run,
            next_run_ms: nonzero(s.next_run_ms),
            runs_ok: s.runs_ok,
            runs_failed: s.runs_failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire_u32() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(1), Just(u32::MAX), Just(u32::MAX - 1), 0u32..=8, any::<u32>()]
    }

    fn wire_u64() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(1), Just(u64::MAX), Just(u64::MAX - 1), Just(MAX_SHARD_LEN + 1), any::<u64>()]
    }

    proptest! {
        /// Every inbound conversion takes the extremes of each integer field
        /// without panicking, and what it accepts is consistent.
        #[test]
        fn inbound_conversions_take_extreme_values(
            k in wire_u32(),
            m in wire_u32(),
            pack_len in wire_u64(),
            shard_len in wire_u64(),
            index in wire_u32(),
            node in wire_u64(),
            offset in wire_u64(),
            len in wire_u32(),
            shards in 0usize..=8,
        ) {
            let params = Some(pb::ErasureParams { k, m });
            let _ = params_from_pb(params);
            let repo = pb::Repo { name: "r".into(), params, key_slots: vec![], created_ms: pack_len };
            if let Ok(r) = RepoRecord::try_from(repo) {
                prop_assert!(r.params.total() <= coffer_types::MAX_SHARDS as usize);
            }
            let pack = pb::Pack {
                id: vec![1; 16],
                repo: "r".into(),
                kind: "data".into(),
                params,
                pack_len,
                shard_len,
                shards: (0..shards)
                    .map(|i| pb::Shard { index: if i == 0 { index } else { i as u32 }, node, checksum: vec![0; 32] })
                    .collect(),
            };
            if let Ok(p) = PackRecord::try_from(pack) {
                prop_assert_eq!(p.shards.len(), p.params.total());
                prop_assert!(p.shard_len <= MAX_SHARD_LEN);
                prop_assert!(u128::from(p.shard_len) * p.params.k() as u128 >= u128::from(p.pack_len));
            }
            let loc = pb::ChunkLocation { chunk_id: vec![2; 32], pack: vec![1; 16], offset, len };
            let _ = location_from_pb(&loc);
            let n = pb::Node { id: node, site: "a".into(), addr: "x".into(), capacity_bytes: pack_len, used_bytes: offset, last_heartbeat_ms: shard_len, state: String::new(), draining: false, ..pb::Node::default() };
            let _ = NodeRecord::try_from(n);
        }
    }

    #[test]
    fn overflowing_erasure_parameters_are_refused() {
        for (k, m) in [(u32::MAX, 2), (2, u32::MAX), (u32::MAX, u32::MAX)] {
            assert!(params_from_pb(Some(pb::ErasureParams { k, m })).is_err(), "{k}+{m}");
        }
    }

    #[test]
    fn pack_round_trip_and_rejects_bad_shapes() {
        let params = ErasureParams::new(2, 1).unwrap();
        let rec = PackRecord {
            id: PackId::random(),
            repo: RepoName::new("r").unwrap(),
            kind: PackKind::Data,
            params,
            pack_len: 10,
            shard_len: 5,
            shards: (0..3)
                .map(|i| ShardRecord { index: ShardIndex(i), node: NodeId(i as u64 + 1), checksum: Hash32([i; 32]) })
                .collect(),
        };
        let wire = pb::Pack::from(&rec);
        assert_eq!(PackRecord::try_from(wire.clone()).unwrap(), rec);

        let mut short = wire.clone();
        short.shards.pop();
        assert!(PackRecord::try_from(short).is_err());
        let mut bad_len = wire.clone();
        bad_len.shard_len = 4;
        assert!(PackRecord::try_from(bad_len).is_err());
        let mut bad_id = wire;
        bad_id.id = vec![1];
        assert!(PackRecord::try_from(bad_id).is_err());
    }

    #[test]
    fn coverage_round_trips_and_bad_coverage_is_refused() {
        let c = Coverage {
            files_total: 12,
            bytes_total: 1_200,
            files_protected: 10,
            bytes_protected: 1_000,
            skipped_unreadable: 1,
            skipped_excluded: 1,
            skipped_vanished: 0,
            examples: vec![SkippedEntry { path: "/a".into(), reason: SkipReason::Excluded }],
            command_exit: Some(0),
        };
        let wire = pb::SnapshotCoverage::from(&c);
        assert_eq!(Coverage::try_from(wire.clone()).unwrap(), c);
        let stats = SnapshotStats { files: 10, coverage: Some(c), ..Default::default() };
        assert_eq!(SnapshotStats::try_from(pb::SnapshotStats::from(&stats)).unwrap(), stats);
        // Old writers send no coverage: it stays unknown.
        let old = pb::SnapshotStats { files: 3, ..Default::default() };
        assert_eq!(SnapshotStats::try_from(old).unwrap().coverage, None);

        let mut bad = wire.clone();
        bad.examples[0].reason = "lost".into();
        assert!(Coverage::try_from(bad).unwrap_err().to_string().contains("reason"));
        let mut bad = wire.clone();
        bad.examples = vec![bad.examples[0].clone(); coffer_types::MAX_SKIPPED_EXAMPLES + 1];
        assert!(Coverage::try_from(bad).is_err());
        let mut bad = wire;
        bad.files_protected = bad.files_total + 1;
        assert!(Coverage::try_from(bad).is_err());
    }

    #[test]
    fn prices_are_per_byte_from_per_gib() {
        let p = prices_from_pb(&pb::DrPrices {
            per_gib_read: 1.0,
            per_gib_written: 2.0,
            per_gib_cross_site: 4.0,
            per_node_hour: 3.0,
        });
        let gib = (1u64 << 30) as f64;
        assert_eq!(p.per_byte_read * gib, 1.0);
        assert_eq!(p.per_byte_written * gib, 2.0);
        assert_eq!(p.per_byte_cross_site * gib, 4.0);
        assert_eq!(p.per_node_hour, 3.0);
    }
}
