"""
Helpers for the tests that drive a L{txuring.Ring} by hand, without a reactor.
"""

import time

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
