//! What the agent shows on its admin port (`admin_listen`, `--admin-listen`),
//! served by `coffer_admin` like the metadata and storage nodes' ports:
//!
//! - `/livez`: the process answers.
//! - `/readyz`: a configuration is loaded and the control socket accepts a
//!   connection (so `coffer agent trigger` would reach the agent).
//! - `/metrics`: `coffer_build_info{role="agent"}`, the backup and gRPC
//!   event families the client library records, and per source, read from
//!   the sources' shared state when scraped (never kept twice): runs by
//!   result, the last run's duration and bytes, the recovery point and its
//!   target, the last success, drills and their last outcome.
//!
//! The invariant: every figure is a read of the state the control socket's
//! `status` shows, so the two never disagree; counters are the persisted
//! counts of the state files, so they only grow, across restarts too.

use std::path::PathBuf;

use coffer_admin::metrics::events;
use coffer_admin::{AdminServer, Sample};

use crate::daemon::{now_ms, Sources};
use crate::report::rpo_target;

/// The admin server of an agent whose sources are `sources` and whose
/// control socket is `control`.
pub fn admin_server(sources: Sources, control: PathBuf) -> AdminServer {
    let ready_sources = sources.clone();
    AdminServer::new("agent")
        .readiness(move || {
            let (control, sources) = (control.clone(), ready_sources.clone());
            async move {
                if sources.read().map_err(|_| "the sources' lock is poisoned".to_string())?.is_empty() {
                    // A configuration without sources loads, but guards nothing.
                    return Err("the configuration names no source".into());
                }
                tokio::net::UnixStream::connect(&control)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("the control socket {} does not answer: {e}", control.display()))
            }
        })
        .scrape(move || {
            let sources = sources.clone();
            async move { samples(&sources) }
        })
}

/// The per-source samples of one scrape.
pub fn samples(sources: &Sources) -> Vec<Sample> {
    let list = sources.read().unwrap_or_else(|p| p.into_inner()).clone();
    let now = now_ms();
    let mut out = Vec::new();
    for s in list {
        let st = s.state();
        let cfg = &s.config;
        let l = |sample: Sample| sample.label("source", cfg.name.clone()).label("repo", cfg.repo.as_str());
        for (result, n) in [("ok", st.runs_ok), ("failed", st.runs_failed), ("skipped", st.runs_skipped)] {
            out.push(
                l(Sample::counter(
                    "coffer_agent_runs_total",
                    "Runs of a source, by result (skipped: a slot that fired during a run)",
                    n as f64,
                ))
                .label("result", result),
            );
        }
        out.push(l(Sample::counter(
            "coffer_agent_catch_ups_total",
            "Runs started at start-up for work missed while the agent was down",
            st.catch_ups as f64,
        )));
        if let Some(r) = &st.last_run {
            out.push(l(Sample::gauge(
                "coffer_agent_last_run_duration_seconds",
                "How long the source's last run took",
                r.duration_s,
            )));
            out.push(l(Sample::gauge(
                "coffer_agent_last_run_bytes",
                "Plaintext bytes of the last run's snapshot",
                r.bytes as f64,
            )));
            out.push(l(Sample::gauge(
                "coffer_agent_last_run_read_bytes",
                "Plaintext bytes the last run read from the source",
                r.bytes_read as f64,
            )));
            out.push(l(Sample::gauge(
                "coffer_agent_last_run_timestamp_seconds",
                "When the source's last run started",
                r.time_ms as f64 / 1000.0,
            )));
            out.push(l(Sample::gauge(
                "coffer_agent_last_run_success",
                "1 if the source's last run succeeded, else 0",
                if r.result == "ok" { 1.0 } else { 0.0 },
            )));
        }
        if let Some(end) = st.newest_ok_end_ms {
            out.push(l(Sample::gauge(
                "coffer_agent_rpo_seconds",
                "The recovery point: now minus the end of the newest snapshot the agent committed",
                now.saturating_sub(end) as f64 / 1000.0,
            )));
            // The family the client library records per repository, here
            // per source too: an alert on a source's last success needs no
            // agent-specific name.
            events()
                .backup_last_success
                .get_or_create(&vec![
                    ("repo".to_string(), cfg.repo.as_str().to_string()),
                    ("source".to_string(), cfg.name.clone()),
                ])
                .set(end as f64 / 1000.0);
        }
        if let Some(t) = rpo_target(cfg) {
            out.push(l(Sample::gauge(
                "coffer_agent_rpo_target_seconds",
                "The source's recovery-point target (rpo, else realtime.max_lag)",
                t.as_secs_f64(),
            )));
        }
        if let Some(n) = s.next_run_ms() {
            out.push(l(Sample::gauge(
                "coffer_agent_next_run_timestamp_seconds",
                "When the agent next runs the source on its own",
                n as f64 / 1000.0,
            )));
        }
        out.push(l(Sample::gauge(
            "coffer_agent_running",
            "1 while a backup or drill of the source runs",
            if s.is_running() { 1.0 } else { 0.0 },
        )));
        out.push(l(Sample::gauge(
            "coffer_agent_queued_triggers",
            "Triggers waiting for the source's next run",
            s.queued_triggers() as f64,
        )));
        if cfg.drill.is_some() || st.last_drill.is_some() {
            for (result, n) in [("verified", st.drills_ok), ("failed", st.drills_failed)] {
                out.push(
                    l(Sample::counter("coffer_agent_drills_total", "Scheduled restore drills, by result", n as f64))
                        .label("result", result),
                );
            }
        }
        if let Some(d) = &st.last_drill {
            out.push(l(Sample::gauge(
                "coffer_agent_last_drill_timestamp_seconds",
                "When the source's last drill started",
                d.time_ms as f64 / 1000.0,
            )));
            out.push(l(Sample::gauge(
                "coffer_agent_last_drill_rto_seconds",
                "The recovery time the source's last drill measured",
                d.rto_s,
            )));
            out.push(l(Sample::gauge(
                "coffer_agent_last_drill_verified",
                "1 if the source's last drill verified, else 0",
                if d.verified { 1.0 } else { 0.0 },
            )));
        }
        let events_seen = s.changes.events.load(std::sync::atomic::Ordering::Relaxed);
        let rescans = s.changes.rescans.load(std::sync::atomic::Ordering::Relaxed);
        if cfg.on_change.is_some() || cfg.realtime.is_some() {
            out.push(l(Sample::counter(
                "coffer_agent_watch_events_total",
                "File-system events the source's watch received",
                events_seen as f64,
            )));
            out.push(l(Sample::counter(
                "coffer_agent_watch_rescans_total",
                "Full rescans after the kernel dropped events",
                rescans as f64,
            )));
        }
    }
    out
}
