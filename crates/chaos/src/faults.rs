//! The fault primitives: one function each to inject a fault into a running
//! [`ChaosCluster`] and one to heal it. A new fault is a variant of
//! [`Fault`], its [`Impact`] (what the schedule generator counts against
//! the design's tolerance) and its two arms in [`inject`] and [`heal`].
//!
//! Network faults are packet filters in real namespaces: between sites in
//! the core namespace's FORWARD chain (matched by bridge), on one host in
//! its own INPUT/OUTPUT chains. Every rule carries a comment naming its
//! fault (`chaos-fN`), and healing deletes exactly the rules it added, so
//! overlapping faults heal independently. Invariant: heal after inject
//! leaves the network as it was.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cluster::{clock_file, ChaosCluster, NodeRef};
use crate::net::{bridge, iptables, tc};

/// How a shard file is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Damage {
    Corrupt,
    Truncate,
    Delete,
}

/// One fault, as the schedule names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// A site cut off from the other sites and from the clients.
    PartitionSite {
        site: usize,
    },
    /// Packets from site `from` to site `to` are dropped; the other way passes.
    AsymmetricCut {
        from: usize,
        to: usize,
    },
    /// One voter cut off from everyone.
    IsolateVoter {
        voter: usize,
    },
    /// The leader (found when injected) cut off from every storage node, not from the voters.
    IsolateLeaderFromStorage,
    /// Delay (when the kernel has netem; else a slow link) and loss between a site and the rest.
    SlowLossy {
        site: usize,
        delay_ms: u32,
        loss_pct: u32,
    },
    /// A site partitioned and healed, over and over.
    Flap {
        site: usize,
        period_ms: u64,
    },
    /// SIGKILL, then a restart on the same data when healed.
    Kill {
        node: NodeRef,
    },
    /// SIGKILL of the leader (found when injected), restarted when healed.
    KillLeader,
    /// SIGSTOP, SIGCONT when healed.
    Pause {
        node: NodeRef,
    },
    PauseLeader,
    /// Up to m shard files of one pack damaged (permanent: repair is the cluster's job).
    Shards {
        damage: Damage,
        count: usize,
        pick: u64,
    },
    /// A storage node's filesystem filled to the last byte.
    DiskFill {
        storage: usize,
    },
    /// A storage node's wall clock jumped by `offset_s` (forward or back).
    ClockSkew {
        storage: usize,
        offset_s: i64,
    },
}

/// What a fault takes away while it is active, for the generator's count.
#[derive(Clone, Debug, Default)]
pub struct Impact {
    /// Whole sites impaired (their storage nodes and their voter).
    pub sites: BTreeSet<usize>,
    pub storage: BTreeSet<usize>,
    pub voters: BTreeSet<usize>,
    /// A fault on whichever voter leads: counted as one voter of its own.
    pub leader: bool,
    /// Takes every storage node away from the leader's view: nothing else
    /// that touches storage may run at the same time.
    pub all_storage: bool,
    /// Shards damaged on nodes not known in advance (any sites).
    pub shards: usize,
}

