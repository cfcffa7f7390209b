//! Every metric coffer exports, named `coffer_<subsystem>_<name>_<unit>`
//! in base units (`_seconds`, `_bytes`), counters ending in `_total`.
//!
//! Two kinds, so that nothing is counted twice:
//! - *Events* ([`events`]): process-wide families that code updates as
//!   things happen — gRPC requests and their latency (the tower layer of
//!   `coffer-rpc`'s server), backups and restores by repository (the
//!   agent library). They live as long as the process.
//! - *Samples* ([`Sample`]): what a daemon can read at any moment (Raft
//!   term and indexes, packs by health, the rebuild queue, disk usage,
//!   worker states). Its scrape hook returns them when `/metrics` is
//!   asked, and they are encoded with the events in one exposition.
//!
//! The exposition is the OpenMetrics text format, which Prometheus reads.

use std::sync::LazyLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A label set: `(name, value)` pairs in a fixed order.
pub type Labels = Vec<(String, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s: a catalog call, a shard put, a rebuild.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn duration_histogram() -> Histogram {
    // 1 s to about 9 h: backups and restores.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// The process-wide event families.
#[derive(Debug)]
pub struct Events {
    /// `coffer_grpc_requests_total{service,method,code}`.
    pub grpc_requests: Family<Labels, Counter>,
    /// `coffer_grpc_request_duration_seconds{service,method}`.
    pub grpc_duration: HistogramFamily,
    /// `coffer_backup_bytes_total{repo}`: plaintext bytes read from the source.
    pub backup_bytes: Family<Labels, Counter>,
    /// `coffer_backup_stored_bytes_total{repo}`: bytes of new blobs stored.
    pub backup_stored_bytes: Family<Labels, Counter>,
    /// `coffer_backup_chunks_total{repo}`: chunks cut (new and deduplicated).
    pub backup_chunks: Family<Labels, Counter>,
    /// `coffer_backup_duration_seconds{repo}`.
    pub backup_duration: HistogramFamily,
    /// `coffer_backup_last_success_timestamp_seconds{repo}`.
    pub backup_last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `coffer_backup_failures_total{repo}`.
    pub backup_failures: Family<Labels, Counter>,
    /// `coffer_restore_bytes_total{repo}`: plaintext bytes written.
    pub restore_bytes: Family<Labels, Counter>,
    /// `coffer_restore_duration_seconds{repo}`.
    pub restore_duration: HistogramFamily,
    /// `coffer_restore_last_success_timestamp_seconds{repo}`.
    pub restore_last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    grpc_requests: Family::default(),
    grpc_duration: Family::new_with_constructor(latency_histogram),
    backup_bytes: Family::default(),
    backup_stored_bytes: Family::default(),
    backup_chunks: Family::default(),
    backup_duration: Family::new_with_constructor(duration_histogram),
    backup_last_success: Family::default(),
    backup_failures: Family::default(),
    restore_bytes: Family::default(),
    restore_duration: Family::new_with_constructor(duration_histogram),
    restore_last_success: Family::default(),
});

/// This process's event families.
pub fn events() -> &'static Events {
    &EVENTS
}

/// The label set of one repository.
pub fn repo_labels(repo: &str) -> Labels {
    vec![("repo".into(), repo.into())]
}

/// Seconds since the Unix epoch, for `*_timestamp_seconds` gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Events {
    /// Records a finished backup of `repo`.
    pub fn backup_done(&self, repo: &str, bytes: u64, stored: u64, chunks: u64, secs: f64) {
        let l = repo_labels(repo);
        self.backup_bytes.get_or_create(&l).inc_by(bytes);
        self.backup_stored_bytes.get_or_create(&l).inc_by(stored);
        self.backup_chunks.get_or_create(&l).inc_by(chunks);
        self.backup_duration.get_or_create(&l).observe(secs);
        self.backup_last_success.get_or_create(&l).set(unix_now());
    }

    /// Records a backup of `repo` that failed.
    pub fn backup_failed(&self, repo: &str) {
        self.backup_failures.get_or_create(&repo_labels(repo)).inc();
    }

    /// Records a finished restore from `repo`.
    pub fn restore_done(&self, repo: &str, bytes: u64, secs: f64) {
        let l = repo_labels(repo);
        self.restore_bytes.get_or_create(&l).inc_by(bytes);
        self.restore_duration.get_or_create(&l).observe(secs);
        self.restore_last_success.get_or_create(&l).set(unix_now());
    }

    /// Records one finished gRPC call.
    pub fn grpc_call(&self, service: &str, method: &str, code: &str, secs: f64) {
        let sm = vec![("service".to_string(), service.to_string()), ("method".to_string(), method.to_string())];
        self.grpc_duration.get_or_create(&sm).observe(secs);
        let mut l = sm;
        l.push(("code".into(), code.into()));
        self.grpc_requests.get_or_create(&l).inc();
    }

    /// Registers every family (clones share the values) into `r`.
    fn register_into(&self, r: &mut Registry) {
        r.register("coffer_grpc_requests", "gRPC requests served, by service, method and status code", self.grpc_requests.clone());
        r.register("coffer_grpc_request_duration_seconds", "gRPC request latency on the server", self.grpc_duration.clone());
        r.register("coffer_backup_bytes", "Plaintext bytes read by backups", self.backup_bytes.clone());
        r.register("coffer_backup_stored_bytes", "Bytes of new blobs stored by backups", self.backup_stored_bytes.clone());
        r.register("coffer_backup_chunks", "Chunks cut by backups, new and deduplicated", self.backup_chunks.clone());
        r.register("coffer_backup_duration_seconds", "Backup durations", self.backup_duration.clone());
        r.register(
            "coffer_backup_last_success_timestamp_seconds",
            "When the last backup of a repository succeeded",
            self.backup_last_success.clone(),
        );
        r.register("coffer_backup_failures", "Backups that failed", self.backup_failures.clone());
        r.register("coffer_restore_bytes", "Plaintext bytes written by restores", self.restore_bytes.clone());
        r.register("coffer_restore_duration_seconds", "Restore durations", self.restore_duration.clone());
        r.register(
            "coffer_restore_last_success_timestamp_seconds",
            "When the last restore from a repository succeeded",
            self.restore_last_success.clone(),
        );
    }
}

