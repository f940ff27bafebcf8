"""
Review 6 of the hardened Ring layer (after issue 6): each test is one finding, and
fails on the code it was written against. Named C{test_rN_...} after the finding's
number in the review report.

A signal handler's exception is simulated where it can land (right after a C call
returns, at a Python function's entry) by a wrapper or a trace function raising
KeyboardInterrupt at exactly that point; the storm tests show the same with real
SIGALRMs.
"""

import errno
import gc
import os
import signal
import subprocess
import socket
import threading
import time

import pytest
from twisted.python import log
from twisted.python.failure import Failure

import txuring
from txuring import errors
from txuring.handle import Handle
from ringutil import drive, interrupt_at_entry, need, rerun_alone, settle, wait_cqes

CQE_F_BUFFER = 1
_DIR = os.path.dirname(os.path.abspath(txuring.__file__))


def fd_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def unknown_cqes():
    """Messages txuring logs for a CQE whose user_data is in no table."""
    seen = []

    def observer(event):
        if "unknown op" in str(event.get("message")):
            seen.append(event)

    log.addObserver(observer)
    yield seen
    log.removeObserver(observer)


def in_other_thread(fn):
    """C{fn()} in a fresh thread: ("ok", value) or the exception it raised."""
    out = []

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


# ---- r1: take() of one CQE twice publishes its buffer twice ----

def test_r1_take_twice_never_gives_the_kernel_one_buffer_twice():
    """
    take() hands back any id in range that is not lent: a second take() of the same
    CQE (or a forged flags value) publishes a buffer the kernel already has. The kernel
    then fills that buffer twice without it coming back, and the descriptor it
    overwrote (another buffer) is lost for good.
    """
    need("recv_multishot")
    ring = txuring.Ring(8)
    a, b = socket.socketpair()
    try:
        bufs = txuring.BufferRing(ring, 2, 16)
        got = []
        h = ring.recv_multishot(b.fileno(), bufs, lambda res, flags: got.append((res, flags)))
        ring.submit()
        a.send(b"first")
        assert drive(ring, lambda: got)
        res, flags = got[0]
        assert bufs.take(res, flags) == b"first"
        try:
            bufs.take(res, flags)  # the same CQE again: must be refused
        except (ValueError, RuntimeError):
            pass
        # Two more arrivals, neither taken: they must land in two different buffers.
        a.send(b"AAAA")
        assert drive(ring, lambda: len(got) == 2)
        a.send(b"BBBB")
        assert drive(ring, lambda: len(got) == 3)
        bids = [f >> 16 for _, f in got[1:]]
        assert bids[0] != bids[1], (
            "the kernel filled buffer %d twice without it being handed back: 'AAAA' "
            "was overwritten by 'BBBB'" % (bids[0],))
        ring.cancel(h)
        settle(ring)
    finally:
        a.close()
        b.close()
        settle(ring)
        ring.exit()


def test_r1_take_of_a_buffer_no_cqe_delivered_is_refused():
    """flags naming a buffer the kernel still holds (no CQE delivered it)."""
    need("socket")
    ring = txuring.Ring(8)
    try:
        bufs = txuring.BufferRing(ring, 4, 16)
        with pytest.raises((ValueError, RuntimeError)):
            bufs.take(3, CQE_F_BUFFER | (2 << 16))
    finally:
        ring.exit()


# ---- r2: a BufferRing of another ring (or closed, or not one) is accepted ----

def test_r2_recv_multishot_with_another_rings_buffer_ring_refused():
    """
    Only the group id reaches the SQE: with two rings each owning group 0, the op on
    ring B fills B's buffer while the callback takes (and republishes) A's.
    """
    need("recv_multishot")
    ring_a, ring_b = txuring.Ring(8), txuring.Ring(8)
    a, b = socket.socketpair()
    try:
        bufs_a = txuring.BufferRing(ring_a, 2, 16)
        txuring.BufferRing(ring_b, 2, 16)
        with pytest.raises(ValueError):
            ring_b.recv_multishot(b.fileno(), bufs_a, lambda res, flags: None)
    finally:
        a.close()
        b.close()
        for ring in (ring_a, ring_b):
            if ring.active_ops:
                ring.cancel_all()
            settle(ring)
            ring.exit()


