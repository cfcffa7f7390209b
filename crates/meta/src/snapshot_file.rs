//! The on-disk and on-the-wire format of a Raft snapshot: a stream of
//! key/value records, written and read one record at a time, so that a
//! snapshot of any size is built, sent and installed in bounded memory.
//!
//! ```text
//!   "CFRSNAP\0" | format u32 LE (2) | schema u32 LE
//!   { key len u32 LE (< u32::MAX) | value len u32 LE | key | value }*
//!   u32::MAX | record count u64 LE | BLAKE3 of every byte before it (32)
//! ```
//!
//! Records come in key order (the order of the state tree). The trailer
//! makes a truncated or corrupted transfer detectable before anything is
//! installed: `verify` reads the whole file first, and only a file whose
//! count and digest match is laid over the state machine. Format 1 (a
//! bincode vector of pairs inside the snapshot record) is only read, once,
//! to convert a store written by an earlier version.

use std::io::{self, Read, Write};

/// The current snapshot format; the state machine's schema travels beside it.
pub const FORMAT: u32 = 2;
const MAGIC: &[u8; 8] = b"CFRSNAP\0";
const END: u32 = u32::MAX;
/// The largest key or value a snapshot record may carry: far above any
/// record of the catalog (a Raft entry is at most 32 MiB), low enough that
/// a corrupted length cannot make the reader allocate without bound.
const MAX_FIELD: u32 = 64 << 20;

/// Writes records, hashing every byte, then the trailer.
pub struct Writer<W: Write> {
    out: W,
    hash: blake3::Hasher,
    count: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, schema: u32) -> io::Result<Self> {
        let mut hash = blake3::Hasher::new();
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FORMAT.to_le_bytes());
        head.extend_from_slice(&schema.to_le_bytes());
        hash.update(&head);
        out.write_all(&head)?;
        Ok(Self { out, hash, count: 0 })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let len = |what: &str, n: usize| {
            u32::try_from(n).ok().filter(|n| *n <= MAX_FIELD).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("a snapshot {what} of {n} bytes is too large"))
            })
        };
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&len("key", key.len())?.to_le_bytes());
        head[4..].copy_from_slice(&len("value", value.len())?.to_le_bytes());
        for part in [&head[..], key, value] {
            self.hash.update(part);
            self.out.write_all(part)?;
        }
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and returns the writer and the record count.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let mut tail = Vec::with_capacity(12);
        tail.extend_from_slice(&END.to_le_bytes());
        tail.extend_from_slice(&self.count.to_le_bytes());
        self.hash.update(&tail);
        self.out.write_all(&tail)?;
        self.out.write_all(self.hash.finalize().as_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.count))
    }
}

/// Reads records in order; the last `next` checks the trailer.
pub struct Reader<R: Read> {
    input: R,
    hash: blake3::Hasher,
    count: u64,
    done: bool,
    pub schema: u32,
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut head = [0u8; 16];
        input.read_exact(&mut head).map_err(|e| bad(format!("snapshot header: {e}")))?;
        if &head[..8] != MAGIC {
            return Err(bad("snapshot header: not a coffer snapshot file".into()));
        }
        let format = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        let schema = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        if format != FORMAT {
            return Err(bad(format!("snapshot format {format} is not supported (this node reads {FORMAT})")));
        }
        let mut hash = blake3::Hasher::new();
        hash.update(&head);
        Ok(Self { input, hash, count: 0, done: false, schema })
    }

    /// The next record, `None` after the trailer was read and matched.
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len).map_err(|e| bad(format!("snapshot record {}: {e}", self.count)))?;
        self.hash.update(&len);
        let klen = u32::from_le_bytes(len);
        if klen == END {
            let mut tail = [0u8; 40];
            self.input.read_exact(&mut tail).map_err(|e| bad(format!("snapshot trailer: {e}")))?;
            self.hash.update(&tail[..8]);
            let count = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
            if count != self.count {
                return Err(bad(format!("snapshot trailer: {count} records announced, {} read", self.count)));
            }
            if self.hash.finalize().as_bytes() != &tail[8..] {
                return Err(bad("snapshot trailer: the digest does not match the records".into()));
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(bad("snapshot trailer: bytes after the end of the snapshot".into()));
            }
            self.done = true;
            return Ok(None);
        }
        self.input.read_exact(&mut len).map_err(|e| bad(format!("snapshot record {}: {e}", self.count)))?;
        self.hash.update(&len);
        let vlen = u32::from_le_bytes(len);
        if klen > MAX_FIELD || vlen > MAX_FIELD {
            return Err(bad(format!(
                "snapshot record {}: a field of {} bytes is too large",
                self.count,
                klen.max(vlen)
            )));
        }
        let mut key = vec![0u8; klen as usize];
        let mut value = vec![0u8; vlen as usize];
        self.input.read_exact(&mut key).map_err(|e| bad(format!("snapshot record {}: {e}", self.count)))?;
        self.input.read_exact(&mut value).map_err(|e| bad(format!("snapshot record {}: {e}", self.count)))?;
        self.hash.update(&key);
        self.hash.update(&value);
        self.count += 1;
        Ok(Some((key, value)))
    }
}

/// Reads a whole snapshot, checking every record and the trailer; returns
/// the schema and the record count.
pub fn verify<R: Read>(input: R) -> io::Result<(u32, u64)> {
    let mut r = Reader::new(input)?;
    while r.next_record()?.is_some() {}
    Ok((r.schema, r.count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 7).unwrap();
        for (k, v) in pairs {
            w.push(k, v).unwrap();
        }
        w.finish().unwrap().0
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// What is written reads back; any truncation or flipped byte fails.
        #[test]
        fn records_round_trip_and_damage_is_detected(
            pairs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
            at in any::<prop::sample::Index>(),
        ) {
            let bytes = write(&pairs);
            let mut r = Reader::new(bytes.as_slice()).unwrap();
            prop_assert_eq!(r.schema, 7);
            let mut back = Vec::new();
            while let Some(p) = r.next_record().unwrap() {
                back.push(p);
            }
            prop_assert_eq!(&back, &pairs);
            let i = at.index(bytes.len());
            prop_assert!(verify(&bytes[..i]).is_err(), "truncated at {i}");
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x20;
            prop_assert!(verify(flipped.as_slice()).is_err(), "flipped at {i}");
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating() {
        let mut bytes = write(&[]);
        bytes.truncate(16);
        bytes.extend_from_slice(&(MAX_FIELD + 1).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let e = verify(bytes.as_slice()).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }
}
