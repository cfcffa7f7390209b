//! Content-defined chunking: cuts a byte stream into chunks whose boundaries
//! depend on the content around them, so that an insertion or deletion
//! changes only the chunks it touches and everything else deduplicates.
//!
//! ```text
//!   Read ──► RetryInterrupted ──► ChunkBuffer (reused) ──► FastCDC v2020 cut (min 256 KiB, avg 1 MiB, max 4 MiB)
//!                                                                  └──► Vec<u8> per chunk (one copy)
//! ```
//!
//! The invariant kept here: every chunk is at most `CHUNK_MAX` bytes, every
//! chunk but the last is at least `CHUNK_MIN` bytes, and the chunks
//! concatenate back to exactly the bytes read. The parameters, and the cut
//! points FastCDC v2020 (normalisation level 1, no seed) finds with them, are
//! part of the repository format in effect: changing either would cut new
//! boundaries and defeat deduplication against existing snapshots.
//!
//! The cuts are exactly those of `fastcdc::v2020::StreamCDC` (a property test
//! holds the two equal): each cut is searched in the next `CHUNK_MAX` bytes
//! of the stream, or in what is left at its end. Only the buffering differs.
//! StreamCDC allocates a zeroed `CHUNK_MAX` buffer per stream and, for every
//! chunk, shifts the rest of it down, copies the chunk out and zeroes the
//! freed tail. Here one `ChunkBuffer` (growing to four times `CHUNK_MAX`) can
//! serve every stream a walker reads: a chunk is copied out once, and the
//! unread tail moves to the front only when the next window would pass the
//! end.

use std::io::{self, Read};

use fastcdc::v2020::{cut, logarithm2, Normalization, MASKS};

use crate::PackError;

/// The smallest chunk, except for the last chunk of a stream.
pub const CHUNK_MIN: usize = 256 * 1024;
/// The size chunks cluster around.
pub const CHUNK_AVG: usize = 1024 * 1024;
/// The largest chunk: a cut is forced here when the content offers none.
pub const CHUNK_MAX: usize = 4 * 1024 * 1024;
/// The longest chunk plaintext any reader must expect.
pub const MAX_CHUNK_LEN: usize = CHUNK_MAX;

/// The most bytes a `ChunkBuffer` holds: enough for a cut window and three
/// more maximal chunks, so the tail is moved at most once per 12 MiB consumed
/// and a read asks the source for megabytes at a time.
const BUFFER_LEN: usize = 4 * CHUNK_MAX;
/// What a buffer starts with once it is first read into; it doubles up to
/// `BUFFER_LEN` as streams need, so chunking one small file stays cheap.
const INITIAL_BUFFER_LEN: usize = 64 * 1024;

/// FastCDC's normalisation: StreamCDC's and FastCDC's default, level 1.
const NORMALIZATION: Normalization = Normalization::Level1;

/// The read buffer of a chunker, reusable across any number of streams
/// through [`Chunker::with_buffer`] and [`Chunker::into_buffer`]. It grows
/// (and is zeroed) once, up to 16 MiB, as the streams it serves need.
pub struct ChunkBuffer {
    bytes: Vec<u8>,
}

impl ChunkBuffer {
    /// An empty buffer; nothing is allocated until the first read.
    pub fn new() -> Self {
        ChunkBuffer { bytes: Vec::new() }
    }
}

impl Default for ChunkBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ChunkBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuffer").field("len", &self.bytes.len()).finish()
    }
}

/// A streaming chunker over any reader. It yields each chunk's bytes in
/// order; after the first error it yields nothing more, since the position in
/// the source is then unknown.
pub struct Chunker<R: Read> {
    reader: RetryInterrupted<R>,
    buf: ChunkBuffer,
    /// The first byte not yet handed out.
    start: usize,
    /// One past the last byte read into `buf`.
    end: usize,
    eof: bool,
    failed: bool,
    masks: Masks,
}

impl<R: Read> std::fmt::Debug for Chunker<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("buffered", &(self.end - self.start))
            .field("eof", &self.eof)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Starts chunking `reader` with a buffer of its own. A caller that chunks
/// many streams should pass one buffer from stream to stream instead
/// ([`Chunker::with_buffer`]).
pub fn chunker<R: Read>(reader: R) -> Chunker<R> {
    Chunker::with_buffer(reader, ChunkBuffer::new())
}

/// FastCDC v2020's judgement masks for the chunk sizes above, computed the
/// way its `FastCDC` and `StreamCDC` constructors compute them.
#[derive(Clone, Copy)]
struct Masks {
    small: u64,
    large: u64,
}

impl Masks {
    fn new() -> Self {
        let bits = logarithm2(CHUNK_AVG as u32);
        let level = NORMALIZATION.bits();
        Masks { small: MASKS[(bits + level) as usize], large: MASKS[(bits - level) as usize] }
    }
}

impl<R: Read> Chunker<R> {
    /// Starts chunking `reader` in `buffer`, which may have served another
    /// stream before; nothing of that stream is kept.
    pub fn with_buffer(reader: R, buffer: ChunkBuffer) -> Self {
        Chunker {
            reader: RetryInterrupted(reader),
            buf: buffer,
            start: 0,
            end: 0,
            eof: false,
            failed: false,
            masks: Masks::new(),
        }
    }

