//! `make scale`: builds a catalog of `--chunks` chunks (default 10,000,000)
//! through the real state machine (`StateMachineStore::apply` on fjall, the
//! path every Raft entry takes) at four sizes (1/1000, 1/100, 1/10, all),
//! and measures at each what grows with the catalog and what must not:
//! apply throughput, the leader's idle repair tick and `ClusterStatus`
//! (through `coffer_meta::probe`, the functions the duties call), a Raft
//! snapshot built, sent in 3 MiB chunks and installed by a follower in a
//! second process, as on a second machine (time and each side's peak RSS),
//! a metadata node reopening its store, and the store's bytes per chunk.
//! Writes `OUT/report.json` (`sizes`: one object per size) and
//! `OUT/report.md`.
//!
//! Packs are realistic: chunks of 256 KiB to 4 MiB (log-uniform, so about
//! 1 MiB typical) appended to ~16 MiB packs, 4+2 over 3 sites × 2 nodes;
//! chunk ids are BLAKE3 of a counter, as keyed hashes are uniformly spread.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use coffer_meta::command::Command;
use coffer_meta::types::{Entry, LogId};
use coffer_types::{
    ChunkId, ChunkLocation, ErasureParams, Hash32, NodeId, NodeRecord, PackId, PackKind, PackRecord, RepoName,
    RepoRecord, SessionId, SessionRecord, ShardIndex, ShardRecord, SiteId,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

const PACK_TARGET: u64 = 16 << 20;
const ENTRIES_PER_APPLY: usize = 64;
const TRANSFER_CHUNK: usize = 3 << 20;
const PROBE_RUNS: usize = 25;

struct Args {
    chunks: u64,
    out: PathBuf,
    /// The store's block cache, as a metadata node configures it.
    cache_bytes: u64,
}

fn usage(why: &str) -> ! {
    eprintln!("scale: {why}\nusage: scale [--chunks N] [--out DIR] [--cache-mib MIB]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        chunks: 10_000_000,
        out: PathBuf::from("target/scale"),
        cache_bytes: coffer_meta::DEFAULT_STORE_CACHE_BYTES,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--chunks" => {
                a.chunks = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1000)
                    .unwrap_or_else(|| usage(&format!("--chunks: {value:?} is not a number of at least 1000")))
            }
            "--out" => a.out = PathBuf::from(value),
            "--cache-mib" => {
                a.cache_bytes = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 8)
                    .unwrap_or_else(|| usage(&format!("--cache-mib: {value:?} is not a number of at least 8")))
                    << 20
            }
            other => usage(&format!("unknown flag {other}")),
        }
    }
    a
}

fn rss(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Where memory stands, on stderr (`SCALE_TRACE=1`).
fn stage(what: &str) {
    if std::env::var_os("SCALE_TRACE").is_some() {
        eprintln!("scale: {what}: rss {} MiB, peak {} MiB", rss("VmRSS:") >> 20, rss("VmHWM:") >> 20);
    }
}

/// Resets the peak RSS (VmHWM) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Log {
    next: u64,
}

impl Log {
    fn entry(&mut self, cmd: Command) -> Entry {
        self.next += 1;
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next), payload: EntryPayload::Normal(cmd) }
    }
}

fn h(i: u64, tag: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(tag);
    hasher.update(&i.to_le_bytes());
    *hasher.finalize().as_bytes()
}

#[derive(Default)]
struct Row {
    chunks: u64,
    packs: u64,
    apply_chunks_per_s: f64,
    idle_tick_ms: f64,
    status_ms: f64,
    snapshot_build_s: f64,
    snapshot_install_s: f64,
    snapshot_peak_rss_mib: f64,
    snapshot_bytes: u64,
    restart_s: f64,
    disk_bytes_per_chunk: f64,
    digests_match: Option<bool>,
}

