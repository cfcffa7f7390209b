//! The `coffer` binary: parses the command line, installs tracing, runs the
//! subcommand, and maps the outcome onto the exit-code contract
//! (0 ok, 1 failure, 2 usage: a bad flag or configuration, 3 backup finished
//! with unreadable files, 4 `check` found lost data or an inconsistent catalog).
//!
//! This is the only crate that reads the environment or installs a
//! tracing subscriber.

mod admin;
mod args;
mod commands;
mod config;
mod dev;
mod duration;
mod repair;
mod security;
mod servers;
mod shared;
mod snapcmds;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::{Cli, ClusterCommand, Command, RepoCommand};

/// Whether a command talks to the cluster with the process's own
/// certificate (the daemons and `coffer dev` choose theirs themselves).
fn is_client_command(c: &Command) -> bool {
    !matches!(c, Command::Dev(_) | Command::DevSite(_) | Command::Meta(_) | Command::Storage(_) | Command::Certs(_))
}

fn init_tracing(server: bool) {
    // Servers log at info; agent commands keep stderr quiet unless asked.
    let default = if server { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn main() {
    let cli = Cli::parse();
    let server = matches!(cli.command, Command::Dev(_) | Command::Meta(_) | Command::Storage(_));
    init_tracing(server);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coffer: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
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
                } else {
                    1
                }
            }
        }
    });
    // Do not wait for lingering background tasks (retrying connections).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
