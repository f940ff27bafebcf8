"""
The calls of the state-by-state crash test (tests/test_states.py), and the runner that
makes them.

Every public method and property of L{Ring}, L{BufferRing}, L{Region}, L{Chunk} and
L{RingDriver} is listed here with one way to call it (C{CALLS}), and a category that
says what a call is allowed to do in a state it is not meant for:

  - C{"prop"}: read-only; may answer anything harmless, or raise a clear error.
  - C{"op"}: touches the kernel or the ring's shared memory; must raise a clear error
    (RingClosed after exit, RingForked in a fork child, a RuntimeError naming the
    thread from a thread that is not the ring's issuer).
  - C{"lenient"}: pure bookkeeping or idempotent teardown; may answer or raise a clear
    error.

Why a runner in a subprocess: a call that crashes the interpreter (a segfault on an
unmapped ring) must fail one test, naming the call, not kill pytest. Run as a script,
this module imports txuring once and forks one child per case (so each case starts
from fresh objects in a clean process); the child prints one JSON line before and one
after each call. A child killed by a signal is a crash, and the last call started
without an outcome is the one that crashed. C{signal.alarm} turns a hang into SIGALRM.

    python tests/state_cases.py CASE...       # JSON lines on stdout
"""

import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback

#: Each case child is killed (SIGALRM: reported as a hang) after this many seconds.
CASE_TIMEOUT = 10

CQE_F_BUFFER = 1


def _cb(res, flags):
    pass


# ---- the calls: name -> (category, function of the Env) ----

