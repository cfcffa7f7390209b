//! `coffer dev`: the embedded local cluster. One process runs a metadata
//! node and `sites × nodes_per_site` storage nodes on loopback, with all
//! data under one folder, and writes `DIR/env` for other shells.
//!
//! With `--meta-nodes 3` it runs three Raft voters, one per site: the first
//! initialises the cluster, the others join it.
//!
//! A site can be stopped and started again while the cluster runs, to
//! rehearse a site loss: `coffer dev-site stop SITE` drops a request file in
//! `DIR/control/`, which this process picks up, shutting down (or
//! restarting, on the same ports and data) every node of that site, its
//! metadata voter included.
//!
//! Unless `--insecure`, the cluster runs with mutual TLS: a CA and one
//! certificate per role (meta, storage, and an admin client certificate
//! for the shell) are made under `DIR/tls`, and `DIR/env` points
//! `COFFER_CACERT`, `COFFER_CERT` and `COFFER_KEY` at the CA and the admin
//! certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_meta::{MetaConfig, MetaNode};
use coffer_storage::StorageNode;
use coffer_types::ErasureParams;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::args::{DevArgs, DevSiteAction, DevSiteArgs, Global};
use crate::config::{merge, meta_defaults, storage_defaults, Dur, MetaSettings, StorageSettings};
use crate::servers::{bind, listener_addr, shutdown_signal};

struct RunningNode {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct MetaSlot {
    config: MetaConfig,
    running: Option<RunningNode>,
}

struct SiteNodes {
    nodes: Vec<DevNode>,
    running: Vec<RunningNode>,
    meta: Option<MetaSlot>,
    /// The storage nodes' transport security.
    security: coffer_rpc::Security,
}

/// One storage node of a dev cluster.
struct DevNode {
    dir: PathBuf,
    /// Kept across restarts of the site.
    addr: String,
    /// The listener bound when the cluster started, held until the node
    /// first serves on it. Dropping it and binding the address again later
    /// would leave a window in which the kernel may hand the port to an
    /// outgoing connection (the other nodes registering), and the node would
    /// then fail to start with "address in use".
    first: Option<tokio::net::TcpListener>,
}

/// The identities of a dev cluster.
struct DevTls {
    meta: coffer_rpc::Security,
    storage: coffer_rpc::Security,
    admin: coffer_rpc::Security,
    /// Lines for `DIR/env`.
    env: String,
}

/// Plain text with `--insecure`; otherwise a CA under `DIR/tls` (kept
/// across runs) and fresh certificates for each role, valid for loopback.
fn dev_tls(data: &Path, g: &Global) -> Result<DevTls> {
    if g.insecure {
        tracing::warn!("coffer dev running with --insecure: plain-text gRPC, no peer authentication");
        let s = coffer_rpc::Security::Insecure;
        return Ok(DevTls { meta: s.clone(), storage: s.clone(), admin: s, env: "export COFFER_INSECURE=1\n".into() });
    }
    let dir = data.join("tls");
    if !dir.join(coffer_pki::CA_CERT).exists() {
        coffer_pki::init_ca(&dir).context("create the dev CA")?;
    }
    let issue = |role: &str, name: &str| -> Result<coffer_rpc::Security> {
        let leaf = coffer_pki::Leaf {
            role: role.into(),
            name: name.into(),
            dns: vec!["localhost".into()],
            ips: vec![std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()],
        };
        let (cert, key) =
            coffer_pki::issue_to(&dir, &leaf, &dir).with_context(|| format!("issue the dev {role} certificate"))?;
        let paths = coffer_rpc::TlsPaths { ca: dir.join(coffer_pki::CA_CERT), cert, key };
        coffer_rpc::Security::tls(paths).with_context(|| format!("load the dev {role} certificate"))
    };
    let (meta, storage, admin) = (issue("meta", "meta")?, issue("storage", "storage")?, issue("admin", "admin")?);
    // An agent's certificate (`DIR/tls/agent.crt`), for trying what a
    // repository token allows: with the admin certificate of `DIR/env`
    // every call is a cluster administrator's, whatever the token.
    issue("client", "agent")?;
    let env = format!(
        "export COFFER_CACERT={}\nexport COFFER_CERT={}\nexport COFFER_KEY={}\n",
        dir.join(coffer_pki::CA_CERT).display(),
        dir.join("admin.crt").display(),
        dir.join("admin.key").display()
    );
    Ok(DevTls { meta, storage, admin, env })
}

pub fn site_name(i: u32) -> String {
    format!("site-{}", (b'a' + (i % 26) as u8) as char)
}

pub async fn run(a: DevArgs, g: &Global) -> Result<()> {
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

    let tls = dev_tls(&data, g)?;
    // This process's own calls (waiting for the voters) are an administrator's.
    coffer_rpc::tls::set_process_default(tls.admin.clone());
    if a.meta_nodes == 0 || a.meta_nodes > a.sites {
        bail!("--meta-nodes must be between 1 and --sites ({}): one voter per site", a.sites);
    }
    // Bind every metadata listener first, so that all addresses are known.
    let mut meta_listeners = Vec::new();
    for i in 0..a.meta_nodes {
        let addr = if i == 0 { a.listen.clone() } else { "127.0.0.1:0".to_string() };
        let l = bind(&addr).await?;
        let bound = listener_addr(&l, &addr);
        meta_listeners.push((l, bound));
    }
    let meta_addrs: Vec<String> = meta_listeners.iter().map(|(_, a)| a.clone()).collect();
    let meta_addr = meta_addrs.join(",");
    let (token_file, admin_token) = admin_token(&data)?;
    let mut meta_configs = Vec::new();
    for (i, (_, addr)) in meta_listeners.iter().enumerate() {
        let dir = if i == 0 { data.join("meta") } else { data.join(format!("meta-{}", i + 1)) };
        // The same settings, defaults and checks as `coffer meta`, with
        // timings short enough for one machine.
        let settings = MetaSettings {
            id: Some(i as u64 + 1),
            data: Some(dir),
            listen: Some(addr.clone()),
            site: Some(site_name(i as u32)),
            init: Some(i == 0),
            join: (i > 0).then(|| meta_addrs[0].clone()),
            raft_heartbeat: Some(Dur(Duration::from_millis(100))),
            election_timeout: Some(Dur(Duration::from_millis(400))),
            suspect_after: Some(Dur(Duration::from_secs(4))),
            down_after: Some(Dur(Duration::from_secs(60))),
            admin_token_file: Some(token_file.clone()),
            ..MetaSettings::default()
        };
        let mut mc = merge(&[&meta_defaults(), &settings])?.to_config(addr)?;
        mc.security = tls.meta.clone();
        meta_configs.push(mc);
    }
    let mut meta_slots = Vec::new();
    for (mc, (l, _)) in meta_configs.into_iter().zip(meta_listeners) {
        let running = start_meta(&mc, Some(l)).await?;
        meta_slots.push(MetaSlot { config: mc, running: Some(running) });
    }

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
            nodes.push(DevNode { dir, addr: bound, first: Some(l) });
        }
        let meta = if (s as usize) < meta_slots.len() { Some(meta_slots.remove(0)) } else { None };
        sites.insert(site, SiteNodes { nodes, running: Vec::new(), meta, security: tls.storage.clone() });
    }
    for (site, s) in sites.iter_mut() {
        start_site(site, s, &meta_addr).await?;
    }
    let bearer = coffer_rpc::identity::Bearer::new(&admin_token).context("use the admin token")?;
    wait_for_voters(&meta_addrs, a.meta_nodes as usize, &bearer).await?;

    // The cluster admin token: whoever reads the env file administers the
    // cluster, so it is written for its owner only.
    let env = format!(
        "export COFFER_ENDPOINT={meta_addr}\nexport COFFER_K={}\nexport COFFER_M={}\nexport COFFER_TOKEN={admin_token}\n{}",
        params.k(),
        params.m(),
        tls.env
    );
    write_private(&data.join("env"), &env).context("write env file")?;
    println!(
        "coffer dev: {} metadata voter(s) at {meta_addr}, {} storage nodes in {} sites, data in {}",
        a.meta_nodes,
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
    Ok(())
}

