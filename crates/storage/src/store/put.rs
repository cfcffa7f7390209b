//! The put writer: a streaming put into `tmp/`, hashed as it comes, then
//! checked, given its header, fsynced and renamed into `shards/`.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use coffer_types::Hash32;

use super::{io_err, ShardStore, SpaceClaim};
use crate::shard_file::{self, ShardHeader, BLOCK_SIZE};
use crate::StorageError;

/// A streaming put in progress: body bytes go to a temporary file at their
/// final offset, leaving room for the header, and are hashed as they come.
/// Dropping an unfinished writer removes the temporary file.
pub struct PutWriter {
    /// Released when the writer goes, finished or not.
    pub(super) _claim: SpaceClaim,
    pub(super) store: ShardStore,
    pub(super) header: ShardHeader,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) body_hasher: blake3::Hasher,
    pub(super) block_hasher: blake3::Hasher,
    /// Bytes of the current block hashed so far.
    pub(super) block_fill: u32,
    pub(super) block_hashes: Vec<Hash32>,
    pub(super) received: u64,
    pub(super) committed: bool,
}

impl std::fmt::Debug for PutWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutWriter").field("header", &self.header).field("received", &self.received).finish()
    }
}

impl PutWriter {
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends body bytes. More bytes than the header declares is an error,
    /// and nothing past the declared length is written.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let total = self.received.saturating_add(data.len() as u64);
        if total > self.header.body_len {
            return Err(StorageError::LengthMismatch {
                pack: self.header.pack,
                index: self.header.index,
                declared: self.header.body_len,
                received: total,
            });
        }
        self.file.write_all_at(data, self.header.body_offset() + self.received).map_err(io_err(&self.path))?;
        self.received = total;
        self.body_hasher.update(data);
        let mut rest = data;
        while !rest.is_empty() {
            let room = (BLOCK_SIZE - self.block_fill) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.block_hasher.update(now);
            self.block_fill += now.len() as u32;
            if self.block_fill == BLOCK_SIZE {
                self.close_block();
            }
            rest = later;
        }
        Ok(())
    }

    fn close_block(&mut self) {
        self.block_hashes.push(Hash32(*self.block_hasher.finalize().as_bytes()));
        self.block_hasher.reset();
        self.block_fill = 0;
    }

    /// Checks length and checksum, writes the header, makes the file durable,
    /// renames it into place and records it. Returns the body bytes stored.
    /// On any error the temporary file is removed and nothing is stored.
    pub fn finish(mut self) -> Result<u64, StorageError> {
        let h = self.header;
        if self.received != h.body_len {
            return Err(StorageError::LengthMismatch {
                pack: h.pack,
                index: h.index,
                declared: h.body_len,
                received: self.received,
            });
        }
        if self.block_fill > 0 {
            self.close_block();
        }
        if self.body_hasher.finalize().as_bytes() != h.body_checksum.as_bytes() {
            return Err(StorageError::ChecksumMismatch { pack: h.pack, index: h.index });
        }
        let head = shard_file::encode_header(&h, &self.block_hashes);
        self.file.write_all_at(&head, 0).map_err(io_err(&self.path))?;
        self.file.sync_all().map_err(io_err(&self.path))?;
        self.store.commit(&self.path, &h)?;
        self.committed = true;
        Ok(h.body_len)
    }
}

impl Drop for PutWriter {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "could not remove an abandoned put"),
        }
    }
}
