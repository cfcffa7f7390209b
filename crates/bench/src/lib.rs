//! The measuring kit behind `make microbench`: a plain `Instant` loop that
//! times one closure over a fixed number of input bytes, the seeded inputs
//! the cases share, and the Markdown and JSON renderings of the results.
//!
//! ```text
//!   benches/hot_paths.rs ──Runner::run(group, layer, name, bytes, closure)──► Measurement
//!                        ──markdown / json(&[Measurement])──────────────────► target/bench/microbench.*
//! ```
//!
//! The invariant kept here: a reported rate is always bytes of input over
//! wall time of whole iterations on one thread, the median of several
//! samples, so that two rows of one group compare like with like. Within a
//! group, the first row of the `Crate` layer is the library call that the
//! group's `Coffer` rows wrap, and each `Coffer` row is shown as a fraction
//! of it: the cost of our wrapper, visible at a glance. No criterion, to
//! keep the workspace build light.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const MIB: f64 = (1u64 << 20) as f64;

/// Whose code a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A coffer API (`coffer_pack`, `coffer_erasure`).
    Coffer,
    /// The third-party crate called directly.
    Crate,
}

impl Layer {
    fn as_str(self) -> &'static str {
        match self {
            Layer::Coffer => "coffer",
            Layer::Crate => "crate",
        }
    }
}

/// One case's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub group: String,
    pub layer: Layer,
    pub name: String,
    /// Input bytes one iteration processes.
    pub bytes_per_iter: u64,
    /// Iterations timed, over every sample.
    pub iters: u64,
    /// MiB/s of each sample, sorted.
    pub samples_mib_s: Vec<f64>,
}

impl Measurement {
    /// The median sample's rate.
    pub fn mib_s(&self) -> f64 {
        let n = self.samples_mib_s.len();
        match n {
            0 => 0.0,
            _ if n % 2 == 1 => self.samples_mib_s[n / 2],
            _ => (self.samples_mib_s[n / 2 - 1] + self.samples_mib_s[n / 2]) / 2.0,
        }
    }
}

/// How long to measure each case.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Samples per case; the median is reported.
    pub samples: u32,
    /// Each sample runs whole iterations until at least this long has passed.
    pub sample_time: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self { samples: 5, sample_time: Duration::from_millis(200) }
    }
}

/// Runs cases one after another on the calling thread and keeps their results.
#[derive(Debug)]
pub struct Runner {
    config: RunnerConfig,
    filters: Vec<String>,
    results: Vec<Measurement>,
}

impl Runner {
    /// A runner that measures only the cases whose group or name contains
    /// one of `filters` (all cases when there are none).
    pub fn new(config: RunnerConfig, filters: Vec<String>) -> Self {
        Self { config, filters, results: Vec::new() }
    }

    /// Whether a case of `group` named `name` passes the filters. Callers
    /// use it to skip building large inputs for skipped groups.
    pub fn wants(&self, group: &str, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| group.contains(f.as_str()) || name.contains(f.as_str()))
    }

    /// Measures `f`, which processes `bytes_per_iter` input bytes per call.
    /// One untimed call first warms caches and lazily built state (zstd
    /// contexts, decode-matrix caches), which a long-running agent has too.
    pub fn run<T>(&mut self, group: &str, layer: Layer, name: &str, bytes_per_iter: u64, mut f: impl FnMut() -> T) {
        if !self.wants(group, name) {
            return;
        }
        black_box(f());
        let mut samples = Vec::with_capacity(self.config.samples as usize);
        let mut iters = 0;
        for _ in 0..self.config.samples.max(1) {
            let start = Instant::now();
            let mut n = 0u64;
            while n == 0 || start.elapsed() < self.config.sample_time {
                black_box(f());
                n += 1;
            }
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            samples.push(n as f64 * bytes_per_iter as f64 / MIB / secs);
            iters += n;
        }
        samples.sort_by(f64::total_cmp);
        let m = Measurement {
            group: group.to_string(),
            layer,
            name: name.to_string(),
            bytes_per_iter,
            iters,
            samples_mib_s: samples,
        };
        eprintln!("{:<58} {:<6} {:<60} {:>9.1} MiB/s", m.group, layer.as_str(), m.name, m.mib_s());
        self.results.push(m);
    }

    pub fn results(&self) -> &[Measurement] {
        &self.results
    }
}

/// The rate of the group's reference row: its first `Crate` row.
fn reference(results: &[Measurement], group: &str) -> Option<f64> {
    results.iter().find(|m| m.group == group && m.layer == Layer::Crate).map(Measurement::mib_s)
}

/// Groups in first-seen order.
fn groups(results: &[Measurement]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for m in results {
        if !out.contains(&m.group.as_str()) {
            out.push(&m.group);
        }
    }
    out
}

/// A Markdown table, grouped, with each coffer row's rate as a fraction of
/// its group's reference crate call.
pub fn markdown(results: &[Measurement], preamble: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# coffer micro-benchmarks\n\n{preamble}\n");
    let _ = writeln!(s, "| group | layer | call | MiB/s (median) | min..max | coffer / crate |");
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|");
    for group in groups(results) {
        let base = reference(results, group);
        for m in results.iter().filter(|m| m.group == group) {
            let lo = m.samples_mib_s.first().copied().unwrap_or(0.0);
            let hi = m.samples_mib_s.last().copied().unwrap_or(0.0);
            let vs = match (m.layer, base) {
                (Layer::Coffer, Some(b)) if b > 0.0 => format!("{:.2}", m.mib_s() / b),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.0}..{:.0} | {} |",
                m.group,
                m.layer.as_str(),
                m.name,
                m.mib_s(),
                lo,
                hi,
                vs
            );
        }
    }
    s
}

