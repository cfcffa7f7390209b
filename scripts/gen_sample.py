#!/usr/bin/env python3
"""Writes a deterministic, seeded e-commerce sample tree for the demo.

Usage: gen_sample.py DIR [MiB]  (default 96 MiB)
About 40% a SQL dump, 35% incompressible "images", 20% JSON access logs,
5% small config and text files.
"""
import json
import os
import random
import sys


def main() -> None:
    root = sys.argv[1]
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    rng = random.Random(20261124)
    mib = 1 << 20
    os.makedirs(os.path.join(root, "db"), exist_ok=True)
    with open(os.path.join(root, "db", "orders.sql"), "w") as f:
        written, i = 0, 0
        while written < total * 0.40 * mib:
            line = "INSERT INTO orders VALUES (%d, %d, '%s', %.2f, 'shipped');\n" % (
                i, rng.randrange(100000), "SKU-%06d" % rng.randrange(999999), rng.random() * 400)
            f.write(line)
            written += len(line)
            i += 1
    img = os.path.join(root, "media", "products")
    os.makedirs(img, exist_ok=True)
    written, i = 0, 0
    while written < total * 0.35 * mib:
        size = rng.randrange(50 << 10, 5 << 20)
        with open(os.path.join(img, "p%05d.jpg" % i), "wb") as f:
            f.write(rng.randbytes(size))
        written += size
        i += 1
    logs = os.path.join(root, "logs")
    os.makedirs(logs, exist_ok=True)
    for day in range(4):
        with open(os.path.join(logs, "access-%02d.json" % day), "w") as f:
            written = 0
            while written < total * 0.05 * mib:
                line = json.dumps({"ts": 1795000000 + rng.randrange(86400), "path": "/product/%d" % rng.randrange(5000),
                                   "status": rng.choice([200, 200, 200, 304, 404]), "ms": rng.randrange(900)}) + "\n"
                f.write(line)
                written += len(line)
    conf = os.path.join(root, "etc")
    for i in range(int(total * 0.05 * mib / 4096)):
        d = os.path.join(conf, "svc%02d" % (i % 20))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "conf-%04d.ini" % i), "w") as f:
            f.write("".join("key%d = %d\n" % (j, rng.randrange(10 ** 6)) for j in range(rng.randrange(60, 500))))
    os.makedirs(os.path.join(root, "empty", "dir"), exist_ok=True)
    os.symlink("db/orders.sql", os.path.join(root, "latest.sql"))


if __name__ == "__main__":
    main()
