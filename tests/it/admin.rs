//! The admin HTTP port of `coffer meta` and `coffer storage`: liveness,
//! readiness that follows Raft (it flips to 503 on the last voter standing
//! when the leader and another voter are lost), `/health/cluster`, and a
//! `/metrics` exposition that a Prometheus text parser reads and that
//! holds the names the dashboards need.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{http_get, wait_until, write_sample_tree, Cluster, ClusterSpec};

use crate::backup;

fn admin_spec() -> ClusterSpec {
    let admin = vec!["--admin-listen".to_string(), "127.0.0.1:0".to_string()];
    ClusterSpec { meta_nodes: 3, meta_flags: admin.clone(), storage_flags: admin, ..ClusterSpec::default() }
}

/// The metric names of an exposition, parsed by `prometheus-parse`.
fn metric_names(text: &str) -> Result<(HashSet<String>, prometheus_parse::Scrape)> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).context("parse /metrics")?;
    let names = scrape.samples.iter().map(|s| s.metric.clone()).collect();
    Ok((names, scrape))
}

fn require(names: &HashSet<String>, want: &[&str], text: &str) -> Result<()> {
    let missing: Vec<&&str> = want.iter().filter(|w| !names.contains(**w)).collect();
    ensure!(missing.is_empty(), "missing metrics {missing:?} in:\n{text}");
    Ok(())
}

#[test]
fn probes_follow_raft_and_metrics_parse() -> Result<()> {
    Cluster::run(admin_spec(), |c| {
        let src = c.dir().join("src");
        write_sample_tree(&src, 7, 1)?;
        backup(c, &src, &[])?;

        let admins: Vec<String> =
            c.meta.iter().map(|m| m.admin_addr().context("a metadata node reported no admin port")).collect::<Result<_>>()?;
        for a in &admins {
            ensure!(http_get(a, "/livez")?.0 == 200, "{a}/livez");
            wait_until(&format!("{a}/readyz to answer 200"), Duration::from_secs(30), || {
                http_get(a, "/readyz").ok().filter(|(code, _)| *code == 200)
            })?;
        }
        let leader = c.leader_index().context("no leader")?;
        let (code, body) = http_get(&admins[leader], "/health/cluster")?;
        ensure!(code == 200, "/health/cluster on the leader: {code} {body}");

        // The leader's exposition: every family the issue names that a
        // metadata node owns, and per-node figures for every storage node.
        let (code, text) = http_get(&admins[leader], "/metrics")?;
        ensure!(code == 200, "/metrics: {code}");
        let (names, scrape) = metric_names(&text)?;
        require(
            &names,
            &[
                "coffer_build_info",
                "coffer_grpc_requests_total",
                "coffer_grpc_request_duration_seconds",
                "coffer_raft_term",
                "coffer_raft_leader",
                "coffer_raft_commit_index",
                "coffer_raft_applied_index",
                "coffer_raft_log_entries",
                "coffer_packs",
                "coffer_rebuild_queue_shards",
                "coffer_rebuild_in_flight_shards",
                "coffer_rebuild_read_bytes_total",
                "coffer_rebuild_written_bytes_total",
                "coffer_rebuild_cross_site_bytes_total",
                "coffer_node_used_bytes",
                "coffer_node_free_bytes",
                "coffer_node_capacity_bytes",
                "coffer_node_state",
                "coffer_worker_state",
            ],
            &text,
        )?;
        let healths: HashSet<&str> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "coffer_packs")
            .filter_map(|s| s.labels.get("health"))
            .collect();
        for h in ["healthy", "degraded", "at_risk", "lost", "site_degraded"] {
            ensure!(healths.contains(h), "no coffer_packs{{health={h:?}}}:\n{text}");
        }
        let healthy = scrape
            .samples
            .iter()
            .find(|s| s.metric == "coffer_packs" && s.labels.get("health") == Some("healthy"))
            .map(|s| matches!(s.value, prometheus_parse::Value::Gauge(v) if v >= 1.0));
        ensure!(healthy == Some(true), "the backup's packs are not counted healthy:\n{text}");
        let nodes = scrape.samples.iter().filter(|s| s.metric == "coffer_node_used_bytes").count();
        ensure!(nodes == c.storage.len(), "{nodes} nodes in coffer_node_used_bytes:\n{text}");
        let catalog_calls = scrape.samples.iter().any(|s| {
            s.metric == "coffer_grpc_requests_total"
                && s.labels.get("service") == Some("coffer.v1.Catalog")
                && s.labels.get("code") == Some("OK")
        });
        ensure!(catalog_calls, "no successful catalog call counted:\n{text}");

        // A storage node: ready once registered, with its disk figures.
        let s0 = c.storage[0].admin_addr().context("a storage node reported no admin port")?;
        wait_until("a storage node's /readyz to answer 200", Duration::from_secs(30), || {
            http_get(&s0, "/readyz").ok().filter(|(code, _)| *code == 200)
        })?;
        let (_, text) = http_get(&s0, "/metrics")?;
        let (names, _) = metric_names(&text)?;
        require(
            &names,
            &[
                "coffer_build_info",
                "coffer_storage_used_bytes",
                "coffer_storage_free_bytes",
                "coffer_storage_capacity_bytes",
                "coffer_storage_shards",
                "coffer_worker_state",
                "coffer_grpc_requests_total",
            ],
            &text,
        )?;

        // Lose the leader and one more voter: the last one has no quorum,
        // so it cannot stay (or become) ready, nor commit a catalog write.
        c.expect_lost_voter();
        let other = (0..c.meta.len()).find(|i| *i != leader).context("a second voter")?;
        let last = (0..c.meta.len()).find(|i| *i != leader && *i != other).context("a third voter")?;
        c.kill_meta(leader);
        c.kill_meta(other);
        let a = &admins[last];
        let (code, body) = wait_until("the last voter's /readyz to answer 503", Duration::from_secs(30), || {
            http_get(a, "/readyz").ok().filter(|(code, _)| *code == 503)
        })?;
        ensure!(body.contains("not ready"), "{code} {body}");
        let (code, body) = http_get(a, "/health/cluster")?;
        ensure!(code == 503, "/health/cluster without a quorum: {code} {body}");
        ensure!(http_get(a, "/livez")?.0 == 200, "/livez must not depend on peers");
        Ok(())
    })
}
