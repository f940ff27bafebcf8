"""
Deferred file operations for any Twisted reactor: C{read_file}, C{write_file},
C{stat}, C{open} -> L{File}, ... as Python users name them, each returning a Deferred.

Why this module exists: Twisted services read files with blocking calls in the reactor
thread (one slow disk stalls every connection) or with C{deferToThread} (a thread
hand-off, two context switches and a lock per call, and a pool of 10 threads at most).
io_uring does file work in the kernel: page-cache hits complete inline, the rest runs
on the kernel's io-wq workers, and the reactor only sees completions.

Where the work happens (decided once per reactor, on first use, in its thread):

  - On L{txuring.reactor.UringReactor}: C{reactor.ring}, the reactor's own ring.
  - On any other reactor (epoll, poll, select, asyncio): a private L{Ring} attached with
    L{txuring.attach.RingDriver} (its eventfd watched with C{addReader}). It is made
    C{start_disabled}, so the thread that runs the reactor becomes its single issuer.
    When the reactor shuts down, a "before shutdown" trigger lets the ops in flight end
    by themselves (a Service saving its state in C{stopService} must not lose it),
    including those started by the other "before shutdown" triggers and by callbacks
    of ops ending meanwhile; only ops still running after C{shutdown_timeout} seconds
    are cancelled. Then the ring is detached and closed, and later calls raise
    L{errors.RingClosed} (no op could complete: the reactor is stopping), except
    C{File.close()} and the fds the module closes, which fall back to C{os.close}.
  - Where io_uring cannot be used (the kernel lacks it, C{kernel.io_uring_disabled},
    a seccomp profile), or when the environment variable C{TXURING_FS_THREADS=1} asks
    for it, the same API runs each system call on the reactor's thread pool, and one
    log line says so and why. An op the kernel's io_uring lacks (C{mkdirat} before
    5.15, C{ftruncate} before 6.9) goes to the thread pool alone, logged once per op.
  - Two operations have no io_uring op at all, so they always use the thread pool:
    C{listdir} (there is no getdents op: patches for IORING_OP_GETDENTS were posted in
    2021 and 2023 and never merged, up to 6.18) and C{readlink} (no readlinkat op).

Threads: every call must be made in the reactor's thread (or before the reactor runs).
A Ring is single-issuer and not thread-safe, and Deferreds are not either; rather than
marshal silently (which would hide a Deferred firing in another thread), a call from
another thread raises L{WrongThread} saying to use C{blockingCallFromThread}.

Cancellation: cancelling any Deferred here cancels the kernel op it waits on; the
Deferred's errbacks run only after the kernel let go of the op's buffers (see
L{txuring.handle}), and the coroutine behind it closes what it opened (fds, pipes) and
removes what it made (the temporary file of an atomic write) before the Deferred fails
with C{CancelledError}. On the thread pool a running call cannot be interrupted: the
cancel takes effect when it returns, and an fd it opened is closed. A close is never
cancelled (a close cancelled before it ran would leave its fd open): a cancel arriving
meanwhile is raised once the fd is closed. Buffers handed to a write are copied at the
call unless they are bytes (immutable), as Python's C{file.write} takes them.

io-wq: the kernel starts a worker thread per blocked file op (statx, open, unlink,
mkdir and rename always run there; reads that miss the page cache too), up to
RLIMIT_NPROC by default. The first use caps this ring's workers with
C{IORING_REGISTER_IOWQ_MAX_WORKERS} (5.15): C{DEFAULT_MAX_WORKERS}, or what
C{TXURING_FS_MAX_WORKERS="bounded,unbounded"} or L{FileSystem}'s C{max_workers} say.
Since 5.15 the limit is kept in the ring and applies to every task that submits to it.
"""

import ctypes
import errno
import io
import os
import secrets
import shutil
import stat as _stat
import sys
import threading
import warnings
from functools import partial

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.python import log, threadable
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from txuring import errors, leanfile
from txuring.opcode import OPCODES
from txuring.types import StatxResult

__all__ = [
    "FileSystem", "File", "WrongThread", "filesystem", "read_file", "write_file",
    "append_file", "stat", "lstat", "exists", "unlink", "rmdir", "mkdir", "rename", "link",
    "symlink", "readlink", "truncate", "copy_file", "listdir", "open",
]

#: Environment variable: "1" runs every file operation on the thread pool.
THREADS_ENV = "TXURING_FS_THREADS"
#: Environment variable: "bounded,unbounded" io-wq worker caps ("0,0" leaves them).
WORKERS_ENV = "TXURING_FS_MAX_WORKERS"
#: Default io-wq caps: enough to keep a disk queue busy, few enough for a small box.
DEFAULT_MAX_WORKERS = (min(64, max(4, 4 * (os.cpu_count() or 1))),) * 2

#: Seconds a private ring's ops in flight at reactor shutdown may take to end by
#: themselves before they are cancelled (FileSystem's C{shutdown_timeout}).
SHUTDOWN_TIMEOUT = 30.0

#: The longest file name Linux filesystems take (NAME_MAX, in bytes).
NAME_MAX = 255

#: Bytes per read or write op when a loop moves a large amount (one op moves at most
#: MAX_RW_COUNT, a little under 2 GiB, in the kernel anyway).
CHUNK = 1 << 20
#: The chunk size of C{async for chunk in file}.
ITER_CHUNK = 64 * 1024
_MAX_OP = 1 << 30
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031

_O_CLOEXEC = os.O_CLOEXEC


class WrongThread(RuntimeError):
    """A txuring.fs call was made outside the reactor's thread."""


# ---- arguments ----


def _path(path, what="path"):
    """
    The str or bytes path of C{path} (str, bytes, os.PathLike or Twisted's FilePath);
    TypeError for anything else, ValueError for a NUL byte (as C{os} functions do).
    """
    if isinstance(path, FilePath):
        path = path.path
    elif not isinstance(path, (str, bytes)):
        if not hasattr(type(path), "__fspath__"):
            raise TypeError("%s should be str, bytes, os.PathLike or FilePath, not %s"
                            % (what, type(path).__name__))
        path = os.fspath(path)
    if (b"\0" if isinstance(path, bytes) else "\0") in path:
        raise ValueError("%s contains a NUL byte: %r" % (what, path))
    return path


