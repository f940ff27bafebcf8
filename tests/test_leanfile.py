"""
txuring.leanfile, driven by hand on a Ring (no reactor), so that each step of a lean
op can be reached on purpose: read_file of a small file (open; statx of the fd; read
and close hard-linked), with a cancel at each step, the SQ full at each step, the
file changing size between the statx and the read, and the hand-overs to the general
path; and the lean statx.

The same paths run through txuring.fs in tests/fs_suite on every reactor.
"""

import os
import stat

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import CancelledError, fail, succeed
from twisted.python.failure import Failure

import txuring
from txuring import errors, fs, leanfile
from txuring._core import lib

from conftest import open_fds
from ringutil import drive_until, settle, wait_cqes

LIMIT = 64 * 1024


@pytest.fixture
def ring(reactor):
    # (pytest-twisted's reactor running first: it makes its SIGCHLD waker's pipe then)
    pytest_twisted.blockon(task.deferLater(reactor, 0, lambda: None))
    r = txuring.Ring(8)
    before = open_fds()
    yield r
    settle(r)
    r.exit()
    left = open_fds() - before
    assert not left, "left open: %s" % ({fd: os.readlink("/proc/self/fd/%d" % fd)
                                         for fd in left},)


class General:
    """The general path's stand-in: records how it was called, reads with os.read."""

    def __init__(self):
        self.calls = []

    def __call__(self, fd, path=None):
        self.calls.append(fd)
        if fd is None:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return succeed(b"".join(chunks))
                chunks.append(chunk)
        except OSError:
            return fail()  # (as txuring.fs's: the fd is its own from here on)
        finally:
            os.close(fd)


def start(ring, path, general=None, limit=LIMIT):
    general = general or General()
    general.path = path
    ops = fs.RingOps(ring, None)
    d = leanfile.read_file(ring, path, limit, general, ops.read_close)
    out = []
    d.addBoth(out.append)
    return d, out, general


def result(out):
    assert out, "the Deferred has not fired"
    r = out[0]
    if isinstance(r, Failure):
        r.raiseException()
    return r


def test_a_small_file_in_two_trips(ring, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"hello" * 100)
    d, out, general = start(ring, str(p))
    ring.submit()
    wait_cqes(ring)
    ring.fill_completions()  # the open: the read and close are prepared now
    assert not out and ring.active_ops == 2
    drive_until(ring, lambda: out)
    assert result(out) == b"hello" * 100
    assert general.calls == []


@pytest.mark.parametrize("size", [1, LIMIT - 1])
def test_sizes_up_to_the_limit_stay_on_the_lean_path(ring, tmp_path, size):
    p = tmp_path / "f"
    data = os.urandom(size)
    p.write_bytes(data)
    d, out, general = start(ring, str(p))
    drive_until(ring, lambda: out)
    assert result(out) == data and general.calls == []


def test_a_file_of_the_limit_or_more_goes_to_the_general_path_with_its_fd(ring, tmp_path):
    p = tmp_path / "f"
    data = os.urandom(LIMIT)
    p.write_bytes(data)
    d, out, general = start(ring, str(p))
    drive_until(ring, lambda: out)
    assert result(out) == data
    assert len(general.calls) == 1 and general.calls[0] is not None


@pytest.mark.parametrize("kind", ["directory", "proc", "empty"])
def test_no_regular_file_and_a_size_of_0_go_to_the_general_path(ring, tmp_path, kind):
    # (a FIFO too: tests/test_review8b.py reads one through txuring.fs on each backend)
    path = {"directory": str(tmp_path), "proc": "/proc/self/status",
            "empty": str(tmp_path / "empty")}[kind]
    if kind == "empty":
        open(path, "wb").close()
    d, out, general = start(ring, path)
    drive_until(ring, lambda: out)
    assert len(general.calls) == 1 and general.calls[0] is not None
    if kind == "directory":
        with pytest.raises(IsADirectoryError):
            result(out)
    elif kind == "proc":  # (its size says 0)
        assert b"Name:" in result(out)
    else:
        assert result(out) == b""


def test_a_missing_file_names_its_path(ring, tmp_path):
    p = str(tmp_path / "missing")
    d, out, _ = start(ring, p)
    drive_until(ring, lambda: out)
    with pytest.raises(FileNotFoundError) as e:
        result(out)
    assert e.value.filename == p


