//! A backup run from start to acknowledgement: choosing the parent, opening
//! the session, running the pipeline, writing the reference list and
//! committing the snapshot.
//!
//! The invariant kept here: a backup is reported successful only after
//! CommitSnapshot returned, and CommitSnapshot is called only after every
//! pack the snapshot references (data, trees, reference list) is committed.
//! On any failure the session is ended, so the catalog can release what it
//! held for it, and the error that caused the stop is the one reported, not
//! the "channel closed" it provoked in the other stages.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_pack::encode_refs;
use coffer_proto::pb;
use coffer_types::{BackupKind, ChunkId, PackKind, SessionId, SnapshotId, SnapshotRecord, SnapshotStats, Source};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::exclude::Excludes;
use crate::fetch::ClusterSource;
use crate::parent::ParentTrees;
use crate::pipeline::{dedup_stage, packer_stage, seal_worker, ByteBudget, ChannelSink, StageCtx, PLAINTEXT_BUDGET};
use crate::repo::{now_ms, Repository};
use crate::select::parent_for;
use crate::stats::{Counters, Progress, Stages};
use crate::tree::check_name;
use crate::upload::PackWriter;
use crate::walk::{check_paths, TreeLoader, WalkError, WalkOutput, Walker};
use crate::ClientError;
use coffer_rpc::ShardPool;

/// The session lease asked for by default; renewed a third of the way in.
pub(crate) const SESSION_LEASE: Duration = Duration::from_secs(3600);
/// How often the progress callback is called while a backup runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The walker recurses once per directory level; a generous stack keeps
/// deep trees from overflowing it.
const WALKER_STACK: usize = 64 << 20;

/// Called with the backup's progress a few times a second and once at the end.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What to back up and how.
#[derive(Clone, Default)]
pub struct BackupOptions {
    /// Absolute paths. One directory: its contents become the root. Several
    /// paths (or one file): each becomes a top-level entry named by its final
    /// component. Ignored by `backup_stream`.
    pub paths: Vec<PathBuf>,
    pub kind: BackupKind,
    pub tags: Vec<String>,
    /// The host this source lives on; with the path it names the source.
    pub host: String,
    /// Builds on this snapshot instead of the one the kind would choose.
    pub parent: Option<SnapshotId>,
    /// Holds the snapshot until this time (ms since the epoch) once it is
    /// committed, so that `forget` refuses to remove it before then.
    pub hold_until_ms: Option<u64>,
    pub progress: Option<ProgressFn>,
    /// The session lease to ask for (default an hour; the metadata plane
    /// grants at least a second and at most a week). It is renewed every third of it, and a
    /// failed renewal aborts the backup before its snapshot is committed.
    pub session_lease: Option<Duration>,
    /// Entries left out of a paths backup (patterns and marker files).
    pub excludes: Excludes,
    /// The command whose output a stream backup reads (`--stdin-from-command`,
    /// an agent's command source); the snapshot's coverage records that its
    /// source was a command, which exited 0 (a failed one leaves no snapshot).
    pub command: Option<String>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("paths", &self.paths)
            .field("kind", &self.kind)
            .field("tags", &self.tags)
            .field("host", &self.host)
            .field("parent", &self.parent)
            .field("hold_until_ms", &self.hold_until_ms)
            .field("progress", &self.progress.is_some())
            .field("session_lease", &self.session_lease)
            .field("excludes", &self.excludes)
            .field("command", &self.command)
            .finish()
    }
}

