//! The status page a metadata node serves at `/` of its admin port: one
//! server-rendered HTML document with its style inline (no script, no
//! font, nothing fetched from anywhere), reloading itself every few
//! seconds, laid out in one column so that it reads on a phone.
//!
//! It shows the cluster by site (nodes with state and used/capacity), pack
//! health and site redundancy, the rebuild queue with its ETA, open
//! incidents, the Raft members, and per registered source the RPO against
//! target and the last drill. Every value comes from the same views as
//! `coffer status` and `coffer incidents`, and the source figures from
//! `observe::dr_figures`, as the `coffer_dr_*` gauges. Only the leader knows which storage nodes are up; a
//! follower says so and shows node states as unknown.
//!
//! Elements carry `data-*` attributes (`data-site`, `data-state`,
//! `data-health`) so that a test reading the DOM does not depend on
//! wording.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use coffer_proto::pb;
use tonic::Status;

use crate::catalog::CatalogService;
use crate::node::{now_ms, MetaNode};

const STYLE: &str = "\
:root{color-scheme:light dark;--ok:#2e7d32;--warn:#ef6c00;--bad:#c62828;--mute:#777}\
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:60rem;padding:.8rem}\
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem;border-bottom:1px solid #8884}\
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
td,th{text-align:left;padding:.25rem .4rem;border-bottom:1px solid #8882;vertical-align:top}\
.wrap{overflow-x:auto}.mute{color:var(--mute)}.banner{padding:.5rem .7rem;border-radius:.3rem;margin:.5rem 0}\
.s-up,.s-healthy,.s-ok{color:var(--ok)}.s-suspect,.s-degraded,.s-at_risk{color:var(--warn)}\
.s-down,.s-lost,.s-unknown{color:var(--bad)}\
.b-ok{background:#2e7d3222}.b-warn{background:#ef6c0022}.b-bad{background:#c6282822}\
.bar{display:inline-block;width:6rem;height:.6rem;background:#8883;border-radius:.3rem;vertical-align:middle}\
.bar>i{display:block;height:100%;background:#1976d2;border-radius:.3rem}\
.site{margin:.6rem 0;padding:.3rem .5rem;border:1px solid #8884;border-radius:.3rem}";

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    format!("{} ago", duration(now_ms().saturating_sub(ms) as f64 / 1000.0))
}

/// The page, from this node's view of the catalog.
pub fn render(node: &Arc<MetaNode>) -> Result<String, Status> {
    let svc = CatalogService::new(node.clone());
    let status = svc.status_view()?;
    let incidents = svc.incidents_view()?;
    let me = node.config.id.0;
    let leader = status.leader;
    let is_leader = leader == me;
    let state_of = |n: &pb::Node| if is_leader { n.state.clone() } else { "unknown".to_string() };

    let mut sites: BTreeMap<String, Vec<&pb::Node>> = BTreeMap::new();
    for n in &status.nodes {
        sites.entry(n.site.clone()).or_default().push(n);
    }
    let site_state = |nodes: &[&pb::Node]| -> &'static str {
        if !is_leader {
            return "unknown";
        }
        let up = nodes.iter().filter(|n| n.state == "up").count();
        match up {
            0 => "down",
            u if u == nodes.len() => "up",
            _ => "degraded",
        }
    };
    let packs = status.packs.unwrap_or_default();
    let sites_down = sites.values().filter(|n| site_state(n) == "down").count();
    let (verdict, class) = if !is_leader {
        ("this node is a follower: node states are known only to the leader".to_string(), "b-warn")
    } else if packs.lost > 0 {
        (format!("{} packs lost: data is unreadable until nodes return", packs.lost), "b-bad")
    } else if packs.at_risk > 0 || packs.degraded > 0 || sites_down > 0 || status.site_degraded > 0 {
        let mut why = Vec::new();
        if sites_down > 0 {
            why.push(format!("{sites_down} site(s) down"));
        }
        if packs.degraded + packs.at_risk > 0 {
            why.push(format!("{} packs degraded, {} at risk", packs.degraded, packs.at_risk));
        }
        if status.site_degraded > 0 {
            why.push(format!("{} packs break the site rule", status.site_degraded));
        }
        (format!("degraded: {}", why.join("; ")), "b-warn")
    } else {
        ("healthy: every pack has all its shards, every site is up".to_string(), "b-ok")
    };

    let mut h = String::with_capacity(16 << 10);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{refresh}\"><title>coffer: cluster status</title>\
         <style>{STYLE}</style></head><body>\
         <h1>coffer cluster</h1><div class=\"mute\">served by meta-{me} ({role}), term {term}, applied {applied}; reloads every {refresh} s</div>\
         <div id=\"verdict\" class=\"banner {class}\">{verdict}</div>",
        refresh = crate::observe::PAGE_REFRESH_S,
        role = if is_leader { "leader" } else { "follower" },
        term = status.term,
        applied = status.applied_index,
        verdict = esc(&verdict),
    );

    // Sites and their nodes.
    let _ = write!(h, "<h2>Sites</h2>");
    if sites.is_empty() {
        let _ = write!(h, "<p class=\"mute\">No storage node has registered.</p>");
    }
    for (site, nodes) in &sites {
        let st = site_state(nodes);
        let up = nodes.iter().filter(|n| n.state == "up").count();
        let _ = write!(
            h,
            "<div class=\"site\" data-site=\"{s}\" data-state=\"{st}\"><b>{s}</b> <span class=\"s-{st}\">{st}</span> \
             <span class=\"mute\">{up}/{total} nodes up</span><div class=\"wrap\"><table>\
             <tr><th>node</th><th>state</th><th>used / capacity</th><th>free</th><th>last heartbeat</th></tr>",
            s = esc(site),
            total = nodes.len(),
        );
        for n in nodes {
            let state = state_of(n);
            let pct = if n.capacity_bytes > 0 {
                (n.used_bytes as f64 / n.capacity_bytes as f64 * 100.0).min(100.0)
            } else {
                0.0
            };
            let _ = write!(
                h,
                "<tr data-node=\"{id}\" data-state=\"{state}\"><td>{id}<br><span class=\"mute\">{addr}</span>{drain}</td>\
                 <td class=\"s-{state}\">{state}</td><td><span class=\"bar\"><i style=\"width:{pct:.0}%\"></i></span> \
                 {used} / {cap}</td><td>{free}</td><td>{seen}</td></tr>",
                id = n.id,
                addr = esc(&n.addr),
                drain = if n.draining { " <b>draining</b>" } else { "" },
                state = esc(&state),
                used = bytes(n.used_bytes),
                cap = bytes(n.capacity_bytes),
                free = bytes(n.free_bytes),
                seen = ago(n.last_heartbeat_ms),
            );
        }
        let _ = write!(h, "</table></div></div>");
    }

    // Pack health and redundancy.
    let _ = write!(h, "<h2>Packs</h2><div class=\"wrap\"><table><tr><th>health</th><th>packs</th></tr>");
    for (name, n, what) in [
        ("healthy", packs.healthy, "every shard reachable"),
        ("degraded", packs.degraded, "some shards unreachable, more than k left"),
        ("at_risk", packs.at_risk, "exactly k shards left: one more loss and it is unreadable"),
        ("lost", packs.lost, "fewer than k shards reachable"),
    ] {
        let _ = write!(
            h,
            "<tr data-health=\"{name}\" data-count=\"{n}\"><td class=\"s-{name}\">{label} \
             <span class=\"mute\">({what})</span></td><td>{n}</td></tr>",
            label = name.replace('_', " "),
        );
    }
    let _ = write!(
        h,
        "<tr data-health=\"short\" data-count=\"{short}\"><td>short <span class=\"mute\">(committed with shards not placed yet)</span></td><td>{short}</td></tr>\
         <tr data-health=\"site_degraded\" data-count=\"{sd}\"><td>site-degraded <span class=\"mute\">(more than m shards in one site: \
         a site loss would take them below k)</span></td><td>{sd}</td></tr></table></div>",
        short = packs.short,
        sd = status.site_degraded,
    );

    // Rebuild queue.
    let r = status.rebuild.unwrap_or_default();
    let eta = if r.queued + r.in_flight == 0 {
        "nothing to do".to_string()
    } else if r.eta_s > 0.0 {
        duration(r.eta_s)
    } else {
        "not known yet".to_string()
    };
    let _ = write!(
        h,
        "<h2>Rebuild</h2><div class=\"wrap\"><table id=\"rebuild\" data-queued=\"{q}\">\
         <tr><td>queued</td><td>{q}</td></tr><tr><td>in flight</td><td>{f}</td></tr>\
         <tr><td>ETA</td><td>{eta}</td></tr><tr><td>done / failed (this term)</td><td>{d} / {x}</td></tr>\
         <tr><td>written</td><td>{w}</td></tr></table></div>",
        q = r.queued,
        f = r.in_flight,
        d = r.done,
        x = r.failed,
        w = bytes(r.bytes_written),
    );

    // Open incidents.
    let open: Vec<&pb::Incident> = incidents.incidents.iter().filter(|i| i.state == "open").collect();
    let _ = write!(h, "<h2>Open incidents</h2>");
    if open.is_empty() {
        let _ = write!(h, "<p class=\"mute\">None.</p>");
    } else {
        let _ = write!(
            h,
            "<div class=\"wrap\"><table><tr><th>#</th><th>node</th><th>site</th><th>detected</th><th>shards lost / rebuilt</th></tr>"
        );
        for i in open {
            let _ = write!(
                h,
                "<tr data-incident=\"{id}\"><td>{id}</td><td>{node}</td><td>{site}</td><td>{det}</td><td>{lost} / {reb}</td></tr>",
                id = i.id,
                node = i.node,
                site = esc(&i.site),
                det = ago(i.detected_ms),
                lost = i.shards_lost,
                reb = i.shards_rebuilt,
            );
        }
        let _ = write!(h, "</table></div>");
    }

    // Raft members.
    let _ = write!(
        h,
        "<h2>Metadata members</h2><div class=\"wrap\"><table><tr><th>id</th><th>address</th><th>site</th><th>role</th></tr>"
    );
    for m in &status.members {
        let _ = write!(
            h,
            "<tr data-member=\"{id}\"><td>meta-{id}{lead}</td><td>{addr}</td><td>{site}</td><td>{role}</td></tr>",
            id = m.id,
            lead = if m.id == leader { " <b>leader</b>" } else { "" },
            addr = esc(&m.addr),
            site = esc(&m.site),
            role = esc(&m.role),
        );
    }
    let _ = write!(h, "</table></div>");

    // Workers in trouble.
    let troubled: Vec<&pb::WorkerStatus> = status.workers.iter().filter(|w| w.consecutive_errors > 0).collect();
    if !troubled.is_empty() {
        let _ = write!(h, "<h2>Workers failing</h2><div class=\"wrap\"><table><tr><th>node</th><th>worker</th><th>last error</th></tr>");
        for w in troubled {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{} ({}x)</td></tr>",
                esc(&w.node),
                esc(&w.name),
                esc(&w.last_error),
                w.consecutive_errors
            );
        }
        let _ = write!(h, "</table></div>");
    }

    // Sources: RPO and drills.
    let _ = write!(h, "<h2>Sources</h2>");
    let figures = crate::observe::dr_figures(node.sm.tree(), now_ms()).map_err(Status::from)?;
    if figures.is_empty() {
        let _ = write!(h, "<p class=\"mute\" id=\"sources-none\">No agent has registered a source yet.</p>");
    } else {
        let _ = write!(
            h,
            "<div class=\"wrap\"><table><tr><th>source</th><th>RPO / target</th><th>last drill</th><th>backup ratio</th></tr>"
        );
        for f in figures {
            // A source without a snapshot has no recovery point at all,
            // which is as late as it gets.
            let late = match (f.rpo_seconds, f.rpo_target_seconds) {
                (None, _) => true,
                (Some(r), Some(t)) => r > t,
                (Some(_), None) => false,
            };
            let drill = match (f.last_drill_timestamp_seconds, f.last_drill_ok) {
                (Some(t), ok) => format!(
                    "{} {}{}",
                    ago((t * 1000.0) as u64),
                    match ok {
                        Some(true) => "<span class=\"s-ok\">passed</span>",
                        Some(false) => "<span class=\"s-lost\">failed</span>",
                        None => "",
                    },
                    f.last_drill_rto_seconds.map(|r| format!(", RTO {}", duration(r))).unwrap_or_default()
                ),
                (None, _) => "never".into(),
            };
            let _ = write!(
                h,
                "<tr data-source=\"{src}\" data-rpo=\"{state}\" data-drill=\"{drill_state}\"><td>{repo}: {src}</td>\
                 <td class=\"{cls}\">{rpo} / {target}</td><td>{drill}</td><td>{ratio}</td></tr>",
                src = esc(&f.source),
                repo = esc(&f.repo),
                state = if late { "late" } else { "ok" },
                drill_state = match f.last_drill_ok {
                    Some(true) => "passed",
                    Some(false) => "failed",
                    None => "never",
                },
                cls = if late { "s-lost" } else { "s-ok" },
                rpo = f.rpo_seconds.map(duration).unwrap_or_else(|| "no snapshot".into()),
                target = f.rpo_target_seconds.map(duration).unwrap_or_else(|| "none".into()),
                ratio = f.backup_ratio.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "-".into()),
            );
        }
        let _ = write!(h, "</table></div>");
    }
    let _ = write!(
        h,
        "<p class=\"mute\">{} repositories, {} snapshots, {} chunks. <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/health/cluster\">/health/cluster</a></p></body></html>",
        status.repos, status.snapshots, status.chunks
    );
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_sizes_read_well() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(90.0), "90 s");
        assert_eq!(duration(600.0), "10 min");
    }
}
