//! SIGKILL the metadata node in the middle of a backup: every snapshot
//! acknowledged before the kill restores; the interrupted backup fails
//! cleanly (no snapshot of it appears), and a retry succeeds.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};

use crate::{backup, restore_and_compare};

#[test]
fn meta_crash_during_backup_loses_nothing_acknowledged() -> anyhow::Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let first = c.dir().join("first");
        write_sample_tree(&first, 3, 8)?;
        let acked = backup(c, &first, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();

        // A second backup, large enough to be under way when the node dies.
        let second = c.dir().join("second");
        write_sample_tree(&second, 4, 160)?;
        let s = second.display().to_string();
        let mut child = c.command(&["backup", &s, "--json", "--retry-for", "1s"]).spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Wait until the backup has committed packs, i.e. it is mid-write.
        let mut progressed = false;
        for line in lines.by_ref() {
            let v: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
            if v["progress"]["packs"].as_u64() >= Some(1) || v["type"] == "summary" {
                progressed = true;
                break;
            }
        }
        assert!(progressed, "the backup never committed a pack");
        c.kill_meta(0);
        let status = child.wait()?;
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let completed = status.success();
        eprintln!("interrupted backup: exit {status}, completed before the kill: {completed}; last lines: {rest:?}");
        if !completed {
            assert_eq!(status.code(), Some(1), "an interrupted backup exits 1: {rest:?}");
        }

        c.restart_meta(0)?;
        c.wait_nodes_up(6, Duration::from_secs(30))?;
        restore_and_compare(c, &acked, &first)?;

        let snaps = wait_until("snapshot list", Duration::from_secs(20), || {
            c.cli(&["snapshots", "--json"]).ok()?.ok().ok()?.json().ok()
        })?;
        let count = snaps.as_array().map(|a| a.len()).unwrap_or(0);
        assert_eq!(count, if completed { 2 } else { 1 }, "snapshots after the crash: {snaps}");

        // The retry succeeds and restores.
        let retried = backup(c, &second, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();
        restore_and_compare(c, &retried, &second)?;
        Ok(())
    })
}
