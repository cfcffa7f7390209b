//! `coffer meta` and `coffer storage`: long-running servers that stop
//! cleanly on SIGINT or SIGTERM.

use anyhow::{Context, Result};
use coffer_meta::MetaNode;
use coffer_storage::StorageNode;

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
    let config = s.to_config(&listener_addr(&listener, listen))?;
    let (id, advertise) = (config.id, config.advertise.clone());
    let data = config.data_dir.clone();
    let node = MetaNode::start(config).await.context("start metadata node")?;
    report_addr(&data, &listener)?;
    tracing::info!(%id, %advertise, "metadata node serving");
    node.serve(listener, shutdown_signal()).await.context("serve metadata node")
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
    let config = s.to_config(&listener_addr(&listener, listen))?;
    let (advertise, site, data) = (config.advertise.clone(), config.site.clone(), config.data_dir.clone());
    let node = StorageNode::open(config).context("open storage node")?;
    report_addr(&data, &listener)?;
    tracing::info!(node = %node.id(), %advertise, %site, "storage node serving");
    node.serve(listener, shutdown_signal()).await.context("serve storage node")
}

/// Writes the bound address to `DATA/addr` (through a rename, so a reader
/// never sees half a line): with `--listen HOST:0` the kernel picks the
/// port, which is race-free, and this is how a supervisor learns it.
fn report_addr(data: &std::path::Path, l: &tokio::net::TcpListener) -> Result<()> {
    let addr = l.local_addr().context("read the bound address")?;
    let (tmp, path) = (data.join("addr.tmp"), data.join("addr"));
    std::fs::write(&tmp, format!("{addr}\n")).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
}

/// The address actually bound (port 0 becomes the real port).
pub fn listener_addr(l: &tokio::net::TcpListener, fallback: &str) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| fallback.to_string())
}
