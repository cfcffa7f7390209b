//! Cluster tests: real `coffer` processes on loopback, driven through the
//! CLI as an operator would. One test binary with modules keeps link time
//! low. Every test waits on conditions with deadlines, never fixed sleeps,
//! runs its body through `Cluster::run` (logs on any failure, no unexpected
//! `ERROR` line), and reads JSON fields through `num`/`list`, which fail on
//! a missing field instead of letting a bound pass vacuously.

mod admin;
mod agent;
mod bad_input;
mod dedup;
mod degraded;
mod dr;
mod elections;
mod gc_live;
mod keys;
mod meta_crash;
mod otel;
mod progress;
mod raft;
mod rebuild;
mod semantics;
mod shutdown;
mod site_loss;
mod status_page;
mod stdin;
mod storage_space;
mod tls;
mod tokens;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{dir_digest, Cluster};
use serde_json::Value;

/// The JSON value at `path` (keys separated by `.`), failing if absent.
pub fn field<'a>(v: &'a Value, path: &str) -> Result<&'a Value> {
    path.split('.').try_fold(v, |at, key| at.get(key).with_context(|| format!("no field {path} in {v}")))
}

/// The unsigned integer at `path`: a missing field or another type fails.
pub fn num(v: &Value, path: &str) -> Result<u64> {
    field(v, path)?.as_u64().with_context(|| format!("{path} is not an unsigned integer in {v}"))
}

/// The array at `path`: a missing field or another type fails.
pub fn list<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>> {
    field(v, path)?.as_array().with_context(|| format!("{path} is not an array in {v}"))
}

/// Backs up `path` and returns the summary line.
pub fn backup(c: &Cluster, path: &Path, extra: &[&str]) -> Result<Value> {
    let p = path.display().to_string();
    let mut args = vec!["backup", p.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = c.cli(&args)?.ok()?;
    let summary = out.json()?;
    ensure!(summary["type"] == "summary", "last line is not a summary: {}", out.stdout);
    Ok(summary)
}

/// Restores `snapshot` into a fresh dir and checks it equals `source`.
pub fn restore_and_compare(c: &Cluster, snapshot: &str, source: &Path) -> Result<Value> {
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

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn missing_fields_fail_instead_of_passing_a_bound() {
        let v = serde_json::json!({"bytes_new": 5, "packs": {"healthy": 3}, "bad": [], "s": "x"});
        assert_eq!(num(&v, "bytes_new").ok(), Some(5));
        assert_eq!(num(&v, "packs.healthy").ok(), Some(3));
        assert!(num(&v, "bytes_read").is_err());
        assert!(num(&v, "packs.lost").is_err());
        assert!(num(&v, "s").is_err());
        assert!(list(&v, "bad").is_ok_and(Vec::is_empty));
        assert!(list(&v, "nodes").is_err());
    }
}
