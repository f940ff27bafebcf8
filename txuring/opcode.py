"""
The io_uring operations a L{txuring.ring.Ring} offers: one method per op, each
documented with the system call it is equivalent to and the kernel that brought it.

Every method checks its arguments at the call (a clear Python error for misuse:
read-only buffer for a read, NUL in a path, negative length, unknown flags), holds what
the kernel will touch in the L{Handle}, prepares one SQE through C{txuring._core}, and
returns the Handle at once. Use C{ring.syscall_result(handle)} for a Deferred of the
result.

An op the running kernel lacks raises L{OpNotSupported} naming the kernel it needs.
The probe (C{IORING_REGISTER_PROBE}, 5.6) knows opcodes, not flags, so the multishot
forms are tied to an opcode that arrived in the same release (C{requires} below).
"""

import errno
import os
import socket
from collections import namedtuple

from txuring import errors
from txuring._core import ffi, lib
from txuring.handle import DONE, close_fd
from txuring.types import (
    STATX_BASIC_STATS,
    STATX_BTIME,
    RecvMsgResult,
    address_of,
    new_sockaddr_storage,
    sockaddr_of,
    statx_result_of,
    timespec_of,
)

#: IORING_FEAT_RSRC_TAGS arrived in 5.13 with multishot poll: its bit proves that.
_FEAT_RSRC_TAGS = 1 << 10

Opcode = namedtuple("Opcode", "opcode since equivalent requires")
Opcode.__doc__ = """
@ivar opcode: the IORING_OP_* number.
@ivar since: the first Linux version with it.
@ivar equivalent: the system call it does.
@ivar requires: None, or what proves this form's flags exist where the probe cannot
    tell: another entry's name (an op of the same release), or an IORING_FEAT_* bit.
"""

#: Operation name -> Opcode. Names follow ocaml-uring where it has one.
OPCODES = {
    "nop": Opcode(0, "5.1", "nothing (a round trip through the ring)", None),
    "readv": Opcode(1, "5.1", "preadv2(2)", None),
    "writev": Opcode(2, "5.1", "pwritev2(2)", None),
    "fsync": Opcode(3, "5.1", "fsync(2) / fdatasync(2) / sync_file_range", None),
    "read_fixed": Opcode(4, "5.1", "pread(2) into a registered buffer", None),
    "write_fixed": Opcode(5, "5.1", "pwrite(2) from a registered buffer", None),
    "poll_add": Opcode(6, "5.1", "poll(2) on one fd", None),
    "poll_add_multishot": Opcode(6, "5.13", "poll(2), one CQE per readiness",
                                 _FEAT_RSRC_TAGS),
    "poll_remove": Opcode(7, "5.1", "removing a poll_add", None),
    "send_msg": Opcode(9, "5.3", "sendmsg(2)", None),
    "recv_msg": Opcode(10, "5.3", "recvmsg(2)", None),
    "timeout": Opcode(11, "5.4", "a timer (clock_nanosleep(2))", None),
    "timeout_remove": Opcode(12, "5.5", "cancelling a timeout", None),
    "accept": Opcode(13, "5.5", "accept4(2)", None),
    "accept_multishot": Opcode(13, "5.19", "accept4(2), one CQE per connection", "socket"),
    "cancel": Opcode(14, "5.5", "cancelling an op", None),
    "link_timeout": Opcode(15, "5.5", "a timeout on the op it is linked to", None),
    "connect": Opcode(16, "5.5", "connect(2)", None),
    "fallocate": Opcode(17, "5.6", "fallocate(2)", None),
    "close": Opcode(19, "5.6", "close(2)", None),
    "statx": Opcode(21, "5.6", "statx(2)", None),
    "read": Opcode(22, "5.6", "pread(2) / read(2)", None),
    "write": Opcode(23, "5.6", "pwrite(2) / write(2)", None),
    "send": Opcode(26, "5.6", "send(2)", None),
    "recv": Opcode(27, "5.6", "recv(2)", None),
    "openat2": Opcode(28, "5.6", "openat2(2)", None),
    "splice": Opcode(30, "5.7", "splice(2)", None),
    "tee": Opcode(33, "5.8", "tee(2)", None),
    "shutdown": Opcode(34, "5.11", "shutdown(2)", None),
    "renameat": Opcode(35, "5.11", "renameat2(2)", None),
    "unlinkat": Opcode(36, "5.11", "unlinkat(2)", None),
    "mkdirat": Opcode(37, "5.15", "mkdirat(2)", None),
    "symlinkat": Opcode(38, "5.15", "symlinkat(2)", None),
    "linkat": Opcode(39, "5.15", "linkat(2)", None),
    "socket": Opcode(45, "5.19", "socket(2)", None),
    "recv_multishot": Opcode(27, "6.0", "recv(2), one CQE per arrival", "send_zc"),
    "send_zc": Opcode(47, "6.0", "send(2) with MSG_ZEROCOPY", None),
    "read_multishot": Opcode(49, "6.7", "read(2), one CQE per arrival", None),
    "ftruncate": Opcode(55, "6.9", "ftruncate(2)", None),
    "bind": Opcode(56, "6.11", "bind(2)", None),
    "listen": Opcode(57, "6.11", "listen(2)", None),
}

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000

