//! Repositories from the agent's side: creating one (a fresh key wrapped in a
//! password key slot) and opening one (finding the slot the password opens).
//!
//! The invariant kept here: the repository key never leaves the agent. The
//! catalog only ever receives password-wrapped key slots, and a `Repository`
//! holds the unwrapped key in memory for the backup and restore pipelines.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use coffer_pack::{KdfParams, PackError, RepoKey};
use coffer_proto::pb;
use coffer_types::{ErasureParams, RepoName, RepoRecord, SnapshotRecord, Source};
use tonic::Code;

use crate::select::select_snapshot;
use crate::ClientError;
use coffer_rpc::{MetaClient, RpcError};

/// Milliseconds since the Unix epoch, as the agent stamps its records.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Creates repository `name` with erasure policy `params` and a new key,
/// wrapped under `password` in the repository's first key slot.
pub async fn create_repo(
    meta: &MetaClient,
    name: &RepoName,
    params: ErasureParams,
    password: &[u8],
) -> Result<(), ClientError> {
    create_repo_with(meta, name, params, None, password).await
}

/// Like [`create_repo`], and sets the fewest placed shards a new pack may be
/// committed with while nodes are down (`None`: the catalog's default, k).
pub async fn create_repo_with(
    meta: &MetaClient,
    name: &RepoName,
    params: ErasureParams,
    min_shards: Option<u32>,
    password: &[u8],
) -> Result<(), ClientError> {
    if let Some(n) = min_shards {
        params.check_min_shards(n).map_err(|e| ClientError::task("create repository", e))?;
    }
    let key = RepoKey::generate();
    // Argon2 is deliberately slow; keep it off the async worker threads.
    let slot = {
        let pw = password.to_vec();
        let created_ms = now_ms();
        tokio::task::spawn_blocking(move || key.wrap_at(&pw, KdfParams::default(), created_ms))
            .await
            .map_err(|e| ClientError::task("wrap key", e))??
    };
    let record = RepoRecord { name: name.clone(), params, key_slots: vec![slot], created_ms: now_ms() };
    let req = pb::CreateRepoRequest { repo: Some(pb::Repo::from(&record)), min_shards: min_shards.unwrap_or(0) };
    meta.call("CreateRepo", |mut c| {
        let req = req.clone();
        async move { c.create_repo(req).await }
    })
    .await
    .map_err(|e| match e.code() {
        Some(Code::AlreadyExists) => ClientError::RepoExists { repo: name.clone() },
        _ => ClientError::Conn(e),
    })?;
    Ok(())
}

/// Fetches the record of repository `name` from the catalog.
pub(crate) async fn get_repo(meta: &MetaClient, name: &RepoName) -> Result<RepoRecord, ClientError> {
    let req = pb::GetRepoRequest { name: name.to_string() };
    let repo = meta
        .call("GetRepo", |mut c| {
            let req = req.clone();
            async move { c.get_repo(req).await }
        })
        .await
        .map_err(|e| match e.code() {
            Some(Code::NotFound) => ClientError::RepoNotFound { repo: name.clone() },
            _ => ClientError::Conn(e),
        })?;
    RepoRecord::try_from(repo).map_err(|e| ClientError::BadResponse { what: "GetRepo", reason: e.to_string() })
}

/// Opens repository `name`: fetches its record and unwraps its key with
/// `password`, trying each key slot in turn.
pub async fn open_repo(meta: Arc<MetaClient>, name: &RepoName, password: &[u8]) -> Result<Repository, ClientError> {
    let record = get_repo(&meta, name).await?;
    let slots = record.key_slots.clone();
    let (key, _) = unwrap_slots(name, slots, password).await?;
    Ok(Repository { meta, record, key: Arc::new(key), progress: None, site: None })
}

/// Unwraps the keyring from whichever of `slots` `password` opens, off the
/// async threads, and says which slot that was.
pub(crate) async fn unwrap_slots(
    name: &RepoName,
    slots: Vec<Vec<u8>>,
    password: &[u8],
) -> Result<(RepoKey, usize), ClientError> {
    let pw = password.to_vec();
    tokio::task::spawn_blocking(move || unwrap_any(&slots, &pw))
        .await
        .map_err(|e| ClientError::task("unwrap key", e))?
        .map_err(|e| match e {
            None => ClientError::WrongPassword { repo: name.clone() },
            Some(reason) => ClientError::BadKeySlot { repo: name.clone(), reason },
        })
}

/// Tries every slot. `Err(None)` means at least one slot was well formed and
/// the password opened none; `Err(Some(reason))` that no slot was readable.
fn unwrap_any(slots: &[Vec<u8>], password: &[u8]) -> Result<(RepoKey, usize), Option<String>> {
    let mut wrong_password = false;
    let mut last_problem = String::from("the repository has no key slots");
    for (i, slot) in slots.iter().enumerate() {
        match RepoKey::unwrap(slot, password) {
            Ok(key) => return Ok((key, i)),
            Err(PackError::WrongPassword) => wrong_password = true,
            Err(e) => last_problem = format!("slot {i}: {e}"),
        }
    }
    Err(if wrong_password { None } else { Some(last_problem) })
}

