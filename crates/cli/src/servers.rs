//! `coffer meta` and `coffer storage`: long-running servers that stop
//! cleanly on SIGINT or SIGTERM, each with its admin HTTP port
//! (`--admin-listen`, `coffer_admin`) when asked for one. Both bound
//! addresses are reported in the data directory (`addr`, `admin-addr`),
//! so a supervisor that asked for port 0 learns them.

use anyhow::{Context, Result};
use coffer_meta::MetaNode;
use coffer_storage::StorageNode;
use futures::FutureExt;

use crate::args::{Global, MetaArgs, StorageArgs};

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))
}

pub async fn run_meta(a: MetaArgs, g: &Global) -> Result<()> {
    let s = crate::config::effective(&crate::config::meta_defaults(), a.config.as_deref(), &a.settings)?;
    if a.print_config {
        print!("{}", crate::config::to_toml(&s)?);
        return Ok(());
    }
    // Before any configuration is built: MetaConfig takes the process default.
    coffer_rpc::tls::set_process_default(crate::security::resolve(g, &s.file_tls())?);
    // Check everything but the bound address before binding.
    s.to_config("127.0.0.1:0")?;
    let listen = s.listen()?;
    let listener = bind(listen).await?;
    let admin = bind_admin(s.admin_listen.as_deref()).await?;
    let mut config = s.to_config(&listener_addr(&listener, listen))?;
    // Test failpoints (`coffer_meta::failpoint`): cluster tests arm them to
    // stop a leader at a chosen moment; deliberately not a flag or a
    // configuration key, so that no deployment turns them on by accident.
    config.failpoints = std::env::var("COFFER_FAILPOINTS").is_ok_and(|v| v == "1");
    if config.failpoints {
        tracing::warn!("test failpoints are enabled (COFFER_FAILPOINTS=1)");
    }
    let (id, advertise) = (config.id, config.advertise.clone());
    let data = config.data_dir.clone();
    let node = MetaNode::start(config).await.context("start metadata node")?;
    let shutdown = shutdown_signal().boxed().shared();
    if let Some(l) = admin {
        report(&data, "admin-addr", &l)?;
        tracing::info!(admin = %listener_addr(&l, ""), "admin port serving");
        coffer_meta::observe::admin_server(node.clone()).spawn(l, shutdown.clone());
    }
    report_addr(&data, &listener)?;
    tracing::info!(%id, %advertise, "metadata node serving");
    node.serve(listener, shutdown).await.context("serve metadata node")
}

pub async fn run_storage(a: StorageArgs, g: &Global) -> Result<()> {
    let s = crate::config::effective(&crate::config::storage_defaults(), a.config.as_deref(), &a.settings)?;
    if a.print_config {
        print!("{}", crate::config::to_toml(&s)?);
        return Ok(());
    }
    coffer_rpc::tls::set_process_default(crate::security::resolve(g, &s.file_tls())?);
    s.to_config("127.0.0.1:0")?;
    let listen = s.listen()?;
    let listener = bind(listen).await?;
    let admin = bind_admin(s.admin_listen.as_deref()).await?;
    let config = s.to_config(&listener_addr(&listener, listen))?;
    let (advertise, site, data) = (config.advertise.clone(), config.site.clone(), config.data_dir.clone());
    // The address files go first: a node restarted on a full disk still
    // starts (its store opens without the inventory), and the block its
    // supervisor freed by removing the old `addr` would otherwise go to
    // sled's attempt to open the inventory (found by the chaos suite). The
    // listeners are bound already, so the addresses are true; if the node
    // then cannot open, the files it replaced are put back.
    let previous: Vec<(&str, Option<String>)> =
        ["admin-addr", "addr"].iter().map(|n| (*n, std::fs::read_to_string(data.join(n)).ok())).collect();
    if let Some(l) = &admin {
        report(&data, "admin-addr", l)?;
    }
    report_addr(&data, &listener)?;
    let node = match StorageNode::open(config) {
        Ok(node) => node,
        Err(e) => {
            for (name, old) in previous {
                let path = data.join(name);
                let _ = match old {
                    Some(text) => std::fs::write(&path, text),
                    None => std::fs::remove_file(&path),
                };
            }
            return Err(e).context("open storage node");
        }
    };
    if let Some(l) = &admin {
        tracing::info!(admin = %listener_addr(l, ""), "admin port serving");
    }
    tracing::info!(node = %node.id(), %advertise, %site, "storage node serving");
    node.serve_with_admin(listener, admin, shutdown_signal()).await.context("serve storage node")
}

/// Binds the admin port if one is configured; a bad address is a usage
/// error naming the key.
async fn bind_admin(addr: Option<&str>) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
        return Err(anyhow::Error::new(crate::config::UsageError(format!(
            "`admin_listen`: {addr:?} is not host:port"
        ))));
    }
    bind(addr).await.map(Some).context("bind the admin port (`admin_listen`)")
}

/// Writes the bound address to `DATA/addr` (through a rename, so a reader
/// never sees half a line): with `--listen HOST:0` the kernel picks the
/// port, which is race-free, and this is how a supervisor learns it.
fn report_addr(data: &std::path::Path, l: &tokio::net::TcpListener) -> Result<()> {
    report(data, "addr", l)
}

/// Writes the address `l` is bound to into `DATA/name`, atomically.
fn report(data: &std::path::Path, name: &str, l: &tokio::net::TcpListener) -> Result<()> {
    let addr = l.local_addr().context("read the bound address")?;
    std::fs::create_dir_all(data).with_context(|| format!("create {}", data.display()))?;
    let (tmp, path) = (data.join(format!("{name}.tmp")), data.join(name));
    std::fs::write(&tmp, format!("{addr}\n")).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
}

/// The address actually bound (port 0 becomes the real port).
pub fn listener_addr(l: &tokio::net::TcpListener, fallback: &str) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| fallback.to_string())
}
