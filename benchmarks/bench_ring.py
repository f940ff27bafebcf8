#!/usr/bin/env python3
"""
Throughput of txuring's Ring: noops and 4 KiB page-cache reads, raw and through
C{ring.syscall_result} Deferreds on a running Twisted epoll reactor (driven by
L{txuring.RingDriver}), against C{os.pread} in Twisted's thread pool and plain
synchronous C{os.pread}.

    .venv/bin/python benchmarks/bench_ring.py            # ~1 minute
    .venv/bin/python benchmarks/bench_ring.py --quick    # ~10 s

Each measurement runs for a fixed wall time and counts completed operations; the
phases are interleaved (rep 1 of every phase, then rep 2, ...) so drift in the
machine's speed spreads over all of them, and the table gives the median of the reps
(with min and max). Nothing here asserts on time: it prints numbers.

Phases:
  ring noop, sync     Ring.noop() x batch, then submit/cqe_ready/fill_completions
                      until the batch is back. No reactor, no Deferred: the raw cost.
  ring read, sync     the same with Ring.read() of 4 KiB at random offsets.
  reactor noop K=k    k noops in flight on the reactor; each syscall_result Deferred's
                      callback starts the next one.
  reactor read K=k    the same with 4 KiB ring.read() at random offsets.
  threadpool pread    k os.pread(fd, 4096, off) in flight through
                      twisted.internet.threads.deferToThread, the pool sized to k.
  os.pread, sync      os.pread in a plain loop: the floor (no concurrency at all).
"""

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if "twisted.internet.reactor" not in sys.modules:  # importable by other scripts
    from twisted.internet import epollreactor

    epollreactor.install()

import twisted  # noqa: E402
from twisted.internet import defer, reactor, threads  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

import txuring  # noqa: E402
from txuring import Ring, RingDriver  # noqa: E402

from _stats import fmt_rate, fmt_ratio, fmt_us, ratio, summarize, table  # noqa: E402

perf_counter = time.perf_counter

BLOCK = 4096
QUEUE_DEPTH = 256
SYNC_BATCH = 64


# ---- the file ----

def make_file(directory, size):
    """A temp file of C{size} random bytes, read once so that it is in the page cache."""
    fd, path = tempfile.mkstemp(prefix="txuring-bench-", dir=directory)
    try:
        chunk = os.urandom(1 << 20)
        for _ in range(size // len(chunk)):
            os.write(fd, chunk)
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)
    return path


class Offsets:
    """Random block-aligned offsets, precomputed so that drawing one is cheap."""

    def __init__(self, size, seed=1, count=1 << 16):
        rng = random.Random(seed)
        blocks = size // BLOCK
        self._offsets = [rng.randrange(blocks) * BLOCK for _ in range(count)]
        self._mask = count - 1
        self._i = 0

    def next(self):
        self._i = (self._i + 1) & self._mask
        return self._offsets[self._i]


# ---- synchronous phases ----

def sync_ring_noop(ring, seconds, batch=SYNC_BATCH):
    noop, submit, cqe_ready, fill = ring.noop, ring.submit, ring.cqe_ready, ring.fill_completions
    n = 0
    t0 = perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(batch):
            noop()
        submit()
        got = 0
        while got < batch:
            cqe_ready(None)
            got += fill()
        n += batch
        if perf_counter() >= deadline:
            break
    return n, perf_counter() - t0, None


def sync_ring_read(ring, fd, offsets, seconds, batch=SYNC_BATCH):
    bufs = [bytearray(BLOCK) for _ in range(batch)]
    read, submit, cqe_ready, fill = ring.read, ring.submit, ring.cqe_ready, ring.fill_completions
    nxt = offsets.next
    n = 0
    t0 = perf_counter()
    deadline = t0 + seconds
    while True:
        handles = [read(fd, buf, nxt()) for buf in bufs]
        submit()
        got = 0
        while got < batch:
            cqe_ready(None)
            got += fill()
        for h in handles:
            if h.result != BLOCK:
                raise RuntimeError("short or failed read: %r" % (h,))
        n += batch
        if perf_counter() >= deadline:
            break
    return n, perf_counter() - t0, None


def sync_pread(fd, offsets, seconds, step=256):
    pread, nxt = os.pread, offsets.next
    n = 0
    t0 = perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(step):
            if len(pread(fd, BLOCK, nxt())) != BLOCK:
                raise RuntimeError("short pread")
        n += step
        if perf_counter() >= deadline:
            break
    return n, perf_counter() - t0, None


# ---- reactor phases ----

