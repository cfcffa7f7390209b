//! `coffer token create|list|revoke`: the access tokens of a repository.
//!
//! A token is printed once, by `create`; the catalog keeps only a hash of
//! its secret, so a lost token is revoked and replaced, never shown again.

use anyhow::{Context, Result};
use coffer_proto::pb::{self};
use coffer_types::time::rfc3339;
use serde_json::json;

use crate::args::Global;
use crate::shared::{meta_client, parse_time, repo_name};

fn time_or_null(ms: u64) -> serde_json::Value {
    if ms == 0 {
        serde_json::Value::Null
    } else {
        json!(rfc3339(ms))
    }
}

fn info_json(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "repo": t.repo, "role": t.role,
        "created": rfc3339(t.created_ms), "created_ms": t.created_ms,
        "expires": time_or_null(t.expires_ms), "expires_ms": t.expires_ms,
        "revoked": time_or_null(t.revoked_ms), "revoked_ms": t.revoked_ms,
    })
}

pub async fn create(g: &Global, role: &str, expires: &str, name: &str) -> Result<()> {
    let repo = repo_name(g)?;
    let expires_ms = parse_time(expires).context("parse --expires")?;
    let meta = meta_client(g)?;
    let req =
        pb::CreateTokenRequest { repo: repo.to_string(), role: role.to_string(), name: name.to_string(), expires_ms };
    let resp = meta
        .call_access("create token", |mut c| {
            let req = req.clone();
            async move { c.create_token(req).await }
        })
        .await
        .with_context(|| format!("create a {role} token for repository {repo}"))?;
    let info = resp.info.unwrap_or_default();
    if g.json {
        let mut v = info_json(&info);
        v["token"] = json!(resp.token);
        println!("{v}");
    } else {
        let until = if info.expires_ms == 0 {
            "never expires".to_string()
        } else {
            format!("expires {}", rfc3339(info.expires_ms))
        };
        eprintln!("token {} ({} of {}, {until}); it is shown only this once:", info.id, info.role, info.repo);
        println!("{}", resp.token);
    }
    Ok(())
}

pub async fn list(g: &Global, all: bool) -> Result<()> {
    let repo = if all { String::new() } else { repo_name(g)?.to_string() };
    let meta = meta_client(g)?;
    let req = pb::ListTokensRequest { repo };
    let resp = meta
        .call_access("list tokens", |mut c| {
            let req = req.clone();
            async move { c.list_tokens(req).await }
        })
        .await
        .context("list tokens")?;
    if g.json {
        let v: Vec<_> = resp.tokens.iter().map(info_json).collect();
        println!("{}", json!({ "tokens": v }));
        return Ok(());
    }
    println!("{:<16} {:<8} {:<16} {:<20} {:<20} {:<20} name", "id", "role", "repo", "created", "expires", "revoked");
    for t in &resp.tokens {
        let or_dash = |ms: u64| if ms == 0 { "-".to_string() } else { rfc3339(ms) };
        println!(
            "{:<16} {:<8} {:<16} {:<20} {:<20} {:<20} {}",
            t.id,
            t.role,
            t.repo,
            rfc3339(t.created_ms),
            or_dash(t.expires_ms),
            or_dash(t.revoked_ms),
            t.name
        );
    }
    Ok(())
}

pub async fn revoke(g: &Global, id: &str) -> Result<()> {
    let meta = meta_client(g)?;
    let req = pb::RevokeTokenRequest { id: id.to_string() };
    let resp = meta
        .call_access("revoke token", |mut c| {
            let req = req.clone();
            async move { c.revoke_token(req).await }
        })
        .await
        .with_context(|| format!("revoke token {id}"))?;
    let info = resp.info.unwrap_or_default();
    if g.json {
        println!("{}", info_json(&info));
    } else {
        println!("token {} ({} of {}) revoked at {}", info.id, info.role, info.repo, rfc3339(info.revoked_ms));
    }
    Ok(())
}
