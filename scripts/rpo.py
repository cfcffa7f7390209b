#!/usr/bin/env python3
"""The real-time recovery point, measured (`make rpo`; not part of `make test`).

Starts the embedded local cluster (`coffer dev`: one metadata node, 3 sites x
2 storage nodes, 4+2), an agent with one real-time source (`realtime = {
max_lag }`) over a WAL-archive-like directory, and appends to it at a steady
rate (RPO_MBPS) for RPO_MINUTES: 16 MiB segments, the oldest removed beyond
a few (as an archive cleanup would), half-compressible content. Then it reads
the committed snapshots back and reports, in target/rpo/report.md and
report.json:

- the recovery point of every append (every 100 ms): the time from the
  append to the commit of the first snapshot whose run started after it.
  This is an upper bound (a run that started just before the append may
  already hold it), so the figures never flatter the agent. p50, p99, max.
- the exposure window sampled every 100 ms: now minus the start of the
  newest committed snapshot (the writes a loss at that instant would cost).
- the catalog's growth per committed real-time snapshot: the metadata
  node's data directory (sled: state machine and Raft log) before and after,
  divided by the snapshots committed, beside the per-snapshot figures the
  snapshots record (new chunks, bytes new, bytes read).
- the machine's load (`uptime`) before and after: the figures of a shared
  machine move with it.
"""

import argparse
import bisect
import json
import os
import shutil
import signal
import subprocess
import sys
import time


def now_ms():
    return int(time.time() * 1000)


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def pct(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))
    return sorted_values[i]


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def wait(what, timeout, poll):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = poll()
        if v:
            return v
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


