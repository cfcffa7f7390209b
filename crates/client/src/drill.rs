//! Restore drills: restore a snapshot into a scratch target, verify every
//! restored file (or a random sample) against the snapshot's tree by size
//! and by re-deriving each chunk's keyed id from the bytes on disk, run an
//! optional verification command on the result, time each phase, and
//! record the outcome in the catalog (`Catalog.RecordDr`).
//!
//! Invariant: a drill says `verified` only if every file it checked matched
//! the tree bit for bit (a chunk id is the keyed BLAKE3 of the plaintext)
//! and the verification command, if any, exited 0. When the restore itself
//! fails, each file it could not bring back is retried alone, so the files
//! named as failed are those that really cannot be restored, not those the
//! aborted restore never reached.
//!
//! The agent daemon calls `Repository::drill` on its schedule; `coffer
//! drill` is the same call from the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use coffer_proto::pb;
use coffer_types::dr::MAX_DR_FAILED_FILES;
use coffer_types::{DrKind, DrRecord, SnapshotRecord};
use rand::Rng;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::fetch::ClusterSource;
use crate::restore::{restore_to_writer, RestoreTarget};
use crate::source::load_tree;
use crate::tree::NodeKind;
use crate::{ClientError, Repository};

/// How a drill runs.
#[derive(Clone, Debug, Default)]
pub struct DrillOptions {
    /// Restore here and keep the result; by default a temporary directory
    /// that is removed afterwards.
    pub target: Option<PathBuf>,
    /// Verify only this share (0 < p ≤ 1) of the files, drawn at random.
    pub sample: Option<f64>,
    /// A shell command run in the restored tree (`COFFER_DRILL_TARGET` names
    /// it); the drill fails unless it exits 0.
    pub verify_command: Option<String>,
    /// Record the result in the catalog (the agent and the CLI do; tests of
    /// the library may not).
    pub record: bool,
}

/// The time each phase of a drill took.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DrillPhases {
    pub restore_s: f64,
    pub verify_s: f64,
    pub command_s: f64,
}

/// What a drill found (the JSON of `coffer drill --json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DrillReport {
    pub snapshot_id: String,
    pub source: String,
    pub verified: bool,
    /// The measured recovery time: restore, verification and command.
    pub rto_s: f64,
    pub bytes: u64,
    pub files: u64,
    /// Files checked (all of them unless `--sample`).
    pub files_checked: u64,
    /// Files missing, unreadable or different (paths inside the snapshot).
    pub failed_files: Vec<String>,
    pub reason: String,
    pub reconstructed: bool,
    pub phases: DrillPhases,
    /// Where the restore went, when it was kept.
    pub target: Option<String>,
}

