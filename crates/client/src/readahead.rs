//! Read-ahead for the walker: a helper thread asks the kernel to start reading
//! the files the walker will read next, so that on a cold cache the disk
//! works while the walker chunks, hashes and hands on the files before them.
//!
//! ```text
//!   walker:  enter(dir, its regular files in walk order) ── passed(name) ... ── leave()
//!                 │ one queue per directory the walker is in, innermost last
//!                 ▼
//!   helper:  next unhinted file, innermost directory first
//!              ──► open (O_NOFOLLOW | O_NONBLOCK) ──► fstat: regular, under DIRECT_MIN? ──► posix_fadvise(WILLNEED)
//! ```
//!
//! It is only a hint. The helper reads no data into the process, changes
//! nothing the walker reads or records, leaves access times alone (opening and
//! advising do not touch them) and ignores every failure: the walker meets the
//! same error when it gets there and records it. Memory stays bounded: at most
//! `WINDOW` bytes are hinted ahead of the walker. Only files smaller than
//! `direct::DIRECT_MIN` are hinted, whole: the walker reads larger ones
//! around the page cache, where a hint would only read their start twice.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::fs::{fadvise, Advice};

/// Bytes hinted for files the walker has not reached yet.
const WINDOW: u64 = 64 << 20;

/// The helper thread and the queue it shares with the walker. Dropping it
/// stops the thread.
pub(crate) struct ReadAhead {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The directories the walker is in, outermost first.
    dirs: Vec<DirQueue>,
    next_id: u64,
    /// Bytes hinted for entries the walker has not passed.
    ahead: u64,
    closed: bool,
}

/// The regular files of one directory, in the order the walker reads them
/// (sorted by name bytes).
struct DirQueue {
    id: u64,
    dir: PathBuf,
    names: Vec<OsString>,
    /// Bytes hinted per entry; zero when not (or not yet) hinted.
    hinted: Vec<u64>,
    /// The next entry to hint.
    next_hint: usize,
    /// Entries before this one are behind the walker.
    walked: usize,
}

impl ReadAhead {
    /// Starts the helper thread, or `None` if it cannot be started (the walk
    /// then goes on without hints).
    pub fn start() -> Option<Self> {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
        let worker = shared.clone();
        match std::thread::Builder::new().name("coffer-readahead".into()).spawn(move || worker.run()) {
            Ok(thread) => Some(ReadAhead { shared, thread: Some(thread) }),
            Err(e) => {
                tracing::debug!(error = %e, "no read-ahead thread; reading without hints");
                None
            }
        }
    }

    /// The walker enters `dir`, whose regular files it will read in the order
    /// of `files` (sorted by name bytes).
    pub fn enter(&self, dir: &Path, files: Vec<OsString>) {
        let mut st = self.shared.lock();
        let id = st.next_id;
        st.next_id += 1;
        let hinted = vec![0; files.len()];
        st.dirs.push(DirQueue { id, dir: dir.to_path_buf(), names: files, hinted, next_hint: 0, walked: 0 });
        drop(st);
        self.shared.changed.notify_all();
    }

    /// The walker is done with entry `name` of the directory it is in (read
    /// or skipped); with it, every file sorting before it is behind too.
    pub fn passed(&self, name: &OsStr) {
        let mut st = self.shared.lock();
        let Some(q) = st.dirs.last_mut() else { return };
        let rest = &q.names[q.walked..];
        let Ok(i) = rest.binary_search_by(|n| n.as_bytes().cmp(name.as_bytes())) else { return };
        let end = q.walked + i + 1;
        let freed: u64 = q.hinted[q.walked..end].iter().sum();
        q.walked = end;
        st.ahead -= freed;
        drop(st);
        if freed > 0 {
            self.shared.changed.notify_all();
        }
    }

