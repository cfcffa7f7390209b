//! Daemon settings for `coffer meta` and `coffer storage`, from three
//! layers: a TOML file (`--config FILE`), then `COFFER_*` environment
//! variables, then command-line flags, each overriding the one before; what
//! none of them sets comes from the defaults table.
//!
//! ```text
//!   defaults (from MetaConfig::new / StorageConfig::new) < --config FILE < COFFER_* < --flag
//!                                   └──────── merged key by key ────────┘ ─► MetaConfig / StorageConfig
//! ```
//!
//! One struct per daemon is at once the clap flags and the file's schema,
//! so a file key is always the long flag's name with `-` written `_`, and a
//! new flag is a new key without anything else to keep in step. Every field
//! is optional there, without a clap default, so that "not given" can be
//! told from "given the default". The defaults are written once, in the
//! library crates' configuration constructors; the table here is read from
//! them. `--print-config` prints the merged result, which loads back with
//! `--config`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use coffer_meta::MetaConfig;
use coffer_storage::{Reserve, StorageConfig};
use coffer_types::{MetaId, SiteId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// A configuration mistake: the binary exits 2 (usage) for it.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// A duration written as in the flags (`250ms`, `15s`, `10m`, `24h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    /// The largest unit that writes it exactly, so that it parses back equal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_dur(s: &str) -> Result<Dur, String> {
    s.parse()
}

/// `coffer meta`'s settings: flags, environment twins and file keys.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetaSettings {
    /// This node's Raft id (at least 1).
    #[arg(long, env = "COFFER_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Where the node keeps its Raft log and state machine.
    #[arg(long, env = "COFFER_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Address to listen on (host:port; port 0 picks one).
    #[arg(long, env = "COFFER_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address others use to reach this node (default: the bound --listen address).
    #[arg(long, env = "COFFER_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Bootstrap a new cluster with this node as its only voter (ignored if already a member).
    #[arg(long, env = "COFFER_INIT", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Join a running cluster through any member (ignored if already a member).
    #[arg(long, env = "COFFER_JOIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// The failure domain this node runs in.
    #[arg(long, env = "COFFER_SITE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Snapshot the state machine and purge the log after this many entries.
    #[arg(long, env = "COFFER_SNAPSHOT_EVERY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, env = "COFFER_KEEP_LOGS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_logs: Option<u64>,
    /// Raft heartbeat interval.
    #[arg(long, env = "COFFER_RAFT_HEARTBEAT", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft_heartbeat: Option<Dur>,
    /// Minimum election timeout (the maximum is twice this).
    #[arg(long, env = "COFFER_ELECTION_TIMEOUT", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<Dur>,
    /// A storage node silent this long is suspect.
    #[arg(long, env = "COFFER_SUSPECT_AFTER", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect_after: Option<Dur>,
    /// A storage node silent this long is down.
    #[arg(long, env = "COFFER_DOWN_AFTER", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_after: Option<Dur>,
    /// Bytes per second each storage node may read for rebuilds (0: unlimited).
    #[arg(long, env = "COFFER_REBUILD_BANDWIDTH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild_bandwidth: Option<u64>,
    /// Shard rebuilds in flight across the cluster.
    #[arg(long, env = "COFFER_REBUILD_PARALLELISM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild_parallelism: Option<usize>,
    /// Time between the leader's repair-planner passes (it also runs as soon
    /// as a rebuild finishes or a storage node comes back).
    #[arg(long, env = "COFFER_REPAIR_TICK", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_tick: Option<Dur>,
    /// A file holding the cluster admin token (the same on every metadata node).
    #[arg(long, env = "COFFER_ADMIN_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Plain text without certificates (file key only: the flag and its
    /// environment twin are global, `--insecure` / `COFFER_INSECURE`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// The CA certificate (file key; else `--cacert` / `COFFER_CACERT`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// This node's certificate (file key; else `--cert` / `COFFER_CERT`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (file key; else `--key` / `COFFER_KEY`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Time between the leader's garbage-collection runs (0 or off: only runs asked for with `coffer gc`).
    #[arg(long, env = "COFFER_GC_INTERVAL", value_parser = parse_interval)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_interval: Option<Dur>,
    /// Shard bytes per second the leader's collector writes when it rewrites mostly dead packs.
    #[arg(long, env = "COFFER_GC_REWRITE_BANDWIDTH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_rewrite_bandwidth: Option<u64>,
    /// MiB of block cache of the catalog store (memtables, filters and indexes come on top; see `make scale`).
    #[arg(long, env = "COFFER_STORE_CACHE_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cache_mib: Option<u64>,
    /// Price of reading one GiB, for the recovery cost in `coffer report` (optional; one currency unit).
    #[arg(long, env = "COFFER_PRICE_PER_GIB_READ")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_gib_read: Option<f64>,
    /// Price of writing one GiB, for the recovery cost.
    #[arg(long, env = "COFFER_PRICE_PER_GIB_WRITTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_gib_written: Option<f64>,
    /// Price of sending one GiB between sites, for the recovery cost.
    #[arg(long, env = "COFFER_PRICE_PER_GIB_CROSS_SITE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_gib_cross_site: Option<f64>,
    /// Price of one node-hour, for the recovery cost.
    #[arg(long, env = "COFFER_PRICE_PER_NODE_HOUR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_node_hour: Option<f64>,
    /// Plain-HTTP admin port (host:port): /livez, /readyz, /metrics, /health/cluster and the status page at /.
    /// Off unless set; by convention 0.0.0.0:7401.
    #[arg(long, env = "COFFER_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
}

