//! `coffer meta` and `coffer storage`: long-running servers that stop
//! cleanly on SIGINT or SIGTERM.

use anyhow::{Context, Result};
use coffer_meta::{MetaConfig, MetaNode};
use coffer_storage::{StorageConfig, StorageNode};
use coffer_types::{MetaId, SiteId};

use crate::args::{MetaArgs, StorageArgs};

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

pub fn meta_config(a: &MetaArgs, advertise: String) -> MetaConfig {
    let mut c = MetaConfig::new(MetaId(a.id), a.data.clone(), advertise);
    c.init = a.init;
    c.join = a.join.clone();
    c.site = a.site.clone();
    c.snapshot_every = a.snapshot_every;
    c.keep_logs = a.keep_logs;
    c.repair.bandwidth = a.rebuild_bandwidth;
    c.repair.parallelism = a.rebuild_parallelism.max(1);
    c.raft_heartbeat = a.raft_heartbeat;
    c.election_timeout = (a.election_timeout, a.election_timeout * 2);
    c.suspect_after = a.suspect_after;
    c.down_after = a.down_after;
    c
}

pub async fn run_meta(a: MetaArgs) -> Result<()> {
    let listener = bind(&a.listen).await?;
    let advertise = a.advertise.clone().unwrap_or_else(|| listener_addr(&listener, &a.listen));
    let node = MetaNode::start(meta_config(&a, advertise.clone())).await.context("start metadata node")?;
    report_addr(&a.data, &listener)?;
    tracing::info!(id = a.id, %advertise, "metadata node serving");
    node.serve(listener, shutdown_signal()).await.context("serve metadata node")
}

pub async fn run_storage(a: StorageArgs) -> Result<()> {
    let site = SiteId::new(a.site.clone()).context("parse --site")?;
    let listener = bind(&a.listen).await?;
    let advertise = a.advertise.clone().unwrap_or_else(|| listener_addr(&listener, &a.listen));
    let mut config = StorageConfig::new(a.data.clone(), advertise.clone(), site, a.meta.clone());
    config.capacity_bytes = a.capacity;
    config.heartbeat_interval = a.heartbeat_interval;
    config.scrub_interval = Some(a.scrub_interval);
    config.scrub_rate = a.scrub_rate;
    let node = StorageNode::open(config).context("open storage node")?;
    report_addr(&a.data, &listener)?;
    tracing::info!(node = %node.id(), %advertise, site = %a.site, "storage node serving");
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
