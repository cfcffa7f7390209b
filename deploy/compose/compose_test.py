#!/usr/bin/env python3
"""`make compose-test`: coffer in three Docker sites, through a site loss and a partition.

1. brings deploy/compose/compose.yaml up (image $IMAGE, default coffer:dev)
   and waits until every daemon's health check (/readyz) passes;
2. creates a repository (4+2) and backs up a generated tree from the client
   container;
3. stops every container of site-b: the voter and one storage node with
   `docker compose stop`, the other storage node with `docker kill`;
4. restores the snapshot with site-b down and compares it byte for byte;
5. starts site-b again and waits until `coffer status` shows full
   redundancy (6 nodes up, 3 voters, no degraded, at-risk, lost, short or
   site-degraded pack);
6. partitions site-c (its containers leave the `wan` network) while a
   backup of a changed tree runs, backs up again during the partition,
   heals it, waits for full redundancy, and restores the last snapshot
   byte-identical;
7. tears everything down (containers, networks, volumes), also on failure.

Every wait has a deadline; the script exits 1 naming the step that failed
and printing the daemons' logs.
"""

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
COMPOSE_FILE = Path(os.environ.get("COFFER_COMPOSE_FILE", HERE / "compose.yaml"))
PROJECT = os.environ.get("COMPOSE_PROJECT", "coffer-ct")
IMAGE = os.environ.get("IMAGE", "coffer:dev")
MIB = int(os.environ.get("COMPOSE_MIB", "48"))
SITES = {
    "site-a": ["meta-a", "storage-a1", "storage-a2"],
    "site-b": ["meta-b", "storage-b1", "storage-b2"],
    "site-c": ["meta-c", "storage-c1", "storage-c2"],
}
DAEMONS = [s for names in SITES.values() for s in names]
T0 = time.monotonic()


