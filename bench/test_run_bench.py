"""A fast self-check of the `make bench` harness (part of `make test`):
the statistics, the restore verification, the ideal-growth bookkeeping,
the target rows and the verdict over several datasets, on synthetic
inputs. No network, no cluster, no other backup tool; a second or so.

    python3 -m unittest discover -s bench -p 'test_*.py'
"""
import os
import shutil
import tempfile
import unittest

import gen_dataset
import run_bench as rb

MIB = 1 << 20


def step(wall, cpu=1.0, rss=100.0, cluster=None):
    m = {"wall_s": wall, "cpu_s": cpu, "rss_mib": rss, "mib_s": 100.0 / wall}
    if cluster is not None:
        # coffer's steps carry the client's JSON summary.
        m["cluster_cpu_s"] = cluster
        m["summary"] = {"stages": {"read": {"seconds": 1.0, "bytes": 10}}, "duration_s": wall, "bytes_read": 10,
                        "bytes_new": 5, "bytes_stored": 4, "chunks_new": 1, "chunks_reused": 1, "packs": 1}
    return m


def tool_run(b1, b2, r, stored, growth, cluster=None, degraded=None):
    steps = {"backup1": step(b1, cluster=cluster), "backup2": step(b2, cluster=cluster),
             "restore": step(r, cluster=cluster)}
    if degraded is not None:
        steps["restore_degraded"] = step(degraded)
    return {"steps": steps, "stored": {"bytes": stored}, "growth_bytes": growth, "verified": True, "extra": {}}


class Stats(unittest.TestCase):
    def test_median_and_spread_ignore_missing_values(self):
        self.assertEqual(rb.stat3([3, None, 1, 2]), {"median": 2, "spread": [1, 3], "n": 3})
        self.assertEqual(rb.stat3([None]), {"median": None, "spread": None, "n": 0})

    def test_summarise_adds_spreads_beside_the_medians(self):
        runs = [{"coffer": tool_run(10, 2, 5, 100, 7, cluster=1.0, degraded=6)},
                {"coffer": tool_run(14, 4, 7, 100, 9, cluster=3.0, degraded=8)},
                {"coffer": {"error": "boom", "steps": {}, "extra": {}}}]
        med = rb.summarise(runs, ["coffer"])["coffer"]
        self.assertEqual(med["runs_ok"], 2)
        self.assertEqual(med["backup1"]["wall_s"], 12)
        self.assertEqual(med["spread"]["backup1"]["wall_s"], [10, 14])
        self.assertEqual(med["restore_degraded"]["wall_s"], 7)
        self.assertEqual(med["spread"]["growth_bytes"], [7, 9])


