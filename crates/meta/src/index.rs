//! Secondary indexes of the state machine, kept by every write so that the
//! leader's duties and `apply` cost what changed, not what is stored.
//!
//! ```text
//!   ix/n/<node u64 BE><pack id><shard index>   ()   the shards a pack record puts on a node
//!                                                   (node 0: unplaced shards of short packs)
//!   ix/h/<node u64 BE>                         u64  how many shard entries name the node
//!   ix/g/<node u64 BE>                         ()   nodes whose `ix/h/` count is above zero
//!   ix/z/<pack id>                             ()   packs whose placement breaks the site rule
//!   ix/u/<pack id>                             u64  chunk entries and snapshots (as refs pack)
//!                                                   that point at the pack
//!   ix/s/<repo name> 0x00 <snapshot id>        ()   snapshots by repository
//!   ix/t/<repo name> 0x00 <source len: u32 BE><source> <end_ms: u64 BE><snapshot id>
//!                                              ()   snapshots by source, oldest end first
//!   ix/o/<node u64 BE>                         u64  the open incident of a node
//!   ix/count/packs                             u64  pack records
//!   ix/count/copies                            u64  copies a move left behind (`f/` records),
//!                                                   waiting for the sweep
//!   ix/count/broken, ix/count/open             u64  keys under `ix/z/` and `ix/o/`
//!   ix/count/bad, ix/count/drains              u64  records under `b/` and `d/`
//! ```
//!
//! The invariant: after every write, the `ix/` keys are exactly what
//! `expected` computes from a full scan of the records (a property test
//! applies random commands and compares). They are kept in `Txn` itself
//! (`on_write` runs on every `put` and `remove` of a record under `p/`,
//! `n/`, `c/`, `s/`, `i/`, `f/`, `b/` or `d/`), so they land in the same
//! store batch as the records, travel in snapshots like any key, and a command added later
//! keeps them without knowing of them. A store of schema 1 has none, one of
//! schema 2 not `ix/t/`, one of schema 3 not `ix/count/copies`, one of
//! schema 4 not `ix/g/`, one of schema 5 not the counts of `ix/z/`,
//! `ix/o/`, `b/` and `d/`: `rebuild` builds them all once when it is opened
//! (and when a snapshot of an older schema is installed), in bounded
//! batches.

use std::collections::{BTreeMap, HashMap};

use coffer_placement::{satisfies, Policy};
use coffer_types::{
    ChunkLocation, NodeId, NodeRecord, PackId, PackRecord, RepoName, SiteId, SnapshotId, SnapshotRecord,
};

use crate::command::IncidentRecord;
use crate::kv::{self, Txn};
use crate::MetaError;

pub const INDEX_PREFIX: &[u8] = b"ix/";
const SHARD_PREFIX: &[u8] = b"ix/n/";
const HELD_PREFIX: &[u8] = b"ix/h/";
/// The nodes whose count under `HELD_PREFIX` is above zero (schema 5).
const HOLDER_PREFIX: &[u8] = b"ix/g/";
const SITE_PREFIX: &[u8] = b"ix/z/";
const REFS_PREFIX: &[u8] = b"ix/u/";
const SNAPSHOT_PREFIX: &[u8] = b"ix/s/";
const OPEN_PREFIX: &[u8] = b"ix/o/";
const SOURCE_PREFIX: &[u8] = b"ix/t/";
const PACK_COUNT: &[u8] = b"ix/count/packs";
const COPY_COUNT: &[u8] = b"ix/count/copies";
/// How many keys are under `ix/z/`, `ix/o/`, `b/` and `d/` (schema 6): the
/// prefixes the repair planner reads on every tick and that are nearly
/// always empty, so that a tick reads a counter instead of scanning them.
const BROKEN_COUNT: &[u8] = b"ix/count/broken";
const OPEN_COUNT: &[u8] = b"ix/count/open";
const BAD_COUNT: &[u8] = b"ix/count/bad";
const DRAIN_COUNT: &[u8] = b"ix/count/drains";
const CHUNK_PREFIX: &[u8] = b"c/";

fn node_bytes(prefix: &[u8], node: NodeId) -> Vec<u8> {
    [prefix, &node.0.to_be_bytes()].concat()
}

fn shard_key(node: NodeId, pack: &PackId, index: usize) -> Vec<u8> {
    [SHARD_PREFIX, &node.0.to_be_bytes(), pack.as_bytes(), &[index as u8]].concat()
}

fn pack_bytes(prefix: &[u8], pack: &PackId) -> Vec<u8> {
    [prefix, pack.as_bytes()].concat()
}

fn snapshot_key(repo: &RepoName, id: &SnapshotId) -> Vec<u8> {
    [SNAPSHOT_PREFIX, repo.as_str().as_bytes(), &[0], id.as_bytes()].concat()
}

fn snapshot_repo_prefix(repo: &RepoName) -> Vec<u8> {
    [SNAPSHOT_PREFIX, repo.as_str().as_bytes(), &[0]].concat()
}

/// The key prefix of one source's snapshots (`source_key` of a snapshot).
/// The source is length-prefixed: a name may hold any byte.
fn source_prefix(repo: &RepoName, source: &str) -> Vec<u8> {
    let len = u32::try_from(source.len()).unwrap_or(u32::MAX).to_be_bytes();
    [SOURCE_PREFIX, repo.as_str().as_bytes(), &[0], &len, source.as_bytes()].concat()
}

