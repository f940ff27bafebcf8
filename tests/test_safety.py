"""
The safety properties of the Ring layer (issue 2, "Safety that must hold"), each with a
test that fails if the property is lost: never-reused ids, buffers held until the final
CQE, cancel races, fds of cancelled ops closed, FIFO overflow queue, CQ overflow, EINTR,
fork, io_uring refused, misuse errors, setup variants, thread hand-over, fixed buffers.

Most tests drive a Ring by hand (submit / cqe_ready / fill_completions) so that they
decide exactly when the kernel sees an SQE and when a CQE is harvested; the others use
the C{ring} fixture (a Ring driven by the running reactor).
"""

import array
import errno
import gc
import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError

import txuring
from txuring._core import ffi
from txuring.handle import DONE, QUEUED

from conftest import open_fds, wait_until
from ringutil import drive_until, settle


class Buf(bytearray):
    """A bytearray that can be watched with a weakref."""


Data = Buf  # what a write reads: any buffer; this one can be watched

def collected(ref):
    gc.collect()
    return ref() is None


@pytest.fixture
def manual():
    """Rings driven by hand; each is settled (cancelling leftovers) and closed."""
    made = []

    def make(*args, **kw):
        ring = txuring.Ring(*args, **kw)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        if ring.closed or ring._forked:
            continue
        if ring.active_ops:
            ring.drain()
            settle(ring)
        ring.exit()


# ---- user_data ----


def test_user_data_is_never_reused(manual):
    ring = manual(2)
    seen = []
    for _ in range(5):
        hs = [ring.noop() for _ in range(40)]
        settle(ring)
        assert all(h.done and h.result == 0 for h in hs)
        seen += [h.user_data for h in hs]
    assert len(set(seen)) == len(seen)
    assert seen == sorted(seen)
    assert ring.noop().user_data > seen[-1]
    settle(ring)


def test_cancel_of_a_finished_op_never_hits_a_later_one(manual):
    """
    The target completed in the kernel (CQE not yet harvested) when its cancel is
    queued, and a new op starts before the cancel reaches the kernel: with a recycled
    id (ocaml-uring's slots) the cancel would kill the new op.
    """
    ring = manual(4)
    a, b = socket.socketpair()
    c, e = socket.socketpair()
    with a, b, c, e:
        first = ring.recv(a, bytearray(10))
        ring.submit()
        b.send(b"1")
        assert ring.cqe_ready(2.0)  # completed, not harvested
        cancelled = ring.cancel(first)  # the Python side still thinks it runs
        second = ring.recv(c, bytearray(10))
        assert second.user_data != first.user_data
        drive_until(ring, lambda: cancelled.called and first.done)
        assert first.result == 1  # it had finished; the cancel got ENOENT
        assert cancelled.result is None
        ring.cqe_ready(0.05)
        ring.fill_completions()
        assert not second.done  # untouched by the cancel
        e.send(b"22")
        drive_until(ring, lambda: second.done)
        assert second.result == 2


# ---- buffers held until the final CQE ----


def test_read_buffer_held_until_final_cqe_even_if_cancelled(manual, pipe):
    ring = manual(4)
    r, w = pipe
    buf = Buf(16)
    ref = weakref.ref(buf)
    h = ring.read(r, buf)
    d = ring.syscall_result(h)
    del buf
    ring.submit()
    assert not collected(ref)
    ring.cqe_ready(0.02)
    ring.fill_completions()
    assert not h.done and not collected(ref)
    # The caller gives up: its Deferred is cancelled, every reference dropped; the
    # kernel still owns the buffer until the op's final CQE.
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert not collected(ref)
    drive_until(ring, lambda: h.done)
    assert h.result == -errno.ECANCELED
    assert collected(ref)


def test_read_buffer_held_then_filled(manual, pipe):
    ring = manual(4)
    r, w = pipe
    buf = Buf(16)
    ref = weakref.ref(buf)
    seen = []

    h = ring.read(r, buf)
    ring.syscall_result(h).addCallback(lambda n: seen.append(n))
    del buf
    ring.submit()
    for _ in range(3):
        ring.cqe_ready(0.01)
        ring.fill_completions()
        assert not collected(ref)
    os.write(w, b"payload")
    drive_until(ring, lambda: h.done)
    assert seen == [7]
    assert collected(ref)


