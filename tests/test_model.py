"""
A hypothesis stateful test: random ops on a small Ring (depth 1 to 4), driven by hand
(submit / cqe_ready / fill_completions, no reactor), against a model of the file they
write and read.

Ops: writes of random bytes at random offsets of a temp file, reads compared with the
model's bytes, noops, short timeouts, cancels of random in-flight handles (by
L{Ring.cancel} and by cancelling their Deferreds), and submits / harvests at random
points. Invariants: every op's Deferred fires exactly once, only after the op's handle
is done, with the model's answer; cancels are answered; at the end nothing is in flight
and no fd leaked.

Concurrent file ops on overlapping ranges have no defined order in io_uring, so the
model only issues a write whose range no in-flight op touches, and a read whose range no
in-flight write touches; a write changes the model when it completes (a cancelled write
that never ran changes nothing).

Issue 6 added what found its defects: objects closed and exited mid-sequence (a
BufferRing feeding a multishot recv, closed while it runs; a Region whose chunks take
read_fixed ops, closed when it can be; ring.exit() refused while ops are in flight, and
done when none are, the model then going on with a new ring), cancels across two rings
(refused with ValueError; neither ring's ops affected), ops from another thread
(refused), a fork child touching the ring (refused; the parent carries on), and a
callback raising KeyboardInterrupt (nothing harvested is lost). A call on a closed
object that could crash the interpreter is made in a fork child (L{probe_in_child}).

Issue 9 added the garbage collector at random points (C{gc.collect()}), and dropped
references: reads and writes whose buffer the model drops at once (only a weak
reference is kept: the op's Handle must keep the buffer alive until its final CQE, and
a read's bytes are checked if it is still alive after), and ops whose Handle and
Deferred nobody keeps (they must still complete and leave the ring).
tests/stress/test_stress_fuzz.py runs this model long (C{TXURING_STRESS=full}).

Examples: C{TXURING_MODEL_EXAMPLES} (default 30) and C{TXURING_MODEL_STEPS} (default
40) raise the search, e.g. C{TXURING_MODEL_EXAMPLES=2000 pytest tests/test_model.py}.
"""

import errno
import faulthandler
import gc
import os
import select
import socket
import tempfile
import threading
import time
import weakref

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from twisted.internet.defer import CancelledError

import txuring
from txuring import errors
from txuring.handle import DONE

from conftest import open_fds

FILE_SIZE = 4096


class Op:
    """One op the model follows: its handle, what it expects, what happened."""

    def __init__(self, kind, handle, start=0, data=b"", buf=None):
        self.kind = kind
        self.handle = handle
        self.start = start
        self.data = data  # a write's bytes; a read's expected bytes
        self.buf = buf
        self.outcomes = []  # (result or Failure, handle state when the Deferred fired)
        self.deferred_cancelled = False
        self.cancel_requested = False

    @property
    def end(self):
        return self.start + len(self.data)

    def overlaps(self, start, end):
        return self.start < end and start < self.end


def probe_in_child(calls):
    """
    Make each of C{calls} (name, function) in a fork child: a crash there fails the
    model instead of killing pytest. Returns the names whose call did not raise a
    clear error (a RuntimeError or ValueError with a sentence), with what happened.
    """
    bad = []
    for name, fn in calls:
        pid = os.fork()
        if pid == 0:
            faulthandler.disable()  # a crash here is the finding: no dump from pytest's
            code = 0
            try:
                fn()
            except (RuntimeError, ValueError) as e:
                code = 0 if len(str(e)) >= 15 else 3
            except BaseException:
                code = 2
            else:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            bad.append((name, "crashed with signal %d" % (os.WTERMSIG(status),)))
        elif os.waitstatus_to_exitcode(status):
            bad.append((name, {1: "did not raise", 2: "raised an unclear error",
                               3: "raised an error without a message"}.get(
                                   os.waitstatus_to_exitcode(status), "?")))
    return bad


class Buffer(bytearray):
    """A bytearray that can be weakly referenced (to see who keeps it alive)."""


def _interrupt(res, flags):
    raise KeyboardInterrupt("raised by a poll callback")


class RingModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ring = None
        self.ops = []
        self.cancels = []
        self.other = None  # a second ring, for cancels across rings
        self.other_ops = []
        self.bufs = None  # a BufferRing feeding self.recv
        self.recv = None  # a recv_multishot on self.stream[1]
        self.stream = None  # a socketpair: bytes sent on [0] arrive through self.bufs
        self.sent = bytearray()
        self.got = bytearray()
        self.region = None
        self.interrupts_due = 0  # KeyboardInterrupts a callback will raise
        self.retired = []  # rings exited mid-sequence

    @initialize(depth=st.integers(1, 4))
    def setup(self, depth):
        self.fds_before = open_fds()
        self.ring = txuring.Ring(depth)
        fd, self.path = tempfile.mkstemp(prefix="txuring-model-")
        os.ftruncate(fd, FILE_SIZE)
        self.fd = fd
        self.model = bytearray(FILE_SIZE)
        self.depth = depth
        # Always readable (one byte never read): polls on it complete at once.
        self.poll_r, self.poll_w = os.pipe()
        os.write(self.poll_w, b"x")

    # ---- helpers ----

    def _track(self, op):
        op.ring = self.ring
        d = self.ring.syscall_result(op.handle)
        op.deferred = d

        def record(outcome):
            op.outcomes.append((outcome, op.handle.state))
            if op.kind == "write" and op.handle.result == len(op.data):
                # The write ran (whatever happened to its Deferred): the file changed.
                self.model[op.start:op.end] = op.data
            return None

        d.addBoth(record)
        self.ops.append(op)
        return op

    def _in_flight(self):
        return [op for op in self.ops if not op.handle.done]

    # ---- ops ----

    @rule(start=st.integers(0, FILE_SIZE - 1), data=st.binary(min_size=1, max_size=300))
    def write(self, start, data):
        data = data[:FILE_SIZE - start]
        end = start + len(data)
        if any(op.kind in ("write", "read") and op.overlaps(start, end)
               for op in self._in_flight()):
            return
        self._track(Op("write", self.ring.write(self.fd, data, start), start, data))

    @rule(start=st.integers(0, FILE_SIZE - 1), size=st.integers(1, 300))
    def read(self, start, size):
        size = min(size, FILE_SIZE - start)
        end = start + size
        if any(op.kind == "write" and op.overlaps(start, end) for op in self._in_flight()):
            return
        buf = bytearray(size)
        h = self.ring.read(self.fd, buf, start)
        self._track(Op("read", h, start, bytes(self.model[start:end]), buf))

    @rule()
    def noop(self):
        self._track(Op("noop", self.ring.noop()))

    @rule(delay=st.sampled_from([0, 0.001, 0.005, 0.02]))
    def timeout(self, delay):
        self._track(Op("timeout", self.ring.timeout(delay)))

    # No precondition on "something in flight": which ops are still in flight depends
    # on the kernel's timing, and hypothesis needs the same draws on every replay. So a
    # cancel picks among every op so far; cancelling a finished one must be harmless.
    @rule(pick=st.integers(0, 1000), how=st.sampled_from(["ring", "deferred"]))
    def cancel(self, pick, how):
        ops = [op for op in self.ops if op.ring is self.ring]
        if not ops:
            return
        op = ops[pick % len(ops)]
        if how == "ring":
            op.cancel_requested = True
            answered = []
            self.cancels.append(answered)
            self._interruptible(
                lambda: self.ring.cancel(op.handle).addBoth(answered.append))
        elif not op.deferred.called:  # (cancelling a fired Deferred does nothing)
            op.deferred_cancelled = True
            self._interruptible(op.deferred.cancel)

    def _interruptible(self, fn):
        """C{fn()}, where an interrupting poll's callback may raise KeyboardInterrupt."""
        try:
            fn()
        except KeyboardInterrupt:
            assert self.interrupts_due, "a KeyboardInterrupt nobody raised"
            self.interrupts_due -= 1

    # ---- issue 9: the garbage collector, dropped buffers and handles ----

    @rule()
    def collect(self):
        gc.collect()

    @rule(start=st.integers(0, FILE_SIZE - 1), size=st.integers(1, 300),
          write=st.booleans(), seed=st.integers(0, 255))
    def dropped_buffer(self, start, size, write, seed):
        size = min(size, FILE_SIZE - start)
        end = start + size
        kinds = ("write", "read") if write else ("write",)
        if any(op.kind in kinds and op.overlaps(start, end) for op in self._in_flight()):
            return
        if write:
            data = bytes((seed + i) % 256 for i in range(size))
            buf = Buffer(data)
            op = self._track(Op("write", self.ring.write(self.fd, buf, start), start, data))
        else:
            buf = Buffer(size)
            op = self._track(Op("read", self.ring.read(self.fd, buf, start), start,
                                bytes(self.model[start:end])))
            op.buf = None
        op.weak_buf = weakref.ref(buf)
        del buf
        gc.collect()
        assert op.handle.done or op.weak_buf() is not None, \
            "the buffer of an op in flight was collected: %r" % (op.handle,)

    @rule()
    def dropped_handle(self):
        self.ring.noop()  # neither its Handle nor a Deferred is kept by anyone

    # ---- issue 6: fixed buffers ----

    @rule(start=st.integers(0, FILE_SIZE - 1), size=st.integers(1, 300))
    def read_fixed(self, start, size):
        if self.region is None:
            self.region = txuring.Region(self.ring, 2, 4096)
        if not self.region.avail:
            return
        size = min(size, FILE_SIZE - start)
        end = start + size
        if any(op.kind == "write" and op.overlaps(start, end) for op in self._in_flight()):
            return
        chunk = self.region.alloc()
        h = self.ring.read_fixed(self.fd, chunk, start, size)
        op = self._track(Op("read_fixed", h, start, bytes(self.model[start:end]), chunk))

        def copy_and_free(outcome):
            op.fixed_bytes = chunk.bytes(size)
            chunk.free()
            return outcome

        op.deferred.addBoth(copy_and_free)

    @rule()
    def region_close(self):
        region = self.region
        if region is None:
            return
        if region.avail != region.length:
            try:
                region.close()
            except RuntimeError:
                return  # chunks are out: refused, and the region goes on
            raise AssertionError("Region.close() accepted with chunks in use")
        region.close()
        self.region = None

    # ---- issue 6: a BufferRing closed mid-sequence ----

    @rule()
    def recv_start(self):
        if self.bufs is None:
            self.bufs = txuring.BufferRing(self.ring, 4, 64)
            self.stream = socket.socketpair()
            self.sent, self.got = bytearray(), bytearray()
        if self.recv is None or self.recv.done:
            bufs = self.bufs

            def on_cqe(res, flags):
                if res > 0 and bufs is self.bufs:  # (a closed one is probed in a child)
                    self.got += bufs.take(res, flags)

            self.recv = self.ring.recv_multishot(self.stream[1].fileno(), bufs, on_cqe)

    @rule(data=st.binary(min_size=1, max_size=200))
    def recv_send(self, data):
        if self.stream is not None:
            self.stream[0].send(data)
            self.sent += data

    @rule()
    def recv_stop(self):
        if self.recv is not None and not self.recv.done:
            self.ring.cancel(self.recv)

    @rule()
    def bufring_close(self):
        bufs = self.bufs
        if bufs is None:
            return
        bufs.close()
        self.bufs = None  # its bytes in flight are lost to the model: a new stream next
        self.stream[0].close()
        self.stream[1].close()
        self.stream = None
        bad = probe_in_child([("provide", lambda: bufs.provide(0)),
                              ("take", lambda: bufs.take(4, 1 | (1 << 16)))])
        assert not bad, "a closed BufferRing: %s" % (bad,)

    # ---- issue 6: exit attempts ----

    @rule()
    def exit_attempt(self):
        ring = self.ring
        if ring.active_ops:
            try:
                ring.exit()
            except errors.RingBusy:
                assert not ring.closed
                return
            raise AssertionError("exit() accepted with %d ops in flight" % (ring.active_ops,))
        # Nothing in flight: exit for real, check the closed ring, go on with a new one.
        region, bufs = self.region, self.bufs
        ring.exit()
        assert ring.closed and ring.fd == -1
        calls = [("noop", ring.noop), ("submit", ring.submit),
                 ("sqe_ready", lambda: ring.sqe_ready and None),
                 ("cq_ready", lambda: ring.cq_ready and None),
                 ("has_pending_jobs", lambda: ring.has_pending_jobs() and None)]
        if bufs is not None:
            calls += [("provide", lambda: bufs.provide(0)),
                      ("take", lambda: bufs.take(4, 1 | (1 << 16)))]
        # (a read-only property may answer 0/False instead of raising, and take()
        # copies out a CQE harvested before the close: the buffers are Python memory)
        bad = [b for b in probe_in_child(calls)
               if not (b[1] == "did not raise" and b[0] in (
                   "sqe_ready", "cq_ready", "has_pending_jobs", "take"))]
        assert not bad, "an exited ring: %s" % (bad,)
        if region is not None and region.avail == region.length:
            region.close()
        if self.stream is not None:
            self.stream[0].close()
            self.stream[1].close()
        self.retired.append(ring)
        self.ring = txuring.Ring(self.depth)
        self.region = self.bufs = self.recv = self.stream = None

    # ---- issue 6: two rings ----

    def _other(self):
        if self.other is None:
            self.other = txuring.Ring(4)
        return self.other

    @rule(delay=st.sampled_from([0, 0.002, 0.01]))
    def other_timeout(self, delay):
        self.other_ops.append(self._other().timeout(delay))

    @rule(pick=st.integers(0, 1000), how=st.sampled_from(["cancel", "poll_remove",
                                                          "timeout_remove"]),
          direction=st.booleans())
    def cancel_across(self, pick, how, direction):
        other = self._other()
        if direction:
            handles, by = [op.handle for op in self.ops], other
        else:
            handles, by = self.other_ops, self.ring
        live = [h for h in handles if not h.done]
        if not live:
            return
        h = live[pick % len(live)]
        try:
            getattr(by, how)(h)
        except ValueError:
            return
        raise AssertionError("%s of another ring's %r was accepted" % (how, h))

    # ---- issue 6: threads, fork, BaseExceptions ----

    @rule()
    def from_thread(self):
        before = self.ring.active_ops
        outcome = []

        def other():
            try:
                outcome.append(self.ring.noop())
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert outcome and isinstance(outcome[0], RuntimeError), \
            "an op from another thread gave %r" % (outcome,)
        assert self.ring.active_ops == before, "the other thread's op was refused (%r) " \
            "but left registered: active_ops %d -> %d" % (outcome, before,
                                                         self.ring.active_ops)

    @rule()
    def fork_child_touches(self):
        ring, bufs, region = self.ring, self.bufs, self.region
        live = [op.handle for op in self.ops if not op.handle.done]
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                calls = [ring.noop, ring.submit, lambda: ring.cqe_ready(0),
                         ring.fill_completions]
                if live:
                    calls.append(lambda: ring.cancel(live[0]))
                if bufs is not None:
                    calls += [lambda: bufs.provide(0), lambda: bufs.take(4, 1)]
                for i, call in enumerate(calls):
                    try:
                        call()
                    except (RuntimeError, ValueError):
                        pass
                    except BaseException:
                        code |= 1 << i
                    else:
                        code |= 1 << i
                # Tidying up the child's copies must not touch the parent's.
                for tidy in ([bufs.close] if bufs else []) + ([region.close] if region
                                                             else []) + [ring.exit]:
                    try:
                        tidy()
                    except BaseException:
                        pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), "the fork child crashed (status %d)" % (status,)
        assert os.waitstatus_to_exitcode(status) == 0, \
            "fork child calls that were not refused: mask %d" % (
                os.waitstatus_to_exitcode(status),)

    @rule()
    def interrupting_poll(self):
        self.interrupts_due += 1
        self._track(Op("poll", self.ring.poll_add(self.poll_r, select.POLLIN,
                                                  callback=_interrupt)))

    # ---- driving ----

    def _fill(self):
        self._interruptible(self.ring.fill_completions)

    @rule()
    def submit(self):
        self.ring.submit()

    @rule()
    def harvest(self):
        self.ring.cqe_ready(0)
        self._fill()

    @rule()
    def wait(self):
        if self.ring.active_ops:
            self.ring.cqe_ready(0.005)
        self._fill()

    # ---- invariants ----

    @invariant()
    def stream_in_order(self):
        if self.stream is not None:
            assert self.sent.startswith(self.got), (bytes(self.got), bytes(self.sent))

    @invariant()
    def dropped_buffers_live_while_in_flight(self):
        for op in self.ops:
            ref = getattr(op, "weak_buf", None)
            if ref is not None and not op.handle.done:
                assert ref() is not None, "a dropped buffer of %r was collected while " \
                    "the op was in flight" % (op.handle,)

    @invariant()
    def completions_are_consistent(self):
        if self.ring is None:
            return
        for op in self.ops:
            assert len(op.outcomes) <= 1, "%r fired %d times" % (op.handle, len(op.outcomes))
            if op.outcomes:
                self._check_outcome(op)
        in_flight = sum(1 for op in self.ops if not op.handle.done)
        assert self.ring.active_ops >= in_flight

    def _check_outcome(self, op):
        outcome, state = op.outcomes[0]
        h = op.handle
        # Whatever happened, the Deferred fired only once the kernel was done with it.
        assert state == DONE, (h, outcome)
        if op.deferred_cancelled:
            assert outcome.check(CancelledError), (h, outcome)
        elif h.result == -errno.ECANCELED:
            assert op.cancel_requested, (h, outcome)
            assert outcome.value.errno == errno.ECANCELED
        elif op.kind in ("read", "write", "read_fixed"):
            assert outcome == len(op.data), (h, outcome)
        elif op.kind == "poll":
            assert outcome & select.POLLIN, (h, outcome)
        else:
            assert outcome == 0, (h, outcome)
        if op.kind == "read" and h.result == len(op.data):
            buf = op.buf if op.buf is not None else op.weak_buf()
            if buf is not None:  # (a dropped one may be gone once the op is done)
                assert bytes(buf) == op.data  # the model's bytes at the time of the read
        if op.kind == "read_fixed" and h.result == len(op.data):
            assert op.fixed_bytes == op.data
        if op.kind == "timeout":
            assert h.result in (-errno.ETIME, -errno.ECANCELED)
        if op.kind == "noop":
            assert h.result == 0

    def teardown(self):
        ring = self.ring
        if ring is None:
            return
        try:
            if self.recv is not None and not self.recv.done:
                ring.cancel(self.recv)
            deadline = time.monotonic() + 10
            while ring.active_ops or (self.other is not None and self.other.active_ops):
                assert time.monotonic() < deadline, "ops never completed: %r" % (
                    [h for h in ring._handles.values()],)
                ring.cqe_ready(0.02)
                self._fill()
                if self.other is not None:
                    self.other.cqe_ready(0)
                    self.other.fill_completions()
            for op in self.ops:
                assert len(op.outcomes) == 1, "%r fired %d times" % (
                    op.handle, len(op.outcomes))
                self._check_outcome(op)
            assert all(answered == [None] for answered in self.cancels)
            # The other ring's timeouts were never cancelled: each fired (result ETIME).
            assert all(h.result == -errno.ETIME for h in self.other_ops), self.other_ops
            assert os.pread(self.fd, FILE_SIZE + 1, 0) == bytes(self.model)
            if self.region is not None:
                self.region.close()
            if self.bufs is not None:
                self.bufs.close()
            ring.exit()
        finally:
            if not ring.closed and not ring.active_ops:
                ring.exit()
            if self.other is not None and not self.other.active_ops:
                self.other.exit()
            if self.stream is not None:
                self.stream[0].close()
                self.stream[1].close()
            os.close(self.fd)
            os.close(self.poll_r)
            os.close(self.poll_w)
            os.unlink(self.path)
        assert open_fds() == self.fds_before


def model_settings(examples=None, steps=None):
    """The model's settings: the environment's, or C{examples} and C{steps}."""
    return settings(
        max_examples=examples or int(os.environ.get("TXURING_MODEL_EXAMPLES", "30")),
        stateful_step_count=steps or int(os.environ.get("TXURING_MODEL_STEPS", "40")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


RingModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("TXURING_MODEL_EXAMPLES", "30")),
    stateful_step_count=int(os.environ.get("TXURING_MODEL_STEPS", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingModel = RingModel.TestCase
