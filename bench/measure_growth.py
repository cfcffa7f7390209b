#!/usr/bin/env python3
"""Incremental stored growth (issue 17): the bytes a second backup adds to
the repository, for coffer and restic, beside the ideal.

Usage:
    measure_growth.py [--size MIB] [--seed S] [--work DIR] [--coffer BIN]
                      [--tools coffer,restic] [--parts all,dump,image]
                      [--json OUT]

The dataset is bench/gen_dataset.py's: a day-0 tree and the same tree after
its "next day" mutation. It is split into parts so that each kind of change
is measured alone:

    dump   db/, logs/, etc/, templates/, empty/   (text: the SQL dump with
           inserted rows and rewritten statuses, new logs, edited small files)
    image  media/                                 (incompressible images:
           some re-encoded, some new)
    all    the whole tree

For each part and tool: a fresh repository, a backup of the part's day-0
files at one fixed path, the part brought to its day-1 state in place (a
changed file is rewritten through a new inode, an unchanged one keeps its
inode and times, as a real day leaves them), a second backup. The growth is
what the second backup added:

    coffer   the second backup's `bytes_stored` (sealed chunks and trees
             before erasure coding, what `make bench` calls stored)
    restic   the repository's size on disk after minus before

The ideal is, per changed file, `zstd -19 --long=27 --patch-from=OLD NEW`
(its delta against its previous version), plus every new file compressed
with `zstd -19 --long=27`, summed.

coffer runs against a fresh `coffer dev` cluster per part (as `make bench`
does); restic against a local repository. Times are wall seconds of each
backup, and user+sys CPU of the client (and, for coffer, of the dev
cluster's process), so a change in growth can be read with its cost.
Stdlib only.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run_bench import proc_cpu_s, start_dev  # noqa: E402  (one way to start a dev cluster)
MIB = 1 << 20
PASSWORD = "growth-password-not-secret"
PARTS = {
    "dump": ["db", "logs", "etc", "templates", "empty"],
    "image": ["media"],
    "all": None,
}


def log(msg):
    sys.stderr.write("[growth %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def files_under(root):
    """Relative path -> ("f", size) | ("l", target) | ("d", None)."""
    out = {}
    for d, dirs, fs in os.walk(root):
        rel_d = os.path.relpath(d, root)
        for name in dirs:
            p = os.path.join(d, name)
            rel = os.path.normpath(os.path.join(rel_d, name))
            out[rel] = ("l", os.readlink(p)) if os.path.islink(p) else ("d", None)
        for name in fs:
            p = os.path.join(d, name)
            rel = os.path.normpath(os.path.join(rel_d, name))
            out[rel] = ("l", os.readlink(p)) if os.path.islink(p) else ("f", os.path.getsize(p))
    return out


def in_part(rel, part):
    tops = PARTS[part]
    return tops is None or rel.split(os.sep)[0] in tops


def same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def copy_part(src_root, dst, part):
    """A fresh copy of one part of a tree (times and modes kept)."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for name in sorted(os.listdir(src_root)):
        if in_part(name, part):
            subprocess.run(["cp", "-a", os.path.join(src_root, name), dst], check=True)


def bring_to(dst, new_root, part):
    """Brings dst (a copy of a part of day 0) to the part's day-1 state in
    place: changed and new files are written to a temporary name and renamed
    over (a new inode, as most writers do), removed ones deleted, unchanged
    ones left alone."""
    old = {k: v for k, v in files_under(dst).items()}
    new = {k: v for k, v in files_under(new_root).items() if in_part(k, part)}
    for rel in sorted(set(old) - set(new), key=len, reverse=True):
        p = os.path.join(dst, rel)
        if old[rel][0] == "d" and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            os.remove(p)
    for rel in sorted(new):
        kind, what = new[rel]
        p, q = os.path.join(dst, rel), os.path.join(new_root, rel)
        if kind == "d":
            os.makedirs(p, exist_ok=True)
        elif kind == "l":
            if old.get(rel) != new[rel]:
                if os.path.lexists(p):
                    os.remove(p)
                os.symlink(what, p)
        elif rel not in old or not same_file(p, q):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + ".growth-tmp"
            shutil.copy2(q, tmp)
            os.replace(tmp, p)


