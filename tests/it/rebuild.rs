//! Failure detection and rebuild: redundancy comes back by itself after a
//! node or a site is lost, scrub finds damage, and every incident is
//! accounted for.

use std::time::Duration;

use anyhow::{Context, Result};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};
use serde_json::Value;

use crate::{backup, restore_and_compare};

/// 3 sites × 3 storage nodes, 4+2, a short down-after.
fn spec() -> ClusterSpec {
    ClusterSpec {
        nodes_per_site: 3,
        suspect_after: Duration::from_millis(1500),
        down_after: Duration::from_secs(3),
        ..ClusterSpec::default()
    }
}

fn packs(s: &Value) -> (u64, u64, u64, u64) {
    let p = &s["packs"];
    (
        p["healthy"].as_u64().unwrap_or(0),
        p["degraded"].as_u64().unwrap_or(0),
        p["at_risk"].as_u64().unwrap_or(0),
        p["lost"].as_u64().unwrap_or(0),
    )
}

/// Waits until every pack is healthy (all k+m shards on up nodes) and the
/// rebuild queue is empty.
fn wait_healthy(c: &Cluster, timeout: Duration) -> Result<Value> {
    wait_until("every pack healthy and the rebuild queue empty", timeout, || {
        let s = c.status().ok()?;
        let (healthy, degraded, at_risk, lost) = packs(&s);
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

#[test]
fn a_lost_node_is_rebuilt_by_itself_and_accounted_for() -> Result<()> {
    Cluster::run(spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 51, 40)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        wait_healthy(c, Duration::from_secs(10))?;

        let victim = node_index(c, "site-a", 0);
        let victim_id = c.storage[victim].node_id().context("victim id")?;
        c.kill_storage(victim);
        // Detected, rebuilt elsewhere: zero degraded packs, by itself.
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_healthy(c, Duration::from_secs(60))?;

        // The incident: timestamps in order, counts that match the rebuild.
        let incidents = c.cli(&["incidents", "--json"])?.ok()?.json()?;
        let inc = incidents
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["node"] == victim_id.as_str())
            .cloned()
            .with_context(|| format!("no incident for {victim_id}: {incidents}"))?;
        let t = |k: &str| inc[k].as_u64().unwrap_or(0);
        assert_eq!(inc["state"], "closed", "{inc}");
        assert!(t("last_seen_ms") > 0 && t("last_seen_ms") <= t("detected_ms"), "{inc}");
        assert!(t("detected_ms") <= t("rebuild_started_ms"), "{inc}");
        assert!(t("rebuild_started_ms") <= t("rebuild_finished_ms"), "{inc}");
        assert!(t("shards_lost") > 0 && t("shards_rebuilt") == t("shards_lost"), "{inc}");
        // Each rebuilt shard was written once, and read from k = 4 others.
        let nodes = c.cli(&["nodes", "--json"])?.ok()?.json()?;
        let written: u64 =
            nodes["nodes"].as_array().into_iter().flatten().filter_map(|n| n["rebuild_bytes_written"].as_u64()).sum();
        assert_eq!(t("bytes_written"), written, "incident bytes vs node counters: {inc} {nodes}");
        assert!(t("bytes_read") >= 4 * t("bytes_written") && t("bytes_read") > 0, "{inc}");

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
        for f in &deleted {
            std::fs::remove_file(f)?;
        }
        let scrub = c.cli(&["scrub", "--json"])?.ok()?.json()?;
        let bad: usize =
            scrub["nodes"].as_array().into_iter().flatten().map(|n| n["bad"].as_array().map_or(0, |b| b.len())).sum();
        assert_eq!(bad, corrupt.len() + deleted.len(), "scrub: {scrub}");

        // Rebuild repairs them in place; a second scrub finds nothing.
        wait_until("the bad shards to be repaired", Duration::from_secs(60), || {
            let s = c.cli(&["scrub", "--json"]).ok()?.ok().ok()?.json().ok()?;
            let bad: usize = s["nodes"].as_array()?.iter().map(|n| n["bad"].as_array().map_or(0, |b| b.len())).sum();
            (bad == 0).then_some(())
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

        let summary = restore_and_compare(c, &snap, &src)?;
        let bad = summary["bad_shards"].as_array().map_or(0, Vec::len);
        assert_eq!(bad, 2, "the restore names both damaged shards: {summary}");

        // No scrub runs (the first is a day away): the repair comes from the
        // restore's report alone, in place on the same nodes.
        wait_until("the damaged shards to be rebuilt", Duration::from_secs(60), || {
            let fixed = std::fs::read(&corrupt).ok().is_some_and(|now| now != bent) && deleted.exists();
            fixed.then_some(())
        })?;
        let scrub = c.cli(&["scrub", "--json"])?.ok()?.json()?;
        let still_bad: usize =
            scrub["nodes"].as_array().into_iter().flatten().map(|n| n["bad"].as_array().map_or(0, |b| b.len())).sum();
        assert_eq!(still_bad, 0, "scrub after the repair: {scrub}");
        let again = restore_and_compare(c, &snap, &src)?;
        assert_eq!(again["bad_shards"].as_array().map_or(0, Vec::len), 0, "{again}");
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
        assert!(s["site_degraded"].as_u64() > Some(0), "{s}");
        restore_and_compare(c, &snap, &src)?;

        // The site returns: shards move until every pack meets the rule again,
        // and the returning nodes' stale copies are collected.
        c.restart_site("site-c")?;
        c.wait_nodes_up(9, Duration::from_secs(30))?;
        wait_until("every pack to meet the site rule", Duration::from_secs(120), || {
            let s = c.status().ok()?;
            let (_, degraded, at_risk, lost) = packs(&s);
            (s["site_degraded"] == 0 && degraded + at_risk + lost == 0 && s["rebuild"]["queued"] == 0).then_some(())
        })?;
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
        let victim = node_index(c, "site-a", 0);
        let victim_id = c.storage[victim].node_id().context("victim id")?;
        c.kill_storage(victim);
        let start = std::time::Instant::now();
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_healthy(c, Duration::from_secs(120))?;
        let elapsed = start.elapsed().as_secs_f64();
        let nodes = c.cli(&["nodes", "--json"])?.ok()?.json()?;
        for n in nodes["nodes"].as_array().into_iter().flatten() {
            let read = n["rebuild_bytes_read"].as_u64().unwrap_or(0) as f64;
            // Generous bounds: the node read no faster than the limit allows
            // over the whole rebuild (plus one frame of slack).
            assert!(read <= limit as f64 * elapsed + (1 << 20) as f64, "node read {read} bytes in {elapsed:.1}s: {n}");
        }
        let total: u64 =
            nodes["nodes"].as_array().into_iter().flatten().filter_map(|n| n["rebuild_bytes_read"].as_u64()).sum();
        assert!(total > 0, "nothing was rebuilt: {nodes}");
        Ok(())
    })
}

#[test]
fn a_new_leader_resumes_an_interrupted_rebuild() -> Result<()> {
    let mut spec = spec();
    spec.meta_nodes = 3;
    spec.meta_flags = vec!["--rebuild-bandwidth".into(), (8u64 << 20).to_string()];
    Cluster::run(spec, |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 91, 64)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        let victim = node_index(c, "site-b", 2);
        let victim_id = c.storage[victim].node_id().context("victim id")?;
        c.kill_storage(victim);
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_until("the rebuild to start", Duration::from_secs(30), || {
            let s = c.status().ok()?;
            (s["rebuild"]["done"].as_u64() >= Some(1)).then_some(())
        })?;
        let leader = c.leader_index().context("a leader")?;
        c.kill_meta(leader);
        // The new leader counts every node as seen when it takes office, so it
        // finds the loss again after the down-after period, and resumes.
        wait_until("a new leader", Duration::from_secs(20), || c.leader())?;
        wait_down(c, std::slice::from_ref(&victim_id))?;
        wait_healthy(c, Duration::from_secs(120))?;
        // No shard placed twice: every pack's k+m shards sit on distinct nodes
        // (checked by the catalog on every move), and the data is whole.
        restore_and_compare(c, &snap, &src)?;
        let incidents = c.cli(&["incidents", "--json"])?.ok()?.json()?;
        for i in incidents.as_array().into_iter().flatten() {
            assert!(i["shards_rebuilt"].as_u64() <= i["shards_lost"].as_u64(), "a shard was rebuilt twice: {i}");
        }
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
            let (_, degraded, at_risk, lost) = packs(&s);
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