#: RESOLVE_* flags of openat2(2) (5.6).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20
_RESOLVE_ALL = 0x3F

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

IORING_FSYNC_DATASYNC = 1
IORING_TIMEOUT_ABS = 1 << 0
_TIMEOUT_CLOCKS = {"monotonic": 0, "boottime": 1 << 2, "realtime": 1 << 3}

IOV_MAX = 1024
_INT_MAX = 2**31 - 1
_LOFF_MAX = 2**63 - 1  # file offsets and lengths are loff_t in the kernel
# Default arguments of methods defined after Operations.socket, which shadows the module.
_SOMAXCONN = socket.SOMAXCONN
_SOCK_CLOEXEC = socket.SOCK_CLOEXEC
_AF_UNIX = socket.AF_UNIX
_U32_MAX = 0xFFFFFFFF
_CURRENT_POSITION = 0xFFFFFFFFFFFFFFFF  # offset -1: use and move the file position (5.6)


def _path(path, what="path"):
    """Path bytes for the kernel (NUL-terminated by cffi); refuse embedded NULs."""
    b = os.fsencode(path)
    if b"\0" in b:
        raise ValueError("%s contains a NUL byte: %r" % (what, path))
    return b


def _callback(callback, op, required):
    """
    Refuse a callback that can not be called, at the call: the kernel would otherwise
    accept the op, and every CQE would fail in dispatch (logged, far from the mistake),
    while a multishot read's or recv's buffers, never taken, drained the buffer ring.
    """
    if callback is None:
        if required:
            raise TypeError("%s needs a callback(res, flags), called for every CQE"
                            % (op,))
    elif not callable(callback):
        raise TypeError("the callback of %s must be callable as callback(res, flags), "
                        "not %s" % (op, type(callback).__name__))
    return callback


def _fd(fd):
    if hasattr(fd, "fileno"):
        fd = fd.fileno()
    if not isinstance(fd, int) or not 0 <= fd <= _INT_MAX:
        raise ValueError("a file descriptor must be an int >= 0, not %r" % (fd,))
    return fd


def _dir_fd(dir_fd):
    return AT_FDCWD if dir_fd is None else _fd(dir_fd)


def _offset(offset):
    if offset is None or offset == -1:
        return _CURRENT_POSITION
    if not isinstance(offset, int) or not 0 <= offset <= _LOFF_MAX:
        raise ValueError("offset must be an int from 0 to 2**63-1, or -1 for the file "
                         "position, not %r" % (offset,))
    return offset


def _nonneg(value, what, limit=_INT_MAX):
    """An int in 0..limit (default: what a C int holds), or ValueError at the call."""
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError("%s must be an int from 0 to %d, not %r" % (what, limit, value))
    return value


def _splice_offset(offset, what):
    """-1 (None too): the fd's own position, as pipes require; else an offset."""
    return -1 if offset in (None, -1) else _nonneg(offset, what, _LOFF_MAX)


def _flags(value, allowed, what):
    if not isinstance(value, int) or value & ~allowed:
        raise ValueError("unknown %s flags: %r" % (what, value))
    return value


def _writable(buf, nbytes, op):
    """A cffi view of a writable buffer (kept in the Handle) and the length to use."""
    try:
        cbuf = ffi.from_buffer(buf, require_writable=True)
    except (TypeError, BufferError):  # BufferError: a read-only view (memoryview of bytes)
        raise TypeError("%s needs a writable buffer (bytearray, memoryview of one, "
                        "mmap, array), not %s" % (op, type(buf).__name__)) from None
    return cbuf, _length(len(cbuf), nbytes)


def _readable(data, nbytes=None):
    try:
        cbuf = ffi.from_buffer(data)
    except TypeError:
        raise TypeError("expected a bytes-like object, not %s" % (type(data).__name__,)) \
            from None
    return cbuf, _length(len(cbuf), nbytes)


