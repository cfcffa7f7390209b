//! Cluster tests: real `coffer` processes on loopback, driven through the
//! CLI as an operator would. One test binary with modules keeps link time
//! low. Every test waits on conditions with deadlines, never fixed sleeps.

mod bad_input;
mod dedup;
mod degraded;
mod meta_crash;
mod raft;
mod rebuild;
mod semantics;
mod site_loss;
mod stdin;

use std::path::Path;

use anyhow::{ensure, Result};
use coffer_testkit::{dir_digest, Cluster};

/// Backs up `path` and returns the summary line.
pub fn backup(c: &Cluster, path: &Path, extra: &[&str]) -> Result<serde_json::Value> {
    let p = path.display().to_string();
    let mut args = vec!["backup", p.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = c.cli(&args)?.ok()?;
    let summary = out.json()?;
    ensure!(summary["type"] == "summary", "last line is not a summary: {}", out.stdout);
    Ok(summary)
}

/// Restores `snapshot` into a fresh dir and checks it equals `source`.
pub fn restore_and_compare(c: &Cluster, snapshot: &str, source: &Path) -> Result<serde_json::Value> {
    let target = tempfile::Builder::new().prefix("restore-").tempdir_in(c.dir())?;
    let t = target.path().join("out");
    let out = c.cli(&["restore", snapshot, &t.display().to_string(), "--json"])?.ok()?;
    let want = dir_digest(source)?;
    let got = dir_digest(&t)?;
    if want != got {
        for (k, v) in &want {
            match got.get(k) {
                Some(g) if g == v => {}
                Some(g) => eprintln!("differs: {k}: want {v}, got {g}"),
                None => eprintln!("missing: {k}: {v}"),
            }
        }
        for k in got.keys().filter(|k| !want.contains_key(*k)) {
            eprintln!("extra: {k}");
        }
        anyhow::bail!("restore of {snapshot} differs from {}", source.display());
    }
    out.json()
}
