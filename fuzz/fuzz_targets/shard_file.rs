//! Fuzz target `shard_file`: whole shard files through the storage node's
//! reader, header, block table and body (`coffer_storage::fuzzing::shard_file`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch directory per fuzzing process, for the file under test.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("coffer-fuzz-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_storage::fuzzing::shard_file(data, scratch()));