def zstd_len(args):
    out = subprocess.run(["zstd", "-q", "-c"] + args, capture_output=True, check=True)
    return len(out.stdout)


def ideal(old_root, new_root, part):
    """Per changed file its patch-from delta, per new file its compressed
    size: {"bytes", "changed", "new", "changed_bytes", "new_bytes"}."""
    old = files_under(old_root)
    new = files_under(new_root)
    res = {"bytes": 0, "changed": 0, "new": 0, "changed_bytes": 0, "new_bytes": 0}
    for rel, (kind, size) in sorted(new.items()):
        if kind != "f" or not in_part(rel, part):
            continue
        p = os.path.join(new_root, rel)
        if rel in old and old[rel][0] == "f":
            q = os.path.join(old_root, rel)
            if same_file(p, q):
                continue
            n = zstd_len(["-19", "--long=27", "--patch-from=" + q, p])
            res["changed"] += 1
            res["changed_bytes"] += n
        else:
            n = zstd_len(["-19", "--long=27", p])
            res["new"] += 1
            res["new_bytes"] += n
        res["bytes"] += n
    return res


def du_bytes(path):
    total = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def timed(cmd, env, server_pid=None, stdout=None):
    """Runs cmd; returns (wall s, client CPU s, server CPU s, stdout text)."""
    before = os.times()
    server_before = proc_cpu_s(server_pid) if server_pid else 0.0
    start = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = os.times()
    if out.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), out.stderr[-2000:]))
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    server = (proc_cpu_s(server_pid) - server_before) if server_pid else 0.0
    return wall, cpu, server, out.stdout


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


class Coffer:
    name = "coffer"

    def __init__(self, binary, home):
        self.bin = binary
        self.home = home
        self.env = dict(os.environ)
        self.proc = None

    def setup(self):
        self.log = open(os.path.join(self.home, "dev.log"), "w")
        self.proc = start_dev(self.bin, os.path.join(self.home, "cluster"), self.log, self.env, ["--insecure"], 6,
                              timeout=120)
        self.env.update(COFFER_REPO="growth", COFFER_PASSWORD=PASSWORD)
        subprocess.run([self.bin, "repo", "create", "growth"], env=self.env, check=True, capture_output=True)

    def backup(self, src):
        wall, cpu, server, out = timed([self.bin, "backup", src, "--json"], self.env, self.proc.pid)
        summary = last_json(out)
        return {"wall_s": wall, "cpu_s": cpu + server, "client_cpu_s": cpu, "server_cpu_s": server,
                "added": summary.get("bytes_stored"), "summary": summary}

    def restore(self, dest):
        wall, cpu, server, _ = timed([self.bin, "restore", "latest", dest, "--json"], self.env, self.proc.pid)
        return {"wall_s": wall, "cpu_s": cpu + server}, dest

    def teardown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Restic:
    name = "restic"

    def __init__(self, home):
        self.home = home
        self.repo = os.path.join(home, "repo")
        self.env = dict(os.environ, RESTIC_REPOSITORY=self.repo, RESTIC_PASSWORD=PASSWORD,
                        RESTIC_CACHE_DIR=os.path.join(home, "cache"))

    def setup(self):
        subprocess.run(["restic", "init"], env=self.env, check=True, capture_output=True)

    def backup(self, src):
        before = du_bytes(self.repo)
        wall, cpu, _, _ = timed(["restic", "backup", "--json", src], self.env)
        return {"wall_s": wall, "cpu_s": cpu, "added": du_bytes(self.repo) - before}

    def restore(self, dest):
        wall, cpu, _, _ = timed(["restic", "restore", "latest", "--target", dest], self.env)
        return {"wall_s": wall, "cpu_s": cpu}, None

    def teardown(self):
        pass