class Coffer:
    def __init__(self, binary, env):
        self.binary, self.env = binary, env

    def run(self, *args, check=True):
        p = subprocess.run([self.binary, *args], env=self.env, capture_output=True, text=True)
        if check and p.returncode != 0:
            sys.exit(f"coffer {' '.join(args)}: exit {p.returncode}\n{p.stderr}")
        return p

    def json(self, *args):
        p = self.run(*args, "--json", check=False)
        if p.returncode != 0:
            return None
        try:
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coffer", default="target/debug/coffer")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--mbps", type=float, default=10.0, help="MB (10^6 bytes) appended per second")
    ap.add_argument("--max-lag", default="5s")
    ap.add_argument("--segment-mib", type=int, default=16)
    ap.add_argument("--keep-segments", type=int, default=8)
    ap.add_argument("--out", default="target/rpo")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's directory afterwards")
    a = ap.parse_args()

    binary = os.path.abspath(a.coffer)
    out = os.path.abspath(a.out)
    work = os.path.join(out, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data, wal, state = (os.path.join(work, d) for d in ("cluster", "wal", "agent-state"))
    os.makedirs(wal)
    load_before = uptime()
    procs = []

    def stop_all():
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    try:
        dev = subprocess.Popen(
            [binary, "dev", "--data", data, "--listen", "127.0.0.1:0"],
            stdout=open(os.path.join(work, "dev.log"), "w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(dev)
        env_file = os.path.join(data, "env")
        wait("the cluster's env file", 120, lambda: os.path.exists(env_file))
        env = dict(os.environ)
        for line in open(env_file):
            line = line.strip()
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                env[k] = v.strip("'\"")
        env.update(COFFER_REPO="rpo", COFFER_PASSWORD="rpo-measurement")
        c = Coffer(binary, env)

        def all_up():
            s = c.json("status")
            return s and sum(1 for n in s.get("nodes", []) if n.get("state") == "up") >= 6

        wait("six storage nodes up", 120, all_up)
        c.run("repo", "create", "rpo")

        endpoints = ", ".join(f'"{e}"' for e in env["COFFER_ENDPOINT"].split(","))
        config = os.path.join(work, "agent.toml")
        with open(config, "w") as f:
            f.write(
                f'endpoint = [{endpoints}]\nstate_dir = "{state}"\njitter = "0s"\nreport_interval = "10s"\n'
                f'admin_listen = "127.0.0.1:0"\n\n[[source]]\nname = "wal"\nrepo = "rpo"\npaths = ["{wal}"]\n'
                f'realtime = {{ max_lag = "{a.max_lag}" }}\n'
            )
        agent = subprocess.Popen(
            [binary, "agent", "--config", config],
            env=env,
            stdout=open(os.path.join(work, "agent.log"), "w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(agent)
        wait("the agent's control socket", 60, lambda: c.json("agent", "status", "--config", config))

        meta_dir = os.path.join(data, "meta")

        def packs():
            s = c.json("status") or {}
            # `short` counts packs that are also in one of the others.
            p = s.get("packs", {})
            return sum(p.get(k, 0) for k in ("healthy", "degraded", "at_risk", "lost"))

        def snapshots():
            s = c.json("snapshots") or []
            return [x for x in s if "source:wal" in x.get("tags", [])]

        # The first run (the empty directory) settles before the baseline.
        wait("the first real-time snapshot", 120, lambda: snapshots())
        time.sleep(2)
        base_snaps = len(snapshots())
        base_meta = du(meta_dir)
        base_packs = packs()

        # The appender: one record every 100 ms.
        per_tick = int(a.mbps * 1e6 / 10)
        seg_size = a.segment_mib << 20
        seg, seg_len, written = 0, 0, 0
        appends = []  # (ms after the write returned, bytes so far)
        f = open(os.path.join(wal, f"{seg:024X}"), "ab")
        started = time.time()
        t_end = started + a.minutes * 60
        next_tick = started
        while time.time() < t_end:
            left = per_tick
            while left > 0:
                n = min(left, seg_size - seg_len)
                # Half-compressible: random bytes as hex.
                f.write(os.urandom((n + 1) // 2).hex()[:n].encode())
                left -= n
                seg_len += n
                written += n
                if seg_len >= seg_size:
                    f.close()
                    seg, seg_len = seg + 1, 0
                    f = open(os.path.join(wal, f"{seg:024X}"), "ab")
                    old = seg - a.keep_segments
                    if old >= 0:
                        try:
                            os.remove(os.path.join(wal, f"{old:024X}"))
                        except FileNotFoundError:
                            pass
            f.flush()
            appends.append((now_ms(), written))
            next_tick += 0.1
            pause = next_tick - time.time()
            if pause > 0:
                time.sleep(pause)
        f.close()
        finished = time.time()
        last_append_ms = appends[-1][0]

        wait(
            "a snapshot started after the last append",
            300,
            lambda: any(s["start_ms"] >= last_append_ms for s in snapshots()),
        )
        snaps = sorted(snapshots(), key=lambda s: s["start_ms"])
        status = c.json("agent", "status", "--config", config)
        after_meta = du(meta_dir)
        after_packs = packs()
        load_after = uptime()
    finally:
        stop_all()

    # The recovery point of each append: the first commit of a run that
    # started after it.
    starts = [s["start_ms"] for s in snaps]
    lags, unprotected = [], 0
    for t, _ in appends:
        i = bisect.bisect_left(starts, t)
        ends = [s["end_ms"] for s in snaps[i:]]
        if not ends:
            unprotected += 1
            continue
        lags.append(min(ends) - t)
    lags.sort()
    # The exposure window every 100 ms: now minus the start of the newest
    # snapshot committed by then.
    by_end = sorted((s["end_ms"], s["start_ms"]) for s in snaps)
    end_keys = [e for e, _ in by_end]
    exposure = []
    newest_start = []
    for e, s in by_end:
        newest_start.append(max(s, newest_start[-1]) if newest_start else s)
    # Nothing is at risk before the first append: the window starts there.
    first_ms = int(started * 1000)
    t = first_ms
    while t <= last_append_ms:
        i = bisect.bisect_right(end_keys, t)
        exposure.append(t - max(newest_start[i - 1] if i else first_ms, first_ms))
        t += 100
    exposure.sort()

    during = [s for s in snaps if s["start_ms"] >= int(started * 1000)]
    new_snaps = len(snaps) - base_snaps
    stats = [s.get("stats", {}) for s in during]

    def mean(key):
        return sum(x.get(key, 0) for x in stats) / len(stats) if stats else 0

    src = status["sources"][0] if status and status.get("sources") else {}
    report = {
        "binary": binary,
        "minutes": a.minutes,
        "target_mbps": a.mbps,
        "written_bytes": written,
        "achieved_mbps": written / 1e6 / (finished - started),
        "max_lag": a.max_lag,
        "appends": len(appends),
        "appends_unprotected": unprotected,
        "rpo_ms": {"p50": pct(lags, 50), "p99": pct(lags, 99), "max": lags[-1] if lags else None},
        "exposure_ms": {"p50": pct(exposure, 50), "p99": pct(exposure, 99), "max": exposure[-1] if exposure else None},
        "snapshots": len(during),
        "run_ms": {
            "mean": sum(s["end_ms"] - s["start_ms"] for s in during) / len(during) if during else None,
            "max": max((s["end_ms"] - s["start_ms"] for s in during), default=None),
        },
        "per_snapshot": {
            "bytes_new": mean("bytes_new"),
            "bytes_stored": mean("bytes_stored"),
            "bytes_scanned": mean("bytes_scanned"),
            "last_run_bytes_read": (src.get("last_run") or {}).get("bytes_read"),
        },
        "catalog": {
            "meta_dir_bytes_before": base_meta,
            "meta_dir_bytes_after": after_meta,
            "snapshots_committed": new_snaps,
            "growth_bytes_per_snapshot": (after_meta - base_meta) / new_snaps if new_snaps else None,
            "packs_before": base_packs,
            "packs_after": after_packs,
            "packs_per_snapshot": (after_packs - base_packs) / new_snaps if new_snaps else None,
        },
        "agent": {"runs_ok": src.get("runs_ok"), "runs_failed": src.get("runs_failed")},
        "uptime_before": load_before,
        "uptime_after": load_after,
        "nproc": os.cpu_count(),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    r, cat, ps = report["rpo_ms"], report["catalog"], report["per_snapshot"]
    md = f"""# Real-time RPO (max_lag {a.max_lag})

{a.minutes:g} min of appends every 100 ms at {report['achieved_mbps']:.2f} MB/s (target {a.mbps:g}),
{written / 1e6:.0f} MB written; `{binary}`; {os.cpu_count()} cores, a shared machine:

- load before: `{load_before}`
- load after: `{load_after}`

| measure | p50 | p99 | max |
|---|---|---|---|
| RPO per append (ms, to the commit of the first run started after it) | {r['p50']} | {r['p99']} | {r['max']} |
| exposure window every 100 ms (ms) | {report['exposure_ms']['p50']} | {report['exposure_ms']['p99']} | {report['exposure_ms']['max']} |

Appends in no committed snapshot: {unprotected}. Snapshots committed: {len(during)}
(a run took {report['run_ms']['mean'] or 0:.0f} ms on average, {report['run_ms']['max']} ms at most);
agent runs ok {src.get('runs_ok')}, failed {src.get('runs_failed')}.

Per snapshot (mean): {ps['bytes_scanned'] / 1e6:.2f} MB in the source, {ps['bytes_new'] / 1e6:.3f} MB new,
{ps['bytes_stored'] / 1e6:.3f} MB stored; the last run read {ps['last_run_bytes_read']} bytes of the source.

Catalog (metadata node's directory, sled state machine and Raft log):
{cat['meta_dir_bytes_before']} -> {cat['meta_dir_bytes_after']} bytes over {cat['snapshots_committed']} snapshots,
{(cat['growth_bytes_per_snapshot'] or 0) / 1024:.1f} KiB per snapshot; packs {cat['packs_before']} -> {cat['packs_after']},
{cat['packs_per_snapshot'] or 0:.2f} packs (each a pack record, k+m shard files) per snapshot.
"""
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md)
    print(md)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
