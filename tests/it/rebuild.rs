//! Failure detection and rebuild: redundancy comes back by itself after a
//! node or a site is lost, scrub finds damage, and every incident is
//! accounted for.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};
use serde_json::Value;

use crate::{backup, list, num, restore_and_compare};

/// 3 sites × 3 storage nodes, 4+2, a short down-after.
fn spec() -> ClusterSpec {
    ClusterSpec {
        nodes_per_site: 3,
        suspect_after: Duration::from_millis(1500),
        down_after: Duration::from_secs(3),
        ..ClusterSpec::default()
    }
}

/// Healthy, degraded, at-risk and lost pack counts; `None` if a count is
/// missing (a wait then goes on, and fails at its deadline).
fn packs(s: &Value) -> Option<(u64, u64, u64, u64)> {
    let p = &s["packs"];
    Some((p["healthy"].as_u64()?, p["degraded"].as_u64()?, p["at_risk"].as_u64()?, p["lost"].as_u64()?))
}

/// Shards found bad, summed over every node of a `coffer scrub --json`
/// report; a node without a `bad` list fails.
fn scrub_bad(scrub: &Value) -> Result<usize> {
    list(scrub, "nodes")?.iter().map(|n| list(n, "bad").map(Vec::len)).sum()
}

/// Which storage nodes (indexes into `c.storage`) hold a file of each
/// (pack, shard index), and each pack's k + m from its shard headers.
#[derive(Default)]
struct Census {
    holders: BTreeMap<(String, u8), Vec<usize>>,
    width: BTreeMap<String, u8>,
}

impl Census {
    fn take(c: &Cluster) -> Result<Census> {
        let mut census = Census::default();
        for (i, node) in c.storage.iter().enumerate() {
            for f in node.shard_files() {
                let (pack, index, width) = shard_file_identity(&f)?;
                census.holders.entry((pack.clone(), index)).or_default().push(i);
                census.width.insert(pack, width);
            }
        }
        Ok(census)
    }

    /// Shards held by more than one node.
    fn copies(&self) -> usize {
        self.holders.values().filter(|h| h.len() > 1).count()
    }

    /// What is wrong with the cluster's files if every pack must have each
    /// of its k + m shards on exactly one node: empty when exact.
    fn defects(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (pack, width) in &self.width {
            for index in 0..*width {
                match self.holders.get(&(pack.clone(), index)).map_or(0, Vec::len) {
                    1 => {}
                    n => out.push(format!("{pack}.{index} on {n} nodes")),
                }
            }
        }
        out
    }
}

/// (pack, index, k + m) of a shard file, from its name (`<pack>.<index>`)
/// and its header (`CFSHARD1`, u16 version, u16 header length, 16-byte
/// pack id, index, k, m), read here independently of the storage crate.
fn shard_file_identity(f: &std::path::Path) -> Result<(String, u8, u8)> {
    let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (pack, index) = name.split_once('.').with_context(|| format!("shard file name {name}"))?;
    let index: u8 = index.parse().with_context(|| format!("shard index in {name}"))?;
    let mut head = [0u8; 31];
    std::io::Read::read_exact(&mut std::fs::File::open(f)?, &mut head).with_context(|| format!("read {name}"))?;
    ensure!(&head[..8] == b"CFSHARD1", "{name} is not a shard file");
    ensure!(head[28] == index, "{name} holds shard {} by its header", head[28]);
    Ok((pack.to_string(), index, head[29] + head[30]))
}

/// The incident recorded for storage node `id`.
fn incident_of(c: &Cluster, id: &str) -> Result<Value> {
    let incidents = c.cli(&["incidents", "--json"])?.ok()?.json()?;
    let found = incidents.as_array().into_iter().flatten().find(|i| i["node"] == id).cloned();
    found.with_context(|| format!("no incident for {id}: {incidents}"))
}

/// The sum of counter `key` over the storage nodes that answered `coffer
/// nodes --json`; each of those must report it, and `reachable` of them
/// must have answered.
fn node_counter_sum(nodes: &Value, key: &str, reachable: usize) -> Result<u64> {
    let answered: Vec<&Value> = list(nodes, "nodes")?.iter().filter(|n| n["reachable"] == true).collect();
    ensure!(answered.len() == reachable, "{} nodes answered, want {reachable}: {nodes}", answered.len());
    answered.into_iter().map(|n| num(n, key)).sum()
}

