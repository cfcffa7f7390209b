//! The command-line contract (design brief section 8), as clap types.
//!
//! Every global option has an environment twin, so that `. DIR/env` from
//! `coffer dev` is enough to point a shell at a cluster.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::duration::parse_duration;

#[derive(Parser, Debug)]
#[command(name = "coffer", version, about = "A distributed, erasure-coded, site-aware backup cluster.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Metadata endpoints, comma-separated (host:port).
    #[arg(long, env = "COFFER_ENDPOINT", global = true, value_delimiter = ',')]
    pub endpoint: Vec<String>,
    /// Repository name.
    #[arg(long, env = "COFFER_REPO", global = true)]
    pub repo: Option<String>,
    /// Repository password (or COFFER_PASSWORD_FILE).
    #[arg(long, env = "COFFER_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// Machine output: one JSON object, or JSON lines for long commands.
    #[arg(long, global = true)]
    pub json: bool,
    /// Access token: a repository token (`coffer token create`) or the cluster admin token.
    #[arg(long, env = "COFFER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the access token (instead of --token).
    #[arg(long, env = "COFFER_TOKEN_FILE", global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// How long to keep retrying an unreachable metadata plane.
    #[arg(long, global = true, default_value = "20s", value_parser = parse_duration)]
    pub retry_for: std::time::Duration,
    /// Talk plain text, without certificates (a warning is logged). Never across untrusted networks.
    #[arg(long, env = "COFFER_INSECURE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// The CA certificate (PEM) that signs every node and client of the cluster.
    #[arg(long, env = "COFFER_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// This process's certificate (PEM), with its coffer role (`coffer certs issue`).
    #[arg(long, env = "COFFER_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "COFFER_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Log lines (on stderr) as JSON or text (default: JSON when stdout is not a terminal, else text).
    #[arg(long, env = "COFFER_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The shape of log lines (`--log-format`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a local cluster in this process: a metadata node and storage nodes in several sites.
    Dev(DevArgs),
    /// Stop or start one site of a running `coffer dev` cluster.
    DevSite(DevSiteArgs),
    /// Run a metadata (Raft) node.
    Meta(MetaArgs),
    /// Run a storage node.
    Storage(StorageArgs),
    /// Manage repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Back up paths, or a stream from stdin or a command.
    Backup(BackupArgs),
    /// List the snapshots of the repository.
    Snapshots,
    /// Restore a snapshot into a directory, or a single file to stdout with TARGET "-".
    Restore(RestoreArgs),
    /// Show the cluster: nodes by site and state, pack health, metadata members.
    Status,
    /// Forget snapshots by id, or by keep rules per source (--dry-run lists what would go and why).
    Forget(crate::snapcmds::ForgetArgs),
    /// Hold a snapshot until TIME (YYYY-MM-DD[THH:MM:SSZ] or +30d) so forget refuses it; holds are write-once:
    /// they can be extended, never shortened or lifted (none) before they end.
    Hold { snapshot: String, until: String },
    /// List the entries of a snapshot, or of one path inside it.
    Ls { snapshot: String, path: Option<PathBuf> },
    /// What changed between two snapshots (+ added, - removed, M modified).
    Diff { older: String, newer: String },
    /// Ask the metadata leader to reclaim the space of chunks no snapshot references (needs no password).
    Gc {
        /// Wait (at most DUR, default 10m) for the run to finish and print what it reclaimed; with a
        /// repository, also rewrite its mostly dead packs.
        #[arg(long, num_args = 0..=1, default_missing_value = "10m", value_parser = parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Verify the catalog and shard presence; --read-data also reads, decodes and authenticates the data.
    Check {
        #[arg(long)]
        read_data: bool,
        /// With --read-data, the percentage of data packs to read.
        #[arg(long, default_value_t = 100.0)]
        subset: f64,
    },
    /// Incidents: node losses with their detection, rebuild times and cost.
    Incidents,
    /// Move every shard off a storage node (it keeps serving meanwhile).
    Drain {
        /// The node id, as `coffer status` shows it.
        node: String,
        /// Stop draining; shards already moved stay where they are.
        #[arg(long)]
        undo: bool,
    },
    /// Drain a storage node, then remove it from the cluster map once it holds nothing.
    Decommission { node: String },
    /// Re-read and verify every shard on every reachable storage node now.
    Scrub,
    /// Every storage node as it reports itself: usage, shards, repair counters.
    Nodes,
    /// Metadata-plane membership: list members, add or remove voters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Key slots (passwords) and key epochs of the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Access tokens of a repository: create (printed once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Certificates for clusters without a PKI: a CA, and certificates with a coffer role.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The agent daemon of `--config agent.toml` (scheduled, event-driven and real-time backups), or, with
    /// `status` / `trigger`, a request to the running one.
    Agent(crate::agent::AgentArgs),
    /// Every source the agents protect (with --repo: that repository's), its RPO against its target, and
    /// whether its agent still reports.
    Sources {
        /// Drop this source of --repo from the registry (an agent that still runs it reports it again).
        #[arg(long, value_name = "NAME")]
        remove: Option<String>,
    },
    /// Restore drill: restore a source's latest (or the given) snapshot into scratch, verify it, time it,
    /// record it (exit 0 verified, 1 not); --plan drills a whole recovery plan.
    Drill(crate::dr::DrillArgs),
    /// Run a recovery plan (plan.toml): restores and commands, dependencies in order, the rest in parallel.
    Recover(crate::dr::RecoverArgs),
    /// Disaster-recovery report: backup ratio, RPO, drills, restores, incidents and a verdict per source.
    Report(crate::dr::ReportArgs),
    /// GET an http:// URL (a daemon's admin port: /livez, /readyz) and exit 0 if it answers 200, else 1;
    /// the health check of the container image, which has no shell or curl.
    Probe {
        /// http://HOST:PORT/PATH
        url: String,
        /// How long the whole exchange may take.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token for --repo with a role; prints it once (the catalog keeps only its hash).
    Create {
        /// backup (append-only), restore (read) or admin (everything on the repository).
        #[arg(long)]
        role: String,
        /// When it stops working: +90d, +12h, YYYY-MM-DD[THH:MM:SSZ], or none.
        #[arg(long, default_value = "none")]
        expires: String,
        /// A name for people and audit lines.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// The tokens of --repo (with --all, of every repository); never their secrets.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by its id (as `token list` shows it); refused from then on.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key slots: id, creation time, KDF parameters, key epochs held (no secrets, no password needed).
    List,
    /// Add a password (a new key slot), after the current password has opened the repository.
    Add {
        /// Read the new password from FILE (one trailing newline is dropped); without it, it is asked
        /// twice on the terminal.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Remove key slot ID (as `coffer key list` shows it): its password no longer opens the repository.
    Remove { id: String },
    /// Start a new data-encryption key epoch for everything written from now on; nothing stored is rewritten.
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a CA (DIR/ca.crt, DIR/ca.key); refuses to replace an existing one.
    InitCa {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate signed by the CA in --ca, as OUT/NAME.crt and OUT/NAME.key (replacing older ones).
    Issue {
        /// The CA directory (from `coffer certs init-ca`).
        #[arg(long)]
        ca: PathBuf,
        /// meta, storage, client, or admin (a cluster administrator).
        #[arg(long)]
        role: String,
        /// The process or person it names.
        #[arg(long)]
        name: String,
        /// DNS names peers reach this process by (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses peers reach this process by (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Connect to ADDR with this process's certificates and print the identity its certificate carries.
    Probe {
        addr: String,
        /// The role the server must have: meta or storage.
        #[arg(long, default_value = "meta")]
        role: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every metadata member with its role, site, term and indexes, as each reports itself.
    Members,
    /// Add a running, uninitialised metadata node as a voter (what `coffer meta --join` does by itself).
    AddVoter {
        id: u64,
        addr: String,
        #[arg(long, default_value = "default")]
        site: String,
    },
    /// Remove a metadata member (voter or learner).
    Remove { id: u64 },
    /// Each member's applied index and a digest of its catalog, to check that replicas agree.
    Digest,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where all nodes keep their data.
    #[arg(long, default_value = ".coffer-dev")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub sites: u32,
    #[arg(long, default_value_t = 2)]
    pub nodes_per_site: u32,
    /// Default data shards for repositories created against this cluster.
    #[arg(long, default_value_t = 4)]
    pub k: u32,
    /// Default parity shards.
    #[arg(long, default_value_t = 2)]
    pub m: u32,
    /// Address of the metadata node.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: String,
    /// Metadata voters, one per site (the first listens on --listen).
    #[arg(long, default_value_t = 1)]
    pub meta_nodes: u32,
}

#[derive(Args, Debug)]
pub struct DevSiteArgs {
    #[arg(long, default_value = ".coffer-dev")]
    pub data: PathBuf,
    /// `stop` or `start`.
    pub action: DevSiteAction,
    pub site: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevSiteAction {
    Stop,
    Start,
}

/// `coffer meta`: settings from `--config FILE`, overridden by `COFFER_*`
/// variables, overridden by flags (see `config`).
#[derive(Args, Debug)]
pub struct MetaArgs {
    /// Read settings from this TOML file (keys are the flags' names with `_`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: crate::config::MetaSettings,
}

/// `coffer storage`: settings layered as for `coffer meta`.
#[derive(Args, Debug)]
pub struct StorageArgs {
    /// Read settings from this TOML file (keys are the flags' names with `_`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: crate::config::StorageSettings,
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository with its own key and erasure-coding policy.
    Create {
        name: String,
        #[arg(long, env = "COFFER_K", default_value_t = 4)]
        k: u32,
        #[arg(long, env = "COFFER_M", default_value_t = 2)]
        m: u32,
        /// While storage nodes are down, accept new packs with at least this
        /// many of their k+m shards placed (k..=k+m; default k). Repair
        /// writes the missing shards once nodes return; below it, backups
        /// are refused.
        #[arg(long)]
        min_shards: Option<u32>,
    },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files or directories to back up.
    #[arg(required_unless_present_any = ["stdin", "stdin_from_command"])]
    pub paths: Vec<PathBuf>,
    #[arg(long, default_value = "incremental")]
    pub kind: String,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Hold the snapshot until this time (YYYY-MM-DD[THH:MM:SSZ] or +30d): forget refuses it until then.
    #[arg(long)]
    pub hold_until: Option<String>,
    /// Host name recorded in the snapshot's source (default: this host).
    #[arg(long)]
    pub host: Option<String>,
    /// Back up standard input as one file.
    #[arg(long, requires = "stdin_name", conflicts_with_all = ["paths", "stdin_from_command"])]
    pub stdin: bool,
    /// Name of the stream's file in the snapshot.
    #[arg(long)]
    pub stdin_name: Option<String>,
    /// Run this shell command and back up its standard output; no snapshot if it fails.
    #[arg(long, conflicts_with = "paths")]
    pub stdin_from_command: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// A snapshot id (or unique prefix), or "latest".
    pub snapshot: String,
    /// Target directory, or "-" for standard output.
    pub target: String,
    /// Restore only this path inside the snapshot.
    #[arg(long)]
    pub include: Option<PathBuf>,
    /// The site this client runs in: shard bytes read from other sites count as cross-site
    /// (default: the site most bytes came from).
    #[arg(long, env = "COFFER_SITE")]
    pub site: Option<String>,
}
