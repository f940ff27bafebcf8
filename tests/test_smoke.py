"""The shortest path through every layer: a ring, an op, a Deferred, a result."""

import os

import pytest_twisted

import txuring


@pytest_twisted.inlineCallbacks
def test_nop_completes_with_zero(ring):
    result = yield ring.syscall_result(ring.noop())
    assert result == 0


@pytest_twisted.inlineCallbacks
def test_read_of_a_file_matches_os_pread(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(100)
        n = yield ring.syscall_result(ring.read(fd, buf, offset=5000))
        assert bytes(buf[:n]) == os.pread(fd, 100, 5000)
    finally:
        os.close(fd)


def test_ring_reports_its_sizes():
    with txuring.Ring(8) as ring:
        assert ring.queue_depth == 8
        assert ring.cq_depth >= 4 * ring.queue_depth