/// A duration, or `off` for none (stored as 0).
fn parse_interval(s: &str) -> Result<Dur, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Dur(std::time::Duration::ZERO));
    }
    s.parse()
}

/// `coffer storage`'s settings: flags, environment twins and file keys.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Holds the node id, the shard files and the inventory.
    #[arg(long, env = "COFFER_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Address to listen on (host:port; port 0 picks one).
    #[arg(long, env = "COFFER_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address others use to reach this node (default: the bound --listen address).
    #[arg(long, env = "COFFER_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The failure domain this node is in.
    #[arg(long, env = "COFFER_SITE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Metadata endpoints, comma-separated (an array in the file).
    #[arg(long, env = "COFFER_META", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Vec<String>>,
    /// Capacity to announce, in bytes (default: the filesystem's size).
    #[arg(long, env = "COFFER_CAPACITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Time between two heartbeats to the metadata plane.
    #[arg(long, env = "COFFER_HEARTBEAT_INTERVAL", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<Dur>,
    /// Time between scheduled scrub passes (kept across restarts in DIR/scrub-last).
    #[arg(long, env = "COFFER_SCRUB_INTERVAL", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_interval: Option<Dur>,
    /// Bytes per second a scrub pass may read (0: unlimited).
    #[arg(long, env = "COFFER_SCRUB_RATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_rate: Option<u64>,
    /// Space kept free on the filesystem: bytes, or a percentage such as
    /// "5%" (default: 1 GiB, or 5% of a filesystem smaller than 20 GiB).
    /// Puts that would cross it are refused.
    #[arg(long, env = "COFFER_RESERVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve: Option<String>,
    /// How long the catalog must not have known a shard's pack (timed on the
    /// node's monotonic clock from the pass that first found it unknown)
    /// before the shard is collected (default: the longest session lease and a day).
    #[arg(long, env = "COFFER_ORPHAN_AGE", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphan_age: Option<Dur>,
    /// Time between two orphan-collection passes.
    #[arg(long, env = "COFFER_ORPHAN_INTERVAL", value_parser = parse_dur)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphan_interval: Option<Dur>,
    /// Plain text without certificates (file key only: the flag and its
    /// environment twin are global, `--insecure` / `COFFER_INSECURE`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// The CA certificate (file key; else `--cacert` / `COFFER_CACERT`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// This node's certificate (file key; else `--cert` / `COFFER_CERT`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (file key; else `--key` / `COFFER_KEY`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Plain-HTTP admin port (host:port): /livez, /readyz, /metrics.
    /// Off unless set; by convention 0.0.0.0:7501.
    #[arg(long, env = "COFFER_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
}

/// The defaults table of `coffer meta`: every default, read from the one
/// place it is written (`MetaConfig::new`).
pub fn meta_defaults() -> MetaSettings {
    let c = MetaConfig::new(MetaId(0), PathBuf::new(), String::new());
    MetaSettings {
        init: Some(c.init),
        site: Some(c.site),
        snapshot_every: Some(c.snapshot_every),
        keep_logs: Some(c.keep_logs),
        raft_heartbeat: Some(Dur(c.raft_heartbeat)),
        election_timeout: Some(Dur(c.election_timeout.0)),
        suspect_after: Some(Dur(c.suspect_after)),
        down_after: Some(Dur(c.down_after)),
        rebuild_bandwidth: Some(c.repair.bandwidth),
        rebuild_parallelism: Some(c.repair.parallelism),
        repair_tick: Some(Dur(c.repair.tick)),
        gc_interval: Some(Dur(c.gc_interval.unwrap_or_default())),
        gc_rewrite_bandwidth: Some(c.gc_rewrite_bandwidth),
        store_cache_mib: Some(c.store_cache_bytes >> 20),
        ..MetaSettings::default()
    }
}

