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
is stopped. Every restore is compared with the source, entry by entry:
type, symlink target, size and content (`verify_tree`, which also sees
empty files, empty directories and sparse files' content).

Besides the main sequence, each run measures (unless `--skip` leaves them
out), in the same order for every run:

    growth    the bytes each tool's second backup added to its repository,
              for the dump-heavy and the image-heavy part of the dataset
              backed up separately (gen_dataset.PARTS), beside the ideal:
              each changed file's `zstd -19 --long=27 --patch-from=OLD NEW`
              and each new file's `zstd -19`, summed per part;
    degraded  coffer's full restore with one whole site stopped
              (`coffer dev-site stop site-c`: its storage nodes stop serving);
    parallel  four coffer agents backing up four sources at once into one
              cluster, against four restic processes into four repositories;
    rebuild   one storage node of a 3 x 3 cluster lost (its site stopped, its
              directory wiped, the site started again: the node comes back
              empty under a new id), MB written by the rebuild over the
              incident's rebuild time, beside this disk's sequential write
              speed (1 GiB written and fsynced by Python) in the same run.

Every run also measures this disk's sequential write speed (1 GiB written
and fsynced by Python; the rebuild row's measurement when it runs). The
next-day tree's bytes over that speed is a floor on a restore's time when
every tool's restore takes at least that long; the report then gives the
floor (`restore_floor` in report.json) and the largest restore speedup it
allows against the faster peer: on a slow disk the restore targets may be
out of any tool's reach. When some tool restores faster (a restore writes
many files at once, the probe one stream), the probe bounds nothing and
the report says so (`binding` false).

Output: a table on stdout, and target/bench/report.md and report.json with
every measurement, the medians over runs with their min-max spread, the
ratios and the target verdicts (issue 6's and issue 17's). With `--seeds`,
one such report per dataset under OUT/<label>/ and a combined verdict in
OUT/verdict.md and verdict.json: a target is met only if met on every
dataset.

Stdlib only. Installs restic, borgbackup, zstd and time with apt-get when a
command is missing.
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_dataset  # noqa: E402  (the one place that knows the dataset's parts)

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


# ---------------------------------------------------------------- trash

class Trash:
    """Trees the bench is done with, put aside until the end instead of
    deleted between measured steps.

    On ext4 without a journal (the development VM's root filesystem), the
    kernel checks each free inode it is about to allocate against the time
    its previous owner was deleted, and passes over those deleted in the
    last minute (six while their inode-table block is dirty) one by one
    (`recently_deleted` in `find_inode_bit`). A restore that creates 12,000
    files soon after a tree of the same size was deleted spends 0.8-1.2
    CPU-seconds in that scan, whatever the tool: measured there, coffer's
    restore took 2.09-2.73 s right after the previous restore was deleted
    and 1.58-1.77 s with nothing deleted in the last minutes, restic's
    3.35-3.57 s against 2.78-3.15 s. The bench's own clean-up is not the
    tools' work, and a fixed cost weighs most on the tool that is fastest.
    A retired tree is renamed beside itself and its files truncated (their
    blocks are freed, their inodes kept, so the disk does not fill up);
    everything retired is deleted once, by `empty`, when the bench ends."""

    def __init__(self):
        self.paths = []
        self.count = 0

    def retire(self, path):
        """Puts `path` (a tree or a file) aside; nothing if it is absent."""
        if not os.path.lexists(path):
            return
        path = os.path.abspath(path)
        while True:
            self.count += 1
            dest = "%s.retired-%d" % (path, self.count)
            if not os.path.lexists(dest):
                break
        try:
            os.rename(path, dest)
        except OSError:
            rmtree_any(path)
            return
        # Trees retired earlier inside this one go with it.
        self.paths = [p for p in self.paths if not p.startswith(path + os.sep)]
        self.paths.append(dest)
        truncate_tree(dest)

    def empty(self):
        """Deletes everything retired so far."""
        for p in self.paths:
            rmtree_any(p)
        self.paths = []