class Failed(Exception):
    pass


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def compose_cmd():
    """`docker compose` (the plugin) if present, else docker-compose."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise Failed("neither `docker compose` nor docker-compose is installed")


COMPOSE = None
ENV = dict(os.environ, IMAGE=IMAGE)


def run(args, check=True, capture=True, timeout=600):
    r = subprocess.run(args, capture_output=capture, text=True, env=ENV, timeout=timeout)
    if check and r.returncode != 0:
        raise Failed(f"`{' '.join(args)}` exited {r.returncode}:\n{r.stdout or ''}{r.stderr or ''}")
    return r


def compose(*args, **kw):
    return run(COMPOSE + ["-f", str(COMPOSE_FILE), "-p", PROJECT, *args], **kw)


def client(*args, check=True, timeout=600):
    """A coffer command in a fresh client container."""
    return compose("run", "--rm", "-T", "client", *args, check=check, timeout=timeout)


def container(service):
    cid = compose("ps", "-q", service).stdout.strip()
    if not cid:
        raise Failed(f"no container for {service}")
    return cid


def wait_until(what, cond, deadline_s, every=1.0):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            got = cond()
        except Failed as e:
            got, last = None, str(e)
        if got:
            return got
        time.sleep(every)
    raise Failed(f"timed out after {deadline_s}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def health(service):
    cid = container(service)
    out = run(["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", cid])
    return out.stdout.strip()


def status():
    r = client("status", "--json", "--retry-for", "5s", check=False, timeout=120)
    if r.returncode != 0:
        raise Failed(f"coffer status exited {r.returncode}: {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def full_redundancy(s):
    p = s["packs"]
    up = sum(1 for n in s["nodes"] if n["state"] == "up")
    return (
        up == 6
        and len(s["meta"]["members"]) == 3
        and p["degraded"] == 0
        and p["at_risk"] == 0
        and p["lost"] == 0
        and p["short"] == 0
        and s["site_degraded"] == 0
    )


def describe(s):
    p = s["packs"]
    by_site = {}
    for n in s["nodes"]:
        by_site.setdefault(n["site"], []).append(n["state"])
    sites = ", ".join(f"{k}: {'/'.join(v)}" for k, v in sorted(by_site.items()))
    return (
        f"leader {s['meta']['leader']} term {s['meta']['term']}; {sites}; packs {p['healthy']} healthy, "
        f"{p['degraded']} degraded, {p['at_risk']} at risk, {p['lost']} lost, {p['short']} short; "
        f"site-degraded {s['site_degraded']}"
    )


def same_tree(a, b):
    """Every file of `a` in `b` with the same bytes, and nothing more."""
    diffs = []

    def walk(c, rel):
        diffs.extend(os.path.join(rel, n) for n in c.left_only + c.right_only + c.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        diffs.extend(os.path.join(rel, n) for n in mismatch + errors)
        for name, sub in c.subdirs.items():
            walk(sub, os.path.join(rel, name))

    walk(filecmp.dircmp(a, b), "")
    if diffs:
        raise Failed(f"restore differs from the source in {len(diffs)} entries, e.g. {diffs[:5]}")
    return sum(len(files) for _, _, files in os.walk(a))


def backup_summary(r):
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    global COMPOSE
    COMPOSE = compose_cmd()
    work = Path(tempfile.mkdtemp(prefix="coffer-compose."))
    src, restore = work / "src", work / "restore"
    restore.mkdir()
    # The client runs as the image's non-root user.
    os.chmod(work, 0o755)
    os.chmod(restore, 0o777)
    ENV.update(SRC=str(src), RESTORE=str(restore))
    try:
        log(f"generate a {MIB} MiB sample tree")
        run([sys.executable, str(ROOT / "scripts" / "gen_sample.py"), str(src), str(MIB)])
        for dirpath, dirnames, filenames in os.walk(src):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)

        log(f"bring the cluster up ({COMPOSE[-1]}, image {IMAGE}, project {PROJECT})")
        compose("down", "-v", "--remove-orphans", check=False)
        compose("up", "-d")
        wait_until("every daemon healthy (/readyz)", lambda: all(health(s) == "healthy" for s in DAEMONS), 240, 2)
        log("all 9 daemons healthy")
        wait_until("6 storage nodes up", lambda: sum(n["state"] == "up" for n in status()["nodes"]) == 6, 120)
        log("status: " + describe(status()))

        client("repo", "create", "shop", "--k", "4", "--m", "2")
        t = time.monotonic()
        b1 = backup_summary(client("backup", "/src", "--json"))
        log(
            f"backup 1: snapshot {b1['snapshot_id'][:8]}, {b1['files']} files, "
            f"{b1['bytes_scanned'] / 2**20:.1f} MiB in {time.monotonic() - t:.1f}s (client container included)"
        )

        log("stop site-b: compose stop meta-b storage-b1, docker kill storage-b2")
        compose("stop", "meta-b", "storage-b1")
        run(["docker", "kill", container("storage-b2")])
        wait_until(
            "site-b's storage nodes no longer up",
            lambda: all(n["state"] != "up" for n in status()["nodes"] if n["site"] == "site-b"),
            120,
        )
        log("status: " + describe(status()))

        t = time.monotonic()
        client("restore", b1["snapshot_id"], "/restore/r1")
        files = same_tree(src, restore / "r1")
        log(f"restore with site-b down: {files} files byte-identical ({time.monotonic() - t:.1f}s)")

        log("start site-b again")
        compose("start", *SITES["site-b"])
        t = time.monotonic()
        wait_until("full redundancy after site-b returns", lambda: full_redundancy(status()), 300, 2)
        log(f"full redundancy {time.monotonic() - t:.1f}s after the restart: " + describe(status()))

        # A changed tree, so that the backups during the partition write new packs.
        (src / "partition").mkdir()
        for i in range(8):
            (src / "partition" / f"blob-{i}.bin").write_bytes(os.urandom(2 * 2**20))
            os.chmod(src / "partition" / f"blob-{i}.bin", 0o644)
        os.chmod(src / "partition", 0o755)

        log("partition site-c (disconnect its containers from the wan network) while a backup runs")
        wan = f"{PROJECT}_wan"
        bg = subprocess.Popen(
            COMPOSE + ["-f", str(COMPOSE_FILE), "-p", PROJECT, "run", "--rm", "-T", "client", "backup", "/src", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for s in SITES["site-c"]:
            run(["docker", "network", "disconnect", wan, container(s)])
        out, err = bg.communicate(timeout=600)
        if bg.returncode != 0:
            raise Failed(f"the backup during the partition exited {bg.returncode}: {err.strip()}")
        b2 = json.loads(out.strip().splitlines()[-1])
        log(f"backup 2 (across the partition's start): snapshot {b2['snapshot_id'][:8]}, {b2['bytes_new'] / 2**20:.1f} MiB new")
        wait_until(
            "site-c's storage nodes no longer up",
            lambda: all(n["state"] != "up" for n in status()["nodes"] if n["site"] == "site-c"),
            120,
        )
        (src / "partition" / "during.txt").write_text("written while site-c was cut off\n")
        os.chmod(src / "partition" / "during.txt", 0o644)
        b3 = backup_summary(client("backup", "/src", "--json"))
        log(f"backup 3 (during the partition): snapshot {b3['snapshot_id'][:8]}; status: " + describe(status()))

        log("heal the partition")
        for s in SITES["site-c"]:
            run(["docker", "network", "connect", "--alias", s, wan, container(s)])
        t = time.monotonic()
        wait_until("full redundancy after the partition heals", lambda: full_redundancy(status()), 300, 2)
        log(f"full redundancy {time.monotonic() - t:.1f}s after healing: " + describe(status()))

        client("restore", b3["snapshot_id"], "/restore/r3")
        files = same_tree(src, restore / "r3")
        log(f"restore of backup 3: {files} files byte-identical")
        log("compose-test: PASSED")
        return 0
    except (Failed, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
        log(f"compose-test: FAILED: {e}")
        r = compose("logs", "--no-color", "--tail", "60", *DAEMONS, check=False)
        print(r.stdout[-20000:])
        return 1
    finally:
        log("tear down")
        compose("down", "-v", "--remove-orphans", check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