impl Fault {
    /// The kind's name, for counts in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::PartitionSite { .. } => "partition-site",
            Fault::AsymmetricCut { .. } => "asymmetric-cut",
            Fault::IsolateVoter { .. } => "isolate-voter",
            Fault::IsolateLeaderFromStorage => "isolate-leader-from-storage",
            Fault::SlowLossy { .. } => "latency-loss",
            Fault::Flap { .. } => "flapping-link",
            Fault::Kill { node: NodeRef::Meta(_) } => "kill-voter",
            Fault::Kill { node: NodeRef::Storage(_) } => "kill-storage",
            Fault::KillLeader => "kill-leader",
            Fault::Pause { node: NodeRef::Meta(_) } => "pause-voter",
            Fault::Pause { node: NodeRef::Storage(_) } => "pause-storage",
            Fault::PauseLeader => "pause-leader",
            Fault::Shards { damage: Damage::Corrupt, .. } => "corrupt-shards",
            Fault::Shards { damage: Damage::Truncate, .. } => "truncate-shards",
            Fault::Shards { damage: Damage::Delete, .. } => "delete-shards",
            Fault::DiskFill { .. } => "disk-fill",
            Fault::ClockSkew { .. } => "clock-skew",
        }
    }

    /// What the fault impairs while it is active.
    pub fn impact(&self) -> Impact {
        let mut i = Impact::default();
        match self {
            Fault::PartitionSite { site } | Fault::Flap { site, .. } | Fault::SlowLossy { site, .. } => {
                i.sites.insert(*site);
                i.voters.insert(*site);
            }
            Fault::AsymmetricCut { from, .. } => {
                // A TCP exchange needs both directions: the two sites lose
                // each other, and a leader in either one sees the other's
                // storage nodes fall silent. Counted as the site that sends
                // into the void, with nothing else on storage at the same time.
                i.sites.insert(*from);
                i.voters.insert(*from);
                i.all_storage = true;
            }
            Fault::IsolateVoter { voter }
            | Fault::Kill { node: NodeRef::Meta(voter) }
            | Fault::Pause { node: NodeRef::Meta(voter) } => {
                i.voters.insert(*voter);
            }
            Fault::IsolateLeaderFromStorage => {
                i.leader = true;
                i.all_storage = true;
            }
            Fault::KillLeader | Fault::PauseLeader => i.leader = true,
            Fault::Kill { node: NodeRef::Storage(s) }
            | Fault::Pause { node: NodeRef::Storage(s) }
            | Fault::DiskFill { storage: s } => {
                i.storage.insert(*s);
            }
            Fault::Shards { count, .. } => i.shards = *count,
            // On purpose nothing: the metadata plane must not trust node
            // clocks, so a skewed node must stay a healthy node.
            Fault::ClockSkew { .. } => {}
        }
        i
    }
}

/// Whether faults with these impacts, all at once, stay within what the
/// design tolerates: at most one site, or at most `m` storage nodes, and
/// a minority (one of three) of voters.
pub fn tolerated(impacts: &[Impact], storage_sites: &[usize], m: usize) -> bool {
    let voters: BTreeSet<usize> = impacts.iter().flat_map(|i| i.voters.iter().copied()).collect();
    let leader = impacts.iter().filter(|i| i.leader).count();
    if voters.len() + leader > 1 {
        return false;
    }
    let sites: BTreeSet<usize> = impacts.iter().flat_map(|i| i.sites.iter().copied()).collect();
    let mut nodes: BTreeSet<usize> = impacts.iter().flat_map(|i| i.storage.iter().copied()).collect();
    for (n, s) in storage_sites.iter().enumerate() {
        if sites.contains(s) {
            nodes.insert(n);
        }
    }
    let exclusive = impacts.iter().filter(|i| i.all_storage).count();
    let others = impacts
        .iter()
        .filter(|i| !i.all_storage && (!i.storage.is_empty() || !i.sites.is_empty() || i.shards > 0))
        .count();
    if exclusive > 1 || (exclusive == 1 && others > 0) {
        return false;
    }
    // Damaged shards may sit on any node of any site: they count against
    // m together with every other impaired node.
    let shards: usize = impacts.iter().map(|i| i.shards).sum();
    if shards > 0 {
        return nodes.len() + shards <= m;
    }
    let node_sites: BTreeSet<usize> = nodes.iter().map(|n| storage_sites[*n]).collect();
    node_sites.len() <= 1 || nodes.len() <= m
}

impl Impact {
    /// Whether the fault takes shards away from anyone: storage nodes, a
    /// site, the leader's view of storage, or shard files.
    pub fn touches_storage(&self) -> bool {
        !self.storage.is_empty() || !self.sites.is_empty() || self.all_storage || self.shards > 0
    }
}

/// The exposure a storage fault leaves behind once healed. Packs written
/// while storage nodes were away are *short* (or, after a site outage,
/// site-degraded) until the repair planner completes them; while short, a
/// pack survives the loss of only p-k more of its holders (ARCHITECTURE.md,
/// invariant 1), exactly as if the healed nodes were still away. So a
/// healed storage fault keeps counting against the tolerance until the
/// cluster reports no short and no site-degraded pack ([`Exposure::settled`]).
#[derive(Debug, Default)]
pub struct Exposure {
    lingering: Vec<(Fault, Impact)>,
}