/// The defaults table of `coffer storage`, read from `StorageConfig::new`.
pub fn storage_defaults() -> StorageSettings {
    let site = SiteId::new("default").ok();
    let c = site.map(|s| StorageConfig::new(PathBuf::new(), String::new(), s, Vec::new()));
    StorageSettings {
        heartbeat_interval: c.as_ref().map(|c| Dur(c.heartbeat_interval)),
        scrub_interval: c.as_ref().and_then(|c| c.scrub_interval).map(Dur),
        scrub_rate: c.as_ref().map(|c| c.scrub_rate),
        orphan_age: c.as_ref().map(|c| Dur(c.orphan_age)),
        orphan_interval: c.as_ref().and_then(|c| c.orphan_interval).map(Dur),
        ..StorageSettings::default()
    }
}

/// Reads a settings file. Every key is checked on its own, so that an
/// unknown key or a bad value is reported with the key's name.
pub fn read_file<T: DeserializeOwned + Default>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read the config file {}: {e}", path.display())))?;
    parse_toml(&text).map_err(|e| usage(format!("config file {}: {e}", path.display())))
}

/// Parses settings from TOML text, naming the key of the first bad entry.
pub fn parse_toml<T: DeserializeOwned + Default>(text: &str) -> Result<T, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
    for (key, value) in &table {
        let one = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = T::deserialize(toml::Value::Table(one)) {
            return Err(format!("key `{key}`: {}", e.message()));
        }
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| e.message().to_string())
}

/// `layers` merged key by key, later ones overriding earlier ones.
pub fn merge<T: Serialize + DeserializeOwned>(layers: &[&T]) -> anyhow::Result<T> {
    let mut merged = serde_json::Map::new();
    for layer in layers {
        if let serde_json::Value::Object(m) = serde_json::to_value(layer)? {
            merged.extend(m.into_iter().filter(|(_, v)| !v.is_null()));
        }
    }
    Ok(serde_json::from_value(serde_json::Value::Object(merged))?)
}

/// The effective settings: defaults < file < environment and flags (clap
/// has already put a flag over its environment twin).
pub fn effective<T: Serialize + DeserializeOwned + Default>(
    defaults: &T,
    file: Option<&Path>,
    cli: &T,
) -> anyhow::Result<T> {
    let from_file: T = match file {
        Some(p) => read_file(p)?,
        None => T::default(),
    };
    merge(&[defaults, &from_file, cli])
}

/// The effective settings as a TOML file that `--config` reads back.
pub fn to_toml<T: Serialize>(settings: &T) -> anyhow::Result<String> {
    Ok(toml::to_string(settings)?)
}

fn missing(key: &str) -> anyhow::Error {
    let env = format!("COFFER_{}", key.to_uppercase());
    usage(format!("`{key}` is not set: give --{}, {env} or `{key}` in the config file", key.replace('_', "-")))
}

