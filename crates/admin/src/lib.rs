//! The admin HTTP port of every coffer daemon (`--admin-listen ADDR`, file
//! key `admin_listen`): plain HTTP, so that kubelet probes and Prometheus
//! reach it without certificates, and read-only, so that serving it without
//! TLS gives nobody a way to change the cluster.
//!
//! ```text
//!   AdminServer::new(role)
//!       .readiness(check)      // GET /readyz  -> 200 "ok" | 503 reason
//!       .scrape(hook)          // GET /metrics -> events (process-wide) + hook samples
//!       .page("/", page)       // any other read-only page (status page, /health/cluster)
//!       .serve(listener, shutdown)
//!   GET /livez -> 200 whenever the process answers (never asks a peer)
//! ```
//!
//! `metrics` owns every metric name: the event families that code records
//! as things happen (gRPC calls, backups, restores) live once per process;
//! the state a daemon can read at any time (Raft indexes, pack health,
//! disk usage) is sampled by its scrape hook when Prometheus asks, so a
//! figure is never stale and never kept twice.

pub mod metrics;
mod server;

pub use metrics::{Kind, Sample};
pub use server::{AdminServer, BoxFuture, Reply};
