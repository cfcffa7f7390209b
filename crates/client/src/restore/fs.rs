//! The filesystem work of a restore: writing blobs at their offsets,
//! creating, closing and stamping files, directories and symlinks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coffer_types::ChunkId;

use super::plan::{Dest, FileSlot, SlotState};
use super::writeback::Writeback;
use crate::source::{blocking, lock};
use crate::stats::RestoreCounters;
use crate::tree::Node;
use crate::ClientError;

/// Files at least this large (the smallest chunk a text file is cut into)
/// are written back as they land, see `writeback`; smaller ones are left
/// to the final sync. Hints waiting in the writeback queue keep their
/// files open beyond `MAX_OPEN_FILES`, by at most the queue's length.
pub(super) const WRITEBACK_MIN: u64 = coffer_pack::TEXT_CHUNK_MIN as u64;
/// Restored files held open between writes; past this a file is closed
/// after each write and reopened for its next chunk.
pub(super) const MAX_OPEN_FILES: usize = 256;

/// What the writers of one restore share.
pub(super) struct Writers {
    /// Restored files currently open (a hint waiting for the writeback
    /// thread keeps its file open a little longer).
    pub(super) open: AtomicUsize,
    pub(super) writeback: Writeback,
}

impl Writers {
    pub(super) fn start() -> Self {
        Writers { open: AtomicUsize::new(0), writeback: Writeback::start() }
    }
}

/// Writes a blob at every place the wave has for it; closes and stamps the
/// files it completes, counting them and the bytes into `work`. Returns the
/// bytes written.
pub(super) fn write_blob(
    files: &[FileSlot],
    dests: &HashMap<ChunkId, Vec<Dest>>,
    id: ChunkId,
    data: &[u8],
    counters: &RestoreCounters,
    writers: &Writers,
    work: Option<&crate::work::Work>,
) -> Result<u64, ClientError> {
    let open = &writers.open;
    let Some(places) = dests.get(&id) else {
        return Err(ClientError::task("restore", format!("the source delivered chunk {id}, which was not asked")));
    };
    let mut written = 0u64;
    for d in places {
        let slot = files
            .get(d.file as usize)
            .ok_or_else(|| ClientError::task("restore", "a chunk destination names no file"))?;
        if data.len() != d.len as usize {
            return Err(ClientError::bad_tree(
                None,
                format!("{}: chunk {id} holds {} bytes, the tree says {}", slot.path.display(), data.len(), d.len),
            ));
        }
        let mut st = lock(&slot.state);
        let file = match st.file.take() {
            Some(f) => f,
            None => {
                let f = counters.metadata.time(0, || open_slot(slot, &mut st))?;
                open.fetch_add(1, Ordering::Relaxed);
                Arc::new(f)
            }
        };
        let started = Instant::now();
        file.write_all_at(data, d.offset).map_err(|e| ClientError::io(&slot.path, e))?;
        counters.write.add(started.elapsed(), data.len() as u64);
        st.remaining = st.remaining.saturating_sub(1);
        if slot.size >= WRITEBACK_MIN {
            let complete = st.remaining == 0;
            if let Some(range) = st.unhinted.add(d.offset, data.len() as u64, complete) {
                writers.writeback.hint(&file, range);
            }
        }
        st.written += data.len() as u64;
        written += data.len() as u64;
        crate::work::add_bytes(work, data.len() as u64);
        if st.remaining == 0 {
            counters.metadata.time(0, || finish_file(slot, file, open))?;
            crate::work::add_item(work);
        } else if open.load(Ordering::Relaxed) > MAX_OPEN_FILES {
            drop(file);
            open.fetch_sub(1, Ordering::Relaxed);
        } else {
            st.file = Some(file);
        }
    }
    Ok(written)
}

