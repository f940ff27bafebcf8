"""
Edges of the Ring API: the overflow queue (FIFO order, linked chains kept whole, cancel
before submission), argument checks, a chain abandoned by an exception, results
released after a cancel, and the ring's own memory limit.
"""

import errno
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from twisted.internet.defer import CancelledError

import txuring


def drive(ring):
    """Submit and harvest until nothing is in flight (no reactor)."""
    while ring.active_ops:
        ring.cqe_ready(1.0)
        ring.fill_completions()


def test_cancelling_one_op_of_a_queued_chain_removes_the_whole_chain():
    # start_disabled: nothing is submitted until this thread drives the ring, so the
    # chain is certain to wait in the overflow queue behind a full SQ.
    ring = txuring.Ring(2, start_disabled=True)
    try:
        first, second = ring.noop(), ring.noop()
        with ring.linked():
            head = ring.noop()
            tail = ring.timeout(10)
        assert head.state == tail.state == 0  # QUEUED
        submitted_before = ring.stats()["submitted"]
        cancelled = ring.cancel(tail)
        assert cancelled.called
        assert head.done and head.result == -errno.ECANCELED
        assert tail.done and tail.result == -errno.ECANCELED
        drive(ring)
        assert first.result == second.result == 0
        # Only the two noops reached the kernel; the 10 s timeout never did.
        assert ring.stats()["submitted"] - submitted_before == 2
    finally:
        ring.exit()


def test_queued_ops_run_in_fifo_order_through_a_ring_of_depth_one():
    ring = txuring.Ring(1)
    try:
        order = []
        handles = []
        for i in range(200):
            h = ring.noop()
            ring.syscall_result(h).addCallback(lambda _, i=i: order.append(i))
            handles.append(h)
        drive(ring)
        assert order == list(range(200))
        assert [h.user_data for h in handles] == sorted(set(h.user_data for h in handles))
    finally:
        ring.exit()


def test_out_of_range_arguments_fail_at_the_call_and_leave_nothing_behind(tmp_path):
    ring = txuring.Ring(1, start_disabled=True)
    try:
        ring.noop()  # fills the SQ: the next ops would wait in the overflow queue
        with open(tmp_path / "f", "wb") as f:
            for bad in (lambda: ring.fallocate(f.fileno(), 0, 2**63),
                        lambda: ring.ftruncate(f.fileno(), -1),
                        lambda: ring.read(f.fileno(), bytearray(1), offset=2**64),
                        lambda: ring.poll_add(f.fileno(), 2**40),
                        lambda: ring.socket(2**31, 1)):
                try:
                    bad()
                except ValueError:
                    pass
                else:
                    raise AssertionError("accepted an out-of-range argument")
        assert ring.active_ops == 1
        drive(ring)
        assert ring.active_ops == 0
    finally:
        ring.exit()


def test_a_linked_block_that_raises_ends_its_ops_as_cancelled():
    ring = txuring.Ring(4)
    try:
        region = txuring.Region(ring, 2, 4096)
        chunk = region.alloc()
        r, w = os.pipe()
        with pytest.raises(KeyError):
            with ring.linked():
                h = ring.read_fixed(r, chunk)
                raise KeyError("abandoned")
        assert h.done and h.result == -errno.ECANCELED
        assert ring.active_ops == 0
        chunk.free()  # not busy: no op will ever write into it
        region.close()
        os.close(r)
        os.close(w)
    finally:
        ring.exit()


def test_a_result_released_after_cancel_is_never_handed_out_later():
    ring = txuring.Ring(4)
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        handle = ring.accept(listener.fileno())
        d = ring.syscall_result(handle)
        errors = []
        d.addErrback(errors.append)
        # The connection waits in the backlog before the accept is submitted, so the
        # accept succeeds inline, ahead of its cancel (which then finds nothing).
        client = socket.create_connection(listener.getsockname())
        d.cancel()
        drive(ring)
        assert errors and errors[0].check(CancelledError)
        assert handle.result >= 0
        # The accepted fd was closed for the cancelled waiter: its number must not be
        # handed to a later caller (it may name another file by now).
        with pytest.raises(OSError):
            os.fstat(handle.result)
        again = []
        ring.syscall_result(handle).addBoth(again.append)
        assert again[0].check(CancelledError)
        client.close()
    finally:
        listener.close()
        ring.exit()


