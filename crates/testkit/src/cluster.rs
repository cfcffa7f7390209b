//! Real `coffer` processes: one or more metadata nodes and storage nodes in
//! sites, each with its own data dir and log file under one temp dir.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::wait::wait_until;
use crate::PASSWORD;

/// The shape of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub sites: usize,
    pub nodes_per_site: usize,
    /// Storage heartbeat interval.
    pub heartbeat: Duration,
    pub suspect_after: Duration,
    pub down_after: Duration,
    /// Metadata voters, one per site (`site-a`, `site-b`, ...).
    pub meta_nodes: usize,
    /// `--snapshot-every` and `--keep-logs` for the voters, if not default.
    pub snapshot_every: Option<u64>,
    pub keep_logs: Option<u64>,
    /// Extra flags for every `coffer meta` and `coffer storage`.
    pub meta_flags: Vec<String>,
    pub storage_flags: Vec<String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            sites: 3,
            nodes_per_site: 2,
            heartbeat: Duration::from_millis(300),
            suspect_after: Duration::from_secs(2),
            down_after: Duration::from_secs(30),
            meta_nodes: 1,
            snapshot_every: None,
            keep_logs: None,
            meta_flags: Vec::new(),
            storage_flags: Vec::new(),
        }
    }
}

struct Proc {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(bin: &Path, args: Vec<String>, log: PathBuf) -> Result<Self> {
        let mut p = Proc { args, log, child: None };
        p.start(bin)?;
        Ok(p)
    }

    fn start(&mut self, bin: &Path) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(bin)
            .args(&self.args)
            .env("COFFER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} {:?}", bin.display(), self.args))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&mut self, sig: i32) {
        if let Some(c) = &self.child {
            send_signal(c.id(), sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERMs the process and waits up to `timeout` for it to exit; a
    /// process still running then is killed and the call fails.
    fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else { bail!("the process is not running") };
        send_signal(c.id(), 15);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("the process did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a signal with kill(1): the workspace forbids `unsafe`, and this is
/// test tooling where a process spawn per signal costs nothing.
fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// A storage node of the test cluster.
pub struct StorageHandle {
    pub site: String,
    pub data: PathBuf,
    proc_: Proc,
}

impl StorageHandle {
    pub fn is_running(&self) -> bool {
        self.proc_.is_running()
    }

    /// The node id the node keeps in its data dir.
    pub fn node_id(&self) -> Option<String> {
        std::fs::read_to_string(self.data.join("node-id")).ok().map(|s| s.trim().to_string())
    }

    /// Every shard file this node holds.
    pub fn shard_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(prefixes) = std::fs::read_dir(self.data.join("shards")) else { return out };
        for p in prefixes.flatten() {
            if let Ok(files) = std::fs::read_dir(p.path()) {
                out.extend(files.flatten().map(|f| f.path()));
            }
        }
        out.sort();
        out
    }
}

/// What a CLI invocation returned.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(self) -> Result<Self> {
        if self.code != 0 {
            bail!("coffer exited {}: {}\n{}", self.code, self.stderr, self.stdout);
        }
        Ok(self)
    }

    /// The last JSON line of stdout.
    pub fn json(&self) -> Result<Value> {
        let line = self.stdout.lines().rev().find(|l| l.trim_start().starts_with(['{', '[']));
        let line = line.with_context(|| format!("no JSON in output: {}", self.stdout))?;
        serde_json::from_str(line).with_context(|| format!("parse JSON: {line}"))
    }
}

/// A metadata node of the test cluster.
pub struct MetaHandle {
    pub id: u64,
    pub site: String,
    pub addr: String,
    proc_: Proc,
}

impl MetaHandle {
    pub fn is_running(&self) -> bool {
        self.proc_.is_running()
    }
}

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    spec: ClusterSpec,
    pub meta: Vec<MetaHandle>,
    pub storage: Vec<StorageHandle>,
    pub repo: String,
}

