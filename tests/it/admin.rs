//! The admin HTTP port of `coffer meta` and `coffer storage`: liveness,
//! readiness that follows Raft (it flips to 503 on the last voter standing
//! when the leader and another voter are lost), `/health/cluster`, and a
//! `/metrics` exposition that a Prometheus text parser reads and that
//! holds the names the dashboards need; and the disaster-recovery gauges
//! per registered source, computed on the metadata node from the catalog's
//! records, with the status page showing the same figures.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_testkit::{http_get, wait_until, write_sample_tree, AgentProc, Cluster, ClusterSpec};

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

        let admins: Vec<String> = c
            .meta
            .iter()
            .map(|m| m.admin_addr().context("a metadata node reported no admin port"))
            .collect::<Result<_>>()?;
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

/// The value of the gauge `name` with `labels`, if the exposition has it.
fn gauge(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[test]
fn dr_gauges_follow_a_registered_source_and_its_drill() -> Result<()> {
    let admin = vec!["--admin-listen".to_string(), "127.0.0.1:0".to_string()];
    let spec = ClusterSpec { meta_flags: admin, ..ClusterSpec::default() };
    Cluster::run(spec, |c| {
        let a = c.meta[0].admin_addr().context("the metadata node reported no admin port")?;
        wait_until("/readyz to answer 200", Duration::from_secs(30), || {
            http_get(&a, "/readyz").ok().filter(|(code, _)| *code == 200)
        })?;
        let scrape = |what: &str| -> Result<(String, prometheus_parse::Scrape)> {
            let (code, text) = http_get(&a, "/metrics").with_context(|| format!("scrape /metrics ({what})"))?;
            ensure!(code == 200, "/metrics: {code}");
            let (_, scrape) = metric_names(&text)?;
            Ok((text, scrape))
        };
        // Nothing registered yet: no series, and the page says so.
        let (text, _) = scrape("before")?;
        ensure!(!text.contains("coffer_dr_"), "DR series without any source:\n{text}");
        let (_, page) = http_get(&a, "/")?;
        ensure!(page.contains("id=\"sources-none\""), "the page does not say no source is registered:\n{page}");

        // An agent registers the source (RPO target 1 h); it is stopped once
        // it has, so that nothing but the test changes the figures.
        let src = c.dir().join("dr-src");
        write_sample_tree(&src, 11, 0)?;
        let config = c.dir().join("agent-dr.toml");
        std::fs::write(
            &config,
            format!(
                "endpoint = [{endpoint}]\nstate_dir = \"{state}\"\njitter = \"0s\"\nreport_interval = \"1s\"\n\n\
                 [[source]]\nname = \"files\"\nrepo = \"test\"\npaths = [\"{src}\"]\n\
                 schedule = {{ incremental = \"every 1h\" }}\nrpo = \"1h\"\n",
                endpoint = c.endpoint().split(',').map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "),
                state = c.dir().join("agent-dr-state").display(),
                src = src.display(),
            ),
        )?;
        let mut agent = AgentProc::start(c, &config, "dr")?;
        agent.wait_ready(c, Duration::from_secs(30))?;
        let labels = [("repo", "test"), ("source", "files")];
        wait_until("the agent to register the source", Duration::from_secs(60), || {
            let (_, s) = scrape("registered").ok()?;
            gauge(&s, "coffer_dr_rpo_target_seconds", &labels).map(|_| ())
        })?;
        agent.kill();
        // A backup tagged for the registered source moves its recovery
        // point, whoever makes it.
        backup(c, &src, &["--tag", "source:files"])?;
        let (text, s) = scrape("backed up")?;
        let rpo = gauge(&s, "coffer_dr_rpo_seconds", &labels).context("no RPO")?;
        ensure!((0.0..600.0).contains(&rpo), "RPO {rpo} s right after a backup:\n{text}");
        ensure!(gauge(&s, "coffer_dr_rpo_target_seconds", &labels) == Some(3600.0), "RPO target:\n{text}");
        ensure!(gauge(&s, "coffer_dr_backup_ratio", &labels) == Some(1.0), "backup ratio:\n{text}");
        ensure!(gauge(&s, "coffer_dr_last_drill_ok", &labels).is_none(), "a drill that never ran:\n{text}");
        ensure!(
            gauge(&s, "coffer_drill_last_success_timestamp_seconds", &labels).is_none(),
            "a drill success that never happened:\n{text}"
        );

        let before_drill = unix_now();
        let d = c.cli(&["drill", "files", "--json"])?.ok()?.json()?;
        ensure!(d["verified"] == true, "drill: {d}");
        let rto = d["rto_s"].as_f64().context("drill without rto_s")?;
        let after_drill = unix_now();
        let (text, s) = scrape("drilled")?;
        ensure!(gauge(&s, "coffer_dr_last_drill_ok", &labels) == Some(1.0), "last drill:\n{text}");
        let measured = gauge(&s, "coffer_dr_last_drill_rto_seconds", &labels).context("no drill RTO")?;
        ensure!((measured - rto).abs() < 0.01, "the gauge's RTO {measured} is not the drill's {rto}:\n{text}");
        let when = gauge(&s, "coffer_drill_last_success_timestamp_seconds", &labels).context("no drill success")?;
        // Whole seconds of slack: the record's times are the client's
        // milliseconds, ours are read around the command.
        ensure!(
            when >= before_drill - 1.0 && when <= after_drill + 1.0,
            "drill success at {when}, the drill ran in [{before_drill}, {after_drill}]:\n{text}"
        );
        // The RPO grows with the clock, not with scrapes.
        let later = wait_until("the RPO to grow", Duration::from_secs(30), || {
            let (_, s) = scrape("later").ok()?;
            gauge(&s, "coffer_dr_rpo_seconds", &labels).filter(|v| *v >= rpo + 1.0)
        })?;
        ensure!(later < 3600.0, "RPO {later}");

        // The status page shows the same source within its target and its
        // passing drill.
        let (code, page) = http_get(&a, "/")?;
        ensure!(code == 200, "/: {code}");
        ensure!(
            page.contains("data-source=\"files\" data-rpo=\"ok\" data-drill=\"passed\""),
            "the page does not show the source within target with a passing drill:\n{page}"
        );
        Ok(())
    })
}
