//! Real `coffer` processes: one or more metadata nodes and storage nodes in
//! sites, each with its own data dir and log file under one temp dir.
//!
//! Every node listens on port 0 and reports the address the kernel gave it
//! in `DATA/addr`, so no port is ever chosen by the harness and then lost to
//! another process. A restarted metadata node listens on the address it
//! reported first: Raft members record each other's addresses.
//!
//! A test runs through [`Cluster::run`]: when the body returns `Err` or
//! panics, or a node logged a failure the test did not declare with
//! [`Cluster::expect_error`], the test fails and every node's log is printed.
//!
//! Clusters run with mutual TLS unless `ClusterSpec::insecure`: a CA under
//! `DIR/tls/ca` (made with `coffer certs init-ca`), one certificate per node
//! (`meta-ID`, `storage-SITE-N`) and an `admin` client certificate that
//! `cli()` uses, all issued with `coffer certs issue` into `DIR/tls`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::logs;
use crate::wait::wait_until;
use crate::PASSWORD;

/// How long a node may take from spawn to reporting its address.
const ADDR_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// `--raft-heartbeat` and `--election-timeout` of the voters: short, so
    /// that failover tests are quick.
    pub raft_heartbeat: Duration,
    pub election_timeout: Duration,
    /// Plain text (`--insecure`) instead of mutual TLS.
    pub insecure: bool,
    /// Metadata nodes run with `COFFER_FAILPOINTS=1`, so that the test can
    /// arm a failpoint (`Cluster::arm_failpoint`) on one of them.
    pub failpoints: bool,
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
            raft_heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            insecure: false,
            failpoints: false,
        }
    }
}

struct Proc {
    args: Vec<String>,
    /// Environment variables of every start.
    env: Vec<(String, String)>,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The nodes' log filter: coffer at info, openraft (whose info lines are
/// its internal state machine, many per second) at warn, so that the tail
/// printed on failure shows what coffer did. `COFFER_IT_LOG` overrides it.
fn node_log_filter() -> String {
    std::env::var("COFFER_IT_LOG").unwrap_or_else(|_| "info,openraft=warn".to_string())
}

impl Proc {
    fn spawn(bin: &Path, args: Vec<String>, data: PathBuf, log: PathBuf) -> Result<Self> {
        let mut p = Proc { args, env: Vec::new(), data, log, child: None };
        p.start(bin)?;
        Ok(p)
    }

    /// Starts the process; its previous address report is removed first, so
    /// that [`Proc::wait_addr`] sees only this run's.
    fn start(&mut self, bin: &Path) -> Result<()> {
        match std::fs::remove_file(self.data.join("addr")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {}/addr", self.data.display()))
            }
            _ => {}
        }
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(bin)
            .args(&self.args)
            .env("COFFER_LOG", node_log_filter())
            .env("COFFER_LOG_FORMAT", std::env::var("COFFER_IT_LOG_FORMAT").unwrap_or_else(|_| "text".into()))
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// Waits until the process reports its bound address, failing at once
    /// if it exits first.
    fn wait_addr(&mut self) -> Result<String> {
        let what = format!("{} to report its address", self.log.display());
        let got = wait_until(&what, ADDR_TIMEOUT, || {
            if let Ok(text) = std::fs::read_to_string(self.data.join("addr")) {
                let addr = text.trim();
                if !addr.is_empty() {
                    return Some(Ok(addr.to_string()));
                }
            }
            match self.exited() {
                Some(status) => Some(Err(anyhow!("{} exited ({status}) before listening", self.log.display()))),
                None => None,
            }
        })?;
        got
    }

    /// How the process ended, if it was started and has exited by itself.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Replaces the value of flag `name` in the arguments of later starts.
    fn set_arg(&mut self, name: &str, value: &str) {
        if let Some(i) = self.args.iter().position(|a| a == name) {
            if let Some(v) = self.args.get_mut(i + 1) {
                *v = value.to_string();
            }
        }
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

/// The address in `DATA/admin-addr`, if the node wrote one.
fn admin_addr(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("admin-addr")).ok()?;
    Some(text.trim().to_string()).filter(|a| !a.is_empty())
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
    /// The address the node reported on its latest start (port 0 gives a
    /// new one on every start; the node registers it with its heartbeats).
    pub addr: String,
    proc_: Proc,
}

impl StorageHandle {
    pub fn is_running(&self) -> bool {
        self.proc_.is_running()
    }

    /// The process id of the running node, for a test that must make it
    /// die behind the harness's back (a crash, as opposed to a kill).
    pub fn pid(&self) -> Option<u32> {
        self.proc_.child.as_ref().map(|c| c.id())
    }