def run_tool(tool, day0, day1, part, src, restore_dir):
    copy_part(day0, src, part)
    tool.setup()
    try:
        b1 = tool.backup(src)
        bring_to(src, day1, part)
        b2 = tool.backup(src)
        res = {"backup1": b1, "backup2": b2, "added": b2["added"]}
        if restore_dir is not None:
            if os.path.exists(restore_dir):
                shutil.rmtree(restore_dir)
            r, root = tool.restore(restore_dir)
            if root is not None:
                r["identical"] = subprocess.run(["diff", "-r", "--no-dereference", src, root],
                                                capture_output=True).returncode == 0
            res["restore"] = r
            shutil.rmtree(restore_dir, ignore_errors=True)
        return res
    finally:
        tool.teardown()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="dataset size in MiB (default 256)")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--coffer", default=os.path.join(HERE, "..", "target", "release", "coffer"))
    ap.add_argument("--tools", default="coffer,restic")
    ap.add_argument("--parts", default="dump,image")
    ap.add_argument("--restore", action="store_true", help="also time a full restore and diff it")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="coffer-growth-")
    os.makedirs(work, exist_ok=True)
    day0, day1 = os.path.join(work, "day0"), os.path.join(work, "day1")
    stamp = os.path.join(work, "dataset-%s-%d" % (args.seed, args.size))
    if not os.path.exists(stamp):
        for d in (day0, day1):
            shutil.rmtree(d, ignore_errors=True)
        log("generating %d MiB (seed %s)" % (args.size, args.seed))
        subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py"), args.seed, str(args.size), day0],
                       check=True)
        subprocess.run(["cp", "-a", day0, day1], check=True)
        subprocess.run([sys.executable, os.path.join(HERE, "gen_dataset.py"), "--mutate", day1, args.seed],
                       check=True)
        open(stamp, "w").close()

    report = {"size_mib": args.size, "seed": args.seed, "parts": {}}
    for part in args.parts.split(","):
        # The ideal depends on the dataset only: computed once per work
        # directory (zstd -19 over the dump takes minutes).
        cache = os.path.join(work, "ideal-%s.json" % part)
        if os.path.exists(cache):
            with open(cache) as f:
                entry = {"ideal": json.load(f)}
        else:
            log("ideal of part %s" % part)
            entry = {"ideal": ideal(day0, day1, part)}
            with open(cache, "w") as f:
                json.dump(entry["ideal"], f)
        for name in args.tools.split(","):
            home = os.path.join(work, "%s-%s" % (name, part))
            shutil.rmtree(home, ignore_errors=True)
            os.makedirs(home)
            tool = Coffer(os.path.abspath(args.coffer), home) if name == "coffer" else Restic(home)
            log("%s on part %s" % (name, part))
            src = os.path.join(work, "src")  # one fixed path, as make bench keeps
            entry[name] = run_tool(tool, day0, day1, part, src,
                                   os.path.join(work, "restored") if args.restore else None)
            shutil.rmtree(home, ignore_errors=True)
        report["parts"][part] = entry

    print("%-6s %-8s %10s %10s %9s %9s %9s %9s" % ("part", "tool", "added MiB", "x ideal", "b1 s", "b1 cpu",
                                                  "b2 s", "b2 cpu"))
    for part, entry in report["parts"].items():
        ideal_b = entry["ideal"]["bytes"]
        print("%-6s %-8s %10.2f %10s" % (part, "ideal", ideal_b / MIB, "1.00"))
        for name in args.tools.split(","):
            r = entry[name]
            print("%-6s %-8s %10.2f %10.2f %9.2f %9.2f %9.2f %9.2f" % (
                part, name, r["added"] / MIB, r["added"] / max(ideal_b, 1), r["backup1"]["wall_s"],
                r["backup1"]["cpu_s"], r["backup2"]["wall_s"], r["backup2"]["cpu_s"]))
            if "restore" in r:
                print("%-6s %-8s restore %.2f s, cpu %.2f s, identical %s" % (
                    part, name, r["restore"]["wall_s"], r["restore"]["cpu_s"], r["restore"].get("identical")))
        if "coffer" in entry and "restic" in entry:
            print("%-6s coffer/restic growth %.3f" % (part, entry["coffer"]["added"] / max(entry["restic"]["added"], 1)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
