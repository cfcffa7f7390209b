//! Sample trees and a digest of a directory (bytes, kinds, modes, mtimes,
//! link targets) to compare a restore with its source.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use rand::{Rng, RngCore, SeedableRng};

/// What a restore must reproduce of each entry, keyed by relative path.
pub type TreeDigest = BTreeMap<String, String>;

/// Digests every entry under `root`: kind, permission bits, content hash
/// (files), target (symlinks), and mtime in seconds (files and symlinks'
/// parents are compared via their own entries; directory mtimes too).
pub fn dir_digest(root: &Path) -> Result<TreeDigest> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut TreeDigest) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?.collect();
    entries.sort_by_key(|e| e.as_ref().map(|e| e.file_name()).ok());
    for e in entries {
        let e = e?;
        let path = e.path();
        let rel = path.strip_prefix(root)?.to_string_lossy().to_string();
        let md = std::fs::symlink_metadata(&path)?;
        let mode = md.permissions().mode() & 0o7777;
        let desc = if md.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(&path)?.display())
        } else if md.is_dir() {
            walk(root, &path, out)?;
            format!("dir {mode:o} mtime {}", md.mtime())
        } else {
            let digest = hash_file(&path)?;
            format!("file {mode:o} len {} mtime {} hash {digest}", md.len(), md.mtime())
        };
        out.insert(rel, desc);
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<String> {
    use std::io::Read;
    // A 64-bit FNV-1a over the bytes, in blocks: enough to tell files apart
    // in tests, and independent of the code under test.
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            hash ^= *b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

/// Writes a tree with text, incompressible data, a large file of
/// `large_mib` MiB, a 0-byte file, a sparse file, symlinks (one dangling),
/// an empty directory, odd modes and old mtimes. Deterministic for a seed.
pub fn write_sample_tree(root: &Path, seed: u64, large_mib: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("docs/nested/deeper"))?;
    std::fs::create_dir_all(root.join("empty/also-empty"))?;
    std::fs::create_dir_all(root.join("data"))?;
    for i in 0..40 {
        let mut text = String::new();
        for j in 0..(50 + rng.gen_range(0..400)) {
            text.push_str(&format!("line {j} of document {i}: the quick brown fox {}\n", rng.gen::<u32>()));
        }
        let dir = if i % 3 == 0 { "docs/nested" } else { "docs" };
        std::fs::write(root.join(dir).join(format!("note-{i}.txt")), text)?;
    }
    std::fs::write(root.join("docs/nested/deeper/leaf.md"), b"# leaf\n")?;
    for i in 0..4 {
        let mut buf = vec![0u8; 256 * 1024 + rng.gen_range(0..3_000_000)];
        rng.fill_bytes(&mut buf);
        std::fs::write(root.join("data").join(format!("random-{i}.bin")), buf)?;
    }
    // A large file, written in blocks: random with repeated stretches.
    {
        let mut f = std::fs::File::create(root.join("data/large.bin"))?;
        let mut block = vec![0u8; 1 << 20];
        for i in 0..large_mib {
            if i % 4 != 3 {
                rng.fill_bytes(&mut block);
            }
            f.write_all(&block)?;
        }
    }
    std::fs::write(root.join("zero-bytes"), b"")?;
    // Sparse: a hole of 8 MiB, then data.
    {
        let f = std::fs::File::create(root.join("sparse.img"))?;
        f.set_len(8 << 20)?;
        let mut f = std::fs::OpenOptions::new().append(true).open(root.join("sparse.img"))?;
        f.write_all(b"data after the hole")?;
    }
    std::os::unix::fs::symlink("docs/note-1.txt", root.join("link-to-note"))?;
    std::os::unix::fs::symlink("/nonexistent/dangling/target", root.join("dangling-link"))?;
    std::os::unix::fs::symlink("nested", root.join("docs/link-to-dir"))?;
    std::fs::set_permissions(root.join("docs/note-1.txt"), std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(root.join("script.sh"), b"#!/bin/sh\necho hello\n")?;
    std::fs::set_permissions(root.join("script.sh"), std::fs::Permissions::from_mode(0o755))?;
    // Old mtimes on a few entries, directories last.
    let old = filetime_from_secs(1_500_000_000);
    set_mtime(&root.join("docs/note-2.txt"), old)?;
    set_mtime(&root.join("empty/also-empty"), old)?;
    set_mtime(&root.join("docs/nested/deeper"), old)?;
    Ok(())
}

fn filetime_from_secs(s: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64)
}

fn set_mtime(path: &Path, t: std::time::SystemTime) -> Result<()> {
    let f = std::fs::File::options().read(true).open(path).with_context(|| format!("open {}", path.display()))?;
    f.set_modified(t).with_context(|| format!("set mtime of {}", path.display()))?;
    Ok(())
}