def test_readv_recv_recv_msg_buffers_held(manual, pipe):
    ring = manual(8)
    r, w = pipe
    a, b = socket.socketpair()
    with a, b:
        vbufs = [Buf(3), Buf(5)]
        refs = [weakref.ref(x) for x in vbufs]
        hv = ring.readv(r, vbufs)
        rbuf = Buf(8)
        refs.append(weakref.ref(rbuf))
        hr = ring.recv(a, rbuf)
        mbuf = Buf(8)
        refs.append(weakref.ref(mbuf))
        hm = ring.recv_msg(b, [mbuf], max_fds=1)
        del vbufs, rbuf, mbuf
        ring.submit()
        ring.cqe_ready(0.02)
        ring.fill_completions()
        gc.collect()
        assert all(ref() is not None for ref in refs)
        # Reuse freed memory as hard as possible: if a buffer had been freed, the
        # kernel would write into these.
        churn = [bytearray(b"\xee" * n) for n in (3, 5, 8) for _ in range(2000)]
        os.write(w, b"abcdefgh")
        b.send(b"to-a")
        a.sendmsg([b"to-b"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [w]).tobytes())])
        drive_until(ring, lambda: hv.done and hr.done and hm.done)
        assert (hv.result, hr.result, hm.result) == (8, 4, 4)
        assert all(x == b"\xee" * len(x) for x in churn)
        assert all(collected(ref) for ref in refs)
        msg = ring.syscall_result(hm).result
        assert len(msg.fds) == 1
        os.close(msg.fds[0])


def test_write_send_send_msg_data_held(manual):
    ring = manual(8)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        try:  # fill a's send buffer so that the sends below must wait
            while True:
                a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        a.setblocking(True)
        payloads = [Data(b"send-%d" % i) for i in range(3)]
        refs = [weakref.ref(p) for p in payloads]
        hs = [ring.send(a, payloads[0]), ring.write(a, payloads[1]),
              ring.send_msg(a, [payloads[2]])]
        del payloads
        ring.submit()
        ring.cqe_ready(0.02)
        ring.fill_completions()
        assert not any(h.done for h in hs)
        assert not any(collected(ref) for ref in refs)
        received = bytearray()
        while not all(h.done for h in hs):
            try:
                received += b.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            ring.cqe_ready(0.01)
            ring.fill_completions()
        assert [h.result for h in hs] == [6, 6, 6]
        b.setblocking(False)
        try:
            while True:
                received += b.recv(1 << 20)
        except BlockingIOError:
            pass
        tail = bytes(received).replace(b"x", b"")
        # Three sends in flight on one socket may go out in any order (which is why
        # the transports keep one send in flight); each went out whole.
        assert sorted(tail[i:i + 6] for i in range(0, 18, 6)) == [b"send-0", b"send-1",
                                                                   b"send-2"]
        assert all(collected(ref) for ref in refs)


def test_send_zc_data_held_until_notification(manual):
    ring = manual(4)
    if not ring.op_supported("send_zc"):
        pytest.skip("this kernel lacks send_zc (6.0)")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
    with client, server:
        data = Data(os.urandom(300000))
        ref = weakref.ref(data)
        h = ring.send_zc(client, data)
        del data
        first_cqe_seen = []
        received = bytearray()
        deadline = time.monotonic() + 5
        while not h.done:
            assert time.monotonic() < deadline
            ring.cqe_ready(0.01)
            ring.fill_completions()
            if not h.done and h._zc_result is not None:
                # The byte count arrived (F_MORE); the buffer is still the kernel's.
                first_cqe_seen.append(not collected(ref))
            try:
                received += server.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        assert all(first_cqe_seen)
        assert h.result == 300000
        assert collected(ref)


def _churn(ctype, fill, n=3000):
    """Allocate many cdata of C{ctype} filled with C{fill} (reusing freed memory)."""
    out = []
    for _ in range(n):
        p = ffi.new(ctype)
        ffi.memmove(p, fill * ffi.sizeof(p[0]), ffi.sizeof(p[0]))
        out.append(p)
    return out


def test_path_bytes_held_until_submitted(manual, tmp_path):
    """The kernel reads the path when it takes the SQE, not when the op is made."""
    ring = manual(8)
    target = tmp_path / ("t" * 40)
    target.write_bytes(b"the target")
    decoy = tmp_path / ("d" * 40)
    decoy.write_bytes(b"a decoy")
    hs = [ring.openat2(str(target)) for _ in range(3)]
    hs.append(ring.statx(str(target)))
    gc.collect()
    churn = [os.fsencode(str(decoy)) for _ in range(5000)]  # noqa: F841
    settle(ring)
    for h in hs[:3]:
        fd = ring.syscall_result(h).result
        try:
            assert os.read(fd, 100) == b"the target"
        finally:
            os.close(fd)
    assert ring.syscall_result(hs[3]).result.st_ino == os.stat(target).st_ino


def test_sockaddr_and_timespec_held_until_submitted(manual):
    ring = manual(8)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        c = socket.socket()
        with c:
            h = ring.connect(c, socket.AF_INET, ("127.0.0.1", port))
            t = ring.timeout(0.3)
            gc.collect()
            other = socket.socket()
            other.bind(("127.0.0.1", 0))
            other_port = other.getsockname()[1]
            other.close()  # nobody listens there
            churn = []
            for _ in range(3000):
                sa = ffi.new("struct sockaddr_in *")
                sa.sin_family = socket.AF_INET
                sa.sin_port = socket.htons(other_port)
                churn.append(sa)
            churn += _churn("struct __kernel_timespec *", b"\0")
            t0 = time.monotonic()
            settle(ring)
            assert h.result == 0  # connected to the listener, not to the churned port
            conn, _ = srv.accept()
            conn.close()
            assert time.monotonic() - t0 >= 0.29  # the 0.3 s timespec was read intact


