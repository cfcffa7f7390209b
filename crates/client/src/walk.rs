//! The walker: turns a source (paths on disk, or one stream) into chunks and
//! trees, depth first, on one blocking thread.
//!
//! ```text
//!   lstat/read_dir ──► unchanged since the parent? ──yes──► reuse the parent's chunk list
//!                                │ no
//!                                ▼
//!                     open ──► chunker (one buffer for every file) ──► chunk_id ──► BlobSink (data)
//!   all entries of a directory ──► Tree ──encode──► chunk_id ──► BlobSink (tree)
//! ```
//!
//! With read-ahead on (a backup of paths), a helper thread asks the kernel to
//! fetch the regular files of each directory a little ahead of the walk, so a
//! cold disk reads while the walker works (`readahead`); it is only a hint and
//! changes nothing the walk records.
//!
//! The walker owns the order of a file's chunks: it hashes each chunk as the
//! chunker cuts it and appends the id to the file's content list before
//! handing the bytes on, so however the later stages reorder blobs, the tree
//! records the file as it was read. Trees are written bottom-up (a directory's
//! tree after all its children), and every id a tree names has been handed to
//! the sink before the tree itself. Unreadable entries are recorded and
//! skipped; only a failure of the sink (the pipeline stopped) or of the
//! source root aborts the walk.

use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use coffer_pack::{ChunkBuffer, Chunker, RepoKey};
use coffer_types::{ChunkId, SkipReason, SkippedEntry, MAX_SKIPPED_EXAMPLES, MAX_SKIPPED_PATH};

use crate::direct::{SourceFile, DIRECT_MIN};
use crate::exclude::Excludes;
use crate::readahead::ReadAhead;
use crate::stats::Counters;
use crate::tree::{Node, NodeKind, Timestamp, Tree};
use crate::ClientError;

/// How many error messages a summary keeps; the count is always exact.
pub(crate) const MAX_ERROR_MESSAGES: usize = 1000;

/// Why an entry whose listing, open or read failed with `e` was skipped: an
/// entry gone since it was listed vanished, anything else is unreadable.
fn io_reason(e: &io::Error) -> SkipReason {
    if e.kind() == io::ErrorKind::NotFound {
        SkipReason::Vanished
    } else {
        SkipReason::Unreadable
    }
}

/// What a blob holds, which decides the pack it goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BlobKind {
    Data,
    Tree,
}

/// The downstream stage stopped; the walk must end without a result.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Where the walker hands the plaintext of each chunk and tree.
pub(crate) trait BlobSink {
    fn put(&mut self, id: ChunkId, kind: BlobKind, data: Vec<u8>) -> Result<(), Stopped>;

    /// Hands on whatever `put` is still holding; called once, at the end of
    /// the walk.
    fn flush(&mut self) -> Result<(), Stopped> {
        Ok(())
    }
}

/// Reads the parent snapshot's trees, for change detection.
pub(crate) trait TreeLoader {
    fn load_tree(&self, id: &ChunkId) -> Result<Tree, ClientError>;
}

/// A file's chunk ids, their plaintext lengths, and its size.
type FileContent = (Vec<ChunkId>, Vec<u32>, u64);

/// Why a walk ended without a root.
#[derive(Debug)]
pub(crate) enum WalkError {
    Stopped,
    Fatal(ClientError),
}

impl From<Stopped> for WalkError {
    fn from(_: Stopped) -> Self {
        WalkError::Stopped
    }
}

/// The sorted, deduplicated ids a snapshot references. Ids are pushed as
/// found and compacted now and then, so that repeated chunks (a file copied
/// many times) do not grow the list without bound.
#[derive(Default, Debug)]
pub(crate) struct RefList {
    ids: Vec<ChunkId>,
    compact_at: usize,
}

impl RefList {
    pub fn extend(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        self.ids.extend(ids);
        if self.ids.len() >= self.compact_at.max(1 << 16) {
            self.compact();
            self.compact_at = self.ids.len() * 2;
        }
    }

