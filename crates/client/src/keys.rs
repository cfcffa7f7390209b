//! Key slots from the agent's side: listing them, adding and removing
//! passwords, and rotating the data-encryption key (a new epoch).
//!
//! ```text
//!   GetKeySlots ──► (slots, version) ──unwrap with a password──► keyring
//!        add:    slots + wrap(new password)
//!        remove: slots − the named one (never the last)
//!        rotate: keyring.rotate(), then every slot resealed with it
//!   SetKeySlots(expected_version = version, new slots)  ── compare-and-set through Raft
//! ```
//!
//! Every change first proves, on the agent, that the caller's password
//! opens the repository; the catalog cannot check that (it never sees a
//! key), so it authorises slot changes by the repository's admin token. A
//! change is made against the slot-set version it read: if another change
//! landed in between, the catalog refuses this one and nothing is lost.
//! The keyring never leaves the agent.

use std::sync::Arc;

use coffer_pack::{inspect_slot, slot_id, KdfParams, PackError, SlotInfo};
use coffer_proto::pb;
use coffer_rpc::MetaClient;
use coffer_types::RepoName;
use tonic::Code;

use crate::repo::{now_ms, unwrap_slots};
use crate::ClientError;

/// One key slot as `coffer key list` shows it: what the slot says about
/// itself, or why it cannot be read. Nothing here is secret.
#[derive(Debug, Clone)]
pub struct ListedSlot {
    /// The slot's id (for a slot that does not parse, a hash of its bytes).
    pub id: String,
    pub info: Result<SlotInfo, PackError>,
}

/// The key slots of a repository and the slot-set version they were read at.
#[derive(Debug, Clone)]
pub struct KeyList {
    pub version: u64,
    /// The newest epoch any slot holds: the one new blobs are sealed in.
    pub current_epoch: u32,
    pub slots: Vec<ListedSlot>,
}

/// What a slot change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The slot added or removed.
    pub id: String,
    /// The slot-set version after the change.
    pub version: u64,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new current epoch.
    pub epoch: u32,
    /// The slots that now hold it (all of them).
    pub slots: usize,
    pub version: u64,
}

/// The raw slots of `name` and their version.
async fn fetch(meta: &MetaClient, name: &RepoName) -> Result<(Vec<Vec<u8>>, u64), ClientError> {
    let req = pb::GetKeySlotsRequest { repo: name.to_string() };
    let resp = meta
        .call("GetKeySlots", |mut c| {
            let req = req.clone();
            async move { c.get_key_slots(req).await }
        })
        .await
        .map_err(|e| match e.code() {
            Some(Code::NotFound) => ClientError::RepoNotFound { repo: name.clone() },
            _ => ClientError::Conn(e),
        })?;
    Ok((resp.key_slots, resp.version))
}

/// Writes `slots` if the set is still at `expected_version`.
async fn store(
    meta: &MetaClient,
    name: &RepoName,
    expected_version: u64,
    slots: Vec<Vec<u8>>,
) -> Result<u64, ClientError> {
    let req = pb::SetKeySlotsRequest { repo: name.to_string(), expected_version, key_slots: slots };
    let resp = meta
        .call("SetKeySlots", |mut c| {
            let req = req.clone();
            async move { c.set_key_slots(req).await }
        })
        .await
        .map_err(|e| match e.code() {
            Some(Code::NotFound) => ClientError::RepoNotFound { repo: name.clone() },
            Some(Code::FailedPrecondition) => {
                ClientError::KeySlotsChanged { repo: name.clone(), reason: e.to_string() }
            }
            _ => ClientError::Conn(e),
        })?;
    Ok(resp.version)
}