/// What a backup did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    pub snapshot_id: String,
    pub parent: Option<String>,
    pub kind: BackupKind,
    pub source: Source,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Plaintext bytes of every file in the snapshot, read or reused.
    pub bytes_scanned: u64,
    /// Plaintext bytes read from the source, each once.
    pub bytes_read: u64,
    /// Of those, bytes of changed files that were compared with the
    /// parent's chunks, matched, and kept without being cut again (a grown
    /// log's old content, a dump's start before its first edit).
    pub bytes_verified: u64,
    /// Plaintext bytes of chunks new to the repository.
    pub bytes_new: u64,
    /// Sealed bytes of new blobs (chunks and trees), before erasure coding.
    pub bytes_stored: u64,
    /// Shard bytes stored, after erasure coding.
    pub bytes_stored_raw: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub packs: u64,
    /// Of those, packs committed short: fewer than k + m shards placed
    /// because too few storage nodes were up. The snapshot is acknowledged
    /// and restores; the repair planner writes the missing shards as soon
    /// as nodes allow.
    pub packs_short: u64,
    /// The snapshot the file counts below are relative to: the parent, or
    /// for a full backup the newest earlier snapshot of the same source.
    pub compared_with: Option<String>,
    /// Files absent from that snapshot.
    pub files_new: u64,
    /// Files present in it with other content.
    pub files_changed: u64,
    /// Files present in it with the same content.
    pub files_unchanged: u64,
    /// Files present in it and gone now.
    pub files_deleted: u64,
    /// Source entries that could not be read and are missing from the snapshot.
    pub errors: u64,
    /// Of the changed files, those that only grew (every old chunk found
    /// again at its place): cut from their old last chunk on.
    pub files_appended: u64,
    /// The first of those errors, one line each.
    pub error_messages: Vec<String>,
    pub duration_s: f64,
    pub stages: Stages,
    /// The committed record.
    #[serde(skip)]
    pub snapshot: SnapshotRecord,
}

/// What was decided before the pipeline starts.
#[derive(Clone, Copy)]
struct Plan<'a> {
    session: SessionId,
    source: &'a Source,
    /// The kind actually run (a first backup is full whatever was asked).
    kind: BackupKind,
    parent: Option<&'a SnapshotRecord>,
    /// What the summary compares with: the parent, or for a full backup the
    /// newest snapshot of the same source.
    compare: Option<&'a SnapshotRecord>,
    opts: &'a BackupOptions,
    start_ms: u64,
    lease: &'a LeaseLost,
}

/// What the source held against what the snapshot protects, from the
/// walk's counts: every regular file read or reused is protected, every
/// entry skipped (a directory counts as one) is not.
fn coverage(c: &Counters, examples: Vec<coffer_types::SkippedEntry>, command: bool) -> coffer_types::Coverage {
    let (unreadable, excluded, vanished) =
        (c.skipped_unreadable.get(), c.skipped_excluded.get(), c.skipped_vanished.get());
    coffer_types::Coverage {
        files_total: c.files.get() + unreadable + excluded + vanished,
        bytes_total: c.bytes_scanned.get() + c.bytes_skipped.get(),
        files_protected: c.files.get(),
        bytes_protected: c.bytes_scanned.get(),
        skipped_unreadable: unreadable,
        skipped_excluded: excluded,
        skipped_vanished: vanished,
        examples,
        command_exit: command.then_some(0),
    }
}

/// What the walker reads.
enum Producer {
    Paths(Vec<PathBuf>, Excludes),
    Stream { reader: Box<dyn Read + Send>, name: Vec<u8> },
}

impl Repository {
    /// Backs up `opts.paths`.
    pub async fn backup(&self, opts: BackupOptions) -> Result<BackupSummary, ClientError> {
        check_paths(&opts.paths)?;
        let mut paths = opts.paths.clone();
        paths.sort();
        let joined = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(",");
        let source = Source { host: opts.host.clone(), path: joined };
        let producer = Producer::Paths(opts.paths.clone(), opts.excludes.clone());
        let done = self.run_backup(source, opts, producer).await;
        self.record_backup(done)
    }

    /// Counts a finished backup in this process's metrics
    /// (`coffer_backup_*{repo}`), which an agent daemon's admin port exports.
    fn record_backup(&self, done: Result<BackupSummary, ClientError>) -> Result<BackupSummary, ClientError> {
        let events = coffer_admin::metrics::events();
        let repo = self.record.name.as_str();
        match &done {
            Ok(s) => {
                events.backup_done(repo, s.bytes_read, s.bytes_stored, s.chunks_new + s.chunks_reused, s.duration_s)
            }
            Err(_) => events.backup_failed(repo),
        }
        done
    }

