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
use coffer_testkit::{dir_digest, write_sample_tree, Cluster, ClusterSpec};

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

/// A leader SIGKILLed and restarted comes back as leader of its old term
/// (openraft restores a committed vote as leadership) with the catalog it
/// had when it died. Its superfluous-copy sweep must not act on that
/// catalog: the shards a newer leader moved meanwhile are placed where the
/// stale catalog says they are not, and deleting them loses them (found by
/// the chaos suite). The sweep deletes only after a quorum confirmed the
/// node still leads; here the other voters are stopped, so it never is.
#[test]
fn a_stale_leader_restarted_after_a_kill_deletes_no_placed_shard() -> Result<()> {
    // Nodes stay up in every voter's eyes for the whole test (the stale
    // leader sees every node as heard from when it takes office), and a
    // 2+1 code leaves every pack a free node in its site to move to.
    let spec = ClusterSpec {
        meta_nodes: 3,
        failpoints: true,
        suspect_after: Duration::from_secs(120),
        down_after: Duration::from_secs(240),
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        c.expect_lost_voter();
        c.cli(&["repo", "create", "moved", "--k", "2", "--m", "1"])?.ok()?;
        let tree = c.dir().join("moved");
        write_sample_tree(&tree, 53, 4)?;
        let s = backup(c, &tree, &["--repo", "moved"])?;
        let id = s["snapshot_id"].as_str().context("snapshot id")?.to_string();
        ensure!(num(&s, "packs")? > 0 && num(&s, "packs_short")? == 0, "{s}");

        // The leader dies knowing this placement.
        let stale = leader(c)?;
        c.kill_meta(stale);
        let new = leader(c)?;
        ensure!(new != stale, "the killed leader still leads");

        // The new leader moves every shard off the fullest node.
        let x = (0..c.storage.len()).max_by_key(|i| c.storage[*i].shard_files().len()).context("a storage node")?;
        let x_id = c.storage[x].node_id().context("node id")?;
        c.cli(&["drain", &x_id])?.ok()?;
        coffer_testkit::wait_until("the drained node emptied", Duration::from_secs(90), || {
            let s = c.status().ok()?;
            let idle = s["rebuild"]["queued"] == 0 && s["rebuild"]["in_flight"] == 0;
            (idle && c.storage[x].shard_files().is_empty()).then_some(())
        })?;
        let placed: Vec<_> = c.storage.iter().flat_map(|s| s.shard_files()).collect();

        // The voters that know of the move stop; the old leader returns,
        // leads its old term, and runs a sweep pass on its stale catalog.
        let others: Vec<usize> = (0..c.meta.len()).filter(|i| *i != stale).collect();
        for &i in &others {
            c.stop_meta(i);
        }
        c.arm_failpoint(stale, coffer_meta::failpoint::MARK_SWEEP_PASSED)?;
        c.restart_meta(stale)?;
        c.wait_failpoint_hit(stale, Duration::from_secs(90))?;
        let after: Vec<_> = c.storage.iter().flat_map(|s| s.shard_files()).collect();
        let lost: Vec<_> = placed.iter().filter(|p| !after.contains(p)).collect();
        ensure!(lost.is_empty(), "the stale leader's sweep deleted placed shards: {lost:?}");

        for &i in &others {
            c.cont_meta(i);
        }
        c.wait_voters(3, Duration::from_secs(60))?;
        let out = c.dir().join("moved-restored");
        c.cli(&["restore", &id, &out.display().to_string(), "--json", "--repo", "moved"])?.ok()?;
        ensure!(dir_digest(&out)? == dir_digest(&tree)?, "the restore differs from its source");
        let check = c.cli(&["check", "--read-data", "--json", "--repo", "moved"])?;
        ensure!(check.code == 0, "{check:?}");
        Ok(())
    })
}