def rmtree_any(path):
    """Deletes a tree, a file or a symlink; whatever cannot be is left."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except OSError:
            pass


def truncate_tree(path):
    """Truncates every regular file under `path` to nothing (a file whose
    mode forbids writing is made writable first); returns how many could
    not be. Symlinks are never followed."""
    failed = 0
    files = [path] if not os.path.isdir(path) or os.path.islink(path) else (
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    for p in files:
        try:
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            try:
                os.truncate(p, 0)
            except PermissionError:
                os.chmod(p, 0o600)
                os.truncate(p, 0)
        except OSError:
            failed += 1
    return failed


TRASH = Trash()
CLEANUP_NOTE = ("Trees the bench is done with (sources, restores, repositories, clusters) are renamed aside with "
                "their files truncated and deleted only when the bench ends, not between steps: on ext4 without "
                "a journal, files created within minutes of a deletion are allocated past the deleted inodes one "
                "by one, about a CPU-second per 12,000-file restore for every tool")


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
    if max_wait <= 0:
        return 0.0
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


def same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def verify_tree(src, dst, limit=20):
    """Compares a restored tree with its source, entry by entry: the same
    names, the same type (directory, regular file, symlink), the same
    symlink targets (not followed), and for regular files the same size and
    bytes (a sparse file's holes read as zeros on both sides). Returns a
    list of differences, at most `limit`; empty when the trees match.
    Permission bits are compared separately (`mode_differences`), as a
    note, since not every tool restores them the same way."""
    out = []

    def note(msg):
        if len(out) < limit:
            out.append(msg)

    def kind(st):
        return "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else \
            "file" if stat.S_ISREG(st.st_mode) else "other"

    if not os.path.isdir(dst) or os.path.islink(dst):
        return ["%s: no restored directory" % dst]
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        rd = os.path.normpath(os.path.join(dst, rel))
        try:
            theirs = set(os.listdir(rd))
        except OSError as e:
            note("%s: %s" % (rel, e))
            dirs[:] = []
            continue
        ours = set(dirs) | set(files)
        for name in sorted(theirs - ours):
            note("only in the restore: %s" % os.path.join(rel, name))
        for name in sorted(ours - theirs):
            note("missing from the restore: %s" % os.path.join(rel, name))
        for name in sorted(ours & theirs):
            a, b = os.path.join(d, name), os.path.join(rd, name)
            sa, sb = os.lstat(a), os.lstat(b)
            ka, kb = kind(sa), kind(sb)
            r = os.path.join(rel, name)
            if ka != kb:
                note("%s: %s in the source, %s in the restore" % (r, ka, kb))
            elif ka == "symlink" and os.readlink(a) != os.readlink(b):
                note("%s: symlink to %r, restored to %r" % (r, os.readlink(a), os.readlink(b)))
            elif ka == "file" and (sa.st_size != sb.st_size or not same_content(a, b)):
                note("%s: content differs (%d vs %d bytes)" % (r, sa.st_size, sb.st_size))
        # os.walk lists symlinks to directories among dirs; do not descend.
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x)) and x in theirs]
    return out


def mode_differences(src, dst, limit=5):
    """Entries whose permission bits differ between source and restore."""
    out = []
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        for name in dirs + files:
            a, b = os.path.join(d, name), os.path.normpath(os.path.join(dst, rel, name))
            try:
                sa, sb = os.lstat(a), os.lstat(b)
            except OSError:
                continue
            if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
                out.append("%s: %o vs %o" % (os.path.join(rel, name), stat.S_IMODE(sa.st_mode),
                                             stat.S_IMODE(sb.st_mode)))
                if len(out) >= limit:
                    return out
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
    return out


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


def start_dev(binary, data, log, env, args, nodes_up, timeout=60):
    """Starts `coffer dev --data DATA` (plus `args`) with its output in
    `log`, loads the variables it writes to DATA/env into `env`, and waits
    until its status reports `nodes_up` storage nodes up. Returns the
    process; raises StepFailed if it exits or the wait runs out."""
    proc = subprocess.Popen([binary, "dev", "--data", data, "--listen", "127.0.0.1:0"] + args,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    envfile = os.path.join(data, "env")
    deadline = time.monotonic() + timeout
    while not os.path.exists(envfile):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StepFailed("coffer dev did not start; see %s" % log.name)
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written in one call; let it land
    with open(envfile) as f:
        for line in f:
            line = line.strip()
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export "):].split("=", 1)
                env[k] = v
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([binary, "status", "--json"], env=env, capture_output=True, text=True)
        if out.returncode == 0:
            try:
                status = json.loads(out.stdout.strip().splitlines()[-1])
                if sum(1 for n in status.get("nodes", []) if n.get("state") == "up") >= nodes_up:
                    return proc
            except (ValueError, IndexError):
                pass
        if time.monotonic() > deadline:
            raise StepFailed("coffer cluster did not report %d storage nodes up" % nodes_up)
        time.sleep(0.2)


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

    def repo_bytes(self):
        """Bytes the repository holds now, counted as `stored` counts them:
        the second backup's growth is this after it minus this before."""
        return self.stored()["bytes"]

    def teardown(self):
        pass

    def run(self, script, stdout_path=None, cwd=None):
        return measure(script, self.env, cwd or self.home, self.tmp, stdout_path, self.cluster_pid())

    def cluster_pid(self):
        """The server process whose CPU counts too, if the tool has one."""
        return None


class Coffer(Tool):
    name = "coffer"

    def __init__(self, home, src, tmp, binary, insecure=False, nodes_per_site=2):
        super().__init__(home, src, tmp)
        self.bin = binary
        self.insecure = insecure
        self.nodes_per_site = nodes_per_site
        self.data = os.path.join(home, "cluster")
        self.proc = None
        self.summaries = []

    def setup(self):
        self.log = open(os.path.join(self.home, "dev.log"), "w")
        # Mutual TLS on every hop unless --insecure (then plain text).
        transport = ["--insecure"] if self.insecure else []
        self.proc = start_dev(self.bin, self.data, self.log, self.env,
                              ["--nodes-per-site", str(self.nodes_per_site)] + transport, 3 * self.nodes_per_site)
        self.env.update(COFFER_REPO="bench", COFFER_PASSWORD=PASSWORD)
        subprocess.run([self.bin, "repo", "create", "bench"], env=self.env, check=True, capture_output=True)

    def cluster_pid(self):
        return self.proc.pid if self.proc is not None else None

    def status(self):
        out = subprocess.run([self.bin, "status", "--json"], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    def create_repo(self, name):
        subprocess.run([self.bin, "repo", "create", name], env=self.env, check=True, capture_output=True)

    def site_control(self, action, site):
        """`coffer dev-site ACTION SITE`: the dev process stops (or starts
        again) every node of the site; it answers once they are shut down."""
        out = subprocess.run([self.bin, "dev-site", "--data", self.data, action, site], env=self.env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise StepFailed("coffer dev-site %s %s: %s" % (action, site, (out.stdout + out.stderr)[-500:]))

    def wait_site_not_up(self, site, timeout=60):
        """Waits until the metadata leader no longer counts any node of the
        site as up (suspect after a few missed heartbeats), so that the
        degraded restore is measured in the state a site loss leaves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None:
                nodes = [n for n in st.get("nodes", []) if n.get("site") == site]
                if nodes and all(n.get("state") != "up" for n in nodes):
                    return time.monotonic()
            time.sleep(0.5)
        raise StepFailed("the nodes of %s still count as up %ds after it was stopped" % (site, timeout))

    def restore_degraded(self, dest, site="site-c"):
        """A full restore with one whole site stopped: k of the k + m shards
        of every pack remain, and the restore must read through parity."""
        self.site_control("stop", site)
        self.wait_site_not_up(site)
        out = os.path.join(self.home, "restore-degraded.json")
        cmd = "%s restore latest %s --json" % (shlex.quote(self.bin), shlex.quote(dest))
        m = self.run(cmd, stdout_path=out)
        m["summary"] = last_json_line(out)
        m["site_stopped"] = site
        return m, dest

    def repo_bytes(self):
        return sum(s["bytes_stored"] for s in self.summaries)

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
        return {"bytes": sum(os.path.getsize(self.archive(n)) for n in (1, 2) if os.path.exists(self.archive(n)))}


# ---------------------------------------------------------------- one run

def mutate_tree(path, seed):
    subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py"), "--mutate", path, str(seed)], check=True)


def check_restore(tool, src, root, result, key="verified"):
    """Compares the restore with the source; records the verdict under key."""
    diffs = verify_tree(src, root)
    result[key] = not diffs
    if diffs:
        result[key + "_output"] = "\n".join(diffs)
        log("%s: restore differs from the source:\n%s" % (tool.name, "\n".join(diffs[:10])))
    modes = mode_differences(src, root)
    if modes:
        result.setdefault("mode_differences", {})[key] = modes


def run_tool(tool, base, src, restore_dir, seed, caches, source_bytes, degraded=False):
    """First backup, mutation, second backup, restore, verification; for
    coffer with `degraded`, a second full restore with one site stopped."""
    result = {"steps": {}}
    TRASH.retire(src)
    subprocess.run(["cp", "-a", base, src], check=True)
    try:
        tool.setup()
        result["steps"]["backup1"] = tool.backup(1)
        before = tool.repo_bytes()
        mutate_tree(src, seed)
        if "mutated" not in source_bytes:
            source_bytes["mutated"] = tree_bytes(src)
        result["steps"]["backup2"] = tool.backup(2)
        result["growth_bytes"] = tool.repo_bytes() - before
        result["stored"] = tool.stored()
        TRASH.retire(restore_dir)
        m, root = tool.restore(restore_dir)
        result["steps"]["restore"] = m
        check_restore(tool, src, root, result)
        if degraded and isinstance(tool, Coffer):
            TRASH.retire(restore_dir)
            m, root = tool.restore_degraded(restore_dir)
            result["steps"]["restore_degraded"] = m
            check_restore(tool, src, root, result, "verified_degraded")
    except (StepFailed, subprocess.CalledProcessError) as e:
        result["error"] = str(e)
        log("%s failed: %s" % (tool.name, e))
    finally:
        tool.teardown()
        result["extra"] = tool.extra
    sizes = {"backup1": source_bytes["base"], "backup2": source_bytes.get("mutated"),
             "restore": source_bytes.get("mutated"), "restore_degraded": source_bytes.get("mutated")}
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


# ---------------------------------------------------------------- extra rows

class NoQuiet:
    """Within it, steps start at once and on a warm cache: for the phases
    that measure bytes, not time (the growth backups)."""

    def __enter__(self):
        self.saved = dict(QUIET)
        QUIET.update(max_wait=0.0, drop=False)

    def __exit__(self, *exc):
        QUIET.update(self.saved)


def run_growth(name, work, base, seed, tmp, coffer_bin, insecure):
    """The bytes a tool's second backup adds to its repository, per part
    of the dataset (gen_dataset.GROWTH_PARTS): each part's directory is
    backed up into a fresh repository of its own, the whole tree is
    mutated, and the part is backed up again."""
    gsrc = os.path.join(work, "gsrc")
    TRASH.retire(gsrc)
    subprocess.run(["cp", "-a", base, gsrc], check=True)
    tools, result = {}, {"parts": {}}
    try:
        with NoQuiet():
            for part in gen_dataset.GROWTH_PARTS:
                home = os.path.join(work, "growth-%s-%s" % (name, part))
                tool = make_tool(name, home, os.path.join(gsrc, gen_dataset.PARTS[part]), tmp, coffer_bin, insecure)
                tools[part] = tool
                tool.setup()
                tool.backup(1)
            before = {p: t.repo_bytes() for p, t in tools.items()}
            mutate_tree(gsrc, seed)
            for p, t in tools.items():
                t.backup(2)
                result["parts"][p] = t.repo_bytes() - before[p]
    except (StepFailed, subprocess.CalledProcessError) as e:
        result["error"] = str(e)
        log("growth %s failed: %s" % (name, e))
    finally:
        for p, t in tools.items():
            t.teardown()
            TRASH.retire(t.home)
        TRASH.retire(gsrc)
    return result


def zstd_size(args):
    """Bytes of `zstd -c ARGS` (the compressed stream is counted, not kept)."""
    proc = subprocess.Popen(["zstd", "-q", "-c"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    n = 0
    with proc.stdout:
        while True:
            block = proc.stdout.read(1 << 20)
            if not block:
                break
            n += len(block)
    if proc.wait() != 0:
        raise StepFailed("zstd %s failed" % " ".join(args))
    return n


def ideal_growth(day0, day1, compress=zstd_size):
    """The ideal bytes a second backup adds, per part of the dataset: for
    every regular file of day1 that differs from the same path in day0,
    `zstd -19 --long=27 --patch-from=OLD NEW` (zstd widens the window to
    the reference's size for --patch-from, so the whole old version is in
    reach); for every new file, `zstd -19`; unchanged and deleted files add
    nothing. Symlinks, directories and metadata are not counted."""
    parts = {}
    for d, dirs, files in os.walk(day1):
        for name in files:
            new = os.path.join(d, name)
            if os.path.islink(new):
                continue
            rel = os.path.relpath(new, day1)
            old = os.path.join(day0, rel)
            e = parts.setdefault(gen_dataset.part_of(rel), {"bytes": 0, "changed_files": 0, "new_files": 0,
                                                            "changed_source_bytes": 0, "new_source_bytes": 0})
            size = os.path.getsize(new)
            if os.path.isfile(old) and not os.path.islink(old):
                if os.path.getsize(old) == size and same_content(old, new):
                    continue
                e["bytes"] += compress(["-19", "--long=27", "--patch-from=" + old, new])
                e["changed_files"] += 1
                e["changed_source_bytes"] += size
            else:
                e["bytes"] += compress(["-19", new])
                e["new_files"] += 1
                e["new_source_bytes"] += size
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
    total = {k: sum(p[k] for p in parts.values()) for k in ("bytes", "changed_files", "new_files",
                                                            "changed_source_bytes", "new_source_bytes")}
    return {"parts": parts, "total": total}


def cached_ideal(cache_dir, work, base, seed, mib, edge):
    """ideal_growth of this dataset, cached by everything that determines
    it (the generator's source, seed, size, edge cases): zstd -19 over the
    changed files takes minutes, and the answer never changes."""
    with open(os.path.join(HERE, "gen_dataset.py"), "rb") as f:
        key = hashlib.sha256(f.read() + ("|%s|%d|%s|%s" % (seed, mib, edge, first_line(["zstd", "--version"])))
                             .encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, "ideal-%s.json" % key)
    if os.path.exists(path):
        with open(path) as f:
            log("ideal growth from the cache %s" % path)
            return json.load(f)
    day1 = os.path.join(work, "day1")
    TRASH.retire(day1)
    subprocess.run(["cp", "-a", base, day1], check=True)
    mutate_tree(day1, seed)
    log("computing the ideal growth (zstd -19 --patch-from over the changed files)")
    t0 = time.monotonic()
    ideal = ideal_growth(base, day1)
    ideal["seconds"] = time.monotonic() - t0
    TRASH.retire(day1)
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(ideal, f, indent=2)
    return ideal


def run_parallel(name, work, srcs, tmp, coffer_bin, insecure, total_bytes):
    """Four backups at once, each of its own source: coffer's into four
    repositories of one cluster, restic's into four repositories. One
    measured step: from the start of the first to the end of the last."""
    home = os.path.join(work, "par-%s" % name)
    os.makedirs(home, exist_ok=True)
    tool = None
    result = {}
    try:
        if name == "coffer":
            tool = Coffer(home, None, tmp, coffer_bin, insecure)
            tool.setup()
            cmds = []
            for i, src in enumerate(srcs):
                tool.create_repo("agent%d" % i)
                cmds.append("COFFER_REPO=agent%d %s backup %s --json > %s" % (
                    i, shlex.quote(coffer_bin), shlex.quote(src), shlex.quote(os.path.join(home, "out%d" % i))))
            env, pid = tool.env, tool.cluster_pid()
        else:
            env = dict(os.environ, RESTIC_PASSWORD=PASSWORD)
            cmds = []
            for i, src in enumerate(srcs):
                repo, cache = os.path.join(home, "repo%d" % i), os.path.join(home, "cache%d" % i)
                subprocess.run(["restic", "init"], env=dict(env, RESTIC_REPOSITORY=repo), check=True,
                               capture_output=True)
                cmds.append("RESTIC_REPOSITORY=%s RESTIC_CACHE_DIR=%s restic backup --json %s > %s" % (
                    shlex.quote(repo), shlex.quote(cache), shlex.quote(src),
                    shlex.quote(os.path.join(home, "out%d" % i))))
            pid = None
        # Every backup in the background, then a wait on each, so that a
        # failure of any of them fails the step (`set -e`).
        script = "; ".join("%s & p%d=$!" % (c, i) for i, c in enumerate(cmds)) + "; " + \
            "; ".join("wait $p%d" % i for i in range(len(cmds)))
        m = measure(script, env, home, tmp, None, pid)
        m["mib_s"] = total_bytes / MIB / m["wall_s"]
        m["other_cpu_s"] = max(0.0, m["machine_busy_s"] - m["cpu_s"] - m.get("cluster_cpu_s", 0.0))
        result["step"] = m
    except (StepFailed, subprocess.CalledProcessError) as e:
        result["error"] = str(e)
        log("parallel %s failed: %s" % (name, e))
    finally:
        if tool is not None:
            tool.teardown()
        TRASH.retire(home)
    return result


def disk_write_speed(directory, nbytes):
    """This disk's sequential write speed: nbytes of random data written in
    8 MiB blocks to a new file and fsynced, timed to the end of the fsync."""
    buf = os.urandom(8 * MIB)
    path = os.path.join(directory, "disk-speed.tmp")
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, buf[:min(left, len(buf))])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.monotonic() - t0
    os.unlink(path)
    return {"bytes": nbytes, "seconds": seconds, "mb_s": nbytes / 1e6 / seconds}


def incidents(tool):
    out = subprocess.run([tool.bin, "incidents", "--json"], env=tool.env, capture_output=True, text=True)
    if out.returncode != 0:
        return []
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return []


def fully_redundant(status):
    """Every pack has all its shards on up nodes and the rebuild queue is
    empty (the condition the cluster tests wait on after a node loss)."""
    if not status:
        return False
    p, r = status.get("packs") or {}, status.get("rebuild") or {}
    return (p.get("healthy", 0) > 0 and p.get("degraded", 1) + p.get("at_risk", 1) + p.get("lost", 1) == 0
            and r.get("queued", 1) == 0 and r.get("in_flight", 1) == 0)


def run_rebuild(work, base, tmp, coffer_bin, insecure, disk_bytes, timeout):
    """One lost storage node and its rebuild, beside the disk's own write
    speed. The cluster is 3 sites x 3 nodes (with 2 per site, a 4+2 pack
    already uses every node and a lost node's shards have nowhere to go).
    The day-0 tree is backed up, then site-c is stopped, the directory of
    its fullest node wiped (only its recorded port is kept) and the site
    started again: that node comes back empty, under a new id, and the old
    id is lost. The rate is the incident's bytes written over its rebuild
    time (from the first rebuild work to the last shard placed)."""
    result = {"disk": disk_write_speed(work, disk_bytes)}
    home = os.path.join(work, "rebuild")
    os.makedirs(home, exist_ok=True)
    tool = Coffer(home, base, tmp, coffer_bin, insecure, nodes_per_site=3)
    try:
        tool.setup()
        with NoQuiet():
            tool.backup(1)
        deadline = time.monotonic() + 120
        while not fully_redundant(tool.status()):
            if time.monotonic() > deadline:
                raise StepFailed("the rebuild cluster was not healthy after the backup")
            time.sleep(0.5)
        # The victim is the node of site-c holding the most bytes, by the
        # nodes' own count; heartbeats carry it, so wait until the nodes
        # together report the shard bytes the backup wrote.
        want = tool.summaries[-1].get("bytes_stored_raw", 0) * 0.9
        deadline = time.monotonic() + 30
        while True:
            nodes = (tool.status() or {}).get("nodes", [])
            if sum(int(n.get("used_bytes") or 0) for n in nodes) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        site_c = [n for n in nodes if n.get("site") == "site-c"]
        if not site_c:
            raise StepFailed("no node of site-c in the status")
        target = max(site_c, key=lambda n: int(n.get("used_bytes") or 0))
        victim = target["id"]
        victim_dir = None
        for i in range(tool.nodes_per_site):
            d = os.path.join(tool.data, "storage", "site-c-%d" % i)
            with open(os.path.join(d, "dev-addr")) as f:
                if f.read().strip() == target.get("addr"):
                    victim_dir = d
        if victim_dir is None:
            raise StepFailed("no directory of site-c serves %s" % target.get("addr"))
        result["victim"] = {"id": victim, "dir": os.path.basename(victim_dir), "used_bytes": target.get("used_bytes")}
        tool.site_control("stop", "site-c")
        # Wiped: everything but the address file moved out (and put aside,
        # see Trash), so the node starts on an empty directory.
        wiped = victim_dir + ".wiped"
        os.makedirs(wiped)
        for entry in os.listdir(victim_dir):
            if entry != "dev-addr":
                os.rename(os.path.join(victim_dir, entry), os.path.join(wiped, entry))
        TRASH.retire(wiped)
        tool.site_control("start", "site-c")
        t0, cpu0 = time.monotonic(), proc_cpu_s(tool.cluster_pid())
        deadline = t0 + timeout
        while True:
            inc = [i for i in incidents(tool) if i.get("node") == victim]
            if inc and inc[-1].get("state") == "closed" and fully_redundant(tool.status()):
                break
            if time.monotonic() > deadline:
                raise StepFailed("no full redundancy %ds after the loss of node %s" % (timeout, victim))
            time.sleep(0.5)
        inc = inc[-1]
        result.update(wall_from_loss_s=time.monotonic() - t0, cluster_cpu_s=proc_cpu_s(tool.cluster_pid()) - cpu0,
                      incident=inc, bytes_written=inc.get("bytes_written"), rebuild_s=inc.get("rebuild_s"),
                      detection_s=inc.get("detection_s"))
        if inc.get("rebuild_s") and inc.get("bytes_written"):
            result["mb_s"] = inc["bytes_written"] / 1e6 / inc["rebuild_s"]
            result["ratio_to_disk"] = result["mb_s"] / result["disk"]["mb_s"]
    except (StepFailed, subprocess.CalledProcessError, OSError) as e:
        result["error"] = str(e)
        log("rebuild failed: %s" % e)
    finally:
        tool.teardown()
        TRASH.retire(home)
    return result


# ---------------------------------------------------------------- summary

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    """[min, max] of the values that are there; None when none is."""
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def stat3(values):
    """Median, min-max spread and count of the values that are there."""
    values = [v for v in values if v is not None]
    return {"median": median(values), "spread": spread(values), "n": len(values)}


STEP_KEYS = ("wall_s", "mib_s", "cpu_s", "user_s", "sys_s", "rss_mib", "cluster_cpu_s", "other_cpu_s", "quiet_wait_s")


def summarise(runs, tools):
    med = {}
    for t in tools:
        ok = [r[t] for r in runs if t in r and "error" not in r[t]]
        entry = {"runs_ok": len(ok), "spread": {}}
        for step in STEPS + ["restore_degraded"]:
            ms = [r["steps"][step] for r in ok if step in r["steps"]]
            if step not in STEPS and not ms:
                continue
            entry[step] = {k: median([m.get(k) for m in ms]) for k in STEP_KEYS}
            entry["spread"][step] = {k: spread([m.get(k) for m in ms]) for k in STEP_KEYS}
        entry["stored_bytes"] = median([r["stored"]["bytes"] for r in ok if "stored" in r])
        entry["spread"]["stored_bytes"] = spread([r["stored"]["bytes"] for r in ok if "stored" in r])
        entry["growth_bytes"] = median([r.get("growth_bytes") for r in ok])
        entry["spread"]["growth_bytes"] = spread([r.get("growth_bytes") for r in ok])
        if any("restore_degraded" in r["steps"] for r in ok):
            entry["verified_degraded"] = all(r.get("verified_degraded") for r in ok if "restore_degraded" in r["steps"])
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


def summarise_extras(extra_runs):
    """Medians and spreads of the extra rows over the runs that made them."""
    x = {"growth": {}, "parallel": {}, "rebuild": None,
         "disk_mb_s": stat3([e["disk"]["mb_s"] for e in extra_runs if e.get("disk")])}
    tools = sorted({t for e in extra_runs for t in e.get("growth", {})})
    for t in tools:
        rs = [e["growth"][t] for e in extra_runs if t in e.get("growth", {}) and "error" not in e["growth"][t]]
        x["growth"][t] = {p: stat3([r["parts"].get(p) for r in rs]) for p in gen_dataset.GROWTH_PARTS}
    for t in sorted({t for e in extra_runs for t in e.get("parallel", {})}):
        ms = [e["parallel"][t]["step"] for e in extra_runs if "step" in e.get("parallel", {}).get(t, {})]
        x["parallel"][t] = {k: stat3([m.get(k) for m in ms]) for k in ("wall_s", "mib_s", "cpu_s", "cluster_cpu_s",
                                                                       "rss_mib", "other_cpu_s")}
    rb = [e["rebuild"] for e in extra_runs if e.get("rebuild")]
    if rb:
        ok = [r for r in rb if "error" not in r]
        x["rebuild"] = {k: stat3([r.get(k) for r in ok]) for k in ("mb_s", "ratio_to_disk", "bytes_written",
                                                                   "rebuild_s", "detection_s", "wall_from_loss_s",
                                                                   "cluster_cpu_s")}
        x["rebuild"]["disk_mb_s"] = stat3([r["disk"]["mb_s"] for r in rb])
        x["rebuild"]["runs_failed"] = len(rb) - len(ok)
    return x


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def ratios_and_targets(med, runs=(), xmed=None, extra_runs=(), ideal=None, source_bytes=None):
    """The ratios against every other tool, and the target rows of issue 6
    and issue 17. A target's `value` comes from the medians; its `spread`
    is the min-max of the same figure computed run by run (a run's coffer
    against the same run's peers: the runs are interleaved, so a run's
    figures share the machine's state)."""
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
            "growth_ratio": ratio(c.get("growth_bytes"), e.get("growth_bytes")),
        }
    targets = []
    if c is None:
        return ratios, targets
    xmed = xmed or {"growth": {}, "parallel": {}, "rebuild": None}

    def ok(run, t):
        return run.get(t) if t in run and "error" not in run[t] else None

    def step_wall(run, t, step):
        r = ok(run, t)
        return r["steps"][step]["wall_s"] if r and step in r["steps"] else None

    def faster(step):
        cands = [(med[t][step]["wall_s"], t) for t in ("restic", "borg") if t in med and med[t][step]["wall_s"]]
        return min(cands) if cands else (None, None)

    def faster_in(run, step):
        cands = [w for w in (step_wall(run, t, step) for t in ("restic", "borg")) if w]
        return min(cands) if cands else None

    def row(issue, text, against, value, unit, op, need, per_run):
        met = None if op is None else value is not None and {"ge": value >= need, "le": value <= need,
                                                               "lt": value < need}[op]
        required = "(none stated)" if op is None else "%s %s" % ({"ge": ">=", "le": "<=", "lt": "<"}[op],
                                                                ("%g" % need))
        targets.append({"target": text, "issue": issue, "against": against, "value": value, "unit": unit,
                        "required": required, "met": met, "spread": spread(per_run),
                        "per_run": list(per_run)})

    # Issue 6 (issue 10 refers to these rows: keep them as they are).
    for step, need, text in (("backup1", 2.0, "first backup >= 2x the faster of restic and borg"),
                             ("backup2", 2.0, "second backup <= half the time of the faster of restic and borg"),
                             ("restore", 2.0, "full restore >= 2x the faster of restic and borg")):
        wall, who = faster(step)
        row(6, text, who, ratio(wall, c[step]["wall_s"]), "x (their time / coffer's)", "ge", need,
            [ratio(faster_in(r, step), step_wall(r, "coffer", step)) for r in runs])
    rm = med.get("restic")

    def stored_in(run, t):
        r = ok(run, t)
        return r["stored"]["bytes"] if r and "stored" in r else None

    stored_runs = [ratio(stored_in(r, "coffer"), stored_in(r, "restic")) for r in runs]
    stored_value = ratio(c["stored_bytes"], rm["stored_bytes"]) if rm else None
    row(6, "bytes stored before erasure coding <= restic's", "restic", stored_value, "x (coffer / restic)", "le", 1.0,
        stored_runs)
    rss_runs = [max([m["rss_mib"] for m in ok(r, "coffer")["steps"].values()], default=None)
                if ok(r, "coffer") else None for r in runs]
    rss = c.get("agent_peak_rss_mib_max")
    row(6, "agent peak RSS < 512 MiB", None, rss, "MiB (max of all steps and runs)", "lt", 512, rss_runs)

    # Issue 17.
    gib = (source_bytes or {}).get("base", 0) / (1 << 30)

    def cpu_in(run):
        r = ok(run, "coffer")
        if not r or "backup1" not in r["steps"]:
            return None
        m = r["steps"]["backup1"]
        return m["cpu_s"] + (m.get("cluster_cpu_s") or 0)

    row(17, "agent + cluster CPU per GiB of first backup <= 3.5 s", None,
        ratio(cpu_total(c, "backup1"), gib), "CPU-s per GiB of day-0 source", "le", 3.5,
        [ratio(cpu_in(r), gib) for r in runs])
    for step, need, text in (("backup1", 2.5, "first backup >= 2.5x the faster of restic and borg"),
                             ("restore", 2.5, "full restore >= 2.5x the faster of restic and borg")):
        wall, who = faster(step)
        row(17, text, who, ratio(wall, c[step]["wall_s"]), "x (their time / coffer's)", "ge", need,
            [ratio(faster_in(r, step), step_wall(r, "coffer", step)) for r in runs])
    wall, who = faster("backup2")
    row(17, "incremental (second backup) <= 0.4x the faster one's time", who, ratio(c["backup2"]["wall_s"], wall),
        "x (coffer's time / theirs)", "le", 0.4,
        [ratio(step_wall(r, "coffer", "backup2"), faster_in(r, "backup2")) for r in runs])
    row(17, "bytes stored before erasure coding <= restic's", "restic", stored_value, "x (coffer / restic)", "le",
        1.0, stored_runs)
    row(17, "agent peak RSS < 512 MiB", None, rss, "MiB (max of all steps and runs)", "lt", 512, rss_runs)
    growth = xmed.get("growth", {})
    for part in gen_dataset.GROWTH_PARTS:
        cg = growth.get("coffer", {}).get(part, {}).get("median")
        rg = growth.get("restic", {}).get(part, {}).get("median")

        def g_in(e, t, part=part):
            g = e.get("growth", {}).get(t)
            return g["parts"].get(part) if g and "error" not in g else None

        row(17, "incremental growth, %s part: <= half of restic's" % part, "restic", ratio(cg, rg),
            "x (coffer's bytes added / restic's)", "le", 0.5,
            [ratio(g_in(e, "coffer"), g_in(e, "restic")) for e in extra_runs])
        ib = ((ideal or {}).get("parts", {}).get(part) or {}).get("bytes")
        row(17, "incremental growth, %s part: <= 3x the ideal" % part, "zstd --patch-from", ratio(cg, ib),
            "x (coffer's bytes added / ideal)", "le", 3.0, [ratio(g_in(e, "coffer"), ib) for e in extra_runs])
    if "restore_degraded" in c:
        wall, who = faster("restore")
        row(17, "full restore with one site stopped >= 1.5x the faster peer's healthy restore", who,
            ratio(wall, c["restore_degraded"]["wall_s"]), "x (their healthy time / coffer's degraded)", "ge", 1.5,
            [ratio(faster_in(r, "restore"), step_wall(r, "coffer", "restore_degraded")) for r in runs])
    rb = xmed.get("rebuild")
    if rb:
        row(17, "rebuild of one lost node >= 50% of the disk's sequential write speed", "disk (same run)",
            rb["ratio_to_disk"]["median"], "x (rebuild MB/s / disk MB/s)", "ge", 0.5,
            [e["rebuild"].get("ratio_to_disk") for e in extra_runs if e.get("rebuild")])
    par = xmed.get("parallel", {})
    if "coffer" in par and "restic" in par:

        def p_in(e, t):
            return e.get("parallel", {}).get(t, {}).get("step", {}).get("mib_s")

        row(17, "four agents at once: aggregate MiB/s against four restic processes", "restic x4",
            ratio(par["coffer"]["mib_s"]["median"], par["restic"]["mib_s"]["median"]),
            "x (coffer's MiB/s / restic's)", None, None, [ratio(p_in(e, "coffer"), p_in(e, "restic"))
                                                         for e in extra_runs])
    # A restore that differs from the source makes every figure of that
    # backup moot (a backup that skipped a change is fast and small): the
    # verification is a target of its own, and while it fails no target of
    # this dataset counts as met.
    checked = [r["coffer"] for r in runs if ok(r, "coffer")]
    good = [bool(r.get("verified")) and r.get("verified_degraded", True) is not False for r in checked]
    verified = bool(checked) and all(good)
    row(17, "every coffer restore identical to the source (healthy and with a site stopped)", None,
        float(sum(good)), "restores verified, of %d run(s)" % len(checked), "ge", float(len(checked) or 1),
        [1.0 if g else 0.0 for g in good])
    if not verified:
        for t in targets:
            if t["met"]:
                t["met"] = False
                t["note"] = "coffer's restore differed from the source in some run"
    return ratios, targets


def combine_verdicts(reports):
    """One verdict over several datasets: [(label, report)] -> rows. A
    target is met only if it is met on every dataset; a target missing
    from a dataset (its row failed to run) is not met."""
    rows, order = {}, []
    for label, rep in reports:
        for t in rep["targets"]:
            key = (t.get("issue"), t["target"])
            if key not in rows:
                rows[key] = {"target": t["target"], "issue": t.get("issue"), "required": t["required"],
                             "unit": t["unit"], "datasets": {}}
                order.append(key)
            rows[key]["datasets"][label] = {"value": t["value"], "spread": t.get("spread"), "met": t["met"],
                                            "against": t["against"], "note": t.get("note")}
    labels = [label for label, _ in reports]
    out = []
    for key in order:
        r = rows[key]
        mets = [r["datasets"].get(label, {"met": False})["met"] if label in r["datasets"] else False
                for label in labels]
        if all(m is None for m in mets):
            r["met"] = None
        else:
            r["met"] = all(m is True for m in mets)
        r["missing"] = [label for label in labels if label not in r["datasets"]]
        out.append(r)
    return out


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


def fmt_spread(sp, spec="%.2f", none=""):
    """" (min-max)" of a spread, or `none` when there is none."""
    if not sp or sp[0] is None:
        return none
    return " (%s-%s)" % (spec % sp[0], spec % sp[1])


def verdict_word(met):
    return "reported" if met is None else "met" if met else "NOT MET"


def fmt_stat(st, scale=1.0, spec="%.1f"):
    """"median (min-max)" of a stat3, scaled."""
    if not st or st.get("median") is None:
        return "-"
    sp = st.get("spread")
    return spec % (st["median"] / scale) + fmt_spread([sp[0] / scale, sp[1] / scale] if sp else None, spec)


def render_extras(report):
    """The sections of the extra rows: growth, degraded restore, four
    agents at once, rebuild."""
    med, x, ideal = report["medians"], report.get("extras") or {}, report.get("ideal_growth")
    lines = []
    growth = x.get("growth") or {}
    if growth or ideal:
        lines.append("")
        lines.append("## Incremental growth (bytes the second backup added)")
        lines.append("")
        lines.append("Per part, each part's directory backed up on its own into a fresh repository (dump: %s/, "
                     "image: %s/); MiB, median (min-max) over runs. coffer: sealed blobs before erasure coding; "
                     "restic, borg: the repository's size after minus before. Ideal: every changed file's "
                     "`zstd -19 --long=27 --patch-from=OLD NEW` plus every new file's `zstd -19`, summed." % (
                         gen_dataset.PARTS["dump"], gen_dataset.PARTS["image"]))
        lines.append("")
        rows = []
        for t in sorted(growth):
            rows.append([t] + [fmt_stat(growth[t].get(p), MIB, "%.2f") for p in gen_dataset.GROWTH_PARTS])
        if ideal:
            rows.append(["ideal"] + [fmt(((ideal["parts"].get(p) or {}).get("bytes", 0)) / MIB, "%.2f")
                                     for p in gen_dataset.GROWTH_PARTS])
        lines.append(table(["tool"] + ["%s part MiB" % p for p in gen_dataset.GROWTH_PARTS], rows))
        lines.append("")
        whole = [[t, fmt(e.get("growth_bytes") and e["growth_bytes"] / MIB, "%.2f") +
                  fmt_spread([v / MIB for v in e["spread"]["growth_bytes"]] if e.get("spread", {}).get(
                      "growth_bytes") else None)]
                 for t, e in med.items() if e.get("runs_ok")]
        if ideal:
            whole.append(["ideal", fmt(ideal["total"]["bytes"] / MIB, "%.2f")])
            detail = "; ".join("%s: %d changed files (%.1f MiB), %d new (%.1f MiB), ideal %.2f MiB" % (
                p, v["changed_files"], v["changed_source_bytes"] / MIB, v["new_files"], v["new_source_bytes"] / MIB,
                v["bytes"] / MIB) for p, v in sorted(ideal["parts"].items()))
            lines.append("The whole tree (the main sequence's second backup), MiB; ideal by part: %s." % detail)
        else:
            lines.append("The whole tree (the main sequence's second backup), MiB.")
        lines.append("")
        lines.append(table(["tool", "growth MiB"], whole))
    c = med.get("coffer") or {}
    if c.get("restore_degraded"):
        d = c["restore_degraded"]
        lines.append("")
        lines.append("## Full restore with one site stopped")
        lines.append("")
        lines.append("After the healthy restore, `coffer dev-site stop site-c` stops both storage nodes of "
                     "site-c (they stop serving); once the leader no longer counts them up, a full restore reads "
                     "the k = 4 remaining shards of every pack. Verified: %s." % (
                         "yes" if c.get("verified_degraded") else "NO"))
        lines.append("")
        rows = [["coffer, site-c stopped", fmt(d["wall_s"]) + fmt_spread(c["spread"]["restore_degraded"]["wall_s"]),
                 fmt(d["mib_s"], "%.1f"), fmt(d["cpu_s"], "%.1f") + " (+%s)" % fmt(d.get("cluster_cpu_s"), "%.1f")]]
        for t in ("coffer", "restic", "borg"):
            e = med.get(t)
            if e and e.get("runs_ok"):
                rows.append(["%s, healthy" % t, fmt(e["restore"]["wall_s"]) +
                             fmt_spread(e["spread"]["restore"]["wall_s"]), fmt(e["restore"]["mib_s"], "%.1f"),
                             fmt(e["restore"]["cpu_s"], "%.1f")])
        lines.append(table(["restore", "wall s", "MiB/s", "CPU s"], rows))
    par = x.get("parallel") or {}
    if par:
        lines.append("")
        lines.append("## Four agents at once")
        lines.append("")
        lines.append("Four sources of %s (four seeds), backed up at the same time: coffer's four agents into four "
                     "repositories of one cluster, restic's four processes into four repositories. MiB/s = the four "
                     "sources' MiB over the wall time from the first start to the last end." % (
                         fmt((report["config"].get("parallel_source_bytes") or 0) / MIB / 4, "%.1f MiB each")))
        lines.append("")
        rows = [[t, fmt_stat(v["wall_s"], 1, "%.2f"), fmt_stat(v["mib_s"]), fmt_stat(v["cpu_s"]),
                 fmt_stat(v["cluster_cpu_s"])] for t, v in sorted(par.items())]
        lines.append(table(["tool", "wall s", "aggregate MiB/s", "client CPU s", "cluster CPU s"], rows))
    rb = x.get("rebuild")
    if rb:
        lines.append("")
        lines.append("## Rebuild of one lost storage node")
        lines.append("")
        lines.append("A 3 x 3 cluster with the day-0 tree; the directory of site-c's fullest node wiped while its "
                     "site was stopped, the site started again (the node returns empty under a new id). MB/s = the incident's bytes "
                     "written / its rebuild time; detection (60 s without heartbeats in `coffer dev`) is not in "
                     "it. Disk = %s written and fsynced by Python on the same disk in the same run. %d run(s) "
                     "failed." % (fmt((report["config"].get("disk_probe_bytes") or 0) / 1e6, "%.0f MB"),
                                  rb.get("runs_failed", 0)))
        lines.append("")
        rows = [["rebuild MB/s", fmt_stat(rb["mb_s"])], ["disk sequential write MB/s", fmt_stat(rb["disk_mb_s"])],
                ["rebuild / disk", fmt_stat(rb["ratio_to_disk"], 1, "%.2f")],
                ["MB written", fmt_stat(rb["bytes_written"], 1e6)], ["rebuild s", fmt_stat(rb["rebuild_s"])],
                ["detection s", fmt_stat(rb["detection_s"])],
                ["loss to full redundancy s", fmt_stat(rb["wall_from_loss_s"])],
                ["cluster CPU s (loss to full redundancy)", fmt_stat(rb["cluster_cpu_s"])]]
        lines.append(table(["figure", "median (min-max)"], rows))
    return lines


def render_verdict(combined, reports):
    labels = [label for label, _ in reports]
    lines = ["# coffer benchmark: verdict over %d datasets" % len(reports), ""]
    for label, rep in reports:
        cfg = rep["config"]
        lines.append("- %s: seed %s, %d MiB%s, %d run(s), started %s" % (
            label, cfg["seed"], cfg["mib"], " with the edge cases" if cfg.get("edge") else "", cfg["runs"],
            cfg["started"]))
    lines.append("")
    lines.append("A target is met only if it is met on every dataset. Values per dataset: value (min-max over runs).")
    lines.append("")
    rows = []
    for r in combined:
        row = [r.get("issue", ""), r["target"], r["required"]]
        for label in labels:
            d = r["datasets"].get(label)
            row.append("missing" if d is None else fmt(d["value"], "%.2f") + fmt_spread(d.get("spread")) +
                       ("" if d["met"] is None else " " + ("ok" if d["met"] else "NO")) +
                       (" (restore differed)" if d.get("note") else ""))
        row.append(verdict_word(r["met"]))
        rows.append(row)
    lines.append(table(["issue", "target", "required"] + labels + ["verdict"], rows))
    lines.append("")
    return "\n".join(lines)


def cpu_total(e, step):
    s = e[step]
    if s["cpu_s"] is None:
        return None
    return s["cpu_s"] + (s.get("cluster_cpu_s") or 0)


def restore_floor(report):
    """The least time any tool can take to restore the next-day tree on
    this disk (its bytes over the disk's median sequential write speed, the
    restore being timed to the end of its `sync`), and the largest restore
    ratio against the faster peer that this allows: their median restore
    over the floor. None without a disk measurement.

    The disk's speed is one stream of writes and one fsync; a restore
    writes many files at once. When a tool's median restore beats the
    floor, the floor does not bound this run: `binding` is false and there
    is no largest speedup."""
    disk = ((report.get("extras") or {}).get("disk_mb_s") or {}).get("median")
    restored = (report["config"].get("source_bytes") or {}).get("mutated")
    if not disk or not restored:
        return None
    floor_s = restored / 1e6 / disk
    walls = {t: e["restore"]["wall_s"] for t, e in report["medians"].items()
             if e.get("runs_ok") and (e.get("restore") or {}).get("wall_s")}
    peers = [w for t, w in walls.items() if t in ("restic", "borg")]
    binding = all(w >= floor_s for w in walls.values())
    return {"disk_mb_s": disk, "restored_bytes": restored, "floor_s": floor_s, "binding": binding,
            "fastest_restore_s": min(walls.values()) if walls else None,
            "max_restore_speedup": min(peers) / floor_s if peers and binding else None}


def render(report):
    cfg, med, ratios, targets = report["config"], report["medians"], report["ratios"], report["targets"]
    lines = []
    lines.append("# coffer benchmark")
    lines.append("")
    lines.append("%s; dataset %d MiB (seed %s%s): %.1f MiB day 0, %.1f MiB after the mutation; %d run(s), medians "
                 "shown. %s. Machine: %d CPUs (%s), %.1f GiB RAM, kernel %s; load average at the end %s (the "
                 "machine may be shared: see the quiet waits and contended runs below)." % (
                     cfg["started"], cfg["mib"], cfg["seed"], ", with the edge cases" if cfg.get("edge") else "",
                     cfg["source_bytes"]["base"] / MIB,
                     (cfg["source_bytes"].get("mutated") or 0) / MIB, cfg["runs"], cfg["cache"],
                     cfg["machine"]["cpus"], cfg["machine"]["cpu_model"], cfg["machine"]["mem_bytes"] / (1 << 30),
                     cfg["machine"]["kernel"],
                     " ".join("%.1f" % v for v in cfg.get("load_at_end") or [])))
    if cfg.get("cleanup"):
        lines.append("")
        lines.append(cfg["cleanup"] + ".")
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
    lines.append("Times are medians with the min-max over runs in brackets. "
                 "Each step is the client command plus `sync`. MiB/s is source MiB (day 0 for the first backup, "
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
        sp = e.get("spread", {})
        for step in STEPS:
            s = e[step]
            cpu = fmt(s["cpu_s"], "%.1f")
            if t == "coffer" and s.get("cluster_cpu_s") is not None:
                cpu += " (+%.1f)" % s["cluster_cpu_s"]
            row += [fmt(s["wall_s"]) + fmt_spread(sp.get(step, {}).get("wall_s")), fmt(s["mib_s"], "%.1f"), cpu,
                    fmt(s["rss_mib"], "%.0f")]
        row += [fmt(e["stored_bytes"] / MIB if e["stored_bytes"] is not None else None, "%.1f"),
                "yes" if e["verified"] else "NO"]
        rows.append(row)
    lines.append(table(headers, rows))
    lines.append("")
    lines.append("The spread (min-max over runs) of the other medians above:")
    lines.append("")
    rows = []
    for t in cfg["tools"]:
        e = med.get(t)
        if not e or not e["runs_ok"]:
            continue
        sp = e.get("spread", {})
        row = [t]
        for step in STEPS:
            s = sp.get(step, {})
            cpu = fmt_spread(s.get("cpu_s"), "%.1f", "-").strip(" ()")
            if s.get("cluster_cpu_s"):
                cpu += " (+%s)" % fmt_spread(s["cluster_cpu_s"], "%.1f").strip(" ()")
            row += [fmt_spread(s.get("mib_s"), "%.1f", "-").strip(" ()"), cpu,
                    fmt_spread(s.get("rss_mib"), "%.0f", "-").strip(" ()")]
        st = sp.get("stored_bytes")
        row.append(fmt_spread([v / MIB for v in st] if st else None, "%.1f", "-").strip(" ()"))
        rows.append(row)
    lines.append(table(["tool"] + ["%s %s" % (STEP_TITLES[step], k) for step in STEPS for k in
                                   ("MiB/s", "CPU s", "RSS MiB")] + ["stored MiB"], rows))
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
    floor = restore_floor(report)
    if floor and floor.get("binding", True):
        lines.append("Restore floor: this disk writes %.0f MB/s (median of the runs; %s written and fsynced by Python), "
                     "so no tool restores the next-day tree (%.0f MB) in less than %.2f s here; the faster peer's "
                     "median restore over that floor, %s, is the largest restore speedup this disk allows." % (
                         floor["disk_mb_s"], fmt((cfg.get("disk_probe_bytes") or 0) / 1e6, "%.0f MB"),
                         floor["restored_bytes"] / 1e6, floor["floor_s"],
                         fmt(floor["max_restore_speedup"], "%.2fx")))
        lines.append("")
    elif floor:
        lines.append("Restore floor: none in this run. One stream of writes fsynced by Python reached %.0f MB/s "
                     "(median of the runs; %s), which would put the next-day tree (%.0f MB) at %.2f s, but a tool "
                     "restored it in %.2f s (median, `sync` included), so the probe bounds no restore ratio "
                     "here." % (
                         floor["disk_mb_s"], fmt((cfg.get("disk_probe_bytes") or 0) / 1e6, "%.0f MB"),
                         floor["restored_bytes"] / 1e6, floor["floor_s"], floor["fastest_restore_s"]))
        lines.append("")
    lines.append("## Targets")
    lines.append("")
    lines.append("Value from the medians; spread = min-max of the same figure run by run (each run's coffer against "
                 "the same run's peers). A target counts as met for issue 17 only if it holds on the default dataset "
                 "and on two other seeds with BENCH_EDGE=1 (`make bench-verdict`, target/bench/verdict.md).")
    lines.append("")
    rows = [[t.get("issue", ""), t["target"], t["against"] or "", fmt(t["value"], "%.2f"),
             fmt_spread(t.get("spread"), "%.2f", "").strip(), t["required"], t["unit"],
             verdict_word(t["met"]) + (" (%s)" % t["note"] if t.get("note") else "")]
            for t in targets]
    lines.append(table(["issue", "target", "against", "value", "spread", "required", "unit", "verdict"], rows))
    lines.extend(render_extras(report))
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
                rows.append([i + 1, t, "error: " + r["error"].splitlines()[0][:80]] + [""] * 7)
                continue
            st = r["steps"]
            row = [i + 1, t + (" *" if r.get("contended_steps") else "")]
            for step in STEPS + ["restore_degraded"]:
                m = st.get(step)
                row.append("%.2f s / %.1f CPU / %.0f MiB / bg %.1f" % (
                    m["wall_s"], m["cpu_s"], m["rss_mib"], m.get("other_cpu_s", 0.0)) if m else "-")
            row.append(fmt(r.get("stored", {}).get("bytes", 0) / MIB, "%.1f"))
            row.append(fmt(r.get("growth_bytes") and r["growth_bytes"] / MIB, "%.2f"))
            row.append(fmt(r["extra"].get("cluster_peak_rss_mib"), "%.0f"))
            row.append(("yes" if r.get("verified") else "NO") +
                       ("" if "verified_degraded" not in r else " / " + ("yes" if r["verified_degraded"] else "NO")))
            rows.append(row)
    lines.append("Each step: wall time / client CPU / client peak RSS / bg = CPU-seconds the rest of the machine "
                 "used during the step (other users' processes, and kernel threads such as writeback working for "
                 "the tool; for coffer, excluding the cluster process).")
    lines.append("")
    lines.append(table(["run", "tool", "first backup", "second backup", "restore", "restore, site stopped",
                        "stored MiB", "growth MiB", "cluster RSS MiB", "verified (healthy / site stopped)"], rows))
    lines.append("")
    lines.append("Versions: " + "; ".join("%s: %s" % kv for kv in cfg["versions"].items()) + ".")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_seeds(text, default_seed):
    """`--seeds` as [(label, seed, edge)]: comma-separated SEED or
    SEED:edge; "default" stands for the default seed without edge cases."""
    out = []
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        seed, _, flag = item.partition(":")
        if flag not in ("", "edge"):
            raise ValueError("a seed is SEED or SEED:edge, not %r" % item)
        seed = default_seed if seed == "default" else seed
        out.append(("seed-%s%s" % (seed, "-edge" if flag else ""), seed, flag == "edge"))
    if len({label for label, _, _ in out}) != len(out):
        raise ValueError("the same dataset twice in --seeds")
    return out


def bench_dataset(args, tools, coffer_bin, seed, edge, out_dir, cache_dir, versions, installed, caches, cache_note):
    """Every run on one dataset; writes out_dir/report.{md,json}; returns the report."""
    skip = set(args.skip)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="coffer-bench.",
                                                                          dir=os.environ.get("TMPDIR", "/tmp"))
    os.makedirs(work, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(work, "base")
    src = os.path.join(work, "src")
    restore_dir = os.path.join(work, "restore")
    tmp = os.path.join(work, "tmp")
    os.makedirs(tmp, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ideal = None
    par_srcs, par_bytes = [], 0
    disk_bytes = min(1 << 30, max(256 * MIB, args.mib * MIB))
    extra_runs = []
    try:
        TRASH.retire(base)
        log("generating %d MiB dataset (seed %s%s) in %s" % (args.mib, seed, ", edge cases" if edge else "", base))
        t0 = time.monotonic()
        subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py")] + (["--edge"] if edge else []) +
                       [str(seed), str(args.mib), base], check=True, env=dict(os.environ, BENCH_EDGE="0"))
        source_bytes = {"base": tree_bytes(base)}
        log("dataset: %.1f MiB in %.1fs" % (source_bytes["base"] / MIB, time.monotonic() - t0))
        if "growth" not in skip:
            ideal = cached_ideal(cache_dir, work, base, seed, args.mib, edge)
        if "parallel" not in skip and ("coffer" in tools or "restic" in tools):
            for i in range(4):
                d = os.path.join(work, "par-src%d" % i)
                subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py"), "%s-agent%d" % (seed, i),
                                str(max(1, args.mib // 4)), d], check=True, env=dict(os.environ, BENCH_EDGE="0"))
                par_srcs.append(d)
                par_bytes += tree_bytes(d)
        runs = []
        for i in range(args.runs):
            run = {}
            for t in tools:
                discarded = []
                for attempt in range(args.retries + 1):
                    home = os.path.join(work, "run%d-%s" % (i + 1, t))
                    log("run %d/%d: %s%s" % (i + 1, args.runs, t, " (retry %d)" % attempt if attempt else ""))
                    tool = make_tool(t, home, src, tmp, coffer_bin, args.insecure)
                    result = run_tool(tool, base, src, restore_dir, seed, caches, source_bytes,
                                      degraded="degraded" not in skip)
                    for step, m in result["steps"].items():
                        log("  %-8s %7.2fs  %7.1f MiB/s  cpu %6.1fs  rss %5.0f MiB  bg %5.1fs" % (
                            step, m["wall_s"], m.get("mib_s") or 0, m["cpu_s"], m["rss_mib"], m["other_cpu_s"]))
                    TRASH.retire(home)
                    TRASH.retire(restore_dir)
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
            extra = {}
            if "growth" not in skip:
                extra["growth"] = {}
                for t in [x for x in ("coffer", "restic", "borg") if x in tools]:
                    log("run %d/%d: growth by part, %s" % (i + 1, args.runs, t))
                    extra["growth"][t] = g = run_growth(t, work, base, seed, tmp, coffer_bin, args.insecure)
                    log("  %s" % ", ".join("%s %.2f MiB" % (p, v / MIB) for p, v in g.get("parts", {}).items()))
            if par_srcs:
                extra["parallel"] = {}
                for t in [x for x in ("coffer", "restic") if x in tools]:
                    log("run %d/%d: four %s backups at once" % (i + 1, args.runs, t))
                    extra["parallel"][t] = p = run_parallel(t, work, par_srcs, tmp, coffer_bin, args.insecure,
                                                            par_bytes)
                    if "step" in p:
                        log("  %7.2fs  %7.1f MiB/s aggregate" % (p["step"]["wall_s"], p["step"]["mib_s"]))
            if "rebuild" not in skip and "coffer" in tools:
                log("run %d/%d: rebuild of one lost node" % (i + 1, args.runs))
                extra["rebuild"] = rb = run_rebuild(work, base, tmp, coffer_bin, args.insecure, disk_bytes,
                                                    args.rebuild_timeout)
                log("  rebuild %s MB/s, disk %.1f MB/s" % (fmt(rb.get("mb_s"), "%.1f"), rb["disk"]["mb_s"]))
            # The disk's own write speed in every run: it bounds every
            # tool's restore (restore_floor).
            extra["disk"] = extra["rebuild"]["disk"] if "rebuild" in extra else disk_write_speed(work, disk_bytes)
            log("run %d/%d: disk sequential write %.1f MB/s" % (i + 1, args.runs, extra["disk"]["mb_s"]))
            extra_runs.append(extra)
    finally:
        if not args.keep:
            TRASH.retire(work)
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
    xmed = summarise_extras(extra_runs)
    ratios, targets = ratios_and_targets(med, runs, xmed, extra_runs, ideal, source_bytes)
    report = {
        "config": {"started": started, "mib": args.mib, "runs": args.runs, "seed": seed, "edge": edge,
                   "tools": tools, "skipped": sorted(skip),
                   "cache": cache_note, "cache_dropped": caches, "quiet": quiet, "installed_now": installed,
                   "cleanup": CLEANUP_NOTE,
                   "source_bytes": source_bytes, "machine": machine_info(), "versions": versions,
                   "load_at_end": os.getloadavg(),
                   "parallel_source_bytes": par_bytes, "disk_probe_bytes": disk_bytes,
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
        "extra_runs": extra_runs,
        "extras": xmed,
        "ideal_growth": ideal,
    }
    report["restore_floor"] = restore_floor(report)
    md = render(report)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md)
    print(md)
    log("wrote %s and %s" % (os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.json")))
    return report


def write_verdict(out_dir, reports):
    combined = combine_verdicts(reports)
    md = render_verdict(combined, reports)
    with open(os.path.join(out_dir, "verdict.json"), "w") as f:
        json.dump({"datasets": [{"label": label, "seed": r["config"]["seed"], "edge": r["config"].get("edge"),
                                 "mib": r["config"]["mib"], "runs": r["config"]["runs"]} for label, r in reports],
                   "targets": combined}, f, indent=2)
    with open(os.path.join(out_dir, "verdict.md"), "w") as f:
        f.write(md)
    print(md)
    log("wrote %s" % os.path.join(out_dir, "verdict.md"))


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coffer", default="target/release/coffer")
    ap.add_argument("--mib", type=int, default=int(os.environ.get("BENCH_MIB", 1024)))
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    ap.add_argument("--seed", default=os.environ.get("BENCH_SEED", "20261124"))
    ap.add_argument("--edge", action="store_true", default=env_flag("BENCH_EDGE"),
                    help="add the edge cases to the dataset (also BENCH_EDGE=1)")
    ap.add_argument("--seeds", default=os.environ.get("BENCH_SEEDS", ""),
                    help="several datasets, e.g. default,7:edge,11:edge: one report each under OUT/<label>/ and "
                         "a combined verdict in OUT/verdict.md (also BENCH_SEEDS)")
    ap.add_argument("--combine", nargs="+", metavar="REPORT_JSON",
                    help="only write OUT/verdict.{md,json} from these reports")
    ap.add_argument("--render", metavar="REPORT_JSON",
                    help="only recompute the medians, ratios and targets of a report.json from its raw runs and "
                         "write it and its report.md again")
    ap.add_argument("--skip", default=os.environ.get("BENCH_SKIP", ""),
                    help="extra rows to leave out, comma-separated: growth, degraded, parallel, rebuild")
    ap.add_argument("--rebuild-timeout", type=int, default=1800,
                    help="seconds from a node's loss to full redundancy before the rebuild row fails")
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
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        cfg = report["config"]
        report["medians"] = summarise(report["runs"], cfg["tools"])
        report["extras"] = summarise_extras(report.get("extra_runs", []))
        report["ratios"], report["targets"] = ratios_and_targets(
            report["medians"], report["runs"], report["extras"], report.get("extra_runs", []),
            report.get("ideal_growth"), cfg["source_bytes"])
        report["restore_floor"] = restore_floor(report)
        with open(args.render, "w") as f:
            json.dump(report, f, indent=2, sort_keys=False)
        with open(os.path.join(os.path.dirname(os.path.abspath(args.render)), "report.md"), "w") as f:
            f.write(render(report))
        return
    if args.combine:
        reports = []
        for path in args.combine:
            with open(path) as f:
                r = json.load(f)
            reports.append((os.path.basename(os.path.dirname(os.path.abspath(path))) or path, r))
        write_verdict(out_dir, reports)
        return
    if args.runs < 1 or args.mib < 1:
        ap.error("--runs and --mib must be positive")
    args.skip = [x for x in args.skip.split(",") if x]
    for x in args.skip:
        if x not in ("growth", "degraded", "parallel", "rebuild"):
            ap.error("unknown row %r in --skip" % x)
    tools = [t for t in args.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            ap.error("unknown tool %r (known: %s)" % (t, ", ".join(TOOLS)))
    try:
        datasets = parse_seeds(args.seeds, args.seed) if args.seeds else []
    except ValueError as e:
        ap.error(str(e))
    coffer_bin = os.path.abspath(args.coffer)
    if "coffer" in tools and not os.access(coffer_bin, os.X_OK):
        ap.error("no coffer binary at %s (run `make bench`, which builds it)" % coffer_bin)

    try:
        run_main(args, tools, datasets, out_dir)
    finally:
        TRASH.empty()


def run_main(args, tools, datasets, out_dir):
    """The benchmark proper, once the arguments are checked."""
    coffer_bin = os.path.abspath(args.coffer)
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
    cache_dir = os.path.join(out_dir, "cache")
    common = (versions, installed, caches, cache_note)
    if not datasets:
        bench_dataset(args, tools, coffer_bin, args.seed, args.edge, out_dir, cache_dir, *common)
        return
    reports = []
    for label, seed, edge in datasets:
        log("dataset %s" % label)
        reports.append((label, bench_dataset(args, tools, coffer_bin, seed, edge, os.path.join(out_dir, label),
                                             cache_dir, *common)))
    write_verdict(out_dir, reports)


if __name__ == "__main__":
    main()