def test_statx_buffer_and_msghdr_held_until_final_cqe(manual, pipe, tmp_path):
    ring = manual(8)
    r, w = pipe
    path = tmp_path / "f"
    path.write_bytes(b"x" * 777)
    # A linked chain: the statx runs only after the pipe read completes, so the
    # kernel writes the statx buffer long after the op was made.
    with ring.linked():
        ring.read(r, bytearray(1))
        hs = ring.statx(path)
    a, b = socket.socketpair()
    with a, b:
        hm = ring.recv_msg(b, [bytearray(4)], max_fds=2)
        ring.submit()
        gc.collect()
        churn = _churn("struct statx *", b"\xff") + _churn("struct msghdr *", b"\xff")
        churn += [ffi.new("char[]", 64) for _ in range(3000)]
        a.sendmsg([b"msg!"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [r, w]).tobytes())])
        os.write(w, b"go")
        settle(ring)
    st = ring.syscall_result(hs).result
    assert st.st_size == 777 and st.st_ino == os.stat(path).st_ino
    msg = ring.syscall_result(hm).result
    assert msg.nbytes == 4 and len(msg.fds) == 2
    assert os.fstat(msg.fds[0]).st_ino == os.fstat(r).st_ino
    for fd in msg.fds:
        os.close(fd)


def test_read_into_read_only_buffer_refused_at_the_call(ring, pipe):
    r, w = pipe
    a, b = socket.socketpair()
    with a, b:
        for call in (lambda: ring.read(r, b"immutable"),
                     lambda: ring.read(r, memoryview(b"immutable")),
                     lambda: ring.recv(a, b"immutable"),
                     lambda: ring.readv(r, [bytearray(2), b"immutable"]),
                     lambda: ring.recv_msg(a, [b"immutable"])):
            with pytest.raises(TypeError) as info:
                call()
            assert "writable" in str(info.value)
        assert ring.active_ops == 0 and ring.sqe_ready == 0


# ---- cancel races ----


@pytest_twisted.inlineCallbacks
def test_cancel_blocked_read_errback_runs_after_handle_done(ring, reactor, pipe):
    r, w = pipe
    buf = Buf(10)
    ref = weakref.ref(buf)
    h = ring.read(r, buf)
    del buf
    d = ring.syscall_result(h)
    yield ring.syscall_result(ring.noop())  # the read is in the kernel now
    assert not h.done
    seen = []

    def errback(f):
        seen.append((f.check(CancelledError), h.state, h.result, ref() is None))

    d.addErrback(errback)
    d.cancel()
    assert seen == []  # not synchronously: the kernel may still write the buffer
    assert not collected(ref)
    yield wait_until(reactor, lambda: seen)
    assert seen == [(CancelledError, DONE, -errno.ECANCELED, True)]


def test_cancel_of_completed_but_not_harvested_op(manual, pipe):
    ring = manual(4)
    r, w = pipe
    os.write(w, b"ready")
    buf = bytearray(10)
    h = ring.read(r, buf)
    d = ring.syscall_result(h)
    assert ring.cqe_ready(2.0)
    assert not h.done
    seen = []
    d.addErrback(lambda f: seen.append((f.check(CancelledError), h.state)))
    d.cancel()
    assert seen == []
    drive_until(ring, lambda: seen and ring.active_ops == 0)
    assert seen == [(CancelledError, DONE)]
    assert h.result == 5 and buf[:5] == b"ready"


@pytest_twisted.inlineCallbacks
def test_cancel_of_harvested_op_fires_at_once(ring):
    h = ring.noop()
    yield ring.syscall_result(h)
    assert h.done
    c = ring.cancel(h)
    assert c.called and c.result is None
    d = ring.syscall_result(h)  # a late waiter gets the result at once
    assert d.called and d.result == 0
    d.cancel()  # cancelling a fired Deferred is a no-op
    assert ring.active_ops == 0


@pytest_twisted.inlineCallbacks
def test_one_waiter_cancelled_the_other_still_gets_the_result(ring, reactor, pipe):
    r, w = pipe
    h = ring.read(r, bytearray(10))
    d1 = ring.syscall_result(h)
    d2 = ring.syscall_result(h)
    d1.addErrback(lambda f: f.trap(CancelledError))
    d1.cancel()
    yield task.deferLater(reactor, 0.02, lambda: None)
    assert not h.done  # no kernel cancel: d2 still wants the result
    os.write(w, b"abc")
    assert (yield d2) == 3
    assert d1.called