    /// Backs up one stream (standard input, a dump command's output) as a
    /// snapshot holding a single file named `name`; its source path is
    /// `stdin:NAME`.
    pub async fn backup_stream(
        &self,
        reader: impl Read + Send + 'static,
        name: &str,
        opts: BackupOptions,
    ) -> Result<BackupSummary, ClientError> {
        check_name(name.as_bytes())
            .map_err(|why| ClientError::BadSource { reason: format!("stream name {name:?}: {why}") })?;
        let source = Source { host: opts.host.clone(), path: format!("stdin:{name}") };
        let producer = Producer::Stream { reader: Box::new(reader), name: name.as_bytes().to_vec() };
        let done = self.run_backup(source, opts, producer).await;
        self.record_backup(done)
    }

    async fn run_backup(
        &self,
        source: Source,
        opts: BackupOptions,
        producer: Producer,
    ) -> Result<BackupSummary, ClientError> {
        check_record_text(&source, &opts.tags)?;
        let started = Instant::now();
        let start_ms = now_ms();
        // The session opens before the parent is chosen: garbage collection
        // condemns chunks only while no session is open, so a parent listed
        // after this point still has every chunk it references.
        let session = SessionId::random();
        let lease = opts.session_lease.unwrap_or(SESSION_LEASE);
        begin_session(&self.meta, &self.record.name, session, lease).await?;
        let snaps = match self.snapshots().await {
            Ok(s) => s,
            Err(e) => {
                self.end_session(session).await;
                return Err(e);
            }
        };
        let parent = match (opts.kind, opts.parent) {
            (BackupKind::Full, _) => None,
            (_, Some(id)) => match snaps.iter().find(|s| s.id == id) {
                Some(p) => Some(p.clone()),
                None => {
                    self.end_session(session).await;
                    return Err(ClientError::SnapshotNotFound { spec: id.to_hex() });
                }
            },
            (kind, None) => parent_for(&snaps, &source, kind).cloned(),
        };
        // The first backup of a source is full whatever was asked.
        let kind = if parent.is_some() { opts.kind } else { BackupKind::Full };
        let compare = parent.clone().or_else(|| parent_for(&snaps, &source, BackupKind::Incremental).cloned());
        let lost = LeaseLost::default();
        let renew = self.keep_session(session, lease, &lost);

        let counters = Arc::new(Counters::default());
        let reporter = opts.progress.clone().map(|cb| {
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    cb(&counters.progress(started, false));
                }
            })
        });

        let result = self
            .write_snapshot(
                &Plan {
                    session,
                    source: &source,
                    kind,
                    parent: parent.as_ref(),
                    compare: compare.as_ref(),
                    opts: &opts,
                    start_ms,
                    lease: &lost,
                },
                producer,
                &counters,
            )
            .await;
        if let Err(e) = renew.shutdown(Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "the session-lease worker did not stop in time");
        }
        if let Some(r) = reporter {
            r.abort();
        }
        let (record, errors) = match result {
            Ok(done) => done,
            Err(e) => {
                self.end_session(session).await;
                return Err(e);
            }
        };
        if let Some(until) = opts.hold_until_ms {
            // The record exists only now, so the hold is a second command; a
            // failure leaves a committed but unheld snapshot, which is said.
            self.hold(record.id, until).await.map_err(|e| ClientError::SessionFailed {
                session,
                reason: format!("snapshot {} was committed but holding it failed: {e}", record.id),
            })?;
        }
        if let Some(cb) = &opts.progress {
            cb(&counters.progress(started, true));
        }
        Ok(BackupSummary {
            snapshot_id: record.id.to_hex(),
            parent: record.parent.map(|p| p.to_hex()),
            kind,
            source,
            files: counters.files.get(),
            dirs: counters.dirs.get(),
            symlinks: counters.symlinks.get(),
            bytes_scanned: counters.bytes_scanned.get(),
            bytes_read: counters.bytes_read.get(),
            bytes_verified: counters.bytes_verified.get(),
            bytes_new: counters.bytes_new.get(),
            bytes_stored: counters.bytes_stored.get(),
            bytes_stored_raw: counters.bytes_stored_raw.get(),
            chunks_new: counters.chunks_new.get(),
            chunks_reused: counters.chunks_reused.get(),
            packs: counters.packs.get(),
            packs_short: counters.packs_short.get(),
            compared_with: compare.map(|c| c.id.to_hex()),
            files_new: counters.files_new.get(),
            files_changed: counters.files_changed.get(),
            files_unchanged: counters.files_unchanged.get(),
            files_deleted: counters.files_deleted.get(),
            errors: counters.errors.get(),
            files_appended: counters.files_appended.get(),
            error_messages: errors,
            duration_s: started.elapsed().as_secs_f64(),
            stages: counters.stages(),
            snapshot: record,
        })
    }

    /// Runs the pipeline, stores the reference list and commits the snapshot.
    async fn write_snapshot(
        &self,
        plan: &Plan<'_>,
        producer: Producer,
        counters: &Arc<Counters>,
    ) -> Result<(SnapshotRecord, Vec<String>), ClientError> {
        let Plan { session, source, kind, parent, compare, opts, start_ms, lease } = *plan;
        let ctx = Arc::new(StageCtx {
            writer: PackWriter {
                meta: self.meta.clone(),
                repo: self.record.name.clone(),
                session,
                shards: Arc::new(ShardPool::default()),
                counters: counters.clone(),
            },
            counters: counters.clone(),
            dedup: Mutex::default(),
            verified_packs: (kind == BackupKind::Full).then(Mutex::default),
        });
        let compare_root = compare.map(|p| p.root);
        let read_all = kind == BackupKind::Full;
        let walk = self.run_pipeline(&ctx, producer, compare_root, read_all, counters).await?;

        lease.check(session)?;
        let refs = encode_refs(&walk.refs);
        let refs_pack = ctx.writer.store(PackKind::Refs, refs, &[]).await?;
        let stats = SnapshotStats {
            files: counters.files.get(),
            dirs: counters.dirs.get(),
            bytes_scanned: counters.bytes_scanned.get(),
            bytes_read: counters.bytes_read.get(),
            bytes_new: counters.bytes_new.get(),
            bytes_stored: counters.bytes_stored.get(),
            chunks_new: counters.chunks_new.get(),
            chunks_reused: counters.chunks_reused.get(),
            errors: counters.errors.get(),
            coverage: Some(coverage(counters, walk.skipped.clone(), opts.command.is_some())),
        };
        let record = SnapshotRecord {
            id: SnapshotId::random(),
            repo: self.record.name.clone(),
            source: source.clone(),
            kind,
            parent: parent.map(|p| p.id),
            start_ms,
            end_ms: now_ms(),
            root: walk.root,
            stats,
            tags: opts.tags.clone(),
            refs_pack: refs_pack.id,
            refs_count: walk.refs.len() as u64,
        };
        // A lapsed lease may have let garbage collection condemn chunks this
        // backup deduplicated against; the metadata plane refuses such a
        // commit too, this says why before asking.
        lease.check(session)?;
        let req =
            pb::CommitSnapshotRequest { session_id: session.0.to_vec(), snapshot: Some(pb::Snapshot::from(&record)) };
        self.meta
            .call("CommitSnapshot", |mut c| {
                let req = req.clone();
                async move { c.commit_snapshot(req).await }
            })
            .await
            .map_err(|e| ClientError::SessionFailed { session, reason: format!("committing the snapshot: {e}") })?;
        Ok((record, walk.errors))
    }

    /// Wires the walker thread, dedup, the sealers and the packer together
    /// and waits for all of them.
    async fn run_pipeline(
        &self,
        ctx: &Arc<StageCtx>,
        producer: Producer,
        parent_root: Option<ChunkId>,
        read_all: bool,
        counters: &Arc<Counters>,
    ) -> Result<WalkOutput, ClientError> {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let budget = ByteBudget::new(PLAINTEXT_BUDGET);
        // Channels of batches (`pipeline::BATCH_BYTES` each); the budget
        // bounds the bytes in flight, these only the number of batches.
        let (walk_tx, walk_rx) = mpsc::channel(64);
        let (seal_tx, seal_rx) = mpsc::channel(workers * 2);
        let (out_tx, out_rx) = mpsc::channel(workers * 2);

        let packer = tokio::spawn(packer_stage(ctx.clone(), out_rx));
        let seal_rx = Arc::new(Mutex::new(seal_rx));
        let sealers: Vec<_> = (0..workers)
            .map(|_| {
                let (key, counters, rx, tx) = (self.key.clone(), counters.clone(), seal_rx.clone(), out_tx.clone());
                tokio::task::spawn_blocking(move || seal_worker(key, counters, rx, tx))
            })
            .collect();
        drop((seal_rx, out_tx));
        let dedup = tokio::spawn(dedup_stage(ctx.clone(), walk_rx, seal_tx));

        let (done_tx, done_rx) = oneshot::channel();
        let key = self.key.clone();
        let walk_counters = counters.clone();
        let sink = ChannelSink::new(walk_tx, budget.clone());
        let parent_trees = parent_root.map(|root| {
            let source = Arc::new(ClusterSource::new(self.meta.clone(), self.record.name.clone(), self.key.clone()));
            ParentTrees::start(source, tokio::runtime::Handle::current(), root)
        });
        std::thread::Builder::new()
            .name("coffer-walk".into())
            .stack_size(WALKER_STACK)
            .spawn(move || {
                let loader = parent_trees.as_ref().map(|p| p as &dyn TreeLoader);
                let mut walker = Walker::new(&key, sink, loader, &walk_counters);
                if read_all {
                    walker = walker.read_everything();
                }
                let result = match producer {
                    Producer::Paths(paths, excludes) => {
                        walker.with_read_ahead().with_excludes(excludes).walk_paths(&paths, parent_root)
                    }
                    Producer::Stream { reader, name } => walker.walk_stream(reader, &name, parent_root),
                };
                let _ = done_tx.send(result);
            })
            .map_err(|e| ClientError::task("start walker", e))?;

        let walked = done_rx.await.map_err(|e| ClientError::task("walker", e));
        let walked = match walked {
            Ok(Ok(out)) => out,
            other => {
                // Stop everything, then report the cause: the walker's own
                // error, or the stage whose failure stopped it.
                budget.close();
                let cause = match other {
                    Ok(Err(WalkError::Fatal(e))) | Err(e) => Some(e),
                    _ => None,
                };
                let cause = match cause {
                    Some(e) => {
                        dedup.abort();
                        packer.abort();
                        Some(e)
                    }
                    // The walker was stopped from downstream. Dedup ends once
                    // the walker has, so waiting on it is safe.
                    None => match dedup.await {
                        Ok(Err(e)) => {
                            packer.abort();
                            Some(e)
                        }
                        _ => None,
                    },
                };
                let cause = match cause {
                    Some(e) => e,
                    None => match packer.await {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => ClientError::task("backup pipeline", "a stage stopped without saying why"),
                        Err(e) => ClientError::task("packer", e),
                    },
                };
                for s in sealers {
                    let _ = s.await;
                }
                return Err(cause);
            }
        };
        let dedup_result = dedup.await.map_err(|e| ClientError::task("dedup", e)).and_then(|r| r);
        if let Err(e) = dedup_result {
            budget.close();
            packer.abort();
            return Err(e);
        }
        for s in sealers {
            s.await.map_err(|e| ClientError::task("seal", e))?;
        }
        packer.await.map_err(|e| ClientError::task("packer", e))??;
        Ok(walked)
    }

    /// Renews the session lease in the background for long backups, as a
    /// worker on a runner this backup owns (and shuts down when it ends). A
    /// failed renewal is recorded in `lost`.
    fn keep_session(&self, session: SessionId, lease: Duration, lost: &LeaseLost) -> coffer_worker::Runner {
        let runner = coffer_worker::Runner::new();
        runner.spawn(LeaseRenewal {
            meta: self.meta.clone(),
            repo: self.record.name.clone(),
            session,
            lease,
            every: lease / 3,
            first: true,
            lost: lost.clone(),
        });
        runner
    }

    /// Ends a failed session; best effort, since the lease expires anyway.
    async fn end_session(&self, session: SessionId) {
        end_session(&self.meta, session).await
    }
}

