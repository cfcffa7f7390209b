//! The network of one schedule: a namespace per host, joined by veth pairs
//! to one bridge per site inside a core namespace that routes between the
//! sites, so that every fault between sites is a real packet filter.
//!
//! ```text
//!   site 0: m1 s-0-0 s-0-1 ...   site 1: ...   site 2: ...   clients: cl
//!       \    |    /                  |              |            |
//!        [ br0 10.213.1.1 ]   [ br1 10.213.2.1 ]  [ br2 .3.1 ] [ br8 .9.1 ]
//!                   core namespace (ip_forward, FORWARD filters)
//! ```
//!
//! Invariant: nothing of a topology lives in the root namespace. Every
//! address is in 10.213.0.0/16 and exists only inside the namespaces the
//! topology created, so parallel runs (which reuse the same addresses in
//! their own namespaces) never collide and no packet leaves the machine.
//! Namespace names carry the creating process's id (`cx-PID-N-ROLE`): a run
//! removes the namespaces of dead runs before it creates its own, and drop
//! removes its own.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ChaosError;

/// The prefix of every namespace the suite creates.
const PREFIX: &str = "cx-";

/// The site index of the clients' subnet (the agents and operators).
pub const CLIENT_SITE: usize = 8;

static RUNS: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion; a non-zero exit is an error carrying its
/// stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String, ChaosError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ChaosError::Command { cmd: format!("{program} {}", args.join(" ")), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(ChaosError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why the suite cannot run here, if it cannot: not root, or no `ip` /
/// `iptables`, or namespaces refused.
pub fn unsupported_reason() -> Option<String> {
    let uid = sh("id", &["-u"]).map(|s| s.trim().to_string()).unwrap_or_default();
    if uid != "0" {
        return Some(format!("the chaos suite needs root for network namespaces (uid is {uid:?})"));
    }
    for tool in ["ip", "iptables", "tc"] {
        if sh("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!("`{tool}` is missing (install iproute2 and iptables; `make chaos-tools`)"));
        }
    }
    let probe = format!("{PREFIX}probe-{}", std::process::id());
    if let Err(e) = sh("ip", &["netns", "add", &probe]) {
        return Some(format!("network namespaces cannot be created here: {e}"));
    }
    let _ = sh("ip", &["netns", "del", &probe]);
    None
}

/// Deletes the namespaces of runs whose process is gone (a crashed or
/// killed earlier run), and unmounts their size-limited filesystems.
pub fn clean_leftovers() {
    let list = sh("ip", &["netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = sh("ip", &["netns", "del", name]);
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let Some(target) = line.split_whitespace().nth(1) else { continue };
        let Some(pos) = target.find("/coffer-chaos-") else { continue };
        let pid = target[pos + "/coffer-chaos-".len()..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = sh("umount", &["-l", target]);
        }
    }
}

/// One host: a namespace with one interface on its site's bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub role: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub site: usize,
}

/// The namespaces of one schedule.
#[derive(Debug)]
pub struct Net {
    pub core: String,
    pub hosts: Vec<Host>,
    /// The run's unique prefix (`cx-PID-N`).
    pub run: String,
}

/// The bridge of site `s` in the core namespace.
pub fn bridge(site: usize) -> String {
    format!("br{site}")
}

/// The subnet of site `s`.
pub fn subnet(site: usize) -> String {
    format!("10.213.{}.0/24", site + 1)
}

impl Net {
    /// Creates the core namespace and one bridge for each of `sites` and
    /// for the clients.
    pub fn create(sites: usize) -> Result<Net, ChaosError> {
        let run = format!("{PREFIX}{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::SeqCst));
        let core = format!("{run}-core");
        sh("ip", &["netns", "add", &core])?;
        let net = Net { core, hosts: Vec::new(), run };
        sh("ip", &["-n", &net.core, "link", "set", "lo", "up"])?;
        sh("ip", &["netns", "exec", &net.core, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for s in (0..sites).chain([CLIENT_SITE]) {
            let br = bridge(s);
            sh("ip", &["-n", &net.core, "link", "add", &br, "type", "bridge"])?;
            sh("ip", &["-n", &net.core, "addr", "add", &format!("10.213.{}.1/24", s + 1), "dev", &br])?;
            sh("ip", &["-n", &net.core, "link", "set", &br, "up"])?;
        }
        Ok(net)
    }

    /// Adds a host namespace `role` on site `site` with host number `n`
    /// (its address is 10.213.SITE+1.N).
    pub fn add_host(&mut self, role: &str, site: usize, n: u8) -> Result<Host, ChaosError> {
        let ns = format!("{}-{role}", self.run);
        let ip = Ipv4Addr::new(10, 213, site as u8 + 1, n);
        // The bridge end is named after the host's index, unique in the core.
        let peer = format!("v{}", self.hosts.len());
        sh("ip", &["netns", "add", &ns])?;
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &self.core])?;
        sh("ip", &["-n", &self.core, "link", "set", &peer, "master", &bridge(site)])?;
        sh("ip", &["-n", &self.core, "link", "set", &peer, "up"])?;
        sh("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", &ns, "route", "add", "default", "via", &format!("10.213.{}.1", site + 1)])?;
        let host = Host { role: role.to_string(), ns, ip, site };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Runs `iptables ARGS` in the core namespace.
    pub fn core_iptables(&self, args: &[&str]) -> Result<(), ChaosError> {
        iptables(&self.core, args)
    }
}

/// Runs `iptables ARGS` inside namespace `ns`.
pub fn iptables(ns: &str, args: &[&str]) -> Result<(), ChaosError> {
    let mut full = vec!["netns", "exec", ns, "iptables", "-w"];
    full.extend_from_slice(args);
    sh("ip", &full).map(|_| ())
}

/// Runs `tc ARGS` inside namespace `ns`.
pub fn tc(ns: &str, args: &[&str]) -> Result<(), ChaosError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    sh("tc", &full).map(|_| ())
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and the peer with it.
        for h in &self.hosts {
            let _ = sh("ip", &["netns", "del", &h.ns]);
        }
        let _ = sh("ip", &["netns", "del", &self.core]);
    }
}
