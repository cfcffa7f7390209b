//! Configuration of a metadata node, validated at start-up.

use std::path::PathBuf;
use std::time::Duration;

use coffer_types::MetaId;

use crate::MetaError;

#[derive(Clone, Debug)]
pub struct MetaConfig {
    pub id: MetaId,
    pub data_dir: PathBuf,
    /// The address other nodes and clients use to reach this one.
    pub advertise: String,
    /// The failure domain this node runs in.
    pub site: String,
    /// Bootstrap a new cluster with this node as its only voter. Ignored
    /// when the node already holds Raft state, so restarting with the same
    /// flags never re-initialises.
    pub init: bool,
    /// Join a running cluster through this member (any member: followers
    /// point to the leader). Ignored when the node is already a member.
    pub join: Option<String>,
    /// Raft leader heartbeat. Defaults suit voters tens of milliseconds apart.
    pub raft_heartbeat: Duration,
    /// Election timeout range; a follower waits a random time within it.
    pub election_timeout: (Duration, Duration),
    /// A storage node not heard from for this long is `suspect`.
    pub suspect_after: Duration,
    /// A storage node not heard from for this long is `down`.
    pub down_after: Duration,
    /// How often a storage node's last-seen time is written through Raft
    /// (liveness itself is tracked in memory on the leader).
    pub persist_seen_every: Duration,
    /// Build a snapshot and purge the log after this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so that a briefly lagging
    /// follower catches up from the log rather than by snapshot.
    pub keep_logs: u64,
    /// How the leader rebuilds lost shards.
    pub repair: crate::repair::RepairConfig,
    /// The cluster admin token (`--admin-token-file`); without one only an
    /// admin certificate administers the cluster.
    pub admin_token: Option<crate::AdminToken>,
    /// Transport security for everything this node serves and calls (Raft,
    /// joins, shard calls): the process default unless set.
    pub security: coffer_rpc::Security,
    /// Time between the leader's garbage-collection runs (`--gc-interval`,
    /// `gc_interval`); `None`: only runs asked for with `coffer gc`.
    pub gc_interval: Option<Duration>,
    /// Shard bytes per second the collector writes when it rewrites mostly
    /// dead packs (`--gc-rewrite-bandwidth`, `gc_rewrite_bandwidth`).
    pub gc_rewrite_bandwidth: u64,
    /// Prices for the recovery-cost figure of `coffer report` (issue 14),
    /// answered with the disaster-recovery records (`ListDr`) so that every
    /// reader computes costs with the cluster's prices, not its own.
    pub prices: PriceConfig,
    /// Bytes of the store's block cache (`--store-cache-mib`,
    /// `store_cache_mib`). Memtables (up to the write buffer) and the
    /// tables' filters and indexes come on top; `make scale` measures the
    /// whole.
    pub store_cache_bytes: u64,
    /// Test failpoints armed through `DATA/failpoint` (`crate::failpoint`);
    /// off in production, set only by `COFFER_FAILPOINTS=1`.
    pub failpoints: bool,
}

/// The cluster's prices, in one currency unit; unset ones count as 0, and
/// with none set the report shows no cost. Set them alike on every metadata
/// node: the leader's answer is the one readers get.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PriceConfig {
    pub per_gib_read: Option<f64>,
    pub per_gib_written: Option<f64>,
    pub per_gib_cross_site: Option<f64>,
    pub per_node_hour: Option<f64>,
}

impl PriceConfig {
    fn all(&self) -> [(&'static str, Option<f64>); 4] {
        [
            ("price_per_gib_read", self.per_gib_read),
            ("price_per_gib_written", self.per_gib_written),
            ("price_per_gib_cross_site", self.per_gib_cross_site),
            ("price_per_node_hour", self.per_node_hour),
        ]
    }

    /// Whether any price is set.
    pub fn is_set(&self) -> bool {
        self.all().iter().any(|(_, v)| v.is_some())
    }

    /// Every price must be a finite number of at least 0.
    pub fn validate(&self) -> Result<(), MetaError> {
        for (key, v) in self.all() {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(MetaError::Config(format!("`{key}` {v}: a price must be a finite number >= 0")));
                }
            }
        }
        Ok(())
    }
}

/// Pack rewrites share the storage nodes with backups and rebuilds: a
/// fraction of a node's disk bandwidth, so they never crowd either out.
pub const DEFAULT_GC_REWRITE_BANDWIDTH: u64 = 64 << 20;

/// Garbage collection runs hourly unless configured otherwise: often enough
/// that forgotten snapshots free their space the same day, rarely enough
/// that reading every reference list stays a small share of the leader's work.
/// The block cache of a metadata node's store: a bounded share of a node's
/// memory; reads past it are served from the kernel's page cache.
pub const DEFAULT_STORE_CACHE_BYTES: u64 = 128 << 20;