impl Exposure {
    /// `fault` was healed: if it took shards away, its impact lingers.
    pub fn healed(&mut self, fault: &Fault) {
        let i = fault.impact();
        // Damaged shard files are counted until the schedule's end anyway.
        if i.touches_storage() && !matches!(fault, Fault::Shards { .. }) {
            self.lingering.push((fault.clone(), i));
        }
    }

    /// The cluster reported no short and no site-degraded pack.
    pub fn settled(&mut self) {
        self.lingering.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.lingering.is_empty()
    }

    /// Whether `new` may be injected beside the `active` impacts and the
    /// lingering ones.
    pub fn allows(&self, active: &[Impact], new: &Impact, storage_sites: &[usize], m: usize) -> bool {
        if !new.touches_storage() || self.lingering.is_empty() {
            return true;
        }
        let mut all: Vec<Impact> = active.to_vec();
        all.extend(self.lingering.iter().map(|(_, i)| i.clone()));
        all.push(new.clone());
        tolerated(&all, storage_sites, m)
    }

    /// The healed faults still counted, for the report.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.lingering.iter().map(|(f, _)| format!("{f:?}")).collect();
        names.join(", ")
    }
}

/// A fault that is active, with what healing it needs.
pub struct Active {
    pub fault: Fault,
    pub id: usize,
    /// The node a leader fault resolved to, or the node of a process fault.
    pub node: Option<NodeRef>,
    /// The file filling a disk.
    fill: Option<PathBuf>,
    flapper: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Shard files damaged (their names let the log check expect the errors).
    pub damaged: Vec<PathBuf>,
    /// iptables rules added: (namespace, rule arguments after -A/-D).
    rules: Vec<(String, Vec<String>)>,
    /// tc qdiscs added: (namespace, device).
    qdiscs: Vec<(String, String)>,
}

/// Whether the kernel has `sch_netem` (container kernels often lack it).
pub fn netem_available(cluster: &ChaosCluster) -> bool {
    let ok = tc(&cluster.net.core, &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]).is_ok();
    if ok {
        let _ = tc(&cluster.net.core, &["qdisc", "del", "dev", "lo", "root"]);
    }
    ok
}

fn add_rule(a: &mut Active, ns: &str, chain: &str, spec: &[&str]) -> Result<()> {
    let mut rule: Vec<String> = vec![chain.to_string()];
    rule.extend(spec.iter().map(|s| s.to_string()));
    rule.extend([
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        format!("chaos-f{}", a.id),
        "-j".into(),
        "DROP".into(),
    ]);
    let mut args = vec!["-A"];
    args.extend(rule.iter().map(String::as_str));
    iptables(ns, &args)?;
    a.rules.push((ns.to_string(), rule));
    Ok(())
}

fn drop_rules(a: &mut Active) -> Result<()> {
    for (ns, rule) in a.rules.drain(..) {
        let mut args = vec!["-D"];
        args.extend(rule.iter().map(String::as_str));
        iptables(&ns, &args)?;
    }
    Ok(())
}

/// Cuts `site` off from every other subnet (sites and clients).
fn partition_rules(a: &mut Active, core: &str, site: usize) -> Result<()> {
    add_rule(a, core, "FORWARD", &["-i", &bridge(site)])?;
    add_rule(a, core, "FORWARD", &["-o", &bridge(site)])
}

