"""
Scenarios of tests/stress that happen inside the reactor's own process (a ring's CQ
overflowing, a reactor stopped with thousands of ops in flight, files changing under
txuring.fs), each run in a subprocess on the reactor named on the command line:

    python stress_scenarios.py SCENARIO REACTOR [JSON_PARAMS]

prints one JSON line, the scenario's figures, last. A crash, a hang (the test's
timeout) or a traceback fails the test that ran it.

On UringReactor a scenario uses the reactor's own ring (C{reactor.ring}); on any other
reactor, a L{txuring.Ring} driven by L{txuring.RingDriver}: the same ops either way.
"""

import errno
import json
import os
import random
import resource
import socket
import sys
import threading
import time


def install(name):
    if name == "uring":
        from txuring.reactor import install as install_uring

        install_uring()
    elif name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()
    else:
        raise SystemExit("unknown reactor %r" % (name,))
    from twisted.internet import reactor

    return reactor


def fd_count():
    return len(os.listdir("/proc/self/fd")) - 1


def ring_for(reactor):
    """(ring, driver or None): the reactor's ring on uring, else an attached one."""
    import txuring

    ring = getattr(reactor, "ring", None)
    if isinstance(ring, txuring.Ring):
        return ring, None
    ring = txuring.Ring(64, start_disabled=True)
    return ring, txuring.RingDriver(ring, reactor)


def run_until(reactor, condition, timeout):
    """Run the reactor until C{condition()} (checked every 10 ms) or C{timeout}."""
    from twisted.internet import task

    deadline = time.monotonic() + timeout

    def check():
        if condition() or time.monotonic() > deadline:
            loop.stop()
            reactor.stop()

    loop = task.LoopingCall(check)
    reactor.callWhenRunning(loop.start, 0.01)
    reactor.run()
    return condition()


# ---- CQ overflow on a tiny ring ----

def cq_overflow(reactor, ops=2000, rounds=5):
    """
    A Ring with a 2-entry SQ and a 2-entry CQ, driven by the reactor (RingDriver), gets
    C{ops} ops per round (noops, zero timeouts, reads of a pipe with data) submitted from
    one callback, with no harvest in between: the CQ overflows (the kernel keeps the
    extra CQEs on its overflow list, IORING_FEAT_NODROP, 5.5). Every op must complete
    once, with its own result.
    """
    import txuring

    ring = txuring.Ring(2, cq_depth=2, start_disabled=True)
    driver = txuring.RingDriver(ring, reactor)
    import tempfile

    f = tempfile.TemporaryFile()
    f.write(b"0123456789abcdef" * 64)
    f.flush()
    fd = f.fileno()
    results = {}
    expected = {}
    peak = {"active": 0, "cq_ready": 0, "cq_overflow": 0}
    state = {"round": 0}

    def burst():
        state["round"] += 1
        base = len(expected)
        for i in range(base, base + ops):
            kind = i % 3
            if kind == 0:
                h = ring.noop()
                expected[i] = 0
            elif kind == 1:
                h = ring.timeout(0)
                expected[i] = -errno.ETIME
            else:
                h = ring.read(fd, bytearray(16), 16 * (i % 64))
                expected[i] = 16
            d = ring.syscall_result(h)
            d.addBoth(lambda res, i=i, h=h: results.setdefault(i, []).append(h.result))
        ring.submit()
        stats = ring.stats()
        peak["active"] = max(peak["active"], ring.active_ops)
        peak["cq_ready"] = max(peak["cq_ready"], stats["cq_ready"])
        peak["cq_overflow"] = max(peak["cq_overflow"], stats["cq_overflow"])
        if state["round"] < rounds:
            reactor.callLater(0, burst)

    reactor.callWhenRunning(burst)
    run_until(reactor, lambda: len(results) == ops * rounds and not ring.active_ops,
              timeout=120)
    wrong = [i for i in expected if results.get(i) != [expected[i]]]
    driver.detach()
    ring.exit()
    f.close()
    return {"ops": len(expected), "completed": len(results), "wrong": len(wrong),
            "first_wrong": [(i, results.get(i), expected[i]) for i in wrong[:5]],
            "sq_entries": ring.queue_depth, "cq_entries": ring.cq_depth,
            "peak_in_flight": peak["active"], "peak_cq_ready": peak["cq_ready"],
            "cq_dropped": peak["cq_overflow"]}


# ---- a reactor stopped with thousands of ops in flight ----

