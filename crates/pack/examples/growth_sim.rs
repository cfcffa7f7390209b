//! Simulates what a day's change costs under candidate chunking schemes,
//! without a cluster: `cargo run --release -p coffer-pack --example
//! growth_sim -- OLD NEW [OLD NEW ...]` chunks each old and new version of a
//! file, and for every new chunk the old version lacks sums its zstd-1 size
//! (what a backup stores) and its size as a zstd delta against one old
//! chunk at the same place in the chunk sequence (the better of the two
//! after the last chunk both versions share: the delta scheme issue 17
//! proposed, one base per chunk). It decided the text chunk size (see ARCHITECTURE.md, "A day's
//! change costs about what changed"); the real figures come from
//! `bench/measure_growth.py`.

use std::collections::HashMap;

use coffer_pack::{looks_like_text, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use fastcdc::v2020::{cut, logarithm2, Normalization, MASKS};

#[derive(Clone, Copy)]
struct Params {
    min: usize,
    avg: usize,
    max: usize,
}

const BINARY: Params = Params { min: CHUNK_MIN, avg: CHUNK_AVG, max: CHUNK_MAX };

fn masks(avg: usize) -> (u64, u64) {
    let bits = logarithm2(avg as u32);
    let level = Normalization::Level1.bits();
    (MASKS[(bits + level) as usize], MASKS[(bits - level) as usize])
}

/// Chunk ranges of `data`; `text` sizes for chunks that start with text
/// (the rule of `coffer_pack::chunker`, whose chosen sizes are one of the
/// candidates), binary sizes for the rest.
fn chunk(data: &[u8], text: Option<Params>) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let p = match text {
            Some(t) if looks_like_text(&data[pos..]) => t,
            _ => BINARY,
        };
        let window = &data[pos..(pos + p.max).min(data.len())];
        let (small, large) = masks(p.avg);
        let (_, len) = cut(window, p.min, p.avg, p.max, small, large, small << 1, large << 1);
        out.push((pos, pos + len));
        pos += len;
    }
    out
}

fn z1(data: &[u8]) -> usize {
    zstd::bulk::compress(data, 1).map(|c| c.len()).unwrap_or(data.len()).min(data.len())
}

/// A chunk compressed with the base chunk's plaintext as zstd's dictionary.
fn delta(data: &[u8], base: &[u8], level: i32) -> usize {
    let mut c = zstd::bulk::Compressor::with_dictionary(level, base).expect("compressor");
    c.compress(data).map(|c| c.len()).unwrap_or(data.len()).min(data.len())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let configs: Vec<(&str, Option<Params>)> = vec![
        ("1M only", None),
        ("text 256K", Some(Params { min: 64 << 10, avg: 256 << 10, max: 1 << 20 })),
        ("text 128K", Some(Params { min: 32 << 10, avg: 128 << 10, max: 512 << 10 })),
        ("text 64K", Some(Params { min: 16 << 10, avg: 64 << 10, max: 256 << 10 })),
        ("text 32K", Some(Params { min: 8 << 10, avg: 32 << 10, max: 128 << 10 })),
    ];
    println!(
        "{:<10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "scheme", "chunks", "new", "new raw", "stored", "delta z3", "first", "first raw"
    );
    for (name, text) in configs {
        let (mut chunks, mut new_n, mut new_raw, mut stored, mut delta_b, mut first, mut first_raw) =
            (0usize, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
        for pair in args.chunks(2) {
            let old = std::fs::read(&pair[0]).expect("read old");
            let new = std::fs::read(&pair[1]).expect("read new");
            let old_c = chunk(&old, text);
            let new_c = chunk(&new, text);
            let index: HashMap<&[u8], usize> = old_c.iter().enumerate().map(|(i, &(s, e))| (&old[s..e], i)).collect();
            for &(s, e) in &old_c {
                first += z1(&old[s..e]);
                first_raw += e - s;
            }
            chunks += new_c.len();
            // The old chunk after the last one matched: the parent's chunk
            // at the same place in the sequence.
            let mut next_old = 0usize;
            for &(s, e) in &new_c {
                let piece = &new[s..e];
                if let Some(&i) = index.get(piece) {
                    next_old = i + 1;
                    continue;
                }
                new_n += 1;
                new_raw += e - s;
                let whole = z1(piece);
                stored += whole;
                // The better of the two old chunks the new one most likely
                // overlaps: one base per chunk, as a restore allows.
                let mut best = whole;
                for i in [next_old, next_old + 1] {
                    if let Some(&(bs, be)) = old_c.get(i) {
                        best = best.min(delta(piece, &old[bs..be], 3));
                    }
                }
                delta_b += best;
                next_old += 1;
            }
        }
        println!(
            "{:<10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name, chunks, new_n, new_raw, stored, delta_b, first, first_raw
        );
    }
}
