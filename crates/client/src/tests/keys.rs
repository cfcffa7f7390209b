//! Key slot changes against the fake catalog: a repository created before
//! key epochs (one version-1 slot) gains a second password, refuses a
//! rotation that would leave its old slot behind, rotates with the old
//! slot's password (which rewrites it as version 2), and never loses its
//! last slot.

use coffer_pack::KdfParams;
use coffer_proto::pb;
use coffer_types::{ErasureParams, RepoName};

use super::fake_cluster::FakeCluster;
use crate::keys::{add_key, list_keys, remove_key, rotate_key};
use crate::{open_repo, ClientError};

/// A version-1 slot written by the build before key epochs, password "pw".
const V1_SLOT_HEX: &str = include_str!("../../../pack/testdata/v1_slot.hex");
const CHEAP: KdfParams = KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 };

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test]
async fn an_old_repository_gains_passwords_and_epochs() {
    let cluster = FakeCluster::start(3).await;
    let name = RepoName::new("old").unwrap();
    let params = ErasureParams::new(2, 1).unwrap();
    let record = pb::Repo {
        name: name.to_string(),
        params: Some(params.into()),
        key_slots: vec![unhex(V1_SLOT_HEX)],
        created_ms: 1,
    };
    cluster.catalog.state.lock().unwrap().repos.insert(name.to_string(), record);
    let meta = &cluster.meta;
    let probe = open_repo(meta.clone(), &name, b"pw").await.unwrap().key().chunk_id(b"probe");

    let keys = list_keys(meta, &name).await.unwrap();
    assert_eq!((keys.version, keys.current_epoch, keys.slots.len()), (0, 0, 1));
    let old_id = keys.slots[0].id.clone();
    assert_eq!(keys.slots[0].info.as_ref().unwrap().version, 1);

    let wrong = add_key(meta, &name, b"not pw", b"new", CHEAP).await;
    assert!(matches!(wrong, Err(ClientError::WrongPassword { .. })), "{wrong:?}");
    let added = add_key(meta, &name, b"pw", b"new", CHEAP).await.unwrap();
    assert_eq!(added.version, 1);

    // Rotating with the new password cannot reach the version-1 slot.
    let blocked = rotate_key(meta, &name, b"new").await;
    assert!(matches!(&blocked, Err(ClientError::SlotBlocksRotation { id, .. }) if *id == old_id), "{blocked:?}");
    assert_eq!(list_keys(meta, &name).await.unwrap().version, 1, "a refused rotation changes nothing");

    // With the old password it can: that slot is rewritten as version 2.
    let r = rotate_key(meta, &name, b"pw").await.unwrap();
    assert_eq!((r.epoch, r.slots, r.version), (1, 2, 2));
    let keys = list_keys(meta, &name).await.unwrap();
    assert_eq!(keys.current_epoch, 1);
    for s in &keys.slots {
        let info = s.info.as_ref().unwrap();
        assert_eq!((info.version, info.epochs.clone()), (2, vec![0, 1]), "{s:?}");
    }
    for pw in [&b"pw"[..], b"new"] {
        let repo = open_repo(meta.clone(), &name, pw).await.unwrap();
        assert_eq!(repo.key().current_epoch(), 1);
        assert_eq!(repo.key().chunk_id(b"probe"), probe, "the chunk-id key must not change");
    }

    // Removing: an unknown id, then one slot, then never the last.
    let unknown = remove_key(meta, &name, b"new", "ffffffff").await;
    assert!(matches!(unknown, Err(ClientError::KeySlotNotFound { .. })), "{unknown:?}");
    let upgraded = keys.slots[0].id.clone();
    remove_key(meta, &name, b"new", &upgraded).await.unwrap();
    let gone = open_repo(meta.clone(), &name, b"pw").await;
    assert!(matches!(gone, Err(ClientError::WrongPassword { .. })), "{gone:?}");
    let only = list_keys(meta, &name).await.unwrap().slots[0].id.clone();
    let last = remove_key(meta, &name, b"new", &only).await;
    assert!(matches!(last, Err(ClientError::LastKeySlot { .. })), "{last:?}");
    assert!(open_repo(meta.clone(), &name, b"new").await.is_ok());
}