    /// Gives the buffer back, for the next stream.
    pub fn into_buffer(self) -> ChunkBuffer {
        self.buf
    }

    /// Makes sure the next cut's window is buffered: `CHUNK_MAX` bytes, or
    /// everything up to the end of the stream.
    fn fill(&mut self) -> io::Result<()> {
        if self.eof || self.end - self.start >= CHUNK_MAX {
            return Ok(());
        }
        let bytes = &mut self.buf.bytes;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if bytes.len() == BUFFER_LEN && self.start + CHUNK_MAX > BUFFER_LEN {
            bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end - self.start < CHUNK_MAX {
            if self.end == bytes.len() {
                // Only a buffer still short of `BUFFER_LEN` can be full here:
                // a full-size one has room for a whole window past `start`.
                bytes.resize((2 * bytes.len()).clamp(INITIAL_BUFFER_LEN, BUFFER_LEN), 0);
            }
            match self.reader.read(&mut bytes[self.end..])? {
                0 => self.eof = true,
                n => self.end += n,
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Vec<u8>, PackError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(err) = self.fill() {
            self.failed = true;
            return Some(Err(PackError::Io(err.to_string())));
        }
        let window_len = (self.end - self.start).min(CHUNK_MAX);
        if window_len == 0 {
            return None;
        }
        let window = &self.buf.bytes[self.start..self.start + window_len];
        let Masks { small, large } = self.masks;
        // FastCDC cuts a non-empty window after at least one byte and at
        // most the whole window.
        let (_, len) = cut(window, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX, small, large, small << 1, large << 1);
        let chunk = window[..len].to_vec();
        self.start += len;
        Some(Ok(chunk))
    }
}

/// Retries reads that a signal interrupted: an interrupted read is not a
/// failure of the source.
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

    use fastcdc::v2020::StreamCDC;
    use proptest::prelude::*;
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

    /// The chunk lengths fastcdc's own streaming chunker finds: the reference
    /// every cut must match, since the cut points are a repository format.
    fn stream_cdc_lengths(data: &[u8]) -> Vec<usize> {
        StreamCDC::new(data, CHUNK_MIN as u32, CHUNK_AVG as u32, CHUNK_MAX as u32).map(|c| c.unwrap().length).collect()
    }

    /// Hands out a random number of bytes (1 to `max_step`) per read.
    struct Pieces<'a> {
        data: &'a [u8],
        rng: StdRng,
        max_step: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let step = 1 + (self.rng.next_u64() as usize) % self.max_step;
            let n = buf.len().min(step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Inputs of one kind: random bytes (cut by content), zeros (cut at the
    /// maximum), text over a small alphabet, and random stretches between
    /// runs of zeros (both kinds of cut, and windows that straddle them).
    fn input(kind: u8, len: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        match kind % 4 {
            0 => random_bytes(len, seed),
            1 => vec![0u8; len],
            2 => (0..len).map(|_| b"abcde \n"[(rng.next_u32() % 7) as usize]).collect(),
            _ => {
                let mut out = Vec::with_capacity(len);
                let mut zeros = false;
                while out.len() < len {
                    let run = (1 + rng.next_u64() as usize % (6 * CHUNK_MAX)).min(len - out.len());
                    if zeros {
                        out.resize(out.len() + run, 0);
                    } else {
                        let start = out.len();
                        out.resize(start + run, 0);
                        rng.fill_bytes(&mut out[start..]);
                    }
                    zeros = !zeros;
                }
                out
            }
        }
    }

    /// Lengths around every size where the buffering could go wrong: the
    /// chunk limits, the buffer length and their multiples.
    fn interesting_len() -> impl Strategy<Value = usize> {
        const MIB: usize = 1 << 20;
        let bases = vec![
            0,
            CHUNK_MIN,
            CHUNK_AVG,
            2 * CHUNK_AVG,
            CHUNK_MAX,
            2 * CHUNK_MAX,
            8 * MIB,
            BUFFER_LEN - CHUNK_MAX,
            BUFFER_LEN,
            BUFFER_LEN + CHUNK_MAX,
            2 * BUFFER_LEN,
        ];
        prop_oneof![
            (prop::sample::select(bases), -3isize..=3).prop_map(|(b, d)| b.saturating_add_signed(d)),
            0usize..(BUFFER_LEN + 3 * CHUNK_MAX),
            0usize..(2 * CHUNK_MIN),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The chunker cuts exactly where StreamCDC cuts, whatever the input,
        /// the read sizes, and whatever a reused buffer held before.
        #[test]
        fn cuts_match_stream_cdc(
            kind in 0u8..4,
            len in interesting_len(),
            seed in any::<u64>(),
            max_step in prop_oneof![Just(usize::MAX), 1usize..(3 * CHUNK_MAX)],
            previous in 0usize..(2 * BUFFER_LEN),
        ) {
            let data = input(kind, len, seed);
            let expected = stream_cdc_lengths(&data);

            // A buffer that already served another stream, and may still
            // hold part of it.
            let before = random_bytes(previous, !seed);
            let mut warm = chunker(&before[..]);
            let _ = warm.next();
            let buffer = warm.into_buffer();

            let reader = Pieces { data: &data, rng: StdRng::seed_from_u64(seed ^ 1), max_step };
            let got: Vec<Vec<u8>> = Chunker::with_buffer(reader, buffer).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), expected);
            check_sizes_and_concatenation(&data, &got);
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
