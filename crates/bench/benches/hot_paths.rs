//! `make microbench`: single-threaded throughput of the agent's hot paths
//! (chunking, chunk ids, sealing and opening blobs, erasure coding) and,
//! beside each, the third-party crate called directly, so that the cost of
//! coffer's wrappers shows as a ratio. zstd and AES-256-GCM alone are
//! measured too, as the floor under sealing.
//!
//! ```text
//!   source ─chunker─► chunk ─chunk_id─► id ─seal (zstd-1 + AES-256-GCM)─► blob ─► pack ─encode 4+2─► shards
//!   restore:  shards ─(reconstruct when one is lost)─► pack ─open─► chunk
//! ```
//!
//! Arguments that do not start with `--` filter cases by substring of their
//! group or name (`cargo bench -p coffer-bench -- erasure`).
//! `COFFER_BENCH_SAMPLES` and `COFFER_BENCH_SAMPLE_MS` set how long each case
//! runs. Results go to stdout and, for an unfiltered run, to
//! `target/bench/microbench.{md,json}`.

use std::path::PathBuf;
use std::time::Duration;

use coffer_bench::{json, markdown, random_bytes, sql_text, Layer, Runner, RunnerConfig};
use coffer_erasure::Codec;
use coffer_pack::{chunker, ChunkBuffer, Chunker, RepoKey, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use coffer_types::ErasureParams;
use fastcdc::v2020::{FastCDC, StreamCDC};
use reed_solomon_erasure::galois_8::ReedSolomon;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const MIB: usize = 1 << 20;
/// The average chunk, and so the typical blob.
const CHUNK: usize = MIB;
/// A small file: most config files become one small blob each.
const SMALL: usize = 4 * 1024;
/// A full pack, as the agent erasure-codes it.
const PACK: usize = 16 * MIB;
/// A stream long enough for many chunk boundaries.
const STREAM: usize = 64 * MIB;
const ZSTD_LEVEL: i32 = 1;

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let config = RunnerConfig {
        samples: env_number("COFFER_BENCH_SAMPLES").map_or(5, |n| n.clamp(1, 1000) as u32),
        sample_time: Duration::from_millis(env_number("COFFER_BENCH_SAMPLE_MS").unwrap_or(200)),
    };
    let mut r = Runner::new(config, filters.clone());
    chunking(&mut r);
    hashing(&mut r);
    let text = sql_text(CHUNK, 11);
    let ratio = text.len() as f64 / zstd::bulk::compress(&text, ZSTD_LEVEL).map_or(text.len(), |c| c.len()) as f64;
    sealing(&mut r, &text, &format!("1 MiB SQL text (zstd-1 {ratio:.1}x)"));
    sealing(&mut r, &random_bytes(CHUNK, 12), "1 MiB random");
    sealing(&mut r, &sql_text(SMALL, 13), "4 KiB text (a small file)");
    zstd_alone(&mut r, &text);
    aes_alone(&mut r);
    erasure(&mut r, 4, 2);
    erasure(&mut r, 6, 3);

    let preamble = format!(
        "One thread, `cargo bench` (release) profile, on {} ({} CPUs). Each case: one warm-up call, then {} \
         samples of at least {} ms, median shown; MiB/s of input bytes (for reconstruct: of the pack). \
         In each group the coffer rows are divided by the group's first crate row, the library call they wrap.",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        config.samples,
        config.sample_time.as_millis()
    );
    let md = markdown(r.results(), &preamble);
    println!("{md}");
    // A filtered run measures only some cases; it must not replace the
    // full report.
    if filters.is_empty() {
        write_reports(&md, &json(r.results()));
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".to_string())
}

/// Writes next to the end-to-end report, under the workspace's target dir.
fn write_reports(md: &str, js: &str) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("bench");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("microbench.md"), md))
        .and_then(|()| std::fs::write(dir.join("microbench.json"), js));
    match written {
        Ok(()) => eprintln!("wrote {}/microbench.{{md,json}}", dir.display()),
        Err(e) => eprintln!("could not write the reports under {}: {e}", dir.display()),
    }
}

