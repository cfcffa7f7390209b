//! The leader's repair worker: failure detection turned into incidents,
//! and the rebuild queue drained onto storage nodes.
//!
//! ```text
//!  every tick (leader only; `workers::Planner`):
//!    node states (liveness) ──► newly down? ──► OpenIncident (through Raft)
//!    packs × (down nodes ∪ bad shards ∪ site rule) ──► tasks, most at risk first
//!    task ──► target node (place_one; same node for a bad shard) ──RebuildShard──► verified on disk
//!         ──► MoveShard (through Raft) ──► incident bytes and times
//!    node holds no more placed shards ──► CloseIncident
//! ```
//!
//! The queue is not stored: it is derived each tick from the catalog and
//! liveness, so a new leader resumes where the old one stopped, and a task
//! done twice is harmless (the target finds its shard already whole; the
//! second `MoveShard` is refused, since the shard is no longer on `from`).
//! Placement changes only through Raft, and only after the new shard is
//! written and verified, so redundancy never drops below what it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use coffer_placement::{place_one, satisfies, Candidate, Policy};
use coffer_proto::pb;
use coffer_rpc::ShardPool;
use coffer_types::{NodeId, NodeRecord, NodeState, PackId, PackRecord, ShardIndex, SiteId};

use crate::command::{BadShardRecord, Command, CommandResult, RepairWork};
use crate::kv;
use crate::node::{now_ms, MetaNode};
use crate::MetaError;

/// How a rebuild runs; set on the metadata node.
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// Rebuilds in flight across the cluster.
    pub parallelism: usize,
    /// Rebuilds in flight per target node.
    pub per_node: usize,
    /// Bytes per second each node may read for rebuilds (0: unlimited).
    pub bandwidth: u64,
    pub tick: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self { parallelism: 8, per_node: 2, bandwidth: 100 << 20, tick: Duration::from_millis(500) }
    }
}

/// What `coffer status` shows of the repair work.
#[derive(Debug, Default, Clone)]
pub struct RepairStatus {
    pub queued: u64,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    pub bytes_written: u64,
    /// Recent seconds per finished task, for the ETA.
    pub secs_per_task: f64,
    pub site_degraded: u64,
}

#[derive(Default)]
pub struct RepairState {
    pub status: Mutex<RepairStatus>,
    /// Shards being rebuilt or having a copy deleted, with the node the
    /// work writes to (a rebuild's target, a deletion's node).
    in_flight: Mutex<HashMap<(PackId, u8), NodeId>>,
    /// Rebuild targets that failed lately, skipped until their back-off ends.
    target_failures: Mutex<HashMap<NodeId, TargetFailures>>,
    /// Sweep passes, nodes listed, and listings that failed (the node is
    /// skipped for that pass, with a WARN line naming it).
    pub sweeps: std::sync::atomic::AtomicU64,
    pub sweep_nodes_listed: std::sync::atomic::AtomicU64,
    pub sweep_list_failures: std::sync::atomic::AtomicU64,
    /// Full passes (every node listed), and copies the routine passes deleted.
    pub sweep_full_passes: std::sync::atomic::AtomicU64,
    pub sweep_copies_deleted: std::sync::atomic::AtomicU64,
    /// Clients to storage nodes, shared by every rebuild, sweep and delete.
    shards: Arc<ShardPool>,
    /// Wakes the planner before its tick: a rebuild finished (a slot of
    /// `per_node` is free again) or a storage node came back (a home for
    /// the shards of short packs). `per_node` limits rebuilds in flight,
    /// not rebuilds per tick.
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

/// A rebuild target's recent failures: after each one it is skipped for a
/// back-off that doubles, from `TARGET_BACKOFF_FIRST` to `TARGET_BACKOFF_MAX`.
#[derive(Clone, Copy, Debug)]
struct TargetFailures {
    consecutive: u32,
    until: Instant,
}

const TARGET_BACKOFF_FIRST: Duration = Duration::from_secs(5);
const TARGET_BACKOFF_MAX: Duration = Duration::from_secs(300);

impl RepairState {
    /// Whether `node` failed as a rebuild target and is still backing off.
    fn backing_off(&self, node: NodeId) -> bool {
        let failures = self.target_failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(&node).is_some_and(|f| f.until > Instant::now())
    }

    /// Records a rebuild on `node` that failed through the target's fault
    /// (refused, full, unreachable), or a success that clears its record.
    fn target_result(&self, node: NodeId, failed: bool) {
        let mut failures = self.target_failures.lock().unwrap_or_else(|p| p.into_inner());
        if !failed {
            failures.remove(&node);
            return;
        }
        let f = failures.entry(node).or_insert(TargetFailures { consecutive: 0, until: Instant::now() });
        f.consecutive = f.consecutive.saturating_add(1);
        let backoff = TARGET_BACKOFF_FIRST.saturating_mul(1u32 << (f.consecutive - 1).min(10)).min(TARGET_BACKOFF_MAX);
        f.until = Instant::now() + backoff;
        tracing::warn!(%node, failures = f.consecutive, ?backoff, "rebuild target keeps failing; choosing others meanwhile");
    }
}

/// The superfluous-copy sweep runs once every this many planner ticks.
pub(crate) const SWEEP_EVERY: u32 = 10;

impl RepairState {
    /// A state whose shard calls talk with `security`.
    pub fn with_security(security: coffer_rpc::Security) -> Self {
        RepairState { shards: Arc::new(ShardPool::with_security(security)), ..RepairState::default() }
    }

