//! Garbage collection while backups never stop (issue 13, item 5): a
//! background loop commits a backup of a mutating tree about every second
//! for the whole test, while `coffer forget` and `coffer gc --wait` reclaim
//! the space of the forgotten snapshots; then every kept snapshot restores
//! byte-identical to what was backed up (a copy of the tree is kept per
//! snapshot).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{wait_until, Cluster, ClusterSpec};
use serde_json::Value;

use crate::{num, restore_and_compare};

/// Bytes of every shard file on every storage node.
fn stored_bytes(c: &Cluster) -> u64 {
    c.storage.iter().flat_map(|s| s.shard_files()).filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
}

/// The snapshot ids the background loop committed, in order, with the
/// directory that holds what each one backed up.
fn committed(out: &Path) -> Result<Vec<(u64, String)>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(out)? {
        let path = e?.path();
        let Some(n) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) else { continue };
        // A summary is written whole only once the backup exits.
        if !path.with_extension("done").exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let last = text.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(last).with_context(|| format!("summary {n}: {text}"))?;
        let id = v["snapshot_id"].as_str().with_context(|| format!("no snapshot_id in {v}"))?.to_string();
        found.push((n, id));
    }
    found.sort();
    Ok(found)
}

#[test]
fn gc_reclaims_space_while_backups_commit_every_second() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        let (out, exp, stop) = (c.dir().join("out"), c.dir().join("expected"), c.dir().join("stop"));
        for d in [&src, &out, &exp] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(src.join("stable.txt"), "the same in every snapshot\n".repeat(1000))?;
        // The loop: change the tree (a new 3 MB random file and a counter),
        // back it up, keep a copy of what was backed up; about once a second.
        let template = c.command(&[]);
        let script = format!(
            r#"i=0
while [ ! -e "{stop}" ]; do
  i=$((i+1))
  echo "generation $i" > "{src}/gen.txt"
  head -c 3000000 /dev/urandom > "{src}/blob.bin"
  "$COFFER_BIN" backup "{src}" --json > "{out}/$i.json" 2> "{out}/$i.err" || exit 1
  cp -a "{src}" "{exp}/$i"
  touch "{out}/$i.done"
  sleep 1
done"#,
            stop = stop.display(),
            src = src.display(),
            out = out.display(),
            exp = exp.display(),
        );
        let mut looper = Command::new("bash");
        looper.arg("-c").arg(script).env("COFFER_BIN", template.get_program());
        for (k, v) in template.get_envs() {
            match v {
                Some(v) => looper.env(k, v),
                None => looper.env_remove(k),
            };
        }
        let mut looper = looper.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let result = (|| -> Result<()> {
            wait_until("six backups of the loop", Duration::from_secs(120), || {
                committed(&out).ok().filter(|s| s.len() >= 6).map(|_| ())
            })?;
            // Forget the first four snapshots while the loop keeps going.
            let first: Vec<(u64, String)> = committed(&out)?.into_iter().take(4).collect();
            let mut args = vec!["forget"];
            args.extend(first.iter().map(|(_, id)| id.as_str()));
            c.cli(&args)?.ok()?;
            let before = stored_bytes(c);
            let gc = c.cli(&["gc", "--wait", "180s", "--json"])?.ok()?.json()?;
            let after = stored_bytes(c);
            eprintln!("gc under continuous backups: {gc}; shard bytes {before} -> {after}");
            // Each forgotten snapshot had ~3 MB of its own (its blob.bin).
            ensure!(num(&gc, "chunks_swept")? >= 4, "{gc}");
            ensure!(num(&gc, "bytes_freed")? >= 6_000_000, "{gc}");
            ensure!(num(&gc, "packs_dropped")? >= 2, "{gc}");
            let status = c.cli(&["status", "--json"])?.ok()?.json()?;
            ensure!(num(&status, "gc.last.bytes_freed")? > 0, "{status}");
            // The loop went on committing meanwhile.
            let during = committed(&out)?.len();
            wait_until("two more backups after gc", Duration::from_secs(60), || {
                committed(&out).ok().filter(|s| s.len() >= during + 2).map(|_| ())
            })?;
            Ok(())
        })();
        std::fs::write(&stop, b"")?;
        let status = looper.wait()?;
        let mut err = String::new();
        if let Some(mut e) = looper.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut err)?;
        }
        result?;
        ensure!(status.success(), "the backup loop failed: {err}");
        // Every snapshot still in the catalog restores as it was backed up.
        let forgotten = 4;
        let all = committed(&out)?;
        ensure!(all.len() >= 8, "only {} backups committed", all.len());
        for (n, id) in all.iter().skip(forgotten) {
            restore_and_compare(c, id, &exp.join(n.to_string())).with_context(|| format!("snapshot {n} ({id})"))?;
        }
        eprintln!("{} backups committed during the test; {} kept snapshots restored", all.len(), all.len() - forgotten);
        let check = c.cli(&["check", "--json"])?;
        ensure!(check.code == 0, "{check:?}");
        Ok(())
    })
}
