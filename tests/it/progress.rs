//! Progress for people and for programs on the long commands besides
//! backup: with `--json`, `restore` (and `check --read-data`) print
//! `{"message_type":"status", ...}` lines before their summary; without a
//! terminal nothing resembling a bar reaches stderr; under a
//! pseudo-terminal (`script`) the bar is drawn.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{dir_digest, write_sample_tree, Cluster, ClusterSpec};
use serde_json::Value;

use crate::backup;

/// Whether `stderr` holds what a progress bar draws: carriage returns or
/// terminal control sequences.
fn has_bar_bytes(stderr: &str) -> bool {
    stderr.contains('\r') || stderr.contains("\x1b[")
}

/// Every JSON line of `stdout`.
fn json_lines(stdout: &str) -> Result<Vec<Value>> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("parse {l}")))
        .collect()
}

fn f(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("no number {key} in {v}"))
}

/// Quotes `s` for `sh`.
fn sh_quote(s: &[u8]) -> String {
    format!("'{}'", String::from_utf8_lossy(s).replace('\'', r"'\''"))
}

/// The report rate the restores below ask for.
const FPS: &str = "COFFER_PROGRESS_FPS";

#[test]
fn restore_reports_status_lines_and_draws_a_bar_only_on_a_terminal() -> Result<()> {
    Cluster::run(ClusterSpec::default(), |c| {
        let src = c.dir().join("src");
        // Large enough that the restore outlives the first report period.
        write_sample_tree(&src, 21, 48)?;
        let snap = backup(c, &src, &[])?["snapshot_id"].as_str().context("no snapshot id")?.to_string();
        let want = dir_digest(&src)?;

        // --json: status lines, then the summary as the last line. Reports
        // every 5 ms (COFFER_PROGRESS_FPS), so that even a fast machine's
        // restore of this tree (0.2 s seen) outlives several periods.
        let t1 = c.dir().join("out-json");
        let out = c.command(&["restore", &snap, &t1.display().to_string(), "--json"]).env(FPS, "200").output()?;
        let out = coffer_testkit::Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
        .ok()?;
        let lines = json_lines(&out.stdout)?;
        let (summary, status) = lines.split_last().context("restore --json printed nothing")?;
        ensure!(summary["message_type"] == "summary" && summary["snapshot_id"] == snap.as_str(), "{}", out.stdout);
        ensure!(!status.is_empty(), "no status line before the summary: {}", out.stdout);
        let total = f(&status[0], "total_bytes")?;
        let mut last_done = 0.0;
        for s in status {
            ensure!(s["message_type"] == "status" && s["action"] == "restore", "{s}");
            let done = f(s, "bytes_done")?;
            ensure!(done >= last_done && done <= total, "bytes_done {done} after {last_done}, of {total}: {s}");
            ensure!(f(s, "files_done")? <= f(s, "total_files")?, "{s}");
            let p = f(s, "percent_done")?;
            ensure!((0.0..=1.0).contains(&p), "{s}");
            ensure!(f(s, "seconds_elapsed")? > 0.0, "{s}");
            last_done = done;
        }
        ensure!(
            total as u64 == crate::num(summary, "bytes")?,
            "total_bytes {total} is not what was restored: {summary}"
        );
        ensure!(!has_bar_bytes(&out.stderr), "bar bytes on a stderr that is not a terminal: {:?}", out.stderr);
        ensure!(dir_digest(&t1)? == want, "the restore differs from the source");

        // No --json, no terminal: neither status lines nor a bar.
        let t2 = c.dir().join("out-plain");
        let out = c.cli(&["restore", &snap, &t2.display().to_string()])?.ok()?;
        ensure!(!out.stdout.contains("message_type"), "status without --json: {}", out.stdout);
        ensure!(!has_bar_bytes(&out.stderr), "bar bytes on a stderr that is not a terminal: {:?}", out.stderr);

        // check --read-data --json: any status line counts packs; the
        // report stays the last line.
        let out = c.cli(&["check", "--read-data", "--json"])?.ok()?;
        let lines = json_lines(&out.stdout)?;
        let (report, status) = lines.split_last().context("check --json printed nothing")?;
        ensure!(report.get("packs_read").is_some(), "the last line is not the report: {}", out.stdout);
        for s in status {
            ensure!(s["message_type"] == "status" && s["action"] == "check", "{s}");
            ensure!(f(s, "packs_done")? <= f(s, "total_packs")?, "{s}");
        }
        ensure!(!has_bar_bytes(&out.stderr), "bar bytes from check: {:?}", out.stderr);

        // Under a pseudo-terminal the bar is drawn on stderr (script puts
        // both streams on the terminal; the window is given a size, which
        // a terminal without a parent one lacks).
        let t3 = c.dir().join("out-tty");
        let mut cmd = c.command(&["restore", &snap, &t3.display().to_string()]);
        cmd.env(FPS, "200");
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| sh_quote(a.as_bytes()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        script.args(["-qfec", &format!("stty cols 120 rows 40; {line}"), "/dev/null"]);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        let out = script.output().context("run script")?;
        let tty = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "restore under a terminal: {}\n{tty}", out.status);
        ensure!(has_bar_bytes(&tty) && tty.contains("files,"), "no bar drawn on a terminal:\n{tty:?}");
        ensure!(tty.contains("restored snapshot"), "no summary on a terminal:\n{tty:?}");
        ensure!(dir_digest(&t3)? == want, "the restore under a terminal differs from the source");
        Ok(())
    })
}