    pub fn snapshot(&self) -> RepairStatus {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        s
    }
}

#[derive(Clone, Debug)]
struct Task {
    pack: PackRecord,
    index: ShardIndex,
    from: NodeId,
    to: NodeId,
    /// Surviving good shards: the lower, the more urgent.
    surviving: usize,
    incident: Option<u64>,
}

/// A rebuild the planner chose, for the executor (`workers::RebuildExecutor`) to run.
pub(crate) struct RebuildJob {
    task: Task,
    sources: Vec<(u32, String, Vec<u8>, Option<SiteId>)>,
    target_addr: String,
    target_site: SiteId,
}

async fn write(n: &MetaNode, cmd: Command) -> Result<CommandResult, MetaError> {
    let command = cmd.name();
    n.raft.client_write(cmd).await.map(|r| r.data).map_err(|e| MetaError::RaftWrite { command, reason: e.to_string() })
}

/// One planner tick (leader only): incidents, then the queue, dispatched
/// within the limits onto `jobs`.
pub(crate) async fn tick_once(
    n: &std::sync::Arc<MetaNode>,
    jobs: &tokio::sync::mpsc::UnboundedSender<RebuildJob>,
) -> Result<(), MetaError> {
    let tree = n.sm.tree();
    let nodes: Vec<NodeRecord> = kv::scan(tree, "node", kv::NODE_PREFIX)?;
    let bad = bad_shards(tree)?;
    let state: HashMap<NodeId, NodeState> = nodes.iter().map(|r| (r.id, n.liveness.state(r.id))).collect();
    let draining = kv::draining(tree)?;
    let by_id: HashMap<NodeId, &NodeRecord> = nodes.iter().map(|r| (r.id, r)).collect();
    let up = |id: &NodeId| state.get(id) == Some(&NodeState::Up);

    // Failure detection: every down node with shards gets an open incident.
    // Shard counts and open incidents come from the indexes `apply` keeps,
    // so a tick reads what is wrong, not the catalog.
    let held: HashMap<NodeId, u64> = crate::index::held(tree)?;
    let open: HashMap<NodeId, u64> = crate::index::open_incidents(tree)?;
    for r in &nodes {
        if state.get(&r.id) == Some(&NodeState::Down) && !open.contains_key(&r.id) {
            let last_seen_ms = n
                .liveness
                .get(r.id)
                .map(|s| now_ms().saturating_sub(s.at.elapsed().as_millis() as u64))
                .unwrap_or(r.last_heartbeat_ms);
            tracing::warn!(node = %r.id, site = %r.site, shards = held.get(&r.id).copied().unwrap_or(0), "storage node is down; opening an incident");
            write(
                n,
                Command::OpenIncident {
                    node: r.id,
                    last_seen_ms,
                    detected_ms: now_ms(),
                    shards_lost: held.get(&r.id).copied().unwrap_or(0),
                },
            )
            .await?;
        }
    }
    // An incident closes when the node holds no placed shard any more, or
    // when it is back up: heard from by this leader, not merely counted as
    // seen when it took office (that would close it half rebuilt).
    for (node, _) in open.iter() {
        let heard = n.liveness.get(*node).is_some();
        if held.get(node).copied().unwrap_or(0) == 0 || (heard && up(node)) {
            write(n, Command::CloseIncident { node: *node, time_ms: now_ms() }).await?;
        }
    }
    let open: HashMap<NodeId, u64> = crate::index::open_incidents(tree)?;

    // A decommissioned node leaves once it holds nothing.
    for (node, d) in &draining {
        if d.decommission && held.get(node).copied().unwrap_or(0) == 0 {
            tracing::info!(%node, "decommissioned node is empty; removing it from the cluster map");
            write(n, Command::RemoveNode { node: *node }).await?;
        }
    }

    // The queue.
    let candidates: Vec<Candidate> =
        nodes.iter().filter(|r| up(&r.id) && !draining.contains_key(&r.id)).map(|r| n.placement_candidate(r)).collect();
    // New homes avoid full nodes (free_bytes 0, skipped by placement) and
    // targets that keep failing; a bad shard is still rebuilt in place.
    let homes: Vec<Candidate> = candidates.iter().filter(|c| !n.repair.backing_off(c.node)).cloned().collect();
    let site_of = |id: &NodeId| by_id.get(id).map(|r| r.site.clone());
    // The packs that can have work: a shard on a node that is down,
    // draining or not in the map (node 0 holds the unplaced shards of short
    // packs), a shard reported bad, or a placement breaking the site rule.
    // Every other pack is whole and well placed, so it is not read.
    let suspect = |node: &NodeId| {
        state.get(node) == Some(&NodeState::Down) || draining.contains_key(node) || !by_id.contains_key(node)
    };
    let packs = packs_with_work(tree, &held, suspect, &bad)?;
    let mut tasks = Vec::new();
    let mut site_degraded = 0u64;
    for p in &packs {
        let policy = Policy::new(p.params);
        let missing: Vec<usize> = p
            .shards
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                state.get(&s.node) == Some(&NodeState::Down)
                    || bad.contains_key(&(p.id, *i as u8))
                    || !by_id.contains_key(&s.node)
            })
            .map(|(i, _)| i)
            .collect();
        let surviving = p.params.total() - missing.len();
        let placed: Vec<(NodeId, SiteId)> =
            p.shards.iter().filter_map(|s| site_of(&s.node).map(|site| (s.node, site))).collect();
        if !satisfies(&policy, &placed) {
            site_degraded += 1;
        }
        for &i in &missing {
            let shard = &p.shards[i];
            let bad_here = bad.get(&(p.id, i as u8)).is_some_and(|_| up(&shard.node));
            let to = if bad_here {
                shard.node
            } else {
                match new_home(p, i, &policy, &homes, &site_of) {
                    Some(to) => to,
                    None => continue,
                }
            };
            tasks.push(Task {
                pack: p.clone(),
                index: ShardIndex(i as u8),
                from: shard.node,
                to,
                surviving,
                incident: open.get(&shard.node).copied(),
            });
        }
        // Draining nodes give up their shards, while they still serve them.
        if missing.is_empty() {
            for (i, shard) in p.shards.iter().enumerate().filter(|(_, s)| draining.contains_key(&s.node)) {
                if let Some(to) = new_home(p, i, &policy, &homes, &site_of) {
                    tasks.push(Task {
                        pack: p.clone(),
                        index: ShardIndex(i as u8),
                        from: shard.node,
                        to,
                        surviving,
                        incident: None,
                    });
                }
            }
        }
        // Site rule: a pack placed while a site was down goes back once the
        // site can take shards again (only when nothing is missing).
        if missing.is_empty() && !satisfies(&policy, &placed) {
            if let Some(t) = rebalance_task(p, &policy, &placed, &homes) {
                tasks.push(t);
            }
        }
    }
    tasks.sort_by_key(|t| (t.surviving, t.pack.id, t.index));

    // Dispatch within the limits. Each task is checked against and entered
    // into `in_flight` under one lock, so that a shard the sweep claimed
    // (while deleting a copy of it) is not rebuilt meanwhile, and `per_node`
    // counts what is in flight to each target, whichever pass started it.
    let queued = {
        let held = n.repair.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().filter(|t| !held.contains_key(&(t.pack.id, t.index.0))).count()
    };
    {
        let mut s = n.repair.status.lock().unwrap_or_else(|p| p.into_inner());
        s.queued = queued as u64;
        s.site_degraded = site_degraded;
    }
    for t in tasks {
        let key = (t.pack.id, t.index.0);
        {
            let mut held = n.repair.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if held.len() >= n.config.repair.parallelism {
                break;
            }
            if held.contains_key(&key) || held.keys().any(|(p, _)| *p == t.pack.id) {
                // One shard of a pack at a time: each move changes the survivors.
                continue;
            }
            if held.values().filter(|to| **to == t.to).count() >= n.config.repair.per_node {
                continue;
            }
            held.insert(key, t.to);
        }
        let sources: Vec<(u32, String, Vec<u8>, Option<SiteId>)> = t
            .pack
            .shards
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != t.index.0 as usize && up(&s.node) && !bad.contains_key(&(t.pack.id, *i as u8)))
            .filter_map(|(i, s)| {
                by_id.get(&s.node).map(|r| (i as u32, r.addr.clone(), s.checksum.0.to_vec(), Some(r.site.clone())))
            })
            .collect();
        let target = by_id.get(&t.to).map(|r| (r.addr.clone(), r.site.clone()));
        let Some((target_addr, target_site)) = target else { continue };
        if jobs.send(RebuildJob { task: t, sources, target_addr, target_site }).is_err() {
            // The executor is gone (shutting down): nothing will run it.
            n.repair.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }
    Ok(())
}

