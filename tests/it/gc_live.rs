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
use rand::{RngCore, SeedableRng};
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
        // `<n>.err` and `<n>.done` share the stem; only summaries count.
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
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

/// A leader killed while its collector waits, mid-round, for a backup that
/// was running at condemnation: the next leader finishes the run from the
/// catalog (the open round, the run asked for), and `coffer gc --wait`,
/// started before the kill, reports it.
#[test]
fn a_new_leader_finishes_the_gc_run_the_old_one_began() -> Result<()> {
    Cluster::run(ClusterSpec { meta_nodes: 3, ..ClusterSpec::default() }, |c| {
        // Garbage: a snapshot of 8 MB of its own, forgotten.
        let garbage = c.dir().join("garbage.bin");
        // Random bytes: neither deduplication nor compression may shrink it
        // (a multiplicative sequence of bytes repeats every 2 MiB and
        // compresses to a few kilobytes).
        let mut bytes = vec![0u8; 8_000_000];
        rand::rngs::StdRng::seed_from_u64(13).fill_bytes(&mut bytes);
        std::fs::write(&garbage, &bytes)?;
        let cat = format!("cat {}", garbage.display());
        let out = c.cli(&["backup", "--stdin-from-command", &cat, "--stdin-name", "g.bin", "--json"])?.ok()?.json()?;
        let forgotten = out["snapshot_id"].as_str().context("snapshot_id")?.to_string();
        c.cli(&["forget", &forgotten])?.ok()?;

        // A backup whose session stays open until released, so the run
        // condemns and then waits for it.
        let (started, release) = (c.dir().join("started"), c.dir().join("release"));
        let slow = format!(
            "echo small && touch {} && for i in $(seq 1200); do [ -e {} ] && exit 0; sleep 0.1; done; exit 1",
            started.display(),
            release.display()
        );
        let mut running = c
            .command(&[
                "backup",
                "--stdin-from-command",
                &slow,
                "--stdin-name",
                "s.txt",
                "--retry-for",
                "60s",
                "--json",
            ])
            .spawn()?;
        wait_until("the slow backup to open its session", Duration::from_secs(60), || started.exists().then_some(()))?;
        let collector = c.command(&["gc", "--wait", "180s", "--json"]).spawn()?;
        wait_until("the collector to condemn beside the open session", Duration::from_secs(60), || {
            let s = c.cli(&["status", "--json"]).ok()?.json().ok()?;
            (s["gc"]["rounds_open"].as_u64()? >= 1).then_some(())
        })?;
        let old = c.leader_index().context("a leader")?;
        let old_id = c.meta[old].id;
        c.kill_meta(old);
        c.expect_lost_voter();
        std::fs::write(&release, b"")?;
        let done = collector.wait_with_output()?;
        ensure!(done.status.success(), "gc --wait failed: {}", String::from_utf8_lossy(&done.stderr));
        let gc: Value = serde_json::from_slice(&done.stdout)?;
        eprintln!("gc across a leader change: {gc}");
        ensure!(num(&gc, "bytes_freed")? >= 8_000_000, "{gc}");
        let status = c.cli(&["status", "--json"])?.ok()?.json()?;
        ensure!(num(&status, "gc.last.by")? != old_id, "the killed leader {old_id} cannot have finished it: {status}");
        ensure!(num(&status, "gc.rounds_open")? == 0, "{status}");
        let _ = running.wait()?;
        let check = c.cli(&["check", "--json"])?;
        ensure!(check.code == 0, "{check:?}");
        Ok(())
    })
}

/// A tree whose first snapshot packs a 4 MB file and an 8 MB file together
/// and whose second keeps only the 4 MB one: once the first is forgotten,
/// the pack they share is two thirds dead. Returns the kept snapshot's id
/// and the directory it backed up.
fn half_dead_pack(c: &Cluster) -> Result<(String, std::path::PathBuf)> {
    let src = c.dir().join("src");
    std::fs::create_dir_all(&src)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (name, len) in [("keep.bin", 4_000_000), ("drop.bin", 8_000_000)] {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        std::fs::write(src.join(name), &bytes)?;
    }
    let id = |v: Value| v["snapshot_id"].as_str().map(str::to_string).context("snapshot_id");
    let first = id(c.cli(&["backup", &src.display().to_string(), "--json"])?.ok()?.json()?)?;
    std::fs::remove_file(src.join("drop.bin"))?;
    let kept = id(c.cli(&["backup", &src.display().to_string(), "--json"])?.ok()?.json()?)?;
    c.cli(&["forget", &first])?.ok()?;
    Ok((kept, src))
}

