//! A storage node whose filesystem filled up to the last byte (by another
//! process, past its reserve) serves writes again once the space is freed.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_chaos::cluster::{ChaosCluster, ClusterShape};
use coffer_chaos::faults::{heal, inject, Fault};
use rand::{RngCore, SeedableRng};

#[test]
fn a_storage_node_writes_again_after_its_disk_was_full() -> Result<()> {
    if let Some(why) = coffer_chaos::net::unsupported_reason() {
        ensure!(std::env::var("COFFER_CHAOS_REQUIRE").ok().as_deref() != Some("1"), "cannot run: {why}");
        eprintln!("SKIPPED (nothing was checked): {why}");
        return Ok(());
    }
    coffer_chaos::net::clean_leftovers();
    let dir = tempfile::Builder::new().prefix(&format!("coffer-chaos-{}-df-", std::process::id())).tempdir()?;
    let bin = coffer_chaos::find_coffer()?;
    let shape = ClusterShape { sites: 3, nodes_per_site: 2, disk_mib: 256, skewable: Vec::new() };
    let mut c = ChaosCluster::start(dir.path(), &bin, shape)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut write_tree = |name: &str| -> Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p)?;
        let mut buf = vec![0u8; 20 << 20];
        rng.fill_bytes(&mut buf);
        std::fs::write(p.join("data.bin"), buf)?;
        Ok(p)
    };
    let first = write_tree("first")?;
    let snap = c.cli(&["backup", &first.display().to_string(), "--json"], Duration::from_secs(120))?.ok()?.json()?;
    let snap = snap["snapshot_id"].as_str().context("snapshot id")?.to_string();
    let mut fill = inject(&mut c, &Fault::DiskFill { storage: 0 }, 0, 2)?;
    for i in 0..3 {
        let t = write_tree(&format!("during-{i}"))?;
        let out = c.cli(&["backup", &t.display().to_string(), "--json"], Duration::from_secs(120))?;
        eprintln!("backup during the fill: exit {} {}", out.code, out.stderr.lines().last().unwrap_or(""));
    }
    // Deletes while the disk is full: the inventory must record them too.
    c.cli(&["forget", &snap], Duration::from_secs(60))?.ok()?;
    let gc = c.cli(&["gc", "--wait", "60s", "--json"], Duration::from_secs(90))?;
    eprintln!("gc during the fill: exit {} {}", gc.code, gc.stdout.lines().last().unwrap_or(""));
    heal(&mut c, &mut fill)?;
    let healed_at = std::time::SystemTime::now();
    eprintln!("healed at {healed_at:?}");
    // Every later pack of 4+2 on 6 nodes puts a shard on every node.
    let after = write_tree("after")?;
    let out = c.cli(&["backup", &after.display().to_string(), "--json"], Duration::from_secs(120))?.ok()?;
    eprintln!("{}", out.stdout.lines().last().unwrap_or(""));
    // Repair writes the missing shards of the packs stored short meanwhile.
    let mut last = serde_json::Value::Null;
    let repaired = coffer_chaos::cluster::wait("short packs repaired", Duration::from_secs(180), || {
        let s = c.status().ok()?;
        last = s["packs"].clone();
        (s["packs"]["short"].as_u64() == Some(0) && s["packs"]["degraded"].as_u64() == Some(0)).then_some(())
    });
    eprintln!("{last}");
    let log = std::fs::read_to_string(&c.storage[0].log).context("read the node's log")?;
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    eprintln!("{}", errors.join("\n"));
    repaired?;
    Ok(())
}
