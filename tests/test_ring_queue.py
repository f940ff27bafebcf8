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