fn site_of(i: usize) -> String {
    format!("site-{}", (b'a' + i as u8) as char)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("COFFER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/it-<hash> -> target/<profile>/coffer
    let candidate = exe.parent().and_then(|d| d.parent()).map(|d| d.join("coffer"));
    match candidate {
        Some(c) if c.exists() => Ok(c),
        _ => bail!("coffer binary not found next to {}; run `cargo build -p coffer-cli` first", exe.display()),
    }
}

impl Cluster {
    /// Starts one metadata node and `sites × nodes_per_site` storage nodes,
    /// waits until every storage node is registered and up, and creates
    /// the repository `test` (4+2).
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("coffer-it-").tempdir()?;
        let bin = find_bin()?;
        let mut c =
            Cluster { dir, bin, spec: spec.clone(), meta: Vec::new(), storage: Vec::new(), repo: "test".into() };
        for i in 0..spec.meta_nodes.max(1) {
            c.add_meta(i as u64 + 1, &site_of(i))?;
        }
        let endpoints = c.endpoint();
        for s in 0..spec.sites {
            let site = site_of(s);
            for n in 0..spec.nodes_per_site {
                let data = c.dir.path().join(format!("storage-{site}-{n}"));
                let args = vec![
                    "storage".into(),
                    "--data".into(),
                    data.display().to_string(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--site".into(),
                    site.clone(),
                    "--meta".into(),
                    endpoints.clone(),
                    "--heartbeat-interval".into(),
                    format!("{}ms", spec.heartbeat.as_millis()),
                ];
                let args = [args, spec.storage_flags.clone()].concat();
                let log = c.dir.path().join(format!("storage-{site}-{n}.log"));
                let proc_ = Proc::spawn(&c.bin, args, log)?;
                c.storage.push(StorageHandle { site: site.clone(), data, proc_ });
            }
        }
        c.wait_voters(spec.meta_nodes.max(1), Duration::from_secs(30))?;
        let want = spec.sites * spec.nodes_per_site;
        c.wait_nodes_up(want, Duration::from_secs(30))?;
        c.cli(&["repo", "create", "test", "--k", "4", "--m", "2"])?.ok()?;
        Ok(c)
    }

    /// Starts metadata node `id` in `site`: the first one initialises the
    /// cluster, later ones join it through the first. Returns its index.
    pub fn add_meta(&mut self, id: u64, site: &str) -> Result<usize> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut args = vec![
            "meta".to_string(),
            "--id".into(),
            id.to_string(),
            "--data".into(),
            self.dir.path().join(format!("meta-{id}")).display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--site".into(),
            site.to_string(),
            "--raft-heartbeat".into(),
            "100ms".into(),
            "--election-timeout".into(),
            "500ms".into(),
            "--suspect-after".into(),
            format!("{}ms", self.spec.suspect_after.as_millis()),
            "--down-after".into(),
            format!("{}ms", self.spec.down_after.as_millis()),
        ];
        match self.meta.first() {
            None => args.push("--init".into()),
            Some(first) => {
                args.push("--join".into());
                args.push(first.addr.clone());
            }
        }
        if let Some(n) = self.spec.snapshot_every {
            args.extend(["--snapshot-every".into(), n.to_string()]);
        }
        if let Some(n) = self.spec.keep_logs {
            args.extend(["--keep-logs".into(), n.to_string()]);
        }
        args.extend(self.spec.meta_flags.iter().cloned());
        let log = self.dir.path().join(format!("meta-{id}.log"));
        let proc_ = Proc::spawn(&self.bin, args, log)?;
        self.meta.push(MetaHandle { id, site: site.to_string(), addr, proc_ });
        Ok(self.meta.len() - 1)
    }

    /// Every member as it reports itself (`coffer cluster members --json`).
    pub fn members(&self) -> Result<Value> {
        self.cli(&["cluster", "members", "--json"])?.ok()?.json()
    }

    /// The id of the member that reports itself leader, if one does.
    pub fn leader(&self) -> Option<u64> {
        let m = self.members().ok()?;
        m["members"].as_array()?.iter().find(|x| x["state"] == "leader").and_then(|x| x["id"].as_u64())
    }

    /// Index in `meta` of the current leader.
    pub fn leader_index(&self) -> Option<usize> {
        let id = self.leader()?;
        self.meta.iter().position(|m| m.id == id)
    }

    /// Waits until a leader is known and `n` voters are members.
    pub fn wait_voters(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(&format!("a leader and {n} voters"), timeout, || {
            let m = self.members().ok()?;
            let members = m["members"].as_array()?;
            let voters = members.iter().filter(|x| x["role"] == "voter").count();
            let leader = members.iter().any(|x| x["state"] == "leader");
            (leader && voters == n).then_some(())
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every metadata endpoint, comma-separated.
    pub fn endpoint(&self) -> String {
        self.meta.iter().map(|m| m.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Runs `coffer ARGS` against the cluster and waits for it.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_with_stdin(args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&Path>) -> Result<Output> {
        let mut cmd = self.command(args);
        cmd.stdin(match stdin {
            Some(p) => Stdio::from(File::open(p)?),
            None => Stdio::null(),
        });
        let out = cmd.output().with_context(|| format!("run coffer {args:?}"))?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A `coffer ARGS` command with the cluster's environment, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("COFFER_ENDPOINT", self.endpoint())
            .env("COFFER_REPO", &self.repo)
            .env("COFFER_PASSWORD", PASSWORD)
            .env_remove("COFFER_PASSWORD_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn status(&self) -> Result<Value> {
        self.cli(&["status", "--json"])?.ok()?.json()
    }

    /// Waits until `n` storage nodes are registered and up.
    pub fn wait_nodes_up(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(&format!("{n} storage nodes up"), timeout, || {
            let s = self.cli(&["status", "--json", "--retry-for", "1s"]).ok()?.ok().ok()?.json().ok()?;
            let up = s["nodes"].as_array()?.iter().filter(|n| n["state"] == "up").count();
            (up >= n).then_some(())
        })
    }

    /// SIGKILLs every storage node of `site`.
    pub fn kill_storage_site(&mut self, site: &str) {
        for s in self.storage.iter_mut().filter(|s| s.site == site) {
            s.proc_.kill();
        }
    }

    /// SIGKILLs a whole site: its storage nodes and its metadata voter.
    pub fn kill_site(&mut self, site: &str) {
        self.kill_storage_site(site);
        for m in self.meta.iter_mut().filter(|m| m.site == site) {
            m.proc_.kill();
        }
    }

    pub fn kill_storage(&mut self, i: usize) {
        self.storage[i].proc_.kill();
    }

    /// SIGTERMs storage node `i` and returns its exit status, failing if it
    /// does not exit within `timeout`.
    pub fn terminate_storage(&mut self, i: usize, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.storage[i].proc_.terminate(timeout)
    }

    /// SIGTERMs metadata node `i`, as `terminate_storage`.
    pub fn terminate_meta(&mut self, i: usize, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.meta[i].proc_.terminate(timeout)
    }

    /// Starts storage node `i` again on its data dir, with its original flags.
    pub fn start_storage(&mut self, i: usize) -> Result<()> {
        self.storage[i].proc_.start(&self.bin)
    }

    /// Restarts every stopped node of `site` (storage and metadata) on its data dir.
    pub fn restart_site(&mut self, site: &str) -> Result<()> {
        for s in self.storage.iter_mut().filter(|s| s.site == site && !s.proc_.is_running()) {
            s.proc_.start(&self.bin)?;
        }
        for m in self.meta.iter_mut().filter(|m| m.site == site && !m.proc_.is_running()) {
            m.proc_.start(&self.bin)?;
        }
        Ok(())
    }

    /// SIGKILLs metadata node `i` (an index into `meta`).
    pub fn kill_meta(&mut self, i: usize) {
        self.meta[i].proc_.kill();
    }

    /// SIGSTOPs metadata node `i`: it holds its sockets but answers nothing.
    pub fn stop_meta(&mut self, i: usize) {
        self.meta[i].proc_.signal(19);
    }

    pub fn cont_meta(&mut self, i: usize) {
        self.meta[i].proc_.signal(18);
    }

    /// Restarts metadata node `i` on its data dir, with its original flags.
    pub fn restart_meta(&mut self, i: usize) -> Result<()> {
        self.meta[i].proc_.kill();
        self.meta[i].proc_.start(&self.bin)
    }

    /// Prints the tail of every log: called when a test fails.
    pub fn dump_logs(&self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("===== {} (last {} lines)\n{}", log.display(), tail.len(), tail.join("\n"));
        }
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for m in &mut self.meta {
            // A stopped process cannot die until it is continued.
            m.proc_.signal(18);
            m.proc_.kill();
        }
        for s in &mut self.storage {
            s.proc_.kill();
        }
    }
}
