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
  - A callback that can not be called was accepted by every op that takes one
    (poll_add, accept(multishot=True), read_multishot, recv_multishot): the kernel ran
    the op and every CQE failed in dispatch, logged far from the mistake, while a
    multishot recv's buffers, never taken, drained the buffer ring. A multishot read or
    recv without a callback did the same; a single accept dropped its callback unused.
  - C{BufferRing(ring=...)} and C{RingDriver(ring=...)} with something else than a
    Ring gave AttributeError; C{RingDriver(reactor=None)} gave AttributeError after it
    had registered its eventfd with the ring (which takes one: a second driver was
    then refused with EBUSY).
  - C{BufferRing} took up to 32768 buffers of up to 4 GiB each and zero-filled them
    all at once: terabytes asked for, gigabytes taken.
"""

import os
import resource
import socket
import tempfile
import warnings

import pytest

import txuring
from ringutil import drive_until, settle
from txuring.bufring import MAX_BUFFER_SIZE


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


NOT_CALLABLE = [1, "callback", object(), b"f"]


def callback_ops(ring, bufring, fds):
    """(op name for op_supported, call with callback C) for every op that takes one."""
    r, _ = fds["pipe"]
    a, _ = fds["socks"]
    srv = fds["listener"]
    return [
        ("poll_add", lambda c: ring.poll_add(r, 1, callback=c)),
        ("poll_add_multishot", lambda c: ring.poll_add(r, 1, multishot=True, callback=c)),
        ("accept_multishot", lambda c: ring.accept(srv, multishot=True, callback=c)),
        ("read_multishot", lambda c: ring.read_multishot(r, bufring, c)),
        ("recv_multishot", lambda c: ring.recv_multishot(a, bufring, c)),
    ]


@pytest.fixture
def callback_env():
    ring = txuring.Ring(8)
    bufring = txuring.BufferRing(ring, 4, 64)
    r, w = os.pipe()
    a, b = socket.socketpair()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    fds = {"pipe": (r, w), "socks": (a.fileno(), b.fileno()), "listener": srv.fileno()}
    yield ring, bufring, fds
    ring.drain()
    settle(ring)
    bufring.close()
    ring.exit()
    for f in (a, b, srv):
        f.close()
    os.close(r)
    os.close(w)


def test_a_callback_must_be_callable(callback_env):
    ring, bufring, fds = callback_env
    for name, call in callback_ops(ring, bufring, fds):
        if not ring.op_supported(name):
            continue
        for bad in NOT_CALLABLE:
            with pytest.raises(TypeError, match="callable"):
                call(bad)
        assert ring.active_ops == 0, name  # refused before anything was queued
        assert not ring.sqe_ready, name


def test_a_multishot_read_or_recv_needs_a_callback(callback_env):
    ring, bufring, fds = callback_env
    for name, call in callback_ops(ring, bufring, fds)[3:]:
        if ring.op_supported(name):
            with pytest.raises(TypeError, match="needs a callback"):
                call(None)
    assert ring.active_ops == 0


def test_a_single_accept_refuses_a_callback(callback_env):
    ring, _, fds = callback_env
    with pytest.raises(ValueError, match="multishot=True"):
        ring.accept(fds["listener"], callback=lambda res, flags: None)
    assert ring.active_ops == 0


def test_a_good_callback_still_gets_every_cqe(callback_env):
    ring, bufring, fds = callback_env
    if not ring.op_supported("recv_multishot"):
        pytest.skip("no multishot recv on this kernel (6.0)")
    got = []
    a, b = fds["socks"]
    h = ring.recv_multishot(a, bufring, lambda res, flags: got.append(
        bufring.take(res, flags)))
    os.write(b, b"hello")
    drive_until(ring, lambda: got)
    assert got == [b"hello"]
    assert not h.done


@pytest.mark.parametrize("bad", [None, 1, object(), "ring"])
def test_bufferring_and_ringdriver_name_a_wrong_ring(bad, reactor):
    with pytest.raises(TypeError, match="txuring.Ring"):
        txuring.BufferRing(bad, 4, 64)
    with pytest.raises(TypeError, match="txuring.Ring"):
        txuring.RingDriver(bad, reactor)


def eventfd_registered(ring):
    """Whether C{ring} has an eventfd (it takes one: a second gives EBUSY)."""
    fd = os.eventfd(0)
    try:
        ring.register_eventfd(fd)
    except OSError:
        return True
    finally:
        os.close(fd)
    ring.unregister_eventfd()
    return False


@pytest.mark.parametrize("bad", [None, object(), "reactor"])
def test_ringdriver_checks_its_reactor_before_registering(bad, reactor):
    from conftest import open_fds

    ring = txuring.Ring(8)
    before = open_fds()
    try:
        with pytest.raises(TypeError, match="addReader"):
            txuring.RingDriver(ring, bad)
        assert open_fds() == before
        assert not eventfd_registered(ring)
        # The ring is as it was: a good driver takes it.
        driver = txuring.RingDriver(ring, reactor)
        driver.detach()
    finally:
        ring.exit()


def test_ringdriver_undoes_its_registration_when_add_reader_fails(reactor):
    from conftest import open_fds

    class Refusing:
        def addReader(self, reader):
            raise OSError(24, "no room")

        removeReader = callLater = addReader

    ring = txuring.Ring(8)
    before = open_fds()
    try:
        with pytest.raises(OSError, match="no room"):
            txuring.RingDriver(ring, Refusing())
        assert open_fds() == before
        assert not eventfd_registered(ring)
        assert ring.on_pending is None
    finally:
        ring.exit()


def test_bufferring_refuses_what_the_kernel_can_not_take():
    ring = txuring.Ring(4)
    try:
        for entries in (65536, 2 ** 31, 3, 0, -1):
            with pytest.raises(ValueError, match="32768"):
                txuring.BufferRing(ring, entries, 64)
        for size in (MAX_BUFFER_SIZE + 1, 2 ** 32 - 1, 2 ** 63, 0, -1):
            with pytest.raises(ValueError, match="MAX_RW_COUNT"):
                txuring.BufferRing(ring, 4, size)
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        with pytest.raises(ValueError, match="memory"):
            txuring.BufferRing(ring, 32768, 1 << 20 if ram < 32 << 30 else MAX_BUFFER_SIZE)
        assert not ring._buffer_rings  # nothing registered
    finally:
        ring.exit()


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_bufferring_memory_is_taken_as_it_is_used():
    """1 GiB of buffers asked for: only the pages the kernel writes are taken."""
    ring = txuring.Ring(4)
    before = rss()
    bufring = txuring.BufferRing(ring, 4, 256 << 20)
    a, b = socket.socketpair()
    try:
        got = []
        b.sendall(b"x" * 1000)
        if not ring.op_supported("recv_multishot"):
            pytest.skip("no multishot recv on this kernel (6.0)")
        h = ring.recv_multishot(a.fileno(), bufring,
                                lambda res, flags: got.append(bufring.take(res, flags)))
        drive_until(ring, lambda: got)
        assert got == [b"x" * 1000]
        assert rss() - before < 64 << 20  # not the 1 GiB zero-filled
        ring.drain()
        settle(ring)
        assert h.done
    finally:
        bufring.close()
        ring.exit()
        a.close()
        b.close()
