//! A store whose sled inventory failed a write (sled then keeps that error
//! and fails every later call until it is reopened; a full disk did it in
//! the chaos suite) serves puts, deletes and listings again without a
//! restart, and its inventory agrees with the files.
//!
//! The failure is injected with sled's own failpoint on its log writes
//! (the `failpoints` feature, enabled for this crate's tests only), the same
//! path a write refused with ENOSPC takes. This test has a binary of its own
//! because sled's failpoints are process-wide.

use coffer_storage::{ShardHeader, ShardStore};
use coffer_types::{Hash32, PackId, ShardIndex};

fn put(store: &ShardStore, pack: PackId, index: u8) -> Result<ShardHeader, coffer_storage::StorageError> {
    let body = vec![index; 5000];
    let h = ShardHeader {
        pack,
        index: ShardIndex(index),
        k: 4,
        m: 2,
        body_len: body.len() as u64,
        body_checksum: Hash32(*blake3::hash(&body).as_bytes()),
    };
    store.put(h, &body).map(|_| h)
}

#[test]
fn the_inventory_recovers_from_a_failed_write_without_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = ShardStore::open(dir.path())?;
    let (a, b, c) = (PackId::random(), PackId::random(), PackId::random());
    put(&store, a, 0)?;
    // The next log write of sled fails, and sled keeps the error.
    sled::fail::set("buffer write", 1);
    let during = put(&store, b, 1);
    eprintln!("the put that met the failure: {during:?}");
    // Whatever that put answered, the store works again: a put and a delete.
    // The inventory is reopened by the store itself; the failed instance may
    // hold sled's file lock a moment longer, and the store then retries after
    // its back-off (2 s), so the put is retried until a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match put(&store, c, 2) {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("the store does not take puts yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
    assert!(store.delete(&a, ShardIndex(0))?, "the shard existed");
    // The inventory says what the files say: b's file is in place (its put
    // renamed it before the inventory failed), a's is gone.
    let listed: Vec<PackId> = store.list()?.iter().map(|e| e.pack).collect();
    let mut want = vec![b, c];
    want.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, want, "listed {listed:?}");
    drop(store);
    let reopened = ShardStore::open(dir.path())?;
    let mut again: Vec<PackId> = reopened.list()?.iter().map(|e| e.pack).collect();
    again.sort();
    assert_eq!(again, want);
    Ok(())
}