/// Ends a session that committed no snapshot; best effort, since the lease
/// expires anyway.
pub(crate) async fn end_session(meta: &coffer_rpc::MetaClient, session: SessionId) {
    let req = pb::EndSessionRequest { session_id: session.0.to_vec() };
    let ended = meta
        .call("EndSession", |mut c| {
            let req = req.clone();
            async move { c.end_session(req).await }
        })
        .await;
    if let Err(e) = ended {
        tracing::warn!(%session, error = %e, "ending the session failed; its lease will expire");
    }
}

/// Why a backup's session lease could not be renewed, once it could not.
#[derive(Clone, Default)]
struct LeaseLost(Arc<Mutex<Option<String>>>);

impl LeaseLost {
    fn set(&self, why: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
    }

    /// Fails once a renewal has failed: the backup must not commit.
    fn check(&self, session: SessionId) -> Result<(), ClientError> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            None => Ok(()),
            Some(why) => Err(ClientError::SessionFailed {
                session,
                reason: format!("the session lease could not be renewed, so the snapshot was not committed: {why}"),
            }),
        }
    }
}

/// Renews a backup's session lease every `every`; the first step only
/// schedules (the session was just begun). The first failure ends it: the
/// client already retried through failovers, and a lease the metadata plane
/// refused to renew has lapsed for good, so the backup is to abort.
struct LeaseRenewal {
    meta: Arc<coffer_rpc::MetaClient>,
    repo: coffer_types::RepoName,
    session: SessionId,
    lease: Duration,
    every: Duration,
    first: bool,
    lost: LeaseLost,
}