    /// The walker leaves the innermost directory.
    pub fn leave(&self) {
        let mut st = self.shared.lock();
        let Some(q) = st.dirs.pop() else { return };
        st.ahead -= q.hinted[q.walked..].iter().sum::<u64>();
        drop(st);
        self.shared.changed.notify_all();
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is counters and queues that every step leaves consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let (id, index, path) = {
                let mut st = self.lock();
                loop {
                    if st.closed {
                        return;
                    }
                    if st.ahead < WINDOW {
                        if let Some(job) = st.next_job() {
                            break job;
                        }
                    }
                    st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let len = hint(&path);
            let mut st = self.lock();
            let counted = match st.dirs.iter_mut().find(|q| q.id == id) {
                // Only what the walker has still to read counts against the
                // window; it may have passed the file meanwhile.
                Some(q) if index >= q.walked => {
                    q.hinted[index] = len;
                    len
                }
                _ => 0,
            };
            st.ahead += counted;
        }
    }
}

impl State {
    /// The next file to hint: in the innermost directory that has one left,
    /// the first the walker has not passed.
    fn next_job(&mut self) -> Option<(u64, usize, PathBuf)> {
        for q in self.dirs.iter_mut().rev() {
            q.next_hint = q.next_hint.max(q.walked);
            if q.next_hint < q.names.len() {
                let index = q.next_hint;
                q.next_hint += 1;
                return Some((q.id, index, q.dir.join(&q.names[index])));
            }
        }
        None
    }
}

/// Asks the kernel to read the start of `path` into the page cache; returns
/// the bytes asked for, 0 if anything failed or it is not a regular file.
fn hint(path: &Path) -> u64 {
    // No symlink is followed and no FIFO waited on, should the entry have
    // changed since the directory was listed.
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(_) => return 0,
    };
    advise(&file).unwrap_or(0)
}

fn advise(file: &File) -> Option<u64> {
    let meta = file.metadata().ok()?;
    // The walker reads large files around the page cache (`direct`):
    // hinting them would read their start twice.
    if !meta.is_file() || meta.len() >= crate::direct::DIRECT_MIN {
        return None;
    }
    let len = NonZeroU64::new(meta.len())?;
    fadvise(file, 0, Some(len), Advice::WillNeed).ok()?;
    Some(len.get())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn ahead(ra: &ReadAhead) -> u64 {
        ra.shared.lock().ahead
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn hints_stay_within_the_window_and_are_released_as_the_walker_passes() {
        let dir = tempfile::tempdir().unwrap();
        // Files of half the size read directly, ten more than the window
        // holds, and one too large to be hinted at all.
        let len = crate::direct::DIRECT_MIN / 2;
        let window_files = WINDOW / len;
        let mut names: Vec<OsString> = (0..window_files + 10).map(|i| OsString::from(format!("f{i:03}"))).collect();
        for n in &names {
            let f = File::create(dir.path().join(n)).unwrap();
            f.set_len(len).unwrap();
        }
        let large = OsString::from("a-large");
        File::create(dir.path().join(&large)).unwrap().set_len(crate::direct::DIRECT_MIN).unwrap();
        names.insert(0, large);
        let ra = ReadAhead::start().unwrap();
        ra.enter(dir.path(), names.clone());
        wait_for("the window to fill", || ahead(&ra) == window_files * len);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ahead(&ra), window_files * len, "the helper went past its window");
        assert_eq!(ra.shared.lock().dirs[0].hinted[0], 0, "a file read directly was hinted");

        // Passing the third file releases the first three.
        ra.passed(&names[2]);
        wait_for("the window to fill again", || ahead(&ra) == window_files * len);
        assert_eq!(ra.shared.lock().dirs[0].walked, 3);

        // Names that are not queued (a subdirectory) change nothing.
        ra.passed(OsStr::new("f02x"));
        assert_eq!(ra.shared.lock().dirs[0].walked, 3);

        ra.leave();
        assert_eq!(ahead(&ra), 0);
        assert!(ra.shared.lock().dirs.is_empty());
    }

    #[test]
    fn the_innermost_directory_goes_first_and_passed_files_are_not_hinted() {
        let queue = |id: u64, names: &[&str]| DirQueue {
            id,
            dir: PathBuf::from(format!("/d{id}")),
            names: names.iter().map(OsString::from).collect(),
            hinted: vec![0; names.len()],
            next_hint: 0,
            walked: 0,
        };
        let mut st = State { dirs: vec![queue(0, &["a", "z"]), queue(1, &["b", "c", "d"])], ..State::default() };
        st.dirs[1].walked = 1;
        let jobs: Vec<_> = std::iter::from_fn(|| st.next_job()).collect();
        assert_eq!(
            jobs,
            vec![
                (1, 1, PathBuf::from("/d1/c")),
                (1, 2, PathBuf::from("/d1/d")),
                (0, 0, PathBuf::from("/d0/a")),
                (0, 1, PathBuf::from("/d0/z")),
            ]
        );
    }

    #[test]
    fn only_regular_files_are_hinted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"12345").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert_eq!(hint(&file), 5);
        for other in ["link", "dir", "empty", "gone"] {
            assert_eq!(hint(&dir.path().join(other)), 0, "{other}");
        }
    }
}
