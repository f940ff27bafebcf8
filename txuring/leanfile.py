"""
The hot paths of txuring.fs's positioned reads and of its read_file of a small file,
off the public op API.

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

read_file of a small regular file takes two trips and no Deferred but its own: the
open (IORING_OP_OPENAT, 5.6, done inline for a path in the dentry cache); then, after
a statx(2) of the fd with AT_STATX_DONT_SYNC in this thread (the inode's attributes,
never a wait for an NFS or FUSE server), one read of its size and a byte more with
its close hard-linked behind it (IOSQE_IO_HARDLINK, 5.5: the close runs once the read
has ended, whatever it gave). Anything else goes back to txuring.fs's general path.
"""

import errno
import os
from threading import get_ident

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure

from txuring import errors
from txuring._core import ffi, lib
from txuring.opcode import AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, _dir_fd, _fd, _path
from txuring.types import STATX_BASIC_STATS, STATX_BTIME, statx_result_of

_EBUSY = -errno.EBUSY


def _check(ring):
    if ring._closed or ring._forked or get_ident() != ring._owner:
        ring._check_usable()  # RingClosed, RingForked, or another thread's RuntimeError


def pread(ring, fd, buf, offset):
    """
    Deferred[int]: read into C{buf} (a bytearray nobody else holds) from C{offset}
    (-1: the file position) of C{fd}, on C{ring} (whose owner thread this is).
    """
    _check(ring)
    fd = _fd(fd)
    record = _ReadRecord(ring, None, buf)
    _prep(ring, lib.txu_lean_read, record.ud, record,
          (fd, record.ptr, len(buf), offset & 0xFFFFFFFFFFFFFFFF))
    return record.deferred


def statx(ring, path, follow_symlinks=True, dir_fd=None):
    """
    Deferred[L{StatxResult}]: statx(2) of C{path} (str or bytes without NUL; C{""}
    with C{dir_fd}: that open fd) as IORING_OP_STATX (5.6), on C{ring} (whose owner
    thread this is). The kernel always runs it in an io-wq worker (it may wait for
    the disk); here only the Python around it is lean.
    """
    _check(ring)
    dir_fd = _dir_fd(dir_fd)  # (ValueError here, not a cffi error once registered)
    record = _StatxRecord(ring, path or None, path)
    at = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    if not path:
        at |= AT_EMPTY_PATH
    _prep(ring, lib.txu_prep_statx, record.ud, record,
          (dir_fd, record.c_path, at,
           STATX_BASIC_STATS | STATX_BTIME, record.out))
    return record.deferred


class _OneOp:
    """
    One lean op in flight, and who hears of its one CQE.

    @ivar ring: the L{Ring} it is on.
    @ivar ud: its user_data.
    @ivar filename: the path an error names, or None.
    @ivar deferred: fires with L{_result} of the CQE's result, or the OSError of its
        errno; a cancel fails it with CancelledError at once but paused: it goes on
        once the CQE has come (the moment the kernel lets go of what the op uses).
    """

    __slots__ = ("ring", "ud", "filename", "deferred")
    _cqes = None  # (at most once: see txuring.cqueue)
    _keep = None

    def __init__(self, ring, filename):
        self.ring = ring
        self.ud = next(ring._ids)
        self.filename = filename
        self.deferred = Deferred(self._cancel)

    def _cancel(self, d):
        d.pause()  # the CancelledError goes on once the kernel has let go (_final)
        d.errback(Failure(CancelledError("the %s was cancelled" % (self.what,))))
        if self.ring._forked:
            # A fork child: the op is the parent's, whose memory the kernel writes,
            # never this process's copy; and no CQE ever comes here.
            self._let_go()
            d.unpause()
        # (an op still in the overflow queue is ended there; else the kernel is asked)
        elif not self.ring._unqueue_user_data(self.ud):
            _cancel_op(self.ring, self.ud)

    def _more(self, res, flags):
        pass

    def _final(self, res, flags):
        d = self.deferred
        if d.called:  # cancelled: its CancelledError waited for this CQE
            self._let_go()
            d.unpause()
        elif res < 0:
            self._let_go()
            d.errback(errors.error_of_errno(-res, self.filename))
        else:
            d.callback(self._result(res))


class _ReadRecord(_OneOp):
    """
    A read: C{buf}, the bytearray the kernel writes into, and C{ptr}, its address
    given to the kernel (holding it also keeps C{buf} from being resized meanwhile),
    both held until the CQE. Its result is the byte count.
    """

    __slots__ = ("buf", "ptr")
    what = "read"

    def __init__(self, ring, filename, buf):
        _OneOp.__init__(self, ring, filename)
        self.buf = buf
        self.ptr = ffi.from_buffer(buf, require_writable=True)

    def _let_go(self):
        self.buf = self.ptr = None

    def _result(self, res):
        self._let_go()
        return res


