#!/usr/bin/env python3
"""The end-to-end benchmark behind `make bench`: coffer against restic, borg,
`cp -a` and `tar | zstd -1` on one machine, on the same seeded dataset.

For each run and each tool, on a fresh copy of the day-0 dataset at one fixed
path (so that every tool's incremental logic sees the same source):

    first backup  ->  "next day" mutation  ->  second backup  ->  full restore

Every measured step is a client command followed by `sync`, run under
`/usr/bin/time` for wall time, user+sys CPU and peak RSS. When the page cache
can be dropped (root), it is dropped before every measured step, so every
tool reads its source and its repository from disk. coffer runs against a
fresh `coffer dev` cluster per run (1 metadata node, 3 sites x 2 storage
nodes, 4+2, all in one process on this machine); that process's CPU time is
sampled from /proc around each step and its peak RSS (VmHWM) read before it
is stopped. Every restore is compared with the source (`diff -r`).

Output: a table on stdout, and target/bench/report.md and report.json with
every measurement, the medians over runs, the ratios and the target verdicts.

Stdlib only. Installs restic, borgbackup, zstd and time with apt-get when a
command is missing.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
TOOLS = ["coffer", "restic", "borg", "cp", "tar"]
STEPS = ["backup1", "backup2", "restore"]
# The backup summary's stages, in pipeline order.
STAGES = ["read", "hash", "seal", "encode", "send"]
# The restore summary's stages.
RESTORE_STAGES = ["trees", "lookup", "read", "open", "write", "metadata"]
STEP_TITLES = {"backup1": "first backup", "backup2": "second backup", "restore": "full restore"}
PASSWORD = "bench-password-not-secret"
# Set from the command line: before each measured step, wait (up to
# max_wait seconds) for a second in which the machine is busy for at most
# `threshold` CPU-seconds, then drop the page cache if `drop`.
QUIET = {"max_wait": 60.0, "threshold": 0.3, "drop": False}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class StepFailed(Exception):
    pass


# ---------------------------------------------------------------- machine

def ensure_tools():
    """Installs what is missing, with one `apt-get update` at most."""
    wanted = [("restic", "restic"), ("borg", "borgbackup"), ("zstd", "zstd"), ("/usr/bin/time", "time"),
              ("tar", "tar")]
    missing = [pkg for cmd, pkg in wanted if shutil.which(cmd) is None]
    if not missing:
        return []
    log("installing %s with apt-get" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + missing, check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return missing


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def can_drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def system_busy_s():
    """CPU seconds the whole machine has spent busy (not idle, not iowait)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK


def wait_quiet(max_wait, threshold):
    """Waits until the machine is nearly idle: other work on a shared
    machine (compilers, tests) steals CPU from whichever tool is measured.
    Returns the seconds waited; gives up after max_wait."""
    start = time.monotonic()
    while True:
        before = system_busy_s()
        time.sleep(1.0)
        busy = system_busy_s() - before
        waited = time.monotonic() - start
        if busy <= threshold or waited >= max_wait:
            return waited


def drop_caches(enabled):
    if enabled:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def machine_info():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_bytes": mem, "kernel": platform.release(),
            "python": platform.python_version()}


# ---------------------------------------------------------------- measuring

def tree_bytes(root):
    """Bytes of the regular files under root (the "source size")."""
    total = 0
    for d, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(d, name))
            if not os.path.islink(os.path.join(d, name)):
                total += st.st_size
    return total


def du_bytes(*paths):
    total = 0
    for p in paths:
        if os.path.exists(p):
            out = subprocess.run(["du", "-sb", p], capture_output=True, text=True, check=True)
            total += int(out.stdout.split()[0])
    return total


