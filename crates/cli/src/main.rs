//! The `coffer` binary: parses the command line, installs tracing, runs the
//! subcommand, and maps the outcome onto the exit-code contract
//! (0 ok, 1 failure, 2 usage: a bad flag or configuration, 3 backup finished
//! with unreadable files, 4 `check` found lost data or an inconsistent catalog,
//! 12 refused: no valid token, or a token whose role does not allow it).
//!
//! This is the only crate that reads the environment or installs a
//! tracing subscriber.

mod admin;
mod agent;
mod alloc_tuning;
mod args;
mod commands;
mod config;
mod dev;
mod dr;
mod duration;
mod keys;
mod otel;
mod probe;
mod progress;
mod repair;
mod security;
mod servers;
mod shared;
mod snapcmds;
mod sources;
mod tokens;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::{Cli, ClusterCommand, Command, KeyCommand, RepoCommand, TokenCommand};

/// Whether a command talks to the cluster with the process's own
/// certificate (the daemons and `coffer dev` choose theirs themselves).
fn is_client_command(c: &Command) -> bool {
    // `probe` speaks plain HTTP to an admin port and needs no certificate.
    let plain_http = matches!(c, Command::Probe { .. });
    !plain_http
        && !matches!(
            c,
            Command::Dev(_)
                | Command::DevSite(_)
                | Command::Meta(_)
                | Command::Storage(_)
                | Command::Certs(_)
                | Command::Agent(_)
        )
}