@pytest.mark.parametrize("what", ["closed", "not_a_buffer_ring"])
def test_r2_recv_multishot_with_a_closed_or_wrong_buffer_ring_refused(what):
    need("recv_multishot")
    ring = txuring.Ring(8)
    a, b = socket.socketpair()
    try:
        if what == "closed":
            bufs = txuring.BufferRing(ring, 2, 16)
            bufs.close()
        else:
            bufs = 0  # a group id, say
        with pytest.raises((ValueError, TypeError, errors.RingClosed)) as info:
            ring.recv_multishot(b.fileno(), bufs, lambda res, flags: None)
        assert "group_id" not in str(info.value), info.value  # not a bare AttributeError
    finally:
        a.close()
        b.close()
        if ring.active_ops:
            ring.cancel_all()
        settle(ring)
        ring.exit()


# ---- r3: a signal landing right after a prep C call returns ----

class _InterruptAfterPrep:
    """
    C{txuring.opcode.lib} whose C{txu_prep_write} raises KeyboardInterrupt right after
    the real call prepared the SQE, once: what a signal handler does at the return of
    the C call (CPython checks for signals there).
    """

    def __init__(self, lib):
        self._lib = lib
        self.armed = True

    def __getattr__(self, name):
        real = getattr(self._lib, name)
        if name != "txu_prep_write":
            return real

        def prep(*args):
            ret = real(*args)
            if ret == 0 and self.armed:
                self.armed = False
                raise KeyboardInterrupt("signal at the return of txu_prep_write")
            return ret
        return prep


def test_r3_interrupt_after_prep_leaves_no_sqe_without_its_handle(
        monkeypatch, pipe, unknown_cqes):
    """
    SubmissionQueue.push removes the handle from the table when prep raises, but the
    SQE is already in the SQ: the op runs with no Handle holding its buffers (the
    caller got KeyboardInterrupt and dropped them), and its CQE is "unknown".
    """
    from txuring import opcode

    r, w = pipe
    ring = txuring.Ring(8)
    try:
        monkeypatch.setattr(opcode, "lib", _InterruptAfterPrep(opcode.lib))
        with pytest.raises(KeyboardInterrupt):
            ring.write(w, b"x")
        monkeypatch.undo()
        ring.submit()
        drive(ring, lambda: False, 0.2)
        assert not unknown_cqes, (
            "an SQE prepared for an op whose Handle was dropped reached the kernel "
            "(%d byte(s) written by an op the caller was told did not start)"
            % len(os.read(r, 10)))
    finally:
        monkeypatch.undo()
        settle(ring)
        ring.exit()


def test_r3_interrupt_after_prep_of_a_queued_op_does_not_run_it_twice(
        monkeypatch, pipe, unknown_cqes):
    """
    SubmissionQueue._prep_one: the SQE is prepared, the interrupt leaves the op in
    the overflow queue (state QUEUED), and the next submit prepares it again: the
    write goes out twice.
    """
    from txuring import opcode

    r, w = pipe
    ring = txuring.Ring(2, start_disabled=True)  # (nothing submits until we do)
    try:
        fake = _InterruptAfterPrep(opcode.lib)
        monkeypatch.setattr(opcode, "lib", fake)
        ring.noop()
        ring.noop()  # the SQ is full
        h = ring.write(w, b"y")  # waits in the overflow queue
        monkeypatch.undo()
        assert h.state == 0 and fake.armed
        with pytest.raises(KeyboardInterrupt):
            ring.submit()  # the loop's submit: fill() prepares the queued write
        ring.submit()
        settle(ring)
        drive(ring, lambda: False, 0.1)
        os.set_blocking(r, False)
        written = os.read(r, 10)
        assert written == b"y" and not unknown_cqes, (
            "one write op went to the kernel %d times (%r)" % (len(written), written))
    finally:
        monkeypatch.undo()
        settle(ring)
        ring.exit()