/// Below this the store would read its index blocks from disk on most reads.
pub const MIN_STORE_CACHE_BYTES: u64 = 8 << 20;

pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(3600);

impl MetaConfig {
    pub fn new(id: MetaId, data_dir: PathBuf, advertise: String) -> Self {
        Self {
            id,
            data_dir,
            advertise,
            site: "default".into(),
            init: false,
            join: None,
            raft_heartbeat: Duration::from_millis(250),
            election_timeout: (Duration::from_millis(1500), Duration::from_millis(3000)),
            suspect_after: Duration::from_secs(15),
            down_after: Duration::from_secs(600),
            persist_seen_every: Duration::from_secs(30),
            snapshot_every: 20_000,
            keep_logs: 1_000,
            repair: crate::repair::RepairConfig::default(),
            admin_token: None,
            security: coffer_rpc::tls::process_default(),
            gc_interval: Some(DEFAULT_GC_INTERVAL),
            gc_rewrite_bandwidth: DEFAULT_GC_REWRITE_BANDWIDTH,
            prices: PriceConfig::default(),
            store_cache_bytes: DEFAULT_STORE_CACHE_BYTES,
            failpoints: false,
        }
    }

    /// What the membership records of this node.
    pub fn info(&self) -> crate::types::MetaNodeInfo {
        crate::types::MetaNodeInfo { addr: self.advertise.clone(), site: self.site.clone() }
    }

    pub fn validate(&self) -> Result<(), MetaError> {
        if self.id.0 == 0 {
            return Err(MetaError::Config("meta node id must be at least 1".into()));
        }
        if self.election_timeout.0 <= self.raft_heartbeat * 2 || self.election_timeout.1 <= self.election_timeout.0 {
            return Err(MetaError::Config(
                "election timeout must exceed twice the heartbeat, and its maximum its minimum".into(),
            ));
        }
        if self.init && self.join.is_some() {
            return Err(MetaError::Config("--init and --join exclude each other".into()));
        }
        if self.gc_rewrite_bandwidth == 0 {
            return Err(MetaError::Config("--gc-rewrite-bandwidth must be at least 1 byte per second".into()));
        }
        if self.store_cache_bytes < MIN_STORE_CACHE_BYTES {
            return Err(MetaError::Config(format!(
                "--store-cache-mib must be at least {} MiB",
                MIN_STORE_CACHE_BYTES >> 20
            )));
        }
        if self.snapshot_every == 0 {
            return Err(MetaError::Config("--snapshot-every must be at least 1".into()));
        }
        self.prices.validate()?;
        if self.down_after < self.suspect_after {
            return Err(MetaError::Config("--down-after must not be shorter than --suspect-after".into()));
        }
        // Storage nodes refuse a slower rebuild (it would stall their shared
        // rate limiter), so every rebuild would fail.
        let min = coffer_proto::limits::MIN_REBUILD_BANDWIDTH;
        if self.repair.bandwidth != 0 && self.repair.bandwidth < min {
            return Err(MetaError::Config(format!(
                "--rebuild-bandwidth {} is below the slowest rebuild a storage node accepts, {min} bytes/s (0: unlimited)",
                self.repair.bandwidth
            )));
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self) -> Result<openraft::Config, MetaError> {
        let c = openraft::Config {
            cluster_name: "coffer".into(),
            heartbeat_interval: self.raft_heartbeat.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            // Large catalogs make large snapshots: give their transfer time.
            install_snapshot_timeout: 60_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            // Each append must travel within one heartbeat interval.
            max_payload_entries: 16,
            ..Default::default()
        };
        c.validate().map_err(|e| MetaError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_bandwidth_storage_nodes_refuse_is_refused_at_start() {
        let mut c = MetaConfig::new(MetaId(1), PathBuf::from("/nonexistent"), "127.0.0.1:1".into());
        for ok in [0, coffer_proto::limits::MIN_REBUILD_BANDWIDTH, 100 << 20] {
            c.repair.bandwidth = ok;
            assert!(c.validate().is_ok(), "{ok}");
        }
        c.repair.bandwidth = 1000;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--rebuild-bandwidth 1000"), "{e}");
    }

    #[test]
    fn prices_must_be_finite_and_not_negative() {
        let mut c = MetaConfig::new(MetaId(1), PathBuf::from("/nonexistent"), "127.0.0.1:1".into());
        assert!(!c.prices.is_set() && c.validate().is_ok());
        c.prices.per_gib_read = Some(0.02);
        assert!(c.prices.is_set() && c.validate().is_ok());
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            c.prices.per_node_hour = Some(bad);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("price_per_node_hour"), "{e}");
        }
    }
}