def _length(size, nbytes):
    if nbytes is None:
        nbytes = size
    elif not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError("length must be an int >= 0, not %r" % (nbytes,))
    elif nbytes > size:
        raise ValueError("length %d is larger than the buffer (%d bytes)" % (nbytes, size))
    if nbytes > _U32_MAX:
        raise ValueError("one op moves at most 4 GiB - 1 bytes")
    return nbytes


def _iovecs(buffers, writable):
    buffers = list(buffers)
    if not buffers:
        raise ValueError("at least one buffer is needed")
    if len(buffers) > IOV_MAX:
        raise ValueError("too many buffers: %d (the kernel takes at most %d, IOV_MAX)"
                         % (len(buffers), IOV_MAX))
    iov = ffi.new("struct iovec[]", len(buffers))
    keep = [iov]
    for i, b in enumerate(buffers):
        cbuf = _writable(b, None, "readv")[0] if writable else _readable(b)[0]
        keep.append(cbuf)
        iov[i].iov_base = cbuf
        iov[i].iov_len = len(cbuf)
    return iov, len(buffers), keep


def _timeout_flags(absolute, clock):
    if clock not in _TIMEOUT_CLOCKS:
        raise ValueError("clock must be one of %s" % (sorted(_TIMEOUT_CLOCKS),))
    return (IORING_TIMEOUT_ABS if absolute else 0) | _TIMEOUT_CLOCKS[clock]


def _zero(res):
    return 0


def _fired(res):
    return res == -errno.ETIME


def _close_accepted(value):
    os.close(value[0])  # (fd, address)


def _close_passed_fds(value):
    for fd in value.fds:
        os.close(fd)