def test_r3_signal_storm_in_the_submission_path_runs_each_op_once(request, pipe, unknown_cqes):
    """The same with real SIGALRMs aimed at txuring/squeue.py: no CQE without a Handle."""
    if rerun_alone(request):
        return  # (passed in a process of its own)
    import fcntl

    r, w = pipe
    fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    os.set_blocking(r, False)
    squeue = os.path.join(_DIR, "squeue.py")

    def handler(signum, frame):
        if frame is not None and frame.f_code.co_filename == squeue:
            raise KeyboardInterrupt("SIGALRM storm")

    ring = txuring.Ring(4)
    interrupts = 0
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                while ring.active_ops < 64:
                    ring.write(w, b"z")
                ring.cqe_ready(0)
                ring.fill_completions()
            except KeyboardInterrupt:
                interrupts += 1
            try:
                os.read(r, 1 << 20)
            except BlockingIOError:
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    settle(ring)
    ring.exit()
    assert interrupts > 0
    assert not unknown_cqes, (
        "%d CQEs had no Handle (ops prepared twice, or prepared after their Handle was "
        "dropped) after %d interrupts" % (len(unknown_cqes), interrupts))


# ---- r4: a signal at the entry of Handle._answer loses the waiters ----

def test_r4_interrupt_at_answer_entry_loses_no_deferred():
    """
    Handle._final takes the waiters (self._waiters = None) and then calls _answer: a
    signal handler raising at _answer's entry (CPython checks for signals at every
    Python function's entry) leaves _cqes bumped, so dispatch does not hand the CQE
    over again, and the waiters are gone: the Deferred never fires.
    """
    ring = txuring.Ring(8)
    h = ring.noop()
    fired = []
    ring.syscall_result(h).addBoth(fired.append)
    ring.submit()
    wait_cqes(ring)
    with interrupt_at_entry(Handle._answer), pytest.raises(KeyboardInterrupt):
        ring.fill_completions()
    drive(ring, lambda: fired, 0.3)
    assert h.done
    assert fired == [0], "the op is done but its Deferred never fired: %r" % (fired,)
    ring.exit()


def test_r4_signal_storm_every_deferred_fires(request):
    """Real SIGALRMs aimed at the completion path (dispatch, _final, _answer)."""
    if rerun_alone(request):
        return  # (passed in a process of its own)
    names = {"dispatch", "_final", "_answer"}
    paths = {os.path.join(_DIR, "cqueue.py"), os.path.join(_DIR, "handle.py")}

    def handler(signum, frame):
        if frame is not None and frame.f_code.co_filename in paths and \
                frame.f_code.co_name in names:
            raise KeyboardInterrupt("SIGALRM storm")

    ring = txuring.Ring(256)
    handles, fired = [], set()
    interrupts = 0
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                while ring.active_ops < 512 and len(handles) < 100000:
                    h = ring.noop()
                    handles.append(h)
                    ring.syscall_result(h).addBoth(lambda v, u=h.user_data: fired.add(u))
                ring.cqe_ready(0)
                ring.fill_completions()
            except KeyboardInterrupt:
                interrupts += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    settle(ring)
    ring.exit()
    assert interrupts > 0
    assert all(h.done for h in handles)
    lost = [h for h in handles if h.user_data not in fired]
    assert not lost, "%d of %d ops are done but their Deferred never fired (%d " \
        "interrupts)" % (len(lost), len(handles), interrupts)


# ---- r5: rings that can never be closed (fd leaks) ----

def test_r5_ring_collected_in_another_thread_is_closed():
    """
    Ring.__del__ with nothing in flight calls exit(), which refuses a thread other than
    a live owner; the RuntimeError is swallowed, and the fd and mappings leak.
    """
    ring = txuring.Ring(8)
    fd = ring.fd
    box = [ring]
    del ring
    t = threading.Thread(target=box.clear)  # the last reference goes in that thread
    t.start()
    t.join()
    gc.collect()
    leaked = fd_open(fd) and os.readlink("/proc/self/fd/%d" % fd) == "anon_inode:[io_uring]"
    if leaked:
        os.close(fd)
    assert not leaked, "the ring's fd is still open after the ring was collected"


def test_r5_ring_whose_owner_thread_ended_with_an_op_in_flight_can_be_closed(pipe):
    """
    The owner thread ends with a read in flight (the kernel cancels a task's requests
    when it exits). exit() says "unless that thread has ended", but refuses with
    RingBusy; drain/fill_completions/cancel_all refuse the thread: the ring, its fd and
    its mappings can never be released (collected, it sits in _abandoned for ever).
    """
    r, w = pipe
    box = {}

    def owner():
        ring = txuring.Ring(8)
        ring.read(r, bytearray(8))
        ring.submit()
        box["ring"] = ring

    t = threading.Thread(target=owner)
    t.start()
    t.join()
    ring = box.pop("ring")
    fd = ring.fd
    deadline = time.monotonic() + 2
    last = None
    while not ring.closed and time.monotonic() < deadline:
        try:
            ring.exit()
        except (errors.RingBusy, RuntimeError) as e:
            last = e
            time.sleep(0.05)
    closed = ring.closed
    if not closed:
        ring._handles.clear()  # (let the test process release it)
        txuring.ring._live_rings.discard(ring)
        from txuring._core import lib
        lib.txu_close(ring._r)
        ring._closed = True
    assert closed and not fd_open(fd), "the ring can never be closed: %r" % (last,)