fn source_snapshot_key(s: &SnapshotRecord) -> Vec<u8> {
    let prefix = source_prefix(&s.repo, &coffer_types::dr::source_key(s));
    [prefix.as_slice(), &s.end_ms.to_be_bytes(), s.id.as_bytes()].concat()
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes)
}

/// Whether `pack` breaks the site rule, given the sites of the nodes it is
/// on (a shard on a node without a record, or unplaced, has no site and
/// does not count): the test the repair planner applies.
fn breaks_site_rule(
    pack: &PackRecord,
    site_of: impl Fn(NodeId) -> Result<Option<SiteId>, MetaError>,
) -> Result<bool, MetaError> {
    let mut placed = Vec::with_capacity(pack.shards.len());
    for s in &pack.shards {
        if let Some(site) = site_of(s.node)? {
            placed.push((s.node, site));
        }
    }
    Ok(!satisfies(&Policy::new(pack.params), &placed))
}

fn txn_site(txn: &Txn<'_>, node: NodeId) -> Result<Option<SiteId>, MetaError> {
    Ok(txn.get::<NodeRecord>("node", &kv::node_key(node))?.map(|r| r.site))
}

/// Keeps the indexes after `key` changed from `old` to `new` (the value is
/// already written into `txn`). Index keys are written with `put_index`,
/// which does not come back here.
pub(crate) fn on_write(txn: &mut Txn<'_>, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<(), MetaError> {
    if old == new {
        return Ok(());
    }
    if key.starts_with(kv::PACK_PREFIX) {
        let old: Option<PackRecord> = old.map(|b| kv::decode("pack", b)).transpose()?;
        let new: Option<PackRecord> = new.map(|b| kv::decode("pack", b)).transpose()?;
        pack_changed(txn, old.as_ref(), new.as_ref())
    } else if key.starts_with(kv::NODE_PREFIX) {
        let old: Option<NodeRecord> = old.map(|b| kv::decode("node", b)).transpose()?;
        let new: Option<NodeRecord> = new.map(|b| kv::decode("node", b)).transpose()?;
        let (Some(id), old_site, new_site) = (
            old.as_ref().or(new.as_ref()).map(|r| r.id),
            old.as_ref().map(|r| r.site.clone()),
            new.as_ref().map(|r| r.site.clone()),
        ) else {
            return Ok(());
        };
        if old_site != new_site {
            // The site rule of every pack on the node is judged again: a
            // cost of the node's shards, paid only when its site changes.
            let packs: Vec<PackId> = txn
                .scan_prefix(&node_bytes(SHARD_PREFIX, id))?
                .keys()
                .filter_map(|k| k.get(13..29).and_then(|b| PackId::from_slice(b).ok()))
                .collect();
            for p in packs {
                if let Some(pack) = txn.get::<PackRecord>("pack", &kv::pack_key(&p))? {
                    let broken = breaks_site_rule(&pack, |n| txn_site(txn, n))?;
                    mark(txn, pack_bytes(SITE_PREFIX, &p), broken.then(Vec::new), BROKEN_COUNT)?;
                }
            }
        }
        Ok(())
    } else if key.starts_with(CHUNK_PREFIX) {
        let old: Option<ChunkLocation> = old.map(|b| kv::decode("chunk", b)).transpose()?;
        let new: Option<ChunkLocation> = new.map(|b| kv::decode("chunk", b)).transpose()?;
        if let Some(o) = old {
            add(txn, pack_bytes(REFS_PREFIX, &o.pack), -1)?;
        }
        if let Some(n) = new {
            add(txn, pack_bytes(REFS_PREFIX, &n.pack), 1)?;
        }
        Ok(())
    } else if key.starts_with(kv::SNAPSHOT_PREFIX) {
        let old: Option<SnapshotRecord> = old.map(|b| kv::decode("snapshot", b)).transpose()?;
        let new: Option<SnapshotRecord> = new.map(|b| kv::decode("snapshot", b)).transpose()?;
        if let Some(o) = old {
            txn.put_index(snapshot_key(&o.repo, &o.id), None);
            txn.put_index(source_snapshot_key(&o), None);
            add(txn, pack_bytes(REFS_PREFIX, &o.refs_pack), -1)?;
        }
        if let Some(n) = new {
            txn.put_index(snapshot_key(&n.repo, &n.id), Some(Vec::new()));
            txn.put_index(source_snapshot_key(&n), Some(Vec::new()));
            add(txn, pack_bytes(REFS_PREFIX, &n.refs_pack), 1)?;
        }
        Ok(())
    } else if key.starts_with(kv::FORMER_COPY_PREFIX) {
        match (old, new) {
            (None, Some(_)) => add(txn, COPY_COUNT.to_vec(), 1).map(drop),
            (Some(_), None) => add(txn, COPY_COUNT.to_vec(), -1).map(drop),
            _ => Ok(()),
        }
    } else if key.starts_with(kv::INCIDENT_PREFIX) {
        let old: Option<IncidentRecord> = old.map(|b| kv::decode("incident", b)).transpose()?;
        let new: Option<IncidentRecord> = new.map(|b| kv::decode("incident", b)).transpose()?;
        if let Some(o) = old.filter(|o| o.open) {
            let k = node_bytes(OPEN_PREFIX, o.node);
            if txn.get::<u64>("open incident", &k)? == Some(o.id) {
                mark(txn, k, None, OPEN_COUNT)?;
            }
        }
        if let Some(n) = new.filter(|n| n.open) {
            mark(txn, node_bytes(OPEN_PREFIX, n.node), Some(kv::encode(&n.id)?), OPEN_COUNT)?;
        }
        Ok(())
    } else if key.starts_with(kv::BAD_SHARD_PREFIX) || key.starts_with(kv::DRAIN_PREFIX) {
        let counter = if key.starts_with(kv::BAD_SHARD_PREFIX) { BAD_COUNT } else { DRAIN_COUNT };
        match (old, new) {
            (None, Some(_)) => add(txn, counter.to_vec(), 1).map(drop),
            (Some(_), None) => add(txn, counter.to_vec(), -1).map(drop),
            _ => Ok(()),
        }
    } else {
        Ok(())
    }
}

