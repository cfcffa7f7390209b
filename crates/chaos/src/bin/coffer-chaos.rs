//! `coffer-chaos`: the driver behind `make chaos`. Draws `--schedules`
//! schedules from `--seed`, runs each for `--minutes` on a fresh cluster in
//! network namespaces, and writes `report-SEED.json` and `report-SEED.md`
//! under `--out`. Exits 1 when any schedule has a safety or availability
//! finding, and 2 on bad arguments; says SKIPPED (exit 0) where namespaces
//! cannot be created, unless `COFFER_CHAOS_REQUIRE=1`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use coffer_chaos::checks::Severity;
use coffer_chaos::runner::{run, RunOptions};

fn parse(args: &[String]) -> Result<RunOptions> {
    let mut o = RunOptions {
        seed: 1,
        schedules: 1,
        duration: Duration::from_secs(120),
        bin: coffer_chaos::find_coffer()?,
        out: PathBuf::from("target/chaos"),
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seed" => o.seed = value()?.parse().context("--seed is a number")?,
            "--schedules" => o.schedules = value()?.parse().context("--schedules is a number")?,
            "--minutes" => {
                let m: f64 = value()?.parse().context("--minutes is a number")?;
                if !(m > 0.0 && m <= 24.0 * 60.0) {
                    bail!("--minutes must be positive and at most a day, not {m}");
                }
                o.duration = Duration::from_secs_f64(m * 60.0);
            }
            "--out" => o.out = PathBuf::from(value()?),
            "--bin" => o.bin = PathBuf::from(value()?),
            "--keep" => o.keep = true,
            other => {
                bail!("unknown argument {other:?} (--seed S --schedules N --minutes M --out DIR --bin COFFER --keep)")
            }
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("coffer-chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(why) = coffer_chaos::net::unsupported_reason() {
        eprintln!("coffer-chaos: SKIPPED, no schedule ran: {why}");
        return if std::env::var("COFFER_CHAOS_REQUIRE").is_ok_and(|v| v == "1") {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    match run(&opts) {
        Ok(report) => {
            let (s, a, l) = (
                report.findings(Severity::Safety),
                report.findings(Severity::Availability),
                report.findings(Severity::Log),
            );
            eprintln!(
                "coffer-chaos: seed {}: {} schedules, faults {:?} (late {:?}, held back {:?}), {} snapshots checked, {} bytes compared, {} backups ({} refused); findings: {s} safety, {a} availability, {l} log; report in {}",
                report.seed,
                report.schedules.len(),
                report.faults_by_kind,
                report.faults_late,
                report.faults_held,
                report.snapshots_checked,
                report.bytes_compared,
                report.backups,
                report.backups_refused,
                opts.out.display()
            );
            if s + a > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("coffer-chaos: {e:#}");
            ExitCode::from(1)
        }
    }
}