impl coffer_worker::Worker for LeaseRenewal {
    type Error = ClientError;
    fn name(&self) -> String {
        "session-lease".into()
    }
    async fn work(&mut self, stop: &coffer_worker::StopSignal) -> Result<coffer_worker::WorkerState, ClientError> {
        if !std::mem::take(&mut self.first) {
            tokio::select! {
                r = begin_session(&self.meta, &self.repo, self.session, self.lease) => if let Err(e) = r {
                    tracing::error!(session = %self.session, error = %e, "renewing the session lease failed; the backup aborts");
                    self.lost.set(e.to_string());
                    return Ok(coffer_worker::WorkerState::Done);
                },
                _ = stop.stopped() => return Ok(coffer_worker::WorkerState::Done),
            }
        }
        Ok(coffer_worker::WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.every).await
    }
}

/// The snapshot's text within what the catalog accepts, checked before
/// anything is uploaded rather than refused at the commit.
fn check_record_text(source: &Source, tags: &[String]) -> Result<(), ClientError> {
    use coffer_proto::limits::{MAX_HOST_BYTES, MAX_PATH_BYTES, MAX_TAGS, MAX_TAG_BYTES};
    let too_long = |what: &str, len: usize, max: usize| ClientError::BadSource {
        reason: format!("the {what} is {len} bytes; the catalog keeps at most {max}"),
    };
    if source.host.len() > MAX_HOST_BYTES {
        return Err(too_long("host name", source.host.len(), MAX_HOST_BYTES));
    }
    if source.path.len() > MAX_PATH_BYTES {
        return Err(too_long("source path list", source.path.len(), MAX_PATH_BYTES));
    }
    if tags.len() > MAX_TAGS {
        return Err(ClientError::BadSource {
            reason: format!("{} tags; a snapshot keeps at most {MAX_TAGS}", tags.len()),
        });
    }
    if let Some(t) = tags.iter().find(|t| t.len() > MAX_TAG_BYTES) {
        return Err(too_long("tag", t.len(), MAX_TAG_BYTES));
    }
    Ok(())
}

/// Begins (or renews) `session` with a lease of `lease`.
pub(crate) async fn begin_session(
    meta: &coffer_rpc::MetaClient,
    repo: &coffer_types::RepoName,
    session: SessionId,
    lease: Duration,
) -> Result<(), ClientError> {
    let req = pb::BeginSessionRequest {
        repo: repo.to_string(),
        session_id: session.0.to_vec(),
        // The metadata plane refuses a lease longer than its bound.
        lease_ms: (lease.as_millis() as u64).min(coffer_proto::limits::MAX_LEASE_MS),
    };
    meta.call("BeginSession", |mut c| {
        let req = req.clone();
        async move { c.begin_session(req).await }
    })
    .await
    .map_err(|e| ClientError::SessionFailed { session, reason: format!("opening the session: {e}") })?;
    Ok(())
}