    fn compact(&mut self) {
        self.ids.sort_unstable();
        self.ids.dedup();
    }

    pub fn finish(mut self) -> Vec<ChunkId> {
        self.compact();
        self.ids
    }
}

/// The outcome of a walk.
#[derive(Debug)]
pub(crate) struct WalkOutput {
    pub root: ChunkId,
    pub refs: Vec<ChunkId>,
    pub errors: Vec<String>,
    /// Examples of the entries left out, with why (at most
    /// `MAX_SKIPPED_EXAMPLES`; the counts are in `Counters`).
    pub skipped: Vec<SkippedEntry>,
}

/// The walker's state for one backup.
pub(crate) struct Walker<'a, S: BlobSink> {
    key: &'a RepoKey,
    sink: S,
    /// Present when the walk is compared with a parent snapshot.
    parent: Option<&'a dyn TreeLoader>,
    /// Whether a file whose size, times and inode match the parent's entry
    /// reuses its chunk list without being read. False for a full backup,
    /// which reads every byte and only compares, for the summary.
    reuse: bool,
    counters: &'a Counters,
    refs: RefList,
    errors: Vec<String>,
    skipped: Vec<SkippedEntry>,
    /// The chunker's read buffer, passed from file to file; `None` only
    /// while a file is being read.
    buffer: Option<ChunkBuffer>,
    /// Where a changed file's chunks are read to be compared with the
    /// parent's, reused from file to file.
    verify_buffer: Vec<u8>,
    /// Hints the kernel to fetch the next files while this one is chunked.
    read_ahead: Option<ReadAhead>,
    /// Entries the walk leaves out (`exclude`): never read, never listed.
    excludes: Excludes,
}

impl<'a, S: BlobSink> Walker<'a, S> {
    pub fn new(key: &'a RepoKey, sink: S, parent: Option<&'a dyn TreeLoader>, counters: &'a Counters) -> Self {
        Walker {
            key,
            sink,
            parent,
            reuse: true,
            counters,
            refs: RefList::default(),
            errors: Vec::new(),
            skipped: Vec::new(),
            buffer: None,
            verify_buffer: Vec::new(),
            read_ahead: None,
            excludes: Excludes::default(),
        }
    }

    /// Starts a read-ahead thread that asks the kernel to fetch the files of
    /// each directory ahead of the walk (see `readahead`).
    pub fn with_read_ahead(mut self) -> Self {
        self.read_ahead = ReadAhead::start();
        self
    }

    /// Leaves out the entries `excludes` names.
    pub fn with_excludes(mut self, excludes: Excludes) -> Self {
        self.excludes = excludes;
        self
    }

    /// Reads every file even when the parent holds it unchanged; the parent
    /// is then only used to count new, changed, unchanged and deleted files.
    pub fn read_everything(mut self) -> Self {
        self.reuse = false;
        self
    }

    /// Counts the file `now` against the parent's entry of the same name.
    fn classify(&self, previous: Option<&Node>, content: &[ChunkId]) {
        if self.parent.is_none() {
            return;
        }
        match previous.map(|n| &n.kind) {
            Some(NodeKind::File { content: before, .. }) if before.as_slice() == content => {
                self.counters.files_unchanged.add(1)
            }
            Some(NodeKind::File { .. }) => self.counters.files_changed.add(1),
            _ => self.counters.files_new.add(1),
        }
    }

