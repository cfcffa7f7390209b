//! `coffer dev`: the embedded local cluster. One process runs a metadata
//! node and `sites × nodes_per_site` storage nodes on loopback, with all
//! data under one folder, and writes `DIR/env` for other shells.
//!
//! A site can be stopped and started again while the cluster runs, to
//! rehearse a site loss: `coffer dev-site stop SITE` drops a request file in
//! `DIR/control/`, which this process picks up, shutting down (or
//! restarting, on the same ports and data) every node of that site.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_meta::{MetaConfig, MetaNode};
use coffer_storage::{StorageConfig, StorageNode};
use coffer_types::{ErasureParams, MetaId, SiteId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::args::{DevArgs, DevSiteAction, DevSiteArgs};
use crate::servers::{bind, listener_addr, shutdown_signal};

struct RunningNode {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct SiteNodes {
    /// (data dir, bound address) per node; addresses are kept across restarts.
    nodes: Vec<(PathBuf, String)>,
    running: Vec<RunningNode>,
}

pub fn site_name(i: u32) -> String {
    format!("site-{}", (b'a' + (i % 26) as u8) as char)
}

pub async fn run(a: DevArgs) -> Result<()> {
    let params = ErasureParams::new(a.k, a.m).context("check --k and --m")?;
    if a.sites * a.nodes_per_site < params.total() as u32 {
        bail!(
            "{} storage nodes cannot hold the {} shards of a {params} pack on distinct nodes",
            a.sites * a.nodes_per_site,
            params.total()
        );
    }
    if a.sites * (a.nodes_per_site.min(a.m)) < params.total() as u32 {
        bail!(
            "{} sites of {} nodes cannot place a {params} pack with at most m={} shards per site",
            a.sites,
            a.nodes_per_site,
            a.m
        );
    }
    std::fs::create_dir_all(&a.data).with_context(|| format!("create {}", a.data.display()))?;
    let data = std::fs::canonicalize(&a.data).context("resolve --data")?;
    let control = data.join("control");
    std::fs::create_dir_all(&control).context("create control dir")?;
    for e in std::fs::read_dir(&control).context("read control dir")?.flatten() {
        let _ = std::fs::remove_file(e.path());
    }

    let listener = bind(&a.listen).await?;
    let meta_addr = listener_addr(&listener, &a.listen);
    let mut mc = MetaConfig::new(MetaId(1), data.join("meta"), meta_addr.clone());
    mc.init = true;
    mc.raft_heartbeat = Duration::from_millis(100);
    mc.election_timeout = (Duration::from_millis(400), Duration::from_millis(800));
    mc.suspect_after = Duration::from_secs(4);
    mc.down_after = Duration::from_secs(60);
    let meta = MetaNode::start(mc).await.context("start metadata node")?;
    let (meta_stop, meta_stop_rx) = oneshot::channel::<()>();
    let meta_task = tokio::spawn(meta.clone().serve(listener, async {
        let _ = meta_stop_rx.await;
    }));
    meta.wait_for_leader(Duration::from_secs(10)).await.context("elect a leader")?;

    let mut sites: BTreeMap<String, SiteNodes> = BTreeMap::new();
    for s in 0..a.sites {
        let site = site_name(s);
        let mut nodes = Vec::new();
        for n in 0..a.nodes_per_site {
            let dir = data.join("storage").join(format!("{site}-{n}"));
            // Keep a node's port across runs of `coffer dev` when we can.
            let port_file = dir.join("dev-addr");
            let addr = std::fs::read_to_string(&port_file).ok().map(|s| s.trim().to_string());
            let l = match &addr {
                Some(addr) => match bind(addr).await {
                    Ok(l) => l,
                    Err(_) => bind("127.0.0.1:0").await?,
                },
                None => bind("127.0.0.1:0").await?,
            };
            let bound = listener_addr(&l, "127.0.0.1:0");
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::write(&port_file, &bound).context("record node address")?;
            drop(l);
            nodes.push((dir, bound));
        }
        sites.insert(site, SiteNodes { nodes, running: Vec::new() });
    }
    for (site, s) in sites.iter_mut() {
        start_site(site, s, &meta_addr).await?;
    }

    let env =
        format!("export COFFER_ENDPOINT={meta_addr}\nexport COFFER_K={}\nexport COFFER_M={}\n", params.k(), params.m());
    std::fs::write(data.join("env"), env).context("write env file")?;
    println!(
        "coffer dev: metadata node at {meta_addr}, {} storage nodes in {} sites, data in {}",
        a.sites * a.nodes_per_site,
        a.sites,
        data.display()
    );
    println!("  . {}/env   # then: coffer repo create NAME; coffer backup PATH", data.display());

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                handle_control(&control, &mut sites, &meta_addr).await;
            }
        }
    }
    for (_, s) in sites.iter_mut() {
        stop_site(s).await;
    }
    let _ = meta_stop.send(());
    meta_task.await.context("join metadata node")?.context("metadata node")?;
    Ok(())
}

