//! What a metadata node shows on its admin port (`coffer_admin`): readiness,
//! `/health/cluster`, the scrape-time metrics and the status page at `/`.
//!
//! - `/readyz`: a leader is known and this node has applied what it
//!   received; the leader itself must also have heard from a quorum within
//!   `QUORUM_SILENCE` (openraft 0.9 never steps a leader down by itself, so
//!   a leader cut off from its voters would otherwise stay "ready").
//! - `/health/cluster`: 200 when a catalog write can commit now. On the
//!   leader that is proven with a read barrier (a quorum confirms its
//!   leadership); a follower answers from what it knows (a leader and no
//!   apply backlog), which cannot see a leader partitioned from the others
//!   in the last election timeout.
//! - metrics and the page are read from this node's state machine and
//!   liveness table. Only the leader has live node states: a follower's
//!   page and node gauges say so instead of guessing.
//!
//! The disaster-recovery figures per source (RPO against target, last
//! drill, backup ratio) come from issue 14's work; a node gets them through
//! [`DrFigures`], and until something provides them the page says they are
//! not available and no `coffer_dr_*` series is exported.

use std::sync::Arc;
use std::time::Duration;

use coffer_admin::{AdminServer, Reply, Sample};
use coffer_proto::pb;

use crate::catalog::CatalogService;
use crate::node::MetaNode;

/// The longest a leader may go without a quorum's acknowledgement and still
/// call itself ready, in election timeouts (the longest one).
const QUORUM_SILENCE_ELECTIONS: u32 = 2;
/// Entries a follower may have received but not applied and be ready.
const MAX_APPLY_LAG: u64 = 1_000;
/// How long the cluster-health read barrier may take.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);
/// How often the status page reloads itself, in seconds.
pub(crate) const PAGE_REFRESH_S: u32 = 5;

/// One source's disaster-recovery figures (issue 14).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceFigures {
    pub repo: String,
    pub source: String,
    /// Seconds since the newest snapshot, and the target.
    pub rpo_seconds: f64,
    pub rpo_target_seconds: f64,
    /// When the last drill finished (Unix seconds), its RTO and whether it passed.
    pub last_drill_timestamp_seconds: Option<f64>,
    pub last_drill_rto_seconds: Option<f64>,
    pub last_drill_ok: Option<bool>,
    /// Stored bytes over source bytes of the newest backup.
    pub backup_ratio: Option<f64>,
}

/// A provider of the figures per source.
pub type DrFigures = Arc<dyn Fn() -> Vec<SourceFigures> + Send + Sync>;

/// Whether this node can serve (see the module documentation).
pub fn ready(node: &MetaNode) -> Result<(), String> {
    let m = node.raft.metrics().borrow().clone();
    if let Err(e) = &m.running_state {
        return Err(format!("raft stopped: {e}"));
    }
    let Some(leader) = m.current_leader else {
        return Err("no Raft leader known".into());
    };
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let received = m.last_log_index.unwrap_or(0);
    if leader == node.config.id.0 {
        let bound = node.config.election_timeout.1 * QUORUM_SILENCE_ELECTIONS;
        match m.millis_since_quorum_ack {
            Some(ms) if Duration::from_millis(ms) <= bound => {}
            Some(ms) => return Err(format!("leader without a quorum acknowledgement for {ms} ms")),
            None => return Err("leader without a quorum acknowledgement yet".into()),
        }
    }
    if received.saturating_sub(applied) > MAX_APPLY_LAG {
        return Err(format!("applied {applied} of {received} log entries"));
    }
    Ok(())
}

/// Whether a catalog write can commit now (see the module documentation).
pub async fn cluster_healthy(node: &MetaNode) -> Result<String, String> {
    ready(node)?;
    let leader = node.raft.metrics().borrow().current_leader;
    if leader != Some(node.config.id.0) {
        return Ok(format!("leader is meta-{}", leader.unwrap_or(0)));
    }
    match tokio::time::timeout(HEALTH_DEADLINE, node.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok("this node is the leader and a quorum confirmed it".into()),
        Ok(Err(e)) => Err(format!("no quorum: {e}")),
        Err(_) => Err(format!("no quorum confirmed leadership within {HEALTH_DEADLINE:?}")),
    }
}

