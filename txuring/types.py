"""
Conversions between Python values and the kernel structures io_uring ops take:
socket addresses (in the shapes the C{socket} module uses), timespecs, and the statx
result as an object with the fields C{os.stat_result} users expect.
"""

import os
import socket
import stat as _stat
from collections import namedtuple

from txuring._core import ffi

# ---- socket addresses ----


def sockaddr_of(family, address):
    """
    Pack C{address} as a C{struct sockaddr_*} of C{family}.

    @param address: C{(host, port)} for AF_INET, C{(host, port[, flowinfo[, scope_id]])}
        for AF_INET6 (numeric hosts only: resolving names blocks), a path (str or bytes)
        for AF_UNIX, a leading NUL for the abstract namespace.
    @return: C{(cdata, length)}; the cdata must stay alive while the kernel reads it.
    """
    if family == socket.AF_INET:
        host, port = address
        sa = ffi.new("struct sockaddr_in *")
        sa.sin_family = socket.AF_INET
        sa.sin_port = socket.htons(_port(port))
        packed = socket.inet_pton(socket.AF_INET, host or "0.0.0.0")
        ffi.memmove(ffi.addressof(sa.sin_addr), packed, 4)
        return sa, ffi.sizeof("struct sockaddr_in")
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        flowinfo = address[2] if len(address) > 2 else 0
        scope_id = address[3] if len(address) > 3 else 0
        if "%" in (host or ""):
            host, scope = host.split("%", 1)
            scope_id = socket.if_nametoindex(scope) if not scope.isdigit() else int(scope)
        sa = ffi.new("struct sockaddr_in6 *")
        sa.sin6_family = socket.AF_INET6
        sa.sin6_port = socket.htons(_port(port))
        sa.sin6_flowinfo = socket.htonl(flowinfo)
        sa.sin6_scope_id = scope_id
        packed = socket.inet_pton(socket.AF_INET6, host or "::")
        ffi.memmove(ffi.addressof(sa.sin6_addr), packed, 16)
        return sa, ffi.sizeof("struct sockaddr_in6")
    if family == socket.AF_UNIX:
        path = os.fsencode(address)
        if len(path) > 107 or (len(path) == 107 and not path.startswith(b"\0")):
            raise ValueError("AF_UNIX path too long (at most 107 bytes): %r" % (address,))
        sa = ffi.new("struct sockaddr_un *")
        sa.sun_family = socket.AF_UNIX
        ffi.memmove(sa.sun_path, path, len(path))
        # Abstract names are exactly as long as given; paths include the NUL.
        length = 2 + len(path) + (0 if path.startswith(b"\0") else 1)
        return sa, length
    raise ValueError("unsupported address family %r" % (family,))


def _port(port):
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("port must be an int in 0-65535, not %r" % (port,))
    return port


def new_sockaddr_storage():
    """A buffer any sockaddr fits in, and its in/out length, for accept/recvmsg."""
    storage = ffi.new("struct sockaddr_storage *")
    length = ffi.new("socklen_t *", ffi.sizeof("struct sockaddr_storage"))
    return storage, length


def address_of(storage, length):
    """The Python address of a sockaddr the kernel wrote (the C{socket} module's shapes)."""
    if length == 0:
        return None
    family = ffi.cast("struct sockaddr *", storage).sa_family
    if family == socket.AF_INET:
        sa = ffi.cast("struct sockaddr_in *", storage)
        host = socket.inet_ntop(socket.AF_INET, ffi.buffer(ffi.addressof(sa.sin_addr), 4)[:])
        return host, socket.ntohs(sa.sin_port)
    if family == socket.AF_INET6:
        sa = ffi.cast("struct sockaddr_in6 *", storage)
        host = socket.inet_ntop(socket.AF_INET6, ffi.buffer(ffi.addressof(sa.sin6_addr), 16)[:])
        return (host, socket.ntohs(sa.sin6_port), socket.ntohl(sa.sin6_flowinfo),
                sa.sin6_scope_id)
    if family == socket.AF_UNIX:
        raw = ffi.buffer(ffi.cast("struct sockaddr_un *", storage).sun_path, max(0, length - 2))[:]
        if raw.startswith(b"\0"):
            return raw
        return os.fsdecode(raw.split(b"\0", 1)[0])
    return (family, ffi.buffer(storage, length)[:])