RING_CALLS = {
    "accept": ("op", lambda e: e.ring.accept(e.listener.fileno())),
    "active_ops": ("prop", lambda e: e.ring.active_ops),
    "bind": ("op", lambda e: e.ring.bind(e.fresh_socket().fileno(), socket.AF_INET,
                                         ("127.0.0.1", 0))),
    "cancel": ("op", lambda e: e.ring.cancel(e.target)),
    "cancel_all": ("op", lambda e: e.ring.cancel_all()),
    "cancel_fd": ("op", lambda e: e.ring.cancel_fd(e.pipe_r)),
    "close": ("op", lambda e: e.ring.close(e.devnull)),
    "closed": ("prop", lambda e: e.ring.closed),
    "connect": ("op", lambda e: e.ring.connect(e.fresh_socket().fileno(), socket.AF_INET,
                                               e.listener.getsockname())),
    "cq_depth": ("prop", lambda e: e.ring.cq_depth),
    "cq_ready": ("prop", lambda e: e.ring.cq_ready),
    "cqe_ready": ("op", lambda e: e.ring.cqe_ready(0)),
    "drain": ("op", lambda e: e.ring.drain()),
    "fallocate": ("op", lambda e: e.ring.fallocate(e.file_fd, 0, 16)),
    "fd": ("prop", lambda e: e.ring.fd),
    "fdatasync": ("op", lambda e: e.ring.fdatasync(e.file_fd)),
    "features": ("prop", lambda e: e.ring.features),
    "fill_completions": ("op", lambda e: e.ring.fill_completions()),
    "fstat": ("op", lambda e: e.ring.fstat(e.file_fd)),
    "fsync": ("op", lambda e: e.ring.fsync(e.file_fd)),
    "ftruncate": ("op", lambda e: e.ring.ftruncate(e.file_fd, 16)),
    "get_probe": ("prop", lambda e: e.ring.get_probe()),
    "has_pending_jobs": ("prop", lambda e: e.ring.has_pending_jobs()),
    "link_timeout": ("op", lambda e: e.ring.link_timeout(1.0)),
    "linkat": ("op", lambda e: e.ring.linkat(e.path, e.tmp + "/hard")),
    "linked": ("op", lambda e: e.enter_linked()),
    "listen": ("op", lambda e: e.ring.listen(e.bound_socket().fileno())),
    "mkdirat": ("op", lambda e: e.ring.mkdirat(e.tmp + "/dir")),
    "noop": ("op", lambda e: e.ring.noop()),
    "on_pending": ("prop", lambda e: e.ring.on_pending),
    "op_supported": ("prop", lambda e: e.ring.op_supported("nop")),
    "openat2": ("op", lambda e: e.ring.openat2(e.path)),
    "poll_add": ("op", lambda e: e.ring.poll_add(e.pipe_r, select.POLLIN)),
    "poll_remove": ("op", lambda e: e.ring.poll_remove(e.target)),
    "queue_depth": ("prop", lambda e: e.ring.queue_depth),
    "read": ("op", lambda e: e.ring.read(e.file_fd, bytearray(8), 0)),
    "read_chunk": ("op", lambda e: e.ring.read_chunk(e.file_fd, e.chunk, 0)),
    "read_fixed": ("op", lambda e: e.ring.read_fixed(e.file_fd, e.chunk, 0)),
    "read_multishot": ("op", lambda e: e.ring.read_multishot(e.pipe_r, e.bufring, _cb)),
    "readv": ("op", lambda e: e.ring.readv(e.file_fd, [bytearray(8)], 0)),
    "recv": ("op", lambda e: e.ring.recv(e.sock_b.fileno(), bytearray(8))),
    "recv_msg": ("op", lambda e: e.ring.recv_msg(e.sock_b.fileno(), [bytearray(8)],
                                                 max_fds=1)),
    "recv_multishot": ("op", lambda e: e.ring.recv_multishot(e.sock_b.fileno(), e.bufring,
                                                             _cb)),
    "register_eventfd": ("op", lambda e: e.ring.register_eventfd(e.spare_eventfd)),
    "renameat": ("op", lambda e: e.ring.renameat(e.tmp + "/a", e.tmp + "/b")),
    "rmdir": ("op", lambda e: e.ring.rmdir(e.tmp + "/nodir")),
    "send": ("op", lambda e: e.ring.send(e.sock_a.fileno(), b"x")),
    "send_msg": ("op", lambda e: e.ring.send_msg(e.sock_a.fileno(), [b"x"])),
    "send_zc": ("op", lambda e: e.ring.send_zc(e.sock_a.fileno(), b"x")),
    "set_iowq_max_workers": ("op", lambda e: e.ring.set_iowq_max_workers(0, 0)),
    "setup_flags": ("prop", lambda e: e.ring.setup_flags),
    "shutdown": ("op", lambda e: e.ring.shutdown(e.fresh_socket().fileno(),
                                                 socket.SHUT_RD)),
    "socket": ("op", lambda e: e.ring.socket(socket.AF_INET, socket.SOCK_STREAM)),
    "splice": ("op", lambda e: e.ring.splice(e.pipe_r, e.pipe2_w, 8)),
    "sqe_ready": ("prop", lambda e: e.ring.sqe_ready),
    "stats": ("prop", lambda e: e.ring.stats()),
    "statx": ("op", lambda e: e.ring.statx(e.path)),
    "submit": ("op", lambda e: e.ring.submit()),
    "supports_ext_arg": ("prop", lambda e: e.ring.supports_ext_arg()),
    "symlinkat": ("op", lambda e: e.ring.symlinkat(e.path, e.tmp + "/sym")),
    "syscall_result": ("lenient", lambda e: e.ring.syscall_result(e.done)),
    "tee": ("op", lambda e: e.ring.tee(e.pipe_r, e.pipe2_w, 8)),
    "timeout": ("op", lambda e: e.ring.timeout(1.0)),
    "timeout_remove": ("op", lambda e: e.ring.timeout_remove(e.target)),
    "unlink": ("op", lambda e: e.ring.unlink(e.tmp + "/nofile")),
    "unlinkat": ("op", lambda e: e.ring.unlinkat(e.tmp + "/nofile")),
    "unregister_eventfd": ("op", lambda e: e.ring.unregister_eventfd()),
    "write": ("op", lambda e: e.ring.write(e.file_fd, b"x", 0)),
    "write_chunk": ("op", lambda e: e.ring.write_chunk(e.file_fd, e.chunk, 0)),
    "write_fixed": ("op", lambda e: e.ring.write_fixed(e.file_fd, e.chunk, 0)),
    "writev": ("op", lambda e: e.ring.writev(e.file_fd, [b"x"], 0)),
    # Last: it ends the ring where it is allowed to.
    "exit": ("op", lambda e: e.ring.exit()),
}

