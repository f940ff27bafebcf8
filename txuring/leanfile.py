"""
The hot path of txuring.fs's positioned reads, off the public op API.

Why: a 4 KiB pread through C{ring.read} + C{syscall_result} pays for a Handle (its
validation, its exactly-once delivery, its waiter list) and for a Deferred chained to
it. That machinery is what makes the public API safe for any caller's buffers; here
the buffer is txuring.fs's own (a bytearray made for this read and never shown to
anyone before the read has ended), so the checks are known to hold. A record in the
ring's user_data table (as txuring.tcp's transports use: C{_cqes = None}, each CQE
taken at most once) fires the Deferred straight from the dispatch loop.

The kernel facts relied on: IORING_OP_READ (5.6) reads at C{off} like pread(2)
(C{off = -1}: at the file position, like read(2)); an async cancel (5.5) of a read in
flight ends it with ECANCELED, or it completes first; either way its one CQE is the
moment the kernel lets go of the buffer, and only then does a cancelled Deferred's
CancelledError go on (paused until then), as with the public API.
"""

import errno
from threading import get_ident

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from txuring import errors
from txuring._core import ffi, lib

_EBUSY = -errno.EBUSY


def pread(ring, fd, buf, offset):
    """
    Deferred[int]: read into C{buf} (a bytearray nobody else holds) from C{offset}
    (-1: the file position) of C{fd}, on C{ring} (whose owner thread this is).
    """
    if ring._closed or ring._forked or get_ident() != ring._owner:
        ring._check_usable()  # RingClosed, RingForked, or another thread's RuntimeError
    ud = next(ring._ids)
    record = _ReadRecord(ring, ud, buf)
    ring._handles[ud] = record
    args = (fd, record.ptr, len(buf), offset & 0xFFFFFFFFFFFFFFFF)
    if ring._sq.backlog or lib.txu_lean_read(ring._r, *args, ud, 0) == _EBUSY:
        ring._lean_queue(ud, record, lib.txu_lean_read, args)
    if ring.on_pending is not None and not ring._pending_notified:
        ring._notify_pending()
    return record.deferred


class _ReadRecord:
    """
    One read in flight: what the kernel writes into, and who hears of it.

    @ivar deferred: fires with the byte count, or the OSError of the CQE's errno; a
        cancel fails it with CancelledError once the CQE has come.
    @ivar buf: the bytearray the kernel writes into, held until the CQE.
    @ivar ptr: C{ffi.from_buffer(buf)}: the address given to the kernel (holding it
        also keeps C{buf} from being resized meanwhile).
    """

    __slots__ = ("ring", "ud", "buf", "ptr", "deferred")
    _cqes = None  # (at most once: see txuring.cqueue)
    _keep = None

    def __init__(self, ring, ud, buf):
        self.ring = ring
        self.ud = ud
        self.buf = buf
        self.ptr = ffi.from_buffer(buf, require_writable=True)
        self.deferred = Deferred(self._cancel)

    def _cancel(self, d):
        ring = self.ring
        d.pause()  # the CancelledError goes on once the kernel has let go (_final)
        d.errback(Failure(CancelledError("the read was cancelled")))
        if ring._closed or ring._forked or self.ud not in ring._handles:
            return
        # (a read still in the overflow queue goes in before its cancel: FIFO)
        cancel_ud = next(ring._ids)
        ring._handles[cancel_ud] = _QUIET
        args = (self.ud,)
        if ring._sq.backlog or lib.txu_lean_cancel(ring._r, *args, cancel_ud, 0) == _EBUSY:
            ring._lean_queue(cancel_ud, _QUIET, lib.txu_lean_cancel, args)

    def _more(self, res, flags):
        pass

    def _final(self, res, flags):
        self.ring._handles.pop(self.ud, None)
        self.buf = self.ptr = None
        d = self.deferred
        if d.called:  # cancelled: its CancelledError waited for this CQE
            d.unpause()
        elif res < 0:
            d.errback(errors.error_of_errno(-res))
        else:
            d.callback(res)


class _Quiet:
    """The record of a cancel request, whose own CQE nobody needs."""

    __slots__ = ()
    _cqes = None
    _keep = None

    def _more(self, res, flags):
        pass

    def _final(self, res, flags):
        pass


_QUIET = _Quiet()