def _size(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ValueError("%s must be an int from 0 to 2**63-1, not %r" % (what, value))
    return value


def _offset(value):
    return None if value is None else _size(value, "offset")


def _enoent(path):
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


_MODES = {
    # Python's mode letter -> (flags, readable, writable)
    "r": (os.O_RDONLY, True, False),
    "w": (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, False, True),
    "a": (os.O_WRONLY | os.O_CREAT | os.O_APPEND, False, True),
    "x": (os.O_WRONLY | os.O_CREAT | os.O_EXCL, False, True),
}


def parse_mode(mode):
    """
    open(2) flags, readable, writable and append for one of Python's binary mode strings
    (C{r w a x}, optionally C{+} and C{b}). Text mode is refused: L{File} moves bytes.
    """
    if not isinstance(mode, str):
        raise TypeError("mode must be a str such as 'rb', not %s" % (type(mode).__name__,))
    letters = set(mode)
    if len(letters) != len(mode) or not letters <= set("rwaxb+t") or \
            len(letters & set("rwax")) != 1:
        raise ValueError("invalid mode: %r (one of r, w, a, x; optionally + and b)" % (mode,))
    if "t" in letters:
        raise ValueError("txuring.fs.File is binary only (reads give bytes): use %r"
                         % (mode.replace("t", "b") if "b" not in mode else mode,))
    flags, readable, writable = _MODES[(letters & set("rwax")).pop()]
    if "+" in letters:
        flags = (flags & ~(os.O_RDONLY | os.O_WRONLY)) | os.O_RDWR
        readable = writable = True
    return flags, readable, writable, bool(flags & os.O_APPEND)


def _wrong_thread():
    return WrongThread(
        "txuring.fs calls must be made in the reactor's thread (io_uring rings and "
        "Deferreds are not thread-safe): from another thread use "
        "twisted.internet.threads.blockingCallFromThread(reactor, fs.read_file, path), "
        "or reactor.callFromThread")


def _in_reactor_thread():
    return threadable.ioThread is None or threadable.isInIOThread()


def _stat_of(st):
    """An os.stat_result as the StatxResult the ring gives, so both backends agree."""
    return StatxResult(
        st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
        st.st_atime, st.st_mtime, st.st_ctime, st.st_atime_ns, st.st_mtime_ns,
        st.st_ctime_ns, st.st_blocks, st.st_blksize, st.st_rdev, None, None, 0x7FF, 0)


# ---- the two backends: the same primitive ops, each a Deferred ----


class ThreadOps:
    """
    Each primitive op as one blocking call on the reactor's thread pool.

    Cancelling waits for the call to return (a thread cannot be interrupted): the
    Deferred fails with CancelledError then, and an fd the call opened is closed.

    @ivar kind: C{"threads"}, for logs and tests.
    """

    kind = "threads"

    def __init__(self, reactor):
        self.reactor = reactor
        #: calls started and not yet answered (a private ring's shutdown waits for them)
        self.in_flight = 0

    def call(self, f, *args, release=None):
        d = Deferred(_cancel_paused)

        def done(ok, result):
            self.in_flight -= 1
            if d.called:  # cancelled: nobody will take the result
                if ok and release is not None:
                    try:
                        release(result)
                    except Exception:
                        log.err(None, "releasing the result of a cancelled %r" % (f,))
                d.unpause()
            elif ok:
                d.callback(result)
            else:
                d.errback(result)

        self.reactor.getThreadPool().callInThreadWithCallback(
            lambda ok, result: self.reactor.callFromThread(done, ok, result), f, *args)
        self.in_flight += 1
        return d

    def open(self, path, flags, mode=0o666, resolve=0, dir_fd=None):
        return self.call(_blocking_open, path, flags, mode, resolve, dir_fd,
                         release=os.close)

    def close(self, fd):
        # (a cancel waits for the call, so the fd is closed whatever happens)
        return self.call(os.close, fd)

    def read(self, fd, buf, offset):
        return self.call(_blocking_read, fd, buf, offset)

    read_own = read

    def write(self, fd, data, offset):
        return self.call(_blocking_write, fd, data, offset)

    def stat(self, path, follow_symlinks=True, dir_fd=None):
        return self.call(_blocking_stat, path, follow_symlinks, dir_fd)

    def fstat(self, fd):
        return self.call(_blocking_fstat, fd)

    def fstat_read(self, fd, buf, close=False):
        return self.call(_blocking_fstat_read, fd, buf, close)

    def read_close(self, fd, buf):
        return self.call(_blocking_read_close, fd, buf)

    def fsync(self, fd, datasync=False):
        return self.call(os.fdatasync if datasync else os.fsync, fd)

    def fallocate(self, fd, offset, length):
        return self.call(os.posix_fallocate, fd, offset, length)

    def ftruncate(self, fd, length):
        return self.call(os.ftruncate, fd, length)

    def unlink(self, path):
        return self.call(os.unlink, path)

    def rmdir(self, path):
        return self.call(os.rmdir, path)

    def mkdir(self, path, mode):
        return self.call(os.mkdir, path, mode)

    def rename(self, src, dst):
        return self.call(os.rename, src, dst)

    def link(self, src, dst):
        return self.call(os.link, src, dst)

    def symlink(self, src, dst):
        return self.call(os.symlink, src, dst)

    def splice(self, fd_in, fd_out, nbytes, offset_in, offset_out):
        return self.call(os.splice, fd_in, fd_out, nbytes, offset_in, offset_out)

    def readlink(self, path):
        return self.call(os.readlink, path)

    def listdir(self, path):
        return self.call(os.listdir, path)

    def apply_max_workers(self, limits):
        pass


def _cancel_paused(d):
    """
    Canceller of a Deferred whose op cannot be abandoned at once: it fails with
    CancelledError but stays paused until the op has ended (then unpaused).
    """
    d.pause()
    d.errback(Failure(CancelledError("cancelled")))


def _shielded(d, what):
    """
    A Deferred of C{d}'s outcome whose cancel does not reach C{d}: it fails with
    CancelledError once C{d} has fired. For ops that must not be abandoned halfway
    (a close cancelled before it ran would leave its fd open).
    """
    outer = Deferred(_cancel_paused)

    def done(result):
        if outer.called:  # cancelled: its CancelledError goes on now
            if isinstance(result, Failure):
                log.msg("txuring.fs: %s (cancelled meanwhile): %s"
                        % (what, result.getErrorMessage()))
            outer.unpause()
        elif isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    d.addBoth(done)
    return outer


def _close_now(fd):
    """os.close(C{fd}) as a Deferred: where no ring can close it any more."""
    try:
        os.close(fd)
    except OSError as e:
        return defer.fail(e)
    return defer.succeed(None)


def _close_unless_ran(failure, fd):
    """
    Errback of a close op: ECANCELED means the kernel cancelled it before it ran (a
    close queued in the overflow queue, or punted to io-wq for a file with a flush
    method, when the ring was drained at its shutdown deadline): the fd is still open.
    """
    if failure.check(OSError) and failure.value.errno == errno.ECANCELED:
        return _close_now(fd)
    return failure


def _blocking_open(path, flags, mode, resolve, dir_fd):
    if resolve:
        try:
            return _openat2_syscall(path, flags, mode, resolve, dir_fd)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            # No openat2(2) (a seccomp profile older than it): check by hand.
            return _open_beneath(path, flags, mode, dir_fd)
    return os.open(path, flags | _O_CLOEXEC, mode, dir_fd=dir_fd)


def _open_beneath(path, flags, mode, dir_fd):
    """
    The last resort for RESOLVE_BENEATH: refuse C{path} unless its resolved form is
    under C{dir_fd}'s directory, then open that resolved path with O_NOFOLLOW. A
    symlink swapped in between the check and the open is refused (ELOOP) for the last
    component only: prefer a system with openat2 (5.6) where that matters.
    """
    root = os.path.realpath("/proc/self/fd/%d" % (dir_fd,)) if dir_fd is not None else \
        os.path.realpath(".")
    real = os.path.realpath(os.path.join(root, os.fsdecode(path)))
    if os.path.commonpath([root, real]) != root:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
    return os.open(real, flags | _O_CLOEXEC | os.O_NOFOLLOW, mode)


def _blocking_read(fd, buf, offset):
    return os.readv(fd, [buf]) if offset is None else os.preadv(fd, [buf], offset)


def _blocking_write(fd, data, offset):
    return os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)


def _blocking_stat(path, follow_symlinks, dir_fd):
    return _stat_of(os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks))


def _blocking_fstat(fd):
    return _stat_of(os.fstat(fd))


def _blocking_read_close(fd, buf):
    try:
        try:
            return None, os.preadv(fd, [buf], 0)
        except OSError:
            return None, None
    finally:
        os.close(fd)


def _blocking_fstat_read(fd, buf, close):
    try:
        st = _blocking_fstat(fd)
        try:
            n = os.preadv(fd, [buf], 0)
        except OSError:
            n = None
        return st, n
    finally:
        if close:
            os.close(fd)


_libc = None
_SYS_openat2 = 437  # the same number on every architecture (5.6)


