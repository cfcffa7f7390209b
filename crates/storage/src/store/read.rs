//! The ranged reader: an open shard file whose header is checked, whose
//! reads verify every block they touch.

use std::fs::File;
use std::path::PathBuf;

use coffer_types::Hash32;

use super::{io_err, read_exact_at};
use crate::shard_file::{ShardHeader, BLOCK_SIZE};
use crate::StorageError;

/// An open shard file whose header has been checked. Reads verify every
/// block they touch against the header's block hashes.
pub struct ShardReader {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) header: ShardHeader,
    pub(super) hashes: Vec<Hash32>,
    pub(super) body_offset: u64,
}

impl std::fmt::Debug for ShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader").field("path", &self.path).field("header", &self.header).finish()
    }
}

impl ShardReader {
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Resolves `offset`/`len` (`len` 0: to the end) to a body range.
    pub fn resolve_range(&self, offset: u64, len: u64) -> Result<(u64, u64), StorageError> {
        let body_len = self.header.body_len;
        let end = if len == 0 { Some(body_len) } else { offset.checked_add(len) };
        match end {
            Some(end) if offset <= body_len && end <= body_len && offset <= end => Ok((offset, end)),
            _ => Err(StorageError::RangeOutOfBounds {
                pack: self.header.pack,
                index: self.header.index,
                offset,
                len,
                body_len,
            }),
        }
    }

    /// Reads body bytes `offset..offset + len` (`len` 0: to the end),
    /// verifying each block it touches.
    /// Tells the kernel that body bytes `[start, end)` will be read soon, so
    /// that a long ranged read is fetched from disk in one go rather than a
    /// read-ahead window at a time. Only a hint: failures are ignored.
    pub fn will_need(&self, start: u64, end: u64) {
        let Some(len) = std::num::NonZeroU64::new(end.saturating_sub(start)) else { return };
        let _ = rustix::fs::fadvise(
            &self.file,
            self.body_offset.saturating_add(start),
            Some(len),
            rustix::fs::Advice::WillNeed,
        );
    }

    pub fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.read_shared(offset, len)?.into())
    }

    /// `read_range` as a view of one buffer: the blocks the range touches
    /// are read with a single `pread` straight into it and verified there,
    /// and the range is a slice of it, so no shard byte is copied after
    /// the kernel's copy (a ranged restore read serves every byte this way).
    pub fn read_shared(&self, offset: u64, len: u64) -> Result<bytes::Bytes, StorageError> {
        let (start, end) = self.resolve_range(offset, len)?;
        if start == end {
            return Ok(bytes::Bytes::new());
        }
        let h = &self.header;
        let bs = u64::from(BLOCK_SIZE);
        let first = start / bs;
        let from = first * bs;
        // The last block may be short: the body ends inside it.
        let to = ((end - 1) / bs + 1).saturating_mul(bs).min(h.body_len);
        let mut buf = vec![0u8; (to - from) as usize];
        if read_exact_at(&self.file, &self.path, &mut buf, self.body_offset + from)?.is_none() {
            let actual = self.file.metadata().map_err(io_err(&self.path))?.len();
            return Err(StorageError::Truncated { pack: h.pack, index: h.index, expected: h.file_len(), actual });
        }
        for (i, block) in buf.chunks(bs as usize).enumerate() {
            let n = first + i as u64;
            let expected = self.hashes.get(n as usize).ok_or_else(|| self.damaged("block hash table too short"))?;
            if blake3::hash(block).as_bytes() != expected.as_bytes() {
                return Err(StorageError::Corrupt { pack: h.pack, index: h.index, block: n as u32 });
            }
        }
        Ok(bytes::Bytes::from(buf).slice((start - from) as usize..(end - from) as usize))
    }

    /// Reads every block and checks the body checksum as well, which also
    /// catches a block hash table that was damaged consistently with the body.
    pub fn verify(&self) -> Result<(), StorageError> {
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let mut hasher = blake3::Hasher::new();
        for block in 0..u64::from(self.header.block_count()) {
            hasher.update(self.read_block(block, &mut buf)?);
        }
        if hasher.finalize().as_bytes() != self.header.body_checksum.as_bytes() {
            return Err(self.damaged("every block matches its hash but the body checksum does not"));
        }
        Ok(())
    }

    fn damaged(&self, reason: &str) -> StorageError {
        StorageError::CorruptHeader { pack: self.header.pack, index: self.header.index, reason: reason.to_string() }
    }

    /// Reads body block `block` into `buf` and returns the verified bytes.
    fn read_block<'b>(&self, block: u64, buf: &'b mut [u8]) -> Result<&'b [u8], StorageError> {
        let h = &self.header;
        let bs = u64::from(BLOCK_SIZE);
        let block_start = block * bs;
        let n = (h.body_len.min(block_start + bs) - block_start) as usize;
        let buf = buf.get_mut(..n).ok_or_else(|| self.damaged("block larger than the block size"))?;
        if read_exact_at(&self.file, &self.path, buf, self.body_offset + block_start)?.is_none() {
            let actual = self.file.metadata().map_err(io_err(&self.path))?.len();
            return Err(StorageError::Truncated { pack: h.pack, index: h.index, expected: h.file_len(), actual });
        }
        let expected = self.hashes.get(block as usize).ok_or_else(|| self.damaged("block hash table too short"))?;
        if blake3::hash(buf).as_bytes() != expected.as_bytes() {
            return Err(StorageError::Corrupt { pack: h.pack, index: h.index, block: block as u32 });
        }
        Ok(buf)
    }
}
