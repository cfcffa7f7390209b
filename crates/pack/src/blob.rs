//! Blobs: a chunk or a tree after compression and authenticated encryption.
//! This is what leaves the agent; storage nodes only ever see blobs.
//!
//! ```text
//!   plaintext ──zstd level 1, kept if it saves enough──► payload ──AES-256-GCM──► blob
//!
//!   blob = version u8 | flags u8 | epoch u32 | salt [32] | ciphertext | tag [16]
//!          \______________ header ______________/
//!   blob key = BLAKE3-keyed(enc_key of the epoch, salt)      nonce = 0      AAD = header | chunk id
//! ```
//!
//! The invariant kept here: a nonce never repeats under one AES key, at any
//! scale and across any number of writers. Random 96-bit nonces under one key
//! would run into the birthday bound after a few billion blobs, so every blob
//! gets its own key instead, derived from 32 fresh random bytes stored in the
//! blob; with a key used exactly once, the all-zero nonce is safe. The AAD
//! binds the header and the chunk id, so a blob moved to another id, or with
//! its flags or epoch changed, fails authentication. `open` trusts nothing:
//! it authenticates, decompresses within a bound, and re-hashes the plaintext
//! against the id before returning a byte.
//!
//! Version 2 names the key epoch the blob was sealed in (`RepoKey::rotate`);
//! version 1, written before epochs existed, has no epoch field and is
//! always epoch 0. Blobs are never rewritten when the key rotates.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use coffer_types::ChunkId;
use rand::rngs::OsRng;
use rand::RngCore;
use ring::aead::{Aad, Nonce, NONCE_LEN};
use zstd::bulk::{Compressor, Decompressor};

use crate::key::aead_key;
use crate::wire::Take;
use crate::{PackError, RepoKey, MAX_CHUNK_LEN};

/// The version `seal` writes: with the key epoch in the header.
const BLOB_VERSION: u8 = 2;
/// The version before key epochs, still opened (as epoch 0).
const BLOB_V1: u8 = 1;
/// Flag bit 0: the payload is one zstd frame.
const FLAG_ZSTD: u8 = 1;
const SALT_LEN: usize = 32;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 2 + 4 + SALT_LEN;
const V1_HEADER_LEN: usize = 2 + SALT_LEN;
const WHAT: &str = "blob";

/// How many bytes a blob adds to its (possibly compressed) payload.
pub const BLOB_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The most bytes `open` will inflate a compressed payload to. It bounds the
/// memory an authenticated but malicious or buggy blob can claim. `seal`
/// compresses only plaintexts up to this size and stores larger ones raw, so
/// every blob `seal` makes can be opened.
pub const MAX_DECOMPRESSED_LEN: usize = 2 * MAX_CHUNK_LEN;

const ZSTD_LEVEL: i32 = 1;
/// zstd level 1 sizes its match-finding hash table for the input (2^13 or
/// more entries for a chunk). A 2^12-entry table (16 KiB) stays in the
/// first-level cache: measured on 1 MiB chunks of the bench mix's SQL dump
/// and JSON logs, it compresses 14-16% faster and, on those files, about 1%
/// smaller, since fewer long-range candidates matter less than locality
/// there. Decompression does not depend on it (nor on `LARGE_MIN_MATCH`):
/// frames stay readable by any zstd decoder, old blobs included.
const ZSTD_HASH_LOG: u32 = 12;
/// Inputs at least this long (a text chunk is 16-256 KiB, a binary one
/// larger) are compressed with `LARGE_HASH_LOG` and `LARGE_MIN_MATCH`.
const LARGE_INPUT: usize = 16 * 1024;
/// On chunks of a dump or a log, a 2^11-entry table and matches of at
/// least 7 bytes (level 1 asks for 5 below 128 KiB, 6 above) find fewer,
/// longer matches: measured with zstd's own benchmark on 64 KiB pieces of
/// the bench mix, 10% faster on the SQL dump and the JSON logs, 1% smaller
/// on the dump and 0.1% larger on the logs. On small files (a few KiB of
/// config or template) the same settings lose 4-5% of the saving for no
/// speed, so those keep `ZSTD_HASH_LOG` and zstd's own minimum.
const LARGE_HASH_LOG: u32 = 11;
const LARGE_MIN_MATCH: u32 = 7;
/// Compression is kept only when it saves at least 1/32 (about 3%) of the
/// plaintext; below that, the cost of inflating on every restore buys
/// nothing.
const MIN_SAVING_DIVISOR: usize = 32;
/// Plaintexts longer than this are first judged on samples, so that
/// incompressible data (media, archives, encrypted dumps) costs a small
/// fraction of a full compression attempt.
const SAMPLE_ABOVE: usize = 128 * 1024;
const SAMPLE_LEN: usize = 16 * 1024;
const SAMPLE_COUNT: usize = 4;