class _StatxRecord(_OneOp):
    """A statx: C{c_path} and C{out} (its struct statx) are held until the CQE."""

    __slots__ = ("c_path", "out")
    what = "stat"

    def __init__(self, ring, filename, path):
        _OneOp.__init__(self, ring, filename)
        # (_path: a NUL byte would end the kernel's copy early: another path)
        self.c_path = ffi.new("char[]", _path(path))
        self.out = ffi.new("struct statx *")

    def _let_go(self):
        self.c_path = self.out = None

    def _result(self, res):
        result = statx_result_of(self.out)
        self._let_go()
        return result


def _cancel_op(ring, ud):
    """Ask the kernel to cancel the lean op C{ud} (if still in flight); no answer."""
    if ring._closed or ring._forked or ud not in ring._handles:
        return
    cancel_ud = next(ring._ids)
    ring._handles[cancel_ud] = _QUIET
    args = (ud,)
    if ring._sq.backlog or lib.txu_lean_cancel(ring._r, *args, cancel_ud, 0) == _EBUSY:
        ring._lean_queue(cancel_ud, _QUIET, lib.txu_lean_cancel, args)


def _prep(ring, prep, ud, record, args):
    """
    Prepare a lean op's SQE, or queue it behind the overflow queue (never lost). An
    argument cffi refuses (the callers check theirs first) is raised before any SQE
    exists: the op then leaves the ring's table too, where it would never end (and
    the ring could never be drained).
    """
    ring._handles[ud] = record
    try:
        if ring._sq.backlog or prep(ring._r, *args, ud, 0) == _EBUSY:
            ring._lean_queue(ud, record, prep, args)
    except (TypeError, ValueError, OverflowError):
        del ring._handles[ud]
        raise
    if ring.on_pending is not None and not ring._pending_notified:
        ring._notify_pending()


def read_file(ring, path, limit, general, read_close):
    """
    Deferred[bytes]: the whole file at C{path} (str or bytes, without NUL), on
    C{ring} (whose owner thread this is).

    A regular file of 1 to C{limit}-1 bytes takes the two trips described at the
    top. Anything else is handed over: C{general(fd)} reads C{fd} to its end and
    closes it, C{general(None)} opens C{path} again first (the file changed size
    between the statx and the read; its first fd is closed by then); and
    C{read_close(fd, buf)} is txuring.fs's public-API read-and-close chain, for when
    the SQ has no room for the two SQEs at once. Each returns a Deferred.
    """
    _check(ring)
    record = _ReadFile(ring, path, limit, general, read_close)
    c_path = record.c_path
    _prep(ring, lib.txu_lean_open, record.ud, record,
          (_AT_FDCWD, c_path, _OPEN_FLAGS, 0))
    return record.deferred


_AT_FDCWD = -100
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_OPENING, _READING, _HANDED_OVER = range(3)


