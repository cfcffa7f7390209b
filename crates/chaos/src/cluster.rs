//! A cluster of real `coffer` processes, each in its own network namespace
//! (`ip netns exec NS coffer ...`): three voters (one per site), storage
//! nodes in every site on size-limited filesystems (tmpfs), mutual TLS with
//! certificates whose IP SANs are the hosts' own addresses, and a client
//! namespace from which every CLI call runs.
//!
//! Every process listens on a fixed port of its own address: the addresses
//! are private to the schedule's namespaces, so no port can collide with
//! anything else on the machine, and a restarted node comes back where its
//! peers expect it. Drop kills every process (continuing paused ones first),
//! unmounts the filesystems and then removes the namespaces.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::net::{sh, Host, Net, CLIENT_SITE};

/// The port of every metadata node (on its own address).
const META_PORT: u16 = 7400;
/// The port of every storage node.
const STORAGE_PORT: u16 = 7500;
/// The password of the suite's repository.
pub const PASSWORD: &str = "chaos horse battery staple";

/// The shape of one schedule's cluster.
#[derive(Clone, Debug)]
pub struct ClusterShape {
    pub sites: usize,
    pub nodes_per_site: usize,
    /// The size of each storage node's filesystem, in MiB.
    pub disk_mib: u64,
    /// Storage nodes started under libfaketime (their clocks can jump).
    pub skewable: Vec<usize>,
}

/// What kind of node a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum NodeRef {
    Meta(usize),
    Storage(usize),
}

/// One `coffer` process in a namespace.
pub struct Proc {
    pub host: Host,
    pub data: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
    /// A voter removed from the membership: stopped for good, and no
    /// longer counted, restarted or checked.
    pub retired: bool,
}

impl Proc {
    fn start(&mut self, bin: &Path) -> Result<()> {
        let _ = std::fs::remove_file(self.data.join("addr"));
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.ns]).arg(bin).args(&self.args);
        cmd.env("COFFER_LOG", "info,openraft=warn,fjall=warn,lsm_tree=warn")
            .env("COFFER_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // `ip netns exec` execs the command in place: the child's pid is coffer's.
        self.child = Some(cmd.spawn().with_context(|| format!("spawn coffer in {}", self.host.ns))?);
        self.paused = false;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        }
    }

    pub fn kill(&mut self) {
        if self.paused {
            self.signal("CONT");
            self.paused = false;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    /// How the process ended, if it exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait_addr(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(self.data.join("addr")).is_ok_and(|a| !a.trim().is_empty()) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!("{} exited ({status}) before listening; see {}", self.host.role, self.log.display());
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen within {timeout:?}; see {}", self.host.role, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A CLI call's result.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    /// The last JSON line of stdout.
    pub fn json(&self) -> Result<Value> {
        let line = self.stdout.lines().rev().find(|l| l.trim_start().starts_with(['{', '[']));
        let line = line.with_context(|| format!("no JSON in output: {} {}", self.stdout, self.stderr))?;
        serde_json::from_str(line).with_context(|| format!("parse JSON: {line}"))
    }

    pub fn ok(self) -> Result<Self> {
        if self.code != 0 {
            bail!("coffer exited {} (timed out: {}): {}\n{}", self.code, self.timed_out, self.stderr, self.stdout);
        }
        Ok(self)
    }
}

pub struct ChaosCluster {
    pub net: Net,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub shape: ClusterShape,
    pub meta: Vec<Proc>,
    pub storage: Vec<Proc>,
    pub client: Host,
    pub admin_token: String,
    /// Storage data dirs that are tmpfs mounts (unmounted on drop).
    mounts: Vec<PathBuf>,
    /// The shared library of libfaketime, when installed.
    pub faketime: Option<PathBuf>,
}

/// Where libfaketime is installed, if it is (Debian's `faketime`).
pub fn find_faketime() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The clock file of skewable storage node `i`: libfaketime reads the
/// offset from it (re-read every second).
pub fn clock_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("clock-{i}"))
}

