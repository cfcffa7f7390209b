//! Fixtures shared by the state machine's unit tests: a temporary tree,
//! applying one command as its own committed batch, a backup session, and a
//! snapshot record.

use coffer_types::{
    BackupKind, ChunkId, PackId, RepoName, SessionId, SessionRecord, SnapshotId, SnapshotRecord, SnapshotStats, Source,
};

use crate::apply::apply;
use crate::command::{Command, CommandResult};
use crate::kv::Txn;

/// An empty state-machine tree in a temporary database.
pub(crate) fn tree() -> crate::store::Tree {
    crate::store::Db::temporary().state_tree().unwrap()
}

/// Applies `cmd` and commits it, as one Raft entry would be.
pub(crate) fn run(t: &crate::store::Tree, cmd: Command) -> CommandResult {
    let mut txn = Txn::new(t);
    let r = apply(&mut txn, cmd).unwrap();
    txn.commit().unwrap();
    r
}

/// Begins session `[id; 16]` of `repo` at time 1, leased until
/// `lease_until_ms`; commits stamped before then may use it.
pub(crate) fn begin(t: &crate::store::Tree, repo: &RepoName, id: u8, lease_until_ms: u64) -> SessionId {
    let session = SessionRecord { id: SessionId([id; 16]), repo: repo.clone(), started_ms: 1, lease_until_ms };
    assert_eq!(run(t, Command::BeginSession { session }), CommandResult::Ok);
    SessionId([id; 16])
}

/// A full snapshot of `repo` with id `[id; 16]`, root `[9; 32]` and refs
/// pack `[4; 16]`.
pub(crate) fn snapshot(id: u8, repo: RepoName) -> SnapshotRecord {
    SnapshotRecord {
        id: SnapshotId([id; 16]),
        repo,
        source: Source { host: "h".into(), path: "/p".into() },
        kind: BackupKind::Full,
        parent: None,
        start_ms: 1,
        end_ms: 2,
        root: ChunkId([9; 32]),
        stats: SnapshotStats::default(),
        tags: vec![],
        refs_pack: PackId([4; 16]),
        refs_count: 1,
    }
}

/// Writes a record straight into the tree (no command), through `Txn` so
/// that the secondary indexes are kept as any write keeps them.
pub(crate) fn put<T: serde::Serialize>(t: &crate::store::Tree, key: Vec<u8>, value: &T) {
    let mut txn = Txn::new(t);
    txn.put(key, value).unwrap();
    txn.commit().unwrap();
}