BUFRING_CALLS = {
    "buffer_id": ("prop", lambda e: e.bufring.buffer_id(CQE_F_BUFFER | (1 << 16))),
    "buffer_size": ("prop", lambda e: e.bufring.buffer_size),
    "entries": ("prop", lambda e: e.bufring.entries),
    "group_id": ("prop", lambda e: e.bufring.group_id),
    "view": ("lenient", lambda e: e.bufring.view(4, CQE_F_BUFFER | (1 << 16))),
    "provide": ("op", lambda e: e.bufring.provide(0)),
    # take() copies a CQE's bytes out even after close (the buffers are Python memory):
    # a CQE harvested before another callback closed the group is not lost.
    "take": ("lenient", lambda e: e.bufring.take(4, CQE_F_BUFFER | (2 << 16))),
    "lend": ("lenient", lambda e: e.bufring.lend(4, CQE_F_BUFFER | (3 << 16))),
    "borrow": ("lenient", lambda e: _borrow(e.bufring)),
    "closed": ("prop", lambda e: e.bufring.closed),
    "lent": ("prop", lambda e: e.bufring.lent),
    "close": ("lenient", lambda e: e.bufring.close()),
}


def _borrow(bufring):
    with bufring.borrow(4, CQE_F_BUFFER | (3 << 16)) as view:
        return bytes(view)


def _alloc_and_free(region):
    chunk = region.alloc()
    region.free(chunk)
    return chunk


def _alloc_or_wait_and_free(region):
    d = region.alloc_or_wait()
    d.addCallback(region.free)
    return d


REGION_CALLS = {
    "avail": ("prop", lambda e: e.region.avail),
    "block_size": ("prop", lambda e: e.region.block_size),
    "buf_index": ("prop", lambda e: e.region.buf_index),
    "fixed": ("prop", lambda e: e.region.fixed),
    "closed": ("prop", lambda e: e.region.closed),
    "length": ("prop", lambda e: e.region.length),
    "ring": ("prop", lambda e: e.region.ring),
    "alloc": ("lenient", lambda e: _alloc_and_free(e.region)),
    "alloc_or_wait": ("lenient", lambda e: _alloc_or_wait_and_free(e.region)),
    "free": ("lenient", lambda e: e.region.free(e.chunk)),
    "close": ("lenient", lambda e: e.region.close()),
}

CHUNK_CALLS = {
    "bytes": ("prop", lambda e: e.chunk.bytes(4)),
    "freed": ("prop", lambda e: e.chunk.freed),
    "index": ("prop", lambda e: e.chunk.index),
    "length": ("prop", lambda e: e.chunk.length),
    "memoryview": ("prop", lambda e: e.chunk.memoryview()),
    "offset": ("prop", lambda e: e.chunk.offset),
    "region": ("prop", lambda e: e.chunk.region),
    "free": ("lenient", lambda e: e.chunk.free()),
}

DRIVER_CALLS = {
    "fileno": ("prop", lambda e: e.driver.fileno()),
    "logPrefix": ("prop", lambda e: e.driver.logPrefix()),
    "reactor": ("prop", lambda e: e.driver.reactor),
    "ring": ("prop", lambda e: e.driver.ring),
    "doRead": ("lenient", lambda e: e.driver.doRead()),
    "connectionLost": ("lenient", lambda e: e.driver.connectionLost(None)),
    "detach": ("lenient", lambda e: e.driver.detach()),
}

CALLS = {
    "Ring": RING_CALLS,
    "BufferRing": BUFRING_CALLS,
    "Region": REGION_CALLS,
    "Chunk": CHUNK_CALLS,
    "RingDriver": DRIVER_CALLS,
}