_ENOMEM_CHILD = textwrap.dedent("""
    import errno, os, resource, sys
    sys.path.insert(0, sys.argv[1])
    import txuring
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)  # nobody: without CAP_IPC_LOCK the limit applies
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    try:
        txuring.Ring(4096)
    except txuring.UringUnavailable as e:
        print("UNAVAILABLE", e)
    except OSError as e:
        print("OSERROR", e.errno, e)
    else:
        print("CREATED")
""")


def test_a_ring_refused_for_locked_memory_says_which_limit():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody with a zero RLIMIT_MEMLOCK")
    src = os.path.dirname(os.path.dirname(os.path.abspath(txuring.__file__)))
    out = subprocess.run([sys.executable, "-c", _ENOMEM_CHILD, src], capture_output=True,
                         text=True, timeout=60, cwd="/").stdout
    if out.startswith("CREATED"):
        pytest.skip("this kernel does not count ring memory against RLIMIT_MEMLOCK "
                    "(it does since 6.13)")
    assert out.startswith("OSERROR %d" % errno.ENOMEM), out
    assert "RLIMIT_MEMLOCK" in out


def test_sqpoll_ring_runs_ops_through_its_kernel_thread(tmp_path):
    # polling_timeout=1: the SQ thread sleeps after 1 ms idle, so the waits below also
    # cover waking it (IORING_SQ_NEED_WAKEUP -> IORING_ENTER_SQ_WAKEUP).
    ring = txuring.Ring(8, polling_timeout=1)
    try:
        assert "SQPOLL" in ring.stats()["setup_flags"]
        path = tmp_path / "data"
        path.write_bytes(bytes(range(256)) * 64)
        fd = os.open(path, os.O_RDONLY)
        try:
            buffers = [bytearray(256) for _ in range(64)]
            for round_ in range(3):
                handles = [ring.read(fd, buf, offset=i * 256)
                           for i, buf in enumerate(buffers)]
                drive(ring)
                assert [h.result for h in handles] == [256] * 64
                assert all(bytes(b) == bytes(range(256)) for b in buffers)
                time.sleep(0.01)  # let the SQ thread fall asleep between rounds
        finally:
            os.close(fd)
    finally:
        ring.exit()


def test_has_pending_jobs_follows_an_op_from_queue_to_completion():
    ring = txuring.Ring(2, start_disabled=True)
    try:
        assert not ring.has_pending_jobs()
        handles = [ring.noop() for _ in range(3)]  # two in the SQ, one queued behind
        assert ring.has_pending_jobs()
        assert ring.sqe_ready == 3
        drive(ring)
        assert all(h.result == 0 for h in handles)
        assert not ring.has_pending_jobs() and ring.sqe_ready == 0
    finally:
        ring.exit()


def test_without_ext_arg_a_wait_ended_by_a_completion_leaves_no_timeout_behind():
    # Before 5.11 a wait is bounded by a timeout SQE; one left pending after its wait
    # would end a later wait early.
    ring = txuring.Ring(8, ext_arg=False)
    try:
        ring.noop()
        assert ring.cqe_ready(5.0)
        ring.fill_completions()
        assert ring.stats()["wait_timeouts_pending"] == 0
        started = time.monotonic()
        assert not ring.cqe_ready(0.2)
        assert time.monotonic() - started >= 0.19
    finally:
        ring.exit()


def test_a_second_driver_on_one_ring_is_refused_and_leaks_nothing():
    from twisted.internet import reactor

    from conftest import open_fds

    ring = txuring.Ring(4)
    driver = txuring.RingDriver(ring, reactor)
    try:
        before = open_fds()
        with pytest.raises(OSError):
            txuring.RingDriver(ring, reactor)  # the kernel takes one eventfd per ring
        assert open_fds() == before
    finally:
        driver.detach()
        ring.exit()


def _idle_polls(ring, count):
    """count polls on pipes that never become readable; returns the pipes to close."""
    pipes = [os.pipe() for _ in range(count)]
    for r, _ in pipes:
        ring.poll_add(r, 1)  # POLLIN
    return pipes


def _close_pipes(pipes):
    for r, w in pipes:
        os.close(r)
        os.close(w)


def test_a_queued_chain_reaches_the_kernel_before_a_blocking_wait():
    ring = txuring.Ring(4)
    pipes = _idle_polls(ring, 3)
    try:
        # The 3 polls fill 3 of the 4 SQ slots (not yet submitted): the chain needs 2,
        # so it waits in the overflow queue.
        with ring.linked():
            a, b = ring.noop(), ring.noop()
        assert ring.cqe_ready(3.0)
        ring.fill_completions()
        assert a.result == b.result == 0
    finally:
        ring.cancel_all()
        drive(ring)
        _close_pipes(pipes)
        ring.exit()


