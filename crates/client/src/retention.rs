//! Retention: which snapshots a keep policy keeps and why, and the calls that
//! forget and hold snapshots.
//!
//! `plan_forget` is a pure function of the snapshot list, the holds and the
//! time, so the rules are tested without a cluster. The rules follow restic:
//! per source (host + path), newest first, `--keep-last N` keeps the N newest,
//! each `--keep-hourly|daily|weekly|monthly|yearly N` keeps the newest
//! snapshot of each of the N most recent periods that have one, and
//! `--keep-tag T` keeps every snapshot tagged T. Periods are UTC; weeks start
//! on Monday. A snapshot held beyond now is always kept. The invariant: a
//! policy that keeps nothing is refused rather than forgetting a whole
//! source, and the metadata plane itself refuses to forget a held snapshot.

use std::collections::{BTreeMap, HashMap};

use coffer_proto::pb;
use coffer_types::time::civil_from_days;
use coffer_types::{SnapshotId, SnapshotRecord, Source};
use serde::Serialize;

use crate::repo::Repository;
use crate::ClientError;

/// The keep rules of `coffer forget`; zero means the rule is not used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// True when no rule keeps anything.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.tags.is_empty()
    }
}

/// What the policy decided for one snapshot.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub source: Source,
    pub time_ms: u64,
    pub keep: bool,
    /// Every rule that keeps it ("last", "daily 2026-11-20", "tag x", "held"),
    /// or why it goes.
    pub reasons: Vec<String>,
}

/// A period key and its label for one rule.
type Bucket = fn(u64) -> (i64, String);

fn hour_of(ms: u64) -> (i64, String) {
    let h = (ms / 3_600_000) as i64;
    let (y, m, d) = civil_from_days(h.div_euclid(24));
    (h, format!("{y:04}-{m:02}-{d:02}T{:02}", h.rem_euclid(24)))
}

fn day_of(ms: u64) -> (i64, String) {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = civil_from_days(days);
    (days, format!("{y:04}-{m:02}-{d:02}"))
}

fn week_of(ms: u64) -> (i64, String) {
    // 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on Monday.
    let days = (ms / 86_400_000) as i64;
    let week = (days + 3).div_euclid(7);
    let (y, m, d) = civil_from_days(week * 7 - 3);
    (week, format!("week of {y:04}-{m:02}-{d:02}"))
}

fn month_of(ms: u64) -> (i64, String) {
    let (y, m, _) = civil_from_days((ms / 86_400_000) as i64);
    (y * 12 + m as i64, format!("{y:04}-{m:02}"))
}

fn year_of(ms: u64) -> (i64, String) {
    let (y, _, _) = civil_from_days((ms / 86_400_000) as i64);
    (y, format!("{y:04}"))
}

/// Applies `policy` to `snaps`, per source. `holds` maps snapshot ids to the
/// end of their hold; one that ends after `now_ms` keeps its snapshot.
/// Decisions come newest first within each source, sources in order.
pub fn plan_forget(
    snaps: &[SnapshotRecord],
    policy: &KeepPolicy,
    holds: &HashMap<SnapshotId, u64>,
    now_ms: u64,
) -> Result<Vec<Decision>, ClientError> {
    if policy.is_empty() {
        return Err(ClientError::BadPolicy { reason: "no keep rule given; name snapshots to forget them".into() });
    }
    let mut by_source: BTreeMap<(String, String), Vec<&SnapshotRecord>> = BTreeMap::new();
    for s in snaps {
        by_source.entry((s.source.host.clone(), s.source.path.clone())).or_default().push(s);
    }
    let rules: [(&str, u32, Bucket); 5] = [
        ("hourly", policy.hourly, hour_of),
        ("daily", policy.daily, day_of),
        ("weekly", policy.weekly, week_of),
        ("monthly", policy.monthly, month_of),
        ("yearly", policy.yearly, year_of),
    ];
    let mut out = Vec::new();
    for (_, mut group) in by_source {
        group.sort_by_key(|s| std::cmp::Reverse((s.start_ms, s.end_ms, s.id)));
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); group.len()];
        for (i, r) in reasons.iter_mut().enumerate().take(policy.last as usize) {
            r.push(format!("last {}", i + 1));
        }
        for (name, count, bucket) in rules {
            let mut left = count;
            let mut last: Option<i64> = None;
            for (i, s) in group.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let (key, label) = bucket(s.start_ms);
                if last != Some(key) {
                    reasons[i].push(format!("{name} {label}"));
                    last = Some(key);
                    left -= 1;
                }
            }
        }
        for (i, s) in group.iter().enumerate() {
            for t in &policy.tags {
                if s.tags.contains(t) {
                    reasons[i].push(format!("tag {t}"));
                }
            }
            if let Some(until) = holds.get(&s.id).filter(|u| **u > now_ms) {
                reasons[i].push(format!("held until {until} ms"));
            }
        }
        for (s, why) in group.into_iter().zip(reasons) {
            let keep = !why.is_empty();
            out.push(Decision {
                id: s.id,
                source: s.source.clone(),
                time_ms: s.start_ms,
                keep,
                reasons: if keep { why } else { vec!["matches no keep rule".into()] },
            });
        }
    }
    Ok(out)
}

impl Repository {
    /// Every hold on this repository's snapshots, and the leader's clock.
    pub async fn holds(&self) -> Result<(HashMap<SnapshotId, u64>, u64), ClientError> {
        let req = pb::ListHoldsRequest { repo: self.name().to_string() };
        let resp = self
            .meta()
            .call_maintenance("ListHolds", |mut c| {
                let req = req.clone();
                async move { c.list_holds(req).await }
            })
            .await?;
        let mut out = HashMap::new();
        for h in resp.holds {
            let id = SnapshotId::from_slice(&h.snapshot_id)
                .map_err(|e| ClientError::BadResponse { what: "ListHolds", reason: e.to_string() })?;
            out.insert(id, h.until_ms);
        }
        Ok((out, resp.now_ms))
    }

