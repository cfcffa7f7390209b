//! `coffer agent`: runs the agent daemon of `--config agent.toml`, or talks
//! to a running one through its control socket (`status`, `trigger`).
//!
//! The daemon's credentials come from the usual places (`COFFER_PASSWORD`,
//! `COFFER_PASSWORD_FILE`, `COFFER_TOKEN`, `COFFER_TOKEN_FILE`, the flags),
//! overridden per source by `password_file` / `token_file`; its transport
//! security from `--cacert/--cert/--key` (or `COFFER_*`), over the file's
//! `cacert`, `cert`, `key`, `insecure` keys. A file that does not validate,
//! or a source without a password, is a usage error (exit 2) naming the key.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::args::Global;
use crate::config::UsageError;
use crate::security::{resolve, FileTls};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's configuration (agent.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Serve the admin HTTP port (/livez, /readyz, /metrics) on ADDR (host:port; overrides the file's
    /// `admin_listen`; port 0 picks one, written to STATE_DIR/admin-addr).
    #[arg(long)]
    pub admin_listen: Option<String>,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Each source of the running agent: last run, next run, RPO against its target, counters.
    Status,
    /// Ask the running agent to back up source NAME now.
    Trigger {
        name: String,
        /// full, differential or incremental (default incremental).
        #[arg(long)]
        kind: Option<String>,
        /// Wait for the run and print its snapshot id; exit 1 if it failed.
        #[arg(long)]
        wait: bool,
    },
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

pub async fn run(g: &Global, a: AgentArgs) -> Result<i32> {
    let Some(path) = a.config else { return Err(usage("coffer agent needs --config FILE (agent.toml)".into())) };
    let host = crate::commands::hostname();
    let cfg = coffer_agent::load(&path, &host).map_err(|e| usage(e.to_string()))?;
    match a.command {
        None => daemon(g, cfg, host, a.admin_listen).await.map(|()| 0),
        Some(AgentCommand::Status) => status(g, &cfg).await.map(|()| 0),
        Some(AgentCommand::Trigger { name, kind, wait }) => trigger(g, &cfg, name, kind, wait).await,
    }
}

async fn daemon(g: &Global, cfg: coffer_agent::AgentConfig, host: String, admin_listen: Option<String>) -> Result<()> {
    let file = FileTls {
        insecure: cfg.tls.insecure,
        cacert: cfg.tls.cacert.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    };
    coffer_rpc::tls::set_process_default(resolve(g, &file)?);
    let password = match (&g.password, std::env::var_os("COFFER_PASSWORD_FILE")) {
        (Some(p), _) => Some(p.as_bytes().to_vec()),
        (None, Some(f)) => {
            let p = std::fs::read(&f).with_context(|| format!("read COFFER_PASSWORD_FILE {}", f.to_string_lossy()))?;
            Some(p.strip_suffix(b"\n").unwrap_or(&p).to_vec())
        }
        (None, None) => None,
    };
    let defaults = coffer_agent::Defaults { password, token: crate::shared::token(g)?, retry_for: g.retry_for };
    // Every source's credentials must resolve before anything starts.
    for s in &cfg.sources {
        coffer_agent::daemon::credentials(&cfg, s, &defaults).map_err(|e| usage(format!("{e:#}")))?;
    }
    let admin = match admin_listen.or_else(|| cfg.admin_listen.clone()) {
        None => None,
        Some(addr) => {
            if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
                return Err(usage(format!("--admin-listen / `admin_listen`: {addr:?} is not host:port")));
            }
            Some(crate::servers::bind(&addr).await.context("bind the agent's admin port (`admin_listen`)")?)
        }
    };
    coffer_agent::run_daemon(cfg, defaults, host, admin).await
}

async fn status(g: &Global, cfg: &coffer_agent::AgentConfig) -> Result<()> {
    let v = coffer_agent::control::request(&cfg.control, &json!({"op": "status"})).await?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("the agent refused: {e}");
    }
    if g.json {
        println!("{v}");
        return Ok(());
    }
    let empty = Vec::new();
    let sources = v["sources"].as_array().unwrap_or(&empty);
    println!(
        "{:<20} {:<10} {:<8} {:<22} {:>10} {:>10} {:>6} {:>6}  next",
        "source", "mode", "result", "last run", "rpo", "target", "ok", "failed"
    );
    for s in sources {
        let secs = |x: &Value| x.as_f64().map(|f| format!("{f:.0}s")).unwrap_or_else(|| "-".into());
        let last = &s["last_run"];
        println!(
            "{:<20} {:<10} {:<8} {:<22} {:>10} {:>10} {:>6} {:>6}  {}",
            s["name"].as_str().unwrap_or("?"),
            s["mode"].as_str().unwrap_or("?"),
            last["result"].as_str().unwrap_or("-"),
            last["time"].as_str().unwrap_or("never"),
            secs(&s["rpo_s"]),
            secs(&s["rpo_target_s"]),
            s["runs_ok"],
            s["runs_failed"],
            s["next_run"].as_str().unwrap_or("-"),
        );
        if let Some(e) = last["error"].as_str() {
            println!("  last error: {e}");
        }
        if let Some(r) = s["retention"].as_str() {
            println!("  retention: {r}");
        }
        let drill = &s["last_drill"];
        if drill.is_object() {
            println!(
                "  last drill: {} {} rto {}{}",
                drill["time"].as_str().unwrap_or("?"),
                if drill["verified"] == true { "verified" } else { "FAILED" },
                drill["rto_s"].as_f64().map(|f| format!("{f:.1}s")).unwrap_or_else(|| "-".into()),
                drill["reason"].as_str().filter(|r| !r.is_empty()).map(|r| format!(" ({r})")).unwrap_or_default(),
            );
        }
        if s["drills_ok"].as_u64().unwrap_or(0) + s["drills_failed"].as_u64().unwrap_or(0) > 0 {
            println!("  drills: {} verified, {} failed", s["drills_ok"], s["drills_failed"]);
        }
    }
    Ok(())
}

async fn trigger(
    g: &Global,
    cfg: &coffer_agent::AgentConfig,
    name: String,
    kind: Option<String>,
    wait: bool,
) -> Result<i32> {
    if let Some(k) = &kind {
        k.parse::<coffer_types::BackupKind>().map_err(|e| usage(format!("--kind {k:?}: {e}")))?;
    }
    if !cfg.sources.iter().any(|s| s.name == name) {
        return Err(usage(format!("no source {name:?} in {}", cfg.path.display())));
    }
    let v = coffer_agent::control::request(
        &cfg.control,
        &json!({"op": "trigger", "source": name, "kind": kind, "wait": wait}),
    )
    .await?;
    let failed = v.get("result").and_then(Value::as_str) != Some("ok");
    if let Some(e) = v.get("error").and_then(Value::as_str).filter(|_| v.get("result").is_none()) {
        bail!("the agent refused: {e}");
    }
    if g.json {
        println!("{v}");
    } else if !wait {
        println!("queued a backup of {name}");
    } else if failed {
        println!("backup of {name} failed: {}", v["error"].as_str().unwrap_or("unknown error"));
    } else {
        println!("snapshot {} saved ({name})", v["snapshot_id"].as_str().unwrap_or("?"));
    }
    Ok(if wait && failed { 1 } else { 0 })
}
