//! The real-time source of the workload: an agent daemon (`coffer agent`,
//! in the clients' namespace) with one `realtime` source on a directory
//! where a thread appends records to a log file, like a database's
//! write-ahead log, for the whole schedule.
//!
//! ```text
//!   appender ──append every APPEND_EVERY──► rt/wal/segment ◄──inotify── coffer agent ──snapshots──► cluster
//!   after healing: newest snapshot holds the whole file? (availability)
//!                  oldest, middle, newest restore to prefixes of the file? (safety)
//! ```
//!
//! The file only grows, so every snapshot of the source must restore to a
//! prefix of its final content, and once the cluster has healed the agent
//! must commit a snapshot holding all of it within its lag bound. Runs
//! that failed while only tolerated faults were active are availability
//! findings, like refused backups.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::checks::{Finding, Severity};
use crate::cluster::{wait, ChaosCluster, Cli};
use crate::workload::Shared;

/// The source's name in the agent's configuration (its snapshots carry the
/// tag `source:rt`).
const SOURCE: &str = "rt";
/// How long a change may wait before the agent snapshots it.
const MAX_LAG: &str = "10s";
/// The appender's pace.
const APPEND_EVERY: Duration = Duration::from_millis(500);

/// The agent process and the file it watches.
pub struct Realtime {
    config: PathBuf,
    file: PathBuf,
    child: Option<Child>,
    seed: u64,
}