    /// Counts as deleted every file of the parent's listing `before` whose
    /// name is not in `kept` (or is no longer a file), descending into
    /// directories that are gone.
    fn count_deleted(&self, before: Option<&Tree>, kept: &[Node]) {
        let Some(before) = before else { return };
        for old in before.nodes() {
            let now = kept.binary_search_by(|n| n.name.as_slice().cmp(old.name.as_slice())).ok().map(|i| &kept[i]);
            match (&old.kind, now.map(|n| &n.kind)) {
                (NodeKind::File { .. }, Some(NodeKind::File { .. })) => {}
                (NodeKind::File { .. }, _) => self.counters.files_deleted.add(1),
                (NodeKind::Dir { .. }, Some(NodeKind::Dir { .. })) => {}
                (NodeKind::Dir { subtree }, _) => self.count_deleted_subtree(subtree),
                _ => {}
            }
        }
    }

    fn count_deleted_subtree(&self, id: &ChunkId) {
        if let Some(tree) = self.load_parent(id) {
            self.count_deleted(Some(&tree), &[]);
        }
    }

    fn finish(mut self, root: ChunkId) -> Result<WalkOutput, WalkError> {
        self.sink.flush()?;
        Ok(WalkOutput { root, refs: self.refs.finish(), errors: self.errors, skipped: self.skipped })
    }

    /// Records an entry that could not be read: an error of the backup, and
    /// an entry the snapshot leaves unprotected. `size` is its listed size,
    /// 0 when unknown.
    fn record(&mut self, path: &Path, reason: SkipReason, size: u64, what: impl std::fmt::Display) {
        self.counters.errors.add(1);
        let msg = format!("{}: {what}", path.display());
        tracing::warn!("{msg}");
        if self.errors.len() < MAX_ERROR_MESSAGES {
            self.errors.push(msg);
        }
        self.skipped(path, reason, size);
    }

    /// Counts an entry left out, and keeps the first ones as examples.
    fn skipped(&mut self, path: &Path, reason: SkipReason, size: u64) {
        match reason {
            SkipReason::Unreadable => self.counters.skipped_unreadable.add(1),
            SkipReason::Excluded => self.counters.skipped_excluded.add(1),
            SkipReason::Vanished => self.counters.skipped_vanished.add(1),
        }
        self.counters.bytes_skipped.add(size);
        if self.skipped.len() < MAX_SKIPPED_EXAMPLES {
            let mut path = path.to_string_lossy().into_owned();
            if path.len() > MAX_SKIPPED_PATH {
                let mut end = MAX_SKIPPED_PATH;
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                path.truncate(end);
            }
            self.skipped.push(SkippedEntry { path, reason });
        }
    }

    /// Walks `paths`. One directory becomes the root itself; anything else
    /// (one file, or several paths) becomes a root holding one entry per
    /// path, named by its final component.
    pub fn walk_paths(mut self, paths: &[PathBuf], parent_root: Option<ChunkId>) -> Result<WalkOutput, WalkError> {
        if let [only] = paths {
            let meta = fs::symlink_metadata(only).map_err(|e| WalkError::Fatal(ClientError::io(only, e)))?;
            if meta.is_dir() {
                self.counters.dirs.add(1);
                let root = self.dir_tree(only, parent_root)?.map_err(|e| WalkError::Fatal(ClientError::io(only, e)))?;
                return self.finish(root);
            }
        }
        let parent_tree = parent_root.and_then(|id| self.load_parent(&id));
        let mut nodes = Vec::with_capacity(paths.len());
        for path in paths {
            let name = top_level_name(path).map_err(WalkError::Fatal)?;
            let meta = match fs::symlink_metadata(path) {
                Ok(m) => m,
                Err(e) => {
                    self.record(path, io_reason(&e), 0, e);
                    continue;
                }
            };
            let previous = parent_tree.as_ref().and_then(|t| t.get(&name));
            if let Some(node) = self.entry(path, name, &meta, previous)? {
                nodes.push(node);
            }
        }
        let tree = Tree::new(nodes).map_err(WalkError::Fatal)?;
        self.count_deleted(parent_tree.as_ref(), tree.nodes());
        let root = self.store_tree(&tree)?;
        self.finish(root)
    }