async fn one_size(chunks: u64, work: &Path, check_digest: bool, cache_bytes: u64) -> Row {
    let _ = std::fs::remove_dir_all(work);
    let src = work.join("leader");
    let dst = work.join("follower");
    let (_log, mut sm) = coffer_meta::open_stores_with_cache(&src, cache_bytes).expect("open the store");
    let mut log = Log { next: 0 };
    let repo = RepoName::new("scale").unwrap();
    let params = ErasureParams::new(4, 2).unwrap();
    let mut setup = Vec::new();
    for i in 1..=6u64 {
        let node = NodeRecord {
            id: NodeId(i),
            site: SiteId::new(format!("site-{}", (i - 1) / 2)).unwrap(),
            addr: format!("10.0.0.{i}:7000"),
            capacity_bytes: 1 << 50,
            used_bytes: 0,
            last_heartbeat_ms: 1,
        };
        setup.push(log.entry(Command::RegisterNode { node }));
    }
    setup.push(log.entry(Command::CreateRepo {
        repo: RepoRecord { name: repo.clone(), params, key_slots: vec![vec![1, 2]], created_ms: 1 },
    }));
    let session = SessionId([7; 16]);
    setup.push(log.entry(Command::BeginSession {
        session: SessionRecord { id: session, repo: repo.clone(), started_ms: 1, lease_until_ms: u64::MAX / 2 },
    }));
    sm.apply(setup).await.expect("apply the setup");

    // The catalog: packs of ~16 MiB, one CommitPack each (a pack holds
    // fewer than the 1,000 entries of one batch), applied 64 entries a call.
    let started = Instant::now();
    let (mut made, mut packs) = (0u64, 0u64);
    // A progress line every twentieth of the catalog: the apply rate as the
    // tree grows and the memory it holds, also from a run cut short.
    let step = (chunks / 20).max(1);
    let (mut next_report, mut last_made, mut last_t) = (step, 0u64, Instant::now());
    let mut batch = Vec::with_capacity(ENTRIES_PER_APPLY);
    while made < chunks {
        let id = PackId(h(packs, b"pack")[..16].try_into().unwrap());
        let mut list = Vec::new();
        let mut offset = 0u64;
        while offset < PACK_TARGET && made < chunks {
            let r = h(made, b"size");
            // Log-uniform in [256 KiB, 4 MiB]: 2^(18 + 4u).
            let u = u32::from_le_bytes(r[..4].try_into().unwrap()) as f64 / u32::MAX as f64;
            let len = 2f64.powf(18.0 + 4.0 * u) as u32;
            list.push((ChunkId(h(made, b"chunk")), ChunkLocation { pack: id, offset, len }));
            offset += len as u64;
            made += 1;
        }
        let shard_len = offset.div_ceil(4);
        let shards = (0..6u8)
            .map(|i| ShardRecord {
                index: ShardIndex(i),
                node: NodeId((packs + i as u64) % 6 + 1),
                checksum: Hash32(h(packs * 8 + i as u64, b"shard")),
            })
            .collect();
        let pack =
            PackRecord { id, repo: repo.clone(), kind: PackKind::Data, params, pack_len: offset, shard_len, shards };
        batch.push(log.entry(Command::CommitPack { session, now_ms: 2, pack, chunks: list }));
        packs += 1;
        if batch.len() == ENTRIES_PER_APPLY {
            sm.apply(std::mem::take(&mut batch)).await.expect("apply");
            if made >= next_report && chunks >= 1_000_000 {
                eprintln!(
                    "scale: applying {chunks}: {made} chunks in, {:.0} chunks/s since the last line, rss {} MiB, load {}",
                    (made - last_made) as f64 / last_t.elapsed().as_secs_f64(),
                    rss("VmRSS:") >> 20,
                    loadavg()
                );
                (next_report, last_made, last_t) = (next_report + step, made, Instant::now());
            }
        }
    }
    if !batch.is_empty() {
        sm.apply(batch).await.expect("apply");
    }
    let apply_s = started.elapsed().as_secs_f64();
    let mut row = Row { chunks: made, packs, apply_chunks_per_s: made as f64 / apply_s, ..Default::default() };

    let time_ms = |f: &dyn Fn()| {
        let mut v = Vec::new();
        for _ in 0..PROBE_RUNS {
            let t = Instant::now();
            f();
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        median(v)
    };
    let tree = sm.tree().clone();
    assert_eq!(coffer_meta::probe::idle_tick(&tree).unwrap(), 0, "an idle tick found work");
    row.idle_tick_ms = time_ms(&|| {
        coffer_meta::probe::idle_tick(&tree).unwrap();
    });
    let (healthy, counted) = coffer_meta::probe::cluster_status(&tree).unwrap();
    assert_eq!((healthy, counted), (packs, made), "ClusterStatus disagrees with what was applied");
    row.status_ms = time_ms(&|| {
        coffer_meta::probe::cluster_status(&tree).unwrap();
    });

    // Snapshot: built on the "leader", sent in 3 MiB chunks into the
    // follower's receiving file, installed there. Each side's peak RSS is
    // measured with the other side's store closed, as on two machines.
    stage("applied");
    reset_peak();
    let t = Instant::now();
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build a snapshot");
    row.snapshot_build_s = t.elapsed().as_secs_f64();
    let build_peak = rss("VmHWM:");
    let source_digest = if check_digest { Some(sm.digest().await.expect("digest")) } else { None };
    drop(tree);
    drop(sm);
    drop(_log);
    drop(snap.snapshot);

    // The follower is another process, as it is another machine: what the
    // leader's store left in this process's heap does not count in its RSS.
    stage("built; leader closed");
    let meta_path = work.join("snapshot-meta.bin");
    std::fs::write(&meta_path, bincode::serialize(&snap.meta).expect("encode the snapshot meta"))
        .expect("write the snapshot meta");
    let file = std::fs::read_dir(src.join("snapshots"))
        .expect("the snapshot directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("the built snapshot file");
    row.snapshot_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let out = std::process::Command::new(
        // `/proc/self/exe` still names this executable if a rebuild
        // replaced its file during the run (`current_exe` would not).
        Some(PathBuf::from("/proc/self/exe"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| std::env::current_exe().expect("this executable")),
    )
    .arg("--install")
    .arg(&file)
    .arg(&meta_path)
    .arg(&dst)
    .arg((cache_bytes >> 20).to_string())
    .arg(if check_digest { "digest" } else { "-" })
    .stderr(std::process::Stdio::inherit())
    .output()
    .expect("run the follower");
    assert!(out.status.success(), "the follower failed: {}", out.status);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [install_s, install_peak, digest] = fields[..] else { panic!("the follower answered {line:?}") };
    row.snapshot_install_s = install_s.parse().expect("install seconds");
    let install_peak: u64 = install_peak.parse().expect("install peak");
    row.snapshot_peak_rss_mib = build_peak.max(install_peak) as f64 / (1 << 20) as f64;
    if let Some((applied, n, hash)) = source_digest {
        row.digests_match = Some(digest == format!("{applied}-{n}-{}", hex::encode(hash)));
    }

    // Restart: the metadata node reopens its store and openraft reads its
    // applied state and current snapshot.
    let t = Instant::now();
    let (_log, mut sm) = coffer_meta::open_stores_with_cache(&src, cache_bytes).expect("reopen the store");
    let (applied, _) = sm.applied_state().await.expect("applied state");
    let current = sm.get_current_snapshot().await.expect("current snapshot");
    row.restart_s = t.elapsed().as_secs_f64();
    assert_eq!(applied.map(|l| l.index), Some(log.next));
    assert!(current.is_some());
    drop(current);
    drop(sm);
    drop(_log);
    row.disk_bytes_per_chunk = du(&src.join(coffer_meta::store::DIR)) as f64 / made as f64;
    let _ = std::fs::remove_dir_all(work);
    row
}

/// The follower's side (`--install FILE META DIR CACHE_MIB digest|-`):
/// receives the snapshot file in transfer-sized chunks into a fresh store,
/// installs it, and prints `install_s peak_rss_bytes digest` (or `-`).
fn follower(argv: &[String]) {
    let [file, meta, dir, cache_mib, digest] = argv else { usage("--install needs FILE META DIR CACHE_MIB DIGEST") };
    let cache_bytes = cache_mib.parse::<u64>().unwrap_or_else(|_| usage("--install: CACHE_MIB")) << 20;
    let meta: coffer_meta::types::SnapshotMeta =
        bincode::deserialize(&std::fs::read(meta).expect("read the snapshot meta")).expect("decode the meta");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        reset_peak();
        let (_flog, mut follower) =
            coffer_meta::open_stores_with_cache(Path::new(dir), cache_bytes).expect("open the follower");
        let t = Instant::now();
        let mut snapshot = tokio::fs::File::open(file).await.expect("open the snapshot file");
        let mut receiving = follower.begin_receiving_snapshot().await.expect("begin receiving");
        let mut buf = vec![0u8; TRANSFER_CHUNK];
        let mut offset = 0u64;
        loop {
            let n = snapshot.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            receiving.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
            receiving.write_all(&buf[..n]).await.unwrap();
            offset += n as u64;
        }
        receiving.shutdown().await.unwrap();
        drop(buf);
        follower.install_snapshot(&meta, receiving).await.expect("install the snapshot");
        let install_s = t.elapsed().as_secs_f64();
        let peak = rss("VmHWM:");
        stage("installed");
        let digest = if digest == "digest" {
            let (applied, n, hash) = follower.digest().await.expect("digest");
            format!("{applied}-{n}-{}", hex::encode(hash))
        } else {
            "-".to_string()
        };
        println!("{install_s} {peak} {digest}");
    });
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--install") {
        follower(&argv[1..]);
        return;
    }
    let a = args();
    std::fs::create_dir_all(&a.out).unwrap_or_else(|e| usage(&format!("--out {}: {e}", a.out.display())));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let load_before = loadavg();
    let started = Instant::now();
    let mut rows = Vec::new();
    for div in [1000, 100, 10, 1] {
        let n = (a.chunks / div).max(1000);
        let t = Instant::now();
        let row = rt.block_on(one_size(n, &a.out.join("work"), div != 1, a.cache_bytes));
        eprintln!(
            "scale: {n} chunks in {:.0} s: {:.0} chunks/s applied, idle tick {:.3} ms, status {:.3} ms, snapshot {:.1} s + {:.1} s, peak {:.0} MiB, restart {:.2} s, {:.0} B/chunk",
            t.elapsed().as_secs_f64(),
            row.apply_chunks_per_s,
            row.idle_tick_ms,
            row.status_ms,
            row.snapshot_build_s,
            row.snapshot_install_s,
            row.snapshot_peak_rss_mib,
            row.restart_s,
            row.disk_bytes_per_chunk
        );
        rows.push(row);
        // After every size, so that a run cut short still leaves its figures.
        write_reports(&a, &rows, started.elapsed().as_secs_f64(), &load_before, &loadavg());
    }
}