class Heartbeat:
    """
    A timer every C{interval} seconds on the reactor, recording how late it ran: the
    worst lag says how long the reactor went without running its timers (and so its
    other I/O) while a phase kept it busy.
    """

    def __init__(self, interval=0.005):
        self.interval = interval
        self.max_lag = 0.0
        self._due = perf_counter() + interval
        self._call = reactor.callLater(interval, self._beat)

    def _beat(self):
        now = perf_counter()
        self.max_lag = max(self.max_lag, now - self._due)
        self._due = now + self.interval
        self._call = reactor.callLater(self.interval, self._beat)

    def stop(self):
        """Stop; a beat still waiting counts with the lag it has reached so far."""
        if self._call.active():
            self._call.cancel()
            self.max_lag = max(self.max_lag, perf_counter() - self._due)
        return self.max_lag


def in_flight(start_op, k, seconds):
    """
    Keep C{k} operations in flight on the running reactor: C{start_op(slot)} returns a
    Deferred; each completion starts the next op in its slot until C{seconds} passed.
    Fires with (completed ops, seconds from the first start to the last completion,
    the reactor's worst timer lag meanwhile in seconds).
    """
    result = Deferred()
    beat = Heartbeat()
    t0 = perf_counter()
    deadline = t0 + seconds
    state = [0, 0]  # completed, in flight

    def launch(slot):
        state[1] += 1
        start_op(slot).addCallbacks(completed, failed, callbackArgs=(slot,))

    def completed(_, slot):
        state[0] += 1
        state[1] -= 1
        if perf_counter() < deadline and not result.called:
            launch(slot)
        elif state[1] == 0 and not result.called:
            elapsed = perf_counter() - t0
            result.callback((state[0], elapsed, beat.stop()))

    def failed(f):
        state[1] -= 1
        if not result.called:
            beat.stop()
            result.errback(f)

    for slot in range(k):
        launch(slot)
    return result


def reactor_noop(ring, k, seconds):
    def start(slot):
        return ring.syscall_result(ring.noop())
    return in_flight(start, k, seconds)


def reactor_read(ring, fd, offsets, k, seconds):
    bufs = [bytearray(BLOCK) for _ in range(k)]
    read, result, nxt = ring.read, ring.syscall_result, offsets.next

    def check(n):
        if n != BLOCK:
            raise RuntimeError("short read: %r" % (n,))

    def start(slot):
        return result(read(fd, bufs[slot], nxt())).addCallback(check)
    return in_flight(start, k, seconds)


def threadpool_pread(fd, offsets, k, seconds):
    reactor.getThreadPool().adjustPoolsize(minthreads=k, maxthreads=k)
    pread, nxt, defer_to_thread = os.pread, offsets.next, threads.deferToThread

    def check(data):
        if len(data) != BLOCK:
            raise RuntimeError("short pread")

    def start(slot):
        return defer_to_thread(pread, fd, BLOCK, nxt()).addCallback(check)
    return in_flight(start, k, seconds)


# ---- the run ----

def phases(ks):
    """(key, label, k) in table order."""
    out = [("ring_noop_sync", "ring noop, sync batch %d" % SYNC_BATCH, "-")]
    out += [("reactor_noop_%d" % k, "reactor noop (syscall_result)", k) for k in ks]
    out += [("ring_read_sync", "ring read 4K, sync batch %d" % SYNC_BATCH, "-")]
    out += [("reactor_read_%d" % k, "reactor read 4K (syscall_result)", k) for k in ks]
    out += [("pool_pread_%d" % k, "threadpool os.pread 4K", k) for k in ks]
    out += [("pread_sync", "os.pread 4K, sync loop", 1)]
    return out


@defer.inlineCallbacks
def run_all(args, path, results, lags, meta):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    sync_ring = Ring(queue_depth=QUEUE_DEPTH)
    ring = Ring(queue_depth=QUEUE_DEPTH)
    driver = RingDriver(ring, reactor)
    offsets = Offsets(args.file_mib << 20)
    meta["setup_flags"] = ring.stats()["setup_flags"]
    meta["sync_setup_flags"] = sync_ring.stats()["setup_flags"]
    table_phases = phases(args.k)

    def run(key, seconds):
        kind, _, k = key.rpartition("_")
        if key == "ring_noop_sync":
            return defer.succeed(sync_ring_noop(sync_ring, seconds))
        if key == "ring_read_sync":
            return defer.succeed(sync_ring_read(sync_ring, fd, offsets, seconds))
        if key == "pread_sync":
            return defer.succeed(sync_pread(fd, offsets, seconds))
        k = int(k)
        if kind == "reactor_noop":
            return reactor_noop(ring, k, seconds)
        if kind == "reactor_read":
            return reactor_read(ring, fd, offsets, k, seconds)
        if kind == "pool_pread":
            return threadpool_pread(fd, offsets, k, seconds)
        raise AssertionError(key)

    try:
        # Warm-up: every phase once, briefly, untimed (thread start-up, caches).
        for key, *_ in table_phases:
            yield run(key, min(0.2, args.seconds / 2))
        for rep in range(args.reps):
            for key, *_ in table_phases:
                n, elapsed, lag = yield run(key, args.seconds)
                results.setdefault(key, []).append(n / elapsed)
                if lag is not None:
                    lags.setdefault(key, []).append(lag * 1e3)
            print("  rep %d/%d done" % (rep + 1, args.reps), file=sys.stderr, flush=True)
        meta["ring_stats"] = ring.stats()
    finally:
        yield ring.drain()  # nothing is left in flight unless a phase failed
        driver.detach()
        ring.exit()
        sync_ring.exit()
        os.close(fd)