thread_local! {
    // zstd contexts are large and slow to set up relative to one chunk, so
    // each thread keeps one of each. `compress2` resets the session at every
    // call, so a failed (over-budget) compression leaves nothing behind.
    // The compressor remembers whether it is set for large inputs.
    static COMPRESSOR: RefCell<Option<(Compressor<'static>, bool)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Whether `seal_with` may compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Compress when it pays (see `MIN_SAVING_DIVISOR`).
    #[default]
    Auto,
    /// Store the plaintext raw, for data known to be incompressible.
    None,
}

/// A sealed blob and whether its payload was compressed. The flag is there
/// for statistics; `open` reads the same fact from the blob itself.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    pub bytes: Vec<u8>,
    pub compressed: bool,
}

impl SealedBlob {
    /// The blob, ready to append to a pack.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A blob can be megabytes long; its length is what a log wants.
        f.debug_struct("SealedBlob").field("len", &self.bytes.len()).field("compressed", &self.compressed).finish()
    }
}

impl RepoKey {
    /// Seals a chunk or tree stored under `id`, compressing when it pays.
    ///
    /// Panics only if the operating system cannot provide randomness, since
    /// sealing without a fresh salt would break the no-repeat invariant.
    pub fn seal(&self, id: &ChunkId, plaintext: &[u8]) -> SealedBlob {
        self.seal_with(id, plaintext, Compression::Auto)
    }

