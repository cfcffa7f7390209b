//! The garbage collector as a duty of the metadata leader: the `gc` worker.
//!
//! It owns reclaiming space while backups run, with the rules of `gc` (the
//! state machine decides; this worker only proposes): for every repository
//! it marks from the reference lists of the snapshots that exist at a
//! commit sequence, condemns the rest of the chunk index (`GcCondemn`),
//! waits until every session open at condemnation has ended, re-marks from
//! every snapshot committed since the mark (from the commit log, forgotten
//! ones included), spares what those reference and sweeps the rest
//! (`GcSweep`), then drops packs nothing points into (`DropPacks`) and
//! deletes their shards. It never holds a repository key: reference lists
//! are unencrypted, read here through `ShardPool` and decoded with the
//! key-free `coffer_types::refs`.
//!
//! Its state is the catalog's, so a new leader resumes where the old one
//! stopped: an open round (`gr/`) is finished by the next run, and a run
//! asked for (`GcState::requested`) but not answered (`GcState::last`) is
//! run by whichever node leads. A run crashed half-way leaves at worst
//! shards of dropped packs undeleted: orphans the storage nodes collect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use coffer_erasure::Codec;
use coffer_rpc::ShardPool;
use coffer_types::{ChunkId, ChunkLocation, NodeRecord, PackId, PackKind, PackRecord, RepoName, SnapshotRecord};
use coffer_worker::{StopSignal, Worker, WorkerState};

use crate::command::{Command, Rejection, MAX_CHUNKS_PER_COMMAND};
use crate::gc::{self, GcRunRecord};
use crate::kv;
use crate::node::{now_ms, MetaNode};
use crate::rewrite::{mostly_dead, Throttle};
use crate::MetaError;

/// How often the worker looks at the catalog for work (a request, the
/// schedule, an open round whose sessions may have ended).
const POLL: Duration = Duration::from_millis(500);
/// How long one run waits for the sessions that were open at condemnation
/// to end before it leaves the round to the next run.
const SESSION_WAIT: Duration = Duration::from_secs(120);

/// What the node's services read of the collector (status, `RunGc`).
#[derive(Debug, Default)]
pub struct GcShared {
    pub running: AtomicBool,
    pub runs: AtomicU64,
    pub chunks_swept: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub packs_dropped: AtomicU64,
    pub rounds_open: AtomicU64,
    /// Mostly dead packs rewritten by this node's runs, and the shard
    /// bytes their copies took.
    pub packs_rewritten: AtomicU64,
    pub bytes_rewritten: AtomicU64,
    /// Mostly dead packs the current run still has to rewrite.
    pub rewrite_pending: AtomicU64,
}

pub(crate) struct Collector {
    pub node: Weak<MetaNode>,
    /// Time between scheduled runs; `None`: only runs asked for.
    pub interval: Option<Duration>,
    pub pool: ShardPool,
    /// Shard bytes a second for pack rewrites.
    pub rewrite_bandwidth: u64,
    /// When this node's collector started (ms since the epoch): a cluster
    /// that never collected counts its first interval from here, so a
    /// fresh cluster does not collect at once, beside its first backups.
    pub since_ms: u64,
}