/// Waits until every pack is healthy (all k+m shards on up nodes) and the
/// rebuild queue is empty.
fn wait_healthy(c: &Cluster, timeout: Duration) -> Result<Value> {
    wait_until("every pack healthy and the rebuild queue empty", timeout, || {
        let s = c.status().ok()?;
        let (healthy, degraded, at_risk, lost) = packs(&s)?;
        let idle = s["rebuild"]["queued"] == 0 && s["rebuild"]["in_flight"] == 0;
        (healthy > 0 && degraded + at_risk + lost == 0 && idle).then_some(s)
    })
}

/// Waits until the leader counts `ids` as down.
fn wait_down(c: &Cluster, ids: &[String]) -> Result<()> {
    wait_until(&format!("nodes {ids:?} to be down"), Duration::from_secs(30), || {
        let s = c.status().ok()?;
        let down = s["nodes"]
            .as_array()?
            .iter()
            .filter(|n| ids.iter().any(|id| n["id"] == id.as_str()) && n["state"] == "down")
            .count();
        (down == ids.len()).then_some(())
    })
}

fn node_index(c: &Cluster, site: &str, nth: usize) -> usize {
    c.storage.iter().enumerate().filter(|(_, s)| s.site == site).nth(nth).map(|(i, _)| i).unwrap_or(0)
}

/// The node of `site` holding the most shard files: a victim with shards to
/// rebuild (placement may leave one node of a site without a shard of a
/// handful of packs).
fn busiest(c: &Cluster, site: &str) -> Result<usize> {
    let files = |i: usize| c.storage[i].shard_files().len();
    let victim = (0..c.storage.len()).filter(|&i| c.storage[i].site == site).max_by_key(|&i| files(i));
    let victim = victim.with_context(|| format!("no storage node in {site}"))?;
    ensure!(files(victim) > 0, "no node of {site} holds a shard");
    Ok(victim)
}

#[test]
fn a_lost_node_is_rebuilt_by_itself_and_accounted_for() -> Result<()> {
    Cluster::run(spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 51, 40)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        wait_healthy(c, Duration::from_secs(10))?;

        let victim = busiest(c, "site-a")?;
        let victim_id = c.storage[victim].node_id().context("victim id")?;
        c.kill_storage(victim);
        // Detected, rebuilt elsewhere: zero degraded packs, by itself.
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_healthy(c, Duration::from_secs(60))?;

        // The incident: timestamps in order, counts that match the rebuild.
        // It closes a repair tick after the last shard is placed.
        let inc = wait_until("the incident to close", Duration::from_secs(30), || {
            incident_of(c, &victim_id).ok().filter(|i| i["state"] == "closed")
        })?;
        let t = |k: &str| num(&inc, k);
        assert!(t("last_seen_ms")? > 0 && t("last_seen_ms")? <= t("detected_ms")?, "{inc}");
        assert!(t("detected_ms")? <= t("rebuild_started_ms")?, "{inc}");
        assert!(t("rebuild_started_ms")? <= t("rebuild_finished_ms")?, "{inc}");
        assert!(t("shards_lost")? > 0 && t("shards_rebuilt")? == t("shards_lost")?, "{inc}");
        // Each rebuilt shard was written once, and read from k = 4 others;
        // the eight survivors' counters account for every byte.
        let nodes = c.cli(&["nodes", "--json"])?.ok()?.json()?;
        let written = node_counter_sum(&nodes, "rebuild_bytes_written", 8)?;
        assert_eq!(t("bytes_written")?, written, "incident bytes vs node counters: {inc} {nodes}");
        assert!(t("bytes_read")? >= 4 * t("bytes_written")? && t("bytes_read")? > 0, "{inc}");

        // Two more nodes, in the other sites: without the rebuild this would
        // be three lost shards per pack, more than m.
        let b = node_index(c, "site-b", 0);
        let cc = node_index(c, "site-c", 0);
        c.kill_storage(b);
        c.kill_storage(cc);
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}

