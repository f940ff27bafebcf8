#!/usr/bin/env python3
"""
txuring.fs against Twisted's usual ways to touch files: the same calls through
C{deferToThread} (the reactor's thread pool), and plain blocking calls in the reactor
thread; on UringReactor (the reactor's ring) and on EPollReactor (a private ring
attached with RingDriver). One subprocess per reactor.

    .venv/bin/python benchmarks/bench_fs.py                 # ~1-2 minutes
    .venv/bin/python benchmarks/bench_fs.py --quick         # ~20 s
    .venv/bin/python benchmarks/bench_fs.py --file-mib 1024 --files 10000   # the issue's sizes

Workloads (ops/s; median of --reps runs, phases interleaved):
  randread K=k   4 KiB reads at random offsets of a page-cached file, k in flight:
                 File.read(4096, offset) / deferToThread(os.pread) (pool sized to k) /
                 os.pread in a loop (no concurrency: k does not apply).
  seqread 1M     1 MiB sequential reads of the same file, 4 in flight.
  read_file      read_file of --files small files (1 KiB), 32 in flight.
  stat           stat of the same paths, 32 in flight.
  write atomic   write_file(atomic=True) of --atomic small files, 32 in flight; the
                 thread and blocking forms do the same steps (temp, write, fsync, rename,
                 fsync of the directory).
Nothing here asserts: it prints numbers.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _stats import fmt_rate, fmt_ratio, ratio, summarize, table  # noqa: E402

BLOCK = 4096


def child(args):
    if args.child == "uring":
        from txuring import reactor as uring

        uring.install()
    else:
        from twisted.internet import epollreactor

        epollreactor.install()
    from twisted.internet import defer, reactor, threads

    from txuring import fs as txfs

    fs = txfs.filesystem()
    work = tempfile.mkdtemp(prefix="bench_fs.", dir=args.dir)
    big = os.path.join(work, "big")
    size = args.file_mib << 20
    with open(big, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.file_mib):
            f.write(chunk)
    with open(big, "rb") as f:  # into the page cache
        while f.read(8 << 20):
            pass
    small = []
    for i in range(args.files):
        p = os.path.join(work, "s%05d" % (i,))
        with open(p, "wb") as f:
            f.write(os.urandom(1024))
        small.append(p)
    results = {}

    def record(name, ops, seconds):
        results.setdefault(name, []).append(ops / seconds)

    async def bounded(k, n, start):
        """Run start(i) for i in range(n) with k in flight; returns seconds."""
        it = iter(range(n))
        t0 = time.perf_counter()

        async def lane():
            for i in it:
                await start(i)

        await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(k)])
        return time.perf_counter() - t0

    def offsets(n):
        return [random.randrange(0, size // BLOCK) * BLOCK for _ in range(n)]

    async def main():
        fd = os.open(big, os.O_RDONLY)
        f = await fs.open(big)
        pool = reactor.getThreadPool()
        for rep in range(args.reps):
            for k in (1, 32, 256):
                n = args.reads * (4 if k > 1 else 1)
                offs = offsets(n)
                s = await bounded(k, n, lambda i: f.read(BLOCK, offset=offs[i]))
                record("randread K=%d/txuring" % k, n, s)
                pool.adjustPoolsize(k, k)
                s = await bounded(k, n, lambda i: threads.deferToThread(
                    os.pread, fd, BLOCK, offs[i]))
                record("randread K=%d/threads" % k, n, s)
            offs = offsets(args.reads)
            t0 = time.perf_counter()
            for o in offs:
                os.pread(fd, BLOCK, o)
            s = time.perf_counter() - t0
            for k in (1, 32, 256):
                record("randread K=%d/blocking" % k, args.reads, s)
            pool.adjustPoolsize(0, 10)  # Twisted's default pool from here on
            n = size >> 20
            s = await bounded(4, n, lambda i: f.read(1 << 20, offset=i << 20))
            record("seqread 1M/txuring", n, s)
            s = await bounded(4, n, lambda i: threads.deferToThread(
                os.pread, fd, 1 << 20, i << 20))
            record("seqread 1M/threads", n, s)
            t0 = time.perf_counter()
            for i in range(n):
                os.pread(fd, 1 << 20, i << 20)
            record("seqread 1M/blocking", n, time.perf_counter() - t0)

            s = await bounded(32, len(small), lambda i: fs.read_file(small[i]))
            record("read_file/txuring", len(small), s)
            s = await bounded(32, len(small), lambda i: threads.deferToThread(
                _read, small[i]))
            record("read_file/threads", len(small), s)
            t0 = time.perf_counter()
            for p in small:
                _read(p)
            record("read_file/blocking", len(small), time.perf_counter() - t0)

            s = await bounded(32, len(small), lambda i: fs.stat(small[i]))
            record("stat/txuring", len(small), s)
            s = await bounded(32, len(small), lambda i: threads.deferToThread(
                os.stat, small[i]))
            record("stat/threads", len(small), s)
            t0 = time.perf_counter()
            for p in small:
                os.stat(p)
            record("stat/blocking", len(small), time.perf_counter() - t0)

            targets = small[:args.atomic]
            data = b"x" * 512
            s = await bounded(32, len(targets), lambda i: fs.write_file(
                targets[i], data, atomic=True))
            record("write atomic/txuring", len(targets), s)
            s = await bounded(32, len(targets), lambda i: threads.deferToThread(
                _atomic, targets[i], data))
            record("write atomic/threads", len(targets), s)
            t0 = time.perf_counter()
            for p in targets:
                _atomic(p, data)
            record("write atomic/blocking", len(targets), time.perf_counter() - t0)
        await f.close()
        os.close(fd)

    try:
        d = defer.ensureDeferred(main())
        out = []
        d.addBoth(out.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
        if out and hasattr(out[0], "raiseException"):
            out[0].raiseException()
    finally:
        subprocess.run(["rm", "-rf", work])
    print("RESULTS " + json.dumps({"backend": fs.kind, "results": results}))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _atomic(path, data):
    d, base = os.path.split(path)
    tmp = os.path.join(d, ".%s.%d.tmp" % (base, random.getrandbits(48)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def parent(args):
    passthrough = ["--file-mib", str(args.file_mib), "--files", str(args.files),
                   "--atomic", str(args.atomic), "--reads", str(args.reads),
                   "--reps", str(args.reps)] + (["--dir", args.dir] if args.dir else [])
    everything = {}
    for reactor_name in ("uring", "epoll"):
        proc = subprocess.run([sys.executable, __file__, "--child", reactor_name]
                              + passthrough, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
        if proc.returncode or not line:
            sys.exit("%s run failed:\n%s%s" % (reactor_name, proc.stdout, proc.stderr))
        everything[reactor_name] = json.loads(line[0][8:])
    workloads = []
    for name in everything["uring"]["results"]:
        w = name.split("/")[0]
        if w not in workloads:
            workloads.append(w)
    rows = []
    for reactor_name, data in everything.items():
        res = data["results"]
        for w in workloads:
            med = {how: summarize(res[w + "/" + how])["median"]
                   for how in ("txuring", "threads", "blocking")}
            rows.append(["%s %s" % (reactor_name, w), fmt_rate(med["txuring"]),
                         fmt_rate(med["threads"]), fmt_rate(med["blocking"]),
                         fmt_ratio(ratio(med["txuring"], med["threads"])),
                         fmt_ratio(ratio(med["txuring"], med["blocking"]))])
    print("file of %d MiB, %d small files, %d atomic writes, %d reps; ops/s (medians)"
          % (args.file_mib, args.files, args.atomic, args.reps))
    print(table(["reactor workload", "txuring.fs", "deferToThread", "blocking",
                 "vs threads", "vs blocking"], rows))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=("uring", "epoll"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--file-mib", type=int, default=256)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--atomic", type=int, default=300)
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the files go (default: $TMPDIR)")
    args = p.parse_args()
    if args.quick:
        args.file_mib, args.files, args.atomic, args.reads, args.reps = 64, 500, 100, 5000, 1
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