/// The admin server of a metadata node, with `dr` as the source of the
/// disaster-recovery figures if there is one.
pub fn admin_server(node: Arc<MetaNode>, dr: Option<DrFigures>) -> AdminServer {
    let (n1, n2, n3, n4) = (node.clone(), node.clone(), node.clone(), node);
    let dr2 = dr.clone();
    AdminServer::new("meta")
        .readiness(move || {
            let n = n1.clone();
            async move { ready(&n) }
        })
        .page("/health/cluster", move || {
            let n = n2.clone();
            async move {
                match cluster_healthy(&n).await {
                    Ok(why) => Reply::text(200, format!("ok: {why}\n")),
                    Err(why) => Reply::text(503, format!("catalog writes cannot commit: {why}\n")),
                }
            }
        })
        .scrape(move || {
            let (n, dr) = (n3.clone(), dr.clone());
            async move { samples(&n, dr.as_ref()) }
        })
        .page("/", move || {
            let (n, dr) = (n4.clone(), dr2.clone());
            async move {
                match crate::status_page::render(&n, dr.as_ref()) {
                    Ok(html) => Reply::html(200, html),
                    Err(e) => Reply::text(500, format!("cannot read the catalog: {e}\n")),
                }
            }
        })
}

fn is_leader(node: &MetaNode) -> bool {
    node.raft.metrics().borrow().current_leader == Some(node.config.id.0)
}

/// The Raft commit index as the leader computes it: the highest index a
/// majority of voters holds. `None` on a follower (openraft 0.9 does not
/// report it there).
fn commit_index(node: &MetaNode) -> Option<u64> {
    let m = node.raft.metrics().borrow().clone();
    let replication = m.replication.as_ref()?;
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|v| {
            if *v == node.config.id.0 {
                m.last_log_index.unwrap_or(0)
            } else {
                replication.get(v).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
            }
        })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(voters.len() / 2).copied()
}