impl Worker for Collector {
    type Error = MetaError;
    fn name(&self) -> String {
        "gc".into()
    }
    async fn work(&mut self, stop: &StopSignal) -> Result<WorkerState, MetaError> {
        let Some(n) = self.node.upgrade() else { return Ok(WorkerState::Done) };
        if n.require_leader().is_err() {
            return Ok(WorkerState::Idle);
        }
        n.read_barrier().await?;
        let state = gc::gc_state(n.sm.tree())?;
        let rounds = open_rounds(&n)?;
        n.gc.rounds_open.store(rounds.len() as u64, Relaxed);
        let asked = state.last.as_ref().is_none_or(|l| l.run < state.requested) && state.requested > 0;
        let scheduled = self.interval.is_some_and(|every| {
            let last = state.last.as_ref().map_or(self.since_ms, |l| l.finished_ms);
            now_ms().saturating_sub(last) >= every.as_millis() as u64
        });
        if !(asked || scheduled || !rounds.is_empty()) {
            return Ok(WorkerState::Idle);
        }
        n.gc.running.store(true, Relaxed);
        let record = run(&n, &self.pool, state.requested, self.rewrite_bandwidth, stop).await;
        n.gc.running.store(false, Relaxed);
        n.gc.rewrite_pending.store(0, Relaxed);
        let record = record?;
        n.gc.runs.fetch_add(1, Relaxed);
        n.gc.chunks_swept.fetch_add(record.chunks_swept, Relaxed);
        n.gc.bytes_freed.fetch_add(record.bytes_freed, Relaxed);
        n.gc.packs_dropped.fetch_add(record.packs_dropped, Relaxed);
        tracing::info!(
            run = record.run,
            swept = record.chunks_swept,
            spared = record.chunks_spared,
            packs_dropped = record.packs_dropped,
            packs_rewritten = record.packs_rewritten,
            bytes_freed = record.bytes_freed,
            waiting = record.repos_waiting,
            "garbage collection run done"
        );
        n.raft_write(Command::GcRunDone { run: record }).await?;
        Ok(WorkerState::Idle)
    }
    async fn wait_for_work(&mut self) {
        tokio::time::sleep(POLL).await
    }
    fn progress(&self) -> Vec<(&'static str, u64)> {
        let Some(n) = self.node.upgrade() else { return Vec::new() };
        vec![
            ("runs", n.gc.runs.load(Relaxed)),
            ("running", n.gc.running.load(Relaxed) as u64),
            ("rounds_open", n.gc.rounds_open.load(Relaxed)),
            ("chunks_swept", n.gc.chunks_swept.load(Relaxed)),
            ("packs_dropped", n.gc.packs_dropped.load(Relaxed)),
            ("bytes_freed", n.gc.bytes_freed.load(Relaxed)),
            ("packs_rewritten", n.gc.packs_rewritten.load(Relaxed)),
            ("bytes_rewritten", n.gc.bytes_rewritten.load(Relaxed)),
            ("rewrite_pending", n.gc.rewrite_pending.load(Relaxed)),
        ]
    }
    fn backoff(&self) -> coffer_worker::Backoff {
        coffer_worker::Backoff { first: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

fn repos(n: &MetaNode) -> Result<Vec<RepoName>, MetaError> {
    let mut out = Vec::new();
    for item in n.sm.tree().scan_prefix(b"r/") {
        let (k, _) = item?;
        let name = String::from_utf8_lossy(&k[2..]).into_owned();
        out.push(RepoName::new(name).map_err(|e| MetaError::Codec { what: "repository key", reason: e.to_string() })?);
    }
    Ok(out)
}

fn open_rounds(n: &MetaNode) -> Result<Vec<RepoName>, MetaError> {
    let mut out = Vec::new();
    for r in repos(n)? {
        if gc::round_of(n.sm.tree(), &r)?.is_some() {
            out.push(r);
        }
    }
    Ok(out)
}

/// One run over every repository. A repository that fails is reported in
/// the record and the others still run; leadership lost fails the run.
async fn run(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    requested: u64,
    rewrite_bandwidth: u64,
    stop: &StopSignal,
) -> Result<GcRunRecord, MetaError> {
    let mut rec = GcRunRecord { run: requested, started_ms: now_ms(), by: n.config.id.0, ..Default::default() };
    let mut throttle = Throttle::new(rewrite_bandwidth);
    for repo in repos(n)? {
        if stop.is_stopped() {
            return Err(MetaError::Raft("stopping".into()));
        }
        match collect(n, pool, &repo, &mut rec, &mut throttle, stop).await {
            Ok(()) => {}
            Err(e @ (MetaError::NotLeader { .. } | MetaError::RaftWrite { .. } | MetaError::ReadBarrier { .. })) => {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!(%repo, error = %e, "garbage collection of a repository failed");
                if !rec.error.is_empty() {
                    rec.error.push_str("; ");
                }
                rec.error.push_str(&format!("{repo}: {e}"));
            }
        }
    }
    rec.finished_ms = now_ms();
    Ok(rec)
}

fn snapshots_of(n: &MetaNode, repo: &RepoName) -> Result<Vec<SnapshotRecord>, MetaError> {
    Ok(kv::scan::<SnapshotRecord>(n.sm.tree(), "snapshot", kv::SNAPSHOT_PREFIX)?
        .into_iter()
        .filter(|s| s.repo == *repo)
        .collect())
}

fn index_of(n: &MetaNode, repo: &RepoName) -> Result<HashMap<ChunkId, ChunkLocation>, MetaError> {
    let prefix = kv::chunk_prefix(repo);
    let mut out = HashMap::new();
    for item in n.sm.tree().scan_prefix(&prefix) {
        let (k, v) = item?;
        let id = ChunkId::from_slice(&k[prefix.len()..])
            .map_err(|e| MetaError::Codec { what: "chunk index key", reason: e.to_string() })?;
        out.insert(id, kv::decode("chunk", &v)?);
    }
    Ok(out)
}

fn batches<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.is_empty() {
        return vec![Vec::new()];
    }
    items.chunks(MAX_CHUNKS_PER_COMMAND).map(|c| c.to_vec()).collect()
}

async fn collect(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    repo: &RepoName,
    rec: &mut GcRunRecord,
    throttle: &mut Throttle,
    stop: &StopSignal,
) -> Result<(), MetaError> {
    let tree = n.sm.tree();
    if gc::round_of(tree, repo)?.is_none() {
        // Mark at a commit sequence read before the snapshots, so that every
        // snapshot missing from the mark was committed after it.
        n.read_barrier().await?;
        let marked_seq = gc::commit_seq(tree, repo)?;
        let snaps = snapshots_of(n, repo)?;
        let mut live = HashSet::new();
        for s in &snaps {
            live.extend(read_refs(n, pool, &s.refs_pack).await?);
        }
        rec.marks += 1;
        let index = index_of(n, repo)?;
        let condemned: HashSet<ChunkId> = gc::condemned_chunks(tree, repo)?.into_iter().collect();
        let dead: Vec<ChunkId> =
            index.keys().filter(|c| !live.contains(*c) && !condemned.contains(*c)).copied().collect();
        rec.snapshots += snaps.len() as u64;
        rec.chunks_indexed += index.len() as u64;
        rec.chunks_live += index.keys().filter(|c| live.contains(*c)).count() as u64;
        if !dead.is_empty() || !condemned.is_empty() {
            // The mark is cited by its sequence and size, so the entry does
            // not grow with the catalog; apply derives the marked set.
            for chunks in batches(&dead) {
                let cmd = Command::GcCondemnAt {
                    repo: repo.clone(),
                    chunks,
                    marked_seq,
                    marked_count: snaps.len() as u64,
                    time_ms: now_ms(),
                };
                n.raft_write(cmd).await?;
            }
            rec.chunks_condemned += dead.len() as u64;
        }
    }
    if let Some(round) = gc::round_of(tree, repo)? {
        if !sweep(n, pool, repo, &round, rec, stop).await? {
            rec.repos_waiting += 1;
            return Ok(());
        }
    }
    // Nothing is condemned now (the round is over), so every entry is live:
    // copy the live blobs out of mostly dead packs before dropping packs,
    // so the old ones go in this same run.
    if gc::round_of(tree, repo)?.is_none() {
        crate::rewrite::rewrite_mostly_dead(n, pool, repo, rec, throttle, stop).await?;
    }
    drop_dead_packs(n, pool, repo, rec).await
}

/// Waits for the round's sessions, re-marks and sweeps; false when the
/// sessions outlasted this run's wait.
async fn sweep(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    repo: &RepoName,
    round: &gc::GcRound,
    rec: &mut GcRunRecord,
    stop: &StopSignal,
) -> Result<bool, MetaError> {
    let tree = n.sm.tree();
    let deadline = tokio::time::Instant::now() + SESSION_WAIT;
    loop {
        let now = now_ms();
        let mut open = false;
        for s in &round.sessions {
            let rec: Option<coffer_types::SessionRecord> = kv::get(tree, "session", &kv::session_key(s))?;
            open |= rec.is_some_and(|r| r.lease_until_ms > now);
        }
        if !open {
            break;
        }
        if tokio::time::Instant::now() >= deadline || stop.is_stopped() {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
    let round = gc::round_of(tree, repo)?.unwrap_or_else(|| round.clone());
    loop {
        n.read_barrier().await?;
        let through = gc::commit_seq(tree, repo)?;
        let mut referenced = HashSet::new();
        for (seq, entry) in gc::logged_commits(tree, repo, round.marked_seq)? {
            if seq > through {
                break;
            }
            referenced.extend(read_refs(n, pool, &entry.refs_pack).await?);
        }
        rec.marks += 1;
        let condemned = gc::condemned_chunks(tree, repo)?;
        let (spare, doomed): (Vec<ChunkId>, Vec<ChunkId>) = condemned.into_iter().partition(|c| referenced.contains(c));
        let mut commands: Vec<(Vec<ChunkId>, Vec<ChunkId>)> =
            spare.chunks(MAX_CHUNKS_PER_COMMAND).map(|c| (Vec::new(), c.to_vec())).collect();
        commands.extend(doomed.chunks(MAX_CHUNKS_PER_COMMAND).map(|c| (c.to_vec(), Vec::new())));
        if commands.is_empty() {
            // Nothing condemned any more (all revived): the sweep still ends the round.
            commands.push((Vec::new(), Vec::new()));
        }
        let mut behind = false;
        for (sweep, spare) in commands {
            let (swept, spared) = (sweep.len() as u64, spare.len() as u64);
            let cmd =
                Command::GcSweep { repo: repo.clone(), sweep, spare, remarked_through: through, time_ms: now_ms() };
            match n.raft_write(cmd).await {
                Ok(_) => {
                    rec.chunks_swept += swept;
                    rec.chunks_spared += spared;
                }
                // A session the round recorded committed in between: its
                // snapshot raised the floor; re-mark and try again.
                Err(MetaError::Rejected(Rejection::RemarkBehind { .. })) => {
                    behind = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if !behind {
            return Ok(true);
        }
    }
}

/// Drops the repository's packs nothing points into, then deletes their
/// shards; counts the partly dead ones.
async fn drop_dead_packs(
    n: &Arc<MetaNode>,
    pool: &ShardPool,
    repo: &RepoName,
    rec: &mut GcRunRecord,
) -> Result<(), MetaError> {
    let tree = n.sm.tree();
    n.read_barrier().await?;
    let index = index_of(n, repo)?;
    let mut live_bytes: HashMap<PackId, u64> = HashMap::new();
    for loc in index.values() {
        *live_bytes.entry(loc.pack).or_default() += loc.len as u64;
    }
    let mut named: HashSet<PackId> = snapshots_of(n, repo)?.iter().map(|s| s.refs_pack).collect();
    named.extend(gc::logged_commits(tree, repo, 0)?.into_iter().map(|(_, e)| e.refs_pack));
    let packs: Vec<PackRecord> =
        kv::scan::<PackRecord>(tree, "pack", kv::PACK_PREFIX)?.into_iter().filter(|p| p.repo == *repo).collect();
    let mut candidates = Vec::new();
    for p in &packs {
        match live_bytes.get(&p.id) {
            None if !named.contains(&p.id) => candidates.push(p.id),
            Some(live) if p.kind == PackKind::Data && mostly_dead(p.pack_len, *live) => {
                rec.packs_partly_dead += 1;
            }
            _ => {}
        }
    }
    let by_id: HashMap<PackId, &PackRecord> = packs.iter().map(|p| (p.id, p)).collect();
    let nodes: HashMap<_, NodeRecord> =
        kv::scan::<NodeRecord>(tree, "node", kv::NODE_PREFIX)?.into_iter().map(|r| (r.id, r)).collect();
    for batch in candidates.chunks(MAX_CHUNKS_PER_COMMAND) {
        n.raft_write(Command::DropPacks { repo: repo.clone(), packs: batch.to_vec() }).await?;
        for id in batch {
            // The state machine keeps any pack a session may still use;
            // only those whose record is gone are deleted.
            if tree.contains_key(kv::pack_key(id))? {
                continue;
            }
            let Some(p) = by_id.get(id) else { continue };
            rec.packs_dropped += 1;
            for s in p.shards.iter().filter(|s| s.is_placed()) {
                let Some(node) = nodes.get(&s.node) else {
                    rec.shards_not_deleted += 1;
                    continue;
                };
                match pool.delete(&node.addr, *id, s.index).await {
                    Ok(()) => rec.bytes_freed += p.shard_len,
                    Err(coffer_rpc::ShardFailure::Absent) => {}
                    Err(e) => {
                        tracing::warn!(pack = %id, shard = s.index.0, node = %s.node, error = %e, "shard not deleted; it is an orphan now");
                        rec.shards_not_deleted += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads a reference-list pack and decodes it.
async fn read_refs(n: &MetaNode, pool: &ShardPool, pack: &PackId) -> Result<Vec<ChunkId>, MetaError> {
    let unreadable = |reason: String| MetaError::GcUnreadable { pack: *pack, reason };
    let Some(rec) = kv::get::<PackRecord>(n.sm.tree(), "pack", &kv::pack_key(pack))? else {
        return Err(unreadable("its pack record is missing".into()));
    };
    let bytes = read_pack(n, pool, &rec).await.map_err(unreadable)?;
    coffer_types::refs::decode_refs(&bytes).map_err(|e| unreadable(e.to_string()))
}

/// Reads a whole pack (its data shards, or any k of its shards when one
/// fails, each checked against its checksum); the error says why not.
pub(crate) async fn read_pack(n: &MetaNode, pool: &ShardPool, rec: &PackRecord) -> Result<Vec<u8>, String> {
    let nodes: HashMap<_, NodeRecord> = kv::scan::<NodeRecord>(n.sm.tree(), "node", kv::NODE_PREFIX)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; rec.params.total()];
    let mut bad = Vec::new();
    let mut good = 0;
    for s in &rec.shards {
        if good == rec.params.k() {
            break;
        }
        let Some(node) = nodes.get(&s.node).filter(|_| s.is_placed()) else { continue };
        match pool.get(&node.addr, rec.id, s.index, 0, None).await {
            Ok(b) if b.len() as u64 == rec.shard_len && *blake3::hash(&b).as_bytes() == s.checksum.0 => {
                if let Some(slot) = shards.get_mut(s.index.0 as usize) {
                    *slot = Some(b);
                    good += 1;
                }
            }
            Ok(_) => bad.push(format!("shard {} on node {}: length or checksum mismatch", s.index.0, s.node)),
            Err(e) => bad.push(format!("shard {} on node {}: {e}", s.index.0, s.node)),
        }
    }
    if good < rec.params.k() {
        return Err(format!("{good} of {} shards readable: {}", rec.params.k(), bad.join("; ")));
    }
    let codec = Codec::new(rec.params).map_err(|e| e.to_string())?;
    codec.reconstruct_data(&mut shards).map_err(|e| e.to_string())?;
    codec.join(&shards, rec.pack_len).map_err(|e| e.to_string())
}