    /// Seals with an explicit compression choice.
    pub fn seal_with(&self, id: &ChunkId, plaintext: &[u8], compression: Compression) -> SealedBlob {
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        // The payload is written straight after room for the header, so that
        // it is encrypted in place, without a copy.
        let mut blob = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
        blob.resize(HEADER_LEN, 0);
        let compressed = compression == Compression::Auto && compress_after_header(plaintext, &mut blob);
        if !compressed {
            blob.truncate(HEADER_LEN);
            blob.extend_from_slice(plaintext);
        }
        let epoch = self.current_enc_key();
        let header = encode_header(if compressed { FLAG_ZSTD } else { 0 }, epoch.epoch, &salt);
        let (head, payload) = blob.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&header);
        let tag = aead_key(&blob_key(&epoch.key, &salt))
            .seal_in_place_separate_tag(zero_nonce(), Aad::from(aad(&header, id)), payload)
            .expect("AES-GCM seals anything shorter than 64 GiB");
        blob.extend_from_slice(tag.as_ref());
        SealedBlob { bytes: blob, compressed }
    }

    /// Authenticates and decrypts a blob stored under `id`, inflates it if
    /// it is compressed, and checks that the plaintext hashes to `id`. The
    /// blob's epoch picks the key; an epoch this keyring lacks is
    /// `UnknownEpoch`.
    pub fn open(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, PackError> {
        let head = parse_header(blob)?;
        let (header, sealed) = blob.split_at(head.len);
        let mut payload = sealed.to_vec();
        let plain_len = self.decrypt_in_place(id, &head, header, &mut payload)?;
        payload.truncate(plain_len);
        let plaintext = if head.flags & FLAG_ZSTD != 0 { decompress(id, &payload)? } else { payload };
        if self.chunk_id(&plaintext) != *id {
            return Err(PackError::ChunkIdMismatch { expected: *id });
        }
        Ok(plaintext)
    }

    /// `open`, decrypting inside `blob` itself (which it overwrites): the
    /// plaintext of a blob stored raw is a slice of `blob`, that of a
    /// compressed one a new buffer. For readers that own the bytes they
    /// read (a restore's ranged shard reads), this saves the copy `open`
    /// makes. The same checks as `open`, in the same order.
    pub fn open_in_place<'a>(&self, id: &ChunkId, blob: &'a mut [u8]) -> Result<Cow<'a, [u8]>, PackError> {
        let (len, flags, epoch, salt) = {
            let head = parse_header(blob)?;
            (head.len, head.flags, head.epoch, *head.salt)
        };
        let (header, sealed) = blob.split_at_mut(len);
        let head = Header { len, flags, epoch, salt: &salt };
        let plain_len = self.decrypt_in_place(id, &head, header, sealed)?;
        let payload = &sealed[..plain_len];
        let plaintext =
            if flags & FLAG_ZSTD != 0 { Cow::Owned(decompress(id, payload)?) } else { Cow::Borrowed(payload) };
        if self.chunk_id(&plaintext) != *id {
            return Err(PackError::ChunkIdMismatch { expected: *id });
        }
        Ok(plaintext)
    }

    /// Authenticates and decrypts `sealed` (payload and tag) in place under
    /// the key `head` names; returns the payload's length.
    fn decrypt_in_place(
        &self,
        id: &ChunkId,
        head: &Header<'_>,
        header: &[u8],
        sealed: &mut [u8],
    ) -> Result<usize, PackError> {
        if sealed.len() < TAG_LEN {
            return Err(PackError::BadFormat { what: WHAT, reason: "shorter than its tag".to_string() });
        }
        let enc_key = self.enc_key(head.epoch).ok_or(PackError::UnknownEpoch { id: *id, epoch: head.epoch })?;
        aead_key(&blob_key(enc_key, head.salt))
            .open_in_place(zero_nonce(), Aad::from(aad(header, id)), sealed)
            .map_err(|_| PackError::AuthenticationFailed { id: *id })
            .map(|plain| plain.len())
    }

    /// A blob with the given flags byte and payload, sealed under the
    /// current epoch's key with an all-zero salt: for the fuzz targets, which
    /// need to reach what `open` does after authentication (flag checks,
    /// decompression, the id check) with payloads `seal` would never make.
    pub(crate) fn seal_raw(&self, id: &ChunkId, flags: u8, payload: &[u8]) -> Vec<u8> {
        let salt = [0u8; SALT_LEN];
        let epoch = self.current_enc_key();
        let header = encode_header(flags, epoch.epoch, &salt);
        let mut sealed = payload.to_vec();
        let Ok(tag) = aead_key(&blob_key(&epoch.key, &salt)).seal_in_place_separate_tag(
            zero_nonce(),
            Aad::from(aad(&header, id)),
            &mut sealed,
        ) else {
            return Vec::new();
        };
        let mut blob = header.to_vec();
        blob.extend_from_slice(&sealed);
        blob.extend_from_slice(tag.as_ref());
        blob
    }
}

/// The key epoch a blob says it was sealed in, from its header alone (no
/// key needed, nothing authenticated: `open` is what proves it). Version-1
/// blobs are epoch 0.
pub fn blob_epoch(blob: &[u8]) -> Result<u32, PackError> {
    Ok(parse_header(blob)?.epoch)
}

/// A blob's header fields and length.
struct Header<'a> {
    len: usize,
    flags: u8,
    epoch: u32,
    salt: &'a [u8; SALT_LEN],
}

fn parse_header(blob: &[u8]) -> Result<Header<'_>, PackError> {
    let bad = |reason: &str| PackError::BadFormat { what: WHAT, reason: reason.to_string() };
    let mut fields = Take::new(blob);
    let version = fields.u8().ok_or_else(|| bad("shorter than its header"))?;
    if version != BLOB_VERSION && version != BLOB_V1 {
        return Err(PackError::UnsupportedVersion { what: WHAT, version });
    }
    let flags = fields.u8().ok_or_else(|| bad("shorter than its header"))?;
    if flags & !FLAG_ZSTD != 0 {
        return Err(bad("unknown flag bits"));
    }
    let (epoch, len) = if version == BLOB_V1 {
        (0, V1_HEADER_LEN)
    } else {
        (fields.u32_le().ok_or_else(|| bad("shorter than its header"))?, HEADER_LEN)
    };
    let salt = fields.array::<SALT_LEN>().ok_or_else(|| bad("shorter than its header"))?;
    Ok(Header { len, flags, epoch, salt })
}