impl ChaosCluster {
    /// Creates the namespaces and starts the cluster of `shape` under
    /// `dir`; waits until three voters and every storage node are up, and
    /// creates the repository `chaos` (4+2).
    pub fn start(dir: &Path, bin: &Path, shape: ClusterShape) -> Result<ChaosCluster> {
        let mut net = Net::create(shape.sites)?;
        let client = net.add_host("cl", CLIENT_SITE, 10)?;
        let admin_token = format!("cfa_{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
        std::fs::write(dir.join("admin-token"), format!("{admin_token}\n")).context("write the admin token")?;
        let mut c = ChaosCluster {
            net,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            shape: shape.clone(),
            meta: Vec::new(),
            storage: Vec::new(),
            client,
            admin_token,
            mounts: Vec::new(),
            faketime: find_faketime(),
        };
        let ca = dir.join("tls/ca");
        c.run_bin(&["certs", "init-ca", "--dir", &ca.display().to_string()])?;
        c.issue("admin", "admin", &c.client.ip.to_string())?;
        for s in 0..shape.sites {
            let host = c.net.add_host(&format!("m{}", s + 1), s, 10)?;
            let join = (s > 0).then(|| c.meta_addr(0));
            let mut p = c.meta_proc(host, s + 1, &site_name(s), join)?;
            p.start(bin)?;
            p.wait_addr(Duration::from_secs(60))?;
            c.meta.push(p);
        }
        let endpoints = c.endpoint();
        for s in 0..shape.sites {
            for n in 0..shape.nodes_per_site {
                let i = c.storage.len();
                let host = c.net.add_host(&format!("s{s}{n}"), s, 20 + n as u8)?;
                let data = dir.join(format!("storage-{}-{n}", site_name(s)));
                std::fs::create_dir_all(&data)?;
                sh(
                    "mount",
                    &["-t", "tmpfs", "-o", &format!("size={}m", shape.disk_mib), "tmpfs", &data.display().to_string()],
                )?;
                c.mounts.push(data.clone());
                let name = format!("storage-{}-{n}", site_name(s));
                let mut args: Vec<String> = [
                    "storage",
                    "--data",
                    &data.display().to_string(),
                    "--listen",
                    &format!("{}:{STORAGE_PORT}", host.ip),
                    "--site",
                    &site_name(s),
                    "--meta",
                    &endpoints,
                    "--heartbeat-interval",
                    "500ms",
                    // Orphan collection runs during the schedule (it judges
                    // a shard's age on the node's own clock).
                    "--orphan-interval",
                    "5s",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                args.extend(c.tls_args("storage", &name, &host.ip.to_string())?);
                let mut env = Vec::new();
                if shape.skewable.contains(&i) {
                    let lib = c.faketime.clone().context("a clock fault needs libfaketime (`make chaos-tools`)")?;
                    let file = clock_file(dir, i);
                    std::fs::write(&file, "+0\n")?;
                    env.extend([
                        ("LD_PRELOAD".to_string(), lib.display().to_string()),
                        ("FAKETIME_TIMESTAMP_FILE".to_string(), file.display().to_string()),
                        ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
                        // Timers and timeouts keep real time; only the wall clock jumps.
                        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
                    ]);
                }
                let log = dir.join(format!("{name}.log"));
                let mut p = Proc { host, data, log, args, env, child: None, paused: false, retired: false };
                p.start(bin)?;
                c.storage.push(p);
            }
        }
        for p in &mut c.storage {
            p.wait_addr(Duration::from_secs(60))?;
        }
        c.wait_voters(Duration::from_secs(90))?;
        c.wait_storage_up(Duration::from_secs(90))?;
        c.cli(&["repo", "create", "chaos", "--k", "4", "--m", "2"], Duration::from_secs(60))?.ok()?;
        Ok(c)
    }

    /// The process of metadata node `id` on `host`: it initialises the
    /// cluster, or joins it through `join` (and so becomes a voter).
    fn meta_proc(&self, host: Host, id: usize, site: &str, join: Option<String>) -> Result<Proc> {
        let data = self.dir.join(format!("meta-{id}"));
        let addr = format!("{}:{META_PORT}", host.ip);
        let mut args: Vec<String> = [
            "meta",
            "--id",
            &id.to_string(),
            "--data",
            &data.display().to_string(),
            "--listen",
            &addr,
            "--site",
            site,
            "--raft-heartbeat",
            "200ms",
            "--election-timeout",
            "1500ms",
            "--suspect-after",
            "3s",
            "--down-after",
            "20s",
            "--admin-token-file",
            &self.dir.join("admin-token").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match join {
            None => args.push("--init".into()),
            Some(via) => args.extend(["--join".into(), via]),
        }
        args.extend(self.tls_args("meta", &format!("meta-{id}"), &host.ip.to_string())?);
        let log = self.dir.join(format!("meta-{id}.log"));
        Ok(Proc { host, data, log, args, env: Vec::new(), child: None, paused: false, retired: false })
    }

    /// Starts one more metadata node, on the clients' network (so that no
    /// site holds two voters and the faults' count of one impaired voter
    /// stays a minority of four), joining through the first live voter:
    /// it becomes a voter once it has caught up. Returns its index.
    pub fn add_voter(&mut self) -> Result<usize> {
        let i = self.meta.len();
        let host = self.net.add_host(&format!("m{}", i + 1), CLIENT_SITE, 10 + i as u8 + 1)?;
        let via = (0..i).find(|j| !self.meta[*j].retired).map(|j| self.meta_addr(j)).context("no voter to join")?;
        let mut p = self.meta_proc(host, i + 1, "witness", Some(via))?;
        p.start(&self.bin)?;
        let listening = p.wait_addr(Duration::from_secs(60));
        self.meta.push(p);
        listening.map(|()| i)
    }

    /// Stops metadata node `i` for good, once it left the membership.
    pub fn retire(&mut self, i: usize) {
        self.meta[i].kill();
        self.meta[i].retired = true;
    }

    /// Voters that have not been retired.
    pub fn voters(&self) -> usize {
        self.meta.iter().filter(|p| !p.retired).count()
    }

    fn run_bin(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.bin).args(args).output().with_context(|| format!("run coffer {args:?}"))?;
        if !out.status.success() {
            bail!("coffer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn issue(&self, role: &str, name: &str, ip: &str) -> Result<()> {
        let tls = self.dir.join("tls");
        self.run_bin(&[
            "certs",
            "issue",
            "--ca",
            &tls.join("ca").display().to_string(),
            "--role",
            role,
            "--name",
            name,
            "--ip",
            ip,
            "--out",
            &tls.display().to_string(),
        ])
    }

    fn tls_args(&self, role: &str, name: &str, ip: &str) -> Result<Vec<String>> {
        self.issue(role, name, ip)?;
        let tls = self.dir.join("tls");
        Ok(vec![
            "--cacert".into(),
            tls.join("ca.crt").display().to_string(),
            "--cert".into(),
            tls.join(format!("{name}.crt")).display().to_string(),
            "--key".into(),
            tls.join(format!("{name}.key")).display().to_string(),
        ])
    }

    pub fn meta_addr(&self, i: usize) -> String {
        format!("{}:{META_PORT}", self.meta[i].host.ip)
    }

    pub fn endpoint(&self) -> String {
        (0..self.meta.len()).filter(|i| !self.meta[*i].retired).map(|i| self.meta_addr(i)).collect::<Vec<_>>().join(",")
    }

    pub fn proc_mut(&mut self, n: NodeRef) -> &mut Proc {
        match n {
            NodeRef::Meta(i) => &mut self.meta[i],
            NodeRef::Storage(i) => &mut self.storage[i],
        }
    }

    pub fn proc_ref(&self, n: NodeRef) -> &Proc {
        match n {
            NodeRef::Meta(i) => &self.meta[i],
            NodeRef::Storage(i) => &self.storage[i],
        }
    }

    /// Starts a killed node again on its data, at its address.
    pub fn restart(&mut self, n: NodeRef) -> Result<()> {
        let bin = self.bin.clone();
        let p = self.proc_mut(n);
        if p.retired {
            return Ok(());
        }
        p.kill();
        p.start(&bin)?;
        let started = p.wait_addr(Duration::from_secs(60));
        if started.is_err() {
            // Reaped here, so that a refused start is not taken for a crash.
            p.kill();
        }
        started
    }

    /// A handle that runs CLI calls against this cluster, for threads that
    /// run while this one injects faults.
    pub fn reader(&self) -> Cli {
        Cli {
            bin: self.bin.clone(),
            ns: self.client.ns.clone(),
            endpoint: self.endpoint(),
            dir: self.dir.clone(),
            token: self.admin_token.clone(),
            voters: self.voters(),
            storage: self.storage.len(),
        }
    }

    pub fn cli(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        self.reader().cli(args, timeout)
    }

    pub fn members(&self) -> Option<Value> {
        self.reader().members()
    }

    pub fn status(&self) -> Result<Value> {
        self.reader().status()
    }

    pub fn wait_voters(&self, timeout: Duration) -> Result<()> {
        self.reader().wait_voters(timeout)
    }

    pub fn wait_storage_up(&self, timeout: Duration) -> Result<()> {
        self.reader().wait_storage_up(timeout)
    }

    pub fn leader_index(&self) -> Option<usize> {
        self.reader().leader_index()
    }

    /// Every shard file of storage node `i`.
    pub fn shard_files(&self, i: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(prefixes) = std::fs::read_dir(self.storage[i].data.join("shards")) else { return out };
        for p in prefixes.flatten() {
            if let Ok(files) = std::fs::read_dir(p.path()) {
                out.extend(files.flatten().map(|f| f.path()));
            }
        }
        out.sort();
        out
    }

    /// Any process that exited by itself (a crash), with its exit status.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.meta.iter_mut().chain(self.storage.iter_mut()) {
            if let Some(status) = p.exited() {
                out.push(format!("{} exited by itself ({status}); see {}", p.host.role, p.log.display()));
            }
        }
        out
    }
}

/// What a thread needs to run `coffer` from the client namespace.
#[derive(Clone, Debug)]
pub struct Cli {
    pub bin: PathBuf,
    pub ns: String,
    pub endpoint: String,
    pub dir: PathBuf,
    pub token: String,
    pub voters: usize,
    pub storage: usize,
}

impl Cli {
    /// A `coffer ARGS` command run in the client namespace as the
    /// administrator, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let tls = self.dir.join("tls");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(&self.bin).args(args);
        cmd.env("COFFER_ENDPOINT", &self.endpoint)
            .env("COFFER_REPO", "chaos")
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_TOKEN", &self.token)
            .env("COFFER_CACERT", tls.join("ca.crt"))
            .env("COFFER_CERT", tls.join("admin.crt"))
            .env("COFFER_KEY", tls.join("admin.key"))
            .env("NO_COLOR", "1")
            .env_remove("COFFER_INSECURE")
            .env_remove("COFFER_TOKEN_FILE")
            .env_remove("COFFER_PASSWORD_FILE");
        cmd
    }

    /// Runs `coffer ARGS` from the client namespace, killing it after
    /// `timeout` (a call stuck behind a partition must not stall the run).
    pub fn cli(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_with_timeout(self.command(args), timeout, &self.dir)
    }

    /// Every member as it reports itself, or `None` when unreachable.
    pub fn members(&self) -> Option<Value> {
        self.cli(&["cluster", "members", "--json", "--retry-for", "2s"], Duration::from_secs(20))
            .ok()?
            .ok()
            .ok()?
            .json()
            .ok()
    }

    pub fn status(&self) -> Result<Value> {
        self.cli(&["status", "--json"], Duration::from_secs(60))?.ok()?.json()
    }

    /// Waits until a leader is known and every voter answers.
    pub fn wait_voters(&self, timeout: Duration) -> Result<()> {
        let n = self.voters;
        wait(&format!("a leader and {n} reachable voters"), timeout, || {
            let m = self.members()?;
            let members = m["members"].as_array()?;
            let voters = members.iter().filter(|x| x["role"] == "voter" && x["reachable"] == true).count();
            let leader = members.iter().any(|x| x["state"] == "leader");
            (leader && voters == n).then_some(())
        })
    }

    /// Waits until every storage node is registered and up.
    pub fn wait_storage_up(&self, timeout: Duration) -> Result<()> {
        let n = self.storage;
        wait(&format!("{n} storage nodes up"), timeout, || {
            let s = self
                .cli(&["status", "--json", "--retry-for", "2s"], Duration::from_secs(20))
                .ok()?
                .ok()
                .ok()?
                .json()
                .ok()?;
            let up = s["nodes"].as_array()?.iter().filter(|n| n["state"] == "up").count();
            (up >= n).then_some(())
        })
    }

    /// The index in `meta` of the member that reports itself leader.
    pub fn leader_index(&self) -> Option<usize> {
        let m = self.members()?;
        let id = m["members"].as_array()?.iter().find(|x| x["state"] == "leader").and_then(|x| x["id"].as_u64())?;
        Some(id as usize - 1)
    }
}

/// `site-a`, `site-b`, ...
pub fn site_name(s: usize) -> String {
    format!("site-{}", (b'a' + s as u8) as char)
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub fn wait<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> Result<T> {
    coffer_testkit::wait_until(what, timeout, f)
}

/// Runs `cmd` with its output in files under `dir`, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration, dir: &Path) -> Result<Output> {
    let out = tempfile::NamedTempFile::new_in(dir)?;
    let err = tempfile::NamedTempFile::new_in(dir)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen()?)
        .stderr(err.reopen()?)
        .spawn()
        .map_err(|e| anyhow!("spawn {cmd:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: std::fs::read_to_string(out.path()).unwrap_or_default(),
        stderr: std::fs::read_to_string(err.path()).unwrap_or_default(),
        timed_out,
    })
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for p in self.meta.iter_mut().chain(self.storage.iter_mut()) {
            p.kill();
        }
        for m in &self.mounts {
            let _ = sh("umount", &["-l", &m.display().to_string()]);
        }
    }
}