def test_cancelled_openat2_and_accept_that_succeeded_close_their_fds(manual, tmp_path):
    ring = manual(8)
    path = tmp_path / "f"
    path.write_bytes(b"")
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    try:
        before = open_fds()
        ho = ring.openat2(path)
        ha = ring.accept(srv)
        do, da = ring.syscall_result(ho), ring.syscall_result(ha)
        ring.submit()
        deadline = time.monotonic() + 5
        while len(open_fds() - before) < 2:  # wait (never harvest) until both fds exist
            assert time.monotonic() < deadline
            ring.cqe_ready(0.05)
        assert not ho.done and not ha.done
        failures = []
        for d in (do, da):
            d.addErrback(failures.append)
            d.cancel()
        settle(ring)
        assert ho.result >= 0 and ha.result >= 0  # they succeeded anyway
        assert [f.check(CancelledError) for f in failures] == [CancelledError] * 2
        assert open_fds() == before  # and their fds were closed, not leaked
    finally:
        client.close()
        srv.close()


@pytest_twisted.inlineCallbacks
def test_cancel_races_through_the_driver_leak_no_fds(ring, reactor, tmp_path):
    """Cancel at once, before the driver submits: either outcome leaks nothing."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    before = open_fds()
    ds = []
    for _ in range(30):
        d = ring.syscall_result(ring.openat2(path))
        d.addErrback(lambda f: f.trap(CancelledError))
        d.cancel()
        ds.append(d)
    yield wait_until(reactor, lambda: ring.active_ops == 0)
    yield defer.DeferredList(ds)
    assert open_fds() == before


def test_op_in_overflow_queue_cancelled_at_once_nothing_submitted(manual, pipe, tmp_path):
    ring = manual(1, start_disabled=True)  # nothing is given to the kernel yet
    r, w = pipe
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        blocked = ring.read(r, bytearray(1))  # takes the one SQ slot
        queued = ring.write(fd, b"must never be written", 0)
        assert queued.state == QUEUED
        d = ring.syscall_result(queued)
        c = ring.cancel(queued)
        assert c.called and queued.done  # at once, without the kernel
        assert queued.result == -errno.ECANCELED
        assert d.called
        with pytest.raises(OSError) as info:
            d.result.raiseException()
        assert info.value.errno == errno.ECANCELED
        d.addErrback(lambda f: None)
        assert ring.submit() == 1  # only the read went to the kernel
        os.write(w, b"x")
        settle(ring)
        assert blocked.result == 1
        assert ring.stats()["submitted"] == 1
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


# ---- full SQ, CQ overflow ----


@pytest.mark.parametrize("start_disabled", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_full_sq_never_fails_or_reorders(manual, pipe, depth, start_disabled):
    # start_disabled: nothing reaches the kernel before the first submit, so thousands
    # of ops wait in the overflow queue at once (otherwise it rarely holds more than a
    # few: a full SQ is flushed as soon as it fills).
    ring = manual(depth, start_disabled=start_disabled)
    assert ring.queue_depth == depth
    r, w = pipe
    order = []
    handles = []
    for i in range(5000):
        if i % 2:
            h = ring.write(w, b"%08d" % i)
            expect = 8
        else:
            h = ring.noop()
            expect = 0
        handles.append((h, expect))
        ring.syscall_result(h).addCallback(lambda res, i=i, expect=expect:
                                           order.append((i, res == expect)))
    settle(ring, timeout=30)
    assert [i for i, _ in order] == list(range(5000))
    assert all(ok for _, ok in order)
    assert all(h.done for h, _ in handles)
    data = os.read(r, 100000)
    assert data == b"".join(b"%08d" % i for i in range(1, 5000, 2))
    assert ring.stats()["backlogged"] > 0  # the overflow queue was used


@pytest_twisted.inlineCallbacks
def test_full_sq_through_the_driver(make_ring, pipe):
    ring = make_ring(2)
    r, w = pipe
    ds = [ring.syscall_result(ring.write(w, b"%06d" % i)) for i in range(2000)]
    results = yield defer.gatherResults(ds)
    assert results == [6] * 2000
    assert os.read(r, 100000) == b"".join(b"%06d" % i for i in range(2000))


def test_cq_overflow_loses_nothing(manual, tmp_path):
    ring = manual(4, cq_depth=4)
    assert ring.cq_depth == 4
    pipes = [os.pipe() for _ in range(24)]
    path = tmp_path / "f"
    content = os.urandom(64 * 100)
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        reads = [(ring.read(r, bytearray(16)), i) for i, (r, _) in enumerate(pipes)]
        ring.submit()
        # Everything completes at once: 24 reads, 40 timeouts, 100 noops, 100 file
        # reads: far more CQEs than the CQ's 4 entries, none harvested meanwhile.
        for i, (_, w) in enumerate(pipes):
            os.write(w, b"pipe %d" % i)
        timers = [ring.timeout(0.01) for _ in range(40)]
        noops = [ring.noop() for _ in range(100)]
        bufs = [bytearray(64) for _ in range(100)]
        freads = [ring.read(fd, bufs[i], offset=64 * i) for i in range(100)]
        ring.submit()
        time.sleep(0.05)
        ring.cqe_ready(0)
        settle(ring)
        for h, i in reads:
            assert h.done and h.result == len(b"pipe %d" % i)
        assert all(h.done and h.result == -errno.ETIME for h in timers)
        assert all(h.done and h.result == 0 for h in noops)
        assert all(h.result == 64 for h in freads)
        assert b"".join(bufs) == content
        assert ring.stats()["cq_overflow"] == 0  # nothing dropped
        assert ring.active_ops == 0
    finally:
        os.close(fd)
        for r, w in pipes:
            os.close(r)
            os.close(w)


# ---- EINTR ----


@pytest.mark.parametrize("ext_arg", [None, False])
def test_eintr_while_waiting_returns_so_handlers_run(manual, ext_arg):
    ring = manual(4, ext_arg=ext_arg)
    fired = []
    old = signal.signal(signal.SIGALRM, lambda signo, frame: fired.append(signo))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        ready = ring.cqe_ready(2.0)
        elapsed = time.monotonic() - t0
        assert fired == [signal.SIGALRM]  # the Python handler has run
        assert elapsed < 1.5
        assert ready is False
        # The loop carries on: the ring still works.
        h = ring.noop()
        assert ring.cqe_ready(1.0)
        ring.fill_completions()
        assert h.done
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- fork ----


def test_fork_child_cannot_use_the_ring_parent_unaffected(manual, pipe):
    ring = manual(4)
    r, w = pipe
    inflight = ring.read(r, bytearray(10))
    done_in_kernel = ring.noop()
    ring.submit()
    assert ring.cqe_ready(1.0)  # the noop's CQE waits in the shared CQ
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 0
        try:
            calls = [
                lambda: ring.noop(),
                lambda: ring.read(r, bytearray(1)),
                lambda: ring.submit(),
                lambda: ring.cqe_ready(0),
                lambda: ring.fill_completions(),
                lambda: ring.cancel(inflight),
                lambda: ring.register_eventfd(w),
                lambda: ring.drain(),
                lambda: txuring.Region(ring, 1),
            ]
            for i, call in enumerate(calls):
                try:
                    call()
                except txuring.RingForked:
                    pass
                except BaseException:
                    code |= 1 << i
                else:
                    code |= 1 << i
            ring.exit()  # closes the child's copy only
            os.write(report_w, b"%d" % code)
        finally:
            os._exit(0)
    os.close(report_w)
    try:
        _, status = os.waitpid(pid, 0)
        report = os.read(report_r, 100)
    finally:
        os.close(report_r)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == b"0", "these child calls did not raise RingForked: mask %s" % report
    # The parent's ring is intact: its CQE was not stolen, its op still runs.
    assert not ring.closed
    ring.fill_completions()
    assert done_in_kernel.done and done_in_kernel.result == 0
    os.write(w, b"after")
    drive_until(ring, lambda: inflight.done)
    assert inflight.result == 5
    h = ring.noop()
    settle(ring)
    assert h.result == 0


# ---- io_uring refused ----

_SECCOMP_EXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_exec.py")

_REFUSED_CHILD = textwrap.dedent("""
    import sys
    import txuring
    try:
        txuring.Ring(8)
    except txuring.UringUnavailable as e:
        assert isinstance(e, OSError)
        print("ERRNO", e.errno)
        print("MESSAGE", str(e))
        sys.exit(0)
    print("NO ERROR")
    sys.exit(1)