    /// The admin port's address, once the node has reported it (only with
    /// `--admin-listen` among `ClusterSpec::storage_flags`).
    pub fn admin_addr(&self) -> Option<String> {
        admin_addr(&self.data)
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
    /// The address it reported on its first start, and listens on ever after.
    pub addr: String,
    proc_: Proc,
}

impl MetaHandle {
    pub fn is_running(&self) -> bool {
        self.proc_.is_running()
    }

    /// The admin port's address, once the node has reported it (only with
    /// `--admin-listen` among `ClusterSpec::meta_flags`).
    pub fn admin_addr(&self) -> Option<String> {
        admin_addr(&self.proc_.data)
    }
}

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    spec: ClusterSpec,
    pub meta: Vec<MetaHandle>,
    pub storage: Vec<StorageHandle>,
    pub repo: String,
    /// The cluster admin token every metadata node is given (in
    /// `DIR/admin-token`) and every `cli` call presents, unless the test
    /// sets `COFFER_TOKEN` itself (see `command`).
    pub admin_token: String,
    /// Substrings of the failure lines this test expects nodes to log.
    expected: Vec<String>,
    /// Set by [`Cluster::finish`] once the test passed; until then, dropping
    /// the cluster prints every log.
    passed: bool,
}

fn site_of(i: usize) -> String {
    format!("site-{}", (b'a' + i as u8) as char)
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
        // 256 random bits, as `coffer dev` draws them.
        let admin_token = format!("cfa_{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
        std::fs::write(dir.path().join("admin-token"), format!("{admin_token}\n")).context("write the admin token")?;
        let mut c = Cluster {
            dir,
            bin,
            spec: spec.clone(),
            meta: Vec::new(),
            storage: Vec::new(),
            repo: "test".into(),
            admin_token,
            expected: Vec::new(),
            passed: false,
        };
        if !spec.insecure {
            let ca = c.ca_dir();
            c.run_bin(&["certs", "init-ca", "--dir", &ca.display().to_string()])?;
            c.issue_cert("admin", "admin")?;
            // An agent's certificate: `cli_as` runs with it, so that only
            // the token it is given decides what it may do.
            c.issue_cert("client", "agent")?;
        }
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
                let tls = c.tls_args("storage", &format!("storage-{site}-{n}"))?;
                let args = [args, tls, spec.storage_flags.clone()].concat();
                let log = c.dir.path().join(format!("storage-{site}-{n}.log"));
                let proc_ = Proc::spawn(&c.bin, args, data.clone(), log)?;
                c.storage.push(StorageHandle { site: site.clone(), data, addr: String::new(), proc_ });
            }
        }
        // Started all at once, then each one's address collected.
        for s in &mut c.storage {
            s.addr = s.proc_.wait_addr()?;
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
        let data = self.dir.path().join(format!("meta-{id}"));
        let mut args = vec![
            "meta".to_string(),
            "--id".into(),
            id.to_string(),
            "--data".into(),
            data.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--site".into(),
            site.to_string(),
            "--raft-heartbeat".into(),
            format!("{}ms", self.spec.raft_heartbeat.as_millis()),
            "--election-timeout".into(),
            format!("{}ms", self.spec.election_timeout.as_millis()),
            "--suspect-after".into(),
            format!("{}ms", self.spec.suspect_after.as_millis()),
            "--down-after".into(),
            format!("{}ms", self.spec.down_after.as_millis()),
            "--admin-token-file".into(),
            self.dir.path().join("admin-token").display().to_string(),
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
        args.extend(self.tls_args("meta", &format!("meta-{id}"))?);
        args.extend(self.spec.meta_flags.iter().cloned());
        let log = self.dir.path().join(format!("meta-{id}.log"));
        let mut proc_ = Proc { args, env: Vec::new(), data, log, child: None };
        if self.spec.failpoints {
            proc_.env.push(("COFFER_FAILPOINTS".into(), "1".into()));
        }
        proc_.start(&self.bin)?;
        let addr = proc_.wait_addr()?;
        // Its Raft peers know it by this address: every restart reuses it.
        proc_.set_arg("--listen", &addr);
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

    /// The test CA's directory (`ca.crt`, `ca.key`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("tls").join("ca")
    }

    /// Where the certificates of the cluster's processes are.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Runs the coffer binary with no cluster environment; fails unless it
    /// exits 0.
    fn run_bin(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(args)
            .env_remove("COFFER_INSECURE")
            .output()
            .with_context(|| format!("run coffer {args:?}"))?;
        if !out.status.success() {
            bail!("coffer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Issues a certificate with `role` and `name` (SANs 127.0.0.1 and
    /// localhost) from the test CA into `tls_dir()`: its cert and key paths.
    pub fn issue_cert(&self, role: &str, name: &str) -> Result<(PathBuf, PathBuf)> {
        let out = self.tls_dir();
        self.run_bin(&[
            "certs",
            "issue",
            "--ca",
            &self.ca_dir().display().to_string(),
            "--role",
            role,
            "--name",
            name,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            &out.display().to_string(),
        ])?;
        Ok((out.join(format!("{name}.crt")), out.join(format!("{name}.key"))))
    }

    /// The security flags of a node: its own new certificate, or `--insecure`.
    fn tls_args(&self, role: &str, name: &str) -> Result<Vec<String>> {
        if self.spec.insecure {
            return Ok(vec!["--insecure".into()]);
        }
        let (cert, key) = self.issue_cert(role, name)?;
        Ok(vec![
            "--cacert".into(),
            self.tls_dir().join("ca.crt").display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ])
    }

    /// Every metadata endpoint, comma-separated.
    pub fn endpoint(&self) -> String {
        self.meta.iter().map(|m| m.addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Runs `coffer ARGS` against the cluster and waits for it.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_with_stdin(args, None)
    }

    /// Runs `coffer ARGS` presenting `token` (none at all with `None`)
    /// instead of the cluster admin token, and an agent's (`client`)
    /// certificate instead of the administrator's.
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(args);
        match token {
            Some(t) => cmd.env("COFFER_TOKEN", t),
            None => cmd.env_remove("COFFER_TOKEN"),
        };
        if !self.spec.insecure {
            // Not the administrator's certificate, which would grant
            // everything whatever the token.
            let tls = self.tls_dir();
            cmd.env("COFFER_CERT", tls.join("agent.crt")).env("COFFER_KEY", tls.join("agent.key"));
        }
        self.output(cmd, args, None)
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&Path>) -> Result<Output> {
        self.output(self.command(args), args, stdin)
    }

    fn output(&self, mut cmd: Command, args: &[&str], stdin: Option<&Path>) -> Result<Output> {
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

    /// A `coffer ARGS` command with the cluster's environment, not started:
    /// as the cluster administrator (`COFFER_TOKEN`), which a test may
    /// override with `.env("COFFER_TOKEN", ..)` or remove.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("COFFER_ENDPOINT", self.endpoint())
            .env("COFFER_REPO", &self.repo)
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_TOKEN", &self.admin_token)
            .env_remove("COFFER_TOKEN_FILE")
            .env_remove("COFFER_PASSWORD_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.spec.insecure {
            cmd.env("COFFER_INSECURE", "1");
        } else {
            let tls = self.tls_dir();
            cmd.env_remove("COFFER_INSECURE")
                .env("COFFER_CACERT", tls.join("ca.crt"))
                .env("COFFER_CERT", tls.join("admin.crt"))
                .env("COFFER_KEY", tls.join("admin.key"));
        }
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
        self.storage[i].proc_.start(&self.bin)?;
        self.storage[i].addr = self.storage[i].proc_.wait_addr()?;
        Ok(())
    }

    /// Restarts every stopped node of `site` (storage and metadata) on its
    /// data dir, and waits until each reports its address.
    pub fn restart_site(&mut self, site: &str) -> Result<()> {
        for s in self.storage.iter_mut().filter(|s| s.site == site && !s.proc_.is_running()) {
            s.proc_.start(&self.bin)?;
        }
        for m in self.meta.iter_mut().filter(|m| m.site == site && !m.proc_.is_running()) {
            m.proc_.start(&self.bin)?;
        }
        for s in self.storage.iter_mut().filter(|s| s.site == site) {
            s.addr = s.proc_.wait_addr()?;
        }
        for m in self.meta.iter_mut().filter(|m| m.site == site) {
            m.proc_.wait_addr()?;
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

    /// Arms failpoint `point` (`coffer_meta::failpoint`) on metadata node
    /// `i` (the cluster must run with `ClusterSpec::failpoints`): a hang
    /// point fires once, a hold point holds until `disarm_failpoint`.
    pub fn arm_failpoint(&self, i: usize, point: &str) -> Result<()> {
        let data = &self.meta[i].proc_.data;
        let _ = std::fs::remove_file(data.join("failpoint-hit"));
        std::fs::write(data.join("failpoint"), point).context("arm the failpoint")
    }

    pub fn disarm_failpoint(&self, i: usize) -> Result<()> {
        match std::fs::remove_file(self.meta[i].proc_.data.join("failpoint")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("disarm the failpoint"),
            _ => Ok(()),
        }
    }

    /// Waits until metadata node `i` reached its armed hang point (and hangs there).
    pub fn wait_failpoint_hit(&self, i: usize, timeout: Duration) -> Result<()> {
        let hit = self.meta[i].proc_.data.join("failpoint-hit");
        wait_until(&format!("metadata node {} to reach its failpoint", self.meta[i].id), timeout, || {
            hit.exists().then_some(())
        })
    }

    /// Restarts metadata node `i` on its data dir, with its original flags
    /// and the address it first reported, and waits until it listens.
    pub fn restart_meta(&mut self, i: usize) -> Result<()> {
        self.meta[i].proc_.kill();
        self.meta[i].proc_.start(&self.bin)?;
        let addr = self.meta[i].proc_.wait_addr()?;
        if addr != self.meta[i].addr {
            bail!("metadata node {} came back on {addr}, not {}", self.meta[i].id, self.meta[i].addr);
        }
        Ok(())
    }

    /// Starts a cluster of `spec`, runs `body` on it, then [`Cluster::finish`].
    /// Every cluster test goes through here, so that any failure (an `Err`,
    /// a panic, an unexpected `ERROR` in a node's log) prints the logs.
    pub fn run(spec: ClusterSpec, body: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
        let mut c = Cluster::start(spec)?;
        body(&mut c)?;
        c.finish()
    }

    /// Declares that some node may log failure lines containing `pattern`
    /// in this test: the consequence of a fault the test injects (a corrupt
    /// shard read, a peer killed), not a bug.
    pub fn expect_error(&mut self, pattern: &str) {
        self.expected.push(pattern.to_string());
    }

    /// Declares the `ERROR` lines openraft logs on the other voters when a
    /// metadata voter is killed or stalled: one per failed replication,
    /// vote or leadership confirmation towards it (`Unreachable node ...`,
    /// `timeout after ... when AppendEntries 1->2`).
    pub fn expect_lost_voter(&mut self) {
        for pattern in ["Unreachable node", "when AppendEntries", "when Vote"] {
            self.expect_error(pattern);
        }
    }

    /// Declares the `ERROR` a storage node logs when it finds the shard
    /// file `path` damaged on a read (corrupt block or wrong length).
    pub fn expect_damaged_shard(&mut self, path: &Path) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.expect_error(&format!("shard {name} is corrupt"));
        self.expect_error(&format!("shard {name} file has"));
    }

    /// Every failure line that nodes logged and the test did not expect.
    pub fn unexpected_errors(&self) -> Vec<String> {
        logs::unexpected_failures(self.dir.path(), &self.expected)
    }

    /// Ends a test that passed: fails if any node logged an unexpected
    /// failure line (the logs are printed then, as for any failure).
    pub fn finish(mut self) -> Result<()> {
        let unexpected = self.unexpected_errors();
        if !unexpected.is_empty() {
            bail!(
                "{} unexpected failure line(s) in the nodes' logs (declare the expected ones with \
                 Cluster::expect_error):\n{}",
                unexpected.len(),
                unexpected.join("\n")
            );
        }
        self.passed = true;
        Ok(())
    }

    /// Checks every node directly, not through the leader's view (which
    /// shows a crashed node up until its suspect period passes): no started
    /// process has exited by itself, every storage node answers its own
    /// `NodeInfo` at the address it reported, and every running metadata
    /// node answers its own metrics.
    pub fn probe_all(&mut self) -> Result<()> {
        for (what, p) in self
            .meta
            .iter_mut()
            .map(|m| (format!("metadata node {}", m.id), &mut m.proc_))
            .chain(self.storage.iter_mut().map(|s| (format!("storage node at {}", s.addr), &mut s.proc_)))
        {
            if let Some(status) = p.exited() {
                bail!("{what} exited by itself ({status}); see {}", p.log.display());
            }
        }
        let nodes = self.cli(&["nodes", "--json"])?.ok()?.json()?;
        let listed = nodes["nodes"].as_array().with_context(|| format!("no node list: {nodes}"))?;
        for s in self.storage.iter().filter(|s| s.is_running()) {
            let row = listed.iter().find(|n| n["addr"] == s.addr.as_str());
            let row = row.with_context(|| format!("storage node {} is not in the cluster map: {nodes}", s.addr))?;
            if row["reachable"] != true {
                bail!("storage node {} does not answer: {row}", s.addr);
            }
        }
        let members = self.members()?;
        let listed = members["members"].as_array().with_context(|| format!("no member list: {members}"))?;
        for m in self.meta.iter().filter(|m| m.is_running()) {
            let row = listed.iter().find(|x| x["id"] == m.id);
            let row = row.with_context(|| format!("metadata node {} is not a member: {members}", m.id))?;
            if row["reachable"] != true {
                bail!("metadata node {} does not answer: {row}", m.id);
            }
        }
        Ok(())
    }

    /// Prints the tail of every log: done by `Drop` for every test that did
    /// not [`Cluster::finish`].
    pub fn dump_logs(&self) {
        logs::dump(self.dir.path());
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.passed {
            // An `Err` returned through `?`, a panic, a failed start, or an
            // unexpected error line: the logs say why.
            self.dump_logs();
            if std::env::var_os("COFFER_IT_KEEP").is_some() {
                self.dir.disable_cleanup(true);
                eprintln!("===== kept {}", self.dir.path().display());
            }
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
