#!/usr/bin/env python3
"""Deterministic, seeded e-commerce dataset for `make bench`.

Usage:
    gen_dataset.py [--edge] SEED SIZE_MIB OUT_DIR   write the "day 0" tree into OUT_DIR
    gen_dataset.py --mutate DIR [SEED]              apply the "next day" changes to DIR in place

`--edge` (or BENCH_EDGE=1 in the environment) adds the edge cases under
edge/, beyond SIZE_MIB: a file of 150 MB of random bytes, a 64 MiB sparse
file, 0-byte files, symlinks (relative, absolute, dangling, to a directory,
to a symlink) and a directory chain 100 levels deep. `--mutate` changes them
too when edge/ exists.

The same seed and size always give the same bytes (file contents, names and
layout; not timestamps). Every part draws from its own `random.Random`
seeded with a string derived from the seed, so the parts are independent of
each other and of the order in which they are written.

Day 0, by share of SIZE_MIB:
    40%  db/shop.sql         a SQL dump: customers, orders (clustered by
                             customer), order_items; one INSERT per row
    35%  media/products/...  product images: incompressible, 50 KiB to 5 MiB,
                             log-uniform sizes
    20%  logs/access-*.json  JSON web access logs, one file per day
     5%  etc/, templates/    thousands of small config and text files, 1-8 KiB
plus one symlink and one empty directory.

The parts of the tree (which paths are the dump-heavy and the image-heavy
parts of the incremental growth measurement) are named once, in PARTS and
part_of(), which bench/run_bench.py imports.

The next day (`--mutate`), also seeded, changes what a shop changes:
    - new orders and order items inserted at a dozen places in the middle of
      their tables (the dump is clustered by customer), a few more appended,
      and a few order statuses rewritten in place;
    - a few images re-encoded (same size, new bytes) and a few new ones;
    - a new day of access logs and an error log;
    - about 2% of the small files edited, 1% deleted, 0.5% added;
    - with the edge cases: 1 MiB rewritten in the middle of the random file,
      4 KiB written into a hole of the sparse file, the deepest file edited,
      one more empty file and one more symlink.
The mutation is meant to be applied once to a fresh copy of day 0.
"""
import math
import os
import random
import sys

MIB = 1 << 20
KIB = 1 << 10

SQL_SHARE = 0.40
IMAGE_SHARE = 0.35
LOG_SHARE = 0.20
SMALL_SHARE = 0.05
LOG_DAYS = 14

FIRST = ["Ada", "Ben", "Chloe", "Dmitri", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kenji", "Lena",
         "Malik", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe"]
LAST = ["Martin", "Schmidt", "Rossi", "Garcia", "Novak", "Kowalski", "Dubois", "Jensen", "Silva", "Costa",
        "Nguyen", "Okafor", "Tanaka", "Larsen", "Moreau", "Fischer", "Romero", "Ivanova", "Keller", "Brown"]
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Warsaw", "Lisbon", "Vienna", "Prague", "Oslo", "Dublin",
          "Lyon", "Milan", "Porto", "Gdansk", "Munich", "Seville", "Ghent", "Turin", "Bergen", "Cork"]
STATUSES = ["shipped", "shipped", "shipped", "delivered", "delivered", "paid", "cancelled", "refunded"]
PATHS = ["/", "/cart", "/checkout", "/search", "/account", "/api/v2/cart", "/api/v2/stock", "/static/app.js",
         "/static/app.css", "/login", "/logout", "/wishlist"]
METHODS = ["GET", "GET", "GET", "GET", "POST", "GET", "PUT"]
CODES = [200, 200, 200, 200, 200, 304, 304, 302, 404, 500]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
          "curl/8.5.0", "Googlebot/2.1 (+http://www.google.com/bot.html)"]
WORDS = ("order product price stock warehouse shipping carrier invoice refund customer account email "
         "discount coupon cart checkout payment gateway timeout retry cache region currency tax vat "
         "template banner footer header locale translation size colour material weight").split()

DAY0_EPOCH = 1763942400  # 2025-11-24T00:00:00Z: the dump's "today".

# The parts of the tree, by top-level directory: the dump-heavy part (the SQL
# dump), the image-heavy part (product images) and the edge cases; the rest
# (logs, small files) is "other". The growth measurement backs up the
# directories of GROWTH_PARTS separately, and the ideal growth is summed per
# part with part_of().
PARTS = {"dump": "db", "image": "media", "edge": "edge"}
GROWTH_PARTS = ("dump", "image")
EDGE_RANDOM_BYTES = 150 * 1000 * 1000
EDGE_SPARSE_BYTES = 64 * MIB
EDGE_DEPTH = 100