/// A regular file of the snapshot, as the tree describes it.
struct Expected {
    path: PathBuf,
    size: u64,
    content: Vec<coffer_types::ChunkId>,
    lens: Vec<u32>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Repository {
    /// Runs a drill of `snap` (see the module documentation).
    pub async fn drill(&self, snap: &SnapshotRecord, opts: &DrillOptions) -> Result<DrillReport, ClientError> {
        let started_ms = now_ms();
        let started = Instant::now();
        let scratch;
        let target = match &opts.target {
            Some(t) => t.clone(),
            None => {
                scratch = tempfile::Builder::new()
                    .prefix("coffer-drill-")
                    .tempdir()
                    .map_err(|e| ClientError::Io { path: std::env::temp_dir(), source: e })?;
                scratch.path().join("restore")
            }
        };
        let mut reason = String::new();
        let (bytes, files, reconstructed, (shard_bytes, cross_site)) =
            match self.restore(snap, RestoreTarget::Dir(target.clone()), None).await {
                Ok(s) => (s.bytes, s.files, s.degraded_packs > 0, (s.bytes_shards_read, s.bytes_cross_site)),
                Err(e) => {
                    reason = format!("restore failed: {e}");
                    (0, 0, true, (0, 0))
                }
            };
        let restore_s = started.elapsed().as_secs_f64();

        let verify_started = Instant::now();
        let expected = self.expected_files(snap).await?;
        let total_files = expected.len() as u64;
        let total_bytes: u64 = expected.iter().map(|e| e.size).sum();
        let checked: Vec<&Expected> = match opts.sample {
            Some(p) if p < 1.0 => {
                let mut rng = rand::thread_rng();
                let mut pick: Vec<&Expected> = expected.iter().filter(|_| rng.gen_bool(p.clamp(0.0, 1.0))).collect();
                // A sample of a non-empty source checks at least one file.
                if pick.is_empty() && !expected.is_empty() {
                    pick.push(&expected[rng.gen_range(0..expected.len())]);
                }
                pick
            }
            _ => expected.iter().collect(),
        };
        let source = Arc::new(ClusterSource::new(self.meta.clone(), self.record.name.clone(), self.key.clone()));
        let restore_failed = !reason.is_empty();
        let work = self.progress.as_deref();
        if let Some(w) = work {
            let bytes = checked.iter().map(|e| e.size).fold(0u64, u64::saturating_add);
            w.begin("verify", crate::work::Unit::Files, Some(checked.len() as u64), Some(bytes));
        }
        let mut failed = Vec::new();
        for e in &checked {
            let on_disk = target.join(&e.path);
            crate::work::add_item(work);
            crate::work::add_bytes(work, e.size);
            if self.file_matches(&on_disk, e).await {
                continue;
            }
            // The whole restore stopped early: try this file alone, so that
            // only the files that cannot be read are named.
            if restore_failed && self.retry_file(&source, snap, e, &on_disk).await {
                continue;
            }
            failed.push(e.path.display().to_string());
        }
        source.report_damage().await;
        if restore_failed && failed.is_empty() {
            // Every file came back alone: the data is there, the one-pass
            // restore was what failed; the reason stays.
            failed.push("(restore)".to_string());
        }
        if !failed.is_empty() && reason.is_empty() {
            reason = format!("{} of {} checked files do not match the snapshot", failed.len(), checked.len());
        }
        let verify_s = verify_started.elapsed().as_secs_f64();

        let command_started = Instant::now();
        if let (Some(cmd), true) = (&opts.verify_command, failed.is_empty()) {
            match tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&target)
                .env("COFFER_DRILL_TARGET", &target)
                .status()
                .await
            {
                Ok(st) if st.success() => {}
                Ok(st) => reason = format!("verification command {cmd:?} failed: {st}"),
                Err(e) => reason = format!("verification command {cmd:?} could not run: {e}"),
            }
        }
        let command_s = command_started.elapsed().as_secs_f64();
        let verified = failed.is_empty() && reason.is_empty();
        let duration_ms = started.elapsed().as_millis() as u64;
        let report = DrillReport {
            snapshot_id: snap.id.to_hex(),
            source: coffer_types::dr::source_key(snap),
            verified,
            rto_s: duration_ms as f64 / 1000.0,
            bytes: if bytes > 0 { bytes } else { total_bytes },
            files: if files > 0 { files } else { total_files },
            files_checked: checked.len() as u64,
            failed_files: failed,
            reason,
            reconstructed,
            phases: DrillPhases { restore_s, verify_s, command_s },
            target: opts.target.as_ref().map(|t| t.display().to_string()),
        };
        if opts.record {
            let record = DrRecord {
                id: rand::random(),
                kind: DrKind::Drill,
                repo: self.record.name.clone(),
                source: report.source.clone(),
                snapshot: Some(snap.id),
                started_ms,
                duration_ms,
                bytes: report.bytes,
                files: report.files,
                ok: report.verified,
                reason: truncate(&report.reason),
                failed_files: report.failed_files.iter().take(MAX_DR_FAILED_FILES).map(|f| truncate(f)).collect(),
                failed_count: report.failed_files.len() as u64,
                reconstructed,
                bytes_read: shard_bytes.max(report.bytes),
                bytes_written: report.bytes,
                bytes_cross_site: cross_site,
                steps: vec![],
            };
            self.record_dr(&record).await?;
        }
        Ok(report)
    }

    /// Records a restore, drill or plan run in the catalog (through Raft).
    pub async fn record_dr(&self, record: &DrRecord) -> Result<(), ClientError> {
        let req = pb::RecordDrRequest { record: Some(pb::DrRecord::from(record)) };
        self.meta
            .call("record dr", |mut c| {
                let req = req.clone();
                async move { c.record_dr(req).await }
            })
            .await?;
        Ok(())
    }