/// The run that answers request `run`, once the catalog has it.
fn finished_run(c: &Cluster, run: u64) -> Option<Value> {
    let s = c.cli(&["status", "--json"]).ok()?.json().ok()?;
    let last = s["gc"]["last"].clone();
    (last["run"].as_u64()? >= run).then_some(last)
}

/// Space held by a mostly dead pack comes back through the leader alone:
/// `coffer gc` (without `--wait`) asks and exits, and the leader's
/// collector sweeps, copies the live blobs into a new pack, drops the old
/// one and deletes its shards. (Before, only a `coffer gc --wait` client
/// holding the repository rewrote packs, so the shard bytes never fell.)
#[test]
fn the_leader_rewrites_mostly_dead_packs_with_no_client_alive() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let (kept, src) = half_dead_pack(c)?;
        let before = stored_bytes(c);
        let asked = c.cli(&["gc", "--json"])?.ok()?.json()?;
        let run = num(&asked, "run")?;
        // The client is gone; the leader does the rest.
        let last = wait_until("the leader's gc run", Duration::from_secs(180), || finished_run(c, run))?;
        eprintln!("gc run by the leader: {last}");
        ensure!(num(&last, "packs_rewritten")? >= 1, "{last}");
        ensure!(num(&last, "packs_dropped")? >= 1, "{last}");
        ensure!(last["error"].is_null(), "{last}");
        let after = stored_bytes(c);
        eprintln!("shard bytes on the nodes {before} -> {after}");
        // 12 MB of blobs became 4 MB (at 1.5x): well under two thirds.
        ensure!(after * 3 < before * 2, "shard bytes did not fall enough: {before} -> {after}: {last}");
        let status = c.cli(&["status", "--json"])?.ok()?.json()?;
        ensure!(num(&status, "gc.packs_rewritten")? >= 1, "{status}");
        restore_and_compare(c, &kept, &src)?;
        let check = c.cli(&["check", "--read-data", "--json"])?;
        ensure!(check.code == 0, "{check:?}");
        Ok(())
    })
}

/// The leader is killed while its collector rewrites (slowed down by
/// `--gc-rewrite-bandwidth`, so the kill lands mid-rewrite): the next
/// leader answers the same request, nothing mostly dead is left, and the
/// kept snapshot restores byte-identical with every shard readable.
#[test]
fn a_leader_killed_mid_rewrite_leaves_the_rewrite_to_the_next() -> Result<()> {
    let spec = ClusterSpec {
        meta_nodes: 3,
        meta_flags: vec!["--gc-rewrite-bandwidth".into(), "500000".into()],
        ..ClusterSpec::default()
    };
    Cluster::run(spec, |c| {
        let (kept, src) = half_dead_pack(c)?;
        let asked = c.cli(&["gc", "--json"])?.ok()?.json()?;
        let run = num(&asked, "run")?;
        wait_until("the collector to rewrite", Duration::from_secs(120), || {
            let s = c.cli(&["status", "--json"]).ok()?.json().ok()?;
            (s["gc"]["rewrite_pending"].as_u64()? >= 1).then_some(())
        })?;
        let old = c.leader_index().context("a leader")?;
        let old_id = c.meta[old].id;
        c.kill_meta(old);
        c.expect_lost_voter();
        let last = wait_until("the next leader's gc run", Duration::from_secs(240), || finished_run(c, run))?;
        eprintln!("gc run after the leader change: {last}");
        ensure!(num(&last, "by")? != old_id, "the killed leader {old_id} cannot have finished it: {last}");
        ensure!(num(&last, "packs_partly_dead")? == 0, "a mostly dead pack is left: {last}");
        ensure!(last["error"].is_null(), "{last}");
        // The old pack went, by this run or the killed leader's rewrite.
        let again = c.cli(&["gc", "--wait", "120s", "--json"])?.ok()?.json()?;
        ensure!(num(&again, "packs_partly_dead")? == 0 && num(&again, "packs_rewritten")? == 0, "{again}");
        restore_and_compare(c, &kept, &src)?;
        let check = c.cli(&["check", "--read-data", "--json"])?;
        ensure!(check.code == 0, "{check:?}");
        Ok(())
    })
}