/// The results as a JSON array (hand-written: the kit needs no serde).
pub fn json(results: &[Measurement]) -> String {
    let mut s = String::from("[\n");
    for (i, m) in results.iter().enumerate() {
        let samples = m.samples_mib_s.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ");
        let vs = match (m.layer, reference(results, &m.group)) {
            (Layer::Coffer, Some(b)) if b > 0.0 => format!("{:.4}", m.mib_s() / b),
            _ => "null".to_string(),
        };
        let _ = write!(
            s,
            "  {{\"group\": {}, \"layer\": \"{}\", \"name\": {}, \"bytes_per_iter\": {}, \"iters\": {}, \
             \"mib_s\": {:.3}, \"samples_mib_s\": [{}], \"coffer_over_crate\": {}}}",
            quote(&m.group),
            m.layer.as_str(),
            quote(&m.name),
            m.bytes_per_iter,
            m.iters,
            m.mib_s(),
            samples,
            vs
        );
        s.push_str(if i + 1 < results.len() { ",\n" } else { "\n" });
    }
    s.push(']');
    s.push('\n');
    s
}

/// A JSON string literal.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `len` seeded random bytes: incompressible, like media or encrypted dumps.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// `len` bytes of seeded SQL `INSERT` lines, compressible like a real dump.
pub fn sql_text(len: usize, seed: u64) -> Vec<u8> {
    const STATUS: [&str; 4] = ["shipped", "delivered", "paid", "cancelled"];
    const CITY: [&str; 6] = ["Paris", "Berlin", "Madrid", "Warsaw", "Lisbon", "Oslo"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(len + 128);
    let mut id = 0u64;
    while out.len() < len {
        id += 1 + rng.gen_range(0..3u64);
        let _ = writeln!(
            out,
            "INSERT INTO orders VALUES ({id}, {}, '{}', {}.{:02}, '{}', '2025-{:02}-{:02} {:02}:{:02}:{:02}');",
            rng.gen_range(1..100_000u32),
            STATUS[rng.gen_range(0..STATUS.len())],
            rng.gen_range(5..900u32),
            rng.gen_range(0..100u32),
            CITY[rng.gen_range(0..CITY.len())],
            rng.gen_range(1..13u32),
            rng.gen_range(1..29u32),
            rng.gen_range(0..24u32),
            rng.gen_range(0..60u32),
            rng.gen_range(0..60u32),
        );
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> RunnerConfig {
        RunnerConfig { samples: 3, sample_time: Duration::from_millis(1) }
    }

    #[test]
    fn runner_records_every_sample_and_filters() {
        let mut r = Runner::new(quick(), vec!["hash".to_string()]);
        let mut calls = 0u64;
        r.run("hash 1 MiB", Layer::Crate, "blake3::hash", 1 << 20, || calls += 1);
        r.run("chunking", Layer::Coffer, "chunker", 1 << 20, || -> u32 { panic!("filtered out") });
        assert_eq!(r.results().len(), 1);
        let m = &r.results()[0];
        assert_eq!(m.samples_mib_s.len(), 3);
        assert!(m.samples_mib_s.windows(2).all(|w| w[0] <= w[1]), "samples are sorted");
        // The warm-up call is not counted in the iterations.
        assert_eq!(calls, m.iters + 1);
        assert!(m.iters >= 3, "every sample runs at least one iteration");
        assert!(m.mib_s() > 0.0);
    }

    #[test]
    fn median_of_even_and_odd_sample_counts() {
        let mut m = Measurement {
            group: "g".into(),
            layer: Layer::Crate,
            name: "n".into(),
            bytes_per_iter: 1,
            iters: 1,
            samples_mib_s: vec![1.0, 2.0, 9.0],
        };
        assert_eq!(m.mib_s(), 2.0);
        m.samples_mib_s = vec![1.0, 2.0, 4.0, 9.0];
        assert_eq!(m.mib_s(), 3.0);
        m.samples_mib_s.clear();
        assert_eq!(m.mib_s(), 0.0);
    }

    fn fixed(group: &str, layer: Layer, name: &str, rate: f64) -> Measurement {
        Measurement {
            group: group.into(),
            layer,
            name: name.into(),
            bytes_per_iter: 10,
            iters: 2,
            samples_mib_s: vec![rate],
        }
    }

    #[test]
    fn coffer_rows_are_shown_against_the_first_crate_row() {
        let rows = vec![
            fixed("seal", Layer::Coffer, "RepoKey::seal", 50.0),
            fixed("seal", Layer::Crate, "zstd + ring", 100.0),
            fixed("seal", Layer::Crate, "ring only", 400.0),
            fixed("zstd \"1\"", Layer::Crate, "compress", 300.0),
        ];
        let md = markdown(&rows, "pre");
        assert!(md.contains("| seal | coffer | RepoKey::seal | 50.0 | 50..50 | 0.50 |"), "{md}");
        assert!(md.contains("| seal | crate | ring only | 400.0 | 400..400 |  |"), "{md}");
        let js = json(&rows);
        assert!(js.contains("\"coffer_over_crate\": 0.5000"), "{js}");
        assert!(js.contains("\"group\": \"zstd \\\"1\\\"\""), "{js}");
        assert_eq!(js.matches("\"group\"").count(), 4);
    }

    #[test]
    fn inputs_are_deterministic_and_sized() {
        assert_eq!(random_bytes(1000, 7), random_bytes(1000, 7));
        assert_ne!(random_bytes(1000, 7), random_bytes(1000, 8));
        let text = sql_text(100_000, 3);
        assert_eq!(text.len(), 100_000);
        assert_eq!(text, sql_text(100_000, 3));
        assert!(text.starts_with(b"INSERT INTO orders VALUES ("));
        assert!(text.is_ascii());
    }
}