def _openat2_syscall(path, flags, mode, resolve, dir_fd):
    """openat2(2) from a thread (the fallback for RESOLVE_* opens), through libc."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = (ctypes.c_uint64 * 3)(flags | _O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                                resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_openat2),
                       ctypes.c_int(-100 if dir_fd is None else dir_fd),
                       ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                       ctypes.c_size_t(24))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


class RingOps:
    """
    Each primitive op as one io_uring op on C{ring}; ops the kernel lacks go to
    C{threads} (logged once each).

    @ivar ring: the L{Ring} (the reactor's, or a private one driven by a RingDriver).
    @ivar driver: the L{RingDriver} of a private ring, else None.
    """

    kind = "io_uring"

    def __init__(self, ring, threads, driver=None):
        self.ring = ring
        self.threads = threads
        self.driver = driver
        self._logged = set()
        self._ok = set()  # ops found supported (the probe asked once each)
        self._result = ring.syscall_result

    def _has(self, op):
        if op in self._ok:
            return True
        if self.ring.op_supported(op):
            self._ok.add(op)
            return True
        if op not in self._logged:
            self._logged.add(op)
            log.msg("txuring.fs: this kernel's io_uring has no %s op (it needs Linux %s); "
                    "that operation runs on the thread pool" % (op, OPCODES[op].since))
        return False

    def open(self, path, flags, mode=0o666, resolve=0, dir_fd=None):
        if not self._has("openat2"):
            return self.threads.open(path, flags, mode, resolve, dir_fd)
        return self._result(self.ring.openat2(path, flags, mode, resolve=resolve,
                                              dir_fd=dir_fd))

    @property
    def busy(self):
        """Whether an op is queued or in flight, on the ring or on the thread pool."""
        return self.ring.has_pending_jobs() or self.threads.in_flight > 0

    def close(self, fd):
        """
        close(2): C{fd} is closed whatever happens. A cancel of the Deferred does not
        reach the op (it fails with CancelledError once the close has ended); where the
        ring cannot take the op any more (closed at reactor shutdown; a fork child's
        copy of the parent's ring), or cancelled it before it ran, os.close does it.
        """
        if not self._has("close"):
            return self.threads.close(fd)
        try:
            handle = self.ring.close(fd)
        except (errors.RingClosed, errors.RingForked):
            return _close_now(fd)
        d = self._result(handle).addErrback(_close_unless_ran, fd)
        return _shielded(d, "closing fd %d" % (fd,))

    def read(self, fd, buf, offset):
        return self._result(self.ring.read(fd, buf, -1 if offset is None else offset))

    def read_own(self, fd, buf, offset):
        """
        L{read} into a bytearray of this module's own, never shown to anyone before
        the read ends: off the public op API (L{txuring.leanfile}), the hot path of
        C{File.read(size, offset)}.
        """
        return leanfile.pread(self.ring, fd, buf, -1 if offset is None else offset)

    def write(self, fd, data, offset):
        return self._result(self.ring.write(fd, data, -1 if offset is None else offset))

    def stat(self, path, follow_symlinks=True, dir_fd=None):
        if not self._has("statx"):
            return self.threads.stat(path, follow_symlinks, dir_fd)
        # Off the public op API (the hot path of stat and of web servers): see
        # txuring.leanfile.
        return leanfile.statx(self.ring, path, follow_symlinks, dir_fd)

    def fstat(self, fd):
        if not self._has("statx"):
            return self.threads.fstat(fd)
        return leanfile.statx(self.ring, "", True, fd)

    def fstat_read(self, fd, buf, close=False):
        """
        Deferred[(stat, n)]: the fstat of C{fd}, and a read into C{buf} from offset 0
        (C{n} bytes, or None if the read failed, a directory's EISDIR for example).
        One trip instead of two: a statx linked to the read (IOSQE_IO_LINK), so the
        read starts once the stat is done and a failed stat cancels it. Servers of
        small files get a file's metadata and contents together.

        With C{close}, the close of C{fd} follows in the same chain, hard-linked
        (IOSQE_IO_HARDLINK, 5.5: it runs whatever the stat and the read gave), and
        the Deferred fires once the fd is closed: a small file in one trip.
        """
        if not self._has("statx") or (close and not self._has("close")):
            return self.threads.fstat_read(fd, buf, close)
        return self._read_chain(fd, buf, True, close)

    def read_close(self, fd, buf):
        """
        Deferred[(None, n)]: a read into C{buf} from offset 0 (C{n} bytes, or None if
        it failed), then the close of C{fd}, hard-linked (IOSQE_IO_HARDLINK, 5.5: the
        close runs whatever the read gave): a file whose size is known, read and
        closed in one trip. Fires once both have ended.
        """
        if not self._has("close"):
            return self.threads.read_close(fd, buf)
        return self._read_chain(fd, buf, False, True)

    def _read_chain(self, fd, buf, stat, close):
        """
        The chain of L{fstat_read} and L{read_close}: [statx], read from offset 0,
        [close, hard-linked], and their L{_stat_and_read} Deferred. The fd is closed
        by hand where the ring refuses the chain.
        """
        try:
            with self.ring.linked(hard=close):
                stat_h = self.ring.fstat(fd) if stat else None
                read_h = self.ring.read(fd, buf, 0)
                close_h = self.ring.close(fd) if close else None
        except (errors.RingClosed, errors.RingForked):
            if close:
                _close_now(fd).addErrback(lambda _: None)
            raise
        stat_d = defer.succeed(None) if stat_h is None else self._result(stat_h)
        closed = None
        if close_h is not None:
            closed = self._result(close_h).addErrback(_close_unless_ran, fd)
        return _stat_and_read(stat_d, self._result(read_h), closed)

    def fsync(self, fd, datasync=False):
        return self._result(self.ring.fsync(fd, datasync=datasync))

    def fallocate(self, fd, offset, length):
        if not self._has("fallocate"):
            return self.threads.fallocate(fd, offset, length)
        return self._result(self.ring.fallocate(fd, offset, length))

    def ftruncate(self, fd, length):
        if not self._has("ftruncate"):
            return self.threads.ftruncate(fd, length)
        return self._result(self.ring.ftruncate(fd, length))

    def unlink(self, path):
        if not self._has("unlinkat"):
            return self.threads.unlink(path)
        return self._result(self.ring.unlink(path))

    def rmdir(self, path):
        if not self._has("unlinkat"):
            return self.threads.rmdir(path)
        return self._result(self.ring.rmdir(path))

    def mkdir(self, path, mode):
        if not self._has("mkdirat"):
            return self.threads.mkdir(path, mode)
        return self._result(self.ring.mkdirat(path, mode))

    def rename(self, src, dst):
        if not self._has("renameat"):
            return self.threads.rename(src, dst)
        return self._result(self.ring.renameat(src, dst))

    def link(self, src, dst):
        if not self._has("linkat"):
            return self.threads.link(src, dst)
        return self._result(self.ring.linkat(src, dst))

    def symlink(self, src, dst):
        if not self._has("symlinkat"):
            return self.threads.symlink(src, dst)
        return self._result(self.ring.symlinkat(src, dst))

    def splice(self, fd_in, fd_out, nbytes, offset_in, offset_out):
        if not self._has("splice"):
            return self.threads.splice(fd_in, fd_out, nbytes, offset_in, offset_out)
        return self._result(self.ring.splice(fd_in, fd_out, nbytes, offset_in=offset_in,
                                             offset_out=offset_out))

    def readlink(self, path):
        return self.threads.readlink(path)  # no io_uring op

    def listdir(self, path):
        return self.threads.listdir(path)  # no getdents op

    def apply_max_workers(self, limits):
        """Cap this ring's io-wq workers (5.15); older kernels keep their default."""
        try:
            self.ring.set_iowq_max_workers(*limits)
        except OSError as e:
            log.msg("txuring.fs: io-wq worker caps not set (%s); the kernel's default "
                    "applies" % (e,))


# ---- the file system of one reactor ----


def _run(coro):
    return Deferred.fromCoroutine(coro)


def _turn(reactor):
    """A Deferred that fires on the reactor's next turn."""
    d = Deferred()
    reactor.callLater(0, d.callback, None)
    return d


def _wait_idle(ring, ops, reactor, timeout, cancel):
    """
    A Deferred that fires when C{ring} has no op left (C{cancel}: after cancelling
    them all), or after C{timeout} seconds, whichever comes first; never fails. The
    thread-pool calls of C{ops} are waited for by polling, as they are rare (listdir,
    readlink, ops the kernel lacks).
    """
    if ring.has_pending_jobs():
        d = ring.drain(cancel=cancel)
    else:
        d = Deferred()
        call = reactor.callLater(0.01, d.callback, None)
        d.addErrback(lambda f: (call.cancel() if call.active() else None, f)[1])
    d.addTimeout(timeout, reactor)
    return d.addErrback(lambda f: f.trap(defer.TimeoutError, CancelledError) and None)


class FileSystem:
    """
    The file operations, bound to one reactor. L{filesystem} gives the global
    reactor's; the module-level functions (C{txuring.fs.read_file}, ...) use it.

    @ivar reactor: the reactor the Deferreds fire in.
    @ivar backend: None until first use, then the L{RingOps} or L{ThreadOps} in use.
    @ivar reason: why the thread pool is used (None when io_uring is).
    """

    def __init__(self, reactor=None, *, threads=None, max_workers=None, queue_depth=128,
                 shutdown_timeout=SHUTDOWN_TIMEOUT):
        """
        @param threads: True to use the thread pool, False to refuse it (raise where
            io_uring is unusable), None (default): C{TXURING_FS_THREADS}, else io_uring
            where possible.
        @param max_workers: C{(bounded, unbounded)} io-wq caps; default
            C{TXURING_FS_MAX_WORKERS} or L{DEFAULT_MAX_WORKERS}; C{(0, 0)} leaves the
            kernel's limits.
        @param queue_depth: SQ size of a private ring (on a reactor other than uring).
        @param shutdown_timeout: seconds the ops in flight on a private ring when the
            reactor shuts down may take to end by themselves before they are cancelled.
        """
        if reactor is None:
            from twisted.internet import reactor
        if isinstance(shutdown_timeout, bool) or not isinstance(shutdown_timeout,
                                                                 (int, float)):
            raise TypeError("shutdown_timeout must be a number of seconds, not %r"
                            % (shutdown_timeout,))
        if not 0 <= shutdown_timeout < float("inf"):
            raise ValueError("shutdown_timeout must be >= 0 and finite, not %r"
                             % (shutdown_timeout,))
        self.reactor = reactor
        self._threads = threads
        self._max_workers = _worker_limits(max_workers)
        self._queue_depth = queue_depth
        self._shutdown_timeout = shutdown_timeout
        self.backend = None
        self.reason = None
        self._private_ring = None
        self._shut_down = False  # the reactor shut down (and the private ring with it)
        self._kind_at_shutdown = None  # the backend's kind when its ring was closed

    # -- choosing the backend --

    def _ops(self):
        if not _in_reactor_thread():
            raise _wrong_thread()
        if self.backend is None:
            if self._shut_down:
                raise errors.RingClosed(
                    "txuring.fs: the reactor has shut down and the ring of its file "
                    "operations is closed; no file operation can complete any more")
            self.backend = self._choose()
        return self.backend

    def _choose(self):
        threads = ThreadOps(self.reactor)
        wanted = self._threads
        if wanted is None:
            wanted = os.environ.get(THREADS_ENV, "") not in ("", "0")
            if wanted:
                return self._use_threads(threads, "%s=%s is set" % (
                    THREADS_ENV, os.environ[THREADS_ENV]))
        elif wanted:
            return self._use_threads(threads, "FileSystem(threads=True) was asked for")
        ring = getattr(self.reactor, "ring", None)
        from txuring.ring import Ring
        driver = None
        if not isinstance(ring, Ring) or ring.closed:
            try:
                ring = Ring(self._queue_depth, start_disabled=True)
            except (errors.UringUnavailable, OSError) as e:
                if self._threads is False:
                    raise
                return self._use_threads(threads, "io_uring is unavailable: %s" % (
                    e.strerror or e,))
            from txuring.attach import RingDriver
            driver = RingDriver(ring, self.reactor)
            self._private_ring = ring
            self.reactor.addSystemEventTrigger("before", "shutdown", self._shutdown, True)
        ops = RingOps(ring, threads, driver)
        if any(self._max_workers):
            ops.apply_max_workers(self._max_workers)
        return ops

    def _use_threads(self, threads, why):
        self.reason = why
        log.msg("txuring.fs: file operations run on the reactor's thread pool, not "
                "io_uring: %s" % (why,))
        return threads

    #: Rounds of cancel-and-wait once C{shutdown_timeout} has passed, before the ring is
    #: left open (ops cancelled that keep starting new ones: the process is exiting).
    _CANCEL_ROUNDS = 5

    @defer.inlineCallbacks
    def _shutdown(self, final=False):
        """
        Let the private ring's ops end, then detach and close it ("before shutdown",
        with C{final}: later calls raise RingClosed).

        The ops are not cancelled: a write made by a Service's C{stopService} (another
        "before shutdown" trigger) must reach the disk. The ring is closed only once it
        has been idle for a whole reactor turn: the triggers called after this one in
        the same phase, and callbacks of ops ending now, start their ops meanwhile.
        What still runs after C{shutdown_timeout} seconds is cancelled.
        """
        if final:
            self._shut_down = True
        backend, ring = self.backend, self._private_ring
        if ring is None or ring.closed:
            return
        reactor = self.reactor
        deadline = reactor.seconds() + self._shutdown_timeout
        rounds = 0
        while True:
            yield _turn(reactor)
            if not backend.busy:
                break
            left = deadline - reactor.seconds()
            if left > 0:
                yield _wait_idle(ring, backend, reactor, left, cancel=False)
                continue
            if rounds == self._CANCEL_ROUNDS:
                log.msg("txuring.fs: %d ops still in flight on the file ring after "
                        "cancelling them; the ring is left open" % (ring.active_ops,))
                return
            if rounds == 0:
                log.msg("txuring.fs: cancelling %d file ops still in flight %s s after "
                        "the reactor began to shut down" % (
                            ring.active_ops, self._shutdown_timeout))
            rounds += 1
            yield _wait_idle(ring, backend, reactor, 1.0, cancel=True)
        backend.driver.detach()
        ring.exit()
        self._kind_at_shutdown = backend.kind
        self.backend = None
        self._private_ring = None

    def ops(self):
        """
        The primitive ops in use (L{RingOps} or L{ThreadOps}), chosen at the first
        call: each returns a Deferred and cancels as the functions here do. For code
        building on this module (L{txuring.web}).
        """
        return self._ops()

    @property
    def kind(self):
        """
        C{"io_uring"} or C{"threads"}: the backend (chosen now if not yet; after the
        reactor shut down, the one it had).
        """
        if self.backend is None and self._shut_down and self._kind_at_shutdown:
            return self._kind_at_shutdown
        return self._ops().kind

    # -- whole-file functions --

    def read_file(self, path):
        """The contents of the file at C{path}: Deferred[bytes]."""
        path = _path(path)
        ops = self._ops()
        if ops.kind == "io_uring" and ops._has("openat2") and ops._has("close"):
            # Off the public op API: see txuring.leanfile. (Its IORING_OP_OPENAT came
            # with IORING_OP_OPENAT2, in 5.6.)
            return leanfile.read_file(ops.ring, path, ITER_CHUNK,
                                      partial(self._rf_lean_general, ops, path),
                                      ops.read_close)
        # Callbacks rather than a coroutine: this is the hot path of small-file
        # servers, and each coroutine step costs. Two trips for a small file: the
        # open with a stat of the path alongside it, then its read and close in one
        # hard-linked chain. Only a regular file (as that stat says) gets the chain:
        # a FIFO's or a terminal's data, once read, cannot be read again, and a FIFO
        # opened again waits for a writer that may never come. A cancel reaches the ops in flight; the fd is closed
        # whatever happens.
        kind = ops.stat(path)
        return ops.open(path, os.O_RDONLY).addBoth(self._rf_opened, ops, path, kind)

    def _rf_opened(self, fd, ops, path, kind):
        if isinstance(fd, Failure):
            kind.addErrback(lambda _: None)
            kind.cancel()
            return fd
        return kind.addBoth(self._rf_kind, fd, ops, path)

    def _rf_kind(self, st, fd, ops, path):
        if isinstance(st, Failure):
            if not st.check(OSError):
                return _close_then(st, ops, fd)  # a cancel
            st = None  # (the path changed after the open: the fd's own stat decides)
        if st is not None and _stat.S_ISREG(st.st_mode) and st.st_size < ITER_CHUNK:
            # The size is known: one read of it (and a byte more, to see the file
            # grew), then the close, in one trip.
            buf = bytearray(st.st_size + 1)
            d = ops.read_close(fd, buf)
            return d.addCallback(self._rf_read, ops, path, buf, st.st_size)
        return self._rf_general(fd, ops, path)

    def _rf_read(self, st_n, ops, path, buf, size):
        n = st_n[1]
        if n == size:
            del buf[n:]  # all of it: the common case of a small file
            return bytes(buf)
        # The file changed between the stat and the read (or the path now names
        # something else): the general loop on a new fd (that first one is closed).
        return ops.open(path, os.O_RDONLY).addCallback(self._rf_general, ops, path)

    def _rf_lean_general(self, ops, path, fd):
        if fd is None:
            return ops.open(path, os.O_RDONLY).addCallback(self._rf_general, ops, path)
        return self._rf_general(fd, ops, path)

    def _rf_general(self, fd, ops, path):
        d = ops.fstat(fd).addCallback(self._rf_stat, ops, fd, path)
        return d.addBoth(_close_then, ops, fd)

    def _rf_stat(self, st, ops, fd, path):
        if _stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        regular = _stat.S_ISREG(st.st_mode)
        return _run(_read_all(ops, fd, 0 if regular else None,
                              st.st_size if regular else 0, regular))

    async def _open_file(self, ops, path, flags, mode=0o666):
        """
        open(2), refusing directories as Python's open() does (IsADirectoryError):
        C{(fd, its fstat)}, the stat None for a file opened for writing (the kernel
        refuses a directory with EISDIR there already).
        """
        fd = await ops.open(path, flags, mode)
        if flags & (os.O_WRONLY | os.O_RDWR):
            return fd, None
        try:
            st = await ops.fstat(fd)
        except BaseException:
            await _close(ops, fd)
            raise
        if _stat.S_ISDIR(st.st_mode):
            await _close(ops, fd)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        return fd, st

    def write_file(self, path, data, *, atomic=False):
        """
        Write C{data} (bytes-like) to C{path}, replacing it: Deferred[int] of the bytes
        written. With C{atomic}: a temporary file in the same directory is written,
        fsync'd, given the target's permission bits, renamed over C{path}, and the
        directory fsync'd; on any failure or cancel before the rename the temporary file
        is removed and C{path} is untouched (the Deferred fails with CancelledError). A
        cancel that arrives while the rename is in flight may come too late to stop it:
        the target then holds the new data, and the Deferred fails with CancelledError.
        """
        path = _path(path)
        data = _bytes_like(data)
        ops = self._ops()
        if atomic:
            return _run(self._write_atomic(ops, path, data))
        return _run(self._write(ops, path, data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))

    def append_file(self, path, data):
        """Append C{data} to C{path} (created if missing): Deferred[int]."""
        path = _path(path)
        data = _bytes_like(data)
        return _run(self._write(self._ops(), path, data,
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND))

    async def _write(self, ops, path, data, flags):
        fd = await ops.open(path, flags, 0o666)
        try:
            return await _write_all(ops, fd, data, None if flags & os.O_APPEND else 0)
        finally:
            await _close(ops, fd)

    async def _write_atomic(self, ops, path, data):
        directory = os.path.dirname(path)
        tmp = _temp_name(path)
        try:
            mode = _stat.S_IMODE((await ops.stat(path)).st_mode)
        except FileNotFoundError:
            mode = None
        try:
            fd = await ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise  # not ours (a 48-bit random name: in practice never)
        except BaseException:
            # A cancelled open may have created the file before the cancel arrived
            # (the ring closes the fd nobody received; the name stays).
            await _remove_quietly(ops, tmp)
            raise
        renamed = False
        try:
            try:
                if mode is not None:
                    os.fchmod(fd, mode)  # inode metadata in memory: does not block
                n = await _write_all(ops, fd, data, 0)
                await ops.fsync(fd)
            finally:
                await _close(ops, fd)
            await ops.rename(tmp, path)
            renamed = True
        finally:
            if not renamed:
                await _remove_quietly(ops, tmp)
        dfd = await ops.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            await ops.fsync(dfd)
        finally:
            await _close(ops, dfd)
        return n

    def copy_file(self, src, dst, *, follow_symlinks=True):
        """
        Copy the contents of C{src} to C{dst} as C{shutil.copyfile} does (contents only:
        C{dst} gets a new file's permissions, or keeps its own): Deferred of C{dst} as
        given.
        The data moves file -> pipe -> file with splice ops where the filesystem allows
        it, else in 1 MiB reads and writes; never the whole file in memory.
        Raises C{shutil.SameFileError} and C{shutil.SpecialFileError} as shutil does.
        """
        given = dst
        src, dst = _path(src, "src"), _path(dst, "dst")
        d = _run(self._copy_file(self._ops(), src, dst, follow_symlinks))
        return d.addCallback(lambda _: given)

    async def _copy_file(self, ops, src, dst, follow_symlinks):
        if not follow_symlinks and (await _lstat_or_none(ops, src) or
                                    _NOSTAT).is_symlink():
            await ops.symlink(await ops.readlink(src), dst)
            return dst
        sst = await ops.stat(src)
        dst_st = await _stat_or_none(ops, dst)
        if dst_st is not None and (sst.st_dev, sst.st_ino) == (dst_st.st_dev,
                                                                 dst_st.st_ino):
            raise shutil.SameFileError("%r and %r are the same file" % (src, dst))
        for st, name in ((sst, src), (dst_st, dst)):
            if st is not None and _stat.S_ISFIFO(st.st_mode):
                raise shutil.SpecialFileError("`%s` is a named pipe" % (name,))
        fin, _ = await self._open_file(ops, src, os.O_RDONLY)
        try:
            fout = await ops.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                if not await _copy_spliced(ops, fin, fout):
                    await _copy_chunked(ops, fin, fout)
            finally:
                await _close(ops, fout)
        finally:
            await _close(ops, fin)
        return dst

    # -- metadata and names --

    def stat(self, path):
        """stat(2), following symlinks: Deferred[StatxResult] (os.stat_result's fields)."""
        return self._stat(path, True)

    def lstat(self, path):
        """lstat(2): a symlink's own metadata."""
        return self._stat(path, False)

    def _stat(self, path, follow):
        path = _path(path)
        if path in ("", b""):
            return defer.fail(_enoent(path))  # statx would stat the cwd (AT_EMPTY_PATH)
        return self._ops().stat(path, follow)

    def exists(self, path):
        """Deferred[bool]: whether C{path} exists, as C{os.path.exists} (False on errors)."""
        try:
            path = _path(path)
        except ValueError:
            return defer.succeed(False)
        if path in ("", b""):
            return defer.succeed(False)
        d = self._ops().stat(path, True)
        return d.addCallbacks(lambda st: True, _false_on_oserror)

    def unlink(self, path):
        """unlink(2)."""
        path = _path(path)
        return self._ops().unlink(path).addCallback(_none)

    def rmdir(self, path):
        """rmdir(2)."""
        path = _path(path)
        return self._ops().rmdir(path).addCallback(_none)

    def mkdir(self, path, mode=0o777, *, parents=False, exist_ok=False):
        """mkdir(2), with C{pathlib.Path.mkdir}'s C{parents} and C{exist_ok}."""
        path = _path(path)
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
            raise ValueError("mode must be an int from 0 to 0o7777, not %r" % (mode,))
        return _run(self._mkdir(self._ops(), path, mode, parents, exist_ok))

    async def _mkdir(self, ops, path, mode, parents, exist_ok):
        try:
            await ops.mkdir(path, mode)
        except FileNotFoundError:
            parent = os.path.dirname(os.path.normpath(path))
            if not parents or parent == path or not parent:
                raise
            await self._mkdir(ops, parent, mode, True, True)
            await self._mkdir(ops, path, mode, False, exist_ok)
        except OSError:
            # As pathlib: EEXIST (or anything else) is fine if a directory is there.
            st = await _stat_or_none(ops, path)
            if not exist_ok or st is None or not st.is_dir():
                raise

    def rename(self, src, dst):
        """rename(2): C{src} to C{dst}, replacing it."""
        src, dst = _path(src, "src"), _path(dst, "dst")
        return self._ops().rename(src, dst).addCallback(_none)

    def link(self, src, dst):
        """link(2): a hard link C{dst} to the file C{src} (os.link's order)."""
        src, dst = _path(src, "src"), _path(dst, "dst")
        return self._ops().link(src, dst).addCallback(_none)

    def symlink(self, src, dst):
        """symlink(2): a link C{dst} pointing to C{src} (os.symlink's order)."""
        src, dst = _path(src, "src"), _path(dst, "dst")
        return self._ops().symlink(src, dst).addCallback(_none)

    def readlink(self, path):
        """readlink(2), on the thread pool (io_uring has no readlinkat op)."""
        path = _path(path)
        return self._ops().readlink(path)

    def truncate(self, path, size):
        """truncate(2): C{path} made C{size} bytes long."""
        path = _path(path)
        _size(size, "size")
        ops = self._ops()
        if isinstance(ops, RingOps) and not ops.ring.op_supported("ftruncate"):
            return ops.threads.call(os.truncate, path, size)
        return _run(self._truncate(ops, path, size))

    async def _truncate(self, ops, path, size):
        fd = await ops.open(path, os.O_WRONLY)
        try:
            await ops.ftruncate(fd, size)
        finally:
            await _close(ops, fd)

    def listdir(self, path="."):
        """
        os.listdir(C{path}): Deferred[list] of names, str or bytes as C{path} is.
        Runs on the thread pool: io_uring has no getdents op (see the module docstring).
        """
        path = _path(path)
        return self._ops().listdir(path)

    # -- open files --

    def open(self, path, mode="rb"):
        """
        Open C{path} with one of Python's binary mode strings (C{r w a x}, C{+}, C{b}):
        a Deferred of a L{File}. It is also an async context manager::

            async with fs.open(path, "rb") as f: ...      # or f = await fs.open(path)
        """
        path = _path(path)
        flags, readable, writable, append = parse_mode(mode)
        ops = self._ops()
        return _OpenDeferred(self._open(ops, path, mode, flags, readable, writable, append))

    async def _open(self, ops, path, mode, flags, readable, writable, append):
        fd, _ = await self._open_file(ops, path, flags, 0o666)
        if append:
            os.lseek(fd, 0, os.SEEK_END)  # as Python's 'a' mode: start at the end
        return File(self, ops, fd, path, mode, readable, writable, append)


_NOSTAT = StatxResult(*([0] * 20))


async def _stat_or_none(ops, path):
    try:
        return await ops.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


async def _lstat_or_none(ops, path):
    try:
        return await ops.stat(path, False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _false_on_oserror(failure):
    failure.trap(OSError)
    return False


def _none(result):
    return None


def _temp_name(path):
    """
    The temporary file of an atomic write of C{path}: C{.NAME.RANDOM.tmp} in the same
    directory, NAME cut so that the whole fits NAME_MAX (a target whose name is close
    to 255 bytes long must not make an invalid temporary name).
    """
    directory, base = os.path.split(path)
    suffix = "." + secrets.token_hex(6) + ".tmp"
    room = NAME_MAX - 1 - len(suffix)
    if isinstance(path, bytes):
        return os.path.join(directory, b"." + base[:room] + suffix.encode())
    while len(os.fsencode(base)) > room:  # (cut whole characters, not UTF-8 bytes)
        base = base[:-1]
    return os.path.join(directory, "." + base + suffix)


def _bytes_like(data):
    """
    C{data} as a memoryview of bytes that nobody can change any more, as Python's
    C{file.write} takes it: bytes (and C-contiguous memoryviews of bytes) are used as
    they are, without a copy; any other buffer (bytearray, array, mmap, a memoryview
    of one) is copied at the call, so that changing it afterwards does not change what
    is written, and it can be resized at once (no buffer export is kept on it).
    """
    if type(data) is bytes:
        return memoryview(data)
    if isinstance(data, str):
        raise TypeError("data must be bytes-like, not str (encode it first)")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError("data must be bytes-like (bytes, bytearray, memoryview), not %s"
                        % (type(data).__name__,)) from None
    with view:
        if isinstance(view.obj, bytes) and view.c_contiguous:
            return view.cast("B")  # immutable: no copy
        return memoryview(view.tobytes())


def _worker_limits(max_workers):
    if max_workers is None:
        env = os.environ.get(WORKERS_ENV)
        if env:
            try:
                max_workers = tuple(int(x) for x in env.split(","))
            except ValueError:
                raise ValueError("%s must be 'bounded,unbounded' (two ints), not %r"
                                 % (WORKERS_ENV, env)) from None
        else:
            max_workers = DEFAULT_MAX_WORKERS
    try:
        bounded, unbounded = max_workers
    except (TypeError, ValueError):
        raise ValueError("max_workers must be (bounded, unbounded), not %r"
                         % (max_workers,)) from None
    for v in (bounded, unbounded):
        if not isinstance(v, int) or not 0 <= v <= 1 << 16:
            raise ValueError("io-wq worker caps must be ints from 0 to 65536, not %r"
                             % (max_workers,))
    return bounded, unbounded


def _stat_and_read(stat_d, read_d, closed_d=None):
    """
    The Deferred of L{RingOps.fstat_read}, fired once all its ops have ended. A cancel
    reaches the stat and the read; its CancelledError waits (paused) until all of
    them, the close included, have ended: the kernel has let go of the buffer, and the
    fd a closing chain was given is closed.
    """
    def cancel(d):
        _cancel_paused(d)
        stat_d.cancel()
        read_d.cancel()

    out = Deferred(cancel)
    results = {}
    waiting = 2 if closed_d is None else 3

    def ended(result, which):
        results[which] = result
        if len(results) < waiting:
            return None
        if out.called:  # cancelled: its CancelledError waited for this
            out.unpause()
            return None
        st, n = results["stat"], results["read"]
        if isinstance(st, Failure):
            out.errback(st)
        elif isinstance(n, Failure) and not n.check(OSError):
            out.errback(n)  # a cancel, or an exception of ours: not "no data"
        else:
            out.callback((st, None if isinstance(n, Failure) else n))
        return None

    stat_d.addBoth(ended, "stat")
    read_d.addBoth(ended, "read")
    if closed_d is not None:
        closed_d.addBoth(ended, "close")
    return out


async def _close(ops, fd):
    """
    Close C{fd}, logging an error of close(2). A cancel of the caller never leaves it
    open: the close goes on, and CancelledError is raised once it has ended, so that
    the cancelled coroutine stops there (an atomic write must not go on to its rename).
    """
    try:
        await ops.close(fd)
    except OSError as e:
        log.msg("txuring.fs: closing fd %d: %s" % (fd, e))


def _close_then(result, ops, fd):
    """Close C{fd}, then pass C{result} (a value or a Failure) on."""
    def closed(outcome):
        if isinstance(outcome, Failure) and not outcome.check(CancelledError):
            log.msg("txuring.fs: closing fd %d: %s" % (fd, outcome.getErrorMessage()))
        return result

    return ops.close(fd).addBoth(closed)


async def _remove_quietly(ops, path):
    try:
        await ops.unlink(path)
    except (OSError, CancelledError):
        pass


async def _read_all(ops, fd, offset, size_hint, regular=False):
    """
    Read from C{offset} (None: the file position) to EOF; C{size_hint} (the size
    fstat gave) sizes the first buffer (one byte more), so a regular file takes one
    read, and a file that lies about its size (/proc) still reads whole.

    A C{regular} file that gave all fstat announced in a read shorter than asked is
    at its end: the extra read that would return 0 is saved (a file growing
    meanwhile fills the extra byte and is read on). /proc files announce 0 bytes,
    and are read until a read returns 0.
    """
    buf = bytearray(min(max(size_hint, 0), _MAX_OP) + 1)
    got = 0
    while True:
        if got == len(buf):
            buf.extend(bytes(min(max(len(buf), CHUNK), _MAX_OP)))
        view = memoryview(buf)[got:]
        try:
            n = await ops.read(fd, view, None if offset is None else offset + got)
        finally:
            view.release()
        if n == 0:
            break
        got += n
        if regular and got < len(buf) and got >= size_hint > 0:
            break  # all fstat announced, and a short read: the end
    del buf[got:]
    return bytes(buf)


async def _read_upto(ops, fd, size, offset):
    """Read up to C{size} bytes (fewer only at EOF), growing the buffer as data comes."""
    buf = bytearray(min(size, CHUNK))
    got = 0
    while got < size:
        if got == len(buf):
            buf.extend(bytes(min(size - got, len(buf), _MAX_OP)))
        view = memoryview(buf)[got:]
        try:
            n = await ops.read(fd, view, None if offset is None else offset + got)
        finally:
            view.release()
        if n == 0:
            break
        got += n
    del buf[got:]
    return bytes(buf)


async def _write_all(ops, fd, data, offset):
    """Write all of C{data} (a memoryview of bytes), looping on short writes."""
    total = len(data)
    done = 0
    while done < total:
        part = data[done:done + _MAX_OP]
        n = await ops.write(fd, part, None if offset is None else offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "write(2) returned %d with %d bytes left"
                          % (n, total - done))
        done += n
    return total


async def _copy_spliced(ops, fin, fout):
    """
    Copy through a pipe with splice (file -> pipe, pipe -> file): the kernel moves page
    references, no copy through user space. Returns False (nothing written) where the
    source cannot be spliced (EINVAL: its filesystem lacks splice_read).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            import fcntl
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # pipe-max-size lower than 1 MiB: the default 64 KiB pipe works too
        offset = 0
        while True:
            try:
                n = await ops.splice(fin, w, _PIPE_SIZE, offset, None)
            except OSError as e:
                if offset == 0 and e.errno in (errno.EINVAL, errno.ENOSYS):
                    return False
                raise
            if n == 0:
                return True
            moved = 0
            while moved < n:
                k = await ops.splice(r, fout, n - moved, None, offset + moved)
                if k <= 0:
                    raise OSError(errno.EIO, "splice to the destination moved nothing")
                moved += k
            offset += n
    finally:
        os.close(r)
        os.close(w)


async def _copy_chunked(ops, fin, fout):
    buf = bytearray(CHUNK)
    offset = 0
    while True:
        n = await ops.read(fin, buf, offset)
        if n == 0:
            return
        await _write_all(ops, fout, memoryview(buf)[:n], offset)
        offset += n


class _OpenDeferred(Deferred):
    """
    The Deferred of L{FileSystem.open}; also an async context manager that closes the
    L{File} on exit (C{async with fs.open(p) as f:}).
    """

    def __init__(self, coro):
        inner = _run(coro)
        Deferred.__init__(self, lambda d: _cancel_open(d, inner))
        self._file = None

        def deliver(result):
            if not self.called:
                self.callback(result)
            else:  # cancelled meanwhile: the file nobody will get is closed
                self.unpause()
                if isinstance(result, File):
                    result.close().addErrback(log.err, "closing a cancelled open")
            return None

        def failed(failure):
            if not self.called:
                self.errback(failure)
            else:
                self.unpause()
            return None

        inner.addCallbacks(deliver, failed)

    async def __aenter__(self):
        self._file = await self
        return self._file

    async def __aexit__(self, *exc):
        await self._file.close()
        return False


def _cancel_open(d, inner):
    d.pause()
    d.errback(Failure(CancelledError("open cancelled")))
    inner.cancel()


class File:
    """
    An open file whose methods return Deferreds: C{read}, C{readinto} and C{write}
    without C{offset} use and advance the file position (as Python's file objects do,
    one such call at a time, in the order made); with C{offset} they run at once and
    leave the position alone (as C{os.pread}/C{os.pwrite}).

    Closing waits for the operations in flight on this File, then closes the fd. A
    File collected while open is closed with a C{ResourceWarning}, as Python's are.

    @ivar name: the path it was opened with.
    @ivar mode: the mode string.
    """

    def __init__(self, filesystem, ops, fd, name, mode, readable, writable, append):
        self._fs = filesystem
        self._ops = ops
        self._fd = fd
        self.name = name
        self.mode = mode
        self._readable = readable
        self._writable = writable
        self._append = append
        self._closing = None
        self._inflight = set()
        self._positional = defer.DeferredLock()

    def __repr__(self):
        return "<txuring.fs.File name=%r mode=%r%s>" % (
            self.name, self.mode, " closed" if self.closed else "")

    @property
    def closed(self):
        return self._closing is not None

    def fileno(self):
        self._check_open()
        return self._fd

    def readable(self):
        return self._readable

    def writable(self):
        return self._writable

    def _check_open(self):
        if self._closing is not None:
            raise ValueError("I/O operation on closed file")

    def _check(self, readable=False, writable=False):
        if not _in_reactor_thread():
            raise _wrong_thread()
        self._check_open()
        if readable and not self._readable:
            raise io.UnsupportedOperation("File not open for reading")
        if writable and not self._writable:
            raise io.UnsupportedOperation("File not open for writing")

    def _track(self, coro, positional=False):
        """Run C{coro} (one op of this File); close() waits for it."""
        if positional:
            coro = self._in_order(coro)
        d = coro if isinstance(coro, Deferred) else _run(coro)
        self._inflight.add(d)
        return d.addBoth(self._untrack, d)

    async def _in_order(self, coro):
        await self._positional.acquire()
        try:
            return await coro
        finally:
            self._positional.release()

    def _untrack(self, result, d):
        self._inflight.discard(d)
        return result

    def read(self, size=-1, offset=None):
        """
        Up to C{size} bytes (all to EOF with -1 or None); fewer only at EOF.
        From the file position (advanced) or from C{offset}.
        """
        self._check(readable=True)
        offset = _offset(offset)
        if size is None or (isinstance(size, int) and size < 0):
            return self._track(self._read_all(offset), offset is None)
        _size(size, "size")
        if offset is not None and 0 < size <= CHUNK:
            # pread of one chunk: one op, no coroutine, unless it comes back short.
            buf = bytearray(size)
            d = self._ops.read_own(self._fd, buf, offset)
            return self._track(d.addCallback(self._after_pread, buf, offset))
        return self._track(_read_upto(self._ops, self._fd, size, offset), offset is None)

    def _after_pread(self, n, buf, offset):
        if n == len(buf):
            return bytes(buf)
        if n == 0:
            return b""
        # Short (a pipe, a file shorter than asked): read on, as read(size) promises.
        rest = _run(_read_upto(self._ops, self._fd, len(buf) - n, offset + n))
        return rest.addCallback(lambda more: bytes(buf[:n]) + more)

    async def _read_all(self, offset):
        st = await self._ops.fstat(self._fd)
        hint = 0
        if _stat.S_ISREG(st.st_mode):  # (a pipe's size means nothing; it cannot seek)
            start = offset if offset is not None else os.lseek(self._fd, 0, os.SEEK_CUR)
            hint = st.st_size - start
        return await _read_all(self._ops, self._fd, offset, hint)

    def readinto(self, buffer, offset=None):
        """Fill the writable C{buffer}: Deferred[int] of bytes read (short only at EOF)."""
        self._check(readable=True)
        offset = _offset(offset)
        try:
            view = memoryview(buffer).cast("B")
        except TypeError:
            raise TypeError("readinto needs a writable buffer, not %s"
                            % (type(buffer).__name__,)) from None
        if view.readonly:
            raise TypeError("readinto needs a writable buffer (bytearray, memoryview of "
                            "one), not a read-only %s" % (type(buffer).__name__,))
        return self._track(self._readinto(view, offset), offset is None)

    async def _readinto(self, view, offset):
        got = 0
        while got < len(view):
            n = await self._ops.read(self._fd, view[got:got + _MAX_OP],
                                     None if offset is None else offset + got)
            if n == 0:
                break
            got += n
        return got

    def write(self, data, offset=None):
        """
        Write all of C{data} (looping on short writes): Deferred[int] of its length.
        At the file position (advanced), or at C{offset}; in append mode at the end.
        """
        self._check(writable=True)
        offset = _offset(offset)
        data = _bytes_like(data)
        return self._track(_write_all(self._ops, self._fd, data, offset), offset is None)

    def seek(self, offset, whence=os.SEEK_SET):
        """Move the file position (after the positional ops already asked for)."""
        self._check()
        if not isinstance(offset, int) or whence not in (0, 1, 2, 3, 4):
            raise ValueError("seek(offset: int, whence: SEEK_SET/CUR/END/DATA/HOLE)")
        return self._track(self._lseek(offset, whence), True)

    def tell(self):
        """The file position, after the positional ops already asked for."""
        return self.seek(0, os.SEEK_CUR)

    async def _lseek(self, offset, whence):
        return os.lseek(self._fd, offset, whence)  # moves a number: never blocks on disk

    def stat(self):
        """fstat(2): Deferred[StatxResult]."""
        self._check()
        return self._track(self._ops.fstat(self._fd))

    def fsync(self):
        """fsync(2)."""
        self._check()
        return self._track(self._none(self._ops.fsync(self._fd)))

    def fdatasync(self):
        """fdatasync(2)."""
        self._check()
        return self._track(self._none(self._ops.fsync(self._fd, True)))

    def truncate(self, size):
        """ftruncate(2) (the position does not move, as in Python)."""
        self._check(writable=True)
        _size(size, "size")
        return self._track(self._none(self._ops.ftruncate(self._fd, size)))

    def allocate(self, offset, length):
        """fallocate(2) with mode 0: make C{offset}..C{offset+length} allocated."""
        self._check(writable=True)
        _size(offset, "offset")
        _size(length, "length")
        if length == 0:
            raise ValueError("length must be > 0 (fallocate(2) refuses 0)")
        return self._track(self._none(self._ops.fallocate(self._fd, offset, length)))

    async def _none(self, d):
        await d
        return None

    def close(self):
        """
        Close the file once the ops in flight on it have ended: Deferred[None].
        Idempotent; after it every other method raises ValueError. The fd is closed
        even when the reactor has shut down (then with os.close).
        """
        if not _in_reactor_thread():
            raise _wrong_thread()
        if self._closing is None:
            self._closing = _run(self._close())
        d = Deferred()
        self._closing.addBoth(lambda r: (d.callback(None) if not isinstance(r, Failure)
                                         else d.errback(r), r)[1])
        return d

    async def _close(self):
        while self._inflight:
            try:
                await defer.DeferredList(list(self._inflight), consumeErrors=True)
            except CancelledError:
                pass
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await self._ops.close(fd)

    def __del__(self):
        fd = getattr(self, "_fd", -1)
        if fd >= 0 and self._closing is None:
            self._fd = -1
            try:
                warnings.warn("unclosed file %r" % (self,), ResourceWarning, source=self)
            except Exception:
                pass
            try:
                os.close(fd)  # no op of this File is in flight: they keep it alive
            except OSError:
                pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
        return False

    def __aiter__(self):
        return self

    async def __anext__(self):
        data = await self.read(ITER_CHUNK)
        if not data:
            raise StopAsyncIteration
        return data

    def chunks(self, size=ITER_CHUNK):
        """An async iterator over C{size}-byte chunks from the file position to EOF."""
        _size(size, "size")
        if size == 0:
            raise ValueError("size must be > 0")
        return _Chunks(self, size)


class _Chunks:
    def __init__(self, f, size):
        self._f = f
        self._size = size

    def __aiter__(self):
        return self

    async def __anext__(self):
        data = await self._f.read(self._size)
        if not data:
            raise StopAsyncIteration
        return data


# ---- module-level functions on the global reactor ----

#: The attribute of a reactor that holds its FileSystem. On the reactor itself, not in
#: a module-level mapping: a FileSystem refers to its reactor, so a mapping's value
#: would keep its key (and the reactor's ring, threads, sockets) alive for the life of
#: the process; as an attribute the two are one cycle, collected together.
_ATTR = "_txuring_filesystem"
#: FileSystems of reactors that take no attribute (kept for the life of the process).
_pinned = {}
_lock = threading.Lock()


def filesystem(reactor=None):
    """The L{FileSystem} of C{reactor} (the global reactor by default), made once."""
    if reactor is None:
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None:  # not installed yet: the import installs the default
            from twisted.internet import reactor
    fs = getattr(reactor, _ATTR, None)
    if fs is not None and fs.reactor is reactor:
        return fs  # the module-level functions' common case, without the lock
    return _filesystem_of(reactor)


def _filesystem_of(reactor):
    with _lock:
        fs = getattr(reactor, _ATTR, None)
        if fs is None or fs.reactor is not reactor:
            fs = _pinned.get(id(reactor))
        if fs is None or fs.reactor is not reactor:
            fs = FileSystem(reactor)
            try:
                setattr(reactor, _ATTR, fs)
            except (AttributeError, TypeError):
                _pinned[id(reactor)] = fs  # (holds the reactor: its id stays its own)
        return fs


def _delegate(name):
    method = getattr(FileSystem, name)

    def call(*args, **kwargs):
        return getattr(filesystem(), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


for _name in ("read_file", "write_file", "append_file", "stat", "lstat", "exists",
              "unlink", "rmdir", "mkdir", "rename", "link", "symlink", "readlink",
              "truncate", "copy_file", "listdir", "open"):
    globals()[_name] = _delegate(_name)
del _name
