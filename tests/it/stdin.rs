//! Streams: `pg_dump | coffer backup --stdin` and `coffer restore SNAP -`.

use std::io::Write;
use std::process::Stdio;

use coffer_testkit::{Cluster, ClusterSpec};
use rand::{Rng, SeedableRng};

#[test]
fn a_stream_backs_up_and_restores_to_stdout() -> anyhow::Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let dump = c.dir().join("orders.sql");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&dump)?);
        for i in 0..200_000u32 {
            writeln!(
                f,
                "INSERT INTO orders VALUES ({i}, 'customer-{}', {:.2});",
                rng.gen::<u16>(),
                rng.gen::<f32>() * 500.0
            )?;
        }
        f.flush()?;
        drop(f);

        let out =
            c.cli_with_stdin(&["backup", "--stdin", "--stdin-name", "orders.sql", "--json"], Some(&dump))?.ok()?;
        let summary = out.json()?;
        assert_eq!(summary["files"], 1, "{summary}");

        let mut cmd = c.command(&["restore", "latest", "-"]);
        let restored = cmd.stdin(Stdio::null()).output()?;
        assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
        assert!(restored.stdout == std::fs::read(&dump)?, "restored stream differs");

        // A failing dump command records no snapshot and exits non-zero.
        let before = c.cli(&["snapshots", "--json"])?.ok()?.json()?;
        let failed = c.cli(&["backup", "--stdin-from-command", "echo partial; exit 3", "--stdin-name", "x.sql"])?;
        assert_ne!(failed.code, 0, "{failed:?}");
        assert!(failed.stderr.contains("no snapshot"), "{}", failed.stderr);
        let after = c.cli(&["snapshots", "--json"])?.ok()?.json()?;
        assert_eq!(before, after);
        Ok(())
    })
}