def measure(script, env, cwd, tmp, stdout_path=None, cluster_pid=None):
    """Runs `script; sync` under /usr/bin/time; returns wall, CPU and peak RSS.

    The `sync` is inside the measured time for every tool: a backup is done
    when its bytes are on disk, and some tools fsync while others leave the
    flush to the kernel.
    """
    tfile = os.path.join(tmp, "time.out")
    errfile = os.path.join(tmp, "cmd.err")
    full = "set -e; %s; sync" % script
    out = open(stdout_path, "w") if stdout_path else subprocess.DEVNULL
    waited = wait_quiet(QUIET["max_wait"], QUIET["threshold"])
    drop_caches(QUIET["drop"])
    with open(errfile, "w") as err:
        busy_before = system_busy_s()
        cluster_before = proc_cpu_s(cluster_pid) if cluster_pid else None
        start = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", tfile, "sh", "-c", full], env=env,
                              cwd=cwd, stdout=out, stderr=err)
        wall = time.monotonic() - start
        busy = system_busy_s() - busy_before
        cluster_cpu = proc_cpu_s(cluster_pid) - cluster_before if cluster_pid else None
    if stdout_path:
        out.close()
    if proc.returncode != 0:
        with open(errfile) as f:
            tail = f.read()[-3000:]
        raise StepFailed("exit %d: %s\n%s" % (proc.returncode, script, tail))
    with open(tfile) as f:
        fields = f.read().strip().splitlines()[-1].split()
    user, sys_, rss_kib = float(fields[1]), float(fields[2]), int(fields[3])
    m = {"wall_s": wall, "user_s": user, "sys_s": sys_, "cpu_s": user + sys_, "rss_mib": rss_kib / 1024,
         "machine_busy_s": busy, "quiet_wait_s": waited}
    if cluster_cpu is not None:
        m["cluster_cpu_s"] = cluster_cpu
    return m


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command name: state is [0], utime [11], stime [12].
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def last_json_line(path):
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip().startswith("{")]
    if not lines:
        raise StepFailed("no JSON output in %s" % path)
    return json.loads(lines[-1])


# ---------------------------------------------------------------- tools

class Tool:
    """One contender. Subclasses set up a fresh repository in `home`."""

    name = ""

    def __init__(self, home, src, tmp):
        self.home = home
        self.src = src
        self.tmp = tmp
        self.env = dict(os.environ)
        self.extra = {}

    def setup(self):
        pass

    def backup(self, n):
        raise NotImplementedError

    def restore(self, dest):
        """Measures a full restore into dest; returns (measurement, root of the restored tree)."""
        raise NotImplementedError

    def stored(self):
        """Bytes the repository holds after both backups: {"bytes": ..., ...}."""
        raise NotImplementedError

    def teardown(self):
        pass

    def run(self, script, stdout_path=None, cwd=None):
        return measure(script, self.env, cwd or self.home, self.tmp, stdout_path, self.cluster_pid())

    def cluster_pid(self):
        """The server process whose CPU counts too, if the tool has one."""
        return None