/// Every scrape-time sample of a metadata node.
fn samples(node: &Arc<MetaNode>, dr: Option<&DrFigures>) -> Vec<Sample> {
    let m = node.raft.metrics().borrow().clone();
    let me = node.config.id.0;
    let mut out = vec![
        Sample::gauge("coffer_raft_term", "The current Raft term", m.current_term as f64),
        Sample::gauge("coffer_raft_leader", "The Raft id of the leader this node knows, 0 if none", m.current_leader.unwrap_or(0) as f64),
        Sample::gauge("coffer_raft_is_leader", "1 if this node is the Raft leader", f64::from(u8::from(m.current_leader == Some(me)))),
        Sample::gauge("coffer_raft_last_log_index", "The last log index this node holds", m.last_log_index.unwrap_or(0) as f64),
        Sample::gauge("coffer_raft_applied_index", "The last log index applied to the state machine", m.last_applied.map(|l| l.index).unwrap_or(0) as f64),
        Sample::gauge(
            "coffer_raft_log_entries",
            "Log entries kept (not yet purged behind a snapshot)",
            m.last_log_index.unwrap_or(0).saturating_sub(m.purged.map(|l| l.index).unwrap_or(0)) as f64,
        ),
        Sample::gauge("coffer_raft_members", "Raft members by role", m.membership_config.membership().voter_ids().count() as f64)
            .label("role", "voter"),
        Sample::gauge("coffer_meta_ready", "1 if /readyz would answer 200", f64::from(u8::from(ready(node).is_ok()))),
    ];
    if let Some(c) = commit_index(node) {
        out.push(Sample::gauge("coffer_raft_commit_index", "The commit index (on the leader only)", c as f64));
    }
    for w in node.workers() {
        worker_samples(&mut out, &node.worker_node_name(), &w.name, w.state.as_str(), &w.progress, w.errors);
    }
    // The cluster-wide figures are the leader's: only it has the liveness
    // table that says which nodes are up.
    if !is_leader(node) {
        return out;
    }
    let svc = CatalogService::new(node.clone());
    let Ok(status) = svc.status_view() else { return out };
    let packs = status.packs.unwrap_or_default();
    for (health, n) in [
        ("healthy", packs.healthy),
        ("degraded", packs.degraded),
        ("at_risk", packs.at_risk),
        ("lost", packs.lost),
        ("short", packs.short),
        ("site_degraded", status.site_degraded),
    ] {
        out.push(Sample::gauge("coffer_packs", "Packs by health (short and site_degraded overlap the others)", n as f64).label("health", health));
    }
    let r = status.rebuild.unwrap_or_default();
    out.push(Sample::gauge("coffer_rebuild_queue_shards", "Shards waiting to be rebuilt or moved", r.queued as f64));
    out.push(Sample::gauge("coffer_rebuild_in_flight_shards", "Shard rebuilds in flight", r.in_flight as f64));
    out.push(Sample::gauge("coffer_rebuild_eta_seconds", "Seconds until the rebuild queue drains at the recent rate", r.eta_s));
    out.push(Sample::counter("coffer_rebuild_done_total", "Shard rebuilds done since this node became leader", r.done as f64));
    out.push(Sample::counter("coffer_rebuild_failed_total", "Shard rebuilds failed since this node became leader", r.failed as f64));
    if let Ok(incidents) = svc.incidents_view() {
        let sum = |f: fn(&pb::Incident) -> u64| incidents.incidents.iter().map(f).fold(0u64, u64::saturating_add) as f64;
        out.push(Sample::counter("coffer_rebuild_read_bytes_total", "Bytes read by rebuilds (all incidents)", sum(|i| i.bytes_read)));
        out.push(Sample::counter("coffer_rebuild_written_bytes_total", "Bytes written by rebuilds (all incidents)", sum(|i| i.bytes_written)));
        out.push(Sample::counter(
            "coffer_rebuild_cross_site_bytes_total",
            "Bytes rebuilds moved between sites (all incidents)",
            sum(|i| i.bytes_cross_site),
        ));
        let open = incidents.incidents.iter().filter(|i| i.state == "open").count();
        out.push(Sample::gauge("coffer_incidents_open", "Incidents not closed yet", open as f64));
    }
    for n in &status.nodes {
        let (id, site) = (n.id.to_string(), n.site.clone());
        let node_sample = |name, help, v: u64| Sample::gauge(name, help, v as f64).label("node", id.clone()).label("site", site.clone());
        out.push(node_sample("coffer_node_used_bytes", "Bytes of shard files on a storage node", n.used_bytes));
        out.push(node_sample("coffer_node_free_bytes", "Free bytes of a storage node's filesystem", n.free_bytes));
        out.push(node_sample("coffer_node_capacity_bytes", "Capacity a storage node announces", n.capacity_bytes));
        for state in ["up", "suspect", "down"] {
            out.push(
                Sample::gauge("coffer_node_state", "1 for the state a storage node is in", f64::from(u8::from(n.state == state)))
                    .label("node", id.clone())
                    .label("site", site.clone())
                    .label("state", state),
            );
        }
    }
    for w in status.workers.iter().filter(|w| !w.node.starts_with("meta-")) {
        worker_samples(&mut out, &w.node, &w.name, &w.state, &w.progress.clone().into_iter().collect(), w.errors);
        if w.name == "scrub" && w.last_run_ms > 0 && w.progress.get("passes").copied().unwrap_or(0) > 0 {
            out.push(
                Sample::gauge("coffer_scrub_last_success_timestamp_seconds", "When a node's last scrub pass finished", w.last_run_ms as f64 / 1000.0)
                    .label("node", w.node.clone()),
            );
        }
    }
    if let Some(dr) = dr {
        for f in dr() {
            let s = |name, help, v: f64| Sample::gauge(name, help, v).label("repo", f.repo.clone()).label("source", f.source.clone());
            out.push(s("coffer_dr_rpo_seconds", "Seconds since a source's newest snapshot", f.rpo_seconds));
            out.push(s("coffer_dr_rpo_target_seconds", "A source's RPO target", f.rpo_target_seconds));
            if let Some(v) = f.last_drill_timestamp_seconds {
                out.push(s("coffer_drill_last_success_timestamp_seconds", "When a source's last drill finished", v));
            }
            if let Some(v) = f.last_drill_rto_seconds {
                out.push(s("coffer_dr_last_drill_rto_seconds", "The RTO a source's last drill measured", v));
            }
            if let Some(ok) = f.last_drill_ok {
                out.push(s("coffer_dr_last_drill_ok", "1 if a source's last drill passed", f64::from(u8::from(ok))));
            }
            if let Some(v) = f.backup_ratio {
                out.push(s("coffer_dr_backup_ratio", "Stored bytes over source bytes of the newest backup", v));
            }
        }
    }
    out
}

fn worker_samples(
    out: &mut Vec<Sample>,
    node: &str,
    name: &str,
    state: &str,
    progress: &std::collections::BTreeMap<String, u64>,
    errors: u64,
) {
    out.push(
        Sample::gauge("coffer_worker_state", "1 for the state a background worker is in", 1.0)
            .label("node", node)
            .label("worker", name)
            .label("state", state),
    );
    out.push(Sample::counter("coffer_worker_errors_total", "Failed steps of a background worker", errors as f64).label("node", node).label("worker", name));
    for (key, v) in progress {
        if key.ends_with("_ms") {
            continue;
        }
        out.push(
            Sample::gauge("coffer_worker_progress", "A background worker's progress counters", *v as f64)
                .label("node", node)
                .label("worker", name)
                .label("key", key.clone()),
        );
    }
}