/// Opens a slot's file for writing: created fresh the first time (whatever
/// non-directory was at its path removed, never followed), reopened after.
/// The creation is tried first and the path cleared only if something is
/// there: a restore into an empty directory, the usual case, costs no
/// `lstat` per file. `O_CREAT | O_EXCL` fails on any existing entry,
/// a symlink included (dangling or not), so nothing is ever followed.
pub(super) fn open_slot(slot: &FileSlot, st: &mut SlotState) -> Result<std::fs::File, ClientError> {
    let path = &slot.path;
    if st.created {
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| ClientError::io(path, e))?;
        return Ok(file);
    }
    let create = || std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    let file = match create() {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            clear_path(path)?;
            create().map_err(|e| ClientError::io(path, e))?
        }
        Err(e) => return Err(ClientError::io(path, e)),
    };
    st.created = true;
    Ok(file)
}

/// Sets a complete file's mode and times, then closes it.
pub(super) fn finish_file(slot: &FileSlot, file: Arc<std::fs::File>, open: &AtomicUsize) -> Result<(), ClientError> {
    let result = file
        .set_permissions(std::fs::Permissions::from_mode(slot.mode))
        .and_then(|()| filetime::set_file_handle_times(&file, Some(slot.mtime), Some(slot.mtime)));
    drop(file);
    open.fetch_sub(1, Ordering::Relaxed);
    result.map_err(|e| ClientError::io(&slot.path, e))
}

/// Marks a target directory the restore created as the top of a directory
/// hierarchy (`FS_TOPDIR_FL`, `chattr +T`), so that ext4's Orlov allocator
/// spreads the restored subdirectories, and the files it places beside
/// them, over block groups chosen afresh, as it does for directories at a
/// filesystem's root. Without it a restored tree is put beside its parent,
/// and on ext4 without a journal every file created in a block group is
/// first checked against each inode freed there in the last minute (a
/// restore into a path whose previous tree was just deleted spent most of
/// its system time there). Only a hint: a filesystem without the flag
/// changes nothing.
pub(super) fn mark_top_dir(path: &Path) {
    let Ok(dir) = std::fs::File::open(path) else { return };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&dir) {
        let _ = rustix::fs::ioctl_setflags(&dir, flags | rustix::fs::IFlags::TOPDIR);
    }
}

/// Creates directory `path`, accepting one that already exists.
pub(super) async fn make_dir(path: &Path) -> Result<(), ClientError> {
    match tokio::fs::create_dir(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match tokio::fs::symlink_metadata(path).await {
            Ok(m) if m.is_dir() => Ok(()),
            _ => {
                Err(ClientError::BadTarget { path: path.to_path_buf(), reason: "exists and is not a directory".into() })
            }
        },
        Err(e) => Err(ClientError::io(path, e)),
    }
}

/// Removes whatever non-directory sits at `path`, so that what is restored
/// there is created fresh and an old symlink is never followed. Blocking.
pub(super) fn clear_path(path: &Path) -> Result<(), ClientError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            Err(ClientError::BadTarget { path: path.to_path_buf(), reason: "a directory is in the way".into() })
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| ClientError::io(path, e)),
        Err(_) => Ok(()),
    }
}

/// Creates the symlink `path` to `target`, stamped with the node's mtime.
pub(super) async fn make_symlink(path: &Path, target: &[u8], node: &Node) -> Result<(), ClientError> {
    let (path, target, mtime) =
        (path.to_path_buf(), PathBuf::from(OsStr::from_bytes(target)), node.mtime.to_filetime());
    blocking("create symlink", move || {
        clear_path(&path)?;
        std::os::unix::fs::symlink(&target, &path).map_err(|e| ClientError::io(&path, e))?;
        filetime::set_symlink_file_times(&path, mtime, mtime).map_err(|e| ClientError::io(&path, e))
    })
    .await
}

/// Sets the mode and the mtime (and atime, to the same value) of a restored
/// directory.
pub(super) async fn set_metadata(path: &Path, node: &Node) -> Result<(), ClientError> {
    let perms = std::fs::Permissions::from_mode(node.permissions());
    tokio::fs::set_permissions(path, perms).await.map_err(|e| ClientError::io(path, e))?;
    let mtime = node.mtime.to_filetime();
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || filetime::set_file_times(&p, mtime, mtime))
        .await
        .map_err(|e| ClientError::task("set file times", e))?
        .map_err(|e| ClientError::io(path, e))
}