    /// Holds `snapshot` until `until_ms` (0 clears the hold).
    pub async fn hold(&self, snapshot: SnapshotId, until_ms: u64) -> Result<(), ClientError> {
        let req = pb::HoldRequest { repo: self.name().to_string(), snapshot_id: snapshot.0.to_vec(), until_ms };
        self.meta()
            .call_maintenance("Hold", |mut c| {
                let req = req.clone();
                async move { c.hold(req).await }
            })
            .await?;
        Ok(())
    }

    /// Forgets `snapshots` in one Raft command: all of them, or (if one is
    /// held) none. Their data stays until garbage collection.
    pub async fn forget(&self, snapshots: &[SnapshotId]) -> Result<(), ClientError> {
        let req = pb::ForgetRequest {
            repo: self.name().to_string(),
            snapshot_ids: snapshots.iter().map(|s| s.0.to_vec()).collect(),
        };
        self.meta()
            .call_maintenance("Forget", |mut c| {
                let req = req.clone();
                async move { c.forget(req).await }
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use coffer_types::{BackupKind, ChunkId, PackId, RepoName, SnapshotStats};

    use super::*;

    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;
    /// 2026-11-02T00:00:00Z, a Monday.
    const MONDAY: u64 = 1_793_577_600_000;

    fn snap(n: u8, start_ms: u64, path: &str, tags: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            id: SnapshotId([n; 16]),
            repo: RepoName::new("r").unwrap(),
            source: Source { host: "h".into(), path: path.into() },
            kind: BackupKind::Incremental,
            parent: None,
            start_ms,
            end_ms: start_ms + 1,
            root: ChunkId([0; 32]),
            stats: SnapshotStats::default(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            refs_pack: PackId([0; 16]),
            refs_count: 0,
        }
    }

    fn kept(d: &[Decision]) -> Vec<u8> {
        let mut v: Vec<u8> = d.iter().filter(|d| d.keep).map(|d| d.id.0[0]).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn calendar_helpers_know_weeks_and_months() {
        assert_eq!(day_of(MONDAY).1, "2026-11-02");
        assert_eq!(week_of(MONDAY).0, week_of(MONDAY + 6 * DAY + 23 * HOUR).0);
        assert_ne!(week_of(MONDAY).0, week_of(MONDAY - 1).0);
        assert_eq!(week_of(MONDAY + 3 * DAY).1, "week of 2026-11-02");
        assert_eq!(month_of(MONDAY).1, "2026-11");
        assert_ne!(month_of(MONDAY).0, month_of(MONDAY - 2 * DAY).0);
        assert_eq!(year_of(MONDAY).1, "2026");
    }

    #[test]
    fn keep_rules_are_per_source_and_newest_first() {
        // Two snapshots a day for 10 days on /a, one on /b.
        let mut snaps = Vec::new();
        for d in 0..10u64 {
            snaps.push(snap((2 * d) as u8 + 1, MONDAY + d * DAY + HOUR, "/a", &[]));
            snaps.push(snap(
                (2 * d) as u8 + 2,
                MONDAY + d * DAY + 20 * HOUR,
                "/a",
                if d == 0 { &["keep"] } else { &[] },
            ));
        }
        snaps.push(snap(100, MONDAY, "/b", &[]));
        let holds = HashMap::new();

        let last = KeepPolicy { last: 3, ..Default::default() };
        let d = plan_forget(&snaps, &last, &holds, 0).unwrap();
        assert_eq!(kept(&d), vec![18, 19, 20, 100]);

        // Daily keeps the newest of each of the 4 newest days.
        let daily = KeepPolicy { daily: 4, ..Default::default() };
        assert_eq!(kept(&plan_forget(&snaps, &daily, &holds, 0).unwrap()), vec![14, 16, 18, 20, 100]);

        // Weekly over two calendar weeks (days 0-6 and 7-9).
        let weekly = KeepPolicy { weekly: 5, ..Default::default() };
        assert_eq!(kept(&plan_forget(&snaps, &weekly, &holds, 0).unwrap()), vec![14, 20, 100]);

        let tag = KeepPolicy { last: 1, tags: vec!["keep".into()], ..Default::default() };
        let d = plan_forget(&snaps, &tag, &holds, 0).unwrap();
        assert_eq!(kept(&d), vec![2, 20, 100]);
        let why = d.iter().find(|x| x.id.0[0] == 2).unwrap();
        assert_eq!(why.reasons, vec!["tag keep".to_string()]);
        let gone = d.iter().find(|x| x.id.0[0] == 1).unwrap();
        assert!(!gone.keep && gone.reasons[0].contains("no keep rule"));
    }

    #[test]
    fn holds_keep_until_they_expire_and_an_empty_policy_is_refused() {
        let snaps = vec![snap(1, MONDAY, "/a", &[]), snap(2, MONDAY + DAY, "/a", &[])];
        let holds = HashMap::from([(SnapshotId([1; 16]), MONDAY + 10 * DAY)]);
        let p = KeepPolicy { last: 1, ..Default::default() };
        assert_eq!(kept(&plan_forget(&snaps, &p, &holds, MONDAY).unwrap()), vec![1, 2]);
        assert_eq!(kept(&plan_forget(&snaps, &p, &holds, MONDAY + 10 * DAY).unwrap()), vec![2]);
        assert!(matches!(plan_forget(&snaps, &KeepPolicy::default(), &holds, 0), Err(ClientError::BadPolicy { .. })));
    }
}
