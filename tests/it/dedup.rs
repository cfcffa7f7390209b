//! Deduplication: an unchanged tree uploads almost nothing again, and an
//! insertion in the middle of a large file uploads only nearby chunks.

use std::io::Write;

use coffer_testkit::{Cluster, ClusterSpec};
use rand::{RngCore, SeedableRng};

use crate::{backup, num, restore_and_compare};

#[test]
fn unchanged_and_shifted_data_dedups() -> anyhow::Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        std::fs::create_dir_all(&src)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut big = vec![0u8; 64 << 20];
        rng.fill_bytes(&mut big);
        std::fs::write(src.join("big.bin"), &big)?;
        std::fs::write(src.join("small.txt"), b"hello")?;

        let first = backup(c, &src, &[])?;
        assert!(num(&first, "bytes_new")? >= 64 << 20, "{first}");

        let second = backup(c, &src, &[])?;
        assert!(num(&second, "bytes_new")? <= 64 << 10, "an unchanged tree uploaded again: {second}");

        // Insert 1 MiB in the middle. Content-defined chunking re-cuts only the
        // chunks around the insertion (each at most 4 MiB).
        let mut insert = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut insert);
        let mid = big.len() / 2;
        let mut f = std::fs::File::create(src.join("big.bin"))?;
        f.write_all(&big[..mid])?;
        f.write_all(&insert)?;
        f.write_all(&big[mid..])?;
        drop(f);
        let third = backup(c, &src, &["--kind", "full"])?;
        let new = num(&third, "bytes_new")?;
        assert!(new >= 1 << 20, "the insertion itself must be new: {third}");
        assert!(new <= 10 << 20, "{} MiB new for a 1 MiB insertion: {third}", new >> 20);
        let snap = third["snapshot_id"].as_str().unwrap_or_default().to_string();
        restore_and_compare(c, &snap, &src)?;
        Ok(())
    })
}
