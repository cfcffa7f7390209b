//! Graceful shutdown and worker status: every node reports its workers in
//! `coffer status --json`; SIGTERM stops a storage node and the metadata
//! node within a deadline with exit status 0, and both restart on the same
//! data with nothing lost.

use std::time::Duration;

use anyhow::{ensure, Result};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};
use serde_json::Value;

use crate::{backup, restore_and_compare};

/// The worker `name` of `node` in a status answer, if listed.
fn worker<'a>(status: &'a Value, node: &str, name: &str) -> Option<&'a Value> {
    status["workers"].as_array()?.iter().find(|w| w["node"] == node && w["name"] == name)
}

/// The `heartbeat` worker of a storage node once it has run at least once.
fn beating(status: &Value, node: &str) -> bool {
    worker(status, node, "heartbeat").is_some_and(|w| w["last_run"].is_string())
}

#[test]
fn sigterm_stops_nodes_cleanly_and_they_restart_on_their_data() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let ids: Vec<String> = c.storage.iter().map(|s| s.node_id().unwrap_or_default()).collect();
        ensure!(ids.iter().all(|i| !i.is_empty()), "every storage node has an id: {ids:?}");

        // The leader's workers and every storage node's are in status.
        let status = wait_until("every node's workers in status", Duration::from_secs(30), || {
            let s = c.status().ok()?;
            let leader = worker(&s, "meta-1", "repair-planner")?.clone();
            (leader["last_run"].is_string()
                && ids.iter().all(|id| beating(&s, id) && worker(&s, id, "scrub").is_some()))
            .then_some(s)
        })?;
        for w in status["workers"].as_array().into_iter().flatten() {
            for key in ["node", "name", "state", "last_run", "last_error"] {
                ensure!(w.get(key).is_some(), "worker {w} lacks {key}");
            }
            ensure!(
                ["busy", "idle", "throttled", "done"].contains(&w["state"].as_str().unwrap_or("")),
                "worker {w} in an unexpected state"
            );
        }
        for name in ["leadership", "repair-planner", "rebuild-executor", "superfluous-sweep"] {
            ensure!(worker(&status, "meta-1", name).is_some(), "the leader's {name} worker is not listed");
        }

        let src = c.dir().join("src");
        write_sample_tree(&src, 2, 6)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        ensure!(!snap.is_empty(), "the backup returned no snapshot id");

        // SIGTERM: exit 0 well within the deadline (the nodes' own is 10 s).
        let deadline = Duration::from_secs(20);
        let storage_exit = c.terminate_storage(0, deadline)?;
        ensure!(storage_exit.success(), "storage node exited with {storage_exit}");
        ensure!(c.storage[0].data.join("scrub-last").is_file(), "the scrub schedule is kept in the data dir");
        let meta_exit = c.terminate_meta(0, deadline)?;
        ensure!(meta_exit.success(), "metadata node exited with {meta_exit}");

        // Both restart on their data: the catalog is there, the node re-registers
        // and heartbeats (the new leader forgot every report of the old term).
        c.restart_meta(0)?;
        c.start_storage(0)?;
        wait_until("the restarted storage node heartbeating to the restarted leader", Duration::from_secs(60), || {
            let s = c.status().ok()?;
            (beating(&s, &ids[0]) && s["nodes"].as_array()?.iter().filter(|n| n["state"] == "up").count() == ids.len())
                .then_some(())
        })?;
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}