/// Shards reported bad, by pack and index.
pub(crate) fn bad_shards(tree: &crate::store::Tree) -> Result<HashMap<(PackId, u8), BadShardRecord>, MetaError> {
    let mut bad = HashMap::new();
    if !crate::index::any_bad_shard(tree)? {
        return Ok(bad);
    }
    for item in tree.scan_prefix(kv::BAD_SHARD_PREFIX) {
        let (k, v) = item?;
        let (Some(pack), Some(&index)) = (k.get(2..18).and_then(|b| PackId::from_slice(b).ok()), k.get(18)) else {
            continue;
        };
        if let Ok(rec) = kv::decode::<BadShardRecord>("bad shard", &v) {
            bad.insert((pack, index), rec);
        }
    }
    Ok(bad)
}

/// The packs a tick looks at: those with a shard on a `suspect` node (down,
/// draining, not in the map, or 0 for unplaced shards), a shard in `bad`,
/// or a placement breaking the site rule, read through the indexes.
pub(crate) fn packs_with_work(
    tree: &crate::store::Tree,
    held: &HashMap<NodeId, u64>,
    suspect: impl Fn(&NodeId) -> bool,
    bad: &HashMap<(PackId, u8), BadShardRecord>,
) -> Result<Vec<PackRecord>, MetaError> {
    let mut ids: std::collections::BTreeSet<PackId> = std::collections::BTreeSet::new();
    for (node, count) in held {
        if *count > 0 && suspect(node) {
            ids.extend(crate::index::packs_on(tree, *node)?);
        }
    }
    ids.extend(bad.keys().map(|(p, _)| *p));
    ids.extend(crate::index::site_broken(tree)?);
    let mut packs: Vec<PackRecord> = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(p) = kv::get::<PackRecord>(tree, "pack", &kv::pack_key(id))? {
            packs.push(p);
        }
    }
    Ok(packs)
}