/// An open repository: the catalog connection, the repository's record and
/// its unwrapped key. Backups and restores are methods on it.
#[derive(Debug, Clone)]
pub struct Repository {
    pub(crate) meta: Arc<MetaClient>,
    pub(crate) record: RepoRecord,
    pub(crate) key: Arc<RepoKey>,
    /// Where restores, checks and drills on this repository count their
    /// progress (`work`), if anywhere.
    pub(crate) progress: Option<Arc<crate::work::Work>>,
    /// The site this client runs in, if known: restores count the shard
    /// bytes they read from other sites (`RestoreSummary.bytes_cross_site`).
    pub(crate) site: Option<String>,
}

impl Repository {
    /// Assembles a repository from parts already fetched and unwrapped, for
    /// embedders that keep the key themselves.
    pub fn from_parts(meta: Arc<MetaClient>, record: RepoRecord, key: RepoKey) -> Self {
        Repository { meta, record, key: Arc::new(key), progress: None, site: None }
    }

    /// This repository with `work` counting the progress of its restores,
    /// checks and drills (see `work`).
    pub fn with_progress(mut self, work: Arc<crate::work::Work>) -> Self {
        self.progress = Some(work);
        self
    }

    /// Names the site this client runs in (`--site`, `COFFER_SITE`); unset,
    /// a restore counts as in the site it read the most from.
    pub fn with_site(mut self, site: Option<String>) -> Self {
        self.site = site;
        self
    }

    pub fn name(&self) -> &RepoName {
        &self.record.name
    }

    pub fn record(&self) -> &RepoRecord {
        &self.record
    }

    pub fn params(&self) -> ErasureParams {
        self.record.params
    }

    pub fn meta(&self) -> &Arc<MetaClient> {
        &self.meta
    }

    pub fn key(&self) -> &RepoKey {
        &self.key
    }

    /// Every committed snapshot of the repository, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>, ClientError> {
        list_snapshots(&self.meta, self.name()).await
    }

    /// Resolves `spec` ("latest" or a unique hex prefix of a snapshot id).
    pub async fn find_snapshot(&self, spec: &str) -> Result<SnapshotRecord, ClientError> {
        self.find_snapshot_of(spec, None).await
    }

    /// Like `find_snapshot`, restricted to the snapshots of `source`.
    pub async fn find_snapshot_of(&self, spec: &str, source: Option<&Source>) -> Result<SnapshotRecord, ClientError> {
        let snaps = self.snapshots().await?;
        select_snapshot(&snaps, spec, source).cloned()
    }
}

/// Lists the snapshots of `repo` a page at a time, validating every record;
/// in time order (start, then end).
pub async fn list_snapshots(meta: &MetaClient, repo: &RepoName) -> Result<Vec<SnapshotRecord>, ClientError> {
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let req = pb::ListSnapshotsRequest { repo: repo.to_string(), page_size: 0, page_token: token.clone() };
        let resp = meta
            .call("ListSnapshots", |mut c| {
                let req = req.clone();
                async move { c.list_snapshots(req).await }
            })
            .await
            .map_err(|e: RpcError| match e.code() {
                Some(Code::NotFound) => ClientError::RepoNotFound { repo: repo.clone() },
                _ => ClientError::Conn(e),
            })?;
        let page = resp.snapshots.len();
        for s in resp.snapshots {
            out.push(
                SnapshotRecord::try_from(s)
                    .map_err(|e| ClientError::BadResponse { what: "ListSnapshots", reason: e.to_string() })?,
            );
        }
        if resp.next.is_empty() {
            break;
        }
        if page == 0 || resp.next <= token {
            return Err(ClientError::BadResponse {
                what: "ListSnapshots",
                reason: "the listing's cursor does not advance".into(),
            });
        }
        token = resp.next;
    }
    out.sort_by_key(|s| (s.start_ms, s.end_ms));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 }
    }

    #[test]
    fn the_password_picks_its_slot() {
        let key = RepoKey::generate();
        let probe = key.chunk_id(b"probe");
        let slots = vec![key.wrap_with(b"one", cheap()).unwrap(), key.wrap_with(b"two", cheap()).unwrap()];
        let (opened, index) = unwrap_any(&slots, b"two").unwrap();
        assert_eq!(opened.chunk_id(b"probe"), probe);
        assert_eq!(index, 1);
        assert_eq!(unwrap_any(&slots, b"three").err(), Some(None));
    }

    #[test]
    fn unreadable_slots_are_not_a_wrong_password() {
        assert!(matches!(unwrap_any(&[], b"pw"), Err(Some(_))));
        assert!(matches!(unwrap_any(&[vec![1, 2, 3]], b"pw"), Err(Some(_))));
        // One good slot among garbage still opens.
        let key = RepoKey::generate();
        let slots = vec![vec![0u8; 5], key.wrap_with(b"pw", cheap()).unwrap()];
        assert!(unwrap_any(&slots, b"pw").is_ok());
    }
}
