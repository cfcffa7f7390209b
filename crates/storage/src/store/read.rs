//! The ranged reader: an open shard file whose header is checked, whose
//! reads verify every block they touch.
//!
//! Ranged reads go around the page cache (`O_DIRECT`) where the filesystem
//! allows it: a restore reads each shard byte once, and filling the cache
//! with it costs a page allocation per 4 KiB (the same finding as the
//! agent's reads of large source files, `coffer_client`'s `direct`). A
//! direct read covers the blocks the range touches, widened to `ALIGN`
//! boundaries of the file, into one buffer allocated `ALIGN` bytes longer
//! and used from its first aligned address; the range is a view of it.
//! A filesystem that refuses `O_DIRECT` at open, or a read that fails with
//! `EINVAL`, leaves the reader reading through the cache as before.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use coffer_types::Hash32;

use super::{io_err, read_exact_at};
use crate::shard_file::{ShardHeader, BLOCK_SIZE};
use crate::StorageError;

/// An open shard file whose header has been checked. Reads verify every
/// block they touch against the header's block hashes.
pub struct ShardReader {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// The same file opened with `O_DIRECT`, while direct reads work.
    pub(super) direct: Option<DirectFd>,
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
        if self.direct.as_ref().is_some_and(DirectFd::usable) {
            return;
        }
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
        let (buf, at) = match self.direct.as_ref().and_then(|d| d.read(self.body_offset + from, to - from)) {
            Some(read) => read.map_err(io_err(&self.path))?,
            None => {
                let mut buf = vec![0u8; (to - from) as usize];
                if read_exact_at(&self.file, &self.path, &mut buf, self.body_offset + from)?.is_none() {
                    (buf, None)
                } else {
                    (buf, Some(0))
                }
            }
        };
        let Some(at) = at else {
            let actual = self.file.metadata().map_err(io_err(&self.path))?.len();
            return Err(StorageError::Truncated { pack: h.pack, index: h.index, expected: h.file_len(), actual });
        };
        let blocks = &buf[at..at + (to - from) as usize];
        for (i, block) in blocks.chunks(bs as usize).enumerate() {
            let n = first + i as u64;
            let expected = self.hashes.get(n as usize).ok_or_else(|| self.damaged("block hash table too short"))?;
            if blake3::hash(block).as_bytes() != expected.as_bytes() {
                return Err(StorageError::Corrupt { pack: h.pack, index: h.index, block: n as u32 });
            }
        }
        Ok(bytes::Bytes::from(buf).slice(at + (start - from) as usize..at + (end - from) as usize))
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

/// The alignment of every direct read: offset, length and buffer address.
const ALIGN: u64 = 4096;

/// Bytes read into a buffer, and where in it the asked range starts
/// (`None`: the file ended before the range did).
type Placed = (Vec<u8>, Option<usize>);

/// A shard file opened a second time, with `O_DIRECT`, for ranged reads.
pub(crate) struct DirectFd {
    file: File,
    /// Cleared by the first read that fails with `EINVAL`: the device wants
    /// a coarser alignment, and the reader goes through the cache from then
    /// on.
    usable: AtomicBool,
}

impl DirectFd {
    /// `None` when the filesystem refuses direct I/O or the open fails (the
    /// reader then reads through the cache; a real problem with the file
    /// shows there).
    pub(crate) fn open(path: &Path) -> Option<DirectFd> {
        let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
        let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).ok()?;
        Some(DirectFd { file, usable: AtomicBool::new(true) })
    }

    pub(super) fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// Reads file bytes `[offset, offset + len)` into a buffer of its own.
    /// `Some(Ok((buf, Some(at))))`: they are `buf[at..at + len]`;
    /// `Some(Ok((_, None)))`: the file ends before them; `None`: direct
    /// reads do not work here, read through the cache instead.
    fn read(&self, offset: u64, len: u64) -> Option<std::io::Result<Placed>> {
        if !self.usable() {
            return None;
        }
        let first = offset - offset % ALIGN;
        let last = (offset + len).div_ceil(ALIGN) * ALIGN;
        let span = (last - first) as usize;
        let mut raw = vec![0u8; span + ALIGN as usize];
        let base = raw.as_ptr().align_offset(ALIGN as usize).min(ALIGN as usize);
        let mut got = 0usize;
        while got < span {
            match self.file.read_at(&mut raw[base + got..base + span], first + got as u64) {
                Ok(n) => {
                    got += n;
                    // Only the end of the file makes a direct read short
                    // (and the next offset would not be aligned).
                    if n == 0 || !got.is_multiple_of(ALIGN as usize) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    self.usable.store(false, Ordering::Relaxed);
                    return None;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let wanted = (offset - first) as usize + len as usize;
        let at = (got >= wanted).then_some(base + (offset - first) as usize);
        Some(Ok((raw, at)))
    }
}