/// The superfluous-copy sweep, on its own schedule. The routine pass
/// (`full` false) reads only the former copies that moves recorded
/// (`kv::FORMER_COPY_PREFIX`): its cost follows the moves, not the catalog.
/// The full pass lists every up node's shards against the catalog's packs;
/// it finds what no move recorded (a rebuild whose move was never
/// committed, copies left before the record existed) and runs rarely.
pub(crate) async fn sweep_once(n: &MetaNode, full: bool) -> Result<(), String> {
    let tree = n.sm.tree();
    let nodes: Vec<NodeRecord> = kv::scan(tree, "node", kv::NODE_PREFIX).map_err(|e| e.to_string())?;
    let state: HashMap<NodeId, NodeState> = nodes.iter().map(|r| (r.id, n.liveness.state(r.id))).collect();
    let swept = if full {
        let packs: Vec<PackRecord> = kv::scan(tree, "pack", kv::PACK_PREFIX).map_err(|e| e.to_string())?;
        n.repair.sweep_full_passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sweep_superfluous(n, &nodes, &packs, &state).await
    } else {
        sweep_former_copies(n, &nodes, &state).await
    };
    n.failpoints.mark(crate::failpoint::MARK_SWEEP_PASSED);
    swept
}

/// Former copies on up nodes (or on nodes gone from the map) one routine
/// pass handles at most; the rest wait for the next pass.
const FORMER_COPIES_PER_PASS: usize = 1024;

/// The routine pass: each recorded former copy on an up node is deleted
/// when the record, read now, places its shard elsewhere, and its entry is
/// then forgotten through Raft. Entries of packs that are gone, or of nodes
/// that left the map, are forgotten without a call. A node that is not up
/// keeps its entries for a later pass.
async fn sweep_former_copies(
    n: &MetaNode,
    nodes: &[NodeRecord],
    state: &HashMap<NodeId, NodeState>,
) -> Result<(), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let tree = n.sm.tree();
    let by_id: HashMap<NodeId, &NodeRecord> = nodes.iter().map(|r| (r.id, r)).collect();
    // Copies on nodes that are not up are skipped without a read and do not
    // count against the pass's share: a node down for long (every shard it
    // held rebuilt elsewhere) must not starve the copies of the others.
    let mut forget = Vec::new();
    let mut entries = Vec::new();
    for item in tree.scan_prefix(kv::FORMER_COPY_PREFIX).keys() {
        if entries.len() + forget.len() >= FORMER_COPIES_PER_PASS {
            break;
        }
        let key = item.map_err(|e| e.to_string())?;
        let Some((pack, index, node)) = kv::parse_former_copy_key(&key) else {
            tracing::error!(key = ?key, "a former-copy key that does not parse; left alone");
            continue;
        };
        match by_id.get(&node) {
            None => forget.push((pack, index, node)),
            Some(rec) if state.get(&node) == Some(&NodeState::Up) => {
                entries.push((pack, index, node, rec.addr.clone()))
            }
            Some(_) => {}
        }
    }
    n.repair.sweeps.fetch_add(1, Relaxed);
    let confirm_every = n.config.election_timeout.0 / 4;
    let mut confirmed: Option<Instant> = None;
    let mut failed = 0usize;
    for (pack, index, node, addr) in entries {
        // Decided on a state machine known to be current, as in the full pass.
        if confirmed.is_none_or(|t| t.elapsed() > confirm_every) {
            if let Err(e) = n.read_barrier().await {
                tracing::info!(error = %e, "the sweep stops: leadership not confirmed");
                return Ok(());
            }
            confirmed = Some(Instant::now());
        }
        let owner = match kv::get::<PackRecord>(tree, "pack", &kv::pack_key(&pack)) {
            Ok(Some(record)) => record.shards.get(index.0 as usize).map(|s| s.node),
            Ok(None) => None,
            Err(e) => return Err(e.to_string()),
        };
        let Some(owner) = owner else {
            // The pack was dropped: its files are the node's orphans.
            forget.push((pack, index, node));
            continue;
        };
        if owner == node {
            // Placed here again: the file is the shard, not a copy.
            forget.push((pack, index, node));
            continue;
        }
        let Some(_claim) = claim_superfluous(tree, &n.repair.in_flight, node, pack, index.0, owner) else {
            continue;
        };
        match n.repair.shards.delete(&addr, pack, index).await {
            Ok(()) => {
                tracing::info!(%pack, %index, %node, "deleted a superfluous shard");
                n.repair.sweep_copies_deleted.fetch_add(1, Relaxed);
                forget.push((pack, index, node));
            }
            Err(e) => {
                failed += 1;
                tracing::debug!(%pack, %index, %node, error = %e, "could not delete a superfluous shard yet");
            }
        }
    }
    if !forget.is_empty() {
        write(n, Command::ForgetCopies { copies: forget }).await.map_err(|e| e.to_string())?;
    }
    if failed > 0 {
        return Err(format!("{failed} superfluous shard(s) could not be deleted yet"));
    }
    Ok(())
}