#[test]
fn scrub_finds_corrupt_and_deleted_shards_and_rebuild_repairs_them() -> Result<()> {
    Cluster::run(spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 61, 24)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();

        // One node gets corrupt shards, another loses some files.
        let a = &c.storage[node_index(c, "site-a", 1)];
        let b = &c.storage[node_index(c, "site-b", 1)];
        let corrupt: Vec<_> = a.shard_files().into_iter().take(3).collect();
        for f in &corrupt {
            let mut bytes = std::fs::read(f)?;
            let at = bytes.len() - 100;
            bytes[at] ^= 0xff;
            std::fs::write(f, bytes)?;
        }
        let deleted: Vec<_> = b.shard_files().into_iter().take(2).collect();
        for f in &corrupt {
            c.expect_damaged_shard(f);
        }
        for f in &deleted {
            std::fs::remove_file(f)?;
        }
        let scrub = c.cli(&["scrub", "--json"])?.ok()?.json()?;
        assert_eq!(scrub_bad(&scrub)?, corrupt.len() + deleted.len(), "scrub: {scrub}");
        // A node answers a scrub only once the catalog has its findings, so
        // whoever asked finds the damage there when the scrub returns (the
        // chaos checks wait on the catalog's view right after one).
        let mut reported = 0;
        for entry in std::fs::read_dir(c.dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("meta-") && name.ends_with(".log") {
                reported += std::fs::read_to_string(entry.path())?.matches("bad shard reported").count();
            }
        }
        assert!(
            reported >= corrupt.len() + deleted.len(),
            "the catalog had heard of {reported} bad shards when the scrub returned"
        );

        // Rebuild repairs them in place; a second scrub finds nothing.
        wait_until("the bad shards to be repaired", Duration::from_secs(60), || {
            let s = c.cli(&["scrub", "--json"]).ok()?.ok().ok()?.json().ok()?;
            (scrub_bad(&s).ok()? == 0).then_some(())
        })?;
        for f in corrupt.iter().chain(&deleted) {
            assert!(f.exists(), "{} was not rebuilt", f.display());
        }
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}

/// The largest data shard (index below k = 4) among `files`: one of a data
/// pack, which a full restore reads (unlike the reference lists' packs).
fn largest_data_shard(files: Vec<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    files
        .into_iter()
        .filter(|f| f.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u8>().ok()).is_some_and(|i| i < 4))
        .max_by_key(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
}

#[test]
fn a_restore_reports_the_damage_it_reads_around_and_the_cluster_repairs_it() -> Result<()> {
    Cluster::run(spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 62, 24)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();

        // A full restore reads every data shard of the data packs: on two
        // nodes, corrupt one and delete another.
        let mut picks: Vec<std::path::PathBuf> =
            c.storage.iter().filter_map(|n| largest_data_shard(n.shard_files())).collect();
        picks.sort_by_key(|f| std::cmp::Reverse(std::fs::metadata(f).map_or(0, |m| m.len())));
        let (corrupt, deleted) = match picks.as_slice() {
            [a, b, ..] => (a.clone(), b.clone()),
            _ => anyhow::bail!("fewer than two nodes hold data shards"),
        };
        let mut bent = std::fs::read(&corrupt)?;
        let at = bent.len() - 100;
        bent[at] ^= 0xff;
        std::fs::write(&corrupt, &bent)?;
        std::fs::remove_file(&deleted)?;
        c.expect_damaged_shard(&corrupt);

        let summary = restore_and_compare(c, &snap, &src)?;
        let bad = list(&summary, "bad_shards")?.len();
        assert_eq!(bad, 2, "the restore names both damaged shards: {summary}");

        // No scrub runs (the first is a day away): the repair comes from the
        // restore's report alone, in place on the same nodes.
        wait_until("the damaged shards to be rebuilt", Duration::from_secs(60), || {
            let fixed = std::fs::read(&corrupt).ok().is_some_and(|now| now != bent) && deleted.exists();
            fixed.then_some(())
        })?;
        let scrub = c.cli(&["scrub", "--json"])?.ok()?.json()?;
        assert_eq!(scrub_bad(&scrub)?, 0, "scrub after the repair: {scrub}");
        let again = restore_and_compare(c, &snap, &src)?;
        assert_eq!(list(&again, "bad_shards")?.len(), 0, "{again}");
        Ok(())
    })
}