    /// Walks one stream into a root holding a single file named `name`.
    pub fn walk_stream(
        mut self,
        reader: impl Read,
        name: &[u8],
        parent_root: Option<ChunkId>,
    ) -> Result<WalkOutput, WalkError> {
        let now = Timestamp::now();
        let parent_tree = parent_root.and_then(|id| self.load_parent(&id));
        let (content, lens, size) = match self.read_content(reader)? {
            Ok(read) => read,
            Err(reason) => {
                return Err(WalkError::Fatal(ClientError::BadSource {
                    reason: format!("reading the stream: {reason}"),
                }))
            }
        };
        self.counters.files.add(1);
        self.counters.bytes_scanned.add(size);
        self.refs.extend(content.iter().copied());
        self.classify(parent_tree.as_ref().and_then(|t| t.get(name)), &content);
        let node = Node {
            name: name.to_vec(),
            kind: NodeKind::File { content, lens },
            mode: libc::S_IFREG | 0o600,
            uid: 0,
            gid: 0,
            mtime: now,
            size,
            inode: 0,
            dev: 0,
            ctime: now,
        };
        let tree = Tree::new(vec![node]).map_err(WalkError::Fatal)?;
        self.count_deleted(parent_tree.as_ref(), tree.nodes());
        let root = self.store_tree(&tree)?;
        self.finish(root)
    }

