//! Content-defined chunking: cuts a byte stream into chunks whose boundaries
//! depend on the content around them, so that an insertion or deletion
//! changes only the chunks it touches and everything else deduplicates.
//!
//! ```text
//!   Read ──► RetryInterrupted ──► FastCDC v2020 (min 256 KiB, avg 1 MiB, max 4 MiB) ──► Vec<u8> per chunk
//! ```
//!
//! The invariant kept here: every chunk is at most `CHUNK_MAX` bytes, every
//! chunk but the last is at least `CHUNK_MIN` bytes, and the chunks
//! concatenate back to exactly the bytes read. The parameters are part of the
//! repository format in effect: changing them would cut new boundaries and
//! defeat deduplication against existing snapshots.

use std::io::{self, Read};

use fastcdc::v2020::{Error as CdcError, StreamCDC};

use crate::PackError;

/// The smallest chunk, except for the last chunk of a stream.
pub const CHUNK_MIN: usize = 256 * 1024;
/// The size chunks cluster around.
pub const CHUNK_AVG: usize = 1024 * 1024;
/// The largest chunk: a cut is forced here when the content offers none.
pub const CHUNK_MAX: usize = 4 * 1024 * 1024;
/// The longest chunk plaintext any reader must expect.
pub const MAX_CHUNK_LEN: usize = CHUNK_MAX;

/// A streaming chunker over any reader. It yields each chunk's bytes in
/// order; after the first error it yields nothing more, since the position in
/// the source is then unknown.
pub struct Chunker<R: Read> {
    inner: StreamCDC<RetryInterrupted<R>>,
    failed: bool,
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("failed", &self.failed).finish_non_exhaustive()
    }
}

/// Starts chunking `reader`. The chunker holds a buffer of `CHUNK_MAX` bytes.
pub fn chunker<R: Read>(reader: R) -> Chunker<R> {
    // The sizes are constants well inside FastCDC's accepted ranges, which
    // its constructor asserts.
    Chunker {
        inner: StreamCDC::new(RetryInterrupted(reader), CHUNK_MIN as u32, CHUNK_AVG as u32, CHUNK_MAX as u32),
        failed: false,
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Vec<u8>, PackError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.inner.next()? {
            Ok(chunk) => Some(Ok(chunk.data)),
            Err(err) => {
                self.failed = true;
                Some(Err(PackError::Io(match err {
                    CdcError::IoError(err) => err.to_string(),
                    other => other.to_string(),
                })))
            }
        }
    }
}

/// Retries reads that a signal interrupted. FastCDC passes every read error
/// up, and an interrupted read is not a failure of the source.
struct RetryInterrupted<R>(R);

impl<R: Read> Read for RetryInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    use super::*;

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
        chunker(data).collect::<Result<_, _>>().unwrap()
    }

    fn check_sizes_and_concatenation(data: &[u8], chunks: &[Vec<u8>]) {
        assert_eq!(chunks.concat(), data);
        for (i, chunk) in chunks.iter().enumerate() {
            assert!(chunk.len() <= CHUNK_MAX, "chunk {i} has {} bytes", chunk.len());
            assert!(!chunk.is_empty());
            if i + 1 < chunks.len() {
                assert!(chunk.len() >= CHUNK_MIN, "chunk {i} has {} bytes", chunk.len());
            }
        }
    }

    #[test]
    fn empty_and_short_inputs() {
        assert!(chunks(&[]).is_empty());
        let short = random_bytes(1000, 1);
        assert_eq!(chunks(&short), vec![short]);
    }

    #[test]
    fn zeros_are_cut_at_the_maximum() {
        let data = vec![0u8; 3 * CHUNK_MAX + 5];
        let got = chunks(&data);
        check_sizes_and_concatenation(&data, &got);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![CHUNK_MAX, CHUNK_MAX, CHUNK_MAX, 5]);
    }

    #[test]
    fn boundaries_are_content_defined() {
        let original = random_bytes(32 * 1024 * 1024, 42);
        let mut edited = original[..16 * 1024 * 1024].to_vec();
        edited.extend_from_slice(&random_bytes(1024 * 1024, 43));
        edited.extend_from_slice(&original[16 * 1024 * 1024..]);

        let before = chunks(&original);
        let after = chunks(&edited);
        check_sizes_and_concatenation(&original, &before);
        check_sizes_and_concatenation(&edited, &after);
        assert!(before.len() >= 8, "random data should cut near the average, got {} chunks", before.len());

        let hashes = |chunks: &[Vec<u8>]| chunks.iter().map(|c| *blake3::hash(c).as_bytes()).collect::<HashSet<_>>();
        let (old, new) = (hashes(&before), hashes(&after));
        let survived = old.intersection(&new).count();
        assert!(survived * 10 >= old.len() * 8, "only {survived} of {} chunks survived a 1 MiB insertion", old.len());
    }

    /// Hands out at most `step` bytes per read and is interrupted before
    /// every other read.
    struct Stuttering<'a> {
        data: &'a [u8],
        step: usize,
        interrupt_next: bool,
    }

    impl Read for Stuttering<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if !self.interrupt_next {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads_give_the_same_chunks() {
        let data = random_bytes(6 * 1024 * 1024, 7);
        let reader = Stuttering { data: &data, step: 100_003, interrupt_next: false };
        let got: Vec<Vec<u8>> = chunker(reader).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, chunks(&data));
    }

    /// Yields `good` bytes, then fails.
    struct Failing {
        good: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(1);
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_is_reported_once_then_the_chunker_stops() {
        let mut c = chunker(Failing { good: 10 });
        match c.next() {
            Some(Err(PackError::Io(msg))) => assert!(msg.contains("disk on fire"), "{msg}"),
            other => panic!("expected an io error, got {other:?}"),
        }
        assert!(c.next().is_none());
    }
}