def report(args, results, lags, meta, command):
    med = {key: summarize(v)["median"] for key, v in results.items()}
    rows = []
    for key, label, k in phases(args.k):
        s = summarize(results[key])
        lag = "{:.1f}".format(summarize(lags[key])["median"]) if key in lags else "-"
        rows.append([label, str(k), fmt_rate(s["median"]), fmt_rate(s["min"]),
                     fmt_rate(s["max"]), fmt_us(s["median"]), lag])
    print()
    print("command:  %s" % command)
    print("system:   Linux %s, %d CPUs, Python %s, Twisted %s, txuring %s"
          % (platform.release(), os.cpu_count(), platform.python_version(),
             twisted.__version__, txuring.__version__))
    print("ring:     queue_depth %d, setup_flags %s, reactor epoll + RingDriver"
          % (QUEUE_DEPTH, "|".join(meta["setup_flags"]) or "none"))
    print("run:      %d reps x %.2f s per phase, %d MiB file (page cache warm), "
          "random 4 KiB-aligned offsets" % (args.reps, args.seconds, args.file_mib))
    print()
    print(table(["phase", "K", "median ops/s", "min", "max", "us/op", "lag ms"], rows))
    print("(lag ms: median over reps of the worst lateness of a 5 ms reactor timer "
          "during the phase)")
    print()
    ratio_rows = [["noop: reactor syscall_result K=%d / sync Ring" % k,
                   fmt_ratio(ratio(med["reactor_noop_%d" % k], med["ring_noop_sync"]))]
                  for k in args.k]
    ratio_rows += [["read: reactor syscall_result / threadpool, K=%d" % k,
                    fmt_ratio(ratio(med["reactor_read_%d" % k], med["pool_pread_%d" % k]))]
                   for k in args.k]
    ratio_rows += [["read: reactor syscall_result K=%d / sync os.pread" % k,
                    fmt_ratio(ratio(med["reactor_read_%d" % k], med["pread_sync"]))]
                   for k in args.k]
    ratio_rows += [["read: threadpool K=%d / sync os.pread" % k,
                    fmt_ratio(ratio(med["pool_pread_%d" % k], med["pread_sync"]))]
                   for k in args.k]
    ratio_rows += [["read: sync Ring batch / sync os.pread",
                    fmt_ratio(ratio(med["ring_read_sync"], med["pread_sync"]))]]
    print(table(["ratio of medians", "value"], ratio_rows))
    st = meta.get("ring_stats")
    if st:
        per = st["enters"] / st["completed"] if st["completed"] else 0
        print()
        print("reactor ring, all phases: %d ops completed, %d io_uring_enter calls "
              "(%.2f per op), "
              "%d backlogged" % (st["completed"], st["enters"], per, st["backlogged"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="3 reps of 0.15 s, 16 MiB file (about 10 s)")
    p.add_argument("--reps", type=int, help="repetitions per phase (default 5)")
    p.add_argument("--seconds", type=float, help="wall time per rep (default 0.8)")
    p.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")],
                   help="in-flight counts, comma-separated (default 1,16,64)")
    p.add_argument("--file-mib", type=int, help="file size in MiB (default 64)")
    p.add_argument("--dir", default=None, help="directory for the temp file")
    p.add_argument("--json", metavar="PATH", help="also write every rep's figures here")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.seconds is None:
        args.seconds = 0.15 if args.quick else 0.8
    if args.k is None:
        args.k = [1, 16, 64]
    if args.file_mib is None:
        args.file_mib = 16 if args.quick else 64
    if args.reps < 1 or args.seconds <= 0 or args.file_mib < 1 or min(args.k) < 1:
        p.error("reps, seconds, file-mib and k must be positive")
    if max(args.k) > QUEUE_DEPTH:
        p.error("k must be at most %d (the ring's queue depth)" % QUEUE_DEPTH)

    command = " ".join([os.path.relpath(sys.executable)] + sys.argv)
    path = make_file(args.dir, args.file_mib << 20)
    results, lags, meta, failure = {}, {}, {}, []
    t_start = perf_counter()

    def go():
        d = run_all(args, path, results, lags, meta)
        d.addErrback(failure.append)
        d.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(go)
        reactor.run()
    finally:
        os.unlink(path)
    if failure:
        failure[0].printTraceback(file=sys.stderr)
        return 1
    report(args, results, lags, meta, command)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "args": vars(args), "meta": meta,
                       "ops_per_s": results, "lag_ms": lags}, f, indent=1)
    print("\n(total %.1f s)" % (perf_counter() - t_start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
