//! Progress for people and for programs, one reporter for every long
//! command: backup (from its pipeline's callback), and restore, `check
//! --read-data`, drill and recover, which read the `coffer_client::Work`
//! counters installed on their repositories ([`watch`]):
//!
//! - stderr is a terminal and `--json` is off: an indicatif line on stderr
//!   with files, bytes, throughput and, when the total is known, a bar and
//!   an ETA; it is cleared when the command ends, so the summary stands
//!   alone.
//! - `--json`: periodic status lines on stdout in restic's convention,
//!   `{"message_type":"status", ...}`, before the command's final summary
//!   line (which stays the last JSON line, as scripts expect).
//! - otherwise (a pipe, a log file, cron): nothing.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

/// One report: what the command has done so far.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// What `files` counts: "files" or "packs" (JSON: `<unit>_done`).
    pub unit: &'static str,
    pub files: u64,
    pub bytes: u64,
    /// The bytes the command will have handled at the end, if known.
    pub total_bytes: Option<u64>,
    pub elapsed_s: f64,
}

/// Where progress goes (see the module documentation).
#[derive(Debug)]
pub struct Reporter {
    bar: Option<ProgressBar>,
    json: bool,
    /// The command, in JSON lines (`"action"`).
    action: &'static str,
}

impl Reporter {
    pub fn new(action: &'static str, json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Reporter { bar, json, action }
    }

    /// Reports `step`; `extra` (an object) is merged into a JSON status line.
    pub fn update(&self, step: &Step, extra: Value) {
        if let Some(bar) = &self.bar {
            let rate = if step.elapsed_s > 0.0 { step.bytes as f64 / step.elapsed_s } else { 0.0 };
            let msg = format!(
                "{} {}, {} ({}/s)",
                step.files,
                step.unit,
                indicatif::HumanBytes(step.bytes),
                indicatif::HumanBytes(rate as u64)
            );
            match step.total_bytes {
                Some(total) if total > 0 => {
                    if bar.length() != Some(total) {
                        bar.set_length(total);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {elapsed_precise} [{wide_bar}] {percent}% {msg}, ETA {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                    }
                    bar.set_position(step.bytes.min(total));
                }
                _ => bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            }
            bar.set_message(msg);
        }
        if self.json {
            let mut line = json!({
                "message_type": "status",
                "action": self.action,
                "seconds_elapsed": step.elapsed_s,
                format!("{}_done", step.unit): step.files,
                "bytes_done": step.bytes,
            });
            if let (Some(total), Some(o)) = (step.total_bytes, line.as_object_mut()) {
                o.insert("total_bytes".into(), json!(total));
                if total > 0 {
                    o.insert("percent_done".into(), json!((step.bytes as f64 / total as f64).min(1.0)));
                }
            }
            if let (Value::Object(extra), Some(o)) = (extra, line.as_object_mut()) {
                o.extend(extra);
            }
            println!("{line}");
        }
    }

    /// Clears the bar (the summary follows on its own).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// How often [`watch`] reports.
const EVERY: Duration = Duration::from_millis(250);

/// The report period: [`EVERY`], or `1 / COFFER_PROGRESS_FPS` seconds when
/// that variable holds a rate between 0.01 and 1000 per second (restic's
/// `RESTIC_PROGRESS_FPS`: slower for a log file, faster for a test that
/// wants a status line from a short restore). Anything else is ignored.
fn period() -> Duration {
    std::env::var("COFFER_PROGRESS_FPS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|fps| (0.01..=1000.0).contains(fps))
        .map_or(EVERY, |fps| Duration::from_secs_f64(1.0 / fps))
}

/// Reports `work` through a [`Reporter`] every [`period`] until the
/// returned guard is finished (or dropped). Nothing is reported before the
/// first period has passed, so a command that ends at once prints no status.
pub fn watch(action: &'static str, json: bool, work: Arc<coffer_client::Work>) -> Watch {
    let reporter = Arc::new(Reporter::new(action, json));
    // Neither a bar nor JSON lines: nothing to do.
    if reporter.bar.is_none() && !json {
        return Watch { reporter, task: None };
    }
    let r = reporter.clone();
    let task = tokio::spawn(async move {
        let every = period();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let s = work.status();
            let step = Step {
                unit: s.unit.as_str(),
                files: s.items,
                bytes: s.bytes,
                total_bytes: s.total_bytes,
                elapsed_s: s.elapsed_s,
            };
            let mut extra = json!({ "phase": s.phase });
            if let (Some(total), Some(o)) = (s.total_items, extra.as_object_mut()) {
                o.insert(format!("total_{}", s.unit.as_str()), json!(total));
            }
            r.update(&step, extra);
        }
    });
    Watch { reporter, task: Some(task) }
}

/// A running [`watch`].
pub struct Watch {
    reporter: Arc<Reporter>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watch {
    /// Stops reporting and clears the bar, before the command's summary.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.reporter.finish();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}
