//! Exclusion rules of a backup: glob patterns and marker files.
//!
//! A pattern without a `/` matches an entry's name at any depth (`*.tmp`);
//! a pattern that starts with `/` matches the entry's absolute path
//! (`/srv/media/cache`); a trailing `/` restricts either to directories
//! (`cache/`). In a pattern `*` matches any run of characters but `/`, `**`
//! any run including `/`, `?` one character but `/`. A directory that holds
//! one of the marker files (`exclude_if_present`, e.g. `.nobackup`) is left
//! out whole; with `exclude_caches` a `CACHEDIR.TAG` marker counts only if
//! it starts with the signature of the Cache Directory Tagging
//! Specification, so that a stray file of that name does not hide data.
//!
//! The invariant: an excluded entry is never read, and everything that no
//! rule names is backed up as before (an empty rule set excludes nothing).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::ClientError;

/// The first bytes of a valid `CACHEDIR.TAG`.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    glob: Vec<u8>,
    /// Matched against the absolute path rather than the name.
    anchored: bool,
    dirs_only: bool,
}

/// Compiled exclusion rules; `Excludes::default()` excludes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Excludes {
    patterns: Vec<Pattern>,
    markers: Vec<Vec<u8>>,
    caches: bool,
}

impl Excludes {
    /// Compiles `patterns` and marker file names; an empty pattern or a
    /// marker that is not a plain file name is refused, naming it.
    pub fn new(patterns: &[String], markers: &[String], exclude_caches: bool) -> Result<Self, ClientError> {
        let mut out = Excludes { caches: exclude_caches, ..Default::default() };
        for p in patterns {
            let dirs_only = p.ends_with('/') && p.len() > 1;
            let body = if dirs_only { &p[..p.len() - 1] } else { p.as_str() };
            if body.is_empty() {
                return Err(ClientError::BadSource { reason: format!("exclude pattern {p:?} is empty") });
            }
            let anchored = body.starts_with('/');
            if !anchored && body.contains('/') {
                return Err(ClientError::BadSource {
                    reason: format!("exclude pattern {p:?}: a pattern with a '/' inside must be an absolute path"),
                });
            }
            out.patterns.push(Pattern { glob: body.as_bytes().to_vec(), anchored, dirs_only });
        }
        for m in markers {
            if m.is_empty() || m.contains('/') || m == "." || m == ".." {
                return Err(ClientError::BadSource { reason: format!("exclude marker {m:?} is not a file name") });
            }
            out.markers.push(m.as_bytes().to_vec());
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.markers.is_empty() && !self.caches
    }

    /// Whether the entry at `path` (named `name`) is excluded by a pattern.
    pub fn excludes(&self, path: &Path, name: &OsStr, is_dir: bool) -> bool {
        self.patterns.iter().any(|p| {
            if p.dirs_only && !is_dir {
                return false;
            }
            let subject = if p.anchored { path.as_os_str().as_bytes() } else { name.as_bytes() };
            glob_match(&p.glob, subject)
        })
    }

    /// Whether directory `dir` holds a marker that leaves it out.
    pub fn marked(&self, dir: &Path) -> bool {
        if self.markers.iter().any(|m| dir.join(OsStr::from_bytes(m)).symlink_metadata().is_ok()) {
            return true;
        }
        if self.caches {
            let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
            if let Ok(mut f) = std::fs::File::open(dir.join("CACHEDIR.TAG")) {
                use std::io::Read;
                if f.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE {
                    return true;
                }
            }
        }
        false
    }
}

/// Whether `text` matches `glob` (`*`, `**`, `?`; every other byte literal).
pub fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            let (crosses, rest) = match rest.split_first() {
                Some((b'*', r)) => (true, r),
                _ => (false, rest),
            };
            // Try every split point, stopping at a '/' unless `**`.
            for i in 0..=text.len() {
                if glob_match(rest, &text[i..]) {
                    return true;
                }
                if i < text.len() && text[i] == b'/' && !crosses {
                    return false;
                }
            }
            false
        }
        Some((b'?', rest)) => matches!(text.split_first(), Some((c, t)) if *c != b'/' && glob_match(rest, t)),
        Some((c, rest)) => matches!(text.split_first(), Some((t0, t)) if t0 == c && glob_match(rest, t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_and_paths() {
        assert!(glob_match(b"*.tmp", b"a.tmp"));
        assert!(!glob_match(b"*.tmp", b"a.tmpx"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"/srv/*", b"/srv/a/b"));
        assert!(glob_match(b"/srv/**", b"/srv/a/b"));
        assert!(glob_match(b"cache", b"cache"));
        assert!(!glob_match(b"cache", b"caches"));
    }

    #[test]
    fn rules_compile_and_apply() {
        let ex = Excludes::new(&["*.tmp".into(), "cache/".into(), "/srv/x/**".into()], &[".nobackup".into()], false)
            .unwrap();
        assert!(ex.excludes(Path::new("/a/b.tmp"), OsStr::new("b.tmp"), false));
        assert!(ex.excludes(Path::new("/a/cache"), OsStr::new("cache"), true));
        assert!(!ex.excludes(Path::new("/a/cache"), OsStr::new("cache"), false));
        assert!(ex.excludes(Path::new("/srv/x/y/z"), OsStr::new("z"), false));
        assert!(!ex.excludes(Path::new("/srv/y"), OsStr::new("y"), false));
        assert!(Excludes::new(&["".into()], &[], false).is_err());
        assert!(Excludes::new(&["a/b".into()], &[], false).is_err());
        assert!(Excludes::new(&[], &["a/b".into()], false).is_err());
        assert!(Excludes::default().is_empty());

        let dir = tempfile::tempdir().unwrap();
        assert!(!ex.marked(dir.path()));
        std::fs::write(dir.path().join(".nobackup"), b"").unwrap();
        assert!(ex.marked(dir.path()));
        let caches = Excludes::new(&[], &[], true).unwrap();
        std::fs::write(dir.path().join("CACHEDIR.TAG"), b"not a tag").unwrap();
        assert!(!caches.marked(dir.path()));
        std::fs::write(dir.path().join("CACHEDIR.TAG"), CACHEDIR_SIGNATURE).unwrap();
        assert!(caches.marked(dir.path()));
    }
}