impl MetaSettings {
    /// The TLS keys of the file layer.
    pub fn file_tls(&self) -> crate::security::FileTls {
        crate::security::FileTls {
            insecure: self.insecure,
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The address to bind.
    pub fn listen(&self) -> anyhow::Result<&str> {
        self.listen.as_deref().ok_or_else(|| missing("listen"))
    }

    /// The metadata node's configuration; `bound` is the address actually
    /// bound, advertised when `advertise` is not set.
    pub fn to_config(&self, bound: &str) -> anyhow::Result<MetaConfig> {
        let id = self.id.ok_or_else(|| missing("id"))?;
        let data = self.data.clone().ok_or_else(|| missing("data"))?;
        let advertise = self.advertise.clone().unwrap_or_else(|| bound.to_string());
        let mut c = MetaConfig::new(MetaId(id), data, advertise);
        // Whatever is unset keeps MetaConfig::new's value, which is also
        // what the defaults table holds.
        if let Some(v) = self.init {
            c.init = v;
        }
        c.join = self.join.clone().or(c.join);
        if let Some(v) = &self.site {
            c.site = v.clone();
        }
        if let Some(v) = self.snapshot_every {
            c.snapshot_every = v;
        }
        if let Some(v) = self.keep_logs {
            c.keep_logs = v;
        }
        if let Some(Dur(v)) = self.raft_heartbeat {
            c.raft_heartbeat = v;
        }
        if let Some(Dur(v)) = self.election_timeout {
            c.election_timeout = (v, v * 2);
        }
        if let Some(Dur(v)) = self.suspect_after {
            c.suspect_after = v;
        }
        if let Some(Dur(v)) = self.down_after {
            c.down_after = v;
        }
        if let Some(v) = self.rebuild_bandwidth {
            c.repair.bandwidth = v;
        }
        if let Some(v) = self.rebuild_parallelism {
            c.repair.parallelism = v.max(1);
        }
        if let Some(Dur(v)) = self.repair_tick {
            c.repair.tick = v.max(std::time::Duration::from_millis(10));
        }
        if let Some(Dur(v)) = self.gc_interval {
            c.gc_interval = (!v.is_zero()).then_some(v);
        }
        if let Some(v) = self.gc_rewrite_bandwidth {
            c.gc_rewrite_bandwidth = v;
        }
        if let Some(v) = self.store_cache_mib {
            c.store_cache_bytes = v.saturating_mul(1 << 20);
        }
        c.prices = coffer_meta::PriceConfig {
            per_gib_read: self.price_per_gib_read,
            per_gib_written: self.price_per_gib_written,
            per_gib_cross_site: self.price_per_gib_cross_site,
            per_node_hour: self.price_per_node_hour,
        };
        if let Some(path) = &self.admin_token_file {
            c.admin_token =
                Some(coffer_meta::AdminToken::from_file(path).map_err(|e| usage(format!("`admin_token_file`: {e}")))?);
        }
        c.validate().map_err(|e| usage(e.to_string()))?;
        Ok(c)
    }
}

impl StorageSettings {
    /// The TLS keys of the file layer.
    pub fn file_tls(&self) -> crate::security::FileTls {
        crate::security::FileTls {
            insecure: self.insecure,
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    pub fn listen(&self) -> anyhow::Result<&str> {
        self.listen.as_deref().ok_or_else(|| missing("listen"))
    }

    /// The storage node's configuration; `bound` as for `MetaSettings`.
    pub fn to_config(&self, bound: &str) -> anyhow::Result<StorageConfig> {
        let data = self.data.clone().ok_or_else(|| missing("data"))?;
        let site = self.site.as_deref().ok_or_else(|| missing("site"))?;
        let site = SiteId::new(site).map_err(|e| usage(format!("`site`: {e}")))?;
        let meta = self.meta.clone().filter(|m| !m.is_empty()).ok_or_else(|| missing("meta"))?;
        let advertise = self.advertise.clone().unwrap_or_else(|| bound.to_string());
        let mut c = StorageConfig::new(data, advertise, site, meta);
        c.capacity_bytes = self.capacity.or(c.capacity_bytes);
        if let Some(Dur(v)) = self.heartbeat_interval {
            c.heartbeat_interval = v;
        }
        if let Some(Dur(v)) = self.scrub_interval {
            c.scrub_interval = Some(v);
        }
        if let Some(v) = self.scrub_rate {
            c.scrub_rate = v;
        }
        if let Some(v) = &self.reserve {
            c.reserve = Some(Reserve::parse(v).map_err(|e| usage(format!("`reserve`: {e}")))?);
        }
        if let Some(Dur(v)) = self.orphan_age {
            c.orphan_age = v;
        }
        if let Some(Dur(v)) = self.orphan_interval {
            c.orphan_interval = Some(v);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct MetaCli {
        #[command(flatten)]
        s: MetaSettings,
    }

    #[derive(Parser, Debug)]
    struct StorageCli {
        #[command(flatten)]
        s: StorageSettings,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let err = parse_toml::<MetaSettings>("id = 1\ndown_afterr = \"5m\"\n").unwrap_err();
        assert!(err.contains("down_afterr"), "{err}");
        let f = file("listn = \"127.0.0.1:1\"\n");
        let err = read_file::<StorageSettings>(f.path()).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "exit 2");
        assert!(err.to_string().contains("`listn`"), "{err}");
    }

    #[test]
    fn a_bad_value_is_an_error_that_names_the_key() {
        for (text, key) in [
            ("down_after = \"ten minutes\"\n", "down_after"),
            ("id = \"one\"\n", "id"),
            ("site = \"a\"\nsnapshot_every = -3\n", "snapshot_every"),
            ("election_timeout = 500\n", "election_timeout"),
        ] {
            let err = parse_toml::<MetaSettings>(text).unwrap_err();
            assert!(err.starts_with(&format!("key `{key}`")), "{text:?}: {err}");
        }
        let err = parse_toml::<StorageSettings>("meta = \"a:1\"\n").unwrap_err();
        assert!(err.starts_with("key `meta`"), "{err}");
    }

    #[test]
    fn a_flag_overrides_the_file_and_the_file_the_defaults() {
        let f = file(
            "id = 3\ndata = \"/var/lib/coffer\"\nlisten = \"127.0.0.1:7400\"\ndown_after = \"5m\"\nsite = \"a\"\n",
        );
        let cli = MetaCli::try_parse_from(["x", "--down-after", "90s"]).unwrap();
        let s = effective(&meta_defaults(), Some(f.path()), &cli.s).unwrap();
        assert_eq!(s.down_after, Some(Dur(Duration::from_secs(90))), "the flag wins");
        assert_eq!(s.site.as_deref(), Some("a"), "the file wins over the default");
        assert_eq!(s.suspect_after, meta_defaults().suspect_after, "unset keys keep the default");
        let c = s.to_config("127.0.0.1:7400").unwrap();
        assert_eq!((c.id, c.down_after), (MetaId(3), Duration::from_secs(90)));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/coffer"));
    }

    #[test]
    fn the_store_cache_is_set_in_mib_and_a_tiny_one_is_refused() {
        let f = file("id = 3\ndata = \"/d\"\nlisten = \"127.0.0.1:7400\"\nstore_cache_mib = 64\n");
        let cli = MetaCli::try_parse_from(["x"]).unwrap();
        let s = effective(&meta_defaults(), Some(f.path()), &cli.s).unwrap();
        assert_eq!(s.to_config("127.0.0.1:7400").unwrap().store_cache_bytes, 64 << 20);
        let cli = MetaCli::try_parse_from(["x", "--store-cache-mib", "1"]).unwrap();
        let s = effective(&meta_defaults(), Some(f.path()), &cli.s).unwrap();
        let e = s.to_config("127.0.0.1:7400").unwrap_err().to_string();
        assert!(e.contains("--store-cache-mib"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        // Only this test sets COFFER_SCRUB_RATE, and no other test here
        // depends on the scrub rate.
        std::env::set_var("COFFER_SCRUB_RATE", "7");
        let cli = StorageCli::try_parse_from(["x"]);
        std::env::remove_var("COFFER_SCRUB_RATE");
        let cli = cli.unwrap();
        let f = file("scrub_rate = 100\nsite = \"b\"\n");
        let s = effective(&storage_defaults(), Some(f.path()), &cli.s).unwrap();
        assert_eq!(s.scrub_rate, Some(7));
        assert_eq!(s.site.as_deref(), Some("b"));
    }

    #[test]
    fn printed_settings_load_back_equal() {
        let cli = StorageCli::try_parse_from([
            "x",
            "--data",
            "/d",
            "--listen",
            "127.0.0.1:0",
            "--site",
            "a",
            "--meta",
            "h1:1,h2:2",
            "--heartbeat-interval",
            "250ms",
        ])
        .unwrap();
        let s = effective(&storage_defaults(), None, &cli.s).unwrap();
        let text = to_toml(&s).unwrap();
        assert!(text.contains("meta = [\"h1:1\", \"h2:2\"]"), "{text}");
        let back: StorageSettings = parse_toml(&text).unwrap();
        assert_eq!(back, s);

        let m = MetaCli::try_parse_from(["x", "--id", "2", "--data", "/m", "--listen", ":1", "--init"]).unwrap();
        let s = effective(&meta_defaults(), None, &m.s).unwrap();
        let text = to_toml(&s).unwrap();
        assert_eq!(parse_toml::<MetaSettings>(&text).unwrap(), s, "{text}");
        // Every key of the defaults table is printed.
        for key in ["site", "down_after", "suspect_after", "raft_heartbeat", "rebuild_parallelism", "init"] {
            assert!(text.contains(&format!("{key} = ")), "{key} missing from {text}");
        }
    }

    #[test]
    fn durations_print_in_a_unit_that_parses_back() {
        for ms in [250u64, 1500, 15_000, 600_000, 86_400_000, 0] {
            let d = Dur(Duration::from_millis(ms));
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
        assert_eq!(Dur(Duration::from_secs(600)).to_string(), "10m");
    }

    #[test]
    fn missing_required_keys_are_usage_errors() {
        let err = MetaSettings::default().to_config("x:1").unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some());
        assert!(err.to_string().contains("--id"), "{err}");
        let s = StorageSettings { data: Some("/d".into()), site: Some("a".into()), ..Default::default() };
        assert!(s.to_config("x:1").unwrap_err().to_string().contains("COFFER_META"));
    }
}
