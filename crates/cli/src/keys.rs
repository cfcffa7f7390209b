//! `coffer key list|add|remove|rotate`: the repository's key slots
//! (passwords) and key epochs, over `coffer_client::keys`.
//!
//! The new password of `key add` comes from `--new-password-file`, or is
//! asked twice on the terminal; with neither a file nor a terminal the
//! command fails instead of waiting on a pipe. No output ever carries key
//! material: ids, times, KDF parameters and epoch numbers only.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use coffer_client::keys::{add_key, list_keys, remove_key, rotate_key};
use coffer_pack::KdfParams;
use coffer_types::time::rfc3339;
use serde_json::json;

use crate::args::Global;
use crate::shared::{meta_client, password, repo_name};

pub async fn list(g: &Global) -> Result<()> {
    let meta = meta_client(g)?;
    let name = repo_name(g)?;
    let keys = list_keys(&meta, &name).await.with_context(|| format!("list the key slots of {name}"))?;
    if g.json {
        let slots: Vec<_> = keys
            .slots
            .iter()
            .map(|s| match &s.info {
                Ok(i) => json!({
                    "id": s.id,
                    "version": i.version,
                    "created_ms": i.created_ms,
                    "kdf": {"algorithm": "argon2id", "m_cost_kib": i.kdf.m_cost_kib, "t_cost": i.kdf.t_cost, "p_cost": i.kdf.p_cost},
                    "epochs": i.epochs,
                }),
                Err(e) => json!({"id": s.id, "error": e.to_string()}),
            })
            .collect();
        println!(
            "{}",
            json!({"repo": name.to_string(), "version": keys.version, "current_epoch": keys.current_epoch, "slots": slots})
        );
        return Ok(());
    }
    println!("repository {name}: {} key slot(s), current key epoch {}", keys.slots.len(), keys.current_epoch);
    println!("{:<10} {:<3} {:<21} {:<28} epochs", "id", "v", "created", "argon2id");
    for s in &keys.slots {
        match &s.info {
            Ok(i) => println!(
                "{:<10} {:<3} {:<21} {:<28} {}",
                s.id,
                i.version,
                i.created_ms.map(rfc3339).unwrap_or_else(|| "-".into()),
                format!("m={} MiB t={} p={}", i.kdf.m_cost_kib / 1024, i.kdf.t_cost, i.kdf.p_cost),
                i.epochs.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
            Err(e) => println!("{:<10} unreadable: {e}", s.id),
        }
    }
    Ok(())
}

pub async fn add(g: &Global, new_password_file: Option<&Path>) -> Result<()> {
    let meta = meta_client(g)?;
    let name = repo_name(g)?;
    let pw = password(g)?;
    let new_pw = new_password(new_password_file)?;
    let change = add_key(&meta, &name, &pw, &new_pw, KdfParams::default())
        .await
        .with_context(|| format!("add a key slot to {name}"))?;
    if g.json {
        println!("{}", json!({"added": change.id, "version": change.version}));
    } else {
        println!("added key slot {} to repository {name}", change.id);
    }
    Ok(())
}

pub async fn remove(g: &Global, id: &str) -> Result<()> {
    let meta = meta_client(g)?;
    let name = repo_name(g)?;
    let pw = password(g)?;
    let change =
        remove_key(&meta, &name, &pw, id).await.with_context(|| format!("remove key slot {id} from {name}"))?;
    if g.json {
        println!("{}", json!({"removed": change.id, "version": change.version}));
    } else {
        println!("removed key slot {} from repository {name}; its password no longer opens it", change.id);
    }
    Ok(())
}

pub async fn rotate(g: &Global) -> Result<()> {
    let meta = meta_client(g)?;
    let name = repo_name(g)?;
    let pw = password(g)?;
    let r = rotate_key(&meta, &name, &pw).await.with_context(|| format!("rotate the key of {name}"))?;
    if g.json {
        println!("{}", json!({"epoch": r.epoch, "slots": r.slots, "version": r.version}));
    } else {
        println!(
            "repository {name}: new data written from now on is sealed in key epoch {}; {} slot(s) hold it; \
             nothing stored was rewritten",
            r.epoch, r.slots
        );
    }
    Ok(())
}

/// The new password: from the file, or asked twice on the terminal.
fn new_password(file: Option<&Path>) -> Result<Vec<u8>> {
    let pw = match file {
        Some(f) => {
            let p = std::fs::read(f).with_context(|| format!("read --new-password-file {}", f.display()))?;
            p.strip_suffix(b"\n").unwrap_or(&p).to_vec()
        }
        None => {
            if !std::io::stdin().is_terminal() {
                bail!("no new password: pass --new-password-file FILE (stdin is not a terminal to ask on)");
            }
            let first = rpassword::prompt_password("new password: ").context("read the new password")?;
            let second = rpassword::prompt_password("new password again: ").context("read the new password")?;
            if first != second {
                bail!("the two new passwords differ; nothing was changed");
            }
            first.into_bytes()
        }
    };
    if pw.is_empty() {
        bail!("the new password is empty");
    }
    Ok(pw)
}