# ---- r6: the owner-thread rule is not applied everywhere ----

@pytest.mark.parametrize("call", ["take", "lend", "provide", "close"])
def test_r6_buffer_ring_refuses_another_thread(call):
    """
    BufferRing's calls touch the buffer ring's tail (non-atomic read-modify-write, run
    with the GIL released) and the kernel registration, yet any thread may call them.
    """
    need("socket")
    ring = txuring.Ring(8)
    try:
        bufs = txuring.BufferRing(ring, 4, 16)
        from txuring._core import lib
        for bid in (1, 2, 3):  # as if CQEs carrying them had been dispatched
            lib.txu_bufring_deliver(bufs._b, bid)
        bufs.lend(0, CQE_F_BUFFER | (3 << 16))  # bid 3 lent by the owner, for provide
        fn = {"take": lambda: bufs.take(3, CQE_F_BUFFER | (2 << 16)),
              "lend": lambda: bufs.lend(3, CQE_F_BUFFER | (1 << 16)),
              "provide": lambda: bufs.provide(3),
              "close": bufs.close}[call]
        outcome = in_other_thread(fn)
        assert isinstance(outcome, RuntimeError), \
            "BufferRing.%s from another thread was accepted: %r" % (call, outcome)
    finally:
        ring.exit()


def test_r6_cancel_of_a_queued_op_from_another_thread_refused():
    """
    Ring.cancel takes a QUEUED op out of the overflow queue (and fires its Deferred)
    before any thread check: from another thread this races the loop's fill(), which
    may have prepared that very op (GIL released) and then pops the wrong entry.
    """
    ring = txuring.Ring(2)
    try:
        ring.noop()
        ring.noop()  # the SQ is full (nothing submitted)
        with ring.linked():
            h = ring.noop()
            ring.noop()
        assert h.state == 0  # queued behind the SQ
        ran_in = []
        ring.syscall_result(h).addErrback(
            lambda f: ran_in.append(threading.current_thread().name))
        outcome = in_other_thread(lambda: ring.cancel(h))
        assert isinstance(outcome, RuntimeError) and not ran_in, (
            "cancel() from another thread was accepted; the op's errback ran in %r"
            % (ran_in,))
    finally:
        settle(ring)
        ring.exit()


# ---- r7: exit() runs callers' code before it closes ----

def test_r7_op_started_by_a_region_waiter_during_exit_is_not_lost():
    """
    exit() checks that nothing is in flight, then errbacks the Region's waiters (via
    _forget) before it closes the ring: an errback that starts an op (a plain read as a
    fallback) is accepted, then the ring is closed under it: its Handle never ends.
    """
    ring = txuring.Ring(8)
    region = txuring.Region(ring, 1, 4096)
    region.alloc()  # the only chunk is out: the next caller waits
    started, refused = [], []

    def fallback(failure):
        try:
            started.append(ring.noop())
        except Exception as e:
            refused.append(e)

    region.alloc_or_wait().addErrback(fallback)
    try:
        ring.exit()
    except errors.RingBusy:
        pass
    lost = ring.closed and [h for h in started if not h.done]
    assert not lost, "exit() closed the ring under %r, accepted during exit()" % (lost,)
    if not ring.closed:
        settle(ring)
        ring.exit()


def test_r7_alloc_or_wait_on_a_closed_region_does_not_hang():
    """A Region closed (by its ring's exit) with every chunk out: alloc_or_wait()
    queues a waiter nobody will ever answer."""
    ring = txuring.Ring(8)
    region = txuring.Region(ring, 1, 4096)
    region.alloc()
    ring.exit()
    outcome = []
    try:
        region.alloc_or_wait().addBoth(outcome.append)
    except errors.RingClosed as e:
        outcome.append(e)
    assert outcome, "the Deferred of alloc_or_wait() on a closed region never fires"


