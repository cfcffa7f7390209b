//! Backups through leader elections (issue 16, found by the chaos suite):
//! a leader that dies after applying BeginSession, CommitPack or
//! CommitSnapshot but before answering does not fail the backup (the client
//! retries on the next leader, which hears a repeat), and a leader fresh
//! from its election places packs on every storage node before its workers
//! or any heartbeat reached it.
//!
//! The moments are chosen with failpoints (`coffer_meta::failpoint`), armed
//! on the metadata node that must stop there, not guessed with sleeps.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use coffer_testkit::{write_sample_tree, Cluster, ClusterSpec};

use crate::{backup, num, restore_and_compare};

fn spec() -> ClusterSpec {
    ClusterSpec { meta_nodes: 3, failpoints: true, suspect_after: Duration::from_secs(5), ..ClusterSpec::default() }
}

fn leader(c: &Cluster) -> Result<usize> {
    coffer_testkit::wait_until("a leader", Duration::from_secs(30), || c.leader_index())
}

fn snapshot_ids(c: &Cluster) -> Result<Vec<String>> {
    let out = c.cli(&["snapshots", "--json"])?.ok()?.json()?;
    let all = out.as_array().context("snapshots is a list")?;
    Ok(all.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect())
}

#[test]
fn a_backup_rides_out_the_leader_dying_after_each_of_its_commits() -> Result<()> {
    Cluster::run(spec(), |c| {
        c.expect_lost_voter();
        let mut acked: Vec<(String, std::path::PathBuf)> = Vec::new();
        for (n, point) in [
            coffer_meta::failpoint::BEGIN_SESSION_APPLIED,
            coffer_meta::failpoint::COMMIT_PACK_APPLIED,
            coffer_meta::failpoint::COMMIT_SNAPSHOT_APPLIED,
        ]
        .into_iter()
        .enumerate()
        {
            let tree = c.dir().join(format!("tree-{n}"));
            write_sample_tree(&tree, 40 + n as u64, 6)?;
            let l = leader(c)?;
            c.arm_failpoint(l, point)?;
            let t = tree.display().to_string();
            let child = c.command(&["backup", &t, "--json"]).spawn()?;
            c.wait_failpoint_hit(l, Duration::from_secs(60))?;
            // The leader applied the write and hangs before answering: kill
            // it, as a crash at that moment would.
            c.kill_meta(l);
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success(),
                "the backup failed when the leader died at {point}: {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            let summary: serde_json::Value = stdout
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok().filter(|v: &serde_json::Value| v["type"] == "summary"))
                .context("no summary line")?;
            let id = summary["snapshot_id"].as_str().context("snapshot id")?.to_string();
            acked.push((id, tree));
            c.restart_meta(l)?;
            c.wait_voters(3, Duration::from_secs(30))?;
        }
        // Each backup committed exactly one snapshot: a retried commit that
        // the dead leader had applied was heard as a repeat, not doubled.
        let mut ids = snapshot_ids(c)?;
        ids.sort();
        let mut want: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
        want.sort();
        ensure!(ids == want, "snapshots {ids:?}, acknowledged {want:?}");
        for (id, tree) in &acked {
            restore_and_compare(c, id, tree)?;
        }
        let check = c.cli(&["check", "--json"])?;
        ensure!(check.code == 0, "{check:?}");
        Ok(())
    })
}

#[test]
fn a_leader_fresh_from_its_election_places_packs_on_every_node() -> Result<()> {
    Cluster::run(spec(), |c| {
        c.expect_lost_voter();
        let started = Instant::now();
        let first = c.dir().join("first");
        write_sample_tree(&first, 50, 4)?;
        backup(c, &first, &[])?;
        // A follower's liveness table starts when the process starts; the
        // bug needs it older than `suspect_after`, which the cluster's
        // start and the first backup almost always already make it.
        let suspect_after = c.spec().suspect_after;
        coffer_testkit::wait_until("the voters older than suspect_after", suspect_after * 2, || {
            (started.elapsed() > suspect_after).then_some(())
        })?;
        let old = leader(c)?;
        let followers: Vec<usize> = (0..c.meta.len()).filter(|i| *i != old).collect();
        for &f in &followers {
            c.arm_failpoint(f, coffer_meta::failpoint::HOLD_FRESH_LEADER)?;
        }
        c.kill_meta(old);
        let new = leader(c)?;
        ensure!(followers.contains(&new), "the killed leader still leads");
        // The new leader's workers have not run the leader-change hook and
        // no storage node has reached it: a backup now must still find
        // every node up.
        let second = c.dir().join("second");
        write_sample_tree(&second, 51, 4)?;
        let s = backup(c, &second, &[])?;
        ensure!(num(&s, "packs_short")? == 0, "packs went short after the election: {s}");
        let id = s["snapshot_id"].as_str().context("snapshot id")?.to_string();
        for &f in &followers {
            c.disarm_failpoint(f)?;
        }
        c.restart_meta(old)?;
        c.wait_voters(3, Duration::from_secs(30))?;
        restore_and_compare(c, &id, &second)?;
        Ok(())
    })
}

/// A leader cut off from every storage node but not from the voters hears
/// no heartbeat, so every node turns suspect; the agents still reach them,
/// so placement takes suspect nodes when too few are up (a put that fails
/// is re-placed by the agent) instead of refusing every backup.
#[test]
fn a_leader_that_hears_from_no_storage_node_still_places_packs() -> Result<()> {
    let spec = ClusterSpec { failpoints: true, ..ClusterSpec::default() };
    Cluster::run(spec, |c| {
        c.arm_failpoint(0, coffer_meta::failpoint::HOLD_NO_HEARTBEATS)?;
        coffer_testkit::wait_until("every storage node suspect", Duration::from_secs(30), || {
            let s = c.status().ok()?;
            let nodes = s["nodes"].as_array()?;
            (nodes.len() == 6 && nodes.iter().all(|n| n["state"] == "suspect")).then_some(())
        })?;
        let tree = c.dir().join("cut-off");
        write_sample_tree(&tree, 52, 4)?;
        let s = backup(c, &tree, &[])?;
        let id = s["snapshot_id"].as_str().context("snapshot id")?.to_string();
        c.disarm_failpoint(0)?;
        c.wait_nodes_up(6, Duration::from_secs(30))?;
        restore_and_compare(c, &id, &tree)?;
        Ok(())
    })
}