async fn start_meta(config: &MetaConfig, listener: Option<tokio::net::TcpListener>) -> Result<RunningNode> {
    let listener = match listener {
        Some(l) => l,
        None => bind(&config.advertise).await?,
    };
    let node = MetaNode::start(config.clone()).await.context("start metadata node")?;
    let (stop, rx) = oneshot::channel::<()>();
    let id = config.id;
    let task = tokio::spawn(async move {
        if let Err(e) = node
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
        {
            tracing::error!(meta = %id, error = %e, "metadata node failed");
        }
    });
    Ok(RunningNode { stop, task })
}

/// The cluster admin token of this dev cluster, kept in `DIR/admin-token`
/// so that a restarted `coffer dev` keeps it (and shells that sourced the
/// env file keep working); drawn at random the first time.
fn admin_token(data: &Path) -> Result<(PathBuf, String)> {
    let path = data.join("admin-token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if coffer_meta::AdminToken::new(&text).is_ok() {
            return Ok((path, text.trim().to_string()));
        }
    }
    let token = coffer_meta::AdminToken::generate();
    write_private(&path, &format!("{token}\n")).with_context(|| format!("write {}", path.display()))?;
    Ok((path, token))
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // A file from an earlier run keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

/// Waits until the metadata cluster has a leader and `n` voters.
async fn wait_for_voters(addrs: &[String], n: usize, bearer: &coffer_rpc::identity::Bearer) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for a in addrs {
            if let Ok(ch) = coffer_rpc::channel(a) {
                let mut c = coffer_rpc::admin_client(ch);
                let mut req = tonic::Request::new(coffer_proto::pb::NodeMetricsRequest {});
                bearer.attach(&mut req);
                if let Ok(m) = c.node_metrics(req).await {
                    let m = m.into_inner();
                    let voters = m.members.iter().filter(|x| x.role == "voter").count();
                    if m.leader != 0 && voters >= n {
                        return Ok(());
                    }
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("the metadata cluster did not reach {n} voters within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_site(site: &str, s: &mut SiteNodes, meta_addr: &str) -> Result<()> {
    if let Some(m) = s.meta.as_mut() {
        if m.running.is_none() {
            m.running = Some(start_meta(&m.config, None).await?);
        }
    }
    for DevNode { dir, addr, first } in &mut s.nodes {
        let settings = StorageSettings {
            data: Some(dir.clone()),
            listen: Some(addr.clone()),
            site: Some(site.to_string()),
            meta: Some(meta_addr.split(',').map(str::to_string).collect()),
            heartbeat_interval: Some(Dur(Duration::from_millis(500))),
            ..StorageSettings::default()
        };
        let mut c = merge(&[&storage_defaults(), &settings])?.to_config(addr)?;
        c.security = s.security.clone();
        let node = StorageNode::open(c).with_context(|| format!("open storage node in {}", dir.display()))?;
        let l = match first.take() {
            Some(l) => l,
            None => bind(addr).await?,
        };
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
    if let Some(n) = s.meta.as_mut().and_then(|m| m.running.take()) {
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
