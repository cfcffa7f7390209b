//! The agent daemon (`coffer agent`): backs up the sources of one
//! `agent.toml` on schedules, on file changes, continuously (real-time) and
//! on request, applies each source's keep rules, and reports every source's
//! last run and recovery point.
//!
//! ```text
//!   config ──► daemon ──► one worker per source (coffer_worker::Runner)
//!                │           ├─ schedule: pure fire-time arithmetic (zones, jitter, catch-up, kinds)
//!                │           ├─ watch: inotify, debounced; rescan on overflow
//!                │           ├─ run: pre hook, backup via coffer-client, post hook, keep rules, drills
//!                │           └─ state: STATE_DIR/sources/NAME.json, atomic, crash-settled
//!                ├─► report: Catalog.ReportSource after every run and every report_interval
//!                ├─► control: Unix socket, JSON lines (status, trigger [kind] [wait])
//!                └─► observe: the admin port (/livez, /readyz, /metrics per source)
//! ```
//!
//! The invariants: never two runs of one source at once; every snapshot
//! carries `source:<name>`; a run interrupted by a crash is run again once
//! unless its snapshot committed; a configuration that loads is runnable.
//! Like every library crate, this one reads no environment variable: the CLI
//! hands it the credentials (`daemon::Defaults`).

pub mod config;
pub mod control;
pub mod daemon;
pub mod observe;
pub mod report;
pub mod run;
pub mod schedule;
pub mod state;
pub mod watch;

pub use config::{load, AgentConfig, ConfigError, SourceConfig};
pub use daemon::{run as run_daemon, Defaults};
