"""
Review 8c: hostile use of txuring.leanfile (the lean read_file, statx and pread of
txuring.fs), each test failing before its fix. Driven by hand on a Ring, as
tests/test_leanfile.py does (its fixture checks that no fd is left open).
"""

import errno
import os

import pytest

from txuring import errors, fs, leanfile
from txuring._core import lib

from ringutil import drive_until, settle, wait_cqes
from test_leanfile import result, ring, start  # noqa: F401 (ring: the fixture)


# ---- arguments cffi would refuse only once the op is in the ring's table ----


@pytest.mark.parametrize("call", [
    lambda ring, ops: ops.fstat(2 ** 40),
    lambda ring, ops: ops.fstat("3"),
    lambda ring, ops: ops.stat("x", True, 2 ** 40),
    lambda ring, ops: ops.stat("x", True, "3"),
    lambda ring, ops: leanfile.pread(ring, 2 ** 40, bytearray(4), 0),
    lambda ring, ops: leanfile.pread(ring, -5, bytearray(4), 0),
], ids=["fstat-huge-fd", "fstat-str-fd", "stat-huge-dir_fd", "stat-str-dir_fd",
        "pread-huge-fd", "pread-negative-fd"])
def test_a_bad_fd_raises_at_the_call_and_leaves_nothing_in_flight(ring, call):
    # Before: cffi's OverflowError/TypeError came after the record had entered the
    # ring's table, with no SQE: active_ops stayed 1 for ever (drain never fired,
    # exit() raised RingBusy, FileSystem's shutdown waited its whole timeout).
    ops = fs.RingOps(ring, None)
    with pytest.raises(ValueError):
        call(ring, ops)
    assert ring.active_ops == 0
    ring.exit()  # (no RingBusy)


@pytest.mark.parametrize("how", ["stat", "read_file"])
def test_a_nul_byte_in_the_path_is_refused_not_cut_short(ring, tmp_path, how):
    # Before: cffi copied the whole bytes and the kernel read up to the NUL: stat and
    # read_file of "<file>\0junk" answered for <file>.
    p = tmp_path / "f"
    p.write_bytes(b"secret")
    evil = str(p) + "\0junk"
    with pytest.raises(ValueError, match="NUL"):
        if how == "stat":
            fs.RingOps(ring, None).stat(evil)
        else:
            start(ring, evil)
    assert ring.active_ops == 0


# ---- a close the kernel cancelled before it ran ----


class _CloseCancelled:
    """
    txuring._core.lib, but the read-and-close chain's close is cancelled by the
    kernel before it runs, as when a cancel (ring.drain(), the shutdown deadline)
    meets a close punted to io-wq (a file system with a flush method: NFS, FUSE,
    overlayfs): the read, hard-linked to a close of fd -1 (EBADF), soft-linked to
    the close of the fd, which therefore ends with ECANCELED and leaves it open.
    """

    def __init__(self, ring):
        self._ring = ring

    def __getattr__(self, name):
        return getattr(lib, name)

    def txu_lean_read_close(self, r, fd, buf, length, close_ud, ud, sf):
        if lib.txu_sq_space(r) < 3:
            return -errno.EBUSY
        fail_ud = next(self._ring._ids)
        self._ring._handles[fail_ud] = leanfile._QUIET
        assert lib.txu_lean_read(r, fd, buf, length, 0, ud, sf | 8) == 0  # HARDLINK
        assert lib.txu_prep_close(r, -1, fail_ud, 4) == 0  # IO_LINK: fails, and...
        assert lib.txu_prep_close(r, fd, close_ud, 0) == 0  # ...this one is cancelled
        return 0


def test_a_close_cancelled_by_the_kernel_is_done_by_hand(ring, tmp_path, monkeypatch):
    # Before: the close's ECANCELED was taken as the fd being closed: it leaked (the
    # fixture finds it open). The public API's chain closes it (_close_unless_ran).
    p = tmp_path / "f"
    p.write_bytes(b"c" * 100)
    monkeypatch.setattr(leanfile, "lib", _CloseCancelled(ring))
    d, out, general = start(ring, str(p))
    drive_until(ring, lambda: out)
    assert result(out) == b"c" * 100 and general.calls == []


def test_the_public_chain_refused_closes_the_fd_once(ring, tmp_path, monkeypatch):
    # The SQ has no room for the read and close: the public API's chain is used, and
    # the ring refuses it (RingClosed): read_close closes the fd itself then. Before:
    # _hand_over closed it a second time (EBADF here; another thread's new fd in a
    # threaded program), and the EBADF escaped into the dispatch loop: the Deferred
    # never fired.
    p = tmp_path / "f"
    p.write_bytes(b"y" * 300)
    d, out, general = start(ring, str(p))
    ring.submit()
    wait_cqes(ring)
    nops = [ring.noop() for _ in range(ring.queue_depth - 1)]
    assert lib.txu_sq_space(ring._r) == 1
    closes = []
    real_close = os.close

    def close(fd):
        closes.append(fd)
        return real_close(fd)

    def refuse():
        raise errors.RingClosed("refused")

    monkeypatch.setattr(os, "close", close)
    with monkeypatch.context() as m:
        m.setattr(ring, "_check_usable", refuse)
        ring.fill_completions()
    assert out and out[0].check(errors.RingClosed)
    assert len(closes) == len(set(closes)) == 1
    settle(ring)
    assert all(h.done for h in nops)


# ---- a fork child cancelling what its parent started ----


@pytest.mark.parametrize("what", ["pread", "read_file"])
def test_a_cancel_in_a_fork_child_fires_at_once(ring, tmp_path, what):
    # Before: the cancel found the ring forked, asked nothing, and left the Deferred
    # paused for ever in the child (no CQE ever comes there).
    r, w = os.pipe()
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    try:
        out = []
        if what == "pread":
            d = leanfile.pread(ring, r, bytearray(10), -1)  # (no writer yet: waits)
            d.addBoth(out.append)
        else:
            d, out, _ = start(ring, fifo)  # (its open waits for a writer)
        ring.submit()
        pid = os.fork()
        if pid == 0:
            try:
                d.cancel()
                ok = bool(out) and out[0].check(leanfile.CancelledError) is not None
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not out  # (the parent's op goes on)
        if what == "pread":
            os.write(w, b"hi")
            drive_until(ring, lambda: out)
            assert result(out) == 2
        else:
            wfd = os.open(fifo, os.O_WRONLY)
            os.write(wfd, b"data")
            os.close(wfd)
            drive_until(ring, lambda: out)
            assert result(out) == b"data"
    finally:
        os.close(r)
        os.close(w)