def part_of(rel):
    """The part a path relative to the dataset's root belongs to."""
    top = rel.replace(os.sep, "/").split("/", 1)[0]
    for name, d in PARTS.items():
        if top == d:
            return name
    return "other"


def rng_for(seed, part):
    """An independent, deterministic stream per part (str seeds hash with SHA-512)."""
    return random.Random("coffer-bench/%s/%s" % (seed, part))


def timestamp(epoch):
    days, rem = divmod(epoch, 86400)
    # Civil date from days since 1970-01-01 (proleptic Gregorian), to avoid
    # any dependence on the local time zone.
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y += m <= 2
    return "%04d-%02d-%02d %02d:%02d:%02d" % (y, m, d, rem // 3600, rem // 60 % 60, rem % 60)


# ---------------------------------------------------------------- SQL dump

def customer_row(rng, cid):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return "INSERT INTO customers VALUES (%d, '%s.%s%d@example.com', '%s %s', '%s', '%s');\n" % (
        cid, first.lower(), last.lower(), cid, first, last, rng.choice(CITIES),
        timestamp(DAY0_EPOCH - rng.randrange(3 * 365 * 86400)))


def order_row(rng, oid, cid, epoch, status=None):
    return "INSERT INTO orders VALUES (%d, %d, '%s', %.2f, '%s', '%s');\n" % (
        oid, cid, status or rng.choice(STATUSES), rng.randrange(500, 90000) / 100, rng.choice(CITIES),
        timestamp(epoch))


def item_rows(rng, oid):
    out = []
    for line in range(1, rng.randrange(2, 6)):
        out.append("INSERT INTO order_items VALUES (%d, %d, 'SKU-%06d', %d, %.2f);\n" % (
            oid, line, rng.randrange(999999), rng.randrange(1, 4), rng.randrange(199, 25000) / 100))
    return out


def write_sql(seed, path, budget):
    """Customers ~15%, orders ~35%, order items ~50% of the dump."""
    rng = rng_for(seed, "sql")
    with open(path, "w") as f:
        head = ("-- shop database dump, generated for the coffer benchmark (seed %s)\n"
                "SET client_encoding = 'UTF8';\n\n"
                "CREATE TABLE customers (id bigint PRIMARY KEY, email text, name text, city text, "
                "created_at timestamp);\n") % seed
        f.write(head)
        written = len(head)
        cid = 0
        while written < budget * 0.15:
            batch = []
            for _ in range(2000):
                cid += 1
                batch.append(customer_row(rng, cid))
            s = "".join(batch)
            f.write(s)
            written += len(s)
        customers = cid
        s = ("\nCREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status text, total numeric(10,2), "
             "ship_city text, created_at timestamp);\n-- clustered on customer_id\n")
        f.write(s)
        written += len(s)
        # Orders are dumped in physical order, which follows the clustering on
        # customer_id; ids are not monotonic in the file. Items follow in
        # order id order, so a day's new orders land in the middle of both.
        oid, target_orders = 0, budget * 0.50
        cust = 0
        order_ids = []
        while written < target_orders:
            batch = []
            for _ in range(2000):
                cust = min(customers, cust + rng.randrange(0, 2))
                oid += 1 + rng.randrange(3)
                order_ids.append(oid)
                batch.append(order_row(rng, oid, max(1, cust), DAY0_EPOCH - rng.randrange(2 * 365 * 86400)))
            s = "".join(batch)
            f.write(s)
            written += len(s)
        s = ("\nCREATE TABLE order_items (order_id bigint, line int, sku text, qty int, price numeric(10,2));\n")
        f.write(s)
        written += len(s)
        order_ids.sort()
        i = 0
        while written < budget and i < len(order_ids):
            batch = []
            for oid_ in order_ids[i:i + 1000]:
                batch.extend(item_rows(rng, oid_))
            i += 1000
            s = "".join(batch)
            f.write(s)
            written += len(s)
        while written < budget:  # more items than orders can carry: reuse ids
            s = "".join(item_rows(rng, rng.choice(order_ids)) for _ in range(1000))
            f.write(s)
            written += len(s)
        tail = "\n-- dump complete\n"
        f.write(tail)


# ---------------------------------------------------------------- images

def image_sizes(rng, budget):
    lo, hi = math.log(50 * KIB), math.log(5 * MIB)
    sizes, total = [], 0
    while total < budget:
        size = int(math.exp(rng.uniform(lo, hi)))
        sizes.append(size)
        total += size
    return sizes


def write_images(seed, root, budget):
    rng = rng_for(seed, "images")
    for i, size in enumerate(image_sizes(rng, budget)):
        d = os.path.join(root, "p%05d" % (i // 4))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "%s.jpg" % ["main", "side", "zoom", "thumb"][i % 4]), "wb") as f:
            f.write(rng.randbytes(size))


# ---------------------------------------------------------------- logs

def log_lines(rng, day_epoch, budget):
    out, written, t = [], 0, 0.0
    # Requests arrive as a Poisson process spread over the day; a line is
    # about 260 bytes.
    mean_gap = 86400 * 260 / max(budget, 1)
    while written < budget:
        t += rng.expovariate(1 / mean_gap)
        epoch = day_epoch + min(int(t), 86399)
        ts = timestamp(epoch).replace(" ", "T")
        path = rng.choice(PATHS) if rng.random() < 0.4 else "/product/%d" % rng.randrange(20000)
        line = ('{"ts":"%s.%03dZ","ip":"%d.%d.%d.%d","method":"%s","path":"%s","status":%d,"bytes":%d,'
                '"ms":%d,"ua":"%s","session":"%016x"}\n') % (
            ts, int(t * 1000) % 1000, rng.randrange(1, 224), rng.randrange(256), rng.randrange(256),
            rng.randrange(1, 255), rng.choice(METHODS), path, rng.choice(CODES), rng.randrange(200, 250000),
            rng.randrange(1, 1500), rng.choice(AGENTS), rng.getrandbits(64))
        out.append(line)
        written += len(line)
    return "".join(out)


def write_logs(seed, root, budget):
    per_day = budget / LOG_DAYS
    for day in range(LOG_DAYS):
        rng = rng_for(seed, "log-%d" % day)
        epoch = DAY0_EPOCH - (LOG_DAYS - day) * 86400
        name = "access-%s.json" % timestamp(epoch)[:10]
        with open(os.path.join(root, name), "w") as f:
            f.write(log_lines(rng, epoch, per_day))


# ---------------------------------------------------------------- small files

def small_file_text(rng, kind):
    target = rng.randrange(1 * KIB, 8 * KIB)
    lines = []
    size = 0
    while size < target:
        if kind == "ini":
            line = "%s_%s = %d\n" % (rng.choice(WORDS), rng.choice(WORDS), rng.randrange(10 ** 6))
        elif kind == "yaml":
            line = "%s:\n  %s: %s\n  enabled: %s\n" % (rng.choice(WORDS), rng.choice(WORDS), rng.randrange(10 ** 5),
                                                      rng.choice(["true", "false"]))
        else:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 16))).capitalize() + ".\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)[:target]