impl Realtime {
    /// Writes the agent's configuration and starts it; the file starts
    /// with one record, so the first snapshot is not empty.
    pub fn start(c: &ChaosCluster, seed: u64) -> Result<Realtime> {
        let wal = c.dir.join("rt/wal");
        std::fs::create_dir_all(&wal)?;
        let file = wal.join("segment");
        std::fs::write(&file, b"segment 0\n")?;
        let config = c.dir.join("agent-rt.toml");
        let endpoints: Vec<String> = c.endpoint().split(',').map(|e| format!("\"{e}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "endpoint = [{}]\nstate_dir = \"{}\"\njitter = \"0s\"\nreport_interval = \"5s\"\n\n\
                 [[source]]\nname = \"{SOURCE}\"\nrepo = \"chaos\"\npaths = [\"{}\"]\nrealtime = {{ max_lag = \"{MAX_LAG}\" }}\n",
                endpoints.join(", "),
                c.dir.join("rt/state").display(),
                wal.display()
            ),
        )?;
        let log = std::fs::File::options().create(true).append(true).open(c.dir.join("agent-rt.log"))?;
        let cfg = config.display().to_string();
        let mut cmd = c.reader().command(&["agent", "--config", &cfg]);
        cmd.env("COFFER_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("spawn coffer agent")?;
        let rt = Realtime { config, file, child: Some(child), seed };
        wait("the agent's control socket", Duration::from_secs(60), || rt.status(&c.reader()))?;
        Ok(rt)
    }

    /// Appends a record every `APPEND_EVERY` until the workload stops.
    pub fn append_until_stopped(&self, sh: &Shared) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7ea1_7133);
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.file)?;
        let mut i = 1u64;
        while !sh.stop.load(Ordering::SeqCst) {
            let len = rng.gen_range(40..2_000);
            let body: String = (0..len).map(|_| rng.gen_range(b'a'..=b'z') as char).collect();
            writeln!(f, "record {i} {body}")?;
            f.flush()?;
            i += 1;
            // The appender's pace is what the source is tested against.
            std::thread::sleep(APPEND_EVERY);
        }
        Ok(())
    }

    /// The source's entry of `agent status --json`.
    fn status(&self, c: &Cli) -> Option<Value> {
        let cfg = self.config.display().to_string();
        let out = c.cli(&["agent", "status", "--json", "--config", &cfg], Duration::from_secs(20)).ok()?;
        let s = out.ok().ok()?.json().ok()?;
        s["sources"].as_array()?.iter().find(|e| e["name"] == SOURCE).cloned()
    }

    /// After healing: the agent commits the whole file, and the oldest,
    /// a middle and the newest of its snapshots restore to prefixes of it
    /// (the newest to all of it). Returns (snapshots checked, bytes compared).
    pub fn check(&mut self, c: &ChaosCluster, out: &mut Vec<Finding>) -> (u64, u64) {
        let cli = c.reader();
        let content = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) => {
                out.push(Finding {
                    severity: Severity::Safety,
                    what: format!("read the real-time source's file: {e}"),
                });
                return (0, 0);
            }
        };
        let whole = content.len() as u64;
        let caught_up =
            wait("the real-time source's newest snapshot to hold the whole file", Duration::from_secs(120), || {
                let id = self.status(&cli)?["newest_snapshot"].as_str()?.to_string();
                let ls = cli.cli(&["ls", &id, "--json"], Duration::from_secs(60)).ok()?.ok().ok()?.json().ok()?;
                let size = ls.as_array()?.iter().find(|e| e["kind"] == "file")?["size"].as_u64()?;
                (size == whole).then_some(())
            });
        if let Err(e) = caught_up {
            out.push(Finding { severity: Severity::Availability, what: format!("real-time source: {e:#}") });
        }
        if let Some(s) = self.status(&cli) {
            let failed = s["runs_failed"].as_u64().unwrap_or(0);
            if failed > 0 {
                out.push(Finding {
                    severity: Severity::Availability,
                    what: format!(
                        "real-time source: {failed} of {} runs failed; the last: {}",
                        failed + s["runs_ok"].as_u64().unwrap_or(0),
                        s["last_run"]
                    ),
                });
            }
        }
        let snaps = match self.snapshots(&cli) {
            Ok(s) => s,
            Err(e) => {
                out.push(Finding { severity: Severity::Safety, what: format!("list the real-time snapshots: {e:#}") });
                return (0, 0);
            }
        };
        if snaps.is_empty() {
            out.push(Finding {
                severity: Severity::Availability,
                what: "the real-time source committed no snapshot".into(),
            });
            return (0, 0);
        }
        let mut picks = vec![0, snaps.len() / 2, snaps.len() - 1];
        picks.dedup();
        let (mut n, mut bytes) = (0, 0);
        for (k, i) in picks.into_iter().enumerate() {
            let id = &snaps[i];
            let target = c.dir.join(format!("rt-restore-{k}"));
            match restore_file(&cli, id, &target) {
                Ok(got) if content.starts_with(&got) && !got.is_empty() => {
                    n += 1;
                    bytes += got.len() as u64;
                }
                Ok(got) => out.push(Finding {
                    severity: Severity::Safety,
                    what: format!(
                        "real-time snapshot {id} restores {} bytes that are not a prefix of the {whole}-byte file",
                        got.len()
                    ),
                }),
                Err(e) => out.push(Finding {
                    severity: Severity::Safety,
                    what: format!("acknowledged real-time snapshot {id} does not restore: {e:#}"),
                }),
            }
            let _ = std::fs::remove_dir_all(&target);
        }
        (n, bytes)
    }

    /// The source's snapshot ids, oldest first.
    fn snapshots(&self, c: &Cli) -> Result<Vec<String>> {
        let all = c.cli(&["snapshots", "--json"], Duration::from_secs(60))?.ok()?.json()?;
        let tag = format!("source:{SOURCE}");
        let mut found: Vec<(u64, String)> = all
            .as_array()
            .context("snapshots is not a list")?
            .iter()
            .filter(|s| s["tags"].as_array().is_some_and(|t| t.iter().any(|x| x == tag.as_str())))
            .filter_map(|s| Some((s["end_ms"].as_u64()?, s["id"].as_str()?.to_string())))
            .collect();
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// Stops the agent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Restores snapshot `id` into `target` and returns the bytes of the one
/// file it holds.
fn restore_file(c: &Cli, id: &str, target: &Path) -> Result<Vec<u8>> {
    let t = target.display().to_string();
    c.cli(&["restore", id, &t, "--json"], Duration::from_secs(150))?.ok()?;
    let mut stack = vec![target.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "segment" {
                return Ok(std::fs::read(e.path())?);
            }
        }
    }
    anyhow::bail!("snapshot {id} restored without the file `segment`")
}