    /// Loads a tree of the parent snapshot. A parent tree that cannot be read
    /// only costs reading the files again, so it is logged, not fatal.
    fn load_parent(&self, id: &ChunkId) -> Option<Tree> {
        let loader = self.parent?;
        match loader.load_tree(id) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(tree = %id, error = %e, "cannot read the parent snapshot's tree; reading files again");
                None
            }
        }
    }

    /// Whether the entry `e` of directory `dir` is left out: by a pattern,
    /// or because it is a directory holding a marker file.
    fn excluded(&self, dir: &Path, e: &fs::DirEntry) -> bool {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let path = dir.join(e.file_name());
        self.excludes.excludes(&path, &e.file_name(), is_dir) || (is_dir && self.excludes.marked(&path))
    }

    /// The tree of directory `path`. The outer error aborts the walk; the
    /// inner one means this directory could not be listed.
    fn dir_tree(&mut self, path: &Path, parent_subtree: Option<ChunkId>) -> Result<io::Result<ChunkId>, WalkError> {
        let listing = match fs::read_dir(path) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        // Each name with whether the listing says it is a regular file (the
        // directory entry's type, no extra system call): a read-ahead hint.
        let mut names = Vec::new();
        for entry in listing {
            match entry {
                Ok(e) if !self.excludes.is_empty() && self.excluded(path, &e) => {
                    // The size of an excluded file counts against the ratio; an
                    // excluded directory's content is never walked.
                    let size = e.metadata().ok().filter(|m| m.is_file()).map_or(0, |m| m.len());
                    self.skipped(&path.join(e.file_name()), SkipReason::Excluded, size);
                }
                Ok(e) => names.push((e.file_name(), e.file_type().is_ok_and(|t| t.is_file()))),
                Err(e) => self.record(path, SkipReason::Unreadable, 0, format!("listing the directory: {e}")),
            }
        }
        names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if let Some(ra) = &self.read_ahead {
            ra.enter(path, names.iter().filter(|(_, file)| *file).map(|(n, _)| n.clone()).collect());
        }
        let parent_tree = parent_subtree.and_then(|id| self.load_parent(&id));
        let mut nodes = Vec::with_capacity(names.len());
        for (name, _) in names {
            let child = path.join(&name);
            let meta = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.record(&child, io_reason(&e), 0, e);
                    continue;
                }
            };
            let name_bytes = name.as_bytes().to_vec();
            let previous = parent_tree.as_ref().and_then(|t| t.get(&name_bytes));
            let node = self.entry(&child, name_bytes, &meta, previous)?;
            if let Some(ra) = &self.read_ahead {
                ra.passed(&name);
            }
            if let Some(node) = node {
                nodes.push(node);
            }
        }
        if let Some(ra) = &self.read_ahead {
            ra.leave();
        }
        let tree = Tree::new(nodes).map_err(WalkError::Fatal)?;
        self.count_deleted(parent_tree.as_ref(), tree.nodes());
        Ok(Ok(self.store_tree(&tree)?))
    }

    /// One directory entry: its node, or `None` if it is skipped (special
    /// files, unreadable entries).
    fn entry(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        meta: &Metadata,
        previous: Option<&Node>,
    ) -> Result<Option<Node>, WalkError> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            let parent_subtree = match previous.map(|n| &n.kind) {
                Some(NodeKind::Dir { subtree }) => Some(*subtree),
                _ => None,
            };
            match self.dir_tree(path, parent_subtree)? {
                Ok(subtree) => {
                    self.counters.dirs.add(1);
                    NodeKind::Dir { subtree }
                }
                Err(e) => {
                    self.record(path, io_reason(&e), 0, e);
                    return Ok(None);
                }
            }
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(target) => {
                    self.counters.symlinks.add(1);
                    NodeKind::Symlink { target: target.as_os_str().as_bytes().to_vec() }
                }
                Err(e) => {
                    self.record(path, io_reason(&e), 0, e);
                    return Ok(None);
                }
            }
        } else if ft.is_file() {
            match self.file_content(path, meta, previous)? {
                Some((content, lens, size)) => {
                    let mut node = node_from(name, NodeKind::File { content, lens }, meta);
                    node.size = size;
                    return Ok(Some(node));
                }
                None => return Ok(None),
            }
        } else {
            // Sockets, FIFOs and device nodes hold no data to back up, and
            // opening a FIFO would block the walk.
            tracing::debug!(path = %path.display(), "skipping a special file");
            return Ok(None);
        };
        Ok(Some(node_from(name, kind, meta)))
    }

    /// The chunk list and size of a regular file: the parent's when the file
    /// is unchanged, otherwise read now. `None` if it cannot be read.
    fn file_content(
        &mut self,
        path: &Path,
        meta: &Metadata,
        previous: Option<&Node>,
    ) -> Result<Option<FileContent>, WalkError> {
        if self.parent.is_some() && self.reuse {
            if let Some(Node { kind: NodeKind::File { content, lens }, size, mtime, ctime, inode, .. }) = previous {
                let unchanged = *size == meta.len()
                    && *mtime == Timestamp::from_parts(meta.mtime(), meta.mtime_nsec())
                    && *ctime == Timestamp::from_parts(meta.ctime(), meta.ctime_nsec())
                    && *inode == meta.ino();
                if unchanged {
                    self.counters.files.add(1);
                    self.counters.bytes_scanned.add(*size);
                    self.counters.chunks_reused.add(content.len() as u64);
                    self.refs.extend(content.iter().copied());
                    self.counters.files_unchanged.add(1);
                    return Ok(Some((content.clone(), lens.clone(), *size)));
                }
            }
        }
        let mut file = match SourceFile::open(path, meta.len() >= DIRECT_MIN) {
            Ok(f) => f,
            Err(e) => {
                self.record(path, io_reason(&e), meta.len(), e);
                return Ok(None);
            }
        };
        if let Some(resumed) = self.resume_after_kept_prefix(path, &mut file, previous)? {
            return Ok(Some(resumed));
        }
        match self.read_content(file)? {
            Ok((content, lens, size)) => {
                self.counters.files.add(1);
                self.counters.bytes_scanned.add(size);
                self.refs.extend(content.iter().copied());
                self.classify(previous, &content);
                Ok(Some((content, lens, size)))
            }
            Err(reason) => {
                self.record(path, SkipReason::Unreadable, meta.len(), reason);
                Ok(None)
            }
        }
    }

    /// A changed file with a parent version of at least two chunks is read
    /// from its start and compared, chunk by chunk, with the parent's chunk
    /// list; the chunks that hash to the parent's ids are kept as they are,
    /// and the file is cut again from the end of the last kept chunk, which
    /// is a cut of the parent's content-defined chunking. Cuts after a cut
    /// depend only on the bytes from it on, so this cuts exactly where a
    /// whole read does: a log that grew is cut from its old last chunk on, a
    /// dump edited in the middle from the chunk of its first edit on, and a
    /// file edited near its start (or one of new content) is cut whole.
    ///
    /// Every byte is read once: the chunk that differs is already in the
    /// buffer, and the cutting goes on from there (`bytes_read` counts every
    /// byte, `bytes_verified` the kept ones). The parent's last chunk ends
    /// where the old file ended, not at a cut, so it is checked (an
    /// unchanged one makes the file `appended`) but never kept. A changed
    /// mtime says nothing about where a file changed, which is why every
    /// kept chunk is read and hashed: a file edited in place keeps its edit.
    /// `None` when this does not apply, or when a read fails (the file is
    /// then read whole from its start, where a failure is recorded as for
    /// any file).
    fn resume_after_kept_prefix(
        &mut self,
        path: &Path,
        file: &mut SourceFile,
        previous: Option<&Node>,
    ) -> Result<Option<FileContent>, WalkError> {
        use std::io::{Seek, SeekFrom};
        if self.parent.is_none() || !self.reuse {
            return Ok(None);
        }
        let Some(Node { kind: NodeKind::File { content, lens }, .. }) = previous else { return Ok(None) };
        if content.len() < 2 || lens.len() != content.len() {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.verify_buffer);
        let compared = self.compare_with_parent(file, content, lens, &mut buf);
        let outcome = match compared {
            Ok((matched, pending)) => {
                // The old last chunk is checked, never kept.
                let kept = matched.min(content.len() - 1);
                let appended = matched == content.len();
                let offset: u64 = lens[..kept].iter().map(|l| u64::from(*l)).sum();
                // What was read past the kept chunks: the old last chunk when
                // every chunk matched, else the start of the one that did not.
                let pending = if appended { &buf[..lens[kept] as usize] } else { &buf[..pending] };
                match self.read_content(pending.chain(&mut *file))? {
                    Ok((more, more_lens, more_size)) => {
                        let mut all = content[..kept].to_vec();
                        all.extend(more);
                        let mut all_lens = lens[..kept].to_vec();
                        all_lens.extend(more_lens);
                        let total = offset + more_size;
                        self.counters.files.add(1);
                        self.counters.bytes_scanned.add(total);
                        // The kept chunks' bytes; `read_content` counted the rest.
                        self.counters.bytes_read.add(offset);
                        self.counters.bytes_verified.add(offset);
                        self.counters.chunks_reused.add(kept as u64);
                        if appended {
                            self.counters.files_appended.add(1);
                        }
                        self.refs.extend(all.iter().copied());
                        self.classify(previous, &all);
                        Some((all, all_lens, total))
                    }
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        self.verify_buffer = buf;
        if outcome.is_none() {
            tracing::debug!(path = %path.display(), "reading a changed file again from its start");
            if file.seek(SeekFrom::Start(0)).is_err() {
                return Ok(None);
            }
        }
        Ok(outcome)
    }

    /// Reads `file` from its current position chunk by chunk against the
    /// parent's `ids` of lengths `lens`, until a chunk differs or the file
    /// ends. Returns how many chunks matched and how many bytes of the next
    /// one were read into `buf` (every byte of the file read once: the
    /// caller cuts those first).
    fn compare_with_parent(
        &mut self,
        file: &mut SourceFile,
        ids: &[ChunkId],
        lens: &[u32],
        buf: &mut Vec<u8>,
    ) -> io::Result<(usize, usize)> {
        for (i, (id, len)) in ids.iter().zip(lens).enumerate() {
            let len = *len as usize;
            buf.resize(len, 0);
            let start = Instant::now();
            let got = read_full(file, &mut buf[..len])?;
            self.counters.read.add(start.elapsed(), got as u64);
            if got < len || self.counters.hash.time(len as u64, || self.key.chunk_id(&buf[..len])) != *id {
                return Ok((i, got));
            }
        }
        Ok((ids.len(), 0))
    }

    /// Chunks, hashes and hands on everything `reader` yields. The inner
    /// error is a read failure of the source, as a message.
    fn read_content(&mut self, reader: impl Read) -> Result<Result<FileContent, String>, WalkError> {
        let mut chunks = Chunker::with_buffer(reader, self.buffer.take().unwrap_or_default());
        let result = self.chunk_into_sink(&mut chunks);
        self.buffer = Some(chunks.into_buffer());
        result
    }

    fn chunk_into_sink(&mut self, chunks: &mut Chunker<impl Read>) -> Result<Result<FileContent, String>, WalkError> {
        let mut content = Vec::new();
        let mut lens = Vec::new();
        let mut size = 0u64;
        loop {
            let start = Instant::now();
            let next = chunks.next();
            let data = match next {
                None => break,
                Some(Err(e)) => return Ok(Err(e.to_string())),
                Some(Ok(data)) => data,
            };
            let len = data.len() as u64;
            self.counters.read.add(start.elapsed(), len);
            self.counters.bytes_read.add(len);
            let id = self.counters.hash.time(len, || self.key.chunk_id(&data));
            content.push(id);
            // A chunk is at most `MAX_CHUNK_LEN` bytes, so its length fits.
            lens.push(data.len() as u32);
            size += len;
            self.sink.put(id, BlobKind::Data, data)?;
        }
        Ok(Ok((content, lens, size)))
    }

    fn store_tree(&mut self, tree: &Tree) -> Result<ChunkId, WalkError> {
        let bytes = tree.encode().map_err(WalkError::Fatal)?;
        let id = self.counters.hash.time(bytes.len() as u64, || self.key.chunk_id(&bytes));
        self.refs.extend([id]);
        self.sink.put(id, BlobKind::Tree, bytes)?;
        Ok(id)
    }
}

/// The name a top-level path gets in a multi-path root.
fn top_level_name(path: &Path) -> Result<Vec<u8>, ClientError> {
    path.file_name().map(|n| n.as_bytes().to_vec()).ok_or_else(|| ClientError::BadSource {
        reason: format!("{} has no final component to name it by", path.display()),
    })
}

/// Reads until `buf` is full or the reader ends; how many bytes it holds.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn node_from(name: Vec<u8>, kind: NodeKind, meta: &Metadata) -> Node {
    Node {
        name,
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: Timestamp::from_parts(meta.mtime(), meta.mtime_nsec()),
        size: 0,
        inode: meta.ino(),
        dev: meta.dev(),
        ctime: Timestamp::from_parts(meta.ctime(), meta.ctime_nsec()),
    }
}

/// Checks the paths of a backup before anything is sent: absolute, present,
/// and (when there are several) with distinct final components.
pub(crate) fn check_paths(paths: &[PathBuf]) -> Result<(), ClientError> {
    if paths.is_empty() {
        return Err(ClientError::BadSource { reason: "no path to back up".into() });
    }
    let mut names = std::collections::BTreeSet::new();
    for p in paths {
        if !p.is_absolute() {
            return Err(ClientError::BadSource { reason: format!("{} is not an absolute path", p.display()) });
        }
        fs::symlink_metadata(p).map_err(|e| ClientError::io(p, e))?;
        if paths.len() > 1 {
            let name = top_level_name(p)?;
            if !names.insert(name) {
                return Err(ClientError::BadSource {
                    reason: format!("two paths end in the same name as {}; back them up separately", p.display()),
                });
            }
        }
    }
    Ok(())
}
