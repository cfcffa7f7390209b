//! The replicated metadata plane: voters in three sites that survive the
//! loss of the leader, a stalled leader, a whole site, and a restart of
//! every voter; voters join by snapshot and leave; replicas agree.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};

use crate::{backup, num, restore_and_compare};

fn three_voters() -> ClusterSpec {
    ClusterSpec { meta_nodes: 3, ..ClusterSpec::default() }
}

/// Starts a backup and returns once it has committed at least one pack.
fn backup_under_way(c: &Cluster, path: &std::path::Path, extra: &[&str]) -> Result<Child> {
    let p = path.display().to_string();
    let mut args = vec!["backup", p.as_str(), "--json"];
    args.extend_from_slice(extra);
    let mut child = c.command(&args).spawn()?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if v["progress"]["packs"].as_u64() >= Some(1) || v["type"] == "summary" {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(child);
        }
    }
    anyhow::bail!("the backup ended before committing a pack")
}

/// The (id, term) of the member that reports itself leader, if one does.
fn leader_and_term(c: &Cluster) -> Option<(u64, u64)> {
    let m = c.members().ok()?;
    let x = m["members"].as_array()?.iter().find(|x| x["state"] == "leader")?.clone();
    Some((x["id"].as_u64()?, x["term"].as_u64()?))
}

/// Whether member `id` answered its own metrics in the latest listing.
fn reachable(c: &Cluster, id: u64) -> Result<bool> {
    let m = c.members()?;
    let me = m["members"].as_array().and_then(|a| a.iter().find(|x| x["id"] == id)).cloned();
    let me = me.with_context(|| format!("member {id} is not listed: {m}"))?;
    Ok(me["reachable"] == true)
}

/// Records every (term, leader) pair that members report of themselves,
/// and fails if one term ever had two leaders. An observation that cannot
/// be made (no member answers, a leader without a term) fails too: the
/// tests call it only while a majority is up.
#[derive(Default)]
struct LeaderLog(BTreeMap<u64, u64>);

impl LeaderLog {
    fn observe(&mut self, c: &Cluster) -> Result<()> {
        let m = c.members().context("list the members to observe the leaders")?;
        for x in crate::list(&m, "members")?.iter().filter(|x| x["state"] == "leader") {
            let (term, id) = (num(x, "term")?, num(x, "id")?);
            let prev = *self.0.entry(term).or_insert(id);
            ensure!(prev == id, "two leaders in term {term}: {prev} and {id}");
        }
        Ok(())
    }
}

