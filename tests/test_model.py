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
"""

import errno
import os
import tempfile
import time

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


class RingModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ring = None
        self.ops = []
        self.cancels = []

    @initialize(depth=st.integers(1, 4))
    def setup(self, depth):
        self.fds_before = open_fds()
        self.ring = txuring.Ring(depth)
        fd, self.path = tempfile.mkstemp(prefix="txuring-model-")
        os.ftruncate(fd, FILE_SIZE)
        self.fd = fd
        self.model = bytearray(FILE_SIZE)

    # ---- helpers ----

    def _track(self, op):
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
        if not self.ops:
            return
        op = self.ops[pick % len(self.ops)]
        if how == "ring":
            op.cancel_requested = True
            answered = []
            self.cancels.append(answered)
            self.ring.cancel(op.handle).addBoth(answered.append)
        elif not op.deferred.called:  # (cancelling a fired Deferred does nothing)
            op.deferred_cancelled = True
            op.deferred.cancel()

    # ---- driving ----

    @rule()
    def submit(self):
        self.ring.submit()

    @rule()
    def harvest(self):
        self.ring.cqe_ready(0)
        self.ring.fill_completions()

    @rule()
    def wait(self):
        if self.ring.active_ops:
            self.ring.cqe_ready(0.005)
        self.ring.fill_completions()

    # ---- invariants ----

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
        elif op.kind in ("read", "write"):
            assert outcome == len(op.data), (h, outcome)
        else:
            assert outcome == 0, (h, outcome)
        if op.kind == "read" and h.result == len(op.data):
            assert bytes(op.buf) == op.data  # the model's bytes at the time of the read
        if op.kind == "timeout":
            assert h.result in (-errno.ETIME, -errno.ECANCELED)
        if op.kind == "noop":
            assert h.result == 0

    def teardown(self):
        ring = self.ring
        if ring is None:
            return
        try:
            deadline = time.monotonic() + 10
            while ring.active_ops:
                assert time.monotonic() < deadline, "ops never completed: %r" % (
                    list(ring._handles.values()),)
                ring.cqe_ready(0.02)
                ring.fill_completions()
            for op in self.ops:
                assert len(op.outcomes) == 1, "%r fired %d times" % (
                    op.handle, len(op.outcomes))
                self._check_outcome(op)
            assert all(answered == [None] for answered in self.cancels)
            assert os.pread(self.fd, FILE_SIZE + 1, 0) == bytes(self.model)
            ring.exit()
        finally:
            if not ring.closed and not ring.active_ops:
                ring.exit()
            os.close(self.fd)
            os.unlink(self.path)
        assert open_fds() == self.fds_before


RingModel.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingModel = RingModel.TestCase