fn chunking(r: &mut Runner) {
    let data = random_bytes(STREAM, 1);
    let n = data.len() as u64;
    let (min, avg, max) = (CHUNK_MIN as u32, CHUNK_AVG as u32, CHUNK_MAX as u32);
    let group = "chunk: FastCDC 256K/1M/4M, 64 MiB random";
    r.run(group, Layer::Coffer, "coffer_pack::chunker (Read, a Vec per chunk)", n, || {
        chunker(&data[..]).map(|c| c.map_or(0, |c| c.len())).sum::<usize>()
    });
    let mut buffer = Some(ChunkBuffer::new());
    r.run(group, Layer::Coffer, "coffer_pack::Chunker::with_buffer (reused buffer, as the walker)", n, || {
        chunk_reusing(&mut buffer, &data)
    });
    r.run(group, Layer::Crate, "fastcdc::v2020::StreamCDC over &[u8]", n, || {
        StreamCDC::new(&data[..], min, avg, max).map(|c| c.map_or(0, |c| c.length)).sum::<usize>()
    });
    r.run(group, Layer::Crate, "fastcdc::v2020::FastCDC in memory (no copy)", n, || {
        FastCDC::new(&data, min, avg, max).map(|c| c.length).sum::<usize>()
    });

    // The walker starts a chunker per file, and most files of a tree are
    // small: what matters there is the set-up cost, not the cutting.
    let small = sql_text(SMALL, 3);
    let n = small.len() as u64;
    let group = "chunk: one 4 KiB file (a chunker per file)";
    r.run(group, Layer::Coffer, "coffer_pack::chunker (Read, a Vec per chunk)", n, || {
        chunker(&small[..]).map(|c| c.map_or(0, |c| c.len())).sum::<usize>()
    });
    r.run(group, Layer::Coffer, "coffer_pack::Chunker::with_buffer (reused buffer, as the walker)", n, || {
        chunk_reusing(&mut buffer, &small)
    });
    r.run(group, Layer::Crate, "fastcdc::v2020::StreamCDC over &[u8]", n, || {
        StreamCDC::new(&small[..], min, avg, max).map(|c| c.map_or(0, |c| c.length)).sum::<usize>()
    });
    r.run(group, Layer::Crate, "fastcdc::v2020::FastCDC in memory (no copy)", n, || {
        FastCDC::new(&small, min, avg, max).map(|c| c.length).sum::<usize>()
    });
}

/// Chunks `data` in a buffer passed from call to call, as the walker passes
/// one from file to file.
fn chunk_reusing(buffer: &mut Option<ChunkBuffer>, data: &[u8]) -> usize {
    let mut chunks = Chunker::with_buffer(data, buffer.take().unwrap_or_default());
    let total = chunks.by_ref().map(|c| c.map_or(0, |c| c.len())).sum::<usize>();
    *buffer = Some(chunks.into_buffer());
    total
}

fn hashing(r: &mut Runner) {
    let key = RepoKey::generate();
    let chunk = random_bytes(CHUNK, 2);
    let n = chunk.len() as u64;
    let group = "chunk id: keyed BLAKE3, 1 MiB";
    r.run(group, Layer::Coffer, "RepoKey::chunk_id", n, || key.chunk_id(&chunk));
    r.run(group, Layer::Crate, "blake3::keyed_hash", n, || blake3::keyed_hash(&[7u8; 32], &chunk));
    r.run(group, Layer::Crate, "blake3::hash", n, || blake3::hash(&chunk));
}

fn aead() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).expect("a 32-byte key fits AES-256"))
}

fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; NONCE_LEN])
}