    /// Every regular file of the snapshot with its expected content.
    async fn expected_files(&self, snap: &SnapshotRecord) -> Result<Vec<Expected>, ClientError> {
        let source = ClusterSource::new(self.meta.clone(), self.record.name.clone(), self.key.clone());
        let mut out = Vec::new();
        let mut dirs = vec![(PathBuf::new(), snap.root)];
        while let Some((dir, id)) = dirs.pop() {
            let tree = load_tree(&source, id).await?;
            for node in tree.into_nodes() {
                let path = dir.join(node.name_os());
                match node.kind {
                    NodeKind::File { content, lens } => out.push(Expected { path, size: node.size, content, lens }),
                    NodeKind::Dir { subtree } => dirs.push((path, subtree)),
                    NodeKind::Symlink { .. } => {}
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Whether the file at `path` has the size and every chunk the tree says.
    async fn file_matches(&self, path: &Path, e: &Expected) -> bool {
        let Ok(mut f) = tokio::fs::File::open(path).await else { return false };
        match f.metadata().await {
            Ok(m) if m.is_file() && m.len() == e.size => {}
            _ => return false,
        }
        let mut buf = Vec::new();
        for (id, len) in e.content.iter().zip(&e.lens) {
            buf.resize(*len as usize, 0);
            if f.read_exact(&mut buf).await.is_err() || self.key.chunk_id(&buf) != *id {
                return false;
            }
        }
        true
    }

    /// Restores one file alone into `path`, then checks it.
    async fn retry_file(&self, source: &Arc<ClusterSource>, snap: &SnapshotRecord, e: &Expected, path: &Path) -> bool {
        if let Some(parent) = path.parent() {
            if tokio::fs::create_dir_all(parent).await.is_err() {
                return false;
            }
        }
        let Ok(mut out) = tokio::fs::File::create(path).await else { return false };
        let ok = restore_to_writer(source.clone(), snap.id, snap.root, Some(&e.path), &mut out).await.is_ok();
        drop(out);
        ok && self.file_matches(path, e).await
    }

    /// The disaster-recovery records of this repository since `since_ms`.
    pub async fn dr_records(&self, since_ms: u64) -> Result<Vec<DrRecord>, ClientError> {
        list_dr(&self.meta, self.name(), since_ms).await
    }
}

/// Every disaster-recovery record of a repository in a window, and the
/// cluster's prices for their cost.
#[derive(Clone, Debug, Default)]
pub struct DrListing {
    /// Oldest first.
    pub records: Vec<DrRecord>,
    /// `None` when the cluster sets no price.
    pub prices: Option<coffer_types::Prices>,
    /// Packs of the repository lost now (fewer than k shards on nodes up).
    pub lost_packs: Vec<coffer_types::PackId>,
}

/// The disaster-recovery records of `repo` since `since_ms` (needs the
/// repository's admin token or the cluster administrator; no key).
pub async fn list_dr(
    meta: &coffer_rpc::MetaClient,
    repo: &coffer_types::RepoName,
    since_ms: u64,
) -> Result<Vec<DrRecord>, ClientError> {
    Ok(list_dr_all(meta, repo, since_ms, 0).await?.records)
}

/// Like `list_dr`, with the cluster's prices and lost packs: reads page
/// after page (of `page_size` records; 0: the server's default) until the
/// server says there is no more.
pub async fn list_dr_all(
    meta: &coffer_rpc::MetaClient,
    repo: &coffer_types::RepoName,
    since_ms: u64,
    page_size: u32,
) -> Result<DrListing, ClientError> {
    let mut out = DrListing::default();
    let mut page_token = Vec::new();
    loop {
        let req = pb::ListDrRequest { repo: repo.to_string(), since_ms, page_size, page_token };
        let resp = meta
            .call("list dr", |mut c| {
                let req = req.clone();
                async move { c.list_dr(req).await }
            })
            .await?;
        for r in resp.records {
            out.records.push(
                DrRecord::try_from(r)
                    .map_err(|e| ClientError::BadResponse { what: "ListDr", reason: e.to_string() })?,
            );
        }
        out.prices = resp.prices.as_ref().map(coffer_proto::prices_from_pb);
        out.lost_packs = coffer_proto::ids_from_bytes("lost_packs", &resp.lost_packs, coffer_types::PackId::from_slice)
            .map_err(|e| ClientError::BadResponse { what: "ListDr", reason: e.to_string() })?;
        if resp.next.is_empty() {
            return Ok(out);
        }
        if resp.next == req.page_token {
            return Err(ClientError::BadResponse { what: "ListDr", reason: "the page cursor did not move".into() });
        }
        page_token = resp.next;
    }
}

/// The snapshots among `snaps` hit by data loss: those whose reference
/// list names a chunk in one of the `lost` packs, or whose reference list
/// itself cannot be read. Reads the chunk index and the reference lists
/// (no key needed), and nothing when no pack is lost.
pub async fn snapshots_hit_by_loss(
    meta: &coffer_rpc::MetaClient,
    repo: &coffer_types::RepoName,
    snaps: &[SnapshotRecord],
    lost: &[coffer_types::PackId],
) -> Result<std::collections::BTreeSet<coffer_types::SnapshotId>, ClientError> {
    let mut hit = std::collections::BTreeSet::new();
    if lost.is_empty() {
        return Ok(hit);
    }
    let lost: std::collections::HashSet<coffer_types::PackId> = lost.iter().copied().collect();
    let index = crate::check::chunk_index(meta, repo).await?;
    let refs_packs: std::collections::BTreeSet<coffer_types::PackId> = snaps.iter().map(|s| s.refs_pack).collect();
    let placed = crate::check::placed_packs(meta, &refs_packs).await?;
    let pool = coffer_rpc::ShardPool::default();
    for s in snaps {
        let refs = match placed.get(&s.refs_pack) {
            Some(p) if !lost.contains(&s.refs_pack) => {
                crate::check::read_pack(&pool, p).await.bytes.and_then(|b| coffer_pack::decode_refs(&b).ok())
            }
            _ => None,
        };
        let Some(refs) = refs else {
            hit.insert(s.id);
            continue;
        };
        if refs.iter().any(|c| index.get(c).is_some_and(|l| lost.contains(&l.pack))) {
            hit.insert(s.id);
        }
    }
    Ok(hit)
}

/// Keeps a text within the record's bounds, on a character boundary.
pub(crate) fn truncate(s: &str) -> String {
    let max = coffer_types::dr::MAX_DR_TEXT;
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