# ---- r8: cancel() of an op of the chain being built ----

def test_r8_cancel_of_an_op_in_the_chain_being_built(pipe):
    """
    Inside ring.linked(), the op is in neither the table nor the overflow queue, so
    cancel() submits a cancel for a user_data the kernel has not seen (ENOENT, which
    counts as answered): the Deferred says done, and the op runs anyway.
    """
    r, w = pipe
    ring = txuring.Ring(8)
    answered = []
    try:
        try:
            with ring.linked():
                h = ring.read(r, bytearray(4))
                ring.cancel(h).addBoth(answered.append)
        except (ValueError, RuntimeError):
            answered.append("refused")
        drive(ring, lambda: h.done, 0.3)
        assert answered == ["refused"] or h.done, (
            "cancel() answered %r but the op it cancelled is still running: %r"
            % (answered, h))
    finally:
        os.write(w, b"four")
        settle(ring)
        ring.exit()


# ---- r9: unclear errors for out-of-range numbers ----

@pytest.mark.parametrize("seconds", [float("inf"), 1e12])
def test_r9_huge_wait_timeouts(seconds):
    """
    cqe_ready(1e12) (or inf) raises OverflowError "int too big to convert" from cffi:
    a far timer (reactor.callLater(1e10, ...)) makes the loop's wait fail. A wait that
    long is "no limit" in practice; clamp it.
    """
    ring = txuring.Ring(8)
    try:
        ring.noop()
        assert ring.cqe_ready(seconds)
        ring.fill_completions()
    finally:
        settle(ring)
        ring.exit()


@pytest.mark.parametrize("call", ["timeout_inf", "op_supported_300"])
def test_r9_clear_errors(call):
    ring = txuring.Ring(8)
    try:
        with pytest.raises(ValueError) as info:
            if call == "timeout_inf":
                ring.timeout(float("inf"))
            else:
                ring.op_supported(300)
        assert len(str(info.value)) > 20, info.value
    finally:
        settle(ring)
        ring.exit()


# ---- r10: an interrupt in a chunk's completion leaves it busy for ever ----

def test_r10_interrupt_in_the_chunk_callback_does_not_pin_the_chunk(pipe):
    """
    A fixed op's Handle used to call chunk._unbusy as its callback. A signal landing at
    that call's entry (or _call_safely's) is after _cqes was bumped, so the CQE is not
    handed over again: the op is done, the chunk counts busy for ever, and free()
    (hence Region.close()) refuses it for good. (Now busyness is derived from the
    Handle's state; the signal is aimed at the entry of the delivery, Handle._finish.)
    """

    r, w = pipe
    ring = txuring.Ring(8)
    region = txuring.Region(ring, 2, 4096)
    chunk = region.alloc()
    os.write(w, b"data")
    h = ring.read_fixed(r, chunk, nbytes=4)
    ring.submit()
    wait_cqes(ring)
    try:
        # (With busyness derived from the Handle's state, a fixed op with no waiter
        # has no delivery to interrupt: then nothing is raised.)
        with interrupt_at_entry(Handle._finish):
            ring.fill_completions()
    except KeyboardInterrupt:
        pass
    drive(ring, lambda: False, 0.1)
    assert h.done and h.result == 4
    try:
        chunk.free()
    except RuntimeError as e:
        pytest.fail("the op is done but its chunk can never be freed: %s" % (e,))
    finally:
        if not chunk.freed:
            chunk.free()
        region.close()
        ring.exit()


# ---- r11: a fork from a callback: the child dispatches the parent's batch ----