#[test]
fn a_lost_site_regains_node_redundancy_then_the_site_rule() -> Result<()> {
    Cluster::run(spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 71, 24)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();

        let site_c: Vec<String> = c.storage.iter().filter(|s| s.site == "site-c").filter_map(|s| s.node_id()).collect();
        c.kill_storage_site("site-c");
        wait_down(c, &site_c)?;
        // Node-level redundancy back on two sites: all k+m shards on up nodes,
        // though the packs break the site rule now.
        let s = wait_healthy(c, Duration::from_secs(90))?;
        assert!(num(&s, "site_degraded")? > 0, "{s}");
        restore_and_compare(c, &snap, &src)?;
        // Site-c's files are still on its disks, and every shard of them is
        // now also rebuilt elsewhere: the returning site brings copies that
        // nothing places.
        let stale = Census::take(c)?;
        ensure!(stale.copies() > 0, "site-c's shards were not rebuilt elsewhere");
        // The catalog counts them: every rebuild moved a shard off a node of
        // site-c and recorded the copy it left there.
        let waiting = num(&c.status()?, "rebuild.copies_waiting")?;
        ensure!(waiting > 0, "status counts no copy left on site-c's nodes");

        // The leader's superfluous-copy sweep, whose full passes (every node
        // listed) are counted from here on.
        let sweep = |status: &Value| -> Result<Value> {
            let w = list(status, "workers")?.iter().find(|w| w["name"] == "superfluous-sweep").cloned();
            w.with_context(|| format!("no superfluous-sweep worker in {status}"))
        };
        // The first pass of the leader's term is a full one: wait for it.
        let full_before = wait_until("the sweep's first full pass", Duration::from_secs(30), || {
            let full = num(&sweep(&c.status().ok()?).ok()?, "progress.full_passes").ok()?;
            (full > 0).then_some(full)
        })?;

        // The site returns: shards move until every pack meets the rule again,
        // and the returning nodes' stale copies are collected.
        c.restart_site("site-c")?;
        c.wait_nodes_up(9, Duration::from_secs(30))?;
        let s = wait_until("every pack to meet the site rule", Duration::from_secs(120), || {
            let s = c.status().ok()?;
            let (_, degraded, at_risk, lost) = packs(&s)?;
            (s["site_degraded"] == 0 && degraded + at_risk + lost == 0 && s["rebuild"]["queued"] == 0).then_some(s)
        })?;
        // On disk: every shard of every pack exactly once (no copy left
        // behind, no placed copy deleted), and as many packs as the catalog.
        let census = wait_until("every shard to be on exactly one node", Duration::from_secs(60), || {
            let census = Census::take(c).ok()?;
            census.defects().is_empty().then_some(census)
        })?;
        let (healthy, degraded, at_risk, lost) = packs(&s).context("pack counts")?;
        let catalog_packs = healthy + degraded + at_risk + lost;
        ensure!(
            census.width.len() as u64 == catalog_packs,
            "{} packs on disk, {catalog_packs} in the catalog",
            census.width.len()
        );
        // The copies were collected from the moves the catalog recorded (a
        // shard moved back onto its old node, a copy deleted after its move,
        // or a routine pass), without listing every node again.
        let after = sweep(&c.status()?)?;
        ensure!(
            num(&after, "progress.full_passes")? == full_before,
            "the copies needed a full pass of the sweep: {after}"
        );
        // Every recorded copy is deleted and forgotten.
        wait_until("status to count no copy waiting", Duration::from_secs(60), || {
            (num(&c.status().ok()?, "rebuild.copies_waiting").ok()? == 0).then_some(())
        })?;
        // And each sits where the catalog places it.
        let check = c.cli(&["check", "--json"])?;
        ensure!(check.code == 0, "the catalog's placement does not match the nodes: {check:?}");
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}

#[test]
fn the_rebuild_bandwidth_limit_holds() -> Result<()> {
    // 4 MiB/s per node: each rebuilt shard reads 4 shards of a few MiB.
    let limit: u64 = 4 << 20;
    let mut spec = spec();
    spec.meta_flags = vec!["--rebuild-bandwidth".into(), limit.to_string(), "--rebuild-parallelism".into(), "2".into()];
    Cluster::run(spec, |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 81, 48)?;
        backup(c, &src, &[])?;
        let victim = busiest(c, "site-a")?;
        let victim_id = c.storage[victim].node_id().context("victim id")?;
        c.kill_storage(victim);
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_healthy(c, Duration::from_secs(120))?;
        // The rebuild's own window, from the first rebuild request to the
        // incident's close, excludes the time it took to detect the loss.
        // Its end is recorded when the incident closes, a tick after the
        // last shard is placed.
        let inc = wait_until("the incident to close", Duration::from_secs(30), || {
            incident_of(c, &victim_id).ok().filter(|i| i["state"] == "closed")
        })?;
        let window_ms = num(&inc, "rebuild_finished_ms")?.saturating_sub(num(&inc, "rebuild_started_ms")?);
        let window = window_ms as f64 / 1000.0;
        let nodes = c.cli(&["nodes", "--json"])?.ok()?.json()?;
        let total = node_counter_sum(&nodes, "rebuild_bytes_read", 8)?;
        for n in list(&nodes, "nodes")?.iter().filter(|n| n["reachable"] == true) {
            let read = num(n, "rebuild_bytes_read")? as f64;
            // The limiter reserves each frame (at most 1 MiB) before
            // reading it, so within the window a node reads at most the
            // limit's worth plus one frame.
            assert!(
                read <= limit as f64 * window + (1 << 20) as f64,
                "node read {read} bytes in {window:.3}s: {n}; incident {inc}"
            );
        }
        assert!(total > 0, "nothing was rebuilt: {nodes}");
        Ok(())
    })
}

