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
//! The disaster-recovery figures per source ([`dr_figures`]: RPO against
//! target, last drill, backup ratio) are computed here from the replicated
//! records, the source registry (`o/`), the snapshots of the registered
//! sources' repositories and the disaster-recovery records (`y/`), with the
//! functions of `coffer_types::dr` that `coffer report` uses, so a gauge
//! and the report give the same number for the same records. The sources
//! are those of the registry: it is what holds an RPO target.

use std::sync::Arc;
use std::time::Duration;

use coffer_admin::{AdminServer, Reply, Sample};
use coffer_proto::pb;
use coffer_types::dr as figures;
use coffer_types::{DrKind, RepoName, SnapshotRecord};

use crate::catalog::CatalogService;
use crate::error::MetaError;
use crate::kv;
use crate::node::{now_ms, MetaNode};

/// The newest disaster-recovery records of a repository a scrape reads for
/// its sources' last drills (as many as `coffer report` read before paging).
const DR_RECORDS_READ: usize = 10_000;

/// The longest a leader may go without a quorum's acknowledgement and still
/// call itself ready, in election timeouts (the longest one).
const QUORUM_SILENCE_ELECTIONS: u32 = 2;
/// Entries a follower may have received but not applied and be ready.
const MAX_APPLY_LAG: u64 = 1_000;
/// How long the cluster-health read barrier may take.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);
/// How often the status page reloads itself, in seconds.
pub(crate) const PAGE_REFRESH_S: u32 = 5;

/// One source's disaster-recovery figures (issue 14), in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceFigures {
    pub repo: String,
    pub source: String,
    /// Seconds since the end of the source's newest snapshot; `None` before
    /// the first one.
    pub rpo_seconds: Option<f64>,
    /// The target of the source's policy; `None` when it sets none.
    pub rpo_target_seconds: Option<f64>,
    /// When the last drill finished (Unix seconds), its RTO and whether it passed.
    pub last_drill_timestamp_seconds: Option<f64>,
    pub last_drill_rto_seconds: Option<f64>,
    pub last_drill_ok: Option<bool>,
    /// When the last drill that passed finished (Unix seconds).
    pub last_drill_success_timestamp_seconds: Option<f64>,
    /// The share of the source's files its newest snapshot protects.
    pub backup_ratio: Option<f64>,
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The figures of every registered source at `now_ms`, from the records
/// alone. The RPO counts from the registry's newest snapshot end (what
/// `coffer sources` shows against the target; a failed drill of that
/// snapshot shows in the drill figures); the backup ratio is that of the
/// source's newest snapshot; the last drill is the newest drill record of
/// the source. Costs the snapshots and disaster-recovery records of the
/// repositories that have registered sources.
pub fn dr_figures(tree: &crate::store::Tree, now_ms: u64) -> Result<Vec<SourceFigures>, MetaError> {
    let registered = crate::sources::list(tree, None)?;
    let mut out = Vec::with_capacity(registered.len());
    let mut repo_cache: Option<(RepoName, Vec<coffer_types::DrRecord>)> = None;
    for src in registered {
        // The registry is in key order, so one repository's sources are
        // adjacent and its records are read once.
        if repo_cache.as_ref().is_none_or(|(r, _)| *r != src.repo) {
            let records = crate::dr::newest(tree, &src.repo, DR_RECORDS_READ)?;
            repo_cache = Some((src.repo.clone(), records));
        }
        let Some((_, records)) = repo_cache.as_ref() else { continue };
        // The source's newest snapshot from the index: a scrape reads one
        // snapshot per source, however many a real-time source has made.
        let newest = match crate::index::newest_of_source(tree, &src.repo, &src.name)? {
            Some(id) => kv::get::<SnapshotRecord>(tree, "snapshot", &kv::snapshot_key(&id))?,
            None => None,
        };
        let drills = || records.iter().filter(|r| r.kind == DrKind::Drill && r.source == src.name);
        let last = drills().max_by_key(|d| (d.started_ms, d.id));
        let last_ok = drills().filter(|d| d.ok).max_by_key(|d| (d.started_ms, d.id));
        let finished = |d: &coffer_types::DrRecord| secs(d.started_ms.saturating_add(d.duration_ms));
        out.push(SourceFigures {
            repo: src.repo.to_string(),
            source: src.name.clone(),
            rpo_seconds: figures::rpo_ms(now_ms, src.last_ok_end_ms).map(secs),
            rpo_target_seconds: (src.rpo_target_ms > 0).then(|| secs(src.rpo_target_ms)),
            last_drill_timestamp_seconds: last.map(finished),
            last_drill_rto_seconds: last.map(|d| d.rto_s()),
            last_drill_ok: last.map(|d| d.ok),
            last_drill_success_timestamp_seconds: last_ok.map(finished),
            backup_ratio: newest.map(|s| figures::backup_ratio(s.stats.files, s.stats.errors)),
        });
    }
    Ok(out)
}

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

