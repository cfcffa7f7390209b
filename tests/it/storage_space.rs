//! Storage space: shards no pack record names are counted and collected by
//! their nodes, and a node whose filesystem is full is routed around by
//! backups and by rebuilds, with nothing lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use coffer_rpc::{ShardPool, ShardPut};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};
use coffer_types::{Hash32, PackId, ShardIndex};

use crate::{backup, list, num, restore_and_compare};

/// Puts shards of a pack id no catalog ever heard of on the nodes at
/// `addrs`, as an upload that retried elsewhere leaves them. Returns the
/// pack id.
fn plant_orphans(addrs: &[String], body_len: usize) -> Result<PackId> {
    let pack = PackId::random();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let pool = ShardPool::default();
        for (i, addr) in addrs.iter().enumerate() {
            let body = vec![i as u8 + 1; body_len];
            let put = ShardPut {
                pack,
                index: ShardIndex(i as u8),
                k: 4,
                m: 2,
                checksum: Hash32(*blake3::hash(&body).as_bytes()),
            };
            pool.put(addr, put, bytes::Bytes::from(body)).await.map_err(|f| anyhow::anyhow!("put to {addr}: {f}"))?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(pack)
}

fn files_of(c: &Cluster, pack: &PackId) -> Vec<PathBuf> {
    let hex = pack.to_hex();
    c.storage.iter().flat_map(|s| s.shard_files()).filter(|f| f.to_string_lossy().contains(&hex)).collect()
}

#[test]
fn orphan_shards_are_counted_in_status_then_collected_and_real_ones_kept() -> Result<()> {
    let spec = ClusterSpec {
        storage_flags: vec!["--orphan-age".into(), "4s".into(), "--orphan-interval".into(), "1s".into()],
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 71, 4)?;
        let summary = backup(c, &src, &[])?;
        let snap = summary["snapshot_id"].as_str().context("snapshot id")?.to_string();
        let real: Vec<PathBuf> = c.storage.iter().flat_map(|s| s.shard_files()).collect();
        ensure!(!real.is_empty(), "the backup stored no shard");

        let addrs: Vec<String> = c.storage.iter().take(3).map(|s| s.addr.clone()).collect();
        let body_len = 300_000;
        let orphan = plant_orphans(&addrs, body_len)?;
        ensure!(files_of(c, &orphan).len() == 3, "the planted shards are on disk");

        // Counted first (per node and in total) once older than the age...
        let status = wait_until("status to count the orphans", Duration::from_secs(60), || {
            let s = c.status().ok()?;
            (s["orphan_bytes"].as_u64()? >= 3 * body_len as u64).then_some(s)
        })?;
        let counting = list(&status, "nodes")?.iter().filter(|n| n["orphan_bytes"].as_u64() > Some(0)).count();
        ensure!(counting == 3, "three nodes should report orphans: {status}");
        // ...then collected, and the count drops back.
        wait_until("the orphans collected", Duration::from_secs(60), || files_of(c, &orphan).is_empty().then_some(()))?;
        wait_until("status to show no orphans", Duration::from_secs(30), || {
            (num(&c.status().ok()?, "orphan_bytes").ok()? == 0).then_some(())
        })?;

        // Shards of real packs are all still there, and the snapshot restores.
        for f in &real {
            ensure!(f.exists(), "a shard of a committed pack was deleted: {}", f.display());
        }
        let workers = c.status()?;
        let collected: u64 = list(&workers, "workers")?
            .iter()
            .filter(|w| w["name"] == "orphans")
            .filter_map(|w| w["progress"]["collected_shards"].as_u64())
            .sum();
        ensure!(collected == 3, "the orphan workers collected {collected} shards, not 3: {workers}");
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}

/// A size-limited tmpfs mounted over a directory, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size_mib: u64) -> Result<SmallFs> {
        std::fs::create_dir_all(dir)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .context("run mount")?;
        ensure!(st.success(), "mount -t tmpfs on {} failed ({st}); this test needs root", dir.display());
        Ok(SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: the node may still hold files open while the cluster stops.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn a_full_node_is_routed_around_by_backups_and_rebuilds() -> Result<()> {
    if !is_root() {
        bail!("this test mounts a 64 MiB tmpfs and needs root");
    }
    let spec = ClusterSpec {
        sites: 3,
        nodes_per_site: 3,
        suspect_after: Duration::from_millis(1500),
        down_after: Duration::from_secs(3),
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        // Node 0 moves onto a 64 MiB filesystem (its id and shards with it).
        let small = 0;
        c.terminate_storage(small, Duration::from_secs(20))?;
        let data = c.storage[small].data.clone();
        let moved = data.with_extension("disk");
        std::fs::rename(&data, &moved)?;
        let _fs = SmallFs::mount(&data, 64)?;
        let st = Command::new("cp").arg("-a").arg(format!("{}/.", moved.display())).arg(&data).status()?;
        ensure!(st.success(), "copy the node's data onto the small filesystem");
        c.start_storage(small)?;
        c.wait_nodes_up(9, Duration::from_secs(30))?;
        let small_id = u64::from_str_radix(&c.storage[small].node_id().context("node id")?, 16)?;

        // Backups of 3 × 40 MiB: more than the small node can take.
        let mut snaps = Vec::new();
        for seed in [1u64, 2, 3] {
            let src = c.dir().join(format!("big-{seed}"));
            write_sample_tree(&src, 500 + seed, 40)?;
            let s = backup(c, &src, &[])?;
            snaps.push((s["snapshot_id"].as_str().context("snapshot id")?.to_string(), src));
        }
        let status = c.status()?;
        let node = list(&status, "nodes")?
            .iter()
            .find(|n| u64::from_str_radix(n["id"].as_str().unwrap_or(""), 16).ok() == Some(small_id))
            .context("the small node in status")?
            .clone();
        let (free, reserve) = (num(&node, "free_bytes")?, num(&node, "reserve_bytes")?);
        ensure!(reserve > 0, "the small node keeps a reserve: {node}");
        ensure!(free < reserve + (8 << 20), "the small node should be (nearly) full: {node}");
        let du: u64 = c.storage[small].shard_files().iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
        ensure!(num(&node, "used_bytes")? == du, "used_bytes {} differs from the shard files' {du}", node["used_bytes"]);

        // A node with shards dies: rebuilds go elsewhere, never to the full node.
        let victim = c.storage.iter().position(|s| s.site != c.storage[small].site).context("a victim")?;
        let before_small = c.storage[small].shard_files().len();
        c.kill_storage(victim);
        wait_until("the rebuild to finish", Duration::from_secs(240), || {
            let s = c.status().ok()?;
            let idle = s["rebuild"]["queued"].as_u64()? == 0 && s["rebuild"]["in_flight"].as_u64()? == 0;
            let done = s["rebuild"]["done"].as_u64()? > 0;
            (idle && done && s["packs"]["lost"].as_u64()? == 0 && s["packs"]["at_risk"].as_u64()? == 0).then_some(())
        })?;
        let after_small = c.storage[small].shard_files().len();
        ensure!(after_small <= before_small, "the full node took rebuilt shards ({before_small} -> {after_small})");
        for (snap, src) in &snaps {
            restore_and_compare(c, snap, src)?;
        }
        Ok(())
    })
}