/// Injects `fault` (the `id`-th of its schedule) into the cluster.
pub fn inject(c: &mut ChaosCluster, fault: &Fault, id: usize, m: usize) -> Result<Active> {
    let mut a = Active {
        fault: fault.clone(),
        id,
        node: None,
        fill: None,
        flapper: None,
        damaged: Vec::new(),
        rules: Vec::new(),
        qdiscs: Vec::new(),
    };
    let core = c.net.core.clone();
    match fault {
        Fault::PartitionSite { site } => partition_rules(&mut a, &core, *site)?,
        Fault::AsymmetricCut { from, to } => {
            add_rule(&mut a, &core, "FORWARD", &["-i", &bridge(*from), "-o", &bridge(*to)])?;
        }
        Fault::IsolateVoter { voter } => {
            let ns = c.meta[*voter].host.ns.clone();
            add_rule(&mut a, &ns, "INPUT", &["-i", "eth0"])?;
            add_rule(&mut a, &ns, "OUTPUT", &["-o", "eth0"])?;
            a.node = Some(NodeRef::Meta(*voter));
        }
        Fault::IsolateLeaderFromStorage => {
            let leader = c.leader_index().context("find the leader to isolate")?;
            let ns = c.meta[leader].host.ns.clone();
            let ips: Vec<String> = c.storage.iter().map(|s| s.host.ip.to_string()).collect();
            for ip in &ips {
                add_rule(&mut a, &ns, "INPUT", &["-s", ip])?;
                add_rule(&mut a, &ns, "OUTPUT", &["-d", ip])?;
            }
            a.node = Some(NodeRef::Meta(leader));
        }
        Fault::SlowLossy { site, delay_ms, loss_pct } => {
            let br = bridge(*site);
            let p = format!("{:.3}", *loss_pct as f64 / 100.0);
            add_rule(
                &mut a,
                &core,
                "FORWARD",
                &["-i", &br, "-m", "statistic", "--mode", "random", "--probability", &p],
            )?;
            add_rule(
                &mut a,
                &core,
                "FORWARD",
                &["-o", &br, "-m", "statistic", "--mode", "random", "--probability", &p],
            )?;
            let delay = format!("{delay_ms}ms");
            // Traffic into the site leaves the core through its bridge.
            let netem = tc(&core, &["qdisc", "add", "dev", &br, "root", "netem", "delay", &delay]);
            if netem.is_err() {
                // No netem in this kernel: a slow link instead, whose queue
                // delays packets by up to the same latency.
                tc(
                    &core,
                    &["qdisc", "add", "dev", &br, "root", "tbf", "rate", "8mbit", "burst", "64kb", "latency", &delay],
                )?;
            }
            a.qdiscs.push((core.clone(), br));
        }
        Fault::Flap { site, period_ms } => {
            let stop = Arc::new(AtomicBool::new(false));
            let (core2, site, period) = (core.clone(), *site, Duration::from_millis(*period_ms));
            let flag = stop.clone();
            let id = a.id;
            let handle = std::thread::spawn(move || {
                let mut probe = Active {
                    fault: Fault::PartitionSite { site },
                    id,
                    node: None,
                    fill: None,
                    flapper: None,
                    damaged: Vec::new(),
                    rules: Vec::new(),
                    qdiscs: Vec::new(),
                };
                while !flag.load(Ordering::SeqCst) {
                    let _ = partition_rules(&mut probe, &core2, site);
                    sleep_unless(&flag, period);
                    let _ = drop_rules(&mut probe);
                    sleep_unless(&flag, period);
                }
                let _ = drop_rules(&mut probe);
            });
            a.flapper = Some((stop, handle));
        }
        Fault::Kill { node } => {
            c.proc_mut(*node).kill();
            a.node = Some(*node);
        }
        Fault::KillLeader => {
            let leader = c.leader_index().context("find the leader to kill")?;
            c.proc_mut(NodeRef::Meta(leader)).kill();
            a.node = Some(NodeRef::Meta(leader));
        }
        Fault::Pause { node } => {
            c.proc_mut(*node).pause();
            a.node = Some(*node);
        }
        Fault::PauseLeader => {
            let leader = c.leader_index().context("find the leader to pause")?;
            c.proc_mut(NodeRef::Meta(leader)).pause();
            a.node = Some(NodeRef::Meta(leader));
        }
        Fault::Shards { damage, count, pick } => {
            a.damaged = damage_shards(c, *damage, (*count).min(m), *pick)?;
        }
        Fault::DiskFill { storage } => {
            let path = c.storage[*storage].data.join("chaos-fill");
            fill(&path)?;
            a.fill = Some(path);
            a.node = Some(NodeRef::Storage(*storage));
        }
        Fault::ClockSkew { storage, offset_s } => {
            std::fs::write(clock_file(&c.dir, *storage), format!("{offset_s:+}\n"))?;
            a.node = Some(NodeRef::Storage(*storage));
        }
    }
    Ok(a)
}