#: Which states each object is tried in (the fork cases try every object at once,
#: one fork child per object, for each ring setup).
STATES = {
    "Ring": ["exited", "linked_exit", "thread"],
    "BufferRing": ["closed", "ring_exited", "thread"],
    "Region": ["closed", "ring_exited", "thread"],
    "Chunk": ["region_closed", "ring_exited", "thread"],
    "RingDriver": ["detached", "ring_exited", "thread"],
}
FORK_SETUPS = ["default", "coop_taskrun", "plain", "sqpoll"]


def all_cases():
    cases = ["%s:%s" % (obj, state) for obj, states in STATES.items() for state in states]
    return cases + ["fork:%s" % (setup,) for setup in FORK_SETUPS]


# ---- the runner (a script: imports txuring only there) ----

def emit(record):
    os.write(1, (json.dumps(record) + "\n").encode())


def describe(value):
    try:
        return repr(value)[:120]
    except Exception:
        return "<unrepresentable>"


class Env:
    """Every object of the five classes, plus the fds and paths their calls use."""

    def __init__(self, setup="default"):
        import txuring
        from twisted.internet.epollreactor import EPollReactor

        kw = {}
        if setup == "sqpoll":
            kw["polling_timeout"] = 50
        elif setup != "default":
            kw["setup"] = setup
        self.ring = txuring.Ring(8, **kw)
        self.tmp = tempfile.mkdtemp(prefix="case-", dir=_BASE_TMP)
        self.path = self.tmp + "/file"
        with open(self.path, "wb") as f:
            f.write(b"0123456789" * 10)
        open(self.tmp + "/a", "wb").close()
        self.file_fd = os.open(self.path, os.O_RDWR)
        self.devnull = os.open("/dev/null", os.O_RDONLY)
        self.pipe_r, self.pipe_w = os.pipe()
        self.pipe2_r, self.pipe2_w = os.pipe()
        self.sock_a, self.sock_b = socket.socketpair()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.spare_eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sockets = []
        self.bufring = txuring.BufferRing(self.ring, 4, 256)
        self.region = txuring.Region(self.ring, 4, 4096)
        self.chunk = self.region.alloc()
        self.reactor = EPollReactor()  # never run: the driver only registers with it
        self.driver = txuring.RingDriver(self.ring, self.reactor)
        self.done = self.ring.noop()
        self.settle()
        self.target = self.done

    def fresh_socket(self):
        s = socket.socket()
        self._sockets.append(s)
        return s

    def bound_socket(self):
        s = self.fresh_socket()
        s.bind(("127.0.0.1", 0))
        return s

    def enter_linked(self):
        with self.ring.linked():
            pass

    def start_target(self):
        """An op that stays in flight (a read of an empty pipe): a live cancel target."""
        self.target = self.ring.read(self.pipe_r, bytearray(8))
        self.ring.submit()

    def settle(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.ring.active_ops:
            if time.monotonic() > deadline:
                raise AssertionError("ops never completed: %d in flight"
                                     % (self.ring.active_ops,))
            self.ring.cqe_ready(0.05)
            self.ring.fill_completions()

    def drain(self):
        if self.ring.active_ops:
            self.ring.drain()
            self.settle()


def call_all(case, obj, env, prefix=""):
    """Make every call of C{obj}'s table on C{env}, with one JSON line before and after."""
    for name, spec in CALLS[obj].items():
        call_one(case, obj, env, name, spec, prefix)


def call_one(case, obj, env, name, spec, prefix=""):
    """One call, with a JSON line before (so a crash names it) and one after."""
    category, fn = spec
    emit({"case": case, "obj": obj, "call": prefix + name, "phase": "start"})
    record = {"case": case, "obj": obj, "call": prefix + name, "phase": "end",
              "category": category}
    try:
        value = fn(env)
    except BaseException as e:
        record.update(outcome="raise", msg=str(e)[:300],
                      mro=["%s.%s" % (c.__module__, c.__qualname__)
                           for c in type(e).__mro__])
    else:
        record.update(outcome="ok", value=describe(value))
    emit(record)


def check(case, name, fn):
    """A check of the main thread's ring after the calls: one JSON line."""
    emit({"case": case, "call": "check:" + name, "phase": "start"})
    try:
        detail = fn()
    except BaseException as e:
        emit({"case": case, "call": "check:" + name, "phase": "check", "ok": False,
              "detail": "%s: %s" % (type(e).__name__, e),
              "tb": traceback.format_exc()[-1500:]})
    else:
        emit({"case": case, "call": "check:" + name, "phase": "check", "ok": True,
              "detail": describe(detail)})


def ring_works(env):
    h = env.ring.noop()
    deadline = time.monotonic() + 3
    while not h.done and time.monotonic() < deadline:
        env.ring.cqe_ready(0.05)
        env.ring.fill_completions()
    assert h.done and h.result == 0, h
    return h


def drain_and_exit(env):
    env.drain()
    env.ring.exit()
    assert env.ring.closed
    return True


# ---- the states ----

def run_closed(case, obj, state):
    env = Env()
    if state in ("exited", "ring_exited"):
        env.drain()
        if obj == "Chunk":
            pass  # the chunk stays allocated: its region is never closed
        env.ring.exit()
    elif state == "closed" and obj == "BufferRing":
        env.bufring.close()
    elif state in ("closed", "region_closed"):  # Region, Chunk
        env.chunk.free()
        env.region.close()
    elif state == "detached":
        env.driver.detach()
        # The eventfd's number is free now: the next fd takes it. A call that closes
        # or reads "its" eventfd again would hit this unrelated file instead.
        env.reused = os.open("/dev/zero", os.O_RDONLY)
    call_all(case, obj, env)
    if state == "exited":
        check(case, "closed_and_fd", lambda: _closed_values(env))
    if state == "detached":
        check(case, "reused_fd_untouched", lambda: os.fstat(env.reused).st_mode)
    if obj != "Ring" and not env.ring.closed:
        check(case, "ring_works", lambda: ring_works(env))
        check(case, "drain_and_exit", lambda: drain_and_exit(env))


def _closed_values(env):
    ring = env.ring
    assert ring.closed is True, ring.closed
    assert ring.fd == -1, ring.fd
    assert ring.active_ops == 0, ring.active_ops
    return True


def run_linked_exit(case, obj, state):
    env = Env()
    emit({"case": case, "call": "linked-block", "phase": "start"})
    try:
        with env.ring.linked():
            env.ring.noop()
            # exit() inside the block, first: the chain's op is not in flight yet, so
            # nothing else stops it; it must be refused (leaving the block would write
            # the chain into an unmapped SQ). Then every call, still inside.
            call_one(case, "Ring", env, "exit-first", RING_CALLS["exit"], "in-linked:")
            call_all(case, "Ring", env, prefix="in-linked:")
    except BaseException as e:
        emit({"case": case, "call": "linked-block", "phase": "end", "category": "lenient",
              "outcome": "raise", "msg": str(e)[:300],
              "mro": ["%s.%s" % (c.__module__, c.__qualname__) for c in type(e).__mro__]})
    else:
        emit({"case": case, "call": "linked-block", "phase": "end", "category": "lenient",
              "outcome": "ok", "value": "None"})
    check(case, "ring_works", lambda: ring_works(env))
    check(case, "drain_and_exit", lambda: drain_and_exit(env))


def run_thread(case, obj, state):
    env = Env()
    env.start_target()
    baseline = (env.ring.active_ops, env.ring.sqe_ready)
    t = threading.Thread(target=call_all, args=(case, obj, env))
    t.start()
    t.join(CASE_TIMEOUT - 2)
    if t.is_alive():
        emit({"case": case, "call": "thread", "phase": "check", "ok": False,
              "detail": "the other thread's calls hung"})
        os._exit(3)

    def nothing_registered():
        now = (env.ring.active_ops, env.ring.sqe_ready)
        assert now == baseline, "(active_ops, sqe_ready) was %r before the other " \
            "thread's calls and is %r after" % (baseline, now)
        return now

    if obj == "Ring":
        check(case, "nothing_registered", nothing_registered)
    check(case, "target_still_in_flight", lambda: _in_flight(env))
    check(case, "ring_works", lambda: ring_works(env))
    check(case, "drain_and_exit", lambda: drain_and_exit(env))


def _in_flight(env):
    assert not env.target.done, env.target
    return env.target


def run_fork(case, setup):
    """
    The parent (this case child) makes every object, with an op in flight and a count
    on the driver's eventfd; one fork child per object makes every call; then the
    parent checks that its ring, buffer ring, region and eventfd all still work.
    """
    env = Env(setup)
    env.start_target()
    os.eventfd_write(env.driver.fileno(), 1)
    for obj in ("Ring", "Chunk", "Region", "BufferRing", "RingDriver"):
        emit({"case": case, "call": "fork-child:" + obj, "phase": "start"})
        pid = os.fork()
        if pid == 0:
            try:
                call_all(case, obj, env, prefix="child:")
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        emit({"case": case, "call": "fork-child:" + obj, "phase": "child-exit",
              "status": status})
    check(case, "eventfd_count_not_stolen", lambda: os.eventfd_read(env.driver.fileno()))
    check(case, "target_still_in_flight", lambda: _in_flight(env))
    check(case, "recv_multishot", lambda: _recv_multishot_works(env))
    check(case, "read_fixed", lambda: _read_fixed_works(env))
    check(case, "ring_works", lambda: ring_works(env))
    check(case, "drain_and_exit", lambda: drain_and_exit(env))


def _recv_multishot_works(env):
    got = []

    def on_cqe(res, flags):
        got.append((res, env.bufring.take(res, flags)))

    h = env.ring.recv_multishot(env.sock_b.fileno(), env.bufring, on_cqe)
    env.ring.submit()
    env.sock_a.send(b"hello")
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        env.ring.cqe_ready(0.05)
        env.ring.fill_completions()
    if not h.done:
        env.ring.cancel(h)
    deadline = time.monotonic() + 3
    while not h.done and time.monotonic() < deadline:
        env.ring.cqe_ready(0.05)
        env.ring.fill_completions()
    assert got and got[0] == (5, b"hello"), "recv_multishot got %r (handle %r)" % (got, h)
    return got[0]


def _read_fixed_works(env):
    os.write(env.pipe2_w, b"fixed")
    h = env.ring.read_fixed(env.pipe2_r, env.chunk, nbytes=5)
    deadline = time.monotonic() + 3
    while not h.done and time.monotonic() < deadline:
        env.ring.cqe_ready(0.05)
        env.ring.fill_completions()
    assert h.done and h.result == 5, "read_fixed ended with %r" % (h,)
    assert env.chunk.bytes(5) == b"fixed", env.chunk.bytes(5)
    return h.result


def run_case(case):
    kind, state = case.split(":")
    if kind == "fork":
        run_fork(case, state)
    elif state == "linked_exit":
        run_linked_exit(case, kind, state)
    elif state == "thread":
        run_thread(case, kind, state)
    else:
        run_closed(case, kind, state)


_BASE_TMP = None  # one directory for every case's files, removed at the end


def main(cases):
    global _BASE_TMP
    import txuring  # noqa: F401  (imported once, before the forks)
    from twisted.internet import epollreactor  # noqa: F401

    _BASE_TMP = tempfile.mkdtemp(prefix="txuring-states-")
    try:
        run_cases(cases)
    finally:
        shutil.rmtree(_BASE_TMP, ignore_errors=True)


def run_cases(cases):
    for case in cases:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.alarm(CASE_TIMEOUT)
                run_case(case)
            except BaseException as e:
                emit({"case": case, "call": "setup", "phase": "check", "ok": False,
                      "detail": "%s: %s" % (type(e).__name__, e),
                      "tb": traceback.format_exc()[-2000:]})
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        emit({"case": case, "phase": "exit", "status": status})


if __name__ == "__main__":
    main(sys.argv[1:] or all_cases())
