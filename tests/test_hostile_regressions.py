"""
Regressions for what the stress suite's hostile-argument runner (tests/stress/
hostile_runner.py) found in txuring's public API.

  - C{Chunk(region, index)} took any index: a chunk past either end of its Region gave
    the kernel a pointer outside the Region's memory. With a fixed (registered) buffer
    the kernel refuses it (EFAULT), but a Region that runs without one (RLIMIT_MEMLOCK
    refused the registration, or more than 1 GiB) uses plain reads, and the kernel
    wrote into whatever memory lay there (the interpreter died or carried on corrupted).
  - C{Region(ring=...)}, C{Chunk(region=...)}, C{Region.free(chunk=...)} with the wrong
    kind of object raised AttributeError from deep inside instead of saying what is
    wrong.
"""

import os
import tempfile
import warnings

import pytest

import txuring


def in_child(fn):
    """Run C{fn} in a fork child; return its exit status (a signal: negative)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def unfixed_region():
    """A Region running without a registered buffer (as when the kernel refuses one)."""
    ring = txuring.Ring(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        region = txuring.Region(ring, (1 << 30) // 4096 + 1, 4096)  # > 1 GiB: not fixed
    assert not region.fixed
    return ring, region


@pytest.mark.parametrize("index", [-1, -(1 << 20), "the last + 1", 1 << 40])
def test_chunk_outside_its_region_is_refused(index):
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, b"Z" * 8192)

    def make_and_read():
        # (in the child: a ring is its maker's, and a fork child may not touch it)
        ring, region = unfixed_region()
        i = region.length if index == "the last + 1" else index
        try:
            chunk = txuring.Chunk(region, i)
        except ValueError:
            os._exit(0)  # refused at the call: what we want
        h = ring.read_fixed(fd, chunk, 0, 4096)
        ring.submit()
        ring.cqe_ready(1)
        ring.fill_completions()
        os._exit(1 if h.result == 4096 else 2)

    try:
        status = in_child(make_and_read)
    finally:
        os.close(fd)
    assert status == 0, {1: "the kernel read into a chunk outside the Region",
                         2: "a chunk outside the Region was accepted"}.get(
                             status, "the child died with %s" % (status,))


def test_chunk_index_must_be_an_int():
    ring = txuring.Ring(4)
    region = txuring.Region(ring, 2, 4096)
    try:
        for bad in (1.5, "0", None, True):
            with pytest.raises((TypeError, ValueError), match="index"):
                txuring.Chunk(region, bad)
    finally:
        region.close()
        ring.exit()


@pytest.mark.parametrize("bad", [None, 1.5, -1, object(), b"ring"])
def test_wrong_objects_are_named(bad):
    ring = txuring.Ring(4)
    region = txuring.Region(ring, 2, 4096)
    try:
        with pytest.raises(TypeError, match="Ring"):
            txuring.Region(bad, 2, 4096)
        with pytest.raises(TypeError, match="Region"):
            txuring.Chunk(bad, 0)
        with pytest.raises(TypeError, match="Chunk"):
            region.free(bad)
    finally:
        region.close()
        ring.exit()
