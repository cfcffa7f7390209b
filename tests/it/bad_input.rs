//! Bad input gets a clear error and a non-zero exit, never a panic, and
//! loses nothing: wrong password, unknown snapshot, unreachable endpoint,
//! usage errors, garbage on the servers' sockets, a truncated shard file.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use coffer_testkit::{write_sample_tree, Cluster, ClusterSpec};

use crate::{backup, restore_and_compare};

#[test]
fn bad_input_is_refused_clearly_and_loses_nothing() -> anyhow::Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 9, 4)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().unwrap_or_default().to_string();

        let wrong = c.cli(&["snapshots", "--password", "not the password"])?;
        assert_eq!(wrong.code, 1, "{wrong:?}");
        assert!(wrong.stderr.contains("wrong password"), "{}", wrong.stderr);

        let unknown = c.cli(&["restore", "deadbeef", "/tmp/nowhere"])?;
        assert_eq!(unknown.code, 1, "{unknown:?}");
        assert!(unknown.stderr.contains("deadbeef"), "{}", unknown.stderr);

        let no_repo = c.cli(&["snapshots", "--repo", "no-such-repo"])?;
        assert_eq!(no_repo.code, 1, "{no_repo:?}");
        assert!(no_repo.stderr.contains("no-such-repo"), "{}", no_repo.stderr);

        let unreachable = c.cli(&["status", "--endpoint", "127.0.0.1:1", "--retry-for", "500ms"])?;
        assert_eq!(unreachable.code, 1, "{unreachable:?}");
        assert!(unreachable.stderr.contains("unreachable"), "{}", unreachable.stderr);

        let usage = c.cli(&["backup", "--kind", "weekly", "/tmp"])?;
        assert_eq!(usage.code, 1, "{usage:?}");
        let usage = c.cli(&["restore"])?;
        assert_eq!(usage.code, 2, "a usage error exits 2: {usage:?}");
        // k + m that wraps a u32 is refused, not a panic (exit 101).
        for (k, m) in [("4294967295", "2"), ("2", "4294967295")] {
            let huge = c.cli(&["repo", "create", "huge", "--k", k, "--m", m])?;
            assert_eq!(huge.code, 1, "{huge:?}");
            assert!(huge.stderr.contains("k + m"), "{}", huge.stderr);
        }

        // Garbage bytes on every server socket: HTTP/2 preface errors, random
        // frames. The servers must survive and keep serving.
        // Every node's own reported address, each of which must accept the
        // connection (a refused one would send nothing and prove nothing).
        let addrs: Vec<String> =
            c.storage.iter().map(|s| s.addr.clone()).chain(c.meta.iter().map(|m| m.addr.clone())).collect();
        for addr in &addrs {
            for garbage in [
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x08\x00\x01\xff\xff\xff\xff",
                &[0xffu8; 4096],
            ] {
                let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
                s.set_write_timeout(Some(Duration::from_secs(1)))?;
                // The server may hang up mid-write: that is its answer.
                let _ = s.write_all(garbage);
            }
        }

        // A truncated shard file: the restore reconstructs around it.
        let victim = &c.storage[0];
        let files = victim.shard_files();
        assert!(!files.is_empty());
        for f in files.iter().take(3) {
            let len = std::fs::metadata(f)?.len();
            std::fs::OpenOptions::new().write(true).open(f)?.set_len(len / 2)?;
        }
        for f in files.iter().take(3) {
            c.expect_damaged_shard(f);
        }
        restore_and_compare(c, &snap, &src)?;
        // Every server is still up after all of the above, asked directly:
        // the leader's view would show a crashed node up for a while.
        c.probe_all()?;
        Ok(())
    })
}