/// Lists the key slots of `name`. Needs no password: slots describe
/// themselves without revealing anything secret.
pub async fn list_keys(meta: &MetaClient, name: &RepoName) -> Result<KeyList, ClientError> {
    let (slots, version) = fetch(meta, name).await?;
    let slots: Vec<ListedSlot> = slots.iter().map(|s| ListedSlot { id: slot_id(s), info: inspect_slot(s) }).collect();
    let current_epoch =
        slots.iter().filter_map(|s| s.info.as_ref().ok()).flat_map(|i| i.epochs.last().copied()).max().unwrap_or(0);
    Ok(KeyList { version, current_epoch, slots })
}

/// Adds a slot that `new_password` opens, after `password` has opened the
/// repository. `params` are the new slot's argon2id costs (normally the
/// default).
pub async fn add_key(
    meta: &Arc<MetaClient>,
    name: &RepoName,
    password: &[u8],
    new_password: &[u8],
    params: KdfParams,
) -> Result<KeyChange, ClientError> {
    let (mut slots, version) = fetch(meta, name).await?;
    let (key, _) = unwrap_slots(name, slots.clone(), password).await?;
    let pw = new_password.to_vec();
    let created_ms = now_ms();
    let slot = tokio::task::spawn_blocking(move || key.wrap_at(&pw, params, created_ms))
        .await
        .map_err(|e| ClientError::task("wrap key", e))??;
    let id = slot_id(&slot);
    slots.push(slot);
    let version = store(meta, name, version, slots).await?;
    Ok(KeyChange { id, version })
}

/// Removes slot `id`, after `password` has opened the repository. The last
/// slot is never removed. Removing the slot `password` opens is allowed
/// while another remains.
pub async fn remove_key(
    meta: &Arc<MetaClient>,
    name: &RepoName,
    password: &[u8],
    id: &str,
) -> Result<KeyChange, ClientError> {
    let (mut slots, version) = fetch(meta, name).await?;
    unwrap_slots(name, slots.clone(), password).await?;
    let matching: Vec<usize> = slots.iter().enumerate().filter(|(_, s)| slot_id(s) == id).map(|(i, _)| i).collect();
    let [index] = matching[..] else {
        // Ids are 32 bits of a hash: two slots sharing one is as good as
        // impossible, and then neither is removed by name.
        return Err(ClientError::KeySlotNotFound { repo: name.clone(), id: id.to_string() });
    };
    if slots.len() == 1 {
        return Err(ClientError::LastKeySlot { repo: name.clone(), id: id.to_string() });
    }
    slots.remove(index);
    let version = store(meta, name, version, slots).await?;
    Ok(KeyChange { id: id.to_string(), version })
}

/// Starts a new data-encryption key epoch: everything written from now on
/// is sealed with a fresh key, every slot is resealed to hold it (no other
/// password is needed), and nothing already stored is rewritten. The
/// version-1 slot `password` opens, if it is one, is rewritten as a
/// version-2 slot under the same password; any other version-1 or unreadable
/// slot makes the rotation refuse, changing nothing.
pub async fn rotate_key(meta: &Arc<MetaClient>, name: &RepoName, password: &[u8]) -> Result<Rotation, ClientError> {
    let (slots, version) = fetch(meta, name).await?;
    let (key, opened) = unwrap_slots(name, slots.clone(), password).await?;
    let next = key.rotate()?;
    let epoch = next.current_epoch();
    let pw = password.to_vec();
    let repo = name.clone();
    let created_ms = now_ms();
    let resealed = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>, ClientError> {
        slots
            .iter()
            .enumerate()
            .map(|(i, slot)| match next.reseal(slot) {
                Ok(s) => Ok(s),
                Err(PackError::OldSlot { .. }) if i == opened => {
                    Ok(next.wrap_at(&pw, KdfParams::default(), created_ms)?)
                }
                Err(e) => Err(ClientError::SlotBlocksRotation {
                    repo: repo.clone(),
                    id: slot_id(slot),
                    reason: e.to_string(),
                }),
            })
            .collect()
    })
    .await
    .map_err(|e| ClientError::task("reseal key slots", e))??;
    let count = resealed.len();
    let version = store(meta, name, version, resealed).await?;
    Ok(Rotation { epoch, slots: count, version })
}
