//! Choosing snapshots: what "latest" and an id prefix mean, and which
//! snapshot an incremental or differential backup builds on.
//!
//! These are pure functions over a snapshot list so that the rules are tested
//! without a cluster. The rule they keep: a spec names at most one snapshot;
//! a prefix that fits several is an error listing them, never a guess.

use coffer_types::{BackupKind, SnapshotId, SnapshotRecord, Source};

use crate::ClientError;

/// The word that names the newest snapshot.
pub const LATEST: &str = "latest";

/// Orders snapshots by time, newest last; the id breaks ties so that the
/// order is total.
fn newest<'a>(snaps: impl Iterator<Item = &'a SnapshotRecord>) -> Option<&'a SnapshotRecord> {
    snaps.max_by_key(|s| (s.start_ms, s.end_ms, s.id))
}

/// Resolves `spec`: `latest` is the newest snapshot (of `source` when given),
/// anything else a case-insensitive hex prefix of a snapshot id that must
/// match exactly one snapshot.
pub fn select_snapshot<'a>(
    snaps: &'a [SnapshotRecord],
    spec: &str,
    source: Option<&Source>,
) -> Result<&'a SnapshotRecord, ClientError> {
    let not_found = || ClientError::SnapshotNotFound { spec: spec.to_string() };
    let of_source = |s: &&SnapshotRecord| source.is_none_or(|src| s.source == *src);
    let spec_trim = spec.trim();
    if spec_trim.eq_ignore_ascii_case(LATEST) {
        return newest(snaps.iter().filter(of_source)).ok_or_else(not_found);
    }
    let prefix = spec_trim.to_ascii_lowercase();
    if prefix.is_empty() || prefix.len() > SnapshotId::LEN * 2 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let matches: Vec<&SnapshotRecord> =
        snaps.iter().filter(of_source).filter(|s| s.id.to_hex().starts_with(&prefix)).collect();
    match matches.as_slice() {
        [] => Err(not_found()),
        [one] => Ok(one),
        many => Err(ClientError::AmbiguousSnapshot {
            spec: spec.to_string(),
            candidates: many.iter().map(|s| s.id.short()).collect(),
        }),
    }
}

/// The parent a backup of `source` of kind `kind` builds on: the newest
/// snapshot of the same source for an incremental, the newest full one for a
/// differential, none for a full backup.
pub fn parent_for<'a>(snaps: &'a [SnapshotRecord], source: &Source, kind: BackupKind) -> Option<&'a SnapshotRecord> {
    let same = snaps.iter().filter(|s| s.source == *source);
    match kind {
        BackupKind::Full => None,
        BackupKind::Incremental => newest(same),
        BackupKind::Differential => newest(same.filter(|s| s.kind == BackupKind::Full)),
    }
}

#[cfg(test)]
mod tests {
    use coffer_types::{ChunkId, PackId, RepoName, SnapshotStats};

    use super::*;

    fn snap(id_first: u8, start_ms: u64, path: &str, kind: BackupKind) -> SnapshotRecord {
        let mut id = [0x11u8; 16];
        id[0] = id_first;
        SnapshotRecord {
            id: SnapshotId(id),
            repo: RepoName::new("r").unwrap(),
            source: Source { host: "h".into(), path: path.into() },
            kind,
            parent: None,
            start_ms,
            end_ms: start_ms + 1,
            root: ChunkId([0; 32]),
            stats: SnapshotStats::default(),
            tags: vec![],
            refs_pack: PackId([0; 16]),
            refs_count: 0,
        }
    }

    fn list() -> Vec<SnapshotRecord> {
        vec![
            snap(0xab, 10, "/a", BackupKind::Full),
            snap(0xac, 20, "/b", BackupKind::Full),
            snap(0x12, 30, "/a", BackupKind::Incremental),
            snap(0xf0, 5, "/a", BackupKind::Full),
        ]
    }

    #[test]
    fn latest_is_the_newest_overall_or_of_a_source() {
        let l = list();
        assert_eq!(select_snapshot(&l, "latest", None).unwrap().start_ms, 30);
        assert_eq!(select_snapshot(&l, "LATEST", None).unwrap().start_ms, 30);
        let b = Source { host: "h".into(), path: "/b".into() };
        assert_eq!(select_snapshot(&l, "latest", Some(&b)).unwrap().start_ms, 20);
        let none = Source { host: "other".into(), path: "/b".into() };
        assert!(matches!(select_snapshot(&l, "latest", Some(&none)), Err(ClientError::SnapshotNotFound { .. })));
        assert!(matches!(select_snapshot(&[], "latest", None), Err(ClientError::SnapshotNotFound { .. })));
    }

    #[test]
    fn prefixes_must_be_unique() {
        let l = list();
        assert_eq!(select_snapshot(&l, "ab", None).unwrap().start_ms, 10);
        assert_eq!(select_snapshot(&l, "AC1", None).unwrap().start_ms, 20);
        assert_eq!(select_snapshot(&l, &l[2].id.to_hex(), None).unwrap().start_ms, 30);
        match select_snapshot(&l, "a", None) {
            Err(ClientError::AmbiguousSnapshot { candidates, .. }) => assert_eq!(candidates.len(), 2),
            other => panic!("expected ambiguity, got {other:?}"),
        }
        for bad in ["", "zz", "99", "ab11111111111111111111111111111111"] {
            assert!(matches!(select_snapshot(&l, bad, None), Err(ClientError::SnapshotNotFound { .. })), "{bad}");
        }
    }

    #[test]
    fn parents_follow_the_backup_kind() {
        let l = list();
        let a = Source { host: "h".into(), path: "/a".into() };
        assert!(parent_for(&l, &a, BackupKind::Full).is_none());
        assert_eq!(parent_for(&l, &a, BackupKind::Incremental).unwrap().start_ms, 30);
        assert_eq!(parent_for(&l, &a, BackupKind::Differential).unwrap().start_ms, 10);
        let new = Source { host: "h".into(), path: "/new".into() };
        assert!(parent_for(&l, &new, BackupKind::Incremental).is_none());
    }
}