/// A node that comes back after its shards were rebuilt elsewhere still
/// holds them: delete every shard of a committed pack whose record places
/// that shard on another node. Shards being rebuilt are left alone (their
/// placement changes only once the rebuild is committed), and so are shards
/// of packs the catalog does not know, which may belong to a backup still
/// in flight. The placed copy is never touched, so no pack loses a shard.
async fn sweep_superfluous(
    n: &MetaNode,
    nodes: &[NodeRecord],
    packs: &[PackRecord],
    state: &HashMap<NodeId, NodeState>,
) -> Result<(), String> {
    let placed: HashMap<(PackId, u8), NodeId> =
        packs.iter().flat_map(|p| p.shards.iter().enumerate().map(move |(i, s)| ((p.id, i as u8), s.node))).collect();
    use std::sync::atomic::Ordering::Relaxed;
    n.repair.sweeps.fetch_add(1, Relaxed);
    let mut failed = Vec::new();
    for r in nodes.iter().filter(|r| state.get(&r.id) == Some(&NodeState::Up)) {
        let list = match n.repair.shards.list(&r.addr).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(node = %r.id, addr = %r.addr, error = %e, "cannot list the node's shards; the sweep skips it this pass");
                n.repair.sweep_list_failures.fetch_add(1, Relaxed);
                failed.push(format!("node {}: {e}", r.id));
                continue;
            }
        };
        n.repair.sweep_nodes_listed.fetch_add(1, Relaxed);
        let maybe: Vec<(PackId, u8, NodeId)> = list
            .iter()
            .filter_map(|s| {
                let (Ok(pack), Ok(index)) = (PackId::from_slice(&s.pack_id), u8::try_from(s.index)) else {
                    return None;
                };
                placed.get(&(pack, index)).filter(|owner| **owner != r.id).map(|owner| (pack, index, *owner))
            })
            .collect();
        if maybe.is_empty() {
            continue;
        }
        // Deleting is decided on a state machine that is known to be
        // current: a quorum confirms this node still leads and everything
        // committed so far is applied here. Without it, a leader restarted
        // after a SIGKILL (openraft brings it back as leader of its old,
        // committed term until it hears of a newer one) swept with a stale
        // catalog and deleted copies that the newer leader had just placed
        // (found by the chaos suite). Leader leases keep another leader from
        // being elected for an election timeout after the confirmation, so
        // it is renewed whenever deleting has taken longer than a fraction
        // of one.
        let confirm_every = n.config.election_timeout.0 / 4;
        let mut confirmed: Option<std::time::Instant> = None;
        for (pack, index, owner) in maybe {
            if confirmed.is_none_or(|t| t.elapsed() > confirm_every) {
                if let Err(e) = n.read_barrier().await {
                    tracing::info!(error = %e, "the sweep stops: leadership not confirmed");
                    return Ok(());
                }
                confirmed = Some(std::time::Instant::now());
            }
            if let Some(_claim) = claim_superfluous(n.sm.tree(), &n.repair.in_flight, r.id, pack, index, owner) {
                tracing::info!(%pack, index, node = %r.id, "deleting a superfluous shard");
                delete_copy(n, r.id, pack, ShardIndex(index)).await;
            }
        }
    }
    // The other nodes were swept; the worker's status names the ones that
    // were not (last_error, and the `list_failures` counter).
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("could not list {} node(s): {}", failed.len(), failed.join("; ")))
    }
}

/// A shard entered in `in_flight` while a copy of it is deleted, so that
/// no rebuild of that shard is dispatched meanwhile (a rebuild onto the
/// node holding the copy would find it whole and place it, and the delete
/// would then remove the placed shard). Released when dropped.
struct Claim<'a> {
    in_flight: &'a Mutex<HashMap<(PackId, u8), NodeId>>,
    key: (PackId, u8),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// Whether `node`'s copy of shard `index` of `pack` may be deleted, and if