/// The AES key of one blob. The salt is fresh for every blob, so each key
/// seals exactly one message.
fn blob_key(enc_key: &[u8; 32], salt: &[u8; SALT_LEN]) -> [u8; 32] {
    *blake3::keyed_hash(enc_key, salt).as_bytes()
}

/// The header: version, flags, epoch and the salt the blob key is derived
/// from.
fn encode_header(flags: u8, epoch: u32, salt: &[u8; SALT_LEN]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    let (version_and_flags, rest) = header.split_at_mut(2);
    version_and_flags.copy_from_slice(&[BLOB_VERSION, flags]);
    let (epoch_field, salt_field) = rest.split_at_mut(4);
    epoch_field.copy_from_slice(&epoch.to_le_bytes());
    salt_field.copy_from_slice(salt);
    header
}

/// The nonce of every blob. Safe only because every blob key is used once.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; NONCE_LEN])
}

/// The additional data: the header (of either version) and the id the blob
/// is stored under.
fn aad(header: &[u8], id: &ChunkId) -> Vec<u8> {
    [header, id.as_bytes().as_slice()].concat()
}

/// Appends the compressed plaintext to `blob` if that saves enough, and
/// says whether it did. On `false`, `blob` may hold junk after the header.
fn compress_after_header(plaintext: &[u8], blob: &mut Vec<u8>) -> bool {
    if plaintext.len() > MAX_DECOMPRESSED_LEN || !samples_compress(plaintext) {
        return false;
    }
    let budget = max_compressed_len(plaintext.len());
    if budget == 0 {
        return false;
    }
    // zstd writes straight into the blob's spare room after the header (the
    // cursor starts there), so "compress, then compare" needs no second
    // buffer, no copy and no zero-fill first. The room is the blob's whole
    // capacity, sized for the raw case; an output over the budget is
    // refused after the fact.
    blob.truncate(HEADER_LEN);
    let mut out = std::io::Cursor::new(&mut *blob);
    out.set_position(HEADER_LEN as u64);
    match compress_bounded(plaintext, &mut out) {
        Some(len) if len <= budget => true,
        _ => {
            blob.truncate(HEADER_LEN);
            false
        }
    }
}

/// The longest compressed form still worth keeping.
fn max_compressed_len(plain_len: usize) -> usize {
    plain_len - plain_len / MIN_SAVING_DIVISOR
}

/// Judges a large plaintext on a few slices spread over it. A small
/// plaintext is always worth a real attempt. This is a heuristic: a chunk
/// whose samples happen to fall on incompressible parts is stored raw even
/// if the rest would compress, which costs space, never correctness.
fn samples_compress(plaintext: &[u8]) -> bool {
    if plaintext.len() <= SAMPLE_ABOVE {
        return true;
    }
    let stride = (plaintext.len() - SAMPLE_LEN) / (SAMPLE_COUNT - 1);
    let mut sample = Vec::with_capacity(SAMPLE_LEN * SAMPLE_COUNT);
    for i in 0..SAMPLE_COUNT {
        let start = i * stride;
        sample.extend_from_slice(&plaintext[start..start + SAMPLE_LEN]);
    }
    // zstd writes into the vector's capacity: no zero-fill first.
    let budget = max_compressed_len(sample.len());
    let mut out = Vec::with_capacity(budget);
    matches!(compress_bounded(&sample, &mut out), Some(len) if len <= budget)
}

/// Compresses `src` into `dst`, or `None` if it does not fit (or zstd fails,
/// which the caller treats the same way: store raw).
fn compress_bounded<C: zstd::zstd_safe::WriteBuf + ?Sized>(src: &[u8], dst: &mut C) -> Option<usize> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((Compressor::new(ZSTD_LEVEL).ok()?, false));
            set_profile(&mut slot.as_mut()?.0, false)?;
        }
        let (compressor, large) = slot.as_mut()?;
        let want = src.len() >= LARGE_INPUT;
        if *large != want {
            // A failure leaves the flag as it was, so the next call retries.
            set_profile(compressor, want)?;
            *large = want;
        }
        compressor.compress_to_buffer(src, dst).ok()
    })
}