/// Adds `delta` to the counter at `key`; returns its value before and after.
fn add(txn: &mut Txn<'_>, key: Vec<u8>, delta: i64) -> Result<(u64, u64), MetaError> {
    let cur: u64 = txn.get("index counter", &key)?.unwrap_or(0);
    let next = cur.checked_add_signed(delta).unwrap_or_else(|| {
        // Every replica computes the same here, so saturating keeps them
        // equal; the line makes the disagreement (a bug) visible.
        tracing::error!(key = %String::from_utf8_lossy(&key), "an index counter would go below zero: the index disagrees with the records");
        0
    });
    // A counter at zero is no key at all, as a scan would compute it.
    txn.put_index(key, (next > 0).then(|| kv::encode(&next)).transpose()?);
    Ok((cur, next))
}

/// Adds `delta` to the count of shard entries on `node`, and keeps the
/// node among the holders while its count is above zero. The count changes
/// with every pack; the holders only when a node gets its first shard or
/// loses its last. So `held` lists the nodes from keys that are rarely
/// rewritten and reads each count with a point read. A scan of the counts
/// themselves would step over every version of them that the store's
/// memtable still holds, a cost that grows with recent writes.
fn add_held(txn: &mut Txn<'_>, node: NodeId, delta: i64) -> Result<(), MetaError> {
    let (before, after) = add(txn, node_bytes(HELD_PREFIX, node), delta)?;
    if (before == 0) != (after == 0) {
        txn.put_index(node_bytes(HOLDER_PREFIX, node), (after > 0).then(Vec::new));
    }
    Ok(())
}

fn pack_changed(txn: &mut Txn<'_>, old: Option<&PackRecord>, new: Option<&PackRecord>) -> Result<(), MetaError> {
    let entries = |p: Option<&PackRecord>| -> Vec<(NodeId, usize)> {
        p.map(|p| p.shards.iter().enumerate().map(|(i, s)| (s.node, i)).collect()).unwrap_or_default()
    };
    let (before, after) = (entries(old), entries(new));
    let id = old.or(new).map(|p| p.id).expect("one of the two records exists");
    for &(node, i) in before.iter().filter(|e| !after.contains(e)) {
        txn.put_index(shard_key(node, &id, i), None);
        add_held(txn, node, -1)?;
    }
    for &(node, i) in after.iter().filter(|e| !before.contains(e)) {
        txn.put_index(shard_key(node, &id, i), Some(Vec::new()));
        add_held(txn, node, 1)?;
    }
    match (old.is_some(), new.is_some()) {
        (false, true) => {
            add(txn, PACK_COUNT.to_vec(), 1)?;
        }
        (true, false) => {
            add(txn, PACK_COUNT.to_vec(), -1)?;
        }
        _ => {}
    }
    let broken = match new {
        Some(p) => breaks_site_rule(p, |n| txn_site(txn, n))?,
        None => false,
    };
    mark(txn, pack_bytes(SITE_PREFIX, &id), broken.then(Vec::new), BROKEN_COUNT)
}

/// Writes `value` under the index key `key` (None: removes it) and keeps
/// `counter`, the number of keys under its prefix.
fn mark(txn: &mut Txn<'_>, key: Vec<u8>, value: Option<Vec<u8>>, counter: &[u8]) -> Result<(), MetaError> {
    let (was, is) = (txn.contains(&key)?, value.is_some());
    if was || is {
        txn.put_index(key, value);
    }
    if was != is {
        add(txn, counter.to_vec(), if is { 1 } else { -1 })?;
    }
    Ok(())
}