class _ReadFile:
    """
    One read_file of a small file in flight (see L{read_file}).

    @ivar ud: the user_data of this record's op in flight (the open, then the read).
    @ivar step: C{_OPENING}, C{_READING} (the read and close chain), or
        C{_HANDED_OVER} (to txuring.fs's general path: C{inner}).
    @ivar c_path: the NUL-terminated path the kernel reads when it takes the open.
    @ivar path: the path as given, for the error's filename.
    @ivar fd: the fd the read-and-close chain reads and closes, until its close ended.
    @ivar buf, ptr: the bytearray the kernel reads into, and its address.
    @ivar size: the size statx gave; C{got}: the read's result, once it came.
    @ivar ends: CQEs the read-and-close chain still owes (2, then 1, then 0).
    @ivar inner: the Deferred of the general path, once handed over.
    @ivar deferred: what the caller holds. A cancel fails it with CancelledError at
        once but paused: it goes on only once no op of this record is in flight and
        its fd is closed.
    """

    __slots__ = ("ring", "ud", "step", "c_path", "path", "limit", "general",
                 "read_close", "fd", "buf", "ptr", "size", "got", "ends", "inner",
                 "deferred")
    _cqes = None  # (at most once: see txuring.cqueue)
    _keep = None

    def __init__(self, ring, path, limit, general, read_close):
        self.ring = ring
        self.ud = next(ring._ids)
        self.step = _OPENING
        self.path = path
        self.c_path = ffi.new("char[]", _path(path))  # (refuses a NUL byte)
        self.limit = limit
        self.general = general
        self.read_close = read_close
        self.fd = -1
        self.buf = self.ptr = self.inner = None
        self.size = self.got = 0
        self.ends = 0
        self.deferred = Deferred(self._cancel)

    def _cancel(self, d):
        d.pause()  # (goes on in _end, once nothing of this record is in flight)
        d.errback(Failure(CancelledError("read_file was cancelled")))
        if self.ring._forked and self.step != _HANDED_OVER:
            # A fork child: its ops are the parent's (see _OneOp._cancel); the copy
            # of the fd this process inherited is its own to close.
            if self.fd >= 0:
                fd, self.fd = self.fd, -1
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.buf = self.ptr = self.c_path = None
            d.unpause()
        elif self.step == _HANDED_OVER:
            self.inner.cancel()
        elif self.step == _OPENING and self.ring._unqueue_user_data(self.ud):
            pass  # (never submitted: ended here with ECANCELED)
        elif self.step == _OPENING or self.got is None:
            # (the read: a cancel ends it early; its close runs all the same)
            _cancel_op(self.ring, self.ud)

    def _more(self, res, flags):
        pass

    def _final(self, res, flags):
        if self.step == _OPENING:
            self._opened(res)
        else:
            self._read(res)

    def _opened(self, fd):
        self.c_path = None
        if fd < 0:
            return self._end(Failure(errors.error_of_errno(-fd, self.path)))
        if self.deferred.called:  # cancelled while the open ran
            os.close(fd)
            return self._end(None)
        size = ffi.new("uint64_t *")
        regular = lib.txu_fstat_cached(fd, size)
        # (A size of 0 is an empty file, or one made as it is read, as /proc's are:
        # the general path reads it to its end, without a first read of one byte.)
        if regular != 1 or not 0 < size[0] < self.limit:
            return self._hand_over(self.general, fd)
        self.size = size[0]
        self.buf = bytearray(self.size + 1)  # (a byte more: to see the file grew)
        self.ptr = ffi.from_buffer(self.buf, require_writable=True)
        ring = self.ring
        self.ud = ud = next(ring._ids)
        close_ud = next(ring._ids)
        ring._handles[ud] = self
        ring._handles[close_ud] = _CloseOf(self)
        ret = _EBUSY if ring._sq.backlog else lib.txu_lean_read_close(
            ring._r, fd, self.ptr, len(self.buf), close_ud, ud, 0)
        if ret < 0:
            del ring._handles[ud], ring._handles[close_ud]
            self.ptr = None
            if ret == _EBUSY:
                # No room for both SQEs at once: the public API's chain queues them
                # whole (and closes the fd by hand if the ring cannot take them).
                return self._hand_over(self._read_close_api, fd)
            # (the ring was closed by a callback run before this CQE's)
            os.close(fd)
            return self._end(Failure(errors.RingClosed(
                "the ring was closed while the file was being read")))
        self.fd = fd
        self.step = _READING
        self.got = None
        self.ends = 2
        if ring.on_pending is not None and not ring._pending_notified:
            ring._notify_pending()

    def _read_close_api(self, fd):
        try:
            d = self.read_close(fd, self.buf)
        except (errors.RingClosed, errors.RingForked):
            return fail()  # (read_close closed the fd when the ring refused it)
        return d.addCallback(self._read_close_answered)

    def _read_close_answered(self, stat_n):
        if stat_n[1] == self.size:
            return self._bytes()
        return self.general(None)

    def _read(self, res):
        self.got = res
        self._chain_ended()

    def _closed(self, res):
        fd, self.fd = self.fd, -1
        if res == -errno.ECANCELED:
            # Cancelled before it ran (a close punted to io-wq, as for a file system
            # with a flush method -- NFS, FUSE, overlayfs -- met by a cancel: drain(),
            # the shutdown deadline): the fd is still open. (As _close_unless_ran in
            # txuring.fs does for the public API's close.)
            try:
                os.close(fd)
            except OSError:
                pass
        self._chain_ended()

    def _chain_ended(self):
        self.ends -= 1
        if self.ends:
            return
        self.ptr = None
        res = self.got
        if self.deferred.called:
            return self._end(None)
        if res == self.size:
            return self._end(self._bytes())
        if res < 0:
            return self._end(Failure(errors.error_of_errno(-res, self.path)))
        # The size changed between the statx and the read (or the path names another
        # file now): the general path, on the path opened again.
        self._hand_over(self.general, None)

    def _bytes(self):
        buf = self.buf
        self.buf = None
        del buf[self.size:]
        return bytes(buf)

    def _hand_over(self, how, fd):
        """Go on with C{how(fd)}, which owns C{fd} (closed here if it raises)."""
        self.step = _HANDED_OVER
        try:
            self.inner = how(fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            self.inner = fail()
        self.inner.addBoth(self._end)

    def _end(self, result):
        self.general = self.read_close = None
        d = self.deferred
        if d.called:  # cancelled: its CancelledError waited for this
            d.unpause()
            if isinstance(result, Failure) and not result.check(CancelledError):
                return None  # (what came after the cancel is dropped: nobody waits)
        elif isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        return None


class _CloseOf:
    """The target of the close CQE of a L{_ReadFile}'s read-and-close chain."""

    __slots__ = ("record",)
    _cqes = None
    _keep = None

    def __init__(self, record):
        self.record = record

    def _more(self, res, flags):
        pass

    def _final(self, res, flags):
        self.record._closed(res)


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
