//! The chaos smoke of `make test`: two schedules of one minute from a fixed
//! seed, on real processes in network namespaces. It fails on any safety
//! finding (lost or changed data, two leaders in a term, diverging
//! replicas, a non-linearizable history, a crash, a cluster that did not
//! recover); availability and log findings are printed, not failed on.
//! Without root or `ip` it says SKIPPED on stderr, and fails instead when
//! `COFFER_CHAOS_REQUIRE=1` (which `make test` sets when it runs as root).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use coffer_chaos::checks::Severity;
use coffer_chaos::runner::{run, RunOptions};

/// The smoke's seed: fixed, so that the smoke always runs the same schedules.
const SEED: u64 = 16;

#[test]
fn chaos_smoke_two_schedules_of_one_minute() -> Result<()> {
    if let Some(why) = coffer_chaos::net::unsupported_reason() {
        let required = std::env::var("COFFER_CHAOS_REQUIRE").is_ok_and(|v| v == "1");
        ensure!(!required, "the chaos smoke cannot run but COFFER_CHAOS_REQUIRE=1: {why}");
        eprintln!("SKIPPED chaos smoke (nothing was checked): {why}");
        return Ok(());
    }
    let bin = coffer_chaos::find_coffer()?;
    // target/debug/coffer -> target/chaos/smoke
    let out = bin.parent().and_then(|d| d.parent()).context("the target dir")?.join("chaos/smoke");
    let opts = RunOptions { seed: SEED, schedules: 2, duration: Duration::from_secs(60), bin, out, keep: false };
    let report = run(&opts)?;
    eprintln!("{}", report.markdown());
    let faults: u64 = report.faults_by_kind.values().sum();
    ensure!(faults > 0, "no fault was injected");
    ensure!(report.snapshots_checked > 0, "no acknowledged snapshot was checked");
    ensure!(report.bytes_compared > 0, "no byte was compared");
    let safety = report.findings(Severity::Safety);
    ensure!(safety == 0, "{safety} safety finding(s); see the report above and {}", opts.out.display());
    Ok(())
}