/// so the claim to hold while deleting it. `listed` is the owner the caller
/// read earlier; it only pre-filters, because a move that commits after
/// that read makes `node` the owner, and its copy is then the placed one.
/// The decision is taken from the record as it is now, read under the lock
/// of `in_flight`: a task leaves `in_flight` only after its `MoveShard` has
/// been applied here (the leader applies before `client_write` returns), and
/// no task enters it while the claim is held, so a record read with the
/// shard not in flight shows every move of it until the claim is dropped.
fn claim_superfluous<'a>(
    tree: &crate::store::Tree,
    in_flight: &'a Mutex<HashMap<(PackId, u8), NodeId>>,
    node: NodeId,
    pack: PackId,
    index: u8,
    listed: NodeId,
) -> Option<Claim<'a>> {
    if listed == node {
        return None;
    }
    let mut held = in_flight.lock().unwrap_or_else(|p| p.into_inner());
    if held.contains_key(&(pack, index)) {
        return None;
    }
    let superfluous = match kv::get::<PackRecord>(tree, "pack", &kv::pack_key(&pack)) {
        Ok(Some(record)) => record.shards.get(index as usize).is_some_and(|s| s.node != node),
        // A pack dropped since the list was read is garbage collection's to
        // delete; an unreadable record is no ground for deleting anything.
        _ => false,
    };
    if !superfluous {
        return None;
    }
    held.insert((pack, index), node);
    Some(Claim { in_flight, key: (pack, index) })
}

/// A node for shard `i` of `p` other than any holding a shard of it, by the
/// placement rule given where the pack's other shards are.
fn new_home(
    p: &PackRecord,
    i: usize,
    policy: &Policy,
    candidates: &[Candidate],
    site_of: &impl Fn(&NodeId) -> Option<SiteId>,
) -> Option<NodeId> {
    let current: Vec<(NodeId, SiteId)> = p
        .shards
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, s)| site_of(&s.node).map(|site| (s.node, site)))
        .collect();
    let pool: Vec<Candidate> =
        candidates.iter().filter(|c| !p.shards.iter().any(|s| s.node == c.node)).cloned().collect();
    let seed = [p.id.as_bytes().as_slice(), &[i as u8]].concat();
    place_one(policy, &pool, &current, &seed).ok().map(|(to, _)| to)
}

/// For a pack breaking the site rule: move one shard out of an over-full
/// site, if some node elsewhere can take it without breaking the rule.
fn rebalance_task(
    p: &PackRecord,
    policy: &Policy,
    placed: &[(NodeId, SiteId)],
    candidates: &[Candidate],
) -> Option<Task> {
    let mut per_site: BTreeMap<&SiteId, usize> = BTreeMap::new();
    for (_, site) in placed {
        *per_site.entry(site).or_default() += 1;
    }
    let (crowded, _) = per_site.iter().find(|(_, c)| **c > policy.max_per_site)?;
    let (i, shard) = p
        .shards
        .iter()
        .enumerate()
        .rev()
        .find(|(_, s)| placed.iter().any(|(n, site)| *n == s.node && site == *crowded))?;
    let rest: Vec<(NodeId, SiteId)> = placed.iter().filter(|(n, _)| *n != shard.node).cloned().collect();
    let pool: Vec<Candidate> =
        candidates.iter().filter(|c| !p.shards.iter().any(|s| s.node == c.node)).cloned().collect();
    let seed = [p.id.as_bytes().as_slice(), &[i as u8]].concat();
    let (to, still_degraded) = place_one(policy, &pool, &rest, &seed).ok()?;
    let after_site = candidates.iter().find(|c| c.node == to)?.site.clone();
    // Only a move that lands outside the crowded site helps.
    if after_site == **crowded
        || (still_degraded && per_site.get(&after_site).copied().unwrap_or(0) >= policy.max_per_site)
    {
        return None;
    }
    Some(Task {
        pack: p.clone(),
        index: ShardIndex(i as u8),
        from: shard.node,
        to,
        surviving: p.params.total(),
        incident: None,
    })
}