fn sleep_unless(flag: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !flag.load(Ordering::SeqCst) && !left.is_zero() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// Writes zeros to `path` until the filesystem refuses more.
fn fill(path: &std::path::Path) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let block = vec![0u8; 1 << 20];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e).with_context(|| format!("fill {}", path.display())),
        }
    }
    // The last partial block: byte by byte is slow; halve instead.
    let mut n = 1 << 19;
    while n > 0 {
        if f.write_all(&block[..n]).is_err() {
            n /= 2;
        }
    }
    Ok(())
}

/// Damages `count` shard files of one pack, on distinct nodes: the pack is
/// the `pick`-th (modulo) of those whose shards are all present.
fn damage_shards(c: &ChaosCluster, damage: Damage, count: usize, pick: u64) -> Result<Vec<PathBuf>> {
    let mut by_pack: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for i in 0..c.storage.len() {
        for f in c.shard_files(i) {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some((pack, _)) = name.split_once('.') {
                by_pack.entry(pack.to_string()).or_default().push(f);
            }
        }
    }
    let full: Vec<&Vec<PathBuf>> = by_pack.values().filter(|fs| fs.len() >= 6).collect();
    if full.is_empty() || count == 0 {
        return Ok(Vec::new());
    }
    let files = full[pick as usize % full.len()];
    let mut done = Vec::new();
    for f in files.iter().take(count) {
        match damage {
            Damage::Delete => std::fs::remove_file(f)?,
            Damage::Truncate => {
                let len = std::fs::metadata(f)?.len();
                std::fs::OpenOptions::new().write(true).open(f)?.set_len(len / 2)?;
            }
            Damage::Corrupt => {
                let len = std::fs::metadata(f)?.len();
                let mut file = std::fs::OpenOptions::new().write(true).open(f)?;
                file.seek(SeekFrom::Start(len - len / 3))?;
                file.write_all(&[0xA5; 64])?;
            }
        }
        done.push(f.clone());
    }
    Ok(done)
}

/// Heals an active fault: removes its rules and qdiscs, restarts or
/// continues its process, frees its disk, resets its clock.
pub fn heal(c: &mut ChaosCluster, a: &mut Active) -> Result<()> {
    if let Some((stop, handle)) = a.flapper.take() {
        stop.store(true, Ordering::SeqCst);
        let _ = handle.join();
    }
    drop_rules(a)?;
    for (ns, dev) in a.qdiscs.drain(..) {
        tc(&ns, &["qdisc", "del", "dev", &dev, "root"])?;
    }
    if let Some(path) = a.fill.take() {
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    match (&a.fault, a.node) {
        (Fault::Kill { .. } | Fault::KillLeader, Some(n)) => c.restart(n)?,
        (Fault::Pause { .. } | Fault::PauseLeader, Some(n)) => c.proc_mut(n).resume(),
        (Fault::ClockSkew { storage, .. }, _) => std::fs::write(clock_file(&c.dir, *storage), "+0\n")?,
        _ => {}
    }
    Ok(())
}

/// Removes every rule of the suite from every namespace of the cluster:
/// the last word of healing, whatever happened before.
pub fn heal_network(c: &ChaosCluster) {
    let mut namespaces = vec![c.net.core.clone()];
    namespaces.extend(c.net.hosts.iter().map(|h| h.ns.clone()));
    for ns in namespaces {
        let _ = iptables(&ns, &["-F"]);
    }
    for s in 0..c.shape.sites {
        let _ = tc(&c.net.core, &["qdisc", "del", "dev", &bridge(s), "root"]);
    }
}