/// Installs the one tracing subscriber: `COFFER_LOG` filters (`RUST_LOG`
/// syntax), `--log-format` chooses the shape. Every command writes its log
/// to stderr, as JSON (one event per line, with its target, level and span
/// fields) when stdout is not a terminal (under a supervisor, in a
/// container, in cron or a pipeline, where a program reads it) and as text
/// on a terminal, where a person does: the contract, for daemons
/// and one-shot commands alike. A command's own output (results, `--json`
/// documents, errors it prints) is not log and keeps its shape.
///
/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans also go to that OTLP
/// collector (`otel`); the returned pipeline must be shut down at the end
/// to flush them. Runs inside the tokio runtime, which the exporter needs.
fn init_tracing(server: bool, format: Option<args::LogFormat>) -> Option<otel::Otel> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    // Servers log at info; other commands keep stderr quiet unless asked.
    // The metadata store's engine (fjall, lsm-tree) logs its routine work
    // (flushes, compactions) at info: only its warnings and errors by default.
    let default = if server { "info,fjall=warn,lsm_tree=warn" } else { "warn" };
    let filter = EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let json = match format {
        Some(f) => f == args::LogFormat::Json,
        None => !std::io::stdout().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> = if json {
        fmt.json().with_target(true).with_current_span(true).with_span_list(true).boxed()
    } else {
        fmt.with_target(false).boxed()
    };
    let (otel, otel_error) = if otel::wanted() {
        match otel::Otel::start() {
            Ok(o) => (Some(o), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let layer = otel.as_ref().map(|o| o.layer());
    let _ = tracing_subscriber::registry().with(fmt).with(layer).with(filter).try_init();
    if let Some(e) = otel_error {
        // Traces are an aid: a process that cannot export them still runs.
        tracing::warn!(error = %e, "OpenTelemetry traces are not exported");
    }
    otel
}

/// Whether the metadata plane refused the call for want of a valid token or
/// of the role it needs (UNAUTHENTICATED or PERMISSION_DENIED).
fn refused(e: &anyhow::Error) -> bool {
    use tonic::Code;
    let denied = |code: Option<Code>| matches!(code, Some(Code::Unauthenticated | Code::PermissionDenied));
    e.chain().any(|c| {
        denied(c.downcast_ref::<coffer_rpc::RpcError>().and_then(|r| r.code()))
            || denied(c.downcast_ref::<tonic::Status>().map(|s| s.code()))
            || matches!(c.downcast_ref::<coffer_client::ClientError>(), Some(coffer_client::ClientError::Conn(r)) if denied(r.code()))
    })
}

fn main() {
    alloc_tuning::tune();
    let cli = Cli::parse();
    let server = matches!(cli.command, Command::Dev(_) | Command::Meta(_) | Command::Storage(_))
        || matches!(&cli.command, Command::Agent(a) if a.command.is_none());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coffer: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // The trace exporter's channel and batch worker live on the runtime.
    let otel = {
        let _in_runtime = runtime.enter();
        init_tracing(server, cli.global.log_format)
    };
    let code = runtime.block_on(async move {
        let g = cli.global;
        // Client commands talk with the certificates of the global flags.
        let init = if is_client_command(&cli.command) { security::init_client(&g) } else { Ok(()) };
        let result = match cli.command {
            _ if init.is_err() => init.map(|()| 0),
            Command::Dev(a) => dev::run(a, &g).await.map(|_| 0),
            Command::DevSite(a) => dev::site_control(a).await.map(|_| 0),
            Command::Meta(a) => servers::run_meta(a, &g).await.map(|_| 0),
            Command::Storage(a) => servers::run_storage(a, &g).await.map(|_| 0),
            Command::Certs(c) => security::certs(c, &g).await.map(|_| 0),
            Command::Repo(RepoCommand::Create { name, k, m, min_shards }) => {
                commands::repo_create(&g, name, k, m, min_shards).await.map(|_| 0)
            }
            Command::Backup(a) => commands::backup(&g, a).await,
            Command::Snapshots => commands::snapshots(&g).await.map(|_| 0),
            Command::Restore(a) => commands::restore(&g, a).await.map(|_| 0),
            Command::Status => commands::status(&g).await.map(|_| 0),
            Command::Forget(a) => snapcmds::forget(&g, a).await.map(|_| 0),
            Command::Hold { snapshot, until } => snapcmds::hold(&g, snapshot, until).await.map(|_| 0),
            Command::Ls { snapshot, path } => snapcmds::ls(&g, snapshot, path).await.map(|_| 0),
            Command::Diff { older, newer } => snapcmds::diff(&g, older, newer).await.map(|_| 0),
            Command::Gc { wait } => snapcmds::gc(&g, wait).await.map(|_| 0),
            Command::Check { read_data, subset } => snapcmds::check(&g, read_data, subset).await,
            Command::Incidents => repair::incidents(&g).await.map(|_| 0),
            Command::Sources { remove: Some(name) } => sources::remove(&g, &name).await.map(|_| 0),
            Command::Sources { remove: None } => sources::list(&g).await.map(|_| 0),
            Command::Drain { node, undo } => repair::drain(&g, &node, !undo, false).await.map(|_| 0),
            Command::Decommission { node } => repair::drain(&g, &node, true, true).await.map(|_| 0),
            Command::Scrub => repair::scrub(&g).await.map(|_| 0),
            Command::Nodes => repair::nodes(&g).await.map(|_| 0),
            Command::Cluster(ClusterCommand::Members) => admin::members(&g).await.map(|_| 0),
            Command::Cluster(ClusterCommand::AddVoter { id, addr, site }) => {
                admin::add_voter(&g, id, addr, site).await.map(|_| 0)
            }
            Command::Cluster(ClusterCommand::Remove { id }) => admin::remove(&g, id).await.map(|_| 0),
            Command::Cluster(ClusterCommand::Digest) => admin::digest(&g).await.map(|_| 0),
            Command::Key(KeyCommand::List) => keys::list(&g).await.map(|_| 0),
            Command::Key(KeyCommand::Add { new_password_file }) => {
                keys::add(&g, new_password_file.as_deref()).await.map(|_| 0)
            }
            Command::Key(KeyCommand::Remove { id }) => keys::remove(&g, &id).await.map(|_| 0),
            Command::Key(KeyCommand::Rotate) => keys::rotate(&g).await.map(|_| 0),
            Command::Token(TokenCommand::Create { role, expires, name }) => {
                tokens::create(&g, &role, &expires, &name).await.map(|_| 0)
            }
            Command::Token(TokenCommand::List { all }) => tokens::list(&g, all).await.map(|_| 0),
            Command::Token(TokenCommand::Revoke { id }) => tokens::revoke(&g, &id).await.map(|_| 0),
            Command::Drill(a) => dr::drill(&g, a).await,
            Command::Recover(a) => dr::recover(&g, a).await,
            Command::Report(a) => dr::report(&g, a).await.map(|_| 0),
            Command::Probe { url, timeout } => probe::run(&url, timeout).await,
            Command::Agent(a) => agent::run(&g, a).await,
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                if g.json {
                    println!("{}", serde_json::json!({"type": "error", "error": format!("{e:#}")}));
                }
                eprintln!("coffer: error: {e:#}");
                // A bad configuration is a usage error, like a bad flag.
                if e.chain().any(|c| c.is::<config::UsageError>()) {
                    2
                } else if refused(&e) {
                    12
                } else {
                    1
                }
            }
        }
    });
    // Spans still batched are flushed while the runtime still runs.
    if let Some(o) = otel {
        o.shutdown();
    }
    // Do not wait for lingering background tasks (retrying connections).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