pub(crate) async fn execute(node: Weak<MetaNode>, job: RebuildJob) {
    let RebuildJob { task: t, sources, target_addr, target_site } = job;
    let started = Instant::now();
    let started_ms = now_ms();
    let Some(n) = node.upgrade() else { return };
    let bandwidth = n.config.repair.bandwidth;
    let shards = n.repair.shards.clone();
    drop(n);
    let req = pb::RebuildShardRequest {
        pack_id: t.pack.id.0.to_vec(),
        index: t.index.0 as u32,
        k: t.pack.params.k() as u32,
        m: t.pack.params.m() as u32,
        shard_len: t.pack.shard_len,
        checksum: t.pack.shards[t.index.0 as usize].checksum.0.to_vec(),
        sources: sources
            .iter()
            .map(|(i, addr, sum, _)| pb::ShardSource { index: *i, addr: addr.clone(), checksum: sum.clone() })
            .collect(),
        bandwidth_bytes_per_s: bandwidth,
    };
    let result = shards.rebuild(&target_addr, req).await.map_err(|s| MetaError::RebuildFailed {
        pack: t.pack.id,
        index: t.index,
        node: t.to,
        code: s.code(),
        message: s.message().to_string(),
    });
    let Some(n) = node.upgrade() else { return };
    let key = (t.pack.id, t.index.0);
    let outcome = match result {
        Ok(resp) => {
            let cross: u64 = resp
                .read_from
                .iter()
                .filter(|i| sources.iter().any(|(j, _, _, site)| j == *i && site.as_ref() != Some(&target_site)))
                .count() as u64
                * t.pack.shard_len;
            let work = RepairWork {
                incident: t.incident,
                started_ms,
                finished_ms: now_ms(),
                bytes_read: resp.bytes_read,
                bytes_written: resp.bytes_written,
                bytes_cross_site: cross.min(resp.bytes_read),
            };
            let checksum = t.pack.shards[t.index.0 as usize].checksum;
            match write(
                &n,
                Command::MoveShard { pack: t.pack.id, index: t.index, from: t.from, to: t.to, checksum, work },
            )
            .await
            {
                Ok(CommandResult::Rejected(why)) => {
                    Err(MetaError::MoveRefused { pack: t.pack.id, index: t.index, from: t.from, to: t.to, why })
                }
                Ok(_) => {
                    tracing::info!(pack = %t.pack.id, index = %t.index, from = %t.from, to = %t.to, "shard rebuilt and placed");
                    // A slot is free: the planner fills it now, not at its
                    // next tick. (Failures wait for the tick, so that a
                    // target that keeps failing is not retried in a loop.)
                    n.repair.wake.notify_one();
                    // The old copy of a moved shard is superfluous now.
                    if t.from != t.to {
                        delete_copy(&n, t.from, t.pack.id, t.index).await;
                    }
                    Ok(resp.bytes_written)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    // A refusal for want of sources (FAILED_PRECONDITION) is not the
    // target's fault; anything else the target answered is.
    let target_failed =
        matches!(&outcome, Err(MetaError::RebuildFailed { code, .. }) if *code != tonic::Code::FailedPrecondition);
    n.repair.target_result(t.to, target_failed);
    {
        let mut s = n.repair.status.lock().unwrap_or_else(|p| p.into_inner());
        match &outcome {
            Ok(bytes) => {
                s.done += 1;
                s.bytes_written += bytes;
                let secs = started.elapsed().as_secs_f64();
                s.secs_per_task = if s.secs_per_task == 0.0 { secs } else { 0.8 * s.secs_per_task + 0.2 * secs };
            }
            Err(e) => {
                s.failed += 1;
                tracing::warn!(pack = %t.pack.id, index = %t.index, to = %t.to, error = %e, "rebuild failed; will retry");
            }
        }
    }
    n.repair.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
}

/// Deletes a superfluous shard copy from a node, if it is reachable.
async fn delete_copy(n: &MetaNode, node: NodeId, pack: PackId, index: ShardIndex) {
    let Ok(Some(rec)) = kv::get::<NodeRecord>(n.sm.tree(), "node", &kv::node_key(node)) else { return };
    if n.liveness.state(node) != NodeState::Up {
        return;
    }
    if let Err(e) = n.repair.shards.delete(&rec.addr, pack, index).await {
        tracing::debug!(%pack, %index, %node, error = %e, "could not delete a superfluous shard yet");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{begin, run, tree};

    #[test]
    fn a_failing_rebuild_target_is_skipped_until_its_back_off_ends_and_a_success_clears_it() {
        let r = RepairState::default();
        let (a, b) = (NodeId(1), NodeId(2));
        assert!(!r.backing_off(a));
        r.target_result(a, true);
        assert!(r.backing_off(a) && !r.backing_off(b));
        r.target_result(a, true);
        let until = r.target_failures.lock().unwrap()[&a].until;
        assert!(until >= Instant::now() + TARGET_BACKOFF_FIRST, "the back-off doubles");
        // Many failures stay within the cap.
        for _ in 0..40 {
            r.target_result(a, true);
        }
        assert!(r.target_failures.lock().unwrap()[&a].until <= Instant::now() + TARGET_BACKOFF_MAX);
        r.target_result(a, false);
        assert!(!r.backing_off(a));
    }
    use coffer_types::{ErasureParams, Hash32, PackKind, RepoName, RepoRecord, ShardRecord};

    /// A 2+1 pack on nodes 1, 2, 3, committed through `apply`.
    fn committed(t: &crate::store::Tree) -> PackRecord {
        let repo = RepoRecord {
            name: RepoName::new("r").unwrap(),
            params: ErasureParams::new(2, 1).unwrap(),
            key_slots: vec![vec![1]],
            created_ms: 1,
        };
        run(t, Command::CreateRepo { repo: repo.clone() });
        for id in 1..=4 {
            let node = NodeRecord {
                id: NodeId(id),
                site: SiteId::new("a").unwrap(),
                addr: "x".into(),
                capacity_bytes: 1,
                used_bytes: 0,
                last_heartbeat_ms: 0,
            };
            run(t, Command::RegisterNode { node });
        }
        let pack = PackRecord {
            id: PackId([5; 16]),
            repo: repo.name.clone(),
            kind: PackKind::Data,
            params: repo.params,
            pack_len: 10,
            shard_len: 5,
            shards: (0..3u8)
                .map(|i| ShardRecord { index: ShardIndex(i), node: NodeId(i as u64 + 1), checksum: Hash32([i; 32]) })
                .collect(),
        };
        let session = begin(t, &repo.name, 1, 100);
        let cmd = Command::CommitPack { session, now_ms: 2, pack: pack.clone(), chunks: vec![] };
        assert_eq!(run(t, cmd), CommandResult::Ok);
        pack
    }

    #[test]
    fn a_move_committed_after_the_list_was_read_keeps_its_new_copy() {
        let t = tree();
        let pack = committed(&t);
        let in_flight = Mutex::new(HashMap::new());
        // The tick read the list while shard 0 was on node 1; then the
        // rebuild onto node 4 committed and left `in_flight`.
        let listed = NodeId(1);
        let work = RepairWork::default();
        let mv = Command::MoveShard {
            pack: pack.id,
            index: ShardIndex(0),
            from: NodeId(1),
            to: NodeId(4),
            checksum: pack.shards[0].checksum,
            work,
        };
        assert_eq!(run(&t, mv), CommandResult::Ok);
        assert!(
            claim_superfluous(&t, &in_flight, NodeId(4), pack.id, 0, listed).is_none(),
            "the placed copy would be deleted"
        );
        // The old copy is the superfluous one.
        let claim = claim_superfluous(&t, &in_flight, NodeId(1), pack.id, 0, NodeId(4));
        assert!(claim.is_some());
        // While it is deleted, the shard counts as in flight: no rebuild of
        // it is dispatched, and no second claim is given.
        assert!(in_flight.lock().unwrap().contains_key(&(pack.id, 0)));
        assert!(claim_superfluous(&t, &in_flight, NodeId(1), pack.id, 0, NodeId(4)).is_none());
        drop(claim);
        assert!(in_flight.lock().unwrap().is_empty(), "the claim is released when dropped");
        // A copy on a node the record names is never deleted; one in flight waits.
        assert!(claim_superfluous(&t, &in_flight, NodeId(2), pack.id, 1, NodeId(1)).is_none());
        in_flight.lock().unwrap().insert((pack.id, 0), NodeId(4));
        assert!(claim_superfluous(&t, &in_flight, NodeId(1), pack.id, 0, NodeId(4)).is_none());
        // A pack gone from the catalog since the list: left alone.
        assert!(claim_superfluous(&t, &in_flight, NodeId(1), PackId([6; 16]), 0, NodeId(2)).is_none());
    }

    fn former_copies(t: &crate::store::Tree) -> Vec<(PackId, ShardIndex, NodeId)> {
        t.scan_prefix(kv::FORMER_COPY_PREFIX).keys().map(|k| kv::parse_former_copy_key(&k.unwrap()).unwrap()).collect()
    }

    #[test]
    fn a_move_records_the_copy_it_leaves_and_the_record_goes_when_forgotten_moved_back_or_dropped() {
        let t = tree();
        let pack = committed(&t);
        let mv = |index: u8, from: u64, to: u64| Command::MoveShard {
            pack: pack.id,
            index: ShardIndex(index),
            from: NodeId(from),
            to: NodeId(to),
            checksum: pack.shards[index as usize].checksum,
            work: RepairWork::default(),
        };
        let node = NodeRecord {
            id: NodeId(5),
            site: SiteId::new("a").unwrap(),
            addr: "x".into(),
            capacity_bytes: 1,
            used_bytes: 0,
            last_heartbeat_ms: 0,
        };
        assert_eq!(run(&t, Command::RegisterNode { node }), CommandResult::Ok);
        assert!(former_copies(&t).is_empty());
        assert_eq!(run(&t, mv(0, 1, 4)), CommandResult::Ok);
        assert_eq!(run(&t, mv(1, 2, 5)), CommandResult::Ok);
        assert_eq!(
            former_copies(&t),
            vec![(pack.id, ShardIndex(0), NodeId(1)), (pack.id, ShardIndex(1), NodeId(2))],
            "each move leaves the copy on the node it left"
        );
        // Shard 0 moves back to node 1: that file is the shard again, and
        // the copy is now on node 4.
        assert_eq!(run(&t, mv(0, 4, 1)), CommandResult::Ok);
        assert_eq!(former_copies(&t), vec![(pack.id, ShardIndex(0), NodeId(4)), (pack.id, ShardIndex(1), NodeId(2))]);
        let forget = Command::ForgetCopies { copies: vec![(pack.id, ShardIndex(1), NodeId(2))] };
        assert_eq!(run(&t, forget.clone()), CommandResult::Ok);
        assert_eq!(run(&t, forget), CommandResult::Ok, "forgetting twice is harmless");
        assert_eq!(former_copies(&t), vec![(pack.id, ShardIndex(0), NodeId(4))]);
        // Dropping the pack drops its copies' records.
        let drop = Command::DropPacks { repo: pack.repo.clone(), packs: vec![pack.id] };
        // (`committed` began session [1; 16]; an open session keeps its packs.)
        assert_eq!(run(&t, Command::EndSession { id: coffer_types::SessionId([1; 16]) }), CommandResult::Ok);
        assert_eq!(run(&t, drop), CommandResult::Ok);
        assert!(former_copies(&t).is_empty(), "a dropped pack's copies are the nodes' orphans");
    }
}