/// Every index key and value a full scan of the records computes, handed to
/// `sink` once each, in no particular order. Memory: a counter per pack
/// and per node and the ids of packs breaking the site rule, not a key per
/// record.
pub(crate) fn expected(
    tree: &crate::store::Tree,
    mut sink: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), MetaError>,
) -> Result<(), MetaError> {
    let mut sites: HashMap<NodeId, SiteId> = HashMap::new();
    for r in kv::scan::<NodeRecord>(tree, "node", kv::NODE_PREFIX)? {
        sites.insert(r.id, r.site);
    }
    let mut held: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut broken: Vec<PackId> = Vec::new();
    let mut packs = 0u64;
    for item in tree.scan_prefix(kv::PACK_PREFIX) {
        let (_, v) = item?;
        let p: PackRecord = kv::decode("pack", &v)?;
        packs += 1;
        for (i, s) in p.shards.iter().enumerate() {
            *held.entry(s.node).or_default() += 1;
            sink(shard_key(s.node, &p.id, i), Vec::new())?;
        }
        if breaks_site_rule(&p, |n| Ok(sites.get(&n).cloned()))? {
            broken.push(p.id);
        }
    }
    for (node, n) in held {
        sink(node_bytes(HELD_PREFIX, node), kv::encode(&n)?)?;
        sink(node_bytes(HOLDER_PREFIX, node), Vec::new())?;
    }
    if !broken.is_empty() {
        sink(BROKEN_COUNT.to_vec(), kv::encode(&(broken.len() as u64))?)?;
    }
    for p in broken {
        sink(pack_bytes(SITE_PREFIX, &p), Vec::new())?;
    }
    let mut refs: BTreeMap<PackId, u64> = BTreeMap::new();
    for item in tree.scan_prefix(CHUNK_PREFIX) {
        let (_, v) = item?;
        let loc: ChunkLocation = kv::decode("chunk", &v)?;
        *refs.entry(loc.pack).or_default() += 1;
    }
    for item in tree.scan_prefix(kv::SNAPSHOT_PREFIX) {
        let (_, v) = item?;
        let s: SnapshotRecord = kv::decode("snapshot", &v)?;
        *refs.entry(s.refs_pack).or_default() += 1;
        sink(snapshot_key(&s.repo, &s.id), Vec::new())?;
        sink(source_snapshot_key(&s), Vec::new())?;
    }
    for (p, n) in refs {
        sink(pack_bytes(REFS_PREFIX, &p), kv::encode(&n)?)?;
    }
    let mut open: BTreeMap<NodeId, u64> = BTreeMap::new();
    for i in kv::scan::<IncidentRecord>(tree, "incident", kv::INCIDENT_PREFIX)? {
        if i.open {
            // Commands keep at most one open incident per node; should two
            // exist, the later one is what a write would have left.
            open.insert(i.node, i.id);
        }
    }
    if !open.is_empty() {
        sink(OPEN_COUNT.to_vec(), kv::encode(&(open.len() as u64))?)?;
    }
    for (node, id) in open {
        sink(node_bytes(OPEN_PREFIX, node), kv::encode(&id)?)?;
    }
    for (prefix, counter) in [(kv::BAD_SHARD_PREFIX, BAD_COUNT), (kv::DRAIN_PREFIX, DRAIN_COUNT)] {
        let n = tree.scan_prefix(prefix).try_fold(0u64, |n, item| item.map(|_| n + 1))?;
        if n > 0 {
            sink(counter.to_vec(), kv::encode(&n)?)?;
        }
    }
    if packs > 0 {
        sink(PACK_COUNT.to_vec(), kv::encode(&packs)?)?;
    }
    let copies = tree.scan_prefix(kv::FORMER_COPY_PREFIX).try_fold(0u64, |n, item| item.map(|_| n + 1))?;
    if copies > 0 {
        sink(COPY_COUNT.to_vec(), kv::encode(&copies)?)?;
    }
    Ok(())
}

/// Replaces every index key with what a full scan computes, in batches:
/// the upgrade from an older schema, and the repair of a snapshot of one.
pub(crate) fn rebuild(tree: &crate::store::Tree) -> Result<(), MetaError> {
    let mut batch = crate::store::Batch::default();
    let mut n = 0usize;
    for item in tree.scan_prefix(INDEX_PREFIX) {
        let (k, _) = item?;
        batch.remove(k);
        n += 1;
        if n == 1_000 {
            tree.apply_batch(std::mem::take(&mut batch))?;
            n = 0;
        }
    }
    tree.apply_batch(std::mem::take(&mut batch))?;
    n = 0;
    expected(tree, |k, v| {
        batch.insert(k, v);
        n += 1;
        if n == 1_000 {
            tree.apply_batch(std::mem::take(&mut batch))?;
            n = 0;
        }
        Ok(())
    })?;
    tree.apply_batch(batch)?;
    Ok(())
}

// Reads for the leader's duties and the catalog: each costs what it returns.

/// Shard entries per node id (node 0: unplaced), one key per node.
pub(crate) fn held(tree: &crate::store::Tree) -> Result<HashMap<NodeId, u64>, MetaError> {
    let mut out = HashMap::new();
    for k in tree.scan_prefix(HOLDER_PREFIX).keys() {
        if let Some(node) = be_u64(&k?[HOLDER_PREFIX.len()..]) {
            let n: u64 = kv::get(tree, "held count", &node_bytes(HELD_PREFIX, NodeId(node)))?.unwrap_or(0);
            out.insert(NodeId(node), n);
        }
    }
    Ok(out)
}

/// How many shard entries name `node`.
pub(crate) fn held_by(txn: &Txn<'_>, node: NodeId) -> Result<u64, MetaError> {
    Ok(txn.get("held count", &node_bytes(HELD_PREFIX, node))?.unwrap_or(0))
}

