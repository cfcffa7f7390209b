//! `coffer incidents`, `coffer scrub`, `coffer nodes`, `coffer drain` and
//! `coffer decommission`: the repair side of the cluster as an operator
//! sees it.

use std::time::Duration;

use anyhow::{Context, Result};
use coffer_proto::pb;
use coffer_rpc::shard_client;
use serde_json::json;

use crate::args::Global;
use crate::shared::{human_bytes, meta_client};
use coffer_types::time::rfc3339;

async fn storage_nodes(g: &Global) -> Result<Vec<pb::Node>> {
    let meta = meta_client(g)?;
    let s = meta
        .call("cluster status", |mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await
        .context("query cluster status")?;
    Ok(s.nodes)
}

pub async fn incidents(g: &Global) -> Result<()> {
    let meta = meta_client(g)?;
    let r = meta
        .call("list incidents", |mut c| async move { c.list_incidents(pb::ListIncidentsRequest {}).await })
        .await
        .context("list incidents")?;
    let secs = |a: u64, b: u64| if a > 0 && b >= a { Some((b - a) as f64 / 1000.0) } else { None };
    if g.json {
        let v: Vec<_> = r
            .incidents
            .iter()
            .map(|i| {
                json!({
                    "id": i.id, "node": format!("{:016x}", i.node), "site": i.site, "state": i.state,
                    "last_seen_ms": i.last_seen_ms, "detected_ms": i.detected_ms,
                    "rebuild_started_ms": i.rebuild_started_ms, "rebuild_finished_ms": i.rebuild_finished_ms,
                    "detection_s": secs(i.last_seen_ms, i.detected_ms),
                    "rebuild_s": secs(i.rebuild_started_ms, i.rebuild_finished_ms),
                    "recovery_s": secs(i.last_seen_ms, i.rebuild_finished_ms),
                    "shards_lost": i.shards_lost, "shards_rebuilt": i.shards_rebuilt,
                    "bytes_read": i.bytes_read, "bytes_written": i.bytes_written, "bytes_cross_site": i.bytes_cross_site,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if r.incidents.is_empty() {
        println!("no incidents");
    }
    for i in &r.incidents {
        println!("incident {} ({}): node {:016x} in {}", i.id, i.state, i.node, i.site);
        println!("  last seen        {}", rfc3339(i.last_seen_ms));
        println!("  loss detected    {}", rfc3339(i.detected_ms));
        if i.rebuild_started_ms > 0 {
            println!("  rebuild started  {}", rfc3339(i.rebuild_started_ms));
        }
        if i.rebuild_finished_ms > 0 {
            println!("  rebuild finished {}", rfc3339(i.rebuild_finished_ms));
        }
        if let Some(s) = secs(i.last_seen_ms, i.rebuild_finished_ms) {
            println!("  recovery time    {s:.1}s (detection and rebuild)");
        }
        println!(
            "  shards {}/{} rebuilt; read {}, wrote {}, {} across sites",
            i.shards_rebuilt,
            i.shards_lost,
            human_bytes(i.bytes_read),
            human_bytes(i.bytes_written),
            human_bytes(i.bytes_cross_site)
        );
    }
    Ok(())
}

pub async fn scrub(g: &Global) -> Result<()> {
    let nodes = storage_nodes(g).await?;
    let mut rows = Vec::new();
    for n in nodes.iter().filter(|n| n.state == "up") {
        let mut c = shard_client(&n.addr)?;
        let mut req = tonic::Request::new(pb::ScrubRequest {});
        req.set_timeout(coffer_rpc::timeouts::SCRUB);
        let r = c.scrub(req).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string());
        rows.push((n.clone(), r));
    }
    if g.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, r)| match r {
                Ok(r) => json!({
                    "node": format!("{:016x}", n.id), "site": n.site, "verified": r.verified, "bytes": r.bytes,
                    "bad": r.bad.iter().map(|b| json!({"pack": hex::encode(&b.pack_id), "index": b.index, "reason": b.reason})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"node": format!("{:016x}", n.id), "site": n.site, "error": e}),
            })
            .collect();
        println!("{}", json!({"nodes": v}));
        return Ok(());
    }
    for (n, r) in rows {
        match r {
            Ok(r) => {
                println!(
                    "{:016x} {:<8} verified {} shards ({}), {} bad",
                    n.id,
                    n.site,
                    r.verified,
                    human_bytes(r.bytes),
                    r.bad.len()
                );
                for b in r.bad {
                    println!("  bad: pack {} shard {}: {}", hex::encode(&b.pack_id), b.index, b.reason);
                }
            }
            Err(e) => println!("{:016x} {:<8} scrub failed: {e}", n.id, n.site),
        }
    }
    Ok(())
}

pub async fn nodes(g: &Global) -> Result<()> {
    let nodes = storage_nodes(g).await?;
    let mut rows = Vec::new();
    for n in &nodes {
        let info = match shard_client(&n.addr) {
            Ok(mut c) => {
                let mut req = tonic::Request::new(pb::NodeInfoRequest {});
                req.set_timeout(Duration::from_secs(2));
                c.node_info(req).await.map(|r| r.into_inner()).ok()
            }
            Err(_) => None,
        };
        rows.push((n.clone(), info));
    }
    if g.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, i)| {
                let mut o = json!({"id": format!("{:016x}", n.id), "site": n.site, "addr": n.addr, "state": n.state, "draining": n.draining, "reachable": i.is_some()});
                if let (Some(i), Some(map)) = (i, o.as_object_mut()) {
                    for (k, v) in [
                        ("used_bytes", i.used_bytes), ("capacity_bytes", i.capacity_bytes), ("shards", i.shard_count),
                        ("rebuild_bytes_read", i.rebuild_bytes_read), ("rebuild_bytes_written", i.rebuild_bytes_written),
                        ("rebuilds", i.rebuilds), ("scrub_bytes", i.scrub_bytes), ("scrub_bad", i.scrub_bad),
                    ] {
                        map.insert(k.into(), json!(v));
                    }
                }
                o
            })
            .collect();
        println!("{}", json!({"nodes": v}));
        return Ok(());
    }
    for (n, i) in rows {
        match i {
            Some(i) => println!(
                "{:016x} {:<8} {:<8} {:<22} shards {:>6} used {:>10}  rebuilt {} ({} read)",
                n.id,
                n.site,
                n.state,
                n.addr,
                i.shard_count,
                human_bytes(i.used_bytes),
                i.rebuilds,
                human_bytes(i.rebuild_bytes_read)
            ),
            None => println!("{:016x} {:<8} {:<8} {:<22} unreachable", n.id, n.site, n.state, n.addr),
        }
    }
    Ok(())
}

pub async fn drain(g: &Global, node: &str, drain: bool, decommission: bool) -> Result<()> {
    let id: coffer_types::NodeId = node.parse().with_context(|| format!("parse node id {node:?}"))?;
    let meta = meta_client(g)?;
    let req = pb::DrainNodeRequest { node: id.0, drain, decommission };
    meta.call("drain node", |mut c| async move { c.drain_node(req).await }).await.context("drain node")?;
    let what = match (drain, decommission) {
        (_, true) => "decommissioning: its shards move away, then it leaves the cluster map",
        (true, false) => "draining: its shards move away; it keeps serving until then",
        (false, _) => "no longer draining",
    };
    if g.json {
        println!("{}", json!({"node": id.to_string(), "drain": drain, "decommission": decommission}));
    } else {
        println!("node {id} {what}");
    }
    Ok(())
}