def test_r11_fork_child_does_not_dispatch_the_rest_of_the_parents_batch():
    """
    fill_completions checks the fork only at its start. A callback that forks (os.fork
    returning in the child, e.g. a pre-fork server) returns into the dispatch loop in
    the child, which goes on handing the parent's harvested CQEs to the child's copies:
    both processes then act on the same completions (an accepted fd served twice).
    """
    ring = txuring.Ring(8)
    handles = [ring.noop() for _ in range(4)]
    r, w = os.pipe()
    seen = []
    forked = []

    def on_result(value, i):
        seen.append(i)
        if i == 0:
            forked.append(os.fork())

    for i, h in enumerate(handles):
        ring.syscall_result(h).addCallback(on_result, i)
    ring.submit()
    wait_cqes(ring, 4)
    try:
        ring.fill_completions()
    except BaseException:
        pass
    if forked and forked[0] == 0:  # the child
        try:
            os.write(w, repr(seen).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(forked[0], 0)
    child_saw = os.read(r, 100).decode()
    os.close(r)
    ring.exit()
    assert child_saw == "[0]", (
        "the fork child went on dispatching the parent's CQEs: its callbacks saw %s"
        % (child_saw,))


# ---- r12: a KeyboardInterrupt inside a result conversion is swallowed ----

def test_r12_interrupt_in_convert_is_not_the_ops_result(tmp_path):
    """
    Handle._answer runs convert under `except BaseException: outcome = Failure()`: a
    signal landing in the conversion (statx_result_of, address_of, recv_msg's) becomes
    the op's failure, and the KeyboardInterrupt never reaches the loop (Ctrl-C lost).
    """
    from txuring import opcode

    p = tmp_path / "f"
    p.write_bytes(b"12345")
    ring = txuring.Ring(8)
    h = ring.statx(str(p))
    outcome = []
    ring.syscall_result(h).addBoth(outcome.append)
    ring.submit()
    wait_cqes(ring)
    interrupted = False
    try:
        with interrupt_at_entry(opcode.statx_result_of):
            ring.fill_completions()
    except KeyboardInterrupt:
        interrupted = True
    drive(ring, lambda: outcome, 0.3)
    settle(ring)
    ring.exit()
    swallowed = outcome and getattr(outcome[0], "type", None) is KeyboardInterrupt
    assert interrupted and not swallowed, (
        "the KeyboardInterrupt became the statx's result (%r) instead of reaching the "
        "loop" % (outcome,))


# ---- r13: a Region over 1 GiB gets a misleading error ----

def test_r13_region_over_one_gib_names_the_real_limit():
    """
    The kernel refuses a registered buffer over 1 GiB with EFAULT (io_buffer_validate);
    Region reports it as RLIMIT_MEMLOCK trouble and tells the user to raise ulimit -l,
    which can not help.
    """
    ring = txuring.Ring(8)
    try:
        with pytest.raises((ValueError, OSError)) as info:
            txuring.Region(ring, (1 << 18) + 1, 4096, fallback=False)
        text = str(info.value)
        assert "1 GiB" in text or "1GiB" in text or "2**30" in text, text
    finally:
        ring.exit()


# ---- r14: a bad batch leaks the ring ----

def test_r14_huge_batch_refused_before_the_ring_is_made():
    """
    batch has no upper bound: Ring(8, batch=2**40) makes the ring, then fails with a
    bare MemoryError allocating the harvest arrays, and __del__ cannot close the
    half-made ring (exit() needs _buffer_rings): the io_uring fd and mappings leak.
    """
    def ring_fds():
        out = set()
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink("/proc/self/fd/" + name) == "anon_inode:[io_uring]":
                    out.add(int(name))
            except OSError:
                pass
        return out

    before = ring_fds()
    with pytest.raises((ValueError, MemoryError)) as info:
        txuring.Ring(8, batch=2**40)
    gc.collect()
    leaked = ring_fds() - before
    for fd in leaked:
        os.close(fd)
    assert not leaked, "Ring(batch=2**40) leaked its io_uring fd (%s)" % (info.value,)
    assert isinstance(info.value, ValueError) and "batch" in str(info.value), info.value


def test_r5_ops_that_ran_before_the_owner_thread_ended_get_their_own_result(tmp_path):
    """
    An op the kernel completed before the owner thread ended, its CQE not yet
    dispatched, ends with that CQE's result at exit(), not with the ECANCELED given to
    ops that never ran: a close that ran must not be done again by hand (that would
    close whatever file took its number since).
    """
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDONLY)
    box = {}

    def owner():
        ring = txuring.Ring(8)
        box["closed"] = ring.syscall_result(ring.close(fd))
        ring.submit()
        box["ring"] = ring

    t = threading.Thread(target=owner)
    t.start()
    t.join()
    ring = box.pop("ring")
    deadline = time.monotonic() + 2
    while not ring.closed:
        try:
            ring.exit()
        except (errors.RingBusy, RuntimeError):
            assert time.monotonic() < deadline, "the ring could not be closed"
            time.sleep(0.05)
    got = []
    box["closed"].addBoth(got.append)
    assert got and not isinstance(got[0], Failure), got
    assert not fd_open(fd)