/// Seal and open through `RepoKey`, beside the same steps done directly:
/// zstd with a reused context, then AES-256-GCM with one fixed key (coffer
/// also draws a salt and derives a key per blob, and samples before it
/// compresses a large plaintext).
fn sealing(r: &mut Runner, plain: &[u8], label: &str) {
    let key = RepoKey::generate();
    let id = key.chunk_id(plain);
    let n = plain.len() as u64;
    let aes = aead();
    let mut zc = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("level 1 is valid");
    let mut zd = zstd::bulk::Decompressor::new().expect("a decompression context");

    let group = format!("seal, {label}");
    r.run(&group, Layer::Coffer, "RepoKey::seal", n, || key.seal(&id, plain).bytes.len());
    r.run(&group, Layer::Crate, "zstd Compressor(1) + ring AES-256-GCM seal", n, || {
        let mut buf = zc.compress(plain).expect("zstd compresses in memory");
        if buf.len() >= plain.len() {
            buf = plain.to_vec();
        }
        let tag = aes.seal_in_place_separate_tag(zero_nonce(), Aad::empty(), &mut buf).expect("short input");
        buf.len() + tag.as_ref().len()
    });
    r.run(&group, Layer::Crate, "ring AES-256-GCM seal only (no compression)", n, || {
        let mut buf = plain.to_vec();
        let tag = aes.seal_in_place_separate_tag(zero_nonce(), Aad::empty(), &mut buf).expect("short input");
        buf.len() + tag.as_ref().len()
    });

    let sealed = key.seal(&id, plain);
    // The direct equivalent of the sealed blob: compressed only when it pays,
    // like coffer, so that open does the same work.
    let compressed = zc.compress(plain).expect("zstd compresses in memory");
    let use_zstd = sealed.compressed && compressed.len() < plain.len();
    let mut direct = if use_zstd { compressed } else { plain.to_vec() };
    let tag = aes.seal_in_place_separate_tag(zero_nonce(), Aad::empty(), &mut direct).expect("short input");
    direct.extend_from_slice(tag.as_ref());

    let group = format!("open, {label}");
    r.run(&group, Layer::Coffer, "RepoKey::open (auth, inflate, re-hash)", n, || {
        key.open(&id, &sealed.bytes).map_or(0, |p| p.len())
    });
    let hash_key = [5u8; 32];
    r.run(&group, Layer::Crate, "ring open (after copy) + zstd decompress + blake3 keyed", n, || {
        let mut buf = direct.clone();
        let Ok(payload) = aes.open_in_place(zero_nonce(), Aad::empty(), &mut buf) else { return 0 };
        let out = if use_zstd { zd.decompress(payload, plain.len()).unwrap_or_default() } else { payload.to_vec() };
        blake3::keyed_hash(&hash_key, &out);
        out.len()
    });
}

fn zstd_alone(r: &mut Runner, text: &[u8]) {
    let random = random_bytes(CHUNK, 21);
    let group = "zstd level 1, 1 MiB";
    let n = CHUNK as u64;
    let mut zc = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("level 1 is valid");
    let mut zd = zstd::bulk::Decompressor::new().expect("a decompression context");
    r.run(group, Layer::Crate, "zstd::bulk::compress, SQL text", n, || {
        zstd::bulk::compress(text, ZSTD_LEVEL).map_or(0, |c| c.len())
    });
    r.run(group, Layer::Crate, "bulk::Compressor reused, SQL text", n, || zc.compress(text).map_or(0, |c| c.len()));
    let packed = zstd::bulk::compress(text, ZSTD_LEVEL).expect("zstd compresses in memory");
    r.run(group, Layer::Crate, "bulk::Decompressor reused, SQL text", n, || {
        zd.decompress(&packed, CHUNK).map_or(0, |c| c.len())
    });
    r.run(group, Layer::Crate, "zstd::bulk::compress, random", n, || {
        zstd::bulk::compress(&random, ZSTD_LEVEL).map_or(0, |c| c.len())
    });
    let packed = zstd::bulk::compress(&random, ZSTD_LEVEL).expect("zstd compresses in memory");
    r.run(group, Layer::Crate, "bulk::Decompressor reused, random (stored blocks)", n, || {
        zd.decompress(&packed, CHUNK).map_or(0, |c| c.len())
    });
}

