//! What a storage node shows on its admin port (`coffer_admin`).
//!
//! - `/readyz`: the node has registered with the metadata plane (its
//!   heartbeat worker says so) and its data directory takes a write (a
//!   small probe file written, synced and removed): a node whose disk went
//!   read-only or full of inodes stops receiving traffic from anything
//!   that routes by readiness.
//! - `/metrics`: used, free and capacity bytes, the shard count, the last
//!   scrub pass and every worker's state and progress, read when scraped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_admin::{AdminServer, Sample};
use coffer_types::NodeId;
use coffer_worker::StatusBoard;

use crate::store::ShardStore;
use crate::workers::read_last_scrub;

/// The probe file `/readyz` writes; removed again at once.
const PROBE_FILE: &str = ".ready-probe";

/// What the admin server of a storage node reads.
pub(crate) struct Observed {
    pub id: NodeId,
    pub site: String,
    pub dir: PathBuf,
    pub store: ShardStore,
    pub capacity_bytes: u64,
    pub board: StatusBoard,
}

fn disk_writable(dir: &Path) -> Result<(), String> {
    use std::io::Write;
    let path = dir.join(PROBE_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(b"ok\n")?;
        f.sync_all()?;
        std::fs::remove_file(&path)
    };
    write().map_err(|e| format!("the data directory {} takes no write: {e}", dir.display()))
}

async fn ready(o: &Observed) -> Result<(), String> {
    let registered = o
        .board
        .snapshot()
        .iter()
        .any(|w| w.name == "heartbeat" && w.progress.get("registered").copied().unwrap_or(0) == 1);
    if !registered {
        return Err("not registered with the metadata plane yet".into());
    }
    let dir = o.dir.clone();
    tokio::task::spawn_blocking(move || disk_writable(&dir)).await.map_err(|e| format!("disk probe: {e}"))?
}

fn samples(o: &Observed) -> Vec<Sample> {
    let (node, site) = (o.id.to_string(), o.site.clone());
    let g = |name, help, v: f64| Sample::gauge(name, help, v).label("node", node.clone()).label("site", site.clone());
    let free = fs2::available_space(&o.dir).unwrap_or(0);
    let mut out = vec![
        g("coffer_storage_used_bytes", "Bytes of shard files on this node", o.store.used_bytes() as f64),
        g("coffer_storage_free_bytes", "Free bytes of the data directory's filesystem", free as f64),
        g("coffer_storage_capacity_bytes", "The capacity this node announces", o.capacity_bytes as f64),
        g("coffer_storage_shards", "Shard files on this node", o.store.shard_count() as f64),
    ];
    if let Some(t) = read_last_scrub(&o.dir) {
        let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        out.push(g("coffer_scrub_last_success_timestamp_seconds", "When the last scrub pass finished", secs));
    }
    for w in o.board.snapshot() {
        out.push(
            Sample::gauge("coffer_worker_state", "1 for the state a background worker is in", 1.0)
                .label("node", node.clone())
                .label("worker", w.name.clone())
                .label("state", w.state.as_str()),
        );
        out.push(
            Sample::counter("coffer_worker_errors_total", "Failed steps of a background worker", w.errors as f64)
                .label("node", node.clone())
                .label("worker", w.name.clone()),
        );
        for (key, v) in &w.progress {
            if key.ends_with("_ms") {
                continue;
            }
            let (name, help) = match (w.name.as_str(), key.as_str()) {
                ("scrub", "last_verified") => ("coffer_scrub_verified_shards", "Shards the last scrub pass verified"),
                ("scrub", "last_bad") => ("coffer_scrub_bad_shards", "Bad shards the last scrub pass found"),
                ("scrub", "passes") => ("coffer_scrub_passes", "Scrub passes since the node started"),
                _ => ("coffer_worker_progress", "A background worker's progress counters"),
            };
            out.push(
                Sample::gauge(name, help, *v as f64)
                    .label("node", node.clone())
                    .label("worker", w.name.clone())
                    .label("key", key.clone()),
            );
        }
    }
    out
}

/// The admin server of a storage node.
pub(crate) fn admin_server(o: Observed) -> AdminServer {
    let a = Arc::new(o);
    let r = a.clone();
    AdminServer::new("storage")
        .readiness(move || {
            let o = r.clone();
            async move { ready(&o).await }
        })
        .scrape(move || {
            let o = a.clone();
            async move { samples(&o) }
        })
}