async fn start_site(site: &str, s: &mut SiteNodes, meta_addr: &str) -> Result<()> {
    let site_id = SiteId::new(site)?;
    for (dir, addr) in &s.nodes {
        let mut c = StorageConfig::new(dir.clone(), addr.clone(), site_id.clone(), vec![meta_addr.to_string()]);
        c.heartbeat_interval = Duration::from_millis(500);
        let node = StorageNode::open(c).with_context(|| format!("open storage node in {}", dir.display()))?;
        let l = bind(addr).await?;
        let (stop, rx) = oneshot::channel::<()>();
        let id = node.id();
        let task = tokio::spawn(async move {
            if let Err(e) = node
                .serve(l, async {
                    let _ = rx.await;
                })
                .await
            {
                tracing::error!(node = %id, error = %e, "storage node failed");
            }
        });
        s.running.push(RunningNode { stop, task });
    }
    Ok(())
}

async fn stop_site(s: &mut SiteNodes) {
    for n in s.running.drain(..) {
        let _ = n.stop.send(());
        let _ = n.task.await;
    }
}

async fn handle_control(control: &Path, sites: &mut BTreeMap<String, SiteNodes>, meta_addr: &str) {
    let Ok(entries) = std::fs::read_dir(control) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some((action, site)) = name.split_once('-').map(|(a, s)| (a.to_string(), s.to_string())) else {
            continue;
        };
        if action == "done" || name.ends_with(".tmp") {
            continue;
        }
        let _ = std::fs::remove_file(e.path());
        let result = match (action.as_str(), sites.get_mut(&site)) {
            (_, None) => Err(format!("no site {site}")),
            ("stop", Some(s)) => {
                stop_site(s).await;
                println!("coffer dev: stopped {site}");
                Ok(())
            }
            ("start", Some(s)) if s.running.is_empty() => match start_site(&site, s, meta_addr).await {
                Ok(()) => {
                    println!("coffer dev: started {site}");
                    Ok(())
                }
                Err(e) => Err(format!("{e:#}")),
            },
            ("start", Some(_)) => Ok(()),
            _ => Err(format!("unknown action {action}")),
        };
        let answer = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        let _ = std::fs::write(control.join(format!("done-{action}-{site}")), answer);
    }
}

/// `coffer dev-site stop|start SITE`: asks the running `coffer dev` and waits for its answer.
pub async fn site_control(a: DevSiteArgs) -> Result<()> {
    let control = a.data.join("control");
    if !control.is_dir() {
        bail!("no running `coffer dev` with data in {}", a.data.display());
    }
    let action = match a.action {
        DevSiteAction::Stop => "stop",
        DevSiteAction::Start => "start",
    };
    let done = control.join(format!("done-{action}-{}", a.site));
    let _ = std::fs::remove_file(&done);
    let tmp = control.join(format!("{action}-{}.tmp", a.site));
    std::fs::write(&tmp, b"").context("write control request")?;
    std::fs::rename(&tmp, control.join(format!("{action}-{}", a.site))).context("post control request")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(answer) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            if answer == "ok" {
                return Ok(());
            }
            bail!("{action} {}: {answer}", a.site);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{action} {}: the dev cluster did not answer within 30s", a.site)
}
