//! Storage space: shards no pack record names are counted and collected by
//! their nodes, and a node whose filesystem is full is routed around by
//! backups and by rebuilds, with nothing lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use coffer_rpc::{Security, ShardPool, ShardPut, TlsPaths};
use coffer_testkit::{wait_until, write_sample_tree, Cluster, ClusterSpec};
use coffer_types::{Hash32, PackId, ShardIndex};

use crate::{backup, list, num, restore_and_compare};

/// Puts shards of a pack id no catalog ever heard of on the nodes at
/// `addrs`, as an upload that retried elsewhere leaves them. Returns the
/// pack id.
fn plant_orphans(c: &Cluster, addrs: &[String], body_len: usize) -> Result<PackId> {
    // The cluster administrator's certificate, as `coffer` commands use.
    let tls = c.tls_dir();
    let security =
        Security::tls(TlsPaths { ca: tls.join("ca.crt"), cert: tls.join("admin.crt"), key: tls.join("admin.key") })?;
    let pack = PackId::random();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let pool = ShardPool::with_security(security);
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
        let orphan = plant_orphans(c, &addrs, body_len)?;
        ensure!(files_of(c, &orphan).len() == 3, "the planted shards are on disk");

        // Counted first (per node and in total) once older than the age...
        // A node's count comes from its last pass, and a pass during the
        // backup counts that backup's shards not yet committed: wait until
        // the passes after it, on every node, so that exactly the planted
        // nodes count (a total alone could be one node's stale count).
        let bare = |a: &str| a.trim_start_matches("https://").trim_start_matches("http://").to_string();
        let status = wait_until("status to count the orphans", Duration::from_secs(60), || {
            let s = c.status().ok()?;
            let nodes = s["nodes"].as_array()?;
            // A node without the field has not counted: not settled.
            let settled = nodes.iter().all(|n| {
                let Some(bytes) = n["orphan_bytes"].as_u64() else { return false };
                let planted = addrs.iter().any(|a| n["addr"].as_str().map(bare) == Some(bare(a)));
                if planted {
                    bytes >= body_len as u64
                } else {
                    bytes == 0
                }
            });
            (settled && nodes.len() == c.storage.len() && s["orphan_bytes"].as_u64()? >= 3 * body_len as u64)
                .then_some(s)
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

/// Moves storage node `i` onto a tmpfs of `size_mib` mounted over its data
/// directory (its id and shards with it) and starts it again.
fn move_onto_small_fs(c: &mut Cluster, i: usize, size_mib: u64) -> Result<SmallFs> {
    c.terminate_storage(i, Duration::from_secs(20))?;
    let data = c.storage[i].data.clone();
    let moved = data.with_extension("disk");
    std::fs::rename(&data, &moved)?;
    let fs = SmallFs::mount(&data, size_mib)?;
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", moved.display())).arg(&data).status()?;
    ensure!(st.success(), "copy the node's data onto the small filesystem");
    c.start_storage(i)?;
    Ok(fs)
}

/// The status entry of the node whose id file says `id`.
fn node_status(status: &serde_json::Value, id: &str) -> Result<serde_json::Value> {
    list(status, "nodes")?.iter().find(|n| n["id"] == id).cloned().with_context(|| format!("node {id} in {status}"))
}

#[test]
fn a_full_node_is_routed_around_by_backups_and_rebuilds() -> Result<()> {
    if !is_root() {
        bail!("this test mounts size-limited tmpfs filesystems and needs root");
    }
    let spec = ClusterSpec {
        sites: 3,
        nodes_per_site: 3,
        suspect_after: Duration::from_millis(1500),
        down_after: Duration::from_secs(3),
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        // Every node on a 256 MiB filesystem of its own, so that none looks
        // far roomier than the others; then node 0's fills up with a file
        // that is not a shard, down to half its reserve.
        let mut mounts = Vec::new();
        for i in 0..c.storage.len() {
            mounts.push(move_onto_small_fs(c, i, 256)?);
        }
        c.wait_nodes_up(9, Duration::from_secs(30))?;
        let full = 0;
        let full_id = c.storage[full].node_id().context("node id")?;
        let reserve = num(&node_status(&c.status()?, &full_id)?, "reserve_bytes")?;
        ensure!(reserve > 0, "a default reserve on a 256 MiB filesystem");
        let avail = {
            let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&c.storage[full].data).output()?;
            String::from_utf8_lossy(&out.stdout).lines().nth(1).context("df output")?.trim().parse::<u64>()?
        };
        let junk = c.storage[full].data.join("junk");
        std::fs::write(&junk, vec![0xa5u8; (avail - reserve / 2) as usize])?;
        wait_until("the leader to hear the node is full", Duration::from_secs(30), || {
            let n = node_status(&c.status().ok()?, &full_id).ok()?;
            (n["free_bytes"].as_u64()? < n["reserve_bytes"].as_u64()?).then_some(())
        })?;
        let shards_before = c.storage[full].shard_files().len();

        // Backups go on, to the other nodes.
        let mut snaps = Vec::new();
        for seed in [1u64, 2] {
            let src = c.dir().join(format!("big-{seed}"));
            write_sample_tree(&src, 500 + seed, 20)?;
            let s = backup(c, &src, &[])?;
            ensure!(s["packs_short"].as_u64() == Some(0), "eight nodes with room take full packs: {s}");
            snaps.push((s["snapshot_id"].as_str().context("snapshot id")?.to_string(), src));
        }
        ensure!(c.storage[full].shard_files().len() == shards_before, "a shard went to the full node");

        // used_bytes is what the shard files hold, on every node, as of
        // the next heartbeats.
        let mismatch = |c: &Cluster| -> Result<Option<String>> {
            let status = c.status()?;
            for s in &c.storage {
                let id = s.node_id().context("node id")?;
                let du: u64 = s.shard_files().iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
                let used = num(&node_status(&status, &id)?, "used_bytes")?;
                if used != du {
                    return Ok(Some(format!("node {id}: used_bytes {used} but its shard files hold {du}")));
                }
            }
            Ok(None)
        };
        wait_until("used_bytes to match the shard files", Duration::from_secs(10), || {
            mismatch(c).ok().and_then(|m| m.is_none().then_some(()))
        })
        .with_context(|| format!("{:?}", mismatch(c)))?;

        // A node with shards dies: its shards are rebuilt on nodes with room.
        let victim = (1..c.storage.len()).find(|&i| !c.storage[i].shard_files().is_empty()).context("a victim")?;
        c.kill_storage(victim);
        wait_until("the rebuild to finish", Duration::from_secs(240), || {
            let s = c.status().ok()?;
            let r = &s["rebuild"];
            let idle = r["queued"].as_u64()? == 0 && r["in_flight"].as_u64()? == 0 && r["done"].as_u64()? > 0;
            let p = &s["packs"];
            (idle && p["lost"].as_u64()? == 0 && p["at_risk"].as_u64()? == 0 && p["degraded"].as_u64()? == 0)
                .then_some(())
        })?;
        ensure!(c.storage[full].shard_files().len() == shards_before, "a rebuild went to the full node");
        for (snap, src) in &snaps {
            restore_and_compare(c, snap, src)?;
        }
        drop(mounts);
        Ok(())
    })
}

/// Writes zeros into `path` until its filesystem refuses more, to the
/// last byte (what the chaos suite's disk-fill fault does).
fn fill_to_the_last_byte(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let block = vec![0u8; 1 << 20];
    let mut n = block.len();
    while n > 0 {
        if f.write_all(&block[..n]).is_err() {
            n /= 2;
        }
    }
    Ok(())
}

/// A storage node restarted while its filesystem is still full to the last
/// byte starts (found by the chaos suite: sled could not open the
/// inventory, and then the address file could not be written, so the
/// node exited), serves the shards it holds, and takes shards again once
/// space is back.
#[test]
fn a_node_restarted_on_a_full_disk_serves_its_shards_and_recovers() -> Result<()> {
    if !is_root() {
        bail!("this test mounts a size-limited tmpfs and needs root");
    }
    let spec = ClusterSpec {
        suspect_after: Duration::from_millis(1500),
        down_after: Duration::from_secs(60),
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        let full = 0;
        let _fs = move_onto_small_fs(c, full, 64)?;
        c.wait_nodes_up(6, Duration::from_secs(30))?;
        let src = c.dir().join("src");
        write_sample_tree(&src, 77, 4)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().context("snapshot id")?.to_string();
        let held = c.storage[full].shard_files().len();
        ensure!(held > 0, "the node got no shard");

        // Killed, and its inventory gone (it is rebuilt from the shard
        // files), so that opening it must write, as sled's recovery after a
        // SIGKILL may; then the filesystem fills to the last byte.
        c.kill_storage(full);
        std::fs::remove_dir_all(c.storage[full].data.join("inventory"))?;
        let fill = c.storage[full].data.join("fill");
        fill_to_the_last_byte(&fill)?;
        c.start_storage(full)?;
        c.wait_nodes_up(6, Duration::from_secs(30))?;
        // Its shards are needed: with two nodes of other sites stopped, only
        // k = 4 nodes hold each pack's shards, the full one among them.
        let others: Vec<usize> =
            (0..c.storage.len()).filter(|&i| c.storage[i].site != c.storage[full].site).take(2).collect();
        for &i in &others {
            c.kill_storage(i);
        }
        c.expect_error("No space left on device");
        restore_and_compare(c, &snap, &src)?;
        for &i in &others {
            c.start_storage(i)?;
        }
        c.wait_nodes_up(6, Duration::from_secs(30))?;

        // Space returns: the node takes shards again without a restart.
        std::fs::remove_file(&fill)?;
        let more = c.dir().join("more");
        write_sample_tree(&more, 78, 4)?;
        backup(c, &more, &[])?;
        wait_until("the node that was full to take shards again", Duration::from_secs(60), || {
            (c.storage[full].shard_files().len() > held).then_some(())
        })?;
        Ok(())
    })
}