def stop_in_flight(reactor, conns=300, ops=1000):
    """
    C{conns} TCP connections to the reactor's own listening port (both ends here) and
    C{ops} io_uring ops that will never complete by themselves (hour-long timeouts,
    reads and polls of an empty pipe, a multishot recv with a BufferRing that has
    delivered data), then C{reactor.stop()}. Afterwards: every connection was told
    connectionLost (Twisted disconnects all at shutdown), every op's Deferred fired once
    (completed or cancelled), every provided buffer is back, and the ring is closed (on
    UringReactor by C{reactor.close()}); no fd is left over.
    """
    import txuring
    from twisted.internet import protocol

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * conns + ops + 100),
                                                max(hard, 4 * conns + ops + 100)))
    made, lost = [], []

    class P(protocol.Protocol):
        def connectionMade(self):
            made.append(self)

        def connectionLost(self, reason):
            lost.append(reason.type.__name__)

    server_factory = protocol.Factory.forProtocol(P)
    port = reactor.listenTCP(0, server_factory, backlog=4096, interface="127.0.0.1")
    # (after the listening port: Twisted's tcp keeps one fd in reserve for EMFILE)
    fds_before = fd_count()
    client_factory = protocol.ClientFactory.forProtocol(P)
    for _ in range(conns):
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)

    ring, driver = ring_for(reactor)
    outcomes = {}
    fired = []
    r, w = os.pipe()
    a, b = socket.socketpair()
    state = {}

    def note(result, h):
        fired.append(h)
        key = type(result.value).__name__ if hasattr(result, "value") else "ok"
        if hasattr(result, "value") and getattr(result.value, "errno", None):
            key += ":" + errno.errorcode.get(result.value.errno, "?")
        outcomes[key] = outcomes.get(key, 0) + 1

    handles = []

    def start_ops():
        bufs = state["bufs"] = txuring.BufferRing(ring, 16, 256)
        got = state["got"] = bytearray()

        def on_recv(res, flags):
            if res > 0:
                got.extend(bufs.take(res, flags))

        h = ring.recv_multishot(b.fileno(), bufs, on_recv)
        handles.append(h)
        ring.syscall_result(h).addBoth(note, h)
        a.sendall(b"x" * 1000)  # some buffers used and handed back before the stop
        for i in range(ops):
            kind = i % 3
            if kind == 0:
                h = ring.timeout(3600)
            elif kind == 1:
                h = ring.read(r, bytearray(64), -1)
            else:
                h = ring.poll_add(r, 1)
            handles.append(h)
            ring.syscall_result(h).addBoth(note, h)
        # Stop once every connection is up and the ops are submitted.
        def maybe_stop():
            if len(made) >= 2 * conns and len(state["got"]) == 1000:
                state["in_flight_at_stop"] = ring.active_ops
                state["bufs_lent_at_stop"] = bufs.lent
                reactor.stop()
            else:
                reactor.callLater(0.01, maybe_stop)
        maybe_stop()

    reactor.callWhenRunning(start_ops)
    deadline = reactor.callLater(120, reactor.stop)
    reactor.run()
    timed_out = not deadline.active()
    if deadline.active():
        deadline.cancel()
    bufs = state["bufs"]
    if driver is None:
        reactor.close()  # cancels what is in flight, waits for the kernel, closes
    else:
        # The stopped reactor drives nothing: answer the cancels here, then close.
        drained = []
        ring.drain().addBoth(drained.append)
        end = time.monotonic() + 10
        while not drained and time.monotonic() < end:
            ring.cqe_ready(0.1)
            ring.fill_completions()
        driver.detach()
        lent = bufs.lent
        bufs.close()
        ring.exit()
    lent_after = 0 if bufs.closed else bufs.lent
    not_done = sum(1 for h in handles if not h.done)
    os.close(r)
    os.close(w)
    a.close()
    b.close()
    fds_after = fd_count()
    if os.environ.get("STRESS_DEBUG_FDS"):
        for fd in os.listdir("/proc/self/fd"):
            try:
                print(fd, os.readlink("/proc/self/fd/" + fd), file=sys.stderr)
            except OSError:
                pass
    return {"conns": conns, "ops": len(handles), "timed_out": timed_out,
            "in_flight_at_stop": state.get("in_flight_at_stop"),
            "bufs_lent_at_stop": state.get("bufs_lent_at_stop"),
            "connections_made": len(made), "connections_lost": len(lost),
            "lost_reasons": sorted(set(lost)), "fired": len(fired),
            "fired_twice": len(fired) - len(set(map(id, fired))),
            "outcomes": outcomes, "not_done": not_done, "bufs_lent_after": lent_after,
            "ring_closed": ring.closed, "fds_before": fds_before, "fds_after": fds_after}


# ---- files changing under txuring.fs ----

RECORD = 32


def record(file_id, version, index):
    """The 32-byte record at C{index} of version C{version} of file C{file_id}."""
    return b"%06d:%08d:%015d\n" % (file_id, version, index)


def content(file_id, version, size_records):
    return b"".join(record(file_id, version, i) for i in range(size_records))


