//! The chaos suite (issue 16): real `coffer` processes, each in its own
//! network namespace, under seeded schedules of faults between sites, on
//! processes, disks and clocks, while a workload backs up, restores,
//! forgets and collects; then the invariants of ARCHITECTURE.md are
//! checked on what the workload recorded.
//!
//! ```text
//!   seed ─▶ schedule ─▶ runner ──inject/heal──▶ faults ─▶ cluster (namespaces)
//!                          │                                  ▲
//!                          └── workload (agents, history, ────┘
//!                               a real-time source, a voter added and removed)
//!                          └── checks (restore, digests, leaders, linearizability, logs)
//! ```
//!
//! A dev-only crate, like `coffer-testkit`: nothing of it ships in the
//! binary. Where namespaces cannot be created (not root, no `ip`), the
//! runner says so and skips; it never reports a pass it did not run.

pub mod checks;
pub mod cluster;
pub mod faults;
pub mod linear;
pub mod membership;
pub mod net;
pub mod realtime;
pub mod runner;
pub mod schedule;
pub mod workload;

/// Failures of the fault primitives' system commands.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
}

/// The `coffer` binary: `COFFER_BIN`, else next to the running executable
/// (`target/debug/coffer-chaos`) or one folder up from a test's `deps/`.
pub fn find_coffer() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(p) = std::env::var("COFFER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    for d in [Some(dir.clone()), dir.parent().map(std::path::Path::to_path_buf)].into_iter().flatten() {
        let candidate = d.join("coffer");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "the coffer binary is not next to {}; run `cargo build -p coffer-cli` first or set COFFER_BIN",
        exe.display()
    )
}