#[test]
fn leader_killed_during_backup() -> Result<()> {
    Cluster::run(three_voters(), |c| {
        let first = c.dir().join("first");
        write_sample_tree(&first, 11, 6)?;
        let acked = backup(c, &first, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        let (old_id, old_term) = leader_and_term(c).context("a leader")?;
        let old_leader = c.meta.iter().position(|m| m.id == old_id).context("the leader's handle")?;

        let second = c.dir().join("second");
        write_sample_tree(&second, 12, 120)?;
        let mut child = backup_under_way(c, &second, &["--retry-for", "30s"])?;
        c.kill_meta(old_leader);
        c.expect_lost_voter();
        let status = child.wait()?;

        // Whoever leads a later term must be another voter: the killed one
        // cannot answer, let alone win an election.
        let (new_id, new_term) = wait_until("a leader of a later term", Duration::from_secs(20), || {
            leader_and_term(c).filter(|(_, term)| *term > old_term)
        })?;
        ensure!(new_id != old_id, "the killed leader {old_id} leads term {new_term}");
        ensure!(!reachable(c, old_id)?, "the killed leader {old_id} still answers");
        if !status.success() {
            // A clean failure: retried, it succeeds against the new leader.
            assert_eq!(status.code(), Some(1));
            backup(c, &second, &[])?;
        }
        restore_and_compare(c, &acked, &first)?;
        restore_and_compare(c, "latest", &second)?;
        Ok(())
    })
}

#[test]
fn stalled_leader_steps_down_and_nothing_is_lost() -> Result<()> {
    Cluster::run(three_voters(), |c| {
        let mut log = LeaderLog::default();
        log.observe(c)?;
        let stalled = c.leader_index().context("a leader")?;
        let stalled_id = c.meta[stalled].id;

        // Stall the leader well past the election timeout; backups go on
        // through the other two voters.
        c.stop_meta(stalled);
        c.expect_lost_voter();
        let new_id = wait_until("another leader", Duration::from_secs(20), || c.leader().filter(|l| *l != stalled_id))?;
        log.observe(c)?;
        let mut acked = Vec::new();
        for seed in 0..2 {
            let src = c.dir().join(format!("during-{seed}"));
            write_sample_tree(&src, 20 + seed, 4)?;
            let id = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
            acked.push((id, src));
            log.observe(c)?;
        }

        // It wakes up, learns of the higher term and follows.
        c.cont_meta(stalled);
        wait_until("the old leader to follow", Duration::from_secs(20), || {
            let m = c.members().ok()?;
            let me = m["members"].as_array()?.iter().find(|x| x["id"] == stalled_id)?.clone();
            (me["state"] == "follower" && me["leader"] == new_id).then_some(())
        })?;
        log.observe(c)?;
        for (id, src) in &acked {
            restore_and_compare(c, id, src)?;
        }
        log.observe(c)?;
        Ok(())
    })
}

#[test]
fn a_whole_site_with_its_voter_is_lost() -> Result<()> {
    // Three storage nodes per site, so that 4+2 still finds six nodes on
    // the two remaining sites (site-degraded, node-level redundancy kept).
    Cluster::run(ClusterSpec { nodes_per_site: 3, ..three_voters() }, |c| {
        let before = c.dir().join("before");
        write_sample_tree(&before, 31, 8)?;
        let acked = backup(c, &before, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();

        let (old_id, old_term) = leader_and_term(c).context("a leader")?;
        let leader_site = c.meta.iter().find(|m| m.id == old_id).context("the leader's handle")?.site.clone();
        c.kill_site(&leader_site);
        c.expect_lost_voter();
        // The membership still counts three voters; two of them elect a
        // leader of a later term among themselves.
        let (new_id, _) = wait_until("a leader among the survivors", Duration::from_secs(20), || {
            leader_and_term(c).filter(|(_, term)| *term > old_term)
        })?;
        c.wait_voters(3, Duration::from_secs(20))?;
        let survivor = c.meta.iter().any(|m| m.id == new_id && m.site != leader_site);
        ensure!(survivor, "leader {new_id} is not a voter of the surviving sites");

        // Catalog writes, new backups and restores all keep working.
        c.cli(&["repo", "create", "after-loss", "--k", "2", "--m", "1"])?.ok()?;
        let after = c.dir().join("after");
        write_sample_tree(&after, 32, 8)?;
        let new = backup(c, &after, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        restore_and_compare(c, &acked, &before)?;
        restore_and_compare(c, &new, &after)?;
        Ok(())
    })
}

#[test]
fn all_voters_killed_and_restarted() -> Result<()> {
    Cluster::run(three_voters(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 41, 8)?;
        let acked = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        for i in 0..3 {
            c.kill_meta(i);
            c.expect_lost_voter();
        }
        for i in 0..3 {
            c.restart_meta(i)?;
        }
        c.wait_voters(3, Duration::from_secs(30))?;
        c.wait_nodes_up(6, Duration::from_secs(30))?;
        restore_and_compare(c, &acked, &src)?;
        let again = c.dir().join("again");
        write_sample_tree(&again, 42, 2)?;
        backup(c, &again, &[])?;
        Ok(())
    })
}

#[test]
fn voters_join_by_snapshot_leave_and_agree() -> Result<()> {
    // Small snapshot interval and no log kept behind it: a new voter can
    // only catch up by installing a snapshot. openraft bounds every
    // AppendEntries by the heartbeat interval; while followers apply batches
    // of a 100k-chunk catalog and build snapshots on a loaded 2-core machine,
    // the failover tests' 100 ms is shorter than one apply, so this test,
    // which measures no failover, runs the production default (250 ms).
    let spec = ClusterSpec {
        snapshot_every: Some(50),
        keep_logs: Some(0),
        raft_heartbeat: Duration::from_millis(250),
        election_timeout: Duration::from_millis(1500),
        ..three_voters()
    };
    Cluster::run(spec, |c| {
        // A catalog of more than 100,000 chunks: 100,000 small distinct files.
        let src = c.dir().join("many");
        for d in 0..20 {
            let dir = src.join(format!("d{d:02}"));
            std::fs::create_dir_all(&dir)?;
            for f in 0..5_000 {
                std::fs::write(dir.join(format!("f{f:04}")), format!("file {d}/{f}\n"))?;
            }
        }
        let summary = backup(c, &src, &[])?;
        assert!(summary["chunks_new"].as_u64() >= Some(100_000), "{summary}");
        // Enough further writes to pass the snapshot interval.
        for i in 0..3 {
            let small = c.dir().join(format!("small-{i}"));
            std::fs::create_dir_all(&small)?;
            std::fs::write(small.join("x"), format!("{i}"))?;
            backup(c, &small, &[])?;
        }
        let status = c.status()?;
        assert!(status["catalog"]["chunks"].as_u64() >= Some(100_000), "{status}");

        // A newcomer installing the snapshot answers no AppendEntries for
        // a while, and the leader says so; so does it for the member that is
        // removed and killed below.
        c.expect_error("when AppendEntries 1->4");
        c.expect_error("when AppendEntries 1->5");
        let fourth = c.add_meta(4, "site-a")?;
        let fifth = c.add_meta(5, "site-b")?;
        c.wait_voters(5, Duration::from_secs(60))?;
        // The log behind the leader's snapshot is purged, so each newcomer can
        // only have caught up by installing that snapshot.
        for idx in [fourth, fifth] {
            let id = c.meta[idx].id;
            wait_until(&format!("voter {id} to install a snapshot and apply"), Duration::from_secs(60), || {
                let m = c.members().ok()?;
                let me = m["members"].as_array()?.iter().find(|x| x["id"] == id)?.clone();
                (me["snapshot_index"].as_u64() > Some(0)
                    && me["applied_index"].as_u64() > Some(100)
                    && me["state"] == "follower")
                    .then_some(())
            })?;
        }

        c.cli(&["cluster", "remove", "2"])?.ok()?;
        c.wait_voters(4, Duration::from_secs(30))?;
        c.kill_meta(1);
        c.expect_lost_voter();

        // Every remaining member reaches the same applied index and catalog.
        wait_until("replicas to agree", Duration::from_secs(30), || {
            let d = c.cli(&["cluster", "digest", "--json"]).ok()?.ok().ok()?.json().ok()?;
            let members = d["members"].as_array()?.clone();
            let applied: Vec<_> = members.iter().map(|x| x["applied_index"].clone()).collect();
            let digests: Vec<_> = members.iter().map(|x| x["digest"].clone()).collect();
            let agree = members.len() == 4
                && applied.iter().all(|a| *a == applied[0] && !a.is_null())
                && digests.iter().all(|h| *h == digests[0]);
            agree.then_some(())
        })?;
        restore_and_compare(c, "latest", &c.dir().join("small-2"))?;
        Ok(())
    })
}