class Coffer(Tool):
    name = "coffer"

    def __init__(self, home, src, tmp, binary, insecure=False):
        super().__init__(home, src, tmp)
        self.bin = binary
        self.insecure = insecure
        self.data = os.path.join(home, "cluster")
        self.proc = None
        self.summaries = []

    def setup(self):
        self.log = open(os.path.join(self.home, "dev.log"), "w")
        # Mutual TLS on every hop unless --insecure (then plain text).
        transport = ["--insecure"] if self.insecure else []
        self.proc = subprocess.Popen([self.bin, "dev", "--data", self.data, "--listen", "127.0.0.1:0"] + transport,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        envfile = os.path.join(self.data, "env")
        deadline = time.monotonic() + 60
        while not os.path.exists(envfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StepFailed("coffer dev did not start; see %s" % self.log.name)
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one call; let it land
        with open(envfile) as f:
            for line in f:
                line = line.strip()
                if line.startswith("export ") and "=" in line:
                    k, v = line[len("export "):].split("=", 1)
                    self.env[k] = v
        self.env.update(COFFER_REPO="bench", COFFER_PASSWORD=PASSWORD)
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run([self.bin, "status", "--json"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0:
                try:
                    status = json.loads(out.stdout.strip().splitlines()[-1])
                    if sum(1 for n in status.get("nodes", []) if n.get("state") == "up") >= 6:
                        break
                except (ValueError, IndexError):
                    pass
            if time.monotonic() > deadline:
                raise StepFailed("coffer cluster did not report 6 storage nodes up")
            time.sleep(0.2)
        subprocess.run([self.bin, "repo", "create", "bench"], env=self.env, check=True, capture_output=True)

    def cluster_pid(self):
        return self.proc.pid if self.proc is not None else None

    def backup(self, n):
        out = os.path.join(self.home, "backup%d.json" % n)
        cmd = "%s backup %s --json" % (shlex.quote(self.bin), shlex.quote(self.src))
        m = self.run(cmd, stdout_path=out)
        summary = last_json_line(out)
        self.summaries.append(summary)
        m["summary"] = summary
        return m

    def restore(self, dest):
        out = os.path.join(self.home, "restore.json")
        cmd = "%s restore latest %s --json" % (shlex.quote(self.bin), shlex.quote(dest))
        m = self.run(cmd, stdout_path=out)
        m["summary"] = last_json_line(out)
        return m, dest

    def stored(self):
        # Nodes report their usage in heartbeats; give the last ones time to land.
        time.sleep(3)
        status = subprocess.run([self.bin, "status", "--json"], env=self.env, capture_output=True, text=True)
        used = None
        if status.returncode == 0:
            try:
                nodes = json.loads(status.stdout.strip().splitlines()[-1]).get("nodes", [])
                used = sum(int(n.get("used_bytes", 0)) for n in nodes)
            except (ValueError, IndexError):
                used = None
        return {
            # Sealed blobs (chunks and trees), deduplicated and compressed,
            # before erasure coding: what the target compares with restic.
            "bytes": sum(s["bytes_stored"] for s in self.summaries),
            # Shard bytes the summaries report after erasure coding.
            "bytes_after_ec": sum(s["bytes_stored_raw"] for s in self.summaries),
            # Everything the storage nodes keep on disk (shard files with
            # their headers and block checksums, inventories).
            "storage_dirs_du": du_bytes(os.path.join(self.data, "storage")),
            "nodes_used_bytes": used,
            "meta_dir_du": du_bytes(os.path.join(self.data, "meta")),
        }

    def teardown(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.extra["cluster_peak_rss_mib"] = proc_hwm_mib(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Restic(Tool):
    name = "restic"

    def setup(self):
        self.repo = os.path.join(self.home, "repo")
        self.env.update(RESTIC_REPOSITORY=self.repo, RESTIC_PASSWORD=PASSWORD,
                        RESTIC_CACHE_DIR=os.path.join(self.home, "cache"))
        subprocess.run(["restic", "init"], env=self.env, check=True, capture_output=True)

    def backup(self, n):
        out = os.path.join(self.home, "backup%d.json" % n)
        m = self.run("restic backup --json %s" % shlex.quote(self.src), stdout_path=out)
        m["summary"] = last_json_line(out)
        return m

    def restore(self, dest):
        m = self.run("restic restore latest --target %s" % shlex.quote(dest))
        return m, os.path.join(dest, self.src.lstrip("/"))

    def stored(self):
        return {"bytes": du_bytes(self.repo)}


class Borg(Tool):
    name = "borg"

    def setup(self):
        self.repo = os.path.join(self.home, "repo")
        self.env.update(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=os.path.join(self.home, "base"))
        subprocess.run(["borg", "init", "-e", "repokey", self.repo], env=self.env, check=True, capture_output=True)

    def backup(self, n):
        return self.run("borg create %s::b%d %s" % (shlex.quote(self.repo), n, shlex.quote(self.src)))

    def restore(self, dest):
        os.makedirs(dest, exist_ok=True)
        m = self.run("borg extract %s::b2" % shlex.quote(self.repo), cwd=dest)
        return m, os.path.join(dest, self.src.lstrip("/"))

    def stored(self):
        return {"bytes": du_bytes(self.repo)}


class Cp(Tool):
    """A plain copy: every backup is a full copy, nothing is deduplicated."""

    name = "cp"

    def backup(self, n):
        return self.run("cp -a %s %s" % (shlex.quote(self.src), shlex.quote(os.path.join(self.home, "copy%d" % n))))

    def restore(self, dest):
        m = self.run("cp -a %s %s" % (shlex.quote(os.path.join(self.home, "copy2")), shlex.quote(dest)))
        return m, dest

    def stored(self):
        return {"bytes": du_bytes(os.path.join(self.home, "copy1"), os.path.join(self.home, "copy2"))}


class Tar(Tool):
    """`tar | zstd -1`: every backup is a full archive."""

    name = "tar"

    def archive(self, n):
        return os.path.join(self.home, "backup%d.tar.zst" % n)

    def backup(self, n):
        parent, base = os.path.split(self.src)
        return self.run("tar -C %s -cf - %s | zstd -1 -q -o %s" % (
            shlex.quote(parent), shlex.quote(base), shlex.quote(self.archive(n))))

    def restore(self, dest):
        os.makedirs(dest, exist_ok=True)
        m = self.run("zstd -dc -q %s | tar -C %s -xf -" % (shlex.quote(self.archive(2)), shlex.quote(dest)))
        return m, os.path.join(dest, os.path.basename(self.src))

    def stored(self):
        return {"bytes": os.path.getsize(self.archive(1)) + os.path.getsize(self.archive(2))}


# ---------------------------------------------------------------- one run

def run_tool(tool, base, src, restore_dir, seed, caches, source_bytes):
    """First backup, mutation, second backup, restore, verification."""
    result = {"steps": {}}
    if os.path.exists(src):
        shutil.rmtree(src)
    subprocess.run(["cp", "-a", base, src], check=True)
    try:
        tool.setup()
        result["steps"]["backup1"] = tool.backup(1)
        subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py"), "--mutate", src, str(seed)],
                       check=True)
        if "mutated" not in source_bytes:
            source_bytes["mutated"] = tree_bytes(src)
        result["steps"]["backup2"] = tool.backup(2)
        result["stored"] = tool.stored()
        if os.path.exists(restore_dir):
            shutil.rmtree(restore_dir)
        m, root = tool.restore(restore_dir)
        result["steps"]["restore"] = m
        diff = subprocess.run(["diff", "-r", "--no-dereference", src, root], capture_output=True, text=True)
        result["verified"] = diff.returncode == 0
        if diff.returncode != 0:
            result["verify_output"] = (diff.stdout + diff.stderr)[-2000:]
            log("%s: restore differs from the source:\n%s" % (tool.name, result["verify_output"][:800]))
    except (StepFailed, subprocess.CalledProcessError) as e:
        result["error"] = str(e)
        log("%s failed: %s" % (tool.name, e))
    finally:
        tool.teardown()
        result["extra"] = tool.extra
    sizes = {"backup1": source_bytes["base"], "backup2": source_bytes.get("mutated"),
             "restore": source_bytes.get("mutated")}
    for step, m in result["steps"].items():
        if sizes[step]:
            m["mib_s"] = sizes[step] / MIB / m["wall_s"]
        # CPU the rest of the machine used during the step (other users'
        # work, and kernel threads such as writeback working for the tool).
        m["other_cpu_s"] = max(0.0, m["machine_busy_s"] - m["cpu_s"] - m.get("cluster_cpu_s", 0.0))
    return result


def contended_steps(result, share):
    """Steps during which the rest of the machine used more than `share` of
    its CPU capacity (and more than half a CPU-second, so that a short step
    is not judged on kernel writeback alone): their timings say more about
    the neighbours than about the tool."""
    cpus = os.cpu_count() or 1
    return [step for step, m in result["steps"].items()
            if m["other_cpu_s"] > max(0.5, share * m["wall_s"] * cpus)]


def make_tool(name, home, src, tmp, coffer_bin, insecure=False):
    os.makedirs(home, exist_ok=True)
    if name == "coffer":
        return Coffer(home, src, tmp, coffer_bin, insecure)
    return {"restic": Restic, "borg": Borg, "cp": Cp, "tar": Tar}[name](home, src, tmp)


# ---------------------------------------------------------------- summary

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs, tools):
    med = {}
    for t in tools:
        ok = [r[t] for r in runs if t in r and "error" not in r[t]]
        entry = {"runs_ok": len(ok)}
        for step in STEPS:
            ms = [r["steps"][step] for r in ok if step in r["steps"]]
            entry[step] = {k: median([m.get(k) for m in ms]) for k in
                           ("wall_s", "mib_s", "cpu_s", "user_s", "sys_s", "rss_mib", "cluster_cpu_s",
                            "other_cpu_s", "quiet_wait_s")}
        entry["stored_bytes"] = median([r["stored"]["bytes"] for r in ok if "stored" in r])
        if t == "coffer":
            for k in ("bytes_after_ec", "storage_dirs_du", "nodes_used_bytes", "meta_dir_du"):
                entry["stored_" + k] = median([r["stored"].get(k) for r in ok if "stored" in r])
            entry["cluster_peak_rss_mib"] = median([r["extra"].get("cluster_peak_rss_mib") for r in ok])
            entry["cluster_peak_rss_mib_max"] = max([r["extra"].get("cluster_peak_rss_mib") or 0 for r in ok],
                                                    default=None)
            entry["agent_peak_rss_mib_max"] = max([m["rss_mib"] for r in ok for m in r["steps"].values()],
                                                  default=None)
            stages = {}
            for step in ("backup1", "backup2"):
                ss = [r["steps"][step]["summary"] for r in ok if step in r["steps"]]
                if ss:
                    stages[step] = {
                        "stages": {st: {"seconds": median([s["stages"][st]["seconds"] for s in ss]),
                                        "bytes": median([s["stages"][st]["bytes"] for s in ss])}
                                   for st in STAGES if st in ss[0]["stages"]},
                        "duration_s": median([s["duration_s"] for s in ss]),
                        "bytes_read": median([s["bytes_read"] for s in ss]),
                        "bytes_new": median([s["bytes_new"] for s in ss]),
                        "bytes_stored": median([s["bytes_stored"] for s in ss]),
                        "chunks_new": median([s["chunks_new"] for s in ss]),
                        "chunks_reused": median([s["chunks_reused"] for s in ss]),
                        "packs": median([s.get("packs") for s in ss]),
                    }
            entry["coffer_stages"] = stages
            rs = [r["steps"]["restore"]["summary"] for r in ok
                  if "restore" in r["steps"] and "stages" in (r["steps"]["restore"].get("summary") or {})]
            if rs:
                entry["coffer_restore_stages"] = {
                    "stages": {st: {"seconds": median([s["stages"][st]["seconds"] for s in rs]),
                                    "bytes": median([s["stages"][st]["bytes"] for s in rs])}
                               for st in RESTORE_STAGES if st in rs[0]["stages"]},
                    "duration_s": median([s["duration_s"] for s in rs]),
                }
        entry["verified"] = all(r.get("verified") for r in ok) and bool(ok)
        med[t] = entry
    return med


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def ratios_and_targets(med):
    c = med.get("coffer")
    ratios = {}
    for t, e in med.items():
        if t == "coffer" or c is None:
            continue
        ratios[t] = {
            # > 1 means coffer is faster.
            "backup1_speedup": ratio(e["backup1"]["wall_s"], c["backup1"]["wall_s"]),
            "backup2_speedup": ratio(e["backup2"]["wall_s"], c["backup2"]["wall_s"]),
            "restore_speedup": ratio(e["restore"]["wall_s"], c["restore"]["wall_s"]),
            # < 1 means coffer stores less (before erasure coding).
            "stored_ratio": ratio(c["stored_bytes"], e["stored_bytes"]),
            # coffer's CPU (agent + cluster) over theirs; < 1 means cheaper.
            "backup1_cpu_ratio": ratio(cpu_total(c, "backup1"), e["backup1"]["cpu_s"]),
            "backup2_cpu_ratio": ratio(cpu_total(c, "backup2"), e["backup2"]["cpu_s"]),
            "restore_cpu_ratio": ratio(cpu_total(c, "restore"), e["restore"]["cpu_s"]),
        }
    targets = []
    if c is None:
        return ratios, targets

    def faster(step):
        cands = [(med[t][step]["wall_s"], t) for t in ("restic", "borg") if t in med and med[t][step]["wall_s"]]
        return min(cands) if cands else (None, None)

    for step, need, text in (("backup1", 2.0, "first backup >= 2x the faster of restic and borg"),
                             ("backup2", 2.0, "second backup <= half the time of the faster of restic and borg"),
                             ("restore", 2.0, "full restore >= 2x the faster of restic and borg")):
        wall, who = faster(step)
        value = ratio(wall, c[step]["wall_s"])
        targets.append({"target": text, "against": who, "value": value, "unit": "x (their time / coffer's)",
                        "required": ">= %.1f" % need, "met": value is not None and value >= need})
    r = med.get("restic")
    value = ratio(c["stored_bytes"], r["stored_bytes"]) if r else None
    targets.append({"target": "bytes stored before erasure coding <= restic's", "against": "restic", "value": value,
                    "unit": "x (coffer / restic)", "required": "<= 1.0", "met": value is not None and value <= 1.0})
    rss = c.get("agent_peak_rss_mib_max")
    targets.append({"target": "agent peak RSS < 512 MiB", "against": None, "value": rss, "unit": "MiB (max of all steps and runs)",
                    "required": "< 512", "met": rss is not None and rss < 512})
    return ratios, targets


# ---------------------------------------------------------------- report

def fmt(v, spec="%.2f", none="-"):
    return none if v is None else spec % v


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    out = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(out)


def cpu_total(e, step):
    s = e[step]
    if s["cpu_s"] is None:
        return None
    return s["cpu_s"] + (s.get("cluster_cpu_s") or 0)


def render(report):
    cfg, med, ratios, targets = report["config"], report["medians"], report["ratios"], report["targets"]
    lines = []
    lines.append("# coffer benchmark")
    lines.append("")
    lines.append("%s; dataset %d MiB (seed %s): %.1f MiB day 0, %.1f MiB after the mutation; %d run(s), medians shown. "
                 "%s. Machine: %d CPUs (%s), %.1f GiB RAM, kernel %s." % (
                     cfg["started"], cfg["mib"], cfg["seed"], cfg["source_bytes"]["base"] / MIB,
                     (cfg["source_bytes"].get("mutated") or 0) / MIB, cfg["runs"], cfg["cache"],
                     cfg["machine"]["cpus"], cfg["machine"]["cpu_model"], cfg["machine"]["mem_bytes"] / (1 << 30),
                     cfg["machine"]["kernel"]))
    lines.append("")
    lines.append("Before each step the driver waits up to %.0f s for a second in which the machine uses at most %.2f "
                 "CPU-seconds (a shared machine: other work steals CPU from the tool being measured); median wait "
                 "%.1f s, and %d of %d steps started without the machine going quiet." % (
                     cfg["quiet"]["max_wait"], cfg["quiet"]["threshold"], cfg["quiet"]["median_wait_s"],
                     cfg["quiet"]["steps_not_quiet"], cfg["quiet"]["steps"]))
    lines.append("A tool's run is repeated (up to %d times) when, during one of its steps, other processes used more "
                 "than %.0f%% of the machine's CPU; %d tool run(s) were repeated, and %d kept run(s) remain "
                 "contended after the last retry (marked * below)." % (
                     cfg["quiet"]["retries"], 100 * cfg["quiet"]["contended_share"],
                     cfg["quiet"]["tool_runs_retried"], cfg["quiet"]["tool_runs_still_contended"]))
    lines.append("")
    lines.append("Each step is the client command plus `sync`. MiB/s is source MiB (day 0 for the first backup, "
                 "next day for the second backup and the restore) over wall time. coffer's CPU is the agent's, "
                 "with the cluster process's CPU during the step in brackets; RSS is the agent's peak "
                 "(the cluster's is below). Stored is what the repository holds after both backups; "
                 "for coffer, sealed blobs before erasure coding.")
    lines.append("")
    headers = ["tool"]
    for step in STEPS:
        headers += ["%s s" % STEP_TITLES[step], "MiB/s", "CPU s", "RSS MiB"]
    headers += ["stored MiB", "verified"]
    rows = []
    for t in cfg["tools"]:
        e = med.get(t)
        if not e or not e["runs_ok"]:
            rows.append([t] + ["failed"] + [""] * (len(headers) - 2))
            continue
        row = [t]
        for step in STEPS:
            s = e[step]
            cpu = fmt(s["cpu_s"], "%.1f")
            if t == "coffer" and s.get("cluster_cpu_s") is not None:
                cpu += " (+%.1f)" % s["cluster_cpu_s"]
            row += [fmt(s["wall_s"]), fmt(s["mib_s"], "%.1f"), cpu, fmt(s["rss_mib"], "%.0f")]
        row += [fmt(e["stored_bytes"] / MIB if e["stored_bytes"] is not None else None, "%.1f"),
                "yes" if e["verified"] else "NO"]
        rows.append(row)
    lines.append(table(headers, rows))
    c = med.get("coffer")
    if c and c["runs_ok"]:
        lines.append("")
        lines.append("coffer after erasure coding (4+2): %s MiB of shards by the summaries, %s MiB in the storage "
                     "directories (du), %s MiB used by the nodes' own count; metadata directory %s MiB. "
                     "Cluster peak RSS (VmHWM of `coffer dev`): %s MiB (max %s). Agent peak RSS, max over all "
                     "steps and runs: %s MiB." % (
                         fmt(c["stored_bytes_after_ec"] and c["stored_bytes_after_ec"] / MIB, "%.1f"),
                         fmt(c["stored_storage_dirs_du"] and c["stored_storage_dirs_du"] / MIB, "%.1f"),
                         fmt(c["stored_nodes_used_bytes"] and c["stored_nodes_used_bytes"] / MIB, "%.1f"),
                         fmt(c["stored_meta_dir_du"] and c["stored_meta_dir_du"] / MIB, "%.1f"),
                         fmt(c["cluster_peak_rss_mib"], "%.0f"), fmt(c["cluster_peak_rss_mib_max"], "%.0f"),
                         fmt(c["agent_peak_rss_mib_max"], "%.0f")))
    lines.append("")
    lines.append("## Ratios (coffer against each)")
    lines.append("")
    lines.append("Speedup = their wall time / coffer's (> 1: coffer faster). Stored = coffer's bytes before erasure "
                 "coding / theirs (< 1: coffer smaller). CPU = coffer agent + cluster CPU / theirs.")
    lines.append("")
    rows = []
    for t, r in ratios.items():
        rows.append([t, fmt(r["backup1_speedup"], "%.2fx"), fmt(r["backup2_speedup"], "%.2fx"),
                     fmt(r["restore_speedup"], "%.2fx"), fmt(r["stored_ratio"], "%.3f"),
                     fmt(r["backup1_cpu_ratio"], "%.2f"), fmt(r["backup2_cpu_ratio"], "%.2f"),
                     fmt(r["restore_cpu_ratio"], "%.2f")])
    lines.append(table(["against", "first backup", "second backup", "restore", "stored", "CPU b1", "CPU b2",
                        "CPU restore"], rows))
    lines.append("")
    lines.append("## Targets")
    lines.append("")
    rows = [[t["target"], t["against"] or "", fmt(t["value"], "%.2f"), t["required"], t["unit"],
             "met" if t["met"] else "NOT MET"] for t in targets]
    lines.append(table(["target", "against", "value", "required", "unit", "verdict"], rows))
    if c and c.get("coffer_stages"):
        lines.append("")
        lines.append("## Where coffer's backup time goes (medians of the backup summaries' `stages`)")
        lines.append("")
        lines.append("Stage seconds sum the time of every thread of a stage, so they can exceed the wall time.")
        lines.append("")
        rows = []
        for step, s in c["coffer_stages"].items():
            for st, v in s["stages"].items():
                rate = v["bytes"] / MIB / v["seconds"] if v["seconds"] else None
                rows.append([STEP_TITLES[step], st, fmt(v["seconds"]), fmt(v["bytes"] / MIB, "%.1f"),
                             fmt(rate, "%.1f")])
            rows.append([STEP_TITLES[step], "(duration)", fmt(s["duration_s"]),
                         "read %.1f, new %.1f, stored %.1f" % (s["bytes_read"] / MIB, s["bytes_new"] / MIB,
                                                              s["bytes_stored"] / MIB),
                         "chunks new %d, reused %d" % (s["chunks_new"], s["chunks_reused"])])
        lines.append(table(["backup", "stage", "seconds", "MiB", "MiB/s per stage-second"], rows))
    if c and c.get("coffer_restore_stages"):
        rs = c["coffer_restore_stages"]
        lines.append("")
        lines.append("## Where coffer's restore time goes (medians of the restore summaries' `stages`)")
        lines.append("")
        lines.append("Stage seconds sum the time of every task of a stage (reads and writes overlap), "
                     "so they can exceed the wall time of %.2f s." % rs["duration_s"])
        lines.append("")
        rows = []
        for st, v in rs["stages"].items():
            rate = v["bytes"] / MIB / v["seconds"] if v["seconds"] and v["bytes"] else None
            rows.append([st, fmt(v["seconds"]), fmt(v["bytes"] / MIB, "%.1f"), fmt(rate, "%.1f")])
        lines.append(table(["stage", "seconds", "MiB", "MiB/s per stage-second"], rows))
    lines.append("")
    lines.append("## Every run")
    lines.append("")
    rows = []
    for i, run in enumerate(report["runs"]):
        for t in cfg["tools"]:
            r = run.get(t)
            if r is None:
                continue
            if "error" in r:
                rows.append([i + 1, t, "error: " + r["error"].splitlines()[0][:80]] + [""] * 5)
                continue
            st = r["steps"]
            row = [i + 1, t + (" *" if r.get("contended_steps") else "")]
            for step in STEPS:
                m = st.get(step)
                row.append("%.2f s / %.1f CPU / %.0f MiB / bg %.1f" % (
                    m["wall_s"], m["cpu_s"], m["rss_mib"], m.get("other_cpu_s", 0.0)) if m else "-")
            row.append(fmt(r.get("stored", {}).get("bytes", 0) / MIB, "%.1f"))
            row.append(fmt(r["extra"].get("cluster_peak_rss_mib"), "%.0f"))
            row.append("yes" if r.get("verified") else "NO")
            rows.append(row)
    lines.append("Each step: wall time / client CPU / client peak RSS / bg = CPU-seconds the rest of the machine "
                 "used during the step (other users' processes, and kernel threads such as writeback working for "
                 "the tool; for coffer, excluding the cluster process).")
    lines.append("")
    lines.append(table(["run", "tool", "first backup", "second backup", "restore", "stored MiB",
                        "cluster RSS MiB", "verified"], rows))
    lines.append("")
    lines.append("Versions: " + "; ".join("%s: %s" % kv for kv in cfg["versions"].items()) + ".")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coffer", default="target/release/coffer")
    ap.add_argument("--mib", type=int, default=int(os.environ.get("BENCH_MIB", 1024)))
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 3)))
    ap.add_argument("--seed", default=os.environ.get("BENCH_SEED", "20261124"))
    ap.add_argument("--out", default="target/bench")
    ap.add_argument("--work", default=None, help="work directory (default: a new one under $TMPDIR)")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--insecure", action="store_true",
                    help="run the coffer cluster in plain text (default: mutual TLS on every hop)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each step, wait up to this many seconds for the machine to go idle")
    ap.add_argument("--quiet-threshold", type=float, default=0.3,
                    help="CPU-seconds per second below which the machine counts as idle")
    ap.add_argument("--contended", type=float, default=0.25,
                    help="a step is contended when other processes used more than this share of the machine's CPU")
    ap.add_argument("--retries", type=int, default=2,
                    help="times a tool's run is repeated when one of its steps was contended")
    args = ap.parse_args()
    if args.runs < 1 or args.mib < 1:
        ap.error("--runs and --mib must be positive")
    tools = [t for t in args.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            ap.error("unknown tool %r (known: %s)" % (t, ", ".join(TOOLS)))
    coffer_bin = os.path.abspath(args.coffer)
    if "coffer" in tools and not os.access(coffer_bin, os.X_OK):
        ap.error("no coffer binary at %s (run `make bench`, which builds it)" % coffer_bin)

    installed = ensure_tools()
    caches = can_drop_caches()
    QUIET.update(max_wait=args.quiet_wait, threshold=args.quiet_threshold, drop=caches)
    cache_note = ("cold cache: the page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every "
                  "measured step" if caches else "warm cache: the page cache could not be dropped")
    log(cache_note)
    versions = {
        "coffer": first_line([coffer_bin, "--version"]) if "coffer" in tools else "-",
        "restic": first_line(["restic", "version"]),
        "borg": first_line(["borg", "--version"]),
        "zstd": first_line(["zstd", "--version"]),
        "tar": first_line(["tar", "--version"]),
    }
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="coffer-bench.",
                                                                          dir=os.environ.get("TMPDIR", "/tmp"))
    os.makedirs(work, exist_ok=True)
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(work, "base")
    src = os.path.join(work, "src")
    restore_dir = os.path.join(work, "restore")
    tmp = os.path.join(work, "tmp")
    os.makedirs(tmp, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    try:
        if os.path.exists(base):
            shutil.rmtree(base)
        log("generating %d MiB dataset (seed %s) in %s" % (args.mib, args.seed, base))
        t0 = time.monotonic()
        subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py"), str(args.seed), str(args.mib), base],
                       check=True)
        source_bytes = {"base": tree_bytes(base)}
        log("dataset: %.1f MiB in %.1fs" % (source_bytes["base"] / MIB, time.monotonic() - t0))
        runs = []
        for i in range(args.runs):
            run = {}
            for t in tools:
                discarded = []
                for attempt in range(args.retries + 1):
                    home = os.path.join(work, "run%d-%s" % (i + 1, t))
                    log("run %d/%d: %s%s" % (i + 1, args.runs, t, " (retry %d)" % attempt if attempt else ""))
                    tool = make_tool(t, home, src, tmp, coffer_bin, args.insecure)
                    result = run_tool(tool, base, src, restore_dir, args.seed, caches, source_bytes)
                    for step, m in result["steps"].items():
                        log("  %-8s %7.2fs  %7.1f MiB/s  cpu %6.1fs  rss %5.0f MiB  bg %5.1fs" % (
                            step, m["wall_s"], m.get("mib_s") or 0, m["cpu_s"], m["rss_mib"], m["other_cpu_s"]))
                    shutil.rmtree(home, ignore_errors=True)
                    shutil.rmtree(restore_dir, ignore_errors=True)
                    busy = contended_steps(result, args.contended)
                    if not busy or "error" in result or attempt == args.retries:
                        break
                    log("  contended (%s): another process used the machine; running %s again" % (
                        ", ".join(busy), t))
                    discarded.append(result)
                result["discarded_contended"] = discarded
                result["contended_steps"] = contended_steps(result, args.contended)
                run[t] = result
            runs.append(run)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log("kept %s" % work)

    retried = sum(len(r.get("discarded_contended", [])) for run in runs for r in run.values())
    still = sum(1 for run in runs for r in run.values() if r.get("contended_steps"))
    waits = [m["quiet_wait_s"] for run in runs for r in run.values() for m in r["steps"].values()]
    quiet = {"max_wait": args.quiet_wait, "threshold": args.quiet_threshold, "steps": len(waits),
             "median_wait_s": statistics.median(waits) if waits else 0.0,
             "steps_not_quiet": sum(1 for w in waits if w >= args.quiet_wait),
             "contended_share": args.contended, "retries": args.retries, "tool_runs_retried": retried,
             "tool_runs_still_contended": still}
    med = summarise(runs, tools)
    ratios, targets = ratios_and_targets(med)
    report = {
        "config": {"started": started, "mib": args.mib, "runs": args.runs, "seed": args.seed, "tools": tools,
                   "cache": cache_note, "cache_dropped": caches, "quiet": quiet, "installed_now": installed,
                   "source_bytes": source_bytes, "machine": machine_info(), "versions": versions,
                   "cluster": "coffer dev: 1 metadata node, 3 sites x 2 storage nodes, 4+2, one process",
                   "transport": "plain text (--insecure)" if args.insecure else "mutual TLS (rustls, ring)",
                   "settings": {"restic": "repository v2 defaults (compression auto), local repo",
                                "borg": "borg init -e repokey, default compression (lz4), local repo",
                                "cp": "cp -a per backup (full copy each time)",
                                "tar": "tar -cf - | zstd -1 per backup (full archive each time)"}},
        "runs": runs,
        "medians": med,
        "ratios": ratios,
        "targets": targets,
    }
    md = render(report)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md)
    print(md)
    log("wrote %s and %s" % (os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.json")))


if __name__ == "__main__":
    main()