def valid_read(file_id, data):
    """
    Whether C{data} is what some mix of versions of file C{file_id} could give: record
    k at offset 32k names this file and index k (any version: a file rewritten in place
    during the read mixes them), the last one possibly cut short.
    """
    for k in range(0, len(data), RECORD):
        rec = data[k:k + RECORD]
        template = record(file_id, 0, k // RECORD)
        for j, byte in enumerate(rec):
            if 7 <= j < 15:
                if not 48 <= byte <= 57:
                    return False
            elif byte != template[j]:
                return False
    return True


def fs_race(reactor, files=20, seconds=3.0, outstanding=16, directory=None):
    """
    C{files} files, each deleted, truncated, rewritten in place or replaced by rename
    from a thread as fast as it can, while the reactor keeps C{outstanding} reads
    (C{fs.read_file}, and C{fs.open} + C{File.read} in chunks) going on them. Every
    read either fails with a file error (FileNotFoundError) or gives bytes some mix of
    the file's versions could hold (L{valid_read}); no fd is left over.
    """
    from twisted.internet import defer

    from txuring import fs

    fds_before = fd_count()
    paths = [os.path.join(directory, "f%03d" % i) for i in range(files)]
    for i, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(content(i, 0, 64))
    stop = threading.Event()
    mutations = [0]

    def mutate():
        rng = random.Random(1)
        version = 0
        while not stop.is_set():
            version += 1
            i = rng.randrange(files)
            p = paths[i]
            how = rng.randrange(4)
            size = rng.choice([0, 1, 17, 64, 300])
            try:
                if how == 0:
                    os.unlink(p)
                elif how == 1:
                    # (shrinking only: a longer size would add zeros, no version's bytes)
                    os.truncate(p, min(os.path.getsize(p), rng.randrange(0, 64) * RECORD +
                                       rng.randrange(RECORD)))
                elif how == 2:
                    with open(p, "r+b" if os.path.exists(p) else "wb") as f:
                        f.write(content(i, version, size))
                        f.truncate()
                else:
                    tmp = p + ".tmp"
                    with open(tmp, "wb") as f:
                        f.write(content(i, version, size))
                    os.rename(tmp, p)
            except FileNotFoundError:
                pass
            mutations[0] += 1
            if not os.path.exists(p):
                with open(p, "wb") as f:
                    f.write(content(i, version, size))

    outcomes = {}
    bad = []
    state = {"running": 0, "reads": 0}
    end = time.monotonic() + seconds

    async def read_chunks(path):
        f = await fs.open(path, "rb")
        try:
            parts = []
            while True:
                part = await f.read(1000)
                if not part:
                    break
                parts.append(part)
            return b"".join(parts)
        finally:
            await f.close()

    def one():
        i = random.randrange(files)
        state["running"] += 1
        state["reads"] += 1
        if state["reads"] % 2:
            d = fs.read_file(paths[i])
        else:
            d = defer.ensureDeferred(read_chunks(paths[i]))

        def ok(data):
            if not valid_read(i, data):
                bad.append((i, data[:80]))
            outcomes["read"] = outcomes.get("read", 0) + 1

        def failed(f):
            name = f.type.__name__
            outcomes[name] = outcomes.get(name, 0) + 1
            if not f.check(FileNotFoundError):
                bad.append((i, repr(f.value)))

        d.addCallbacks(ok, failed)
        d.addErrback(lambda f: bad.append((i, "the check raised: %r" % (f.value,))))

        def next_(_):
            state["running"] -= 1
            if time.monotonic() < end:
                one()
        d.addBoth(next_)

    def start():
        threading.Thread(target=mutate, daemon=True).start()
        for _ in range(outstanding):
            one()

    reactor.callWhenRunning(start)
    finished = run_until(reactor, lambda: time.monotonic() >= end and not state["running"],
                         timeout=seconds + 60)
    stop.set()
    for p in paths:
        for q in (p, p + ".tmp"):
            if os.path.exists(q):
                os.unlink(q)
    fds_after = fd_count()
    return {"reads": state["reads"], "outcomes": outcomes, "bad": len(bad),
            "first_bad": [repr(b) for b in bad[:3]], "mutations": mutations[0],
            "finished": finished, "fds_before": fds_before, "fds_after": fds_after}


SCENARIOS = {"cq_overflow": cq_overflow, "stop_in_flight": stop_in_flight,
             "fs_race": fs_race}


def main():
    name, reactor_name = sys.argv[1], sys.argv[2]
    params = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if name == "fs_race":
        try:
            import txuring.fs  # noqa: F401
        except ImportError as e:
            print(json.dumps({"skip": "txuring.fs is not there yet: %s" % (e,)}))
            return
    reactor = install(reactor_name)
    result = SCENARIOS[name](reactor, **params)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