def small_file_path(root, i):
    kind = ["ini", "yaml", "txt"][i % 3]
    if kind == "txt":
        return kind, os.path.join(root, "templates", "lang%02d" % (i % 17), "t%05d.txt" % i)
    return kind, os.path.join(root, "etc", "svc%02d" % (i % 40), "conf%05d.%s" % (i, kind))


def write_small(seed, root, budget):
    rng = rng_for(seed, "small")
    written, i = 0, 0
    while written < budget:
        kind, path = small_file_path(root, i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = small_file_text(rng, kind)
        with open(path, "w") as f:
            f.write(text)
        written += len(text)
        i += 1


def generate(seed, size_mib, out, edge=False):
    total = size_mib * MIB
    for d in ["db", "media/products", "logs", "etc", "templates", "empty/dir"]:
        os.makedirs(os.path.join(out, d), exist_ok=True)
    write_sql(seed, os.path.join(out, "db", "shop.sql"), total * SQL_SHARE)
    write_images(seed, os.path.join(out, "media", "products"), total * IMAGE_SHARE)
    write_logs(seed, os.path.join(out, "logs"), total * LOG_SHARE)
    write_small(seed, out, total * SMALL_SHARE)
    link = os.path.join(out, "db", "latest.sql")
    if not os.path.lexists(link):
        os.symlink("shop.sql", link)
    if edge:
        write_edge(seed, out)


# ---------------------------------------------------------------- edge cases

def deep_dir(root):
    return os.path.join(root, "edge", "deep", *("d%02d" % i for i in range(EDGE_DEPTH)))


def write_edge(seed, root):
    """The edge cases, beyond the size budget (see the module's doc)."""
    rng = rng_for(seed, "edge")
    edge = os.path.join(root, "edge")
    os.makedirs(edge, exist_ok=True)
    with open(os.path.join(edge, "random-150MB.bin"), "wb") as f:
        left = EDGE_RANDOM_BYTES
        while left > 0:
            n = min(left, 8 * MIB)
            f.write(rng.randbytes(n))
            left -= n
    # A sparse file: holes with a few written blocks, at the start, in the
    # middle and at the very end.
    with open(os.path.join(edge, "sparse-64MiB.img"), "wb") as f:
        f.truncate(EDGE_SPARSE_BYTES)
        for at in (0, 16 * MIB + 12345, EDGE_SPARSE_BYTES - 4096):
            f.seek(at)
            f.write(rng.randbytes(4096))
    empty = os.path.join(edge, "empty")
    os.makedirs(os.path.join(empty, "dir-with-only-empty-files"), exist_ok=True)
    for p in ("zero.bin", "zero.txt", "dir-with-only-empty-files/a", "dir-with-only-empty-files/b"):
        open(os.path.join(empty, p), "wb").close()
    deep = deep_dir(root)
    os.makedirs(deep, exist_ok=True)
    with open(os.path.join(deep, "leaf.txt"), "w") as f:
        f.write("the bottom of a %d-level directory chain (seed %s)\n" % (EDGE_DEPTH, seed))
    open(os.path.join(deep, "empty-leaf"), "wb").close()
    links = os.path.join(edge, "links")
    os.makedirs(links, exist_ok=True)
    for name, target in (("relative", "../random-150MB.bin"), ("absolute", "/etc/hostname"),
                         ("dangling", "does-not-exist"), ("to-dir", "../deep"), ("to-link", "relative"),
                         ("to-empty", "../empty/zero.txt")):
        p = os.path.join(links, name)
        if not os.path.lexists(p):
            os.symlink(target, p)


def mutate_edge(rng, root):
    edge = os.path.join(root, "edge")
    with open(os.path.join(edge, "random-150MB.bin"), "r+b") as f:
        f.seek(EDGE_RANDOM_BYTES // 2)
        f.write(rng.randbytes(MIB))
    with open(os.path.join(edge, "sparse-64MiB.img"), "r+b") as f:
        f.seek(32 * MIB)
        f.write(rng.randbytes(4096))
    with open(os.path.join(deep_dir(root), "leaf.txt"), "a") as f:
        f.write("edited the next day\n")
    open(os.path.join(edge, "empty", "new-empty"), "wb").close()
    os.symlink("../empty/new-empty", os.path.join(edge, "links", "new-link"))


# ---------------------------------------------------------------- next day

def mutate_sql(rng, path):
    with open(path, "rb") as f:
        data = f.read()
    orders_at = data.index(b"\nCREATE TABLE orders")
    items_at = data.index(b"\nCREATE TABLE order_items")
    end_at = data.rindex(b"\n-- dump complete")
    max_id = 0
    # The largest order id sits near the end of the (id-sorted) items table.
    for line in data[max(items_at, end_at - 4096):end_at].split(b"\n"):
        if line.startswith(b"INSERT INTO order_items VALUES ("):
            max_id = max(max_id, int(line[32:line.index(b",")]))
    new_bytes = len(data) * 0.0125  # about 0.5% of the whole tree
    spots = 12
    edits = []  # (offset, bytes to insert), applied from the end
    oid = max_id + 1000
    now = DAY0_EPOCH + 86400

    def line_start(lo, hi):
        at = rng.randrange(lo, hi)
        return data.index(b"\n", at) + 1

    # New orders for existing customers land where their customer's orders are.
    new_orders = []
    for _ in range(spots):
        at = line_start(orders_at + 200, items_at - 200)
        chunk = []
        size = 0
        while size < new_bytes * 0.4 / (spots + 1):
            oid += 1
            new_orders.append(oid)
            row = order_row(rng, oid, rng.randrange(1, 10 ** 5), now - rng.randrange(86400), "paid")
            chunk.append(row)
            size += len(row)
        edits.append((at, "".join(chunk).encode()))
    # Their items land in the middle of the items table too (in a real dump
    # they would follow the order's position in the heap).
    per_spot = max(1, len(new_orders) // spots)
    for s in range(spots):
        at = line_start(items_at + 200, end_at - 200)
        rows = []
        for o in new_orders[s * per_spot:(s + 1) * per_spot]:
            rows.extend(item_rows(rng, o))
        edits.append((at, "".join(rows).encode()))
    # A few more appended at the end of each table, as a log-ordered table would.
    tail_orders = "".join(order_row(rng, oid + 1 + i, rng.randrange(1, 10 ** 5), now, "paid") for i in range(200))
    edits.append((items_at, tail_orders.encode()))
    edits.append((end_at, "".join(r for i in range(200) for r in item_rows(rng, oid + 1 + i)).encode()))

    # Some statuses change in place: shipped -> delivered.
    replaces = []
    for _ in range(20):
        at = line_start(orders_at + 200, items_at - 200)
        eol = data.index(b"\n", at)
        if b"'shipped'" in data[at:eol]:
            replaces.append((at, eol))

    out = bytearray(data)
    # Apply from the end so earlier offsets stay valid. Inserts go at line
    # starts and a replace rewrites within one line; at a shared offset the
    # replace goes first, so it rewrites the original line, not inserted rows.
    ops = [(at, 1, ins) for at, ins in edits] + [(at, 0, eol) for at, eol in replaces]
    ops.sort(key=lambda op: (op[0], op[1] == 0), reverse=True)
    for at, kind, arg in ops:
        if kind == 1:
            out[at:at] = arg
        else:
            out[at:arg] = bytes(out[at:arg]).replace(b"'shipped'", b"'delivered'")
    with open(path, "wb") as f:
        f.write(out)


def mutate_images(rng, root):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    changed = rng.sample(files, min(len(files), max(3, len(files) // 100)))
    for p in sorted(changed):
        size = os.path.getsize(p)
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))
    lo, hi = math.log(50 * KIB), math.log(5 * MIB)
    d = os.path.join(root, "new-%s" % timestamp(DAY0_EPOCH + 86400)[:10])
    os.makedirs(d, exist_ok=True)
    for i in range(max(2, len(files) // 200)):
        with open(os.path.join(d, "p%03d.jpg" % i), "wb") as f:
            f.write(rng.randbytes(int(math.exp(rng.uniform(lo, hi)))))


def mutate_logs(rng, root):
    files = sorted(os.listdir(root))
    per_day = os.path.getsize(os.path.join(root, files[0])) if files else 64 * KIB
    epoch = DAY0_EPOCH
    with open(os.path.join(root, "access-%s.json" % timestamp(epoch)[:10]), "w") as f:
        f.write(log_lines(rng, epoch, per_day))
    with open(os.path.join(root, "error-%s.json" % timestamp(epoch)[:10]), "w") as f:
        f.write(log_lines(rng, epoch, per_day / 20))


def mutate_small(rng, root):
    files = sorted(os.path.join(d, f) for top in ("etc", "templates")
                   for d, _, fs in os.walk(os.path.join(root, top)) for f in fs)
    if not files:
        return
    picked = rng.sample(files, max(2, len(files) * 3 // 100))
    edit, delete = picked[:len(picked) * 2 // 3], picked[len(picked) * 2 // 3:]
    for p in sorted(edit):
        with open(p) as f:
            text = f.read()
        at = rng.randrange(len(text) + 1)
        text = text[:at] + "updated_%s = %d\n" % (rng.choice(WORDS), rng.randrange(10 ** 6)) + text[at:]
        with open(p, "w") as f:
            f.write(text)
    for p in sorted(delete):
        os.remove(p)
    start = 10 ** 5
    for i in range(max(1, len(files) // 200)):
        kind, path = small_file_path(root, start + i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(small_file_text(rng, kind))


def mutate(seed, root):
    rng = rng_for(seed, "next-day")
    mutate_sql(rng, os.path.join(root, "db", "shop.sql"))
    mutate_images(rng, os.path.join(root, "media", "products"))
    mutate_logs(rng, os.path.join(root, "logs"))
    mutate_small(rng, root)
    if os.path.isdir(os.path.join(root, "edge")):
        mutate_edge(rng_for(seed, "next-day-edge"), root)


def usage():
    sys.stderr.write(__doc__)
    sys.exit(2)


def edge_from_env():
    return os.environ.get("BENCH_EDGE", "") not in ("", "0")


def main(argv):
    edge = edge_from_env()
    if "--edge" in argv:
        argv = [a for a in argv if a != "--edge"]
        edge = True
    if len(argv) >= 2 and argv[1] == "--mutate":
        if len(argv) not in (3, 4):
            usage()
        mutate(argv[3] if len(argv) == 4 else "1", argv[2])
    elif len(argv) == 4:
        try:
            size = int(argv[2])
        except ValueError:
            usage()
        generate(argv[1], size, argv[3], edge)
    else:
        usage()


if __name__ == "__main__":
    main(sys.argv)