fn aes_alone(r: &mut Runner) {
    let aes = aead();
    let plain = random_bytes(CHUNK, 31);
    let n = plain.len() as u64;
    let group = "AES-256-GCM (ring), 1 MiB";
    let mut buf = plain.clone();
    r.run(group, Layer::Crate, "seal_in_place_separate_tag", n, || {
        aes.seal_in_place_separate_tag(zero_nonce(), Aad::empty(), &mut buf).map_or(0, |t| t.as_ref().len())
    });
    let mut sealed = plain.clone();
    let tag = aes.seal_in_place_separate_tag(zero_nonce(), Aad::empty(), &mut sealed).expect("short input");
    sealed.extend_from_slice(tag.as_ref());
    let mut work = sealed.clone();
    r.run(group, Layer::Crate, "open_in_place (after a 1 MiB copy)", n, || {
        work.copy_from_slice(&sealed);
        aes.open_in_place(zero_nonce(), Aad::empty(), &mut work).map_or(0, |p| p.len())
    });
    r.run(group, Layer::Crate, "the 1 MiB copy alone (std), for scale", n, || {
        work.copy_from_slice(&sealed);
        work.len()
    });
}

fn erasure(r: &mut Runner, k: usize, m: usize) {
    let params = ErasureParams::new(k as u32, m as u32).expect("valid erasure parameters");
    let codec = Codec::new(params).expect("a codec for valid parameters");
    let rs = ReedSolomon::new(k, m).expect("a codec for valid parameters");
    let pack = random_bytes(PACK, 41);
    let n = pack.len() as u64;

    let group = format!("erasure encode {k}+{m}, 16 MiB pack");
    r.run(&group, Layer::Coffer, "Codec::encode (split + pad + parity)", n, || codec.encode(&pack).len());
    // Padding happens on the first call only; later calls find the pack
    // already a whole number of shards long.
    let mut in_place = pack.clone();
    r.run(&group, Layer::Coffer, "Codec::encode_parity (pad in place + parity, as the agent)", n, || {
        codec.encode_parity(&mut in_place).len()
    });
    let mut shards = codec.encode(&pack);
    r.run(&group, Layer::Crate, "ReedSolomon::encode on ready shards (parity only)", n, || {
        rs.encode(&mut shards).map_or(0, |()| shards.len())
    });

    let full: Vec<Option<Vec<u8>>> = codec.encode(&pack).into_iter().map(Some).collect();
    let group = format!("erasure reconstruct {k}+{m}, {m} data shards lost, 16 MiB pack");
    let mut work = full.clone();
    r.run(&group, Layer::Coffer, "Codec::reconstruct_data", n, || {
        work.iter_mut().take(m).for_each(|s| *s = None);
        codec.reconstruct_data(&mut work).map_or(0, |()| work.len())
    });
    let mut direct = full.clone();
    r.run(&group, Layer::Crate, "ReedSolomon::reconstruct_data", n, || {
        direct.iter_mut().take(m).for_each(|s| *s = None);
        rs.reconstruct_data(&mut direct).map_or(0, |()| direct.len())
    });
    r.run(&group, Layer::Coffer, "Codec::reconstruct_data + join (the pack back)", n, || {
        work.iter_mut().take(m).for_each(|s| *s = None);
        codec.reconstruct_data(&mut work).and_then(|()| codec.join(&work, n)).map_or(0, |p| p.len())
    });

    let group = format!("erasure rebuild {k}+{m}, 1 data + 1 parity shard lost, 16 MiB pack");
    let mut work = full.clone();
    r.run(&group, Layer::Coffer, "Codec::reconstruct (data and parity)", n, || {
        work[0] = None;
        work[k] = None;
        codec.reconstruct(&mut work).map_or(0, |()| work.len())
    });
    let mut direct = full;
    r.run(&group, Layer::Crate, "ReedSolomon::reconstruct", n, || {
        direct[0] = None;
        direct[k] = None;
        rs.reconstruct(&mut direct).map_or(0, |()| direct.len())
    });
}