""")


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS])
def test_io_uring_refused_by_seccomp(err):
    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter is written for x86_64 syscall numbers")
    disabled = open("/proc/sys/kernel/io_uring_disabled").read().strip() \
        if os.path.exists("/proc/sys/kernel/io_uring_disabled") else "0"
    if err == errno.EPERM and disabled != "0":
        pytest.skip("kernel.io_uring_disabled=%s changes the EPERM message" % (disabled,))
    proc = subprocess.run([sys.executable, _SECCOMP_EXEC, str(err), sys.executable, "-c",
                           _REFUSED_CHILD], capture_output=True, text=True, timeout=60)
    if proc.returncode == 3:
        pytest.skip("cannot install a seccomp filter here: %s" % (proc.stdout,))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERRNO %d" % err in proc.stdout
    message = proc.stdout.split("MESSAGE", 1)[1]
    assert "seccomp" in message
    if err == errno.ENOSYS:
        assert "5.10" in message  # the remedy: a kernel with io_uring
    else:
        assert "profile" in message  # the remedy: a profile that allows io_uring


def test_io_uring_refusal_messages_name_the_sysctl(monkeypatch):
    from txuring import errors

    monkeypatch.setattr(errors, "_read_sysctl", lambda path: "2" if path.endswith(
        "disabled") else None)
    assert "kernel.io_uring_disabled=2" in errors.explain_setup_errno(errno.EPERM)
    monkeypatch.setattr(errors, "_read_sysctl", lambda path: "1" if path.endswith(
        "disabled") else "1234")
    assert "1234" in errors.explain_setup_errno(errno.EPERM)
    # A resource error is not "unavailable": the caller sees it as is.
    assert errors.explain_setup_errno(errno.ENOMEM) is None
    assert errors.explain_setup_errno(errno.EMFILE) is None


# ---- misuse ----


def test_closed_ring_refuses_everything(pipe):
    ring = txuring.Ring(4)
    ring.exit()
    ring.exit()  # idempotent
    assert ring.closed and ring.fd == -1
    r, w = pipe
    for call in (ring.noop, ring.submit, lambda: ring.cqe_ready(0),
                 lambda: ring.read(r, bytearray(1)), lambda: ring.timeout(1),
                 lambda: ring.register_eventfd(w), lambda: txuring.Region(ring, 1),
                 lambda: txuring.BufferRing(ring, 4)):
        with pytest.raises(txuring.RingClosed):
            call()
    assert ring.fill_completions() == 0


def test_exit_with_ops_in_flight_is_refused(pipe):
    ring = txuring.Ring(4)
    r, w = pipe
    h = ring.read(r, bytearray(1))
    ring.submit()
    with pytest.raises(txuring.RingBusy) as info:
        ring.exit()
    assert "drain" in str(info.value)
    assert not ring.closed
    d = ring.drain()
    settle(ring)
    assert d.called and h.done
    ring.exit()
    assert ring.closed


def test_misuse_gets_clear_errors_and_queues_nothing(ring, tmp_path, pipe):
    r, w = pipe
    p = str(tmp_path / "f")
    bad_paths = [
        lambda: ring.openat2("a\0b"),
        lambda: ring.statx(b"a\0b"),
        lambda: ring.unlinkat("x\0"),
        lambda: ring.mkdirat("x\0"),
        lambda: ring.renameat(p, "x\0y"),
        lambda: ring.renameat("x\0y", p),
        lambda: ring.linkat(p, "\0"),
        lambda: ring.symlinkat("t\0", p),
    ]
    for call in bad_paths:
        with pytest.raises(ValueError) as info:
            call()
        assert "NUL" in str(info.value)
    negative = [
        lambda: ring.read(r, bytearray(4), nbytes=-1),
        lambda: ring.read(r, bytearray(4), offset=-2),
        lambda: ring.write(w, b"x", offset=-5),
        lambda: ring.write(w, b"abc", nbytes=4),  # larger than the buffer
        lambda: ring.readv(r, [bytearray(1)], offset=-3),
        lambda: ring.fallocate(w, -1, 10),
        lambda: ring.fallocate(w, 0, -10),
        lambda: ring.ftruncate(w, -1),
        lambda: ring.splice(r, w, -1),
        lambda: ring.read(-1, bytearray(1)),
        lambda: ring.timeout(-0.5),
        lambda: ring.timeout(1, count=-1),
    ]
    for call in negative:
        with pytest.raises(ValueError):
            call()
    unknown_flags = [
        lambda: ring.renameat(p, p + "2", flags=1 << 10),
        lambda: ring.openat2(p, resolve=1 << 12),
        lambda: ring.accept(r, flags=1),
        lambda: ring.shutdown(r, 99),
        lambda: ring.timeout(1, clock="tai"),
    ]
    for call in unknown_flags:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError) as info:
        ring.readv(r, [bytearray(1) for _ in range(1025)])
    assert "1024" in str(info.value)
    with pytest.raises(ValueError):
        ring.writev(w, [b"x"] * 1025)
    with pytest.raises(ValueError):
        ring.send_msg(w, [b"x"] * 1025)
    with pytest.raises(ValueError):
        ring.readv(r, [])
    with pytest.raises(ValueError):
        txuring.Ring(0)
    with pytest.raises(ValueError):
        txuring.Ring(4, setup="turbo")
    with pytest.raises(ValueError):
        txuring.Ring(8, cq_depth=4)
    assert ring.active_ops == 0 and ring.sqe_ready == 0
    # 1024 iovecs is fine (the fixture's teardown waits for it).
    ring.writev(w, [b"y"] * 1024)
    assert ring.active_ops == 1


def test_chunk_of_another_ring_refused(manual, pipe):
    a, b = manual(4), manual(4)
    r, w = pipe
    region = txuring.Region(a, 2, 4096)
    chunk = region.alloc()
    with pytest.raises(ValueError) as info:
        b.read_fixed(r, chunk)
    assert "another ring" in str(info.value)
    with pytest.raises(ValueError):
        b.write_fixed(w, chunk)
    with pytest.raises(TypeError):
        a.read_fixed(r, bytearray(10))
    other = txuring.Region(b, 1, 4096)
    with pytest.raises(ValueError):
        other.free(chunk)
    chunk.free()
    with pytest.raises(ValueError):
        a.read_fixed(r, chunk)  # freed
    with pytest.raises(ValueError):
        chunk.free()  # twice
    assert a.active_ops == b.active_ops == 0
    region.close()
    other.close()


# ---- waits, setup variants, threads ----


def test_ext_arg_false_waits_with_timeouts(manual, pipe):
    ring = manual(4, ext_arg=False)
    assert not ring.supports_ext_arg()
    r, w = pipe
    # Nothing to complete: the wait lasts the timeout and reports nothing ready.
    t0 = time.monotonic()
    assert ring.cqe_ready(0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 1.0
    assert ring.fill_completions() == 0
    # An op completing first ends the wait early.
    t0 = time.monotonic()
    h = ring.timeout(0.05)
    assert ring.cqe_ready(5.0)
    assert time.monotonic() - t0 < 1.0
    assert ring.fill_completions() == 1 and h.done
    # A completion arriving during the wait (a pipe read unblocked by a thread).
    h = ring.read(r, bytearray(3))
    threading.Timer(0.05, os.write, (w, b"abc")).start()
    t0 = time.monotonic()
    drive_until(ring, lambda: h.done)
    assert h.result == 3 and time.monotonic() - t0 < 2.0
    # Zero timeout: no wait at all.
    t0 = time.monotonic()
    ring.cqe_ready(0)
    assert time.monotonic() - t0 < 0.5
    # Many timed-out waits: their internal timeouts never reach a Handle.
    for _ in range(20):
        ring.cqe_ready(0.005)
        assert ring.fill_completions() == 0
    h = ring.noop()
    settle(ring)
    assert h.result == 0 and ring.active_ops == 0


@pytest.mark.parametrize("setup", ["plain", "coop_taskrun", "defer_taskrun"])
def test_each_setup_works(manual, setup, tmp_path, pipe):
    ring = manual(4, setup=setup)
    names = {"plain": [], "coop_taskrun": ["COOP_TASKRUN", "TASKRUN_FLAG"],
             "defer_taskrun": ["SINGLE_ISSUER", "DEFER_TASKRUN"]}[setup]
    assert set(names) <= set(ring.stats()["setup_flags"])
    r, w = pipe
    path = tmp_path / "f"
    path.write_bytes(b"setup " + setup.encode())
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(100)
        hr = ring.read(fd, buf, 0)
        hn = ring.noop()
        hp = ring.read(r, bytearray(4))
        ht = ring.timeout(0.02)
        threading.Timer(0.05, os.write, (w, b"pipe")).start()
        settle(ring)
        assert bytes(buf[:hr.result]) == path.read_bytes()
        assert hn.result == 0 and hp.result == 4 and ht.result == -errno.ETIME
    finally:
        os.close(fd)


@pytest.mark.parametrize("setup", ["plain", "coop_taskrun", "defer_taskrun"])
@pytest_twisted.inlineCallbacks
def test_each_setup_works_through_the_driver(make_ring, setup):
    ring = make_ring(4, setup=setup)
    results = yield defer.gatherResults(
        [ring.syscall_result(ring.noop()) for _ in range(50)]
        + [ring.syscall_result(ring.timeout(0.01))])
    assert results == [0] * 51


def test_start_disabled_ring_driven_by_another_thread(pipe, tmp_path):
    ring = txuring.Ring(4, start_disabled=True)
    r, w = pipe
    path = tmp_path / "f"
    path.write_bytes(b"from the worker")
    out = {}

    def worker():
        try:
            buf = bytearray(100)
            fd_h = ring.openat2(path)
            ring.submit()
            drive_until(ring, lambda: fd_h.done)
            fd = fd_h.result
            h = ring.read(fd, buf, 0)
            hp = ring.read(r, bytearray(5))
            os.write(w, b"hello")
            hs = [ring.noop() for _ in range(20)]
            settle(ring)
            ring.syscall_result(ring.close(fd))
            settle(ring)
            out["read"] = bytes(buf[:h.result])
            out["pipe"] = hp.result
            out["noops"] = [x.result for x in hs]
            ring.exit()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=worker)
    t.start()
    t.join(20)
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    assert out == {"read": b"from the worker", "pipe": 5, "noops": [0] * 20}


def test_defer_taskrun_ring_refuses_another_thread_clearly(manual):
    ring = manual(4, setup="defer_taskrun")
    ring.noop()
    ring.submit()
    settle(ring)
    errors = []

    def other():
        try:
            ring.noop()
            ring.submit()
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert errors and isinstance(errors[0], RuntimeError)
    assert "start_disabled" in str(errors[0])
    settle(ring)  # the owner thread can still drive it


# ---- fixed buffers: Region ----

_MEMLOCK_CHILD = textwrap.dedent("""
    import os, resource, sys, warnings
    sys.path.insert(0, sys.argv[1])
    import txuring
    from txuring import errors
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # nobody: no CAP_IPC_LOCK, so the limit applies
    # Since 6.13 the ring's own memory counts too: make it under a roomier limit.
    ring = txuring.Ring(8)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (4096, 4096))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        region = txuring.Region(ring, 16, 4096, fallback=True)
    assert region.fixed is False, "registered despite the limit"
    assert any("RLIMIT_MEMLOCK" in str(w.message) for w in caught), caught
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
    # The ring carries on without the fixed buffer: chunks use plain read/write.
    r, w = os.pipe()
    chunk = region.alloc()
    chunk.memoryview()[:5] = b"hello"
    h1 = ring.write_fixed(w, chunk, nbytes=5)
    ring.submit()
    other = region.alloc()
    h2 = ring.read_fixed(r, other, nbytes=5)
    while not (h1.done and h2.done):
        ring.cqe_ready(1.0)
        ring.fill_completions()
    assert (h1.result, h2.result) == (5, 5), (h1, h2)
    assert other.bytes(5) == b"hello"
    chunk.free(); other.free(); region.close()
    try:
        txuring.Region(ring, 16, 4096, fallback=False)
    except txuring.FixedBufferUnavailable as e:
        assert isinstance(e, OSError)
        assert "RLIMIT_MEMLOCK" in str(e), str(e)
        print("OK", e.errno)
        sys.exit(0)
    print("NO ERROR")
    sys.exit(1)
