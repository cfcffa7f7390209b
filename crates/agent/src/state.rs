//! The agent's memory across restarts: per source, the schedule slots each
//! kind last consumed, the run in progress, the last run and the counters,
//! one JSON file per source under `STATE_DIR/sources/`.
//!
//! The invariant: a file is replaced atomically (written beside, fsynced,
//! renamed, directory fsynced), and a run is recorded as started (with the
//! slots it consumes) before anything of it happens. So a SIGKILL at any
//! point leaves either the state before the run or a run marked in
//! progress; at the next start an in-progress run whose snapshot never
//! committed is run again once (it was missed), one whose snapshot did
//! commit is recorded as done (never run twice), and the slots it consumed
//! stay consumed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::schedule::KindKey;

/// The outcome of a finished run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Start, Unix ms.
    pub time_ms: u64,
    pub end_ms: u64,
    pub kind: String,
    pub snapshot_id: Option<String>,
    /// `ok` or `failed`.
    pub result: String,
    pub error: Option<String>,
    pub duration_s: f64,
    /// Plaintext bytes of the snapshot (scanned).
    pub bytes: u64,
    /// Plaintext bytes read from the source in this run.
    pub bytes_read: u64,
    /// Of those, bytes of changed files matched against the previous
    /// snapshot's chunks and kept without being cut again (a grown log's
    /// old content); absent from the state files of older agents.
    #[serde(default)]
    pub bytes_verified: u64,
    /// What started it: `schedule`, `trigger`, `change`, `realtime`,
    /// `catch-up`.
    pub reason: String,
}

/// The outcome of a scheduled restore drill.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillRun {
    /// Start, Unix ms.
    pub time_ms: u64,
    /// The snapshot drilled (the source's newest at the time).
    pub snapshot_id: Option<String>,
    /// Every checked file matched and the verification command passed.
    pub verified: bool,
    /// The measured recovery time: restore, verification and command.
    pub rto_s: f64,
    pub files_checked: u64,
    /// Why not verified (or why the drill could not run).
    pub reason: String,
}

/// A run that was started and has not been recorded as finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    pub started_ms: u64,
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// Per kind, the schedule slot (Unix seconds) last consumed.
    #[serde(default)]
    pub slots: BTreeMap<KindKey, i64>,
    pub in_progress: Option<InProgress>,
    pub last_run: Option<RunRecord>,
    /// The end (Unix ms) of the newest snapshot this agent committed.
    pub newest_ok_end_ms: Option<u64>,
    pub newest_snapshot: Option<String>,
    #[serde(default)]
    pub runs_ok: u64,
    #[serde(default)]
    pub runs_failed: u64,
    /// Slots that fired while a run of the source was still going.
    #[serde(default)]
    pub runs_skipped: u64,
    /// Runs started at start-up for work missed while the agent was down.
    #[serde(default)]
    pub catch_ups: u64,
    /// The last retention outcome (`forgot N`, or why it was skipped).
    pub retention: Option<String>,
    /// The drill schedule's slot (Unix seconds) last consumed. A drill is
    /// not marked in progress: one cut short by a stop is not run again,
    /// the next slot drills anew.
    #[serde(default)]
    pub drill_slot: Option<i64>,
    #[serde(default)]
    pub last_drill: Option<DrillRun>,
    #[serde(default)]
    pub drills_ok: u64,
    /// Drills that did not verify, or could not run.
    #[serde(default)]
    pub drills_failed: u64,
}

impl serde::Serialize for KindKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for KindKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<coffer_types::BackupKind>().map(KindKey::of).map_err(serde::de::Error::custom)
    }
}

/// The directory of the per-source files.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) `root/sources`.
    pub fn open(root: &Path) -> std::io::Result<StateDir> {
        let dir = root.join("sources");
        fs::create_dir_all(&dir)?;
        Ok(StateDir { dir })
    }

    fn file(&self, source: &str) -> PathBuf {
        self.dir.join(format!("{source}.json"))
    }

    /// The state of `source`; a missing file is a new source. A file that
    /// does not parse is an error naming it (the operator decides; the
    /// agent never silently forgets what ran).
    pub fn load(&self, source: &str) -> std::io::Result<SourceState> {
        let path = self.file(source);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SourceState::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the state of `source` atomically and durably.
    pub fn save(&self, source: &str, state: &SourceState) -> std::io::Result<()> {
        let path = self.file(source);
        let tmp = self.dir.join(format!(".{source}.json.tmp"));
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_new_source_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        assert_eq!(sd.load("a").unwrap(), SourceState::default());
        let mut s = SourceState::default();
        s.slots.insert(KindKey::Full, 1_800_000_000);
        s.in_progress = Some(InProgress { started_ms: 5, kind: "full".into(), reason: "schedule".into() });
        s.runs_ok = 3;
        s.drill_slot = Some(1_800_000_100);
        s.last_drill = Some(DrillRun { time_ms: 7, verified: true, rto_s: 1.5, ..Default::default() });
        sd.save("a", &s).unwrap();
        assert_eq!(sd.load("a").unwrap(), s);
        fs::write(dir.path().join("sources/b.json"), b"{not json").unwrap();
        assert!(sd.load("b").is_err());
    }
}