/// The packs with a shard entry on `node`, each once, in id order.
pub(crate) fn packs_on(tree: &crate::store::Tree, node: NodeId) -> Result<Vec<PackId>, MetaError> {
    let prefix = node_bytes(SHARD_PREFIX, node);
    let mut out: Vec<PackId> = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (k, _) = item?;
        if let Some(p) = k.get(prefix.len()..prefix.len() + 16).and_then(|b| PackId::from_slice(b).ok()) {
            if out.last() != Some(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Packs whose placement breaks the site rule.
pub(crate) fn site_broken(tree: &crate::store::Tree) -> Result<Vec<PackId>, MetaError> {
    let mut out = Vec::new();
    if count(tree, BROKEN_COUNT)? == 0 {
        return Ok(out);
    }
    for item in tree.scan_prefix(SITE_PREFIX) {
        let (k, _) = item?;
        if let Ok(p) = PackId::from_slice(&k[SITE_PREFIX.len()..]) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether any chunk entry or snapshot points at `pack`.
pub(crate) fn referenced(txn: &Txn<'_>, pack: &PackId) -> Result<bool, MetaError> {
    txn.contains(&pack_bytes(REFS_PREFIX, pack))
}

/// The ids of `repo`'s snapshots, in id order.
pub(crate) fn snapshots_of(txn: &Txn<'_>, repo: &RepoName) -> Result<Vec<SnapshotId>, MetaError> {
    let prefix = snapshot_repo_prefix(repo);
    Ok(txn.scan_prefix(&prefix)?.keys().filter_map(|k| SnapshotId::from_slice(&k[prefix.len()..]).ok()).collect())
}

/// Snapshot ids of `repo` after `after` (exclusive), at most `limit`, from
/// the index: a page costs its size.
pub(crate) fn snapshot_ids_after(
    tree: &crate::store::Tree,
    repo: &RepoName,
    after: Option<&SnapshotId>,
    limit: usize,
) -> Result<Vec<SnapshotId>, MetaError> {
    let prefix = snapshot_repo_prefix(repo);
    let start = match after {
        None => prefix.clone(),
        Some(id) => [prefix.as_slice(), id.as_bytes(), &[0]].concat(),
    };
    let mut out = Vec::new();
    for item in tree.range(start..) {
        let (k, _) = item?;
        if !k.starts_with(&prefix) || out.len() == limit {
            break;
        }
        if let Ok(id) = SnapshotId::from_slice(&k[prefix.len()..]) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The id of the snapshot of `source` (as `coffer_types::dr::source_key`
/// names it) in `repo` that ended last (the greater id on a tie), from the
/// index: one key read, however many snapshots the source has.
pub(crate) fn newest_of_source(
    tree: &crate::store::Tree,
    repo: &RepoName,
    source: &str,
) -> Result<Option<SnapshotId>, MetaError> {
    let prefix = source_prefix(repo, source);
    let Some(item) = tree.scan_prefix(&prefix).next_back() else { return Ok(None) };
    let (k, _) = item?;
    Ok(k.get(prefix.len() + 8..).and_then(|b| SnapshotId::from_slice(b).ok()))
}

/// The open incident of each node that has one.
pub(crate) fn open_incidents(tree: &crate::store::Tree) -> Result<HashMap<NodeId, u64>, MetaError> {
    let mut out = HashMap::new();
    if count(tree, OPEN_COUNT)? == 0 {
        return Ok(out);
    }
    for item in tree.scan_prefix(OPEN_PREFIX) {
        let (k, v) = item?;
        if let Some(node) = be_u64(&k[OPEN_PREFIX.len()..]) {
            out.insert(NodeId(node), kv::decode("open incident", &v)?);
        }
    }
    Ok(out)
}

/// The open incident of `node`, as the transaction sees it.
pub(crate) fn open_incident(txn: &Txn<'_>, node: NodeId) -> Result<Option<u64>, MetaError> {
    txn.get("open incident", &node_bytes(OPEN_PREFIX, node))
}

/// How many pack records there are.
pub(crate) fn pack_count(tree: &crate::store::Tree) -> Result<u64, MetaError> {
    count(tree, PACK_COUNT)
}

fn count(tree: &crate::store::Tree, counter: &[u8]) -> Result<u64, MetaError> {
    Ok(kv::get(tree, "index counter", counter)?.unwrap_or(0))
}

/// Whether any bad-shard record (`b/`) exists, read from its counter.
pub(crate) fn any_bad_shard(tree: &crate::store::Tree) -> Result<bool, MetaError> {
    Ok(count(tree, BAD_COUNT)? > 0)
}

/// Whether any drain record (`d/`) exists, read from its counter.
pub(crate) fn any_drain(tree: &crate::store::Tree) -> Result<bool, MetaError> {
    Ok(count(tree, DRAIN_COUNT)? > 0)
}

/// Copies moves left behind that the sweep has not deleted yet (`f/`).
pub(crate) fn former_copy_count(tree: &crate::store::Tree) -> Result<u64, MetaError> {
    Ok(kv::get(tree, "former copy count", COPY_COUNT)?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, RepairWork};
    use crate::test_util::{begin, run, snapshot, tree};
    use coffer_types::{ChunkId, ErasureParams, Hash32, PackKind, RepoRecord, SessionId, ShardIndex, ShardRecord};
    use proptest::prelude::*;

    /// What the `ix/` keys hold, and what a full scan computes.
    type Keys = BTreeMap<Vec<u8>, Vec<u8>>;

    fn compare(t: &crate::store::Tree) -> (Keys, Keys) {
        let kept = t.scan_prefix(INDEX_PREFIX).map(|kv| kv.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let mut scanned = BTreeMap::new();
        expected(t, |k, v| {
            assert!(scanned.insert(k, v).is_none(), "a scan emitted a key twice");
            Ok(())
        })
        .unwrap();
        (kept, scanned)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register { node: u8, site: u8 },
        Pack { pack: u8, nodes: [u8; 3], chunks: Vec<u8> },
        Move { pack: u8, index: u8, to: u8 },
        Bad { pack: u8, index: u8 },
        Open { node: u8 },
        Close { node: u8 },
        Remove { node: u8 },
        Snapshot { id: u8 },
        Forget { id: u8 },
        Drop { packs: Vec<u8> },
        Condemn { chunk: u8 },
        Sweep { chunk: u8 },
        Drain { node: u8, on: bool },
        ForgetCopies { copies: Vec<(u8, u8, u8)> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..6, 0u8..3).prop_map(|(node, site)| Op::Register { node, site }),
            (0u8..8, [0u8..6, 0u8..6, 0u8..6], proptest::collection::vec(0u8..24, 0..5))
                .prop_map(|(pack, nodes, chunks)| Op::Pack { pack, nodes, chunks }),
            (0u8..8, 0u8..3, 1u8..6).prop_map(|(pack, index, to)| Op::Move { pack, index, to }),
            (0u8..8, 0u8..3).prop_map(|(pack, index)| Op::Bad { pack, index }),
            (1u8..6).prop_map(|node| Op::Open { node }),
            (1u8..6).prop_map(|node| Op::Close { node }),
            (1u8..6).prop_map(|node| Op::Remove { node }),
            (10u8..14).prop_map(|id| Op::Snapshot { id }),
            (10u8..14).prop_map(|id| Op::Forget { id }),
            proptest::collection::vec(0u8..8, 1..4).prop_map(|packs| Op::Drop { packs }),
            (0u8..24).prop_map(|chunk| Op::Condemn { chunk }),
            (0u8..24).prop_map(|chunk| Op::Sweep { chunk }),
            (1u8..6, any::<bool>()).prop_map(|(node, on)| Op::Drain { node, on }),
            proptest::collection::vec((0u8..8, 0u8..3, 0u8..6), 1..4).prop_map(|copies| Op::ForgetCopies { copies }),
        ]
    }

    fn pack_id(p: u8) -> PackId {
        PackId([p + 100; 16])
    }

    fn command(op: &Op, repo: &RepoName, session: SessionId, clock: u64) -> Command {
        let params = ErasureParams::new(2, 1).unwrap();
        match op.clone() {
            Op::Register { node, site } => Command::RegisterNode {
                node: NodeRecord {
                    id: NodeId(node as u64),
                    site: SiteId::new(format!("s{site}")).unwrap(),
                    addr: "a:1".into(),
                    capacity_bytes: 1,
                    used_bytes: 0,
                    last_heartbeat_ms: 1,
                },
            },
            Op::Pack { pack, nodes, chunks } => {
                let id = pack_id(pack);
                Command::CommitPack {
                    session,
                    now_ms: clock,
                    pack: PackRecord {
                        id,
                        repo: repo.clone(),
                        kind: PackKind::Data,
                        params,
                        pack_len: 1000,
                        shard_len: 500,
                        shards: nodes
                            .iter()
                            .enumerate()
                            .map(|(i, n)| ShardRecord {
                                index: ShardIndex(i as u8),
                                node: NodeId(*n as u64),
                                checksum: Hash32([0; 32]),
                            })
                            .collect(),
                    },
                    chunks: chunks
                        .iter()
                        .map(|c| (ChunkId([*c; 32]), ChunkLocation { pack: id, offset: *c as u64, len: 10 }))
                        .collect(),
                }
            }
            Op::Move { pack, index, to } => Command::MoveShard {
                pack: pack_id(pack),
                index: ShardIndex(index),
                // The planner moves from the node the record names; a wrong
                // `from` is refused, which the test exercises too.
                from: NodeId(((to as u64) + 1) % 6),
                to: NodeId(to as u64),
                checksum: Hash32([0; 32]),
                work: RepairWork::default(),
            },
            Op::Bad { pack, index } => {
                Command::MarkBadShard { pack: pack_id(pack), index: ShardIndex(index), node: NodeId(1), time_ms: clock }
            }
            Op::Open { node } => {
                Command::OpenIncident { node: NodeId(node as u64), last_seen_ms: 1, detected_ms: 2, shards_lost: 0 }
            }
            Op::Close { node } => Command::CloseIncident { node: NodeId(node as u64), time_ms: clock },
            Op::Remove { node } => Command::RemoveNode { node: NodeId(node as u64) },
            Op::Snapshot { id } => {
                let mut s = snapshot(id, repo.clone());
                s.root = ChunkId([0; 32]);
                s.refs_pack = pack_id(id % 8);
                Command::CommitSnapshot { session, now_ms: clock, snapshot: s }
            }
            Op::Forget { id } => {
                Command::Forget { repo: repo.clone(), snapshots: vec![SnapshotId([id; 16])], time_ms: clock }
            }
            Op::Drop { packs } => {
                Command::DropPacks { repo: repo.clone(), packs: packs.into_iter().map(pack_id).collect() }
            }
            Op::Condemn { chunk } => Command::Condemn {
                repo: repo.clone(),
                chunks: vec![ChunkId([chunk; 32])],
                marked_from: vec![],
                time_ms: clock,
            },
            Op::Sweep { chunk } => Command::Sweep { repo: repo.clone(), chunks: vec![ChunkId([chunk; 32])] },
            Op::Drain { node, on } => {
                Command::SetDrain { node: NodeId(node as u64), drain: on, decommission: false, time_ms: clock }
            }
            Op::ForgetCopies { copies } => Command::ForgetCopies {
                copies: copies
                    .into_iter()
                    .map(|(pack, index, node)| (pack_id(pack), ShardIndex(index), NodeId(node as u64)))
                    .collect(),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// After any sequence of commands, every index equals what a full
        /// scan of the records computes (and a rebuild changes nothing).
        #[test]
        fn indexes_equal_a_full_scan_after_random_commands(ops in proptest::collection::vec(op(), 1..60)) {
            let t = tree();
            let repo = RepoName::new("r").unwrap();
            let params = ErasureParams::new(2, 1).unwrap();
            run(&t, Command::CreateRepo { repo: RepoRecord { name: repo.clone(), params, key_slots: vec![vec![1]], created_ms: 1 } });
            for node in 1..=3u64 {
                run(&t, Command::RegisterNode { node: NodeRecord {
                    id: NodeId(node), site: SiteId::new("s0").unwrap(), addr: "a:1".into(),
                    capacity_bytes: 1, used_bytes: 0, last_heartbeat_ms: 1 } });
            }
            let mut clock = 10;
            for (i, op) in ops.iter().enumerate() {
                clock += 1;
                // A fresh session now and then, as backups come and go.
                let session = begin(&t, &repo, (i % 200) as u8 + 1, u64::MAX / 2);
                run(&t, command(op, &repo, session, clock));
                if i % 7 == 0 {
                    run(&t, Command::EndSession { id: session });
                }
            }
            let (kept, scanned) = compare(&t);
            prop_assert_eq!(&kept, &scanned);
            rebuild(&t).unwrap();
            let (rebuilt, _) = compare(&t);
            prop_assert_eq!(&rebuilt, &kept);
        }
    }

    /// Several commands in one transaction (one Raft apply call) keep the
    /// indexes as well as one command per transaction does.
    #[test]
    fn a_batch_of_commands_keeps_the_indexes() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let params = ErasureParams::new(2, 1).unwrap();
        let session = SessionId([1; 16]);
        let mut txn = Txn::new(&t);
        let mut cmds = vec![Command::CreateRepo {
            repo: RepoRecord { name: repo.clone(), params, key_slots: vec![vec![1]], created_ms: 1 },
        }];
        for (node, site) in [(1, 0), (2, 1), (3, 2), (4, 0)] {
            cmds.push(command(&Op::Register { node, site }, &repo, session, 5));
        }
        cmds.push(Command::BeginSession {
            session: coffer_types::SessionRecord {
                id: session,
                repo: repo.clone(),
                started_ms: 1,
                lease_until_ms: 1 << 40,
            },
        });
        cmds.push(command(&Op::Pack { pack: 1, nodes: [1, 4, 0], chunks: vec![1, 2] }, &repo, session, 6));
        cmds.push(command(&Op::Move { pack: 1, index: 1, to: 3 }, &repo, session, 7));
        cmds.push(command(&Op::Register { node: 3, site: 0 }, &repo, session, 8));
        cmds.push(command(&Op::Open { node: 2 }, &repo, session, 9));
        for cmd in cmds {
            crate::apply::apply(&mut txn, cmd).unwrap();
        }
        txn.commit().unwrap();
        let (kept, scanned) = compare(&t);
        assert_eq!(kept, scanned);
        assert!(
            kept.keys().any(|k| k.starts_with(SITE_PREFIX)),
            "the pack breaks the site rule once node 3 moved site"
        );
    }

    #[test]
    fn the_newest_snapshot_of_a_source_is_one_key_of_its_index() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let put = |s: &SnapshotRecord| crate::test_util::put(&t, kv::snapshot_key(&s.id), s);
        let mut newest = None;
        // (id, end, tag): a later snapshot of another source, an older one
        // with a greater id, and two ending at once (the greater id wins,
        // as `max_by_key((end_ms, id))` over every snapshot would say).
        for (id, end, tag) in [
            (1u8, 30_000, "source:db"),
            (9, 10_000, "source:db"),
            (3, 50_000, "source:other"),
            (4, 30_000, "source:db"),
        ] {
            let mut s = snapshot(id, repo.clone());
            s.end_ms = end;
            s.tags = vec![tag.into()];
            put(&s);
            if id == 4 {
                newest = Some(s);
            }
        }
        assert_eq!(newest_of_source(&t, &repo, "db").unwrap(), Some(SnapshotId([4; 16])));
        assert_eq!(newest_of_source(&t, &repo, "other").unwrap(), Some(SnapshotId([3; 16])));
        assert_eq!(newest_of_source(&t, &repo, "d").unwrap(), None, "a prefix of a name is another source");
        // A manual backup's source is host:path.
        let mut manual = snapshot(5, repo.clone());
        manual.end_ms = 70_000;
        put(&manual);
        assert_eq!(newest_of_source(&t, &repo, "h:/p").unwrap(), Some(SnapshotId([5; 16])));

        // Forgotten: the one before it takes its place.
        let mut txn = Txn::new(&t);
        txn.remove(kv::snapshot_key(&newest.unwrap().id));
        txn.commit().unwrap();
        assert_eq!(newest_of_source(&t, &repo, "db").unwrap(), Some(SnapshotId([1; 16])));
        let (kept, scanned) = compare(&t);
        assert_eq!(kept, scanned);
    }

    /// Opens the stores in `dir` again. The store's background threads may
    /// hold its lock for a moment after the last handle of the previous
    /// opening is dropped, so a refusal is retried until a deadline.
    fn reopen(dir: &std::path::Path) -> (crate::LogStore, crate::StateMachineStore) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match crate::node::open_stores(dir) {
                Ok(stores) => return stores,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("reopening the stores: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopen the stores: {e}"),
            }
        }
    }

    #[test]
    fn a_store_of_schema_2_gets_the_snapshots_by_source_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoName::new("r").unwrap();
        {
            let (_log, sm) = crate::node::open_stores(dir.path()).unwrap();
            let t = sm.tree();
            let mut s = snapshot(1, repo.clone());
            s.tags = vec!["source:db".into()];
            crate::test_util::put(t, kv::snapshot_key(&s.id), &s);
            // What a node of the previous version left: no `ix/t/`, schema 2.
            for k in t.scan_prefix(SOURCE_PREFIX).keys() {
                t.remove(k.unwrap()).unwrap();
            }
            t.insert(kv::KEY_SCHEMA, kv::encode(&2u32).unwrap()).unwrap();
            t.flush().unwrap();
            assert_eq!(newest_of_source(t, &repo, "db").unwrap(), None);
        }
        let (_log, sm) = reopen(dir.path());
        let t = sm.tree();
        assert_eq!(newest_of_source(t, &repo, "db").unwrap(), Some(SnapshotId([1; 16])));
        assert_eq!(kv::get::<u32>(t, "schema", kv::KEY_SCHEMA).unwrap(), Some(kv::SCHEMA_VERSION));
        let (kept, scanned) = compare(t);
        assert_eq!(kept, scanned);
    }

    #[test]
    fn a_store_of_schema_3_gets_the_count_of_former_copies_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_log, sm) = crate::node::open_stores(dir.path()).unwrap();
            let t = sm.tree();
            // Two copies recorded by a node of the previous version, which
            // kept no count of them.
            for node in [3, 4] {
                let key = kv::former_copy_key(&pack_id(1), ShardIndex(0), NodeId(node));
                t.insert(key, kv::encode(&NodeId(5)).unwrap()).unwrap();
            }
            t.insert(kv::KEY_SCHEMA, kv::encode(&3u32).unwrap()).unwrap();
            t.flush().unwrap();
            assert_eq!(former_copy_count(t).unwrap(), 0);
        }
        let (_log, sm) = reopen(dir.path());
        let t = sm.tree();
        assert_eq!(former_copy_count(t).unwrap(), 2);
        assert_eq!(kv::get::<u32>(t, "schema", kv::KEY_SCHEMA).unwrap(), Some(kv::SCHEMA_VERSION));
        let (kept, scanned) = compare(t);
        assert_eq!(kept, scanned);
    }

    #[test]
    fn a_store_of_schema_4_gets_the_nodes_holding_shards_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_log, sm) = crate::node::open_stores(dir.path()).unwrap();
            let t = sm.tree();
            let params = ErasureParams::new(2, 1).unwrap();
            let shards = [3u64, 4, 4]
                .iter()
                .enumerate()
                .map(|(i, n)| ShardRecord { index: ShardIndex(i as u8), node: NodeId(*n), checksum: Hash32([0; 32]) })
                .collect();
            let pack = PackRecord {
                id: pack_id(1),
                repo: RepoName::new("r").unwrap(),
                kind: PackKind::Data,
                params,
                pack_len: 1000,
                shard_len: 500,
                shards,
            };
            crate::test_util::put(t, kv::pack_key(&pack.id), &pack);
            // What a node of the previous version left: counts, no holders.
            for k in t.scan_prefix(HOLDER_PREFIX).keys() {
                t.remove(k.unwrap()).unwrap();
            }
            t.insert(kv::KEY_SCHEMA, kv::encode(&4u32).unwrap()).unwrap();
            t.flush().unwrap();
            assert!(held(t).unwrap().is_empty());
        }
        let (_log, sm) = reopen(dir.path());
        let t = sm.tree();
        assert_eq!(held(t).unwrap(), HashMap::from([(NodeId(3), 1), (NodeId(4), 2)]));
        assert_eq!(kv::get::<u32>(t, "schema", kv::KEY_SCHEMA).unwrap(), Some(kv::SCHEMA_VERSION));
        let (kept, scanned) = compare(t);
        assert_eq!(kept, scanned);
    }
}
