//! A test cluster of real `coffer` processes on loopback: start, SIGKILL,
//! SIGSTOP/SIGCONT, restart on the same data, corrupt files, and wait on
//! conditions with deadlines (never fixed sleeps).
//!
//! Tests drive the cluster only through the `coffer` binary and its files,
//! as an operator would. The binary is found next to the test executable's
//! `deps/` folder (build it first: `cargo build -p coffer-cli`), or at
//! `COFFER_BIN`. Every process's stderr goes to a log file in the cluster's
//! temp dir; when a test panics, the tail of every log is printed.

mod cluster;
mod fsutil;
mod wait;

pub use cluster::{Cluster, ClusterSpec, MetaHandle, Output, StorageHandle};
pub use fsutil::{dir_digest, write_sample_tree, TreeDigest};
pub use wait::wait_until;

/// The password the harness gives every repository.
pub const PASSWORD: &str = "correct horse battery staple";