# ---- time ----


_MAX_TIMESPEC_SECONDS = 2**63 // 10**9 - 1  # keeps tv_sec * 1e9 + tv_nsec in an s64


def timespec_of(seconds):
    """A C{struct __kernel_timespec} for a non-negative number of seconds."""
    if not isinstance(seconds, (int, float)) or seconds != seconds or not \
            0 <= seconds <= _MAX_TIMESPEC_SECONDS:
        raise ValueError("a timeout must be a number of seconds from 0 to %d (about 292 "
                         "billion years; not infinite), not %r"
                         % (_MAX_TIMESPEC_SECONDS, seconds))
    ts = ffi.new("struct __kernel_timespec *")
    whole = int(seconds)
    ts.tv_sec = whole
    ts.tv_nsec = int(round((seconds - whole) * 1e9))
    if ts.tv_nsec >= 1000000000:
        ts.tv_sec += 1
        ts.tv_nsec -= 1000000000
    return ts


# ---- statx ----

STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800


class StatxResult(
    namedtuple(
        "StatxResult",
        "st_mode st_ino st_dev st_nlink st_uid st_gid st_size st_atime st_mtime st_ctime "
        "st_atime_ns st_mtime_ns st_ctime_ns st_blocks st_blksize st_rdev "
        "st_birthtime st_birthtime_ns stx_mask stx_attributes",
    )
):
    """
    The answer of a statx op, with C{os.stat_result}'s field names (and statx's birth
    time, mask and attributes on top). C{st_birthtime} is None where the filesystem
    does not record it (C{STATX_BTIME} absent from C{stx_mask}).
    """

    def is_dir(self):
        return _stat.S_ISDIR(self.st_mode)

    def is_file(self):
        return _stat.S_ISREG(self.st_mode)

    def is_symlink(self):
        return _stat.S_ISLNK(self.st_mode)


_new_statx_result = tuple.__new__  # positional, without namedtuple's keyword parsing


def statx_result_of(buf):
    """Convert a filled C{struct statx} into a L{StatxResult}."""
    ts = buf.stx_atime
    a = ts.tv_sec * 1000000000 + ts.tv_nsec
    ts = buf.stx_mtime
    m = ts.tv_sec * 1000000000 + ts.tv_nsec
    ts = buf.stx_ctime
    c = ts.tv_sec * 1000000000 + ts.tv_nsec
    mask = buf.stx_mask
    if mask & STATX_BTIME:
        ts = buf.stx_btime
        b = ts.tv_sec * 1000000000 + ts.tv_nsec
        bf = b / 1e9
    else:
        b = bf = None
    return _new_statx_result(StatxResult, (
        buf.stx_mode, buf.stx_ino, os.makedev(buf.stx_dev_major, buf.stx_dev_minor),
        buf.stx_nlink, buf.stx_uid, buf.stx_gid, buf.stx_size,
        a / 1e9, m / 1e9, c / 1e9, a, m, c,
        buf.stx_blocks, buf.stx_blksize, os.makedev(buf.stx_rdev_major, buf.stx_rdev_minor),
        bf, b, mask, buf.stx_attributes))


RecvMsgResult = namedtuple("RecvMsgResult", "nbytes fds address msg_flags")
RecvMsgResult.__doc__ = """
The answer of recv_msg: bytes received into the buffers, the fds passed with
SCM_RIGHTS (now owned by the caller), the sender's address (None when connected) and
the msghdr flags (C{MSG_TRUNC}, C{MSG_CTRUNC}: some fds did not fit and were closed).
"""