""")


def test_region_fallback_when_memlock_limit_refuses(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody with a tiny RLIMIT_MEMLOCK")
    src = os.path.dirname(os.path.dirname(os.path.abspath(txuring.__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMLOCK_CHILD, src], capture_output=True,
                          text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK %d" % errno.ENOMEM)


def test_region_alloc_free_nospace_and_views(manual):
    ring = manual(4)
    region = txuring.Region(ring, 3, 1024)
    assert region.fixed and region.length == 3 and region.avail == 3
    chunks = [region.alloc() for _ in range(3)]
    assert sorted(c.offset for c in chunks) == [0, 1024, 2048]
    assert all(c.length == 1024 for c in chunks)
    assert region.avail == 0
    with pytest.raises(txuring.NoSpace):
        region.alloc()
    view = chunks[1].memoryview()
    view[:4] = b"zero"  # a zero-copy view of the region's memory
    assert chunks[1].bytes(4) == b"zero"
    assert bytes(region._view[1024:1028]) == b"zero"
    assert len(chunks[0].bytes()) == 1024
    view.release()
    chunks[0].free()
    assert region.avail == 1
    again = region.alloc()
    assert again.offset == chunks[0].offset
    with pytest.raises(RuntimeError):
        region.close()  # chunks are out
    for c in (again, chunks[1], chunks[2]):
        c.free()
    region.close()


def test_region_alloc_or_wait(manual):
    ring = manual(4)
    region = txuring.Region(ring, 2, 512)
    a, b = region.alloc(), region.alloc()
    first = region.alloc_or_wait()
    second = region.alloc_or_wait()
    third = region.alloc_or_wait()
    assert not first.called and not second.called
    second.cancel()  # leaves the queue
    failures = []
    second.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    b.free()  # goes straight to the first waiter, not to the free list
    assert first.called and region.avail == 0
    got = first.result
    assert got.offset == b.offset and not got.freed
    a.free()  # the cancelled waiter is skipped: the third gets it
    assert third.called and third.result.offset == a.offset
    got.free()
    third.result.free()
    assert region.avail == 2
    d = region.alloc_or_wait()  # free chunks: at once
    assert d.called
    d.result.free()
    region.close()


def test_region_chunk_busy_while_op_in_flight(manual, pipe):
    """A chunk the kernel may still write cannot be freed (or reach a waiter)."""
    ring = manual(4)
    r, w = pipe
    region = txuring.Region(ring, 1, 4096)
    chunk = region.alloc()
    h = ring.read_fixed(r, chunk, nbytes=5)
    ring.submit()
    waiter = region.alloc_or_wait()
    with pytest.raises(RuntimeError):
        chunk.free()
    assert not waiter.called
    os.write(w, b"fixed")
    drive_until(ring, lambda: h.done)
    assert h.result == 5 and chunk.bytes(5) == b"fixed"
    chunk.free()
    assert waiter.called
    waiter.result.free()
    region.close()


# ---- no fd leaks ----


def test_rings_regions_and_buffer_rings_leak_no_fds(tmp_path):
    before = open_fds()
    for setup in ("plain", "coop_taskrun", "defer_taskrun"):
        ring = txuring.Ring(8, setup=setup)
        region = txuring.Region(ring, 2)
        bufs = txuring.BufferRing(ring, 4, 64)
        h = ring.openat2(tmp_path, os.O_RDONLY)
        settle(ring)
        os.close(h.result)
        bufs.close()
        region.close()
        ring.exit()
    # A ring dropped without exit() is closed by the garbage collector.
    ring = txuring.Ring(4)
    del ring
    gc.collect()
    assert open_fds() == before
