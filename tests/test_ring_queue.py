"""The overflow queue: FIFO order, linked chains kept whole, cancel before submission."""

import errno

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
