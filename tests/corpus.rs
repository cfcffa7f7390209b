//! The fuzz corpora as regression inputs, on stable: every file under
//! `fuzz/corpus/<target>/` goes through the very function its `cargo fuzz`
//! target runs (the targets in `fuzz/fuzz_targets/` are one-line wrappers
//! around the same entry points). A decoder that panics on any of them
//! fails the test, naming the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `entry` on every input of `target`'s corpus; fails naming each
/// input that panics, and if the corpus is missing or empty.
fn replay(target: &str, entry: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut panicked = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
            panicked.push(f.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "{target}: {} of {} inputs panic: {panicked:?}", panicked.len(), files.len());
}

#[test]
fn shard_header_corpus() {
    replay("shard_header", coffer_storage::fuzzing::shard_header);
}

#[test]
fn shard_file_corpus() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    replay("shard_file", |d| coffer_storage::fuzzing::shard_file(d, scratch.path()));
}

#[test]
fn blob_corpus() {
    replay("blob", coffer_pack::fuzzing::blob);
}

#[test]
fn key_slot_corpus() {
    replay("key_slot", coffer_pack::fuzzing::key_slot);
}

#[test]
fn refs_corpus() {
    replay("refs", coffer_pack::fuzzing::refs);
}

#[test]
fn tree_corpus() {
    replay("tree", coffer_client::tree::fuzz_decode);
}

#[test]
fn raft_codec_corpus() {
    replay("raft_codec", coffer_meta::fuzzing::raft_codec);
}

#[test]
fn pb_conversions_corpus() {
    replay("pb_conversions", coffer_proto::fuzzing::pb_conversions);
}