/// Sets a level-1 compressor's table and minimum match for small or large
/// inputs. `None` only if zstd refuses, and then `seal` stores raw, which
/// costs space, never correctness.
fn set_profile(compressor: &mut Compressor<'static>, large: bool) -> Option<()> {
    use zstd::zstd_safe::CParameter::{HashLog, MinMatch};
    let (hash_log, min_match) = if large { (LARGE_HASH_LOG, LARGE_MIN_MATCH) } else { (ZSTD_HASH_LOG, 0) };
    compressor.set_parameter(HashLog(hash_log)).ok()?;
    // 0 is zstd's "choose for the input".
    compressor.set_parameter(MinMatch(min_match)).ok()?;
    Some(())
}

/// Inflates one zstd frame whose declared size is within the bound.
fn decompress(id: &ChunkId, frame: &[u8]) -> Result<Vec<u8>, PackError> {
    let fail = |reason: String| PackError::Decompress { id: *id, reason };
    let declared = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(len)) => len,
        Ok(None) => return Err(fail("the frame does not declare its size".into())),
        Err(_) => return Err(fail("not a zstd frame".into())),
    };
    let max = MAX_DECOMPRESSED_LEN as u64;
    if declared > max {
        return Err(PackError::TooLarge { what: "decompressed blob", len: declared, max });
    }
    // A second frame after the first would inflate past the declared size.
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(len) if len == frame.len() => {}
        Ok(_) => return Err(fail("trailing bytes after the frame".into())),
        Err(code) => return Err(fail(zstd::zstd_safe::get_error_name(code).to_string())),
    }
    let declared = usize::try_from(declared).map_err(|_| fail("declared size does not fit in memory".into()))?;
    let mut out = Vec::with_capacity(declared);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new().map_err(|e| fail(e.to_string()))?);
        }
        let decompressor = slot.as_mut().ok_or_else(|| fail("no decompressor".into()))?;
        decompressor.decompress_to_buffer(frame, &mut out).map_err(|e| fail(e.to_string()))
    })?;
    if out.len() != declared {
        return Err(fail(format!("inflated to {} bytes, the frame declares {declared}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    /// Text-like data that zstd shrinks several times over.
    fn compressible(len: usize) -> Vec<u8> {
        let line = b"2024-05-01T12:00:00Z INFO order 12345 shipped to warehouse 7\n";
        line.iter().copied().cycle().take(len).collect()
    }

    /// Seals an arbitrary payload with arbitrary flags, the way a buggy or
    /// malicious key holder could.
    fn seal_payload(key: &RepoKey, id: &ChunkId, flags: u8, payload: &[u8]) -> Vec<u8> {
        let salt = [7u8; SALT_LEN];
        let epoch = key.current_enc_key();
        let header = encode_header(flags, epoch.epoch, &salt);
        let mut blob = header.to_vec();
        let mut body = payload.to_vec();
        let tag = aead_key(&blob_key(&epoch.key, &salt))
            .seal_in_place_separate_tag(zero_nonce(), Aad::from(aad(&header, id)), &mut body)
            .unwrap();
        blob.extend_from_slice(&body);
        blob.extend_from_slice(tag.as_ref());
        blob
    }

    fn round_trip(key: &RepoKey, plaintext: &[u8]) -> SealedBlob {
        let id = key.chunk_id(plaintext);
        let sealed = key.seal(&id, plaintext);
        assert_eq!(key.open(&id, &sealed.bytes).unwrap(), plaintext);
        sealed
    }

    #[test]
    fn empty_plaintext_round_trips_raw() {
        let key = RepoKey::generate();
        let sealed = round_trip(&key, b"");
        assert!(!sealed.compressed);
        assert_eq!(sealed.bytes.len(), BLOB_OVERHEAD);
    }

    #[test]
    fn compressible_plaintext_is_compressed() {
        let key = RepoKey::generate();
        for len in [1000, 4096, SAMPLE_ABOVE + 1, MAX_CHUNK_LEN] {
            let plaintext = compressible(len);
            let sealed = round_trip(&key, &plaintext);
            assert!(sealed.compressed, "len {len}");
            assert!(sealed.bytes.len() - BLOB_OVERHEAD < len / 2, "len {len} sealed to {}", sealed.bytes.len());
            assert_eq!(sealed.bytes[1], FLAG_ZSTD);
        }
    }

    #[test]
    fn a_compressed_payload_is_exactly_zstds_frame_after_the_header() {
        // zstd writes into the blob's room after the header, bounded by the
        // budget: the blob must hold the whole frame and nothing more.
        let key = RepoKey::generate();
        for len in [1000, SAMPLE_ABOVE + 1, MAX_CHUNK_LEN] {
            let plaintext = compressible(len);
            let mut frame = Vec::with_capacity(len);
            let mut compressor = Compressor::new(ZSTD_LEVEL).unwrap();
            set_profile(&mut compressor, len >= LARGE_INPUT).unwrap();
            let n = compressor.compress_to_buffer(&plaintext[..], &mut frame).unwrap();
            let sealed = round_trip(&key, &plaintext);
            assert_eq!(sealed.bytes.len(), HEADER_LEN + n + TAG_LEN, "len {len}");
            assert!(sealed.bytes.capacity() <= BLOB_OVERHEAD + len, "len {len}: the blob was reallocated");
        }
    }

    #[test]
    fn incompressible_plaintext_is_stored_raw() {
        let key = RepoKey::generate();
        for len in [1, 1000, SAMPLE_ABOVE - 1, SAMPLE_ABOVE + 1, MAX_CHUNK_LEN] {
            let sealed = round_trip(&key, &random_bytes(len, len as u64));
            assert!(!sealed.compressed, "len {len}");
            assert_eq!(sealed.bytes.len(), len + BLOB_OVERHEAD);
            assert_eq!(sealed.bytes[1], 0);
        }
    }

    #[test]
    fn a_small_saving_is_not_kept() {
        // Random bytes with a short compressible tail: zstd saves a little,
        // less than the threshold asks for.
        let key = RepoKey::generate();
        let mut plaintext = random_bytes(64 * 1024, 1);
        plaintext.extend_from_slice(&[0u8; 1024]);
        let sealed = round_trip(&key, &plaintext);
        assert!(!sealed.compressed);
    }

    #[test]
    fn compression_none_is_honoured() {
        let key = RepoKey::generate();
        let plaintext = compressible(10_000);
        let id = key.chunk_id(&plaintext);
        let sealed = key.seal_with(&id, &plaintext, Compression::None);
        assert!(!sealed.compressed);
        assert_eq!(sealed.bytes.len(), plaintext.len() + BLOB_OVERHEAD);
        assert_eq!(key.open(&id, &sealed.bytes).unwrap(), plaintext);
    }

    #[test]
    fn plaintext_beyond_the_inflate_bound_is_stored_raw_and_opens() {
        let key = RepoKey::generate();
        let plaintext = vec![0u8; MAX_DECOMPRESSED_LEN + 1];
        let sealed = round_trip(&key, &plaintext);
        assert!(!sealed.compressed);
    }

    #[test]
    fn two_seals_of_one_plaintext_differ() {
        let key = RepoKey::generate();
        for plaintext in [Vec::new(), compressible(5000), random_bytes(5000, 3)] {
            let id = key.chunk_id(&plaintext);
            let (a, b) = (key.seal(&id, &plaintext), key.seal(&id, &plaintext));
            assert_ne!(a.bytes, b.bytes);
            assert_ne!(a.bytes[2..HEADER_LEN], b.bytes[2..HEADER_LEN], "the salts must differ");
            assert_eq!(key.open(&id, &a.bytes).unwrap(), key.open(&id, &b.bytes).unwrap());
        }
    }

    #[test]
    fn another_id_or_key_fails_authentication() {
        let key = RepoKey::generate();
        let plaintext = compressible(3000);
        let id = key.chunk_id(&plaintext);
        let blob = key.seal(&id, &plaintext).bytes;
        let other_id = key.chunk_id(b"something else");
        assert_eq!(key.open(&other_id, &blob).unwrap_err(), PackError::AuthenticationFailed { id: other_id });
        let other_key = RepoKey::generate();
        assert_eq!(other_key.open(&id, &blob).unwrap_err(), PackError::AuthenticationFailed { id });
    }

    #[test]
    fn open_in_place_answers_as_open_does() {
        let key = RepoKey::generate();
        for (plaintext, compressed) in [(compressible(5000), true), (random_bytes(5000, 4), false), (Vec::new(), false)]
        {
            let id = key.chunk_id(&plaintext);
            let blob = key.seal(&id, &plaintext).bytes;
            let mut buf = blob.clone();
            let plain = key.open_in_place(&id, &mut buf).unwrap();
            assert_eq!(&*plain, plaintext.as_slice());
            // A raw blob's plaintext is a view of the buffer it was read into.
            assert_eq!(matches!(plain, Cow::Owned(_)), compressed);
            let other = key.chunk_id(b"another chunk");
            assert_eq!(
                key.open_in_place(&other, &mut blob.clone()).unwrap_err(),
                PackError::AuthenticationFailed { id: other }
            );
            for at in [0, 1, HEADER_LEN, blob.len() / 2, blob.len() - 1] {
                let mut flipped = blob.clone();
                flipped[at] ^= 0x40;
                assert_eq!(
                    key.open_in_place(&id, &mut flipped).unwrap_err(),
                    key.open(&id, &{
                        let mut f = blob.clone();
                        f[at] ^= 0x40;
                        f
                    })
                    .unwrap_err()
                );
            }
            assert!(key.open_in_place(&id, &mut blob[..blob.len() - 1].to_vec()).is_err());
        }
        let wrong = key.chunk_id(b"not this plaintext");
        let mut blob = key.seal(&wrong, b"this plaintext").bytes;
        assert_eq!(key.open_in_place(&wrong, &mut blob).unwrap_err(), PackError::ChunkIdMismatch { expected: wrong });
    }

    #[test]
    fn a_blob_sealed_under_the_wrong_id_is_caught_on_open() {
        let key = RepoKey::generate();
        let wrong = key.chunk_id(b"not this plaintext");
        let blob = key.seal(&wrong, b"this plaintext").bytes;
        assert_eq!(key.open(&wrong, &blob).unwrap_err(), PackError::ChunkIdMismatch { expected: wrong });
    }

    #[test]
    fn every_flip_and_truncation_is_an_error() {
        let key = RepoKey::generate();
        for plaintext in [compressible(300), random_bytes(200, 9), Vec::new()] {
            let id = key.chunk_id(&plaintext);
            let blob = key.seal(&id, &plaintext).bytes;
            for pos in 0..blob.len() {
                for mask in [0x01, 0x80, 0xff] {
                    let mut bad = blob.clone();
                    bad[pos] ^= mask;
                    assert!(key.open(&id, &bad).is_err(), "flip {mask:#x} at {pos} went unnoticed");
                }
            }
            for len in 0..blob.len() {
                assert!(key.open(&id, &blob[..len]).is_err(), "truncation to {len} went unnoticed");
            }
            let mut long = blob.clone();
            long.push(0);
            assert!(key.open(&id, &long).is_err());
        }
    }

    #[test]
    fn header_errors_are_named() {
        let key = RepoKey::generate();
        let id = key.chunk_id(b"x");
        let mut blob = key.seal(&id, b"x").bytes;
        blob[0] = 3;
        assert_eq!(key.open(&id, &blob).unwrap_err(), PackError::UnsupportedVersion { what: WHAT, version: 3 });
        blob[0] = BLOB_VERSION;
        blob[1] = 0x02;
        assert!(matches!(key.open(&id, &blob), Err(PackError::BadFormat { .. })));
        assert!(matches!(key.open(&id, &blob[..HEADER_LEN + TAG_LEN - 1]), Err(PackError::BadFormat { .. })));
        assert!(matches!(key.open(&id, &[]), Err(PackError::BadFormat { .. })));
    }

    #[test]
    fn a_zstd_bomb_is_refused_before_inflating() {
        let key = RepoKey::generate();
        let huge = vec![0u8; MAX_DECOMPRESSED_LEN + 1];
        let frame = zstd::bulk::compress(&huge, 1).unwrap();
        let id = key.chunk_id(&huge);
        let blob = seal_payload(&key, &id, FLAG_ZSTD, &frame);
        assert_eq!(
            key.open(&id, &blob).unwrap_err(),
            PackError::TooLarge { what: "decompressed blob", len: huge.len() as u64, max: MAX_DECOMPRESSED_LEN as u64 }
        );
    }

    #[test]
    fn malformed_zstd_payloads_are_decompress_errors() {
        let key = RepoKey::generate();
        let plaintext = compressible(10_000);
        let id = key.chunk_id(&plaintext);
        let frame = zstd::bulk::compress(&plaintext, 1).unwrap();
        let mut two_frames = frame.clone();
        two_frames.extend_from_slice(&frame);
        // The streaming encoder does not know the size up front, so its frame
        // does not declare one.
        let unsized_frame = zstd::stream::encode_all(&plaintext[..], 1).unwrap();
        for payload in [b"not zstd at all".to_vec(), two_frames, unsized_frame, Vec::new()] {
            let blob = seal_payload(&key, &id, FLAG_ZSTD, &payload);
            assert!(matches!(key.open(&id, &blob), Err(PackError::Decompress { .. })), "{payload:?}");
        }
        // The well-formed frame opens, which shows the helper seals correctly.
        assert_eq!(key.open(&id, &seal_payload(&key, &id, FLAG_ZSTD, &frame)).unwrap(), plaintext);
    }

    #[test]
    fn a_version_1_blob_still_opens() {
        use crate::slot::tests::{unhex, V1_BLOB_HEX, V1_BLOB_ID_HEX, V1_SLOT_HEX};
        let key = RepoKey::unwrap(&unhex(V1_SLOT_HEX), b"pw").unwrap();
        let blob = unhex(V1_BLOB_HEX);
        let id = ChunkId::from_slice(&unhex(V1_BLOB_ID_HEX)).unwrap();
        assert_eq!(blob[0], BLOB_V1);
        assert_eq!(blob_epoch(&blob).unwrap(), 0);
        assert_eq!(key.open(&id, &blob).unwrap(), b"hello");
        // After rotations the old blob still opens, and the chunk id is the same.
        let rotated = key.rotate().unwrap().rotate().unwrap();
        assert_eq!(rotated.open(&id, &blob).unwrap(), b"hello");
        assert_eq!(rotated.chunk_id(b"hello"), id);
    }

    #[test]
    fn blobs_carry_the_epoch_they_were_sealed_in() {
        let epoch0 = RepoKey::generate();
        let epoch1 = epoch0.rotate().unwrap();
        let epoch2 = epoch1.rotate().unwrap();
        let plaintext = compressible(5000);
        let id = epoch0.chunk_id(&plaintext);
        let blobs: Vec<Vec<u8>> = [&epoch0, &epoch1, &epoch2].iter().map(|k| k.seal(&id, &plaintext).bytes).collect();
        for (epoch, blob) in blobs.iter().enumerate() {
            assert_eq!(blob[0], BLOB_VERSION);
            assert_eq!(blob_epoch(blob).unwrap(), epoch as u32);
            // The newest keyring opens every epoch's blobs.
            assert_eq!(epoch2.open(&id, blob).unwrap(), plaintext);
        }
        // An older keyring does not know a later epoch.
        assert_eq!(epoch0.open(&id, &blobs[1]).unwrap_err(), PackError::UnknownEpoch { id, epoch: 1 });
        assert_eq!(epoch1.open(&id, &blobs[2]).unwrap_err(), PackError::UnknownEpoch { id, epoch: 2 });
        // The epoch is authenticated: relabelling a blob fails.
        let mut relabelled = blobs[2].clone();
        relabelled[2..6].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(epoch2.open(&id, &relabelled).unwrap_err(), PackError::AuthenticationFailed { id });
    }

    #[test]
    fn sealed_blob_debug_is_short() {
        let key = RepoKey::generate();
        let sealed = key.seal(&key.chunk_id(b"abc"), b"abc");
        assert_eq!(format!("{sealed:?}"), format!("SealedBlob {{ len: {}, compressed: false }}", 3 + BLOB_OVERHEAD));
    }
}