def test_a_cancel_inside_a_linked_block_is_not_chained():
    ring = txuring.Ring(8)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        blocked = ring.read(r2, bytearray(1))
        answers = []
        d = ring.syscall_result(blocked)
        d.addErrback(lambda f: answers.append(f.type))
        with ring.linked():
            chained = ring.read(r, bytearray(1))
            d.cancel()  # its cancel SQE must go out on its own, now
            timer = ring.link_timeout(0.05)
        drive(ring)
        assert answers == [CancelledError]
        assert chained.result == -errno.ECANCELED  # bounded by the link timeout
        assert timer.result == -errno.ETIME
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)
        ring.exit()


def test_cancel_all_without_cancel_any_cancels_op_by_op():
    ring = txuring.Ring(8)
    pipes = _idle_polls(ring, 3)
    try:
        ring._ops_ok = ring._ops_ok - {"socket"}  # as before 5.19: no CANCEL_ANY
        count = []
        ring.cancel_all().addCallback(count.append)
        drive(ring)
        assert count == [3] and ring.active_ops == 0
    finally:
        _close_pipes(pipes)
        ring.exit()


def test_a_callback_raising_baseexception_leaves_the_rest_of_the_batch_for_the_next_call():
    ring = txuring.Ring(8)
    r, w = os.pipe()
    try:
        raised = []

        def interrupting(res, flags):
            if not raised:
                raised.append(res)
                raise KeyboardInterrupt()

        os.write(w, b"x")
        poll = ring.poll_add(r, 1, multishot=True, callback=interrupting)
        assert ring.cqe_ready(1.0)  # the poll's CQE is first in the CQ...
        nops = [ring.noop() for _ in range(4)]
        ring.submit()  # ...and the noops' come after it, in the same harvest
        with pytest.raises(KeyboardInterrupt):
            while True:
                ring.cqe_ready(1.0)
                ring.fill_completions()
        # It went through at once; the noops' CQEs, harvested in the same batch, wait
        # in the ring (not in the kernel any more) for the next call.
        assert not any(h.done for h in nops)
        assert ring.stats()["undispatched"] == 4 and ring.cq_ready >= 4
        assert ring.cqe_ready(0)
        assert ring.fill_completions() == 4
        assert all(h.done for h in nops)
        ring.cancel(poll)
        drive(ring)
    finally:
        os.close(r)
        os.close(w)
        ring.exit()


def test_openat2_of_a_directory_with_a_mode_opens_it_as_os_open_does(tmp_path):
    ring = txuring.Ring(4)
    try:
        h = ring.openat2(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY, 0o755)
        drive(ring)
        assert h.result >= 0
        assert os.path.samestat(os.fstat(h.result), os.stat(tmp_path))
        os.close(h.result)
    finally:
        ring.exit()


@pytest.mark.parametrize("count", [2, 3, 8])
def test_a_dispatch_inside_a_target_hands_out_each_cqe_once(count):
    """
    A target that dispatches again itself (reactor.iterate() from dataReceived does)
    while its batch still holds CQEs: the inner fill_completions() hands out nothing
    (dispatch keeps its place in a local while a batch runs, and batches of up to two
    CQEs are read from the harvest arrays, which an inner harvest would overwrite), so
    each CQE goes out once: not a multishot op's data twice, nor an "unknown op" log.
    """
    from twisted.python import log as twlog

    from txuring._core import lib

    ring = txuring.Ring(16)
    calls = []
    logged = []

    class Record:
        _cqes = None
        _keep = None

        def __init__(self, k):
            self.k = k

        def _more(self, res, flags):
            calls.append(("more", self.k))

        def _final(self, res, flags):
            calls.append(self.k)
            if self.k == 0:
                assert ring.fill_completions() == 0  # (the nested dispatch)

    twlog.addObserver(logged.append)
    try:
        for k in range(count):
            ud = next(ring._ids)
            ring._handles[ud] = Record(k)
            assert lib.txu_prep_nop(ring._r, ud, 0) == 0
        ring.submit()
        from ringutil import wait_cqes

        wait_cqes(ring, count)
        ring.fill_completions()
    finally:
        twlog.removeObserver(logged.append)
    assert sorted(calls) == list(range(count)), calls
    assert not [e for e in logged if "unknown op" in str(e.get("message"))], logged
    assert ring.active_ops == 0
    ring.exit()
