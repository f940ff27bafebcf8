"""
Helpers for the tests that drive a L{txuring.Ring} by hand, without a reactor.
"""

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

import txuring


def drive(ring, condition, timeout=5.0):
    """Submit, wait and dispatch until C{condition()}; whether it came in C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        ring.cqe_ready(0.01)
        ring.fill_completions()
    return True


def drive_until(ring, condition, timeout=5.0):
    """L{drive}, failing the test if C{condition()} did not come in C{timeout} s."""
    assert drive(ring, condition, timeout), "the ring did not get there in %s s" % (timeout,)


def settle(ring, timeout=5.0):
    """Drive until nothing is in flight (failing the test after C{timeout} s)."""
    drive_until(ring, lambda: ring.active_ops == 0, timeout)


def wait_cqes(ring, n=1, timeout=5.0):
    """Wait until C{n} CQEs are ready, dispatching none."""
    deadline = time.monotonic() + timeout
    while ring.cq_ready < n:
        assert time.monotonic() < deadline, "no CQE came"
        ring.cqe_ready(0.01)


def need(op):
    """Skip unless the running kernel has io_uring operation C{op}."""
    from txuring.opcode import OPCODES

    ring = txuring.Ring(2)
    try:
        if not ring.op_supported(op):
            pytest.skip("needs io_uring %s (Linux %s)" % (op, OPCODES[op].since))
    finally:
        ring.exit()


def rerun_alone(request, timeout=120):
    """
    Run the calling test again in a pytest process of its own, with no reactor, and
    pass or fail with it; returns True in the parent (which should return at once) and
    False in that child (which runs the test). For the tests that set off signal
    storms: in-process they would also hit pytest-timeout's alarm and the greenlet
    that pytest-twisted runs its reactor in (seen to deadlock there).
    """
    if os.environ.get("TXURING_TEST_ALONE") == request.node.nodeid:
        return False
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         request.node.nodeid],
        capture_output=True, text=True, timeout=timeout, cwd=request.config.rootpath,
        env=dict(os.environ, TXURING_TEST_ALONE=request.node.nodeid))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return True


@contextmanager
def interrupt_at_entry(function):
    """
    Within the block, the first call of C{function} raises KeyboardInterrupt at its
    entry, as a signal handler does when CPython checks for signals there.
    """
    target = function.__code__
    armed = [True]

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code is target and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt("signal at the entry of %s" % (function.__qualname__,))
        return None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)
