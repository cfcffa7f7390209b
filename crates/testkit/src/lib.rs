//! A test cluster of real `coffer` processes on loopback: start, SIGKILL,
//! SIGSTOP/SIGCONT, restart on the same data, corrupt files, and wait on
//! conditions with deadlines (never fixed sleeps).
//!
//! Tests drive the cluster only through the `coffer` binary and its files,
//! as an operator would. The binary is found next to the test executable's
//! `deps/` folder (build it first: `cargo build -p coffer-cli`), or at
//! `COFFER_BIN`. Every process's stderr goes to a log file in the cluster's
//! temp dir. A test runs its body through `Cluster::run`: whenever it fails
//! (an `Err`, a panic, or an `ERROR` line a node logged that the test did
//! not declare with `expect_error`), the tail of every log is printed, and
//! with `COFFER_IT_KEEP=1` the cluster's directory is kept. `COFFER_IT_LOG`
//! sets the nodes' log filter and `COFFER_IT_LOG_FORMAT` their log format
//! (text unless set; the failure scan reads JSON lines too). A node given
//! `--admin-listen 127.0.0.1:0` reports its admin port in
//! `DATA/admin-addr` (`admin_addr()`); `http_get` asks it.

mod agent;
mod cluster;
mod fsutil;
mod http;
mod logs;
mod wait;

pub use agent::AgentProc;
pub use cluster::{Cluster, ClusterSpec, MetaHandle, Output, StorageHandle};
pub use fsutil::{dir_digest, write_sample_tree, TreeDigest};
pub use http::http_get;
pub use logs::{is_failure_line, log_files, strip_ansi};
pub use wait::wait_until;

/// The password the harness gives every repository.
pub const PASSWORD: &str = "correct horse battery staple";
