//! Invariant 1 for the storage plane: an acknowledged snapshot restores
//! byte-identical after the loss of a whole site, and after a corrupt shard.

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use coffer_testkit::{write_sample_tree, Cluster, ClusterSpec};

use crate::{backup, restore_and_compare};

#[test]
fn restore_survives_site_loss_and_corrupt_shards() -> anyhow::Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        // Text, incompressible data, a file over 100 MiB, a 0-byte file, a
        // sparse file, symlinks (one dangling), empty directories.
        write_sample_tree(&src, 1, 110)?;
        let summary = backup(c, &src, &[])?;
        let snap = summary["snapshot_id"].as_str().unwrap_or_default().to_string();
        assert!(summary["files"].as_u64() >= Some(45), "{summary}");
        assert!(summary["bytes_scanned"].as_u64() > Some(110 << 20), "{summary}");

        // Lose a whole site: both of its nodes, by SIGKILL.
        c.kill_storage_site("site-b");
        let restored = restore_and_compare(c, &snap, &src)?;
        assert!(restored["degraded_packs"].as_u64() > Some(0), "nothing was reconstructed: {restored}");

        // The site comes back on its data; now corrupt every shard file of a
        // node in another site. Restore detects the damage, reconstructs, and
        // still gives back the same bytes.
        c.restart_site("site-b")?;
        c.wait_nodes_up(6, Duration::from_secs(30))?;
        let victim = c.storage.iter().find(|s| s.site == "site-a").expect("a node in site-a");
        let files = victim.shard_files();
        assert!(!files.is_empty(), "the victim holds no shards");
        for f in &files {
            let len = std::fs::metadata(f)?.len();
            let mut file = std::fs::OpenOptions::new().write(true).open(f)?;
            // Past the header, in the body: flip a run of bytes.
            file.seek(SeekFrom::Start(len - len / 3))?;
            file.write_all(&[0xA5; 64])?;
        }
        for f in &files {
            c.expect_damaged_shard(f);
        }
        let restored = restore_and_compare(c, &snap, &src)?;
        let bad = restored["bad_shards"].as_array().cloned().unwrap_or_default();
        assert!(!bad.is_empty(), "corrupt shards went unnoticed: {restored}");
        Ok(())
    })
}