@pytest.mark.parametrize("change", ["grew", "shrank"])
def test_a_file_changing_size_between_the_statx_and_the_read(ring, tmp_path, change):
    p = tmp_path / "f"
    p.write_bytes(b"a" * 1000)
    d, out, general = start(ring, str(p))
    ring.submit()
    wait_cqes(ring)
    ring.fill_completions()  # opened, statx'd (1000 bytes), read and close prepared
    if change == "grew":
        with open(p, "ab") as f:
            f.write(b"b" * 500)
    else:
        os.truncate(p, 10)
    drive_until(ring, lambda: out)
    # Read again from the start, on a new fd: what the file holds now.
    assert result(out) == p.read_bytes()
    assert general.calls == [None]


def test_cancel_while_the_open_waits_in_the_overflow_queue(ring, tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    nops = [ring.noop() for _ in range(ring.queue_depth)]  # the SQ is full
    with monkeypatch.context() as m:
        m.setattr(ring, "submit", lambda: 0)  # (no submit makes room meanwhile)
        d, out, _ = start(ring, str(p))
    assert len(ring._sq) == 1
    d.cancel()
    assert out and out[0].check(CancelledError)  # nothing was submitted: at once
    assert len(ring._sq) == 0
    settle(ring)
    assert all(h.done for h in nops)


def test_cancel_after_the_open_was_submitted_closes_what_it_opened(ring, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    before = open_fds()
    d, out, _ = start(ring, str(p))
    ring.submit()
    wait_cqes(ring)  # the open has completed in the kernel: an fd is open
    assert len(open_fds() - before) == 1
    d.cancel()
    assert not out  # paused until the open's CQE is taken
    drive_until(ring, lambda: out)
    assert out[0].check(CancelledError)
    settle(ring)
    assert open_fds() == before


def test_cancel_during_the_read_and_close(ring, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    before = open_fds()
    d, out, _ = start(ring, str(p))
    ring.submit()
    wait_cqes(ring)
    ring.fill_completions()  # opened: the read and close are in the SQ
    d.cancel()
    assert not out  # paused until the read and the close have ended
    drive_until(ring, lambda: out)
    assert out[0].check(CancelledError)
    assert ring.active_ops == 0 and open_fds() == before


def test_no_room_for_the_read_and_close_uses_the_public_chain(ring, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"y" * 300)
    d, out, general = start(ring, str(p))
    ring.submit()
    wait_cqes(ring)
    # The SQ has room for one SQE only when the open's CQE is taken.
    nops = [ring.noop() for _ in range(ring.queue_depth - 1)]
    assert lib.txu_sq_space(ring._r) == 1
    ring.fill_completions()
    assert ring._sq.waiting == 2  # the chain waits whole in the overflow queue
    drive_until(ring, lambda: out)
    assert result(out) == b"y" * 300 and general.calls == []
    settle(ring)
    assert all(h.done for h in nops)


def test_refused_on_a_closed_ring_and_from_another_thread(tmp_path):
    import threading

    p = tmp_path / "f"
    p.write_bytes(b"z")
    r = txuring.Ring(4)
    box = []
    t = threading.Thread(target=lambda: box.append(
        pytest.raises(RuntimeError, start, r, str(p))))
    t.start()
    t.join()
    assert box and box[0].type is RuntimeError
    r.exit()
    with pytest.raises(errors.RingClosed):
        start(r, str(p))
    with pytest.raises(errors.RingClosed):
        leanfile.statx(r, str(p))


# ---- the lean statx ----


def test_statx_of_a_path_an_fd_and_a_symlink(ring, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"q" * 77)
    link = tmp_path / "l"
    link.symlink_to(p)
    fd = os.open(p, os.O_RDONLY)
    try:
        got = []
        for d in (leanfile.statx(ring, str(p)), leanfile.statx(ring, "", True, fd),
                  leanfile.statx(ring, os.fsencode(link), False)):
            d.addBoth(got.append)
        drive_until(ring, lambda: len(got) == 3)
    finally:
        os.close(fd)
    assert got[0].st_size == got[1].st_size == 77
    assert got[0].st_ino == got[1].st_ino == os.stat(p).st_ino
    assert stat.S_ISLNK(got[2].st_mode)


def test_statx_error_names_the_path_and_cancel_waits_for_the_cqe(ring, tmp_path):
    missing = str(tmp_path / "missing")
    failed, cancelled = [], []
    leanfile.statx(ring, missing).addBoth(failed.append)
    d = leanfile.statx(ring, str(tmp_path))
    ring.submit()
    d.cancel()
    d.addBoth(cancelled.append)
    assert not cancelled or ring.active_ops == 0  # paused until its CQE
    drive_until(ring, lambda: failed and cancelled)
    assert failed[0].check(FileNotFoundError) and failed[0].value.filename == missing
    # (the statx may have ended before the cancel reached it: then the result is
    # dropped and the cancel stands all the same)
    assert cancelled[0].check(CancelledError)