fn write_reports(a: &Args, rows: &[Row], total_s: f64, load_before: &str, load_after: &str) {
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    let tick_ratio = last.idle_tick_ms / first.idle_tick_ms.max(1e-9);
    let status_ratio = last.status_ms / first.status_ms.max(1e-9);
    let targets = [
        ("idle_tick_ms largest / smallest <= 2", tick_ratio <= 2.0, format!("{tick_ratio:.2}")),
        ("status_ms largest / smallest <= 2", status_ratio <= 2.0, format!("{status_ratio:.2}")),
        (
            "snapshot_peak_rss_mib < 1024 at the largest size",
            last.snapshot_peak_rss_mib < 1024.0,
            format!("{:.0}", last.snapshot_peak_rss_mib),
        ),
        ("restart_s < 60 at the largest size", last.restart_s < 60.0, format!("{:.2}", last.restart_s)),
        ("whole run < 1800 s", total_s < 1800.0, format!("{total_s:.0}")),
    ];
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let mut json = String::new();
    json.push_str(&format!(
        "{{\n  \"scale_chunks\": {},\n  \"store_cache_mib\": {},\n  \"complete\": {},\n  \"profile\": \"{profile}\",\n  \"total_s\": {total_s:.1},\n  \"loadavg_before\": \"{load_before}\",\n  \"loadavg_after\": \"{load_after}\",\n  \"sizes\": [\n",
        a.chunks,
        a.cache_bytes >> 20,
        rows.len() == 4
    ));
    for (i, r) in rows.iter().enumerate() {
        json.push_str(&format!(
            "    {{\"chunks\": {}, \"packs\": {}, \"apply_chunks_per_s\": {:.1}, \"idle_tick_ms\": {:.4}, \"status_ms\": {:.4}, \"snapshot_build_s\": {:.3}, \"snapshot_install_s\": {:.3}, \"snapshot_peak_rss_mib\": {:.1}, \"restart_s\": {:.3}, \"disk_bytes_per_chunk\": {:.1}, \"snapshot_bytes\": {}, \"digests_match\": {}}}{}\n",
            r.chunks,
            r.packs,
            r.apply_chunks_per_s,
            r.idle_tick_ms,
            r.status_ms,
            r.snapshot_build_s,
            r.snapshot_install_s,
            r.snapshot_peak_rss_mib,
            r.restart_s,
            r.disk_bytes_per_chunk,
            r.snapshot_bytes,
            r.digests_match.map_or("null".to_string(), |b| b.to_string()),
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    json.push_str("  ],\n  \"targets\": {\n");
    for (i, (name, ok, value)) in targets.iter().enumerate() {
        json.push_str(&format!(
            "    \"{name}\": {{\"met\": {ok}, \"value\": {value}}}{}\n",
            if i + 1 < targets.len() { "," } else { "" }
        ));
    }
    json.push_str("  }\n}\n");
    std::fs::write(a.out.join("report.json"), json).expect("write report.json");

    let mut md = std::fs::File::create(a.out.join("report.md")).expect("write report.md");
    let _ = writeln!(md, "# make scale: the catalog at {} chunks\n", a.chunks);
    if rows.len() < 4 {
        let _ = writeln!(
            md,
            "**Partial: {} of 4 sizes measured so far; the targets below are judged at the largest size measured.**\n",
            rows.len()
        );
    }
    let _ = writeln!(
        md,
        "Built through `StateMachineStore::apply` on fjall ({profile} build, {} MiB block cache), 4+2 packs of ~16 MiB over 3 sites x 2 nodes. Run took {total_s:.0} s; load average {load_before} before, {load_after} after.\n",
        a.cache_bytes >> 20
    );
    let _ = writeln!(md, "| chunks | packs | apply_chunks_per_s | idle_tick_ms | status_ms | snapshot_build_s | snapshot_install_s | snapshot_peak_rss_mib | restart_s | disk_bytes_per_chunk | snapshot MiB | digests match |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {} |",
            r.chunks,
            r.packs,
            r.apply_chunks_per_s,
            r.idle_tick_ms,
            r.status_ms,
            r.snapshot_build_s,
            r.snapshot_install_s,
            r.snapshot_peak_rss_mib,
            r.restart_s,
            r.disk_bytes_per_chunk,
            r.snapshot_bytes as f64 / (1 << 20) as f64,
            r.digests_match.map_or("-".to_string(), |b| if b { "yes".into() } else { "NO".into() })
        );
    }
    let _ = writeln!(md, "\n## Targets\n");
    for (name, ok, value) in targets {
        let _ = writeln!(md, "- {name}: {value} — {}", if ok { "met" } else { "NOT met" });
    }
}
