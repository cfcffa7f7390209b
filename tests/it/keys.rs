//! Key slots and key rotation, through the CLI against real processes: a
//! second password opens the repository, a removed one does not, the last
//! slot cannot go, and after two rotations snapshots of all three key
//! epochs restore byte-identical while new blobs carry the new epoch and
//! unchanged data still deduplicates.

use anyhow::{ensure, Context, Result};
use coffer_testkit::{write_sample_tree, Cluster, ClusterSpec, PASSWORD};
use serde_json::Value;

use crate::{backup, field, list, num, restore_and_compare};

const SECOND: &str = "a second, different password";

fn key_list(c: &Cluster) -> Result<Value> {
    c.cli(&["key", "list", "--json"])?.ok()?.json()
}

/// The epochs every slot holds, failing on an unreadable slot.
fn slot_epochs(keys: &Value) -> Result<Vec<Vec<u64>>> {
    list(keys, "slots")?
        .iter()
        .map(|s| list(s, "epochs")?.iter().map(|e| e.as_u64().context("epoch is not a number")).collect())
        .collect()
}

fn snapshot_id(summary: &Value) -> Result<String> {
    Ok(field(summary, "snapshot_id")?.as_str().context("snapshot_id is not a string")?.to_string())
}

#[test]
fn key_slots_and_rotation() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        // A fresh repository: one version-2 slot with the raised argon2id
        // parameters, holding epoch 0.
        let keys = key_list(c)?;
        assert_eq!(num(&keys, "current_epoch")?, 0, "{keys}");
        assert_eq!(slot_epochs(&keys)?, vec![vec![0]], "{keys}");
        let first = &list(&keys, "slots")?[0];
        assert_eq!(num(first, "version")?, 2, "{keys}");
        assert_eq!(num(first, "kdf.m_cost_kib")?, 64 * 1024, "{keys}");
        assert_eq!((num(first, "kdf.t_cost")?, num(first, "kdf.p_cost")?), (3, 4), "{keys}");
        let first_id = field(first, "id")?.as_str().context("id")?.to_string();

        // `key add` without a file and without a terminal fails clearly.
        let no_tty = c.cli(&["key", "add"])?;
        assert_eq!(no_tty.code, 1, "{no_tty:?}");
        assert!(no_tty.stderr.contains("--new-password-file"), "{}", no_tty.stderr);

        let pw_file = c.dir().join("second-password");
        std::fs::write(&pw_file, format!("{SECOND}\n"))?;
        let pw_path = pw_file.display().to_string();
        let added = c.cli(&["key", "add", "--new-password-file", &pw_path, "--json"])?.ok()?.json()?;
        let second_id = field(&added, "added")?.as_str().context("added")?.to_string();
        assert_ne!(second_id, first_id);
        let keys = key_list(c)?;
        assert_eq!(list(&keys, "slots")?.len(), 2, "{keys}");

        // Both passwords open the repository.
        c.cli(&["snapshots"])?.ok()?;
        c.cli(&["snapshots", "--password", SECOND])?.ok()?;

        // Epoch 0: a snapshot; then two rotations, one with each password,
        // each followed by a snapshot of new data.
        let mut sources = Vec::new();
        let mut snaps = Vec::new();
        let mut last = Value::Null;
        for (epoch, rotate_with) in [(0u64, None), (1, Some(PASSWORD)), (2, Some(SECOND))] {
            if let Some(pw) = rotate_with {
                let r = c.cli(&["key", "rotate", "--json", "--password", pw])?.ok()?.json()?;
                assert_eq!(num(&r, "epoch")?, epoch, "{r}");
                assert_eq!(num(&r, "slots")?, 2, "every slot holds the new epoch: {r}");
            }
            let src = c.dir().join(format!("src{epoch}"));
            write_sample_tree(&src, 100 + epoch, 2)?;
            last = backup(c, &src, &[])?;
            ensure!(num(&last, "chunks_new")? > 0, "epoch {epoch}'s data must be new: {last}");
            snaps.push(snapshot_id(&last)?);
            sources.push(src);
        }
        let keys = key_list(c)?;
        assert_eq!(num(&keys, "current_epoch")?, 2, "{keys}");
        assert_eq!(slot_epochs(&keys)?, vec![vec![0, 1, 2], vec![0, 1, 2]], "{keys}");
        // Rotation rewrote the slots, not their identities.
        let ids: Vec<&str> = list(&keys, "slots")?.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(ids, vec![first_id.as_str(), second_id.as_str()], "{keys}");

        // Snapshots of all three epochs restore byte-identical.
        for (snap, src) in snaps.iter().zip(&sources) {
            restore_and_compare(c, snap, src)?;
        }
        // Blobs of every epoch are there; the last backup's new chunks were
        // all sealed in epoch 2, read back from the blob headers.
        let check = c.cli(&["check", "--read-data", "--json"])?.ok()?.json()?;
        for epoch in ["0", "1", "2"] {
            ensure!(num(&check, &format!("blob_epochs.{epoch}"))? > 0, "no blob of epoch {epoch}: {check}");
        }
        let sealed_now = num(&check, "blob_epochs.2")?;
        ensure!(
            sealed_now >= num(&last, "chunks_new")?,
            "epoch 2 holds fewer blobs than the last backup wrote: {check}"
        );
        // The chunk-id key did not change: epoch 0's data dedups in epoch 2.
        let again = backup(c, &sources[0], &["--kind", "full"])?;
        ensure!(num(&again, "bytes_new")? <= 64 << 10, "unchanged data uploaded again after rotation: {again}");

        // Removing a slot: its password no longer opens, the other does.
        c.cli(&["key", "remove", &first_id, "--password", SECOND])?.ok()?;
        let removed = c.cli(&["snapshots"])?;
        assert_eq!(removed.code, 1, "{removed:?}");
        assert!(removed.stderr.contains("wrong password"), "{}", removed.stderr);
        c.cli(&["snapshots", "--password", SECOND])?.ok()?;
        restore_and_compare_with(c, &snaps[0], &sources[0], SECOND)?;
        // The last slot is refused, and an unknown id is named.
        let last_slot = c.cli(&["key", "remove", &second_id, "--password", SECOND])?;
        assert_eq!(last_slot.code, 1, "{last_slot:?}");
        assert!(last_slot.stderr.contains("last key slot"), "{}", last_slot.stderr);
        let unknown = c.cli(&["key", "remove", "00000000", "--password", SECOND])?;
        assert_eq!(unknown.code, 1, "{unknown:?}");
        assert!(unknown.stderr.contains("no key slot 00000000"), "{}", unknown.stderr);

        // The harness password comes back as a new slot holding every epoch.
        let harness_file = c.dir().join("harness-password");
        std::fs::write(&harness_file, PASSWORD)?;
        c.cli(&["key", "add", "--new-password-file", &harness_file.display().to_string(), "--password", SECOND])?
            .ok()?;
        assert_eq!(slot_epochs(&key_list(c)?)?, vec![vec![0, 1, 2], vec![0, 1, 2]]);
        restore_and_compare(c, &snaps[2], &sources[2])?;
        Ok(())
    })
}

/// `restore_and_compare` with another password.
fn restore_and_compare_with(c: &Cluster, snapshot: &str, source: &std::path::Path, password: &str) -> Result<()> {
    let target = tempfile::Builder::new().prefix("restore-").tempdir_in(c.dir())?;
    let t = target.path().join("out");
    c.cli(&["restore", snapshot, &t.display().to_string(), "--password", password])?.ok()?;
    ensure!(coffer_testkit::dir_digest(source)? == coffer_testkit::dir_digest(&t)?, "restore of {snapshot} differs");
    Ok(())
}