#[test]
fn a_new_leader_resumes_an_interrupted_rebuild() -> Result<()> {
    let mut spec = spec();
    spec.meta_nodes = 3;
    spec.meta_flags = vec!["--rebuild-bandwidth".into(), (4u64 << 20).to_string()];
    Cluster::run(spec, |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 91, 64)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        // The node with the most shards, so that there is a rebuild to
        // interrupt between its first placed shard and its last.
        let victim = (0..c.storage.len()).max_by_key(|&i| c.storage[i].shard_files().len()).context("a node")?;
        let victim_id = c.storage[victim].node_id().context("victim id")?;
        c.kill_storage(victim);
        wait_down(c, std::slice::from_ref(&victim_id))?;
        // Killed once some shards are placed anew and others are not yet.
        wait_until("the rebuild to be under way", Duration::from_secs(30), || {
            let inc = incident_of(c, &victim_id).ok()?;
            let (done, lost) = (inc["shards_rebuilt"].as_u64()?, inc["shards_lost"].as_u64()?);
            (done >= 1 && done < lost).then_some(())
        })?;
        let leader = c.leader_index().context("a leader")?;
        c.kill_meta(leader);
        c.expect_lost_voter();
        // The new leader counts every node as seen when it takes office, so it
        // finds the loss again after the down-after period, and resumes.
        wait_until("a new leader", Duration::from_secs(20), || c.leader())?;
        // Only the leader commits moves, so what the new one finds is what
        // the old one left: the rebuild was interrupted, not finished.
        let left = incident_of(c, &victim_id)?;
        let (done, lost) = (num(&left, "shards_rebuilt")?, num(&left, "shards_lost")?);
        ensure!(done < lost, "the rebuild finished before the leader was killed: {left}");
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_healthy(c, Duration::from_secs(120))?;
        // No shard placed twice: every pack's k+m shards sit on distinct nodes
        // (checked by the catalog on every move), and the data is whole.
        restore_and_compare(c, &snap, &src)?;
        let all = c.cli(&["incidents", "--json"])?.ok()?.json()?;
        for i in all.as_array().context("incident list")? {
            ensure!(num(i, "shards_rebuilt")? <= num(i, "shards_lost")?, "a shard was rebuilt twice: {i}");
        }
        // The loss is one incident, closed once all its shards are rebuilt:
        // the new leader must not take the down node for a returned one.
        let inc = incident_of(c, &victim_id)?;
        let (rebuilt, lost) = (num(&inc, "shards_rebuilt")?, num(&inc, "shards_lost")?);
        ensure!(
            rebuilt == lost && inc["state"] == "closed",
            "the incident closed with {rebuilt} of {lost} shards rebuilt: {inc}; all incidents: {all}"
        );
        Ok(())
    })
}

#[test]
fn a_drained_node_is_emptied_and_a_decommissioned_one_leaves() -> Result<()> {
    Cluster::run(spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 101, 24)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        let victim = c.storage[node_index(c, "site-b", 0)].node_id().context("node id")?;
        c.cli(&["decommission", &victim])?.ok()?;
        // Its shards move away while it still serves them; then it leaves.
        wait_until("the decommissioned node to leave the cluster map", Duration::from_secs(90), || {
            let s = c.status().ok()?;
            let gone = !s["nodes"].as_array()?.iter().any(|n| n["id"] == victim.as_str());
            let (_, degraded, at_risk, lost) = packs(&s)?;
            (gone && degraded + at_risk + lost == 0).then_some(())
        })?;
        // It stays out, though it is still running and heartbeating: a
        // retired id cannot register again.
        restore_and_compare(c, &snap, &src)?;
        c.wait_nodes_up(8, Duration::from_secs(10))?;
        let s = c.status()?;
        assert!(!s["nodes"].as_array().into_iter().flatten().any(|n| n["id"] == victim.as_str()), "it came back: {s}");
        // Every shard it held is elsewhere: restore works with it stopped.
        let i = c.storage.iter().position(|s| s.node_id().as_deref() == Some(victim.as_str())).context("victim")?;
        c.kill_storage(i);
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}