class Operations:
    """
    The op methods of L{txuring.ring.Ring}. Each returns a L{txuring.handle.Handle}.
    C{offset=-1} means "the file's current position" (IORING_FEAT_RW_CUR_POS, 5.6).
    """

    def _require(self, op):
        if op not in self._ops_ok:
            raise errors.OpNotSupported(op, OPCODES[op].since)

    # ---- no-ops and timers ----

    def noop(self):
        """IORING_OP_NOP (5.1): completes at once with 0. A round trip through the ring."""
        return self._push(self._new_handle("nop"), lib.txu_prep_nop)

    def timeout(self, seconds, *, absolute=False, clock="monotonic", count=0):
        """
        IORING_OP_TIMEOUT (5.4): completes after C{seconds} (or at that time, with
        C{absolute}, on C{clock}: monotonic, boottime 5.15, realtime 5.15), or after
        C{count} other completions if that comes first. Result 0 either way
        (the kernel's ETIME is the normal outcome and is not an error).
        """
        self._require("timeout")
        ts = timespec_of(seconds)
        flags = _timeout_flags(absolute, clock)
        h = self._new_handle("timeout", keep=(ts,), convert=_zero, ok_errnos=(errno.ETIME,))
        return self._push(h, lib.txu_prep_timeout, ts, _nonneg(count, "count"), flags)

    def timeout_remove(self, handle):
        """IORING_OP_TIMEOUT_REMOVE (5.5): cancel a pending L{timeout}."""
        self._require("timeout_remove")
        return self._push(self._new_handle("timeout_remove"), lib.txu_prep_timeout_remove,
                          self._own(handle).user_data)

    def link_timeout(self, seconds, *, absolute=False, clock="monotonic"):
        """
        IORING_OP_LINK_TIMEOUT (5.5): inside C{ring.linked()}, right after an op:
        cancels that op if it has not completed after C{seconds} (the op then fails
        with ECANCELED). Result: True if the timeout fired, False if the op finished
        first.
        """
        self._require("link_timeout")
        if self._linking is None or not self._linking:
            raise ValueError("link_timeout goes inside ring.linked(), after the op it bounds")
        ts = timespec_of(seconds)
        h = self._new_handle("link_timeout", keep=(ts,), convert=_fired,
                             ok_errnos=(errno.ETIME, errno.ECANCELED))
        return self._push(h, lib.txu_prep_link_timeout, ts, _timeout_flags(absolute, clock))

    # ---- files ----

    def openat2(self, path, flags=os.O_RDONLY, mode=0, *, resolve=0, dir_fd=None):
        """
        IORING_OP_OPENAT2 (5.6): openat2(2). Result: the new fd. C{O_CLOEXEC} is added
        (as Python's os.open does). C{resolve} takes the C{RESOLVE_*} flags.
        """
        self._require("openat2")
        p = _path(path)
        how = ffi.new("struct open_how *")
        how.flags = _nonneg(flags, "flags") | os.O_CLOEXEC
        # openat2 wants mode 0 unless a file may be created. (Python's O_TMPFILE
        # includes O_DIRECTORY, so it is tested whole.)
        creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
        how.mode = _nonneg(mode, "mode") if creates else 0
        how.resolve = _flags(resolve, _RESOLVE_ALL, "RESOLVE_*")
        h = self._new_handle("openat2", keep=(p, how), release=close_fd, filename=path)
        return self._push(h, lib.txu_prep_openat2, _dir_fd(dir_fd), p, how)

    def close(self, fd):
        """IORING_OP_CLOSE (5.6): close(2) of C{fd}. (The ring itself: L{Ring.exit}.)"""
        if fd is None:
            raise ValueError("close() needs the fd to close; to close the ring, use exit()")
        self._require("close")
        return self._push(self._new_handle("close"), lib.txu_prep_close, _fd(fd))

    def read(self, fd, buf, offset=-1, nbytes=None):
        """IORING_OP_READ (5.6): pread(2) into C{buf} (writable). Result: bytes read."""
        self._require("read")
        cbuf, n = _writable(buf, nbytes, "read")
        h = self._new_handle("read", keep=(cbuf,))
        return self._push(h, lib.txu_prep_read, _fd(fd), cbuf, n, _offset(offset))

    def write(self, fd, data, offset=-1, nbytes=None):
        """IORING_OP_WRITE (5.6): pwrite(2). Result: bytes written (may be short)."""
        self._require("write")
        cbuf, n = _readable(data, nbytes)
        h = self._new_handle("write", keep=(cbuf, data))
        return self._push(h, lib.txu_prep_write, _fd(fd), cbuf, n, _offset(offset))

    def readv(self, fd, buffers, offset=-1, flags=0):
        """IORING_OP_READV (5.1): preadv2(2) into writable C{buffers}. Result: bytes."""
        self._require("readv")
        iov, n, keep = _iovecs(buffers, writable=True)
        h = self._new_handle("readv", keep=keep)
        return self._push(h, lib.txu_prep_readv, _fd(fd), iov, n, _offset(offset),
                          _nonneg(flags, "flags"))

    def writev(self, fd, buffers, offset=-1, flags=0):
        """IORING_OP_WRITEV (5.1): pwritev2(2) of C{buffers}. Result: bytes written."""
        self._require("writev")
        iov, n, keep = _iovecs(buffers, writable=False)
        h = self._new_handle("writev", keep=keep)
        return self._push(h, lib.txu_prep_writev, _fd(fd), iov, n, _offset(offset),
                          _nonneg(flags, "flags"))

    def read_fixed(self, fd, chunk, offset=-1, nbytes=None):
        """
        IORING_OP_READ_FIXED (5.1): pread(2) into a L{txuring.region.Chunk} of this
        ring's registered buffer (no page pinning per op). Result: bytes read.
        Falls back to a plain read where the region could not be registered.
        """
        return self._fixed_op("read_fixed", lib.txu_prep_read, lib.txu_prep_read_fixed,
                              fd, chunk, offset, nbytes)

    def write_fixed(self, fd, chunk, offset=-1, nbytes=None):
        """IORING_OP_WRITE_FIXED (5.1): pwrite(2) from a registered-buffer chunk."""
        return self._fixed_op("write_fixed", lib.txu_prep_write, lib.txu_prep_write_fixed,
                              fd, chunk, offset, nbytes)

    def _fixed_op(self, op, plain_prep, fixed_prep, fd, chunk, offset, nbytes):
        if self._closed or self._forked:
            self._check_usable()  # (before the chunk's checks: the ring's state first)
        region = self._chunk_region(chunk)
        n = _length(chunk.length, nbytes)
        # The chunk is busy until the final CQE: Region.free refuses it meanwhile.
        h = self._new_handle(op, keep=(chunk,))
        fd, offset = _fd(fd), _offset(offset)
        if region.fixed:
            self._require(op)
        # Busy from before the push (once queued, the op may reach the kernel at any
        # submit) until the Handle is done: derived from its state, no callback that
        # an exception could skip.
        chunk._ops.append(h)
        try:
            if region.fixed:
                self._push(h, fixed_prep, fd, chunk._ptr, n, offset, region.buf_index)
            else:
                self._push(h, plain_prep, fd, chunk._ptr, n, offset)
        except BaseException:
            if h.user_data not in self._handles:
                h.state = DONE  # refused at the call: it will never run
            raise
        return h

    read_chunk = read_fixed
    write_chunk = write_fixed

    def _chunk_region(self, chunk):
        region = getattr(chunk, "region", None)
        if region is None:
            raise TypeError("expected a txuring.region.Chunk, not %s" % (type(chunk).__name__,))
        if region.ring is not self:
            raise ValueError("this chunk belongs to another ring's region")
        if chunk.freed:
            raise ValueError("this chunk was freed")
        if region.closed:
            raise ValueError("this chunk's region is closed")
        return region

    def _buffer_ring_of(self, buffer_ring):
        """The C{struct txu_bufring *} of a BufferRing of this ring, open."""
        if getattr(buffer_ring, "_ring", None) is not self:
            if not hasattr(buffer_ring, "group_id"):
                raise TypeError("expected a txuring.BufferRing, not %s"
                                % (type(buffer_ring).__name__,))
            raise ValueError("this BufferRing belongs to another ring (only its group id "
                             "would reach the kernel: another ring's buffers)")
        if buffer_ring.closed:
            raise errors.RingClosed("this BufferRing is closed; make a new one")
        return buffer_ring._b

    def read_multishot(self, fd, buffer_ring, callback, offset=-1):
        """
        IORING_OP_READ_MULTISHOT (6.7): read(2) whenever data arrives (pipes, eventfds,
        non-seekable files), each time into a buffer from C{buffer_ring};
        C{callback(res, flags)} gets every CQE (see L{txuring.bufring.BufferRing.take}).
        """
        self._require("read_multishot")
        _callback(callback, "read_multishot", True)
        h = self._new_handle("read_multishot", keep=(buffer_ring,), callback=callback)
        h._bufring = self._buffer_ring_of(buffer_ring)
        return self._push(h, lib.txu_prep_read_multishot, _fd(fd), buffer_ring.group_id,
                          _offset(offset))

    def fsync(self, fd, *, datasync=False, offset=0, length=0):
        """
        IORING_OP_FSYNC (5.1): fsync(2), or fdatasync(2) with C{datasync}; with a
        C{length}, only C{offset}..C{offset+length} is synced.
        """
        self._require("fsync")
        flags = IORING_FSYNC_DATASYNC if datasync else 0
        return self._push(self._new_handle("fsync"), lib.txu_prep_fsync, _fd(fd), flags,
                          _nonneg(offset, "offset", _LOFF_MAX), _length(_U32_MAX, length))

    def fdatasync(self, fd, *, offset=0, length=0):
        """IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (5.1): fdatasync(2)."""
        return self.fsync(fd, datasync=True, offset=offset, length=length)

    def fallocate(self, fd, offset, length, mode=0):
        """IORING_OP_FALLOCATE (5.6): fallocate(2)."""
        self._require("fallocate")
        return self._push(self._new_handle("fallocate"), lib.txu_prep_fallocate, _fd(fd),
                          _nonneg(mode, "mode"), _nonneg(offset, "offset", _LOFF_MAX),
                          _nonneg(length, "length", _LOFF_MAX))

    def ftruncate(self, fd, length):
        """IORING_OP_FTRUNCATE (6.9): ftruncate(2)."""
        self._require("ftruncate")
        return self._push(self._new_handle("ftruncate"), lib.txu_prep_ftruncate, _fd(fd),
                          _nonneg(length, "length", _LOFF_MAX))

    def statx(self, path, *, dir_fd=None, flags=0, mask=STATX_BASIC_STATS | STATX_BTIME,
              follow_symlinks=True):
        """
        IORING_OP_STATX (5.6): statx(2). Result: a L{txuring.types.StatxResult} with
        C{os.stat_result}'s fields. C{path=""} with C{dir_fd=fd} stats an open fd
        (AT_EMPTY_PATH).
        """
        self._require("statx")
        p = _path(path)
        at = _nonneg(flags, "flags")
        if not follow_symlinks:
            at |= AT_SYMLINK_NOFOLLOW
        if p == b"":
            at |= AT_EMPTY_PATH
        out = ffi.new("struct statx *")
        h = self._new_handle("statx", keep=(p, out), filename=path or None,
                             convert=lambda res: statx_result_of(out))
        return self._push(h, lib.txu_prep_statx, _dir_fd(dir_fd), p, at,
                          _nonneg(mask, "mask"), out)

    def fstat(self, fd):
        """statx(2) of an open fd (IORING_OP_STATX with AT_EMPTY_PATH, 5.6)."""
        return self.statx("", dir_fd=fd)

    def linkat(self, oldpath, newpath, *, old_dir_fd=None, new_dir_fd=None,
               follow_symlinks=False):
        """IORING_OP_LINKAT (5.15): linkat(2), a hard link C{newpath} to C{oldpath}."""
        self._require("linkat")
        a, b = _path(oldpath), _path(newpath)
        h = self._new_handle("linkat", keep=(a, b), filename=oldpath, filename2=newpath)
        return self._push(h, lib.txu_prep_linkat, _dir_fd(old_dir_fd), a, _dir_fd(new_dir_fd),
                          b, AT_SYMLINK_FOLLOW if follow_symlinks else 0)

    def unlinkat(self, path, *, dir_fd=None, rmdir=False):
        """IORING_OP_UNLINKAT (5.11): unlink(2), or rmdir(2) with C{rmdir}."""
        self._require("unlinkat")
        p = _path(path)
        h = self._new_handle("unlinkat", keep=(p,), filename=path)
        return self._push(h, lib.txu_prep_unlinkat, _dir_fd(dir_fd), p,
                          AT_REMOVEDIR if rmdir else 0)

    def unlink(self, path, *, dir_fd=None):
        """unlink(2) through IORING_OP_UNLINKAT (5.11)."""
        return self.unlinkat(path, dir_fd=dir_fd)

    def rmdir(self, path, *, dir_fd=None):
        """rmdir(2) through IORING_OP_UNLINKAT with AT_REMOVEDIR (5.11)."""
        return self.unlinkat(path, dir_fd=dir_fd, rmdir=True)

    def mkdirat(self, path, mode=0o777, *, dir_fd=None):
        """IORING_OP_MKDIRAT (5.15): mkdirat(2)."""
        self._require("mkdirat")
        p = _path(path)
        h = self._new_handle("mkdirat", keep=(p,), filename=path)
        return self._push(h, lib.txu_prep_mkdirat, _dir_fd(dir_fd), p, _nonneg(mode, "mode"))

    def renameat(self, oldpath, newpath, *, old_dir_fd=None, new_dir_fd=None, flags=0):
        """IORING_OP_RENAMEAT (5.11): renameat2(2); C{flags}: RENAME_NOREPLACE/EXCHANGE."""
        self._require("renameat")
        a, b = _path(oldpath), _path(newpath)
        h = self._new_handle("renameat", keep=(a, b), filename=oldpath, filename2=newpath)
        return self._push(h, lib.txu_prep_renameat, _dir_fd(old_dir_fd), a,
                          _dir_fd(new_dir_fd), b,
                          _flags(flags, RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT,
                                 "RENAME_*"))

    def symlinkat(self, target, linkpath, *, dir_fd=None):
        """IORING_OP_SYMLINKAT (5.15): symlinkat(2), a link C{linkpath} -> C{target}."""
        self._require("symlinkat")
        a, b = _path(target, "target"), _path(linkpath)
        h = self._new_handle("symlinkat", keep=(a, b), filename=linkpath)
        return self._push(h, lib.txu_prep_symlinkat, a, _dir_fd(dir_fd), b)

    # ---- pipes ----

    def splice(self, fd_in, fd_out, nbytes, *, offset_in=-1, offset_out=-1, flags=0):
        """
        IORING_OP_SPLICE (5.7): splice(2), moving up to C{nbytes} between two fds one of
        which is a pipe. An offset of -1 uses the fd's position (required for pipes).
        """
        self._require("splice")
        return self._push(self._new_handle("splice"), lib.txu_prep_splice, _fd(fd_in),
                          _splice_offset(offset_in, "offset_in"), _fd(fd_out),
                          _splice_offset(offset_out, "offset_out"),
                          _length(_U32_MAX, nbytes), _nonneg(flags, "flags"))

    def tee(self, fd_in, fd_out, nbytes, *, flags=0):
        """IORING_OP_TEE (5.8): tee(2), duplicating pipe data without consuming it."""
        self._require("tee")
        return self._push(self._new_handle("tee"), lib.txu_prep_tee, _fd(fd_in), _fd(fd_out),
                          _length(_U32_MAX, nbytes), _nonneg(flags, "flags"))

    # ---- polling ----

    def poll_add(self, fd, events, *, multishot=False, callback=None):
        """
        IORING_OP_POLL_ADD (5.1): poll(2) on one fd; result: the ready C{POLL*} mask.
        With C{multishot} (5.13), C{callback(mask, flags)} is called on every readiness
        until the poll is removed (L{poll_remove}) or fails.
        """
        if multishot:
            self._require("poll_add_multishot")
            if callback is None:
                raise ValueError("a multishot poll needs a callback")
        else:
            self._require("poll_add")
        h = self._new_handle("poll_add", callback=_callback(callback, "poll_add", False))
        return self._push(h, lib.txu_prep_poll_add, _fd(fd), _nonneg(events, "events"),
                          1 if multishot else 0)

    def poll_remove(self, handle):
        """IORING_OP_POLL_REMOVE (5.1): remove a poll; its handle ends with ECANCELED."""
        self._require("poll_remove")
        return self._push(self._new_handle("poll_remove"), lib.txu_prep_poll_remove,
                          self._own(handle).user_data)

    # ---- sockets ----

    def socket(self, family, type, proto=0):
        """IORING_OP_SOCKET (5.19): socket(2). Result: the fd (SOCK_CLOEXEC added)."""
        self._require("socket")
        h = self._new_handle("socket", release=close_fd)
        return self._push(h, lib.txu_prep_socket, _nonneg(family, "family"),
                          _nonneg(type, "type") | socket.SOCK_CLOEXEC, _nonneg(proto, "proto"))

    def bind(self, fd, family, address):
        """IORING_OP_BIND (6.11): bind(2) to C{address} (the C{socket} module's shapes)."""
        self._require("bind")
        sa, length = sockaddr_of(family, address)
        h = self._new_handle("bind", keep=(sa,))
        return self._push(h, lib.txu_prep_bind, _fd(fd), ffi.cast("struct sockaddr *", sa),
                          length)

    def listen(self, fd, backlog=_SOMAXCONN):
        """IORING_OP_LISTEN (6.11): listen(2)."""
        self._require("listen")
        return self._push(self._new_handle("listen"), lib.txu_prep_listen, _fd(fd),
                          _nonneg(backlog, "backlog"))

    def connect(self, fd, family, address):
        """IORING_OP_CONNECT (5.5): connect(2) to a numeric address."""
        self._require("connect")
        sa, length = sockaddr_of(family, address)
        h = self._new_handle("connect", keep=(sa,))
        return self._push(h, lib.txu_prep_connect, _fd(fd), ffi.cast("struct sockaddr *", sa),
                          length)

    def accept(self, fd, *, flags=_SOCK_CLOEXEC, multishot=False, callback=None):
        """
        IORING_OP_ACCEPT (5.5): accept4(2). Result: C{(fd, address)}.
        With C{multishot} (5.19) one SQE accepts every connection: C{callback(fd,
        flags)} gets each new fd (or C{-errno}); the caller owns those fds.
        """
        flags = _flags(flags, socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, "accept4")
        if multishot:
            self._require("accept_multishot")
            if callback is None:
                raise ValueError("a multishot accept needs a callback")
            h = self._new_handle("accept", callback=_callback(callback, "accept", True))
            return self._push(h, lib.txu_prep_accept, _fd(fd), ffi.NULL, ffi.NULL, flags, 1)
        if callback is not None:
            raise ValueError("a callback is for accept(multishot=True); a single "
                             "accept's (fd, address) comes from syscall_result(handle)")
        self._require("accept")
        storage, length = new_sockaddr_storage()
        h = self._new_handle("accept", keep=(storage, length), release=_close_accepted,
                             convert=lambda res: (res, address_of(storage, length[0])))
        return self._push(h, lib.txu_prep_accept, _fd(fd),
                          ffi.cast("struct sockaddr *", storage), length, flags, 0)

    def shutdown(self, fd, how):
        """IORING_OP_SHUTDOWN (5.11): shutdown(2) with SHUT_RD, SHUT_WR or SHUT_RDWR."""
        self._require("shutdown")
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError("how must be SHUT_RD, SHUT_WR or SHUT_RDWR")
        return self._push(self._new_handle("shutdown"), lib.txu_prep_shutdown, _fd(fd), how)

    def send(self, fd, data, flags=0):
        """IORING_OP_SEND (5.6): send(2). Result: bytes sent."""
        self._require("send")
        cbuf, n = _readable(data)
        h = self._new_handle("send", keep=(cbuf, data))
        return self._push(h, lib.txu_prep_send, _fd(fd), cbuf, n, _nonneg(flags, "flags"))

    def send_zc(self, fd, data, flags=0):
        """
        IORING_OP_SEND_ZC (6.0): send(2) without copying: the kernel reads C{data} while
        the NIC sends it. The handle (and C{data}) is held until the notification CQE
        (C{IORING_CQE_F_NOTIF}) says the kernel is done; the result is bytes sent.
        """
        self._require("send_zc")
        cbuf, n = _readable(data)
        h = self._new_handle("send_zc", keep=(cbuf, data))
        return self._push(h, lib.txu_prep_send_zc, _fd(fd), cbuf, n, _nonneg(flags, "flags"),
                          0)

    def recv(self, fd, buf, flags=0, nbytes=None):
        """IORING_OP_RECV (5.6): recv(2) into writable C{buf}. Result: bytes (0: EOF)."""
        self._require("recv")
        cbuf, n = _writable(buf, nbytes, "recv")
        h = self._new_handle("recv", keep=(cbuf,))
        return self._push(h, lib.txu_prep_recv, _fd(fd), cbuf, n, _nonneg(flags, "flags"))

    def recv_multishot(self, fd, buffer_ring, callback, flags=0):
        """
        IORING_OP_RECV with IORING_RECV_MULTISHOT (6.0): one SQE receives until EOF,
        error or cancel, each arrival into a buffer picked from C{buffer_ring};
        C{callback(res, flags)} gets every CQE: C{buffer_ring.take(res, flags)} gives the
        bytes and hands the buffer back. It ends (no C{IORING_CQE_F_MORE}) on EOF (0), an
        error, or ENOBUFS when the buffer ring ran dry: then start it again.
        """
        self._require("recv_multishot")
        _callback(callback, "recv_multishot", True)
        h = self._new_handle("recv_multishot", keep=(buffer_ring,), callback=callback)
        h._bufring = self._buffer_ring_of(buffer_ring)
        return self._push(h, lib.txu_prep_recv_multishot, _fd(fd), buffer_ring.group_id,
                          _nonneg(flags, "flags"))

    def send_msg(self, fd, buffers, *, fds=(), address=None, family=_AF_UNIX, flags=0):
        """
        IORING_OP_SENDMSG (5.3): sendmsg(2) of C{buffers}, passing open file descriptors
        C{fds} with SCM_RIGHTS, to C{address} (of C{family}) for unconnected sockets.
        """
        self._require("send_msg")
        iov, n, keep = _iovecs(buffers, writable=False)
        msg = ffi.new("struct msghdr *")
        msg.msg_iov = iov
        msg.msg_iovlen = n
        keep.append(msg)
        if address is not None:
            sa, length = sockaddr_of(family, address)
            keep.append(sa)
            msg.msg_name = sa
            msg.msg_namelen = length
        fds = [_fd(f) for f in fds]
        if fds:
            if len(fds) > 253:
                raise ValueError("at most 253 fds per message (SCM_MAX_FD)")
            control = ffi.new("char[]", lib.txu_cmsg_space_fds(len(fds)))
            keep.append(control)
            msg.msg_control = control
            msg.msg_controllen = len(control)
            lib.txu_cmsg_put_fds(msg, fds, len(fds))
        h = self._new_handle("send_msg", keep=keep)
        return self._push(h, lib.txu_prep_sendmsg, _fd(fd), msg, _nonneg(flags, "flags"))

    def recv_msg(self, fd, buffers, *, max_fds=0, flags=0):
        """
        IORING_OP_RECVMSG (5.3): recvmsg(2) into writable C{buffers}, taking up to
        C{max_fds} fds passed with SCM_RIGHTS. Result: a L{txuring.types.RecvMsgResult};
        its fds belong to the caller (if the Deferred was cancelled, they are closed).
        """
        self._require("recv_msg")
        iov, n, keep = _iovecs(buffers, writable=True)
        msg = ffi.new("struct msghdr *")
        msg.msg_iov = iov
        msg.msg_iovlen = n
        storage, _ = new_sockaddr_storage()
        msg.msg_name = storage
        msg.msg_namelen = ffi.sizeof("struct sockaddr_storage")
        keep += [msg, storage]
        max_fds = _nonneg(max_fds, "max_fds")
        control = None
        if max_fds:
            if max_fds > 253:
                raise ValueError("max_fds is at most 253 (SCM_MAX_FD)")
            control = ffi.new("char[]", lib.txu_cmsg_space_fds(max_fds))
            keep.append(control)
            msg.msg_control = control
            # Unpadded: room for max_fds and no more (see txu_cmsg_len_fds).
            msg.msg_controllen = lib.txu_cmsg_len_fds(max_fds)

        def convert(res):
            # Runs after the Handle dropped its keep list: this closure must hold
            # everything it reads (msg, storage, and the control buffer msg points to).
            fds = []
            if control is not None and msg.msg_controllen:
                room = len(control) // ffi.sizeof("int")
                out = ffi.new("int[]", room)
                found = min(lib.txu_cmsg_get_fds(msg, out, room), room)
                fds = list(out)[:found]
                for extra in fds[max_fds:]:
                    os.close(extra)  # (never, with the unpadded length; but never leak)
                del fds[max_fds:]
            return RecvMsgResult(res, fds, address_of(storage, msg.msg_namelen),
                                 msg.msg_flags)

        h = self._new_handle("recv_msg", keep=keep, convert=convert, release=_close_passed_fds)
        return self._push(h, lib.txu_prep_recvmsg, _fd(fd), msg, _nonneg(flags, "flags"))