/// The admin server of a metadata node.
pub fn admin_server(node: Arc<MetaNode>) -> AdminServer {
    let (n1, n2, n3, n4) = (node.clone(), node.clone(), node.clone(), node);
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
            let n = n3.clone();
            async move { samples(&n) }
        })
        .page("/", move || {
            let n = n4.clone();
            async move {
                match crate::status_page::render(&n) {
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
fn samples(node: &Arc<MetaNode>) -> Vec<Sample> {
    let m = node.raft.metrics().borrow().clone();
    let me = node.config.id.0;
    let mut out = vec![
        Sample::gauge("coffer_raft_term", "The current Raft term", m.current_term as f64),
        Sample::gauge(
            "coffer_raft_leader",
            "The Raft id of the leader this node knows, 0 if none",
            m.current_leader.unwrap_or(0) as f64,
        ),
        Sample::gauge(
            "coffer_raft_is_leader",
            "1 if this node is the Raft leader",
            f64::from(u8::from(m.current_leader == Some(me))),
        ),
        Sample::gauge(
            "coffer_raft_last_log_index",
            "The last log index this node holds",
            m.last_log_index.unwrap_or(0) as f64,
        ),
        Sample::gauge(
            "coffer_raft_applied_index",
            "The last log index applied to the state machine",
            m.last_applied.map(|l| l.index).unwrap_or(0) as f64,
        ),
        Sample::gauge(
            "coffer_raft_log_entries",
            "Log entries kept (not yet purged behind a snapshot)",
            m.last_log_index.unwrap_or(0).saturating_sub(m.purged.map(|l| l.index).unwrap_or(0)) as f64,
        ),
        Sample::gauge(
            "coffer_raft_members",
            "Raft members by role",
            m.membership_config.membership().voter_ids().count() as f64,
        )
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
        out.push(
            Sample::gauge("coffer_packs", "Packs by health (short and site_degraded overlap the others)", n as f64)
                .label("health", health),
        );
    }
    let r = status.rebuild.unwrap_or_default();
    out.push(Sample::gauge("coffer_rebuild_queue_shards", "Shards waiting to be rebuilt or moved", r.queued as f64));
    out.push(Sample::gauge("coffer_rebuild_in_flight_shards", "Shard rebuilds in flight", r.in_flight as f64));
    out.push(Sample::gauge(
        "coffer_rebuild_eta_seconds",
        "Seconds until the rebuild queue drains at the recent rate",
        r.eta_s,
    ));
    out.push(Sample::counter(
        "coffer_rebuild_done_total",
        "Shard rebuilds done since this node became leader",
        r.done as f64,
    ));
    out.push(Sample::counter(
        "coffer_rebuild_failed_total",
        "Shard rebuilds failed since this node became leader",
        r.failed as f64,
    ));
    if let Ok(incidents) = svc.incidents_view() {
        let sum =
            |f: fn(&pb::Incident) -> u64| incidents.incidents.iter().map(f).fold(0u64, u64::saturating_add) as f64;
        out.push(Sample::counter(
            "coffer_rebuild_read_bytes_total",
            "Bytes read by rebuilds (all incidents)",
            sum(|i| i.bytes_read),
        ));
        out.push(Sample::counter(
            "coffer_rebuild_written_bytes_total",
            "Bytes written by rebuilds (all incidents)",
            sum(|i| i.bytes_written),
        ));
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
        let node_sample = |name, help, v: u64| {
            Sample::gauge(name, help, v as f64).label("node", id.clone()).label("site", site.clone())
        };
        out.push(node_sample("coffer_node_used_bytes", "Bytes of shard files on a storage node", n.used_bytes));
        out.push(node_sample("coffer_node_free_bytes", "Free bytes of a storage node's filesystem", n.free_bytes));
        out.push(node_sample("coffer_node_capacity_bytes", "Capacity a storage node announces", n.capacity_bytes));
        for state in ["up", "suspect", "down"] {
            out.push(
                Sample::gauge(
                    "coffer_node_state",
                    "1 for the state a storage node is in",
                    f64::from(u8::from(n.state == state)),
                )
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
                Sample::gauge(
                    "coffer_scrub_last_success_timestamp_seconds",
                    "When a node's last scrub pass finished",
                    w.last_run_ms as f64 / 1000.0,
                )
                .label("node", w.node.clone()),
            );
        }
    }
    match dr_figures(node.sm.tree(), now_ms()) {
        Ok(list) => dr_samples(&mut out, &list),
        Err(e) => tracing::warn!(error = %e, "cannot compute the disaster-recovery figures for /metrics"),
    }
    out
}

/// The gauges of the disaster-recovery figures, one series per source; a
/// figure a source does not have yet (no snapshot, no drill) is left out
/// rather than given a made-up value.
fn dr_samples(out: &mut Vec<Sample>, list: &[SourceFigures]) {
    for f in list {
        let s = |name, help, v: f64| {
            Sample::gauge(name, help, v).label("repo", f.repo.clone()).label("source", f.source.clone())
        };
        if let Some(v) = f.rpo_seconds {
            out.push(s("coffer_dr_rpo_seconds", "Seconds since the end of a source's newest snapshot", v));
        }
        if let Some(v) = f.rpo_target_seconds {
            out.push(s("coffer_dr_rpo_target_seconds", "A source's RPO target", v));
        }
        if let Some(v) = f.last_drill_timestamp_seconds {
            out.push(s("coffer_dr_last_drill_timestamp_seconds", "When a source's last drill finished", v));
        }
        if let Some(v) = f.last_drill_success_timestamp_seconds {
            out.push(s(
                "coffer_drill_last_success_timestamp_seconds",
                "When a source's last passing drill finished",
                v,
            ));
        }
        if let Some(v) = f.last_drill_rto_seconds {
            out.push(s("coffer_dr_last_drill_rto_seconds", "The RTO a source's last drill measured", v));
        }
        if let Some(ok) = f.last_drill_ok {
            out.push(s("coffer_dr_last_drill_ok", "1 if a source's last drill passed", f64::from(u8::from(ok))));
        }
        if let Some(v) = f.backup_ratio {
            out.push(s("coffer_dr_backup_ratio", "Share of a source's files its newest snapshot protects", v));
        }
    }
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
    out.push(
        Sample::counter("coffer_worker_errors_total", "Failed steps of a background worker", errors as f64)
            .label("node", node)
            .label("worker", name),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandResult};
    use crate::test_util::{put, run, snapshot, tree};
    use coffer_types::{DrRecord, ErasureParams, RepoRecord, SnapshotId, SourceRecord};

    fn drill(id: u64, started_ms: u64, ok: bool) -> DrRecord {
        DrRecord {
            id,
            kind: DrKind::Drill,
            repo: RepoName::new("r").unwrap(),
            source: "db".into(),
            snapshot: None,
            started_ms,
            duration_ms: 2_000,
            bytes: 1,
            files: 1,
            ok,
            reason: String::new(),
            failed_files: vec![],
            failed_count: 0,
            reconstructed: false,
            bytes_read: 0,
            bytes_written: 0,
            bytes_cross_site: 0,
            steps: vec![],
        }
    }

    #[test]
    fn figures_per_registered_source_from_the_records() {
        let t = tree();
        let repo = RepoName::new("r").unwrap();
        let created = RepoRecord {
            name: repo.clone(),
            params: ErasureParams::new(2, 1).unwrap(),
            key_slots: vec![vec![1]],
            created_ms: 1,
        };
        assert_eq!(run(&t, Command::CreateRepo { repo: created }), CommandResult::Ok);
        let source = |name: &str, target_ms: u64, end: Option<u64>| SourceRecord {
            repo: repo.clone(),
            name: name.into(),
            host: "h".into(),
            strategy: "scheduled".into(),
            rpo_target_ms: target_ms,
            report_interval_ms: 1_000,
            reported_ms: 0,
            last_ok_end_ms: end,
            last_run: None,
            next_run_ms: None,
            runs_ok: 0,
            runs_failed: 0,
        };
        for s in [source("db", 60_000, Some(40_000)), source("idle", 0, None)] {
            assert_eq!(run(&t, Command::ReportSource { source: s, time_ms: 1 }), CommandResult::Ok);
        }
        // Two snapshots of the source: the newest one's stats make the
        // ratio. A snapshot of another source does not count.
        for (id, end, files, errors, tag) in
            [(1u8, 10_000, 10, 0, "source:db"), (2, 40_000, 9, 1, "source:db"), (3, 50_000, 1, 1, "source:other")]
        {
            let mut s = snapshot(id, repo.clone());
            s.end_ms = end;
            s.stats.files = files;
            s.stats.errors = errors;
            s.tags = vec![tag.into()];
            put(&t, kv::snapshot_key(&SnapshotId([id; 16])), &s);
        }
        for (id, started, ok) in [(1, 20_000, true), (2, 30_000, false)] {
            assert_eq!(run(&t, Command::RecordDr { record: drill(id, started, ok) }), CommandResult::Ok);
        }

        let got = dr_figures(&t, 100_000).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        let db = &got[0];
        assert_eq!((db.repo.as_str(), db.source.as_str()), ("r", "db"));
        assert_eq!(db.rpo_seconds, Some(60.0));
        assert_eq!(db.rpo_target_seconds, Some(60.0));
        assert_eq!(db.backup_ratio, Some(0.9));
        // The last drill failed; the last passing one is older.
        assert_eq!(db.last_drill_ok, Some(false));
        assert_eq!(db.last_drill_timestamp_seconds, Some(32.0));
        assert_eq!(db.last_drill_rto_seconds, Some(2.0));
        assert_eq!(db.last_drill_success_timestamp_seconds, Some(22.0));
        // The RPO grows with the clock.
        assert_eq!(dr_figures(&t, 160_000).unwrap()[0].rpo_seconds, Some(120.0));

        let idle = &got[1];
        assert_eq!(idle.source, "idle");
        assert_eq!((idle.rpo_seconds, idle.rpo_target_seconds, idle.backup_ratio), (None, None, None));
        assert_eq!((idle.last_drill_ok, idle.last_drill_success_timestamp_seconds), (None, None));

        let mut out = Vec::new();
        dr_samples(&mut out, &got);
        let names: Vec<&str> = out.iter().map(|s| s.name).collect();
        assert_eq!(names.iter().filter(|n| **n == "coffer_dr_rpo_seconds").count(), 1, "{names:?}");
        assert!(names.contains(&"coffer_drill_last_success_timestamp_seconds"), "{names:?}");
    }
}