/// Whether a sample is a gauge or a counter (a running total the daemon
/// keeps itself, such as a rebuild's bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One value read at scrape time. `name` is the full metric name; a
/// counter's ends in `_total`, which the encoder writes itself.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Sample { name, help, kind: Kind::Gauge, labels: Vec::new(), value }
    }

    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Self {
        Sample { name, help, kind: Kind::Counter, labels: Vec::new(), value }
    }

    /// The same sample with one more label.
    pub fn label(mut self, name: &str, value: impl Into<String>) -> Self {
        self.labels.push((name.to_string(), value.into()));
        self
    }
}

/// Encodes scrape-time samples, grouped by name in the order of first use.
#[derive(Debug)]
struct Samples(Vec<Sample>);

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut names: Vec<&'static str> = Vec::new();
        for s in &self.0 {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        for name in names {
            let group: Vec<&Sample> = self.0.iter().filter(|s| s.name == name).collect();
            let (kind, help) = (group[0].kind, group[0].help);
            let (base, metric_type) = match kind {
                Kind::Gauge => (name, MetricType::Gauge),
                Kind::Counter => (name.strip_suffix("_total").unwrap_or(name), MetricType::Counter),
            };
            let mut family = encoder.encode_descriptor(base, help, None, metric_type)?;
            match group.as_slice() {
                // An unlabelled series is written without `{}`, which some
                // parsers refuse.
                [one] if one.labels.is_empty() => encode_value(kind, one.value, family)?,
                _ => {
                    for s in group {
                        encode_value(kind, s.value, family.encode_family(&s.labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, value: f64, m: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Gauge => ConstGauge::new(value).encode(m),
        Kind::Counter => ConstCounter::new(value.max(0.0)).encode(m),
    }
}

/// The exposition of this process's events and `samples`, with
/// `coffer_build_info{version,role}` first.
pub fn encode(role: &str, mut samples: Vec<Sample>) -> String {
    let mut registry = Registry::default();
    events().register_into(&mut registry);
    samples.insert(
        0,
        Sample::gauge("coffer_build_info", "The coffer build this process runs (always 1)", 1.0)
            .label("version", env!("CARGO_PKG_VERSION"))
            .label("role", role),
    );
    registry.register_collector(Box::new(Samples(samples)));
    let mut out = String::new();
    // Encoding into a String cannot fail but for a bug in a metric's encoder.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_parses_and_names_events_and_samples() {
        events().grpc_call("coffer.v1.Catalog", "GetRepo", "OK", 0.002);
        events().backup_done("r1", 100, 50, 3, 2.0);
        let text = encode(
            "meta",
            vec![
                Sample::gauge("coffer_raft_term", "term", 4.0),
                Sample::gauge("coffer_packs", "packs", 7.0).label("health", "healthy"),
                Sample::gauge("coffer_packs", "packs", 1.0).label("health", "degraded"),
                Sample::counter("coffer_rebuild_written_bytes_total", "bytes", 1024.0),
            ],
        );
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parse the exposition");
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value.clone())
        };
        assert!(matches!(value("coffer_raft_term", None), Some(prometheus_parse::Value::Gauge(v)) if v == 4.0), "{text}");
        assert!(value("coffer_packs", Some(("health", "degraded"))).is_some(), "{text}");
        assert!(value("coffer_rebuild_written_bytes_total", None).is_some(), "{text}");
        assert!(value("coffer_build_info", Some(("role", "meta"))).is_some(), "{text}");
        assert!(value("coffer_grpc_requests_total", Some(("method", "GetRepo"))).is_some(), "{text}");
        assert!(value("coffer_backup_bytes_total", Some(("repo", "r1"))).is_some(), "{text}");
        assert!(text.contains("coffer_grpc_request_duration_seconds_bucket"), "{text}");
    }
}