class Verify(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.a = os.path.join(self.dir, "a")
        os.makedirs(os.path.join(self.a, "deep", "er"))
        os.makedirs(os.path.join(self.a, "empty-dir"))
        open(os.path.join(self.a, "empty"), "wb").close()
        with open(os.path.join(self.a, "deep", "er", "f"), "w") as f:
            f.write("hello")
        with open(os.path.join(self.a, "sparse"), "wb") as f:
            f.truncate(4 * MIB)
            f.seek(MIB)
            f.write(b"x" * 10)
        os.symlink("deep/er/f", os.path.join(self.a, "link"))
        os.symlink("deep", os.path.join(self.a, "dirlink"))
        os.symlink("nowhere", os.path.join(self.a, "dangling"))
        self.b = os.path.join(self.dir, "b")
        shutil.copytree(self.a, self.b, symlinks=True)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_identical_trees_match(self):
        self.assertEqual(rb.verify_tree(self.a, self.b), [])

    def test_a_changed_symlink_target_is_found(self):
        os.remove(os.path.join(self.b, "link"))
        os.symlink("deep/er", os.path.join(self.b, "link"))
        self.assertIn("link", rb.verify_tree(self.a, self.b)[0])

    def test_a_symlink_restored_as_a_file_is_found(self):
        os.remove(os.path.join(self.b, "dangling"))
        open(os.path.join(self.b, "dangling"), "wb").close()
        self.assertIn("symlink in the source, file", rb.verify_tree(self.a, self.b)[0])

    def test_missing_empty_file_and_directory_are_found(self):
        os.remove(os.path.join(self.b, "empty"))
        os.rmdir(os.path.join(self.b, "empty-dir"))
        diffs = rb.verify_tree(self.a, self.b)
        self.assertEqual(len(diffs), 2, diffs)

    def test_a_byte_in_a_sparse_file_is_found(self):
        with open(os.path.join(self.b, "sparse"), "r+b") as f:
            f.seek(3 * MIB)
            f.write(b"y")
        self.assertIn("sparse", rb.verify_tree(self.a, self.b)[0])

    def test_deep_content_and_extra_entries_are_found(self):
        with open(os.path.join(self.b, "deep", "er", "f"), "w") as f:
            f.write("hellO")
        open(os.path.join(self.b, "extra"), "wb").close()
        diffs = rb.verify_tree(self.a, self.b)
        self.assertEqual(len(diffs), 2, diffs)


class Ideal(unittest.TestCase):
    def test_changed_and_new_files_are_summed_by_part(self):
        d = tempfile.mkdtemp()
        try:
            day0, day1 = os.path.join(d, "0"), os.path.join(d, "1")
            for root in (day0, day1):
                for sub in ("db", "media", "logs"):
                    os.makedirs(os.path.join(root, sub))
            files = {"db/shop.sql": (b"a" * 100, b"a" * 90 + b"b" * 10),
                     "media/same.jpg": (b"s" * 50, b"s" * 50),
                     "media/new.jpg": (None, b"n" * 30),
                     "logs/gone.json": (b"g" * 10, None)}
            for rel, (old, new) in files.items():
                for root, data in ((day0, old), (day1, new)):
                    if data is not None:
                        with open(os.path.join(root, rel), "wb") as f:
                            f.write(data)
            os.symlink("shop.sql", os.path.join(day1, "db", "latest.sql"))
            calls = []

            def fake(args):
                calls.append(args)
                return 7 if any(a.startswith("--patch-from=") for a in args) else 3

            ideal = rb.ideal_growth(day0, day1, fake)
            self.assertEqual(ideal["parts"]["dump"]["bytes"], 7)
            self.assertEqual(ideal["parts"]["dump"]["changed_files"], 1)
            self.assertEqual(ideal["parts"]["image"], {"bytes": 3, "changed_files": 0, "new_files": 1,
                                                       "changed_source_bytes": 0, "new_source_bytes": 30})
            self.assertEqual(ideal["total"]["bytes"], 10)
            self.assertEqual(len(calls), 2)
            patch = [a for a in calls if "--long=27" in a][0]
            self.assertIn("--patch-from=" + os.path.join(day0, "db", "shop.sql"), patch)
        finally:
            shutil.rmtree(d)

    @unittest.skipUnless(shutil.which("zstd"), "zstd not installed")
    def test_a_patch_is_smaller_than_the_file(self):
        d = tempfile.mkdtemp()
        try:
            old, new = os.path.join(d, "old"), os.path.join(d, "new")
            data = os.urandom(256 * 1024)
            with open(old, "wb") as f:
                f.write(data)
            with open(new, "wb") as f:
                f.write(data[:1000] + b"changed" + data[1000:])
            patch = rb.zstd_size(["-19", "--long=27", "--patch-from=" + old, new])
            whole = rb.zstd_size(["-19", new])
            self.assertLess(patch, whole // 10)
        finally:
            shutil.rmtree(d)

    def test_parts_are_named_in_one_place(self):
        self.assertEqual(gen_dataset.part_of("db/shop.sql"), "dump")
        self.assertEqual(gen_dataset.part_of("media/products/p00001/main.jpg"), "image")
        self.assertEqual(gen_dataset.part_of("edge/links/relative"), "edge")
        self.assertEqual(gen_dataset.part_of("logs/access.json"), "other")
        for p in gen_dataset.GROWTH_PARTS:
            self.assertIn(p, gen_dataset.PARTS)


class Targets(unittest.TestCase):
    def setUp(self):
        # Two runs: coffer 4x faster at first backup in run 1, 2x in run 2.
        self.runs = [
            {"coffer": tool_run(10, 2, 5, 90, 9, cluster=20.0, degraded=4),
             "restic": tool_run(40, 10, 20, 100, 20), "borg": tool_run(60, 12, 30, 110, 25)},
            {"coffer": tool_run(20, 3, 5, 95, 9, cluster=20.0, degraded=4),
             "restic": tool_run(40, 10, 20, 100, 20), "borg": tool_run(60, 12, 30, 110, 25)},
        ]
        self.extra = [{"growth": {"coffer": {"parts": {"dump": 4, "image": 100}},
                                  "restic": {"parts": {"dump": 10, "image": 100}}},
                       "rebuild": {"ratio_to_disk": 0.6, "mb_s": 60, "disk": {"mb_s": 100}}}] * 2
        self.ideal = {"parts": {"dump": {"bytes": 1}, "image": {"bytes": 50}}}

    def targets(self):
        med = rb.summarise(self.runs, ["coffer", "restic", "borg"])
        xmed = rb.summarise_extras(self.extra)
        _, targets = rb.ratios_and_targets(med, self.runs, xmed, self.extra, self.ideal, {"base": 1 << 30})
        return {(t["issue"], t["target"]): t for t in targets}

    def test_speed_rows_use_medians_and_per_run_spreads(self):
        t = self.targets()
        first = t[(17, "first backup >= 2.5x the faster of restic and borg")]
        self.assertEqual(first["against"], "restic")
        self.assertAlmostEqual(first["value"], 40 / 15)
        self.assertEqual(first["spread"], [2.0, 4.0])
        self.assertTrue(first["met"])
        self.assertTrue(t[(6, "first backup >= 2x the faster of restic and borg")]["met"])
        incr = t[(17, "incremental (second backup) <= 0.4x the faster one's time")]
        self.assertAlmostEqual(incr["value"], 0.25)
        self.assertTrue(incr["met"])

    def test_cpu_growth_degraded_and_rebuild_rows(self):
        t = self.targets()
        cpu = t[(17, "agent + cluster CPU per GiB of first backup <= 3.5 s")]
        self.assertAlmostEqual(cpu["value"], 21.0)
        self.assertFalse(cpu["met"])
        self.assertTrue(t[(17, "incremental growth, dump part: <= half of restic's")]["met"])
        dump_ideal = t[(17, "incremental growth, dump part: <= 3x the ideal")]
        self.assertEqual(dump_ideal["value"], 4)
        self.assertFalse(dump_ideal["met"])
        self.assertTrue(t[(17, "incremental growth, image part: <= 3x the ideal")]["met"])
        self.assertFalse(t[(17, "incremental growth, image part: <= half of restic's")]["met"])
        deg = t[(17, "full restore with one site stopped >= 1.5x the faster peer's healthy restore")]
        self.assertAlmostEqual(deg["value"], 5.0)
        self.assertTrue(t[(17, "rebuild of one lost node >= 50% of the disk's sequential write speed")]["met"])

    def test_a_restore_that_differs_fails_every_target(self):
        self.assertTrue(self.targets()[(17, "first backup >= 2.5x the faster of restic and borg")]["met"])
        self.runs[1]["coffer"]["verified_degraded"] = False
        t = self.targets()
        self.assertFalse(t[(17, "first backup >= 2.5x the faster of restic and borg")]["met"])
        self.assertFalse(t[(17, "every coffer restore identical to the source (healthy and with a site stopped)")]
                         ["met"])
        self.assertFalse(any(row["met"] for row in t.values()))

    def test_the_restore_floor_is_the_restored_bytes_over_the_disk_speed(self):
        report = {"medians": rb.summarise(self.runs, ["coffer", "restic", "borg"]),
                  "extras": rb.summarise_extras(self.extra),
                  "config": {"source_bytes": {"base": 1 << 30, "mutated": 500_000_000}}}
        self.assertIsNone(rb.restore_floor(report), "no disk measured, no floor")
        for e in self.extra:
            e["disk"] = {"mb_s": 125}
        report["extras"] = rb.summarise_extras(self.extra)
        floor = rb.restore_floor(report)
        self.assertAlmostEqual(floor["floor_s"], 4.0)
        # coffer restores in 5 s, the others slower: the floor bounds them.
        self.assertTrue(floor["binding"])
        # restic, the faster peer, restores in 20 s.
        self.assertAlmostEqual(floor["max_restore_speedup"], 5.0)

    def test_a_restore_faster_than_the_floor_means_the_disk_does_not_bound_the_run(self):
        report = {"medians": rb.summarise(self.runs, ["coffer", "restic", "borg"]),
                  "config": {"source_bytes": {"base": 1 << 30, "mutated": 500_000_000}}}
        for e in self.extra:
            e["disk"] = {"mb_s": 5}
        report["extras"] = rb.summarise_extras(self.extra)
        floor = rb.restore_floor(report)
        # 100 s by the probe, but every tool restores faster than that.
        self.assertAlmostEqual(floor["floor_s"], 100.0)
        self.assertFalse(floor["binding"])
        self.assertIsNone(floor["max_restore_speedup"])
        self.assertLess(floor["fastest_restore_s"], 100.0)

    def test_a_failed_peer_leaves_the_other(self):
        for r in self.runs:
            r["restic"] = {"error": "boom", "steps": {}, "extra": {}}
        t = self.targets()
        self.assertEqual(t[(17, "first backup >= 2.5x the faster of restic and borg")]["against"], "borg")


class Verdict(unittest.TestCase):
    def report(self, rows):
        return {"targets": [{"target": name, "issue": 17, "against": None, "value": 1.0, "unit": "x",
                             "required": ">= 1", "met": met, "spread": [1.0, 1.0]} for name, met in rows]}

    def test_met_only_if_met_on_every_dataset(self):
        reports = [("a", self.report([("x", True), ("y", True), ("z", None)])),
                   ("b", self.report([("x", True), ("y", False), ("z", None)])),
                   ("c", self.report([("x", True)]))]
        out = {r["target"]: r for r in rb.combine_verdicts(reports)}
        self.assertTrue(out["x"]["met"])
        self.assertFalse(out["y"]["met"])
        self.assertEqual(out["y"]["missing"], ["c"])
        self.assertFalse(out["z"]["met"])
        self.assertIn("| x ", rb.render_verdict(rb.combine_verdicts(reports), [
            (label, dict(r, config={"seed": label, "mib": 1, "runs": 1, "started": "now"}))
            for label, r in reports]))

    def test_seeds_parse(self):
        self.assertEqual(rb.parse_seeds("default,7:edge", "42"),
                         [("seed-42", "42", False), ("seed-7-edge", "7", True)])
        with self.assertRaises(ValueError):
            rb.parse_seeds("7:sparse", "42")
        with self.assertRaises(ValueError):
            rb.parse_seeds("7,7", "42")




class Trash(unittest.TestCase):
    def test_a_retired_tree_is_out_of_the_way_truncated_and_deleted_at_the_end(self):
        with tempfile.TemporaryDirectory() as d:
            outside = os.path.join(d, "outside")
            with open(outside, "wb") as f:
                f.write(b"x" * 5000)
            tree = os.path.join(d, "restore")
            os.makedirs(os.path.join(tree, "sub"))
            for name, data in [("a", b"a" * 10000), ("sub/b", b"b" * 3), ("sub/empty", b"")]:
                with open(os.path.join(tree, name), "wb") as f:
                    f.write(data)
            os.chmod(os.path.join(tree, "sub/b"), 0o444)
            os.symlink(outside, os.path.join(tree, "link"))
            trash = rb.Trash()
            trash.retire(tree)
            trash.retire(os.path.join(d, "absent"))
            self.assertFalse(os.path.lexists(tree))
            [retired] = trash.paths
            self.assertTrue(retired.startswith(tree + ".retired-"))
            self.assertEqual(os.path.getsize(os.path.join(retired, "a")), 0)
            self.assertEqual(os.path.getsize(os.path.join(retired, "sub/b")), 0)
            # A symlink is never followed: what it points to is untouched.
            self.assertEqual(os.path.getsize(outside), 5000)
            # The same path retired again gets a name of its own.
            os.makedirs(tree)
            trash.retire(tree)
            self.assertEqual(len(trash.paths), 2)
            self.assertEqual(len(set(trash.paths)), 2)
            trash.empty()
            self.assertEqual(sorted(os.listdir(d)), ["outside"])
            self.assertEqual(trash.paths, [])

    def test_a_tree_retired_inside_a_retired_one_is_deleted_once(self):
        with tempfile.TemporaryDirectory() as d:
            work = os.path.join(d, "work")
            os.makedirs(os.path.join(work, "src"))
            trash = rb.Trash()
            trash.retire(os.path.join(work, "src"))
            trash.retire(work)
            self.assertEqual(len(trash.paths), 1)
            self.assertTrue(trash.paths[0].startswith(work + ".retired-"))
            trash.empty()
            self.assertEqual(os.listdir(d), [])

if __name__ == "__main__":
    unittest.main()
