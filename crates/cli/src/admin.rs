//! `coffer cluster ...`: membership of the metadata plane.
//!
//! `members` asks every member for its own view (role, term, leader,
//! indexes), so a lagging or partitioned member shows as such; membership
//! changes go to the leader, found by following `coffer-leader` hints.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use coffer_proto::pb::admin_client::AdminClient;
use coffer_proto::pb::{self};
use coffer_rpc::identity::Bearer;
use coffer_rpc::{admin_client, channel, timeouts, MetaChannel};
use serde_json::json;

use crate::args::Global;
use crate::shared::{bearer, meta_client_with};

fn admin(addr: &str) -> Result<AdminClient<tonic::transport::Channel>> {
    Ok(admin_client(channel(addr)?))
}

async fn metrics(addr: &str, bearer: &Bearer) -> Result<pb::NodeMetricsResponse> {
    let mut c = admin(addr)?;
    let mut req = tonic::Request::new(pb::NodeMetricsRequest {});
    req.set_timeout(timeouts::ADMIN_CALL);
    bearer.attach(&mut req);
    Ok(c.node_metrics(req).await.with_context(|| format!("ask {addr}"))?.into_inner())
}

/// The membership as the first endpoint that answers sees it.
async fn view(g: &Global) -> Result<pb::NodeMetricsResponse> {
    if g.endpoint.is_empty() {
        bail!("no metadata endpoint: pass --endpoint or set COFFER_ENDPOINT");
    }
    let bearer = bearer(g)?;
    let mut view = None;
    let mut last_err = None;
    for e in &g.endpoint {
        match metrics(e, &bearer).await {
            Ok(m) => {
                view = Some(m);
                break;
            }
            Err(err) => last_err = Some(err),
        }
    }
    view.ok_or_else(|| {
        anyhow!("no metadata endpoint answered: {:#}", last_err.unwrap_or_else(|| anyhow!("none given")))
    })
}

pub async fn digest(g: &Global) -> Result<()> {
    let view = view(g).await?;
    let bearer = bearer(g)?;
    let mut rows = Vec::new();
    for m in &view.members {
        let mut c = admin(&m.addr)?;
        let mut req = tonic::Request::new(pb::CatalogDigestRequest {});
        req.set_timeout(Duration::from_secs(30));
        bearer.attach(&mut req);
        let d = c.catalog_digest(req).await.map(|r| r.into_inner());
        rows.push((m.clone(), d));
    }
    if g.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(m, d)| match d {
                Ok(d) => json!({"id": m.id, "applied_index": d.applied_index, "keys": d.keys, "digest": hex::encode(&d.digest)}),
                Err(e) => json!({"id": m.id, "error": e.message()}),
            })
            .collect();
        println!("{}", json!({"members": v}));
    } else {
        for (m, d) in rows {
            match d {
                Ok(d) => println!(
                    "{:>4} applied {:>8} records {:>9} digest {}",
                    m.id,
                    d.applied_index,
                    d.keys,
                    hex::encode(&d.digest)
                ),
                Err(e) => println!("{:>4} unreachable: {}", m.id, e.message()),
            }
        }
    }
    Ok(())
}

pub async fn members(g: &Global) -> Result<()> {
    let view = view(g).await?;
    let bearer = bearer(g)?;
    let mut rows = Vec::new();
    for m in &view.members {
        let own = metrics(&m.addr, &bearer).await;
        rows.push((m.clone(), own));
    }
    if g.json {
        let members: Vec<_> = rows
            .iter()
            .map(|(m, own)| match own {
                Ok(o) => json!({
                    "id": m.id, "addr": m.addr, "role": m.role, "site": m.site, "reachable": true,
                    "state": o.state, "term": o.term, "leader": o.leader,
                    "last_log_index": o.last_log_index, "applied_index": o.applied_index,
                    "snapshot_index": o.snapshot_index, "purged_index": o.purged_index,
                }),
                Err(e) => json!({
                    "id": m.id, "addr": m.addr, "role": m.role, "site": m.site, "reachable": false,
                    "error": format!("{e:#}"),
                }),
            })
            .collect();
        println!("{}", json!({"leader": view.leader, "term": view.term, "members": members}));
        return Ok(());
    }
    println!("leader {} term {}", view.leader, view.term);
    println!(
        "{:>4} {:<8} {:<10} {:<22} {:<10} {:>6} {:>10} {:>10}",
        "id", "role", "site", "addr", "state", "term", "last log", "applied"
    );
    for (m, own) in rows {
        match own {
            Ok(o) => println!(
                "{:>4} {:<8} {:<10} {:<22} {:<10} {:>6} {:>10} {:>10}",
                m.id, m.role, m.site, m.addr, o.state, o.term, o.last_log_index, o.applied_index
            ),
            Err(_) => println!("{:>4} {:<8} {:<10} {:<22} unreachable", m.id, m.role, m.site, m.addr),
        }
    }
    Ok(())
}

/// Runs an admin write on the leader, following hints, for at most `retry_for`.
async fn on_leader<T, F, Fut>(g: &Global, what: &str, f: F) -> Result<T>
where
    F: FnMut(AdminClient<MetaChannel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    // A membership change answers once the new member has caught up.
    let meta = meta_client_with(g, g.retry_for)?.with_call_timeout(timeouts::JOIN_CALL);
    Ok(meta.call_admin(what, f).await?)
}

pub async fn add_voter(g: &Global, id: u64, addr: String, site: String) -> Result<()> {
    let req = pb::JoinRequest { id, addr, site, voter: true };
    let r = on_leader(g, "add voter", |mut c| {
        let req = req.clone();
        async move { c.join(req).await }
    })
    .await?;
    print_members(g, &r.members);
    Ok(())
}

pub async fn remove(g: &Global, id: u64) -> Result<()> {
    let r = on_leader(g, "remove member", |mut c| async move { c.remove_member(pb::RemoveMemberRequest { id }).await })
        .await?;
    print_members(g, &r.members);
    Ok(())
}

fn print_members(g: &Global, members: &[pb::MetaMember]) {
    if g.json {
        let v: Vec<_> =
            members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role, "site": m.site})).collect();
        println!("{}", json!({"members": v}));
    } else {
        for m in members {
            println!("{:>4} {:<8} {:<10} {}", m.id, m.role, m.site, m.addr);
        }
    }
}
