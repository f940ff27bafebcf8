"""
twisted.web resources on L{txuring.fs}: L{Directory} serves a directory tree as
C{twisted.web.static.File} does, without ever blocking the reactor on the disk.

Why: C{static.File} stats, opens and reads every chunk of every response with blocking
calls in the reactor thread, so one slow disk (or a cold page cache) stalls every
connection of the process. Here nothing waits for a disk in the reactor's thread:
  - what the kernel can do at once is done at once (L{Directory._serve_now}): an
    open of a path in the dentry cache (openat2 RESOLVE_CACHED), a read of pages in
    the page cache (preadv2 RWF_NOWAIT) -- the attempt io_uring makes inline before it
    punts an op to a kernel worker, without the op's trip through the reactor (a
    small file's request costs no op, Deferred or coroutine);
  - the rest is ring ops (or thread-pool calls where io_uring is unusable; see
    L{txuring.fs}): the open, the fstat and the chunk reads the kernel would have
    had to wait for;
  - big bodies on UringReactor's TCP transports are spliced file -> pipe -> socket
    (L{txuring.websplice}), never copied through the process.

What matches static.File (tested side by side in tests/fs_suite/test_web.py): content
types and encodings (its tables and C{getTypeAndEncoding}), C{Accept-Ranges}, single
and multiple byte ranges (its own range parsing and multipart framing, reused),
C{If-Modified-Since} / 304 and C{Last-Modified}, HEAD, index files, the redirect of a
directory URL without its trailing slash (the resource's own URL too, when mounted
with C{putChild}), a 404 for a file URL with a trailing slash, 404 and 403 pages, and
the tree the path names now: the root's fd is cached, but checked against its path on
every request (a stat in parallel with the open), so a directory swapped by a deploy
is served from the new tree.

What differs, on purpose:
  - Directory listings are off by default (C{listing=True} turns them on; static.File
    lists every directory).
  - No escape from the root: every path is opened with C{openat2(RESOLVE_BENEATH)}
    (5.6) relative to the root's fd, so neither C{..} nor a symlink (absolute, or
    relative and climbing) can leave it: the kernel refuses with EXDEV, served as 404.
    static.File follows symlinks anywhere. C{allow_symlink_escape=True} lifts the
    symlink rule (C{..} segments are still refused).
  - Only regular files and directories are served (a FIFO or a device is a 404), and
    files are opened with O_NONBLOCK so that nothing can hold a worker forever.
  - A listing shows a symlink as its target only where a request could follow it
    (beneath the root, unless C{allow_symlink_escape}); one leading out is left out.
  - A suffix range longer than the file selects all of it (RFC 9110 14.1.2);
    static.File computes a negative offset and fails the request.
  - A 304 carries no Content-Length (static.File sends 0, which RFC 9110 8.6 forbids
    unless the body would be empty).
  - No C{processors} (.rpy scripts) and no C{ignoredExts}.

Streaming: L{FileProducer} is a push producer: one chunk read at a time, written, the
next read started unless the transport paused it (bounded memory whatever the file's
size); resumed, it goes on from the reactor's next turn, so that a few big downloads
never take a whole loop pass (a tiny request made meanwhile waited milliseconds).
When the client goes away mid-response, the read in flight is cancelled and the fd
closed.
"""

import errno
import os
import stat as _stat
import time
from urllib.parse import quote

from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web import http, resource, server, static
from twisted.web.util import redirectTo

from txuring import fs as txfs
from txuring._core import lib
from txuring.opcode import (
    RESOLVE_BENEATH, RESOLVE_CACHED, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_XDEV)

#: Bytes per read op while streaming a body.
CHUNK = 64 * 1024

#: The smallest body spliced file -> pipe -> socket (see L{txuring.websplice}): below,
#: a pipe made and closed, and a trip through a kernel worker, cost more than copying.
SPLICE_MIN = 256 * 1024

#: preadv2's RWF_NOWAIT (4.14): fail with EAGAIN rather than wait for the disk.
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 8)
#: The flags of a file's open: never waiting for a FIFO's writer, and never making a
#: terminal device in the tree the process's controlling terminal (O_NOCTTY).
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
#: openat2(2) made at once: (dir_fd, path bytes, flags, resolve) -> fd or -errno.
_open_now = lib.txu_openat2_now
#: preadv2(2) (a name of this module's, so that tests can make it fail with EAGAIN).
_preadv = os.preadv

#: Filesystems whose getattr of an open file reads only the in-memory inode: on
#: these, fstat(2) of an fd just opened cannot wait for a disk or a server. (NFS,
#: SMB, FUSE and the like may ask their server, so they go through a statx op.)
LOCAL_FILESYSTEMS = frozenset([
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "bcachefs", "zfs", "tmpfs",
    "ramfs", "overlay", "squashfs", "erofs", "iso9660", "vfat", "exfat"])


def filesystem_type(dev):
    """
    The type of the filesystem mounted from device number C{dev} (an st_dev), from
    /proc/self/mountinfo (procfs: no disk behind it); None if not found.
    """
    wanted = "%d:%d" % (os.major(dev), os.minor(dev))
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return None


#: openat2 errors that mean "no such file here" to a client.
_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR, errno.EXDEV, errno.ELOOP, errno.ENAMETOOLONG,
              errno.ENXIO, errno.EINVAL)
_FORBIDDEN = (errno.EACCES, errno.EPERM)


def _type_and_encoding(res, name):
    """
    C{static.getTypeAndEncoding(name, ...)} over C{res}'s tables, without the
    C{FilePath} it builds for each call (a tenth of a small file's request): the same
    answer, as both look only at the name's last two extensions.
    """
    rest, ext = os.path.splitext(name)
    ext = ext.lower()
    encodings = res.contentEncodings
    if ext in encodings:
        encoding = encodings[ext]
        ext = os.path.splitext(rest)[1].lower()
    else:
        encoding = None
    return res.contentTypes.get(ext, res.defaultType), encoding


class _Ranges:
    """
    static.File's range logic (parsing, Content-Range, multipart framing), reused as
    is over a size known from fstat: the same answers byte for byte.
    """

    _parseRangeHeader = static.File._parseRangeHeader
    _rangeToOffsetAndSize = static.File._rangeToOffsetAndSize
    _contentRange = static.File._contentRange
    _doSingleRangeRequest = static.File._doSingleRangeRequest
    _doMultipleRangeRequest = static.File._doMultipleRangeRequest
    _setContentHeaders = static.File._setContentHeaders

    def __init__(self, size, type, encoding):
        self.size = size
        self.type = type
        self.encoding = encoding

    def getFileSize(self):
        return self.size

    def _rangeToOffsetAndSize(self, start, end):
        """
        static.File's, except for a suffix range longer than the file: RFC 9110
        14.1.2 says it selects the whole representation (static.File computes a
        negative offset there).
        """
        if start is None and end is not None and end > self.size:
            start, end = 0, self.size - 1
            if self.size == 0:
                return 0, 0
        return static.File._rangeToOffsetAndSize(self, start, end)

    def parts(self, request):
        """
        Set the status and content headers; return the body as C{[(prefix, offset,
        size)]}: C{prefix} bytes, then C{size} bytes of the file from C{offset}.
        """
        byte_range = request.getHeader(b"range")
        if byte_range is not None:
            try:
                ranges = self._parseRangeHeader(byte_range)
            except ValueError:
                log.msg("Ignoring malformed Range header %r" % (byte_range.decode(),))
            else:
                if len(ranges) == 1:
                    offset, size = self._doSingleRangeRequest(request, ranges[0])
                    self._setContentHeaders(request, size)
                    return [(b"", offset, size)]
                info = self._doMultipleRangeRequest(request, ranges)
                return [(prefix, offset, size) for prefix, offset, size in info]
        self._setContentHeaders(request)
        request.setResponseCode(http.OK)
        return [(b"", 0, self.size)]


class _Lister(static.DirectoryLister):
    """static.DirectoryLister over entries stat'ed with ring ops (no blocking isdir)."""

    def __init__(self, path, names, stats, **kw):
        static.DirectoryLister.__init__(self, path, names, **kw)
        self._stats = stats

    def _getFilesAndDirectories(self, directory):
        files, dirs = [], []
        for name in directory:
            st = self._stats.get(name)
            if st is None:
                continue
            if isinstance(name, bytes):
                name = name.decode("utf8", "replace")
            url, text = quote(name, "/"), static.escape(name)
            if _stat.S_ISDIR(st.st_mode):
                dirs.append({"text": text + "/", "href": url + "/", "size": "",
                             "type": "[Directory]", "encoding": ""})
            else:
                mimetype, encoding = static.getTypeAndEncoding(
                    name, self.contentTypes, self.contentEncodings, self.defaultType)
                files.append({"text": text, "href": url, "type": "[%s]" % mimetype,
                              "encoding": encoding and "[%s]" % encoding or "",
                              "size": static.formatFileSize(st.st_size)})
        return dirs, files



async def _fill(ops, fd, buf, offset, got):
    """
    Fill C{buf} with the bytes of C{fd} from C{offset}, its first C{got} already in
    it; EIO if the file ends first (it shrank while being served).
    """
    size = len(buf)
    while got < size:
        n = await ops.read(fd, memoryview(buf)[got:], offset + got)
        if n == 0:
            raise OSError(errno.EIO, "the file shrank while being served")
        got += n


class Directory(resource.Resource):
    """
    Serves the tree under C{path} (see the module docstring).

    @ivar path: the root directory (str).
    @ivar contentTypes: extension -> MIME type (static.File's table by default).
    @ivar contentEncodings: extension -> Content-Encoding (static.File's).
    @ivar indexNames: names tried, in order, for a directory URL.
    @ivar defaultType: the type of a file whose extension is unknown.
    @ivar listing: whether a directory without an index file is listed (else 403).
    @ivar allow_symlink_escape: whether symlinks may lead out of C{path}.
    @ivar chunk_size: bytes per read op while streaming.
    @ivar root_check_interval: seconds during which the root's fd is trusted without
        stat'ing its path again (0: a stat beside every request's open).
    @ivar nowait: whether a file under a local root is first opened and read by
        system calls that the kernel fails rather than let wait for a disk
        (L{_serve_now}); False: every open and read is an op.
    @ivar splice: whether bodies of at least C{splice_min} bytes go file -> pipe ->
        socket where that is possible (L{txuring.websplice}: UringReactor, no TLS).
    @ivar splice_min: the smallest body spliced.
    """

    isLeaf = True
    contentTypes = static.File.contentTypes
    contentEncodings = static.File.contentEncodings
    indexNames = ["index", "index.html", "index.htm"]
    childNotFound = resource._UnsafeNoResource("File not found.")
    forbidden = resource._UnsafeForbiddenResource()

    def __init__(self, path, defaultType="text/html", *, listing=False,
                 allow_symlink_escape=False, index_names=None, filesystem=None,
                 chunk_size=CHUNK, root_check_interval=1.0, nowait=True, splice=True,
                 splice_min=SPLICE_MIN):
        resource.Resource.__init__(self)
        self.path = os.path.abspath(os.fsdecode(txfs._path(path)))
        self.defaultType = defaultType
        self.listing = listing
        self.allow_symlink_escape = allow_symlink_escape
        if index_names is not None:
            self.indexNames = list(index_names)
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= 1 << 24:
            raise ValueError("chunk_size must be an int from 1 to 16 MiB")
        self.chunk_size = chunk_size
        if isinstance(root_check_interval, bool) or \
                not isinstance(root_check_interval, (int, float)) or \
                not 0 <= root_check_interval < float("inf"):
            raise ValueError("root_check_interval must be a finite number of seconds >= 0")
        self.root_check_interval = root_check_interval
        self.nowait = bool(nowait)
        self.splice = bool(splice)
        if not isinstance(splice_min, int) or splice_min < 0:
            raise ValueError("splice_min must be an int >= 0")
        self.splice_min = splice_min
        self._filesystem = filesystem
        self._root = None  # the _Root of self.path, opened at the first request

    def __repr__(self):
        return "<txuring.web.Directory %r>" % (self.path,)

    def close(self):
        """
        Close the root directory's fd (once the requests using it are done); the next
        request opens it again.
        """
        self._retire(self._root)

    def _retire(self, root):
        """C{root} is no longer the root: new requests open C{self.path} again."""
        if root is None:
            return
        if self._root is root:
            self._root = None
        root.retire()

    def _resolve_flags(self):
        if self.allow_symlink_escape:
            return 0
        return RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS

    def getChild(self, path, request):
        return self  # isLeaf: never called by Twisted; kept for direct callers

    def render_GET(self, request):
        if self.nowait and self._serve_now(request):
            return server.NOT_DONE_YET
        self._watch(request, Deferred.fromCoroutine(
            self._serve(request, list(request.postpath))))
        return server.NOT_DONE_YET

    def _watch(self, request, d):
        """
        Answer C{request} with a 500 if C{d} (what serves it) fails before it has
        begun; cancel C{d} if the client leaves before it has ended (an open or a read
        in flight).
        """
        finished = []

        def failed(failure):
            if failure.check(CancelledError) or finished:
                return None
            log.err(failure, "txuring.web: serving %r" % (request.uri,))
            if not request.startedWriting:
                request.setResponseCode(http.INTERNAL_SERVER_ERROR)
                request.write(b"Internal server error")
            if not finished:
                request.finish()

        d.addErrback(failed)
        finished_d = request.notifyFinish()
        finished_d.addBoth(finished.append)
        finished_d.addErrback(lambda _: d.cancel())

    render_HEAD = render_GET

    # ---- the coroutine of one request ----

    def _fs(self):
        if self._filesystem is None:
            self._filesystem = txfs.filesystem()
        return self._filesystem

    async def _current_root(self, ops):
        """
        The L{_Root} of C{self.path} (acquired: the caller releases it), opened at the
        first request and after the path was found to name another directory; None
        when C{self.path} names no directory.
        """
        root = self._root
        if root is None:
            try:
                fd = await ops.open(self.path, os.O_PATH | os.O_DIRECTORY)
            except OSError as e:
                if e.errno in _NOT_FOUND:
                    return None
                raise
            try:
                st = await ops.fstat(fd)
            except BaseException:
                os.close(fd)  # (an O_PATH fd: its close never blocks)
                raise
            if self._root is None:
                self._root = _Root(fd, st)
            else:
                os.close(fd)  # another request opened it meanwhile
            root = self._root
        return root.acquire()

    async def _open_in_root(self, ops, rel):
        """
        C{(root, fd, stat)} of C{rel} under the root, or C{(root, None, the error page)}
        (root None when the root itself is missing); the caller releases C{root}.

        The root's fd is cached, but a deploy may swap the directory (rename the old
        tree away and a new one in, or repoint a symlink), and static.File serves what
        the path names now: so the root's path is stat'ed alongside an open (one more
        op, in parallel) once C{root_check_interval} seconds have passed since the
        last check (as nginx's C{open_file_cache_valid}: a stat punted to a kernel
        worker on every request costs more than the rest of the file work), and
        when it names another directory than the cached fd's, the fd is replaced and
        the open made again.
        """
        for _ in range(3):
            root = await self._current_root(ops)
            if root is None:
                return None, None, self.childNotFound, None
            if time.monotonic() - root.checked < self.root_check_interval:
                try:
                    fd, st, head = await self._open(ops, root.fd, rel, local=root.local)
                except BaseException:
                    root.release()
                    raise
                return root, fd, st, head
            checked = time.monotonic()
            check = ops.stat(self.path)
            try:
                fd, st, head = await self._open(ops, root.fd, rel, local=root.local)
            except BaseException:
                check.addErrback(lambda _: None)
                check.cancel()
                root.release()
                raise
            try:
                now = await check
            except BaseException as e:
                if fd is not None:
                    await txfs._close(ops, fd)
                root.release()
                if isinstance(e, OSError) and e.errno in _NOT_FOUND:
                    self._retire(root)
                    return None, None, self.childNotFound, None
                raise
            if (now.st_dev, now.st_ino) == root.key:
                root.checked = checked
                return root, fd, st, head
            if fd is not None:
                await txfs._close(ops, fd)
            root.release()
            self._retire(root)
        raise OSError(errno.EAGAIN, "the root directory %r kept being replaced while a "
                      "request was served" % (self.path,))

    @staticmethod
    def _names(segments):
        """
        The path's names, from the request's C{postpath}: a list of str, or None
        when a segment can name nothing (not UTF-8; empty, C{.} or C{..}; a NUL or a
        slash in it). A trailing slash (a last empty segment) is left out.
        """
        names = []
        last = len(segments) - 1
        for i, seg in enumerate(segments):
            try:
                name = seg.decode("utf-8")
            except UnicodeDecodeError:
                return None
            if name == "" and i == last:
                break  # a trailing slash: the directory itself
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                return None
            names.append(name)
        return names

    # ---- the general path: a coroutine, every open and read an op ----

    async def _serve(self, request, segments):
        names = self._names(segments)
        if names is None:
            return self._error(request, self.childNotFound)
        # (mounted with putChild, the resource's own URL without its slash comes with
        # no segment at all; at a site's root "/" is one empty segment)
        trailing_slash = bool(segments) and segments[-1] == b""
        ops = self._fs().ops()
        rel = "/".join(names) or "."
        root, fd, st, head = await self._open_in_root(ops, rel)
        try:
            if fd is None:
                return self._error(request, st)
            if _stat.S_ISDIR(st.st_mode):
                if not trailing_slash:
                    # As static.File: relative links in the page need the slash.
                    request.write(redirectTo(static._addSlash(request), request))
                    request.finish()
                    return
                fd, st, head, rel = await self._index(ops, root.fd, rel, fd, request,
                                                      root.local)
                if fd is None:
                    return
            elif trailing_slash:
                # A file is no directory: "f.txt/" is not found (static.File: 404,
                # open("f.txt/"): ENOTDIR).
                return self._error(request, self.childNotFound)
            if not _stat.S_ISREG(st.st_mode):
                return self._error(request, self.childNotFound)
            fd = await self._send(ops, request, fd, st, head, os.path.basename(rel),
                                  self.nowait and root.local)
        finally:
            if fd is not None:
                # Not waited for: the response does not depend on it.
                ops.close(fd).addErrback(log.err, "txuring.web: closing a file")
            if root is not None:
                root.release()

    async def _open(self, ops, root, rel, flags=_OPEN_FLAGS, local=False):
        """
        (fd, stat, head), or (None, the error resource, None) for the client. C{head}
        is the file's first L{CHUNK} bytes (None for what is not a regular file).

        Two trips through the reactor for a small file, and its close not waited for:
          - under a root on a local filesystem (C{local}), the open stays on that
            filesystem (C{RESOLVE_NO_XDEV}), so the fstat of the new fd reads only
            the in-memory inode and is made here, and the read follows: neither op
            is punted to a kernel worker when the file is in the page cache;
          - otherwise (or where the path crosses a mount point: EXDEV) the fstat and
            the read go in together (L{txuring.fs.RingOps.fstat_read}), the statx
            run by a kernel worker, for a regular file only (a stat of the path
            goes with the open).
        """
        if local and not flags & os.O_PATH and ops.kind == "io_uring":
            try:
                fd = await ops.open(rel, flags, 0, dir_fd=root,
                                    resolve=self._resolve_flags() | RESOLVE_NO_XDEV)
            except OSError as e:
                if e.errno != errno.EXDEV:  # (EXDEV: another mount, or outside the root)
                    return self._open_failed(e)
            else:
                return await self._stat_here_and_read(ops, fd)
        # The head read goes with the fstat, before the fd's type is known: so a
        # stat of the path, alongside the open (same trip), keeps it to regular
        # files. A FIFO's data, read, would be gone from its real reader. (A FIFO
        # swapped in between that stat and the open is still read: the fstat decides
        # what is served, never that stat.)
        kind = None if flags & os.O_PATH else ops.stat(rel, True, root)
        try:
            fd = await ops.open(rel, flags, 0, resolve=self._resolve_flags(), dir_fd=root)
        except BaseException as e:
            if kind is not None:
                kind.addErrback(lambda _: None)
                kind.cancel()
            if isinstance(e, OSError):
                return self._open_failed(e)
            raise
        try:
            regular = False
            if kind is not None:
                try:
                    regular = _stat.S_ISREG((await kind).st_mode)
                except OSError:
                    pass
            if not regular:  # (an O_PATH fd cannot be read)
                st, n = await ops.fstat(fd), None
            else:
                buf = bytearray(self.chunk_size)
                st, n = await ops.fstat_read(fd, buf)
        except BaseException:
            await txfs._close(ops, fd)
            raise
        if n is None or not _stat.S_ISREG(st.st_mode):
            return fd, st, None
        del buf[n:]
        return fd, st, buf

    def _open_failed(self, e):
        """The answer to an open that failed with C{e}: a 404, a 403, or C{e} raised."""
        if e.errno in _NOT_FOUND:
            return None, self.childNotFound, None
        if e.errno in _FORBIDDEN:
            return None, self.forbidden, None
        raise e

    async def _stat_here_and_read(self, ops, fd):
        """(fd, stat, head) of an fd on a local filesystem: fstat here, then one read."""
        try:
            st = txfs._stat_of(os.fstat(fd))
            if not _stat.S_ISREG(st.st_mode):
                return fd, st, None
            buf = bytearray(min(st.st_size, self.chunk_size))
            n = await ops.read(fd, buf, 0) if buf else 0
        except BaseException:
            await txfs._close(ops, fd)
            raise
        del buf[n:]
        return fd, st, buf

    async def _index(self, ops, root, rel, dir_fd, request, local=False):
        """The index file of directory C{rel} (fd, stat, path), or a listing / 403."""
        for name in self.indexNames:
            fd, st, head = await self._open(ops, root, os.path.join(rel, name), local=local)
            if fd is not None:
                await txfs._close(ops, dir_fd)
                return fd, st, head, os.path.join(rel, name)
        if not self.listing:
            await txfs._close(ops, dir_fd)
            self._error(request, self.forbidden)
            return None, None, None, None
        try:
            names = sorted(await ops.listdir(dir_fd))
            stats = {}
            for name in names:
                st = await self._listed_stat(ops, root, rel, dir_fd, name)
                if st is not None:
                    stats[name] = st
        finally:
            await txfs._close(ops, dir_fd)
        lister = _Lister(os.path.join(self.path, rel), names, stats,
                         contentTypes=self.contentTypes,
                         contentEncodings=self.contentEncodings,
                         defaultType=self.defaultType)
        body = lister.render(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()
        return None, None, None, None

    async def _listed_stat(self, ops, root, rel, dir_fd, name):
        """
        The stat a listing shows for entry C{name} of directory C{rel}, or None to
        leave the entry out. A symlink is followed only as a request would be: beneath
        the root unless symlinks may escape, so that a listing never shows the type
        and size of what lies outside (such a link is a 404 anyway).
        """
        try:
            st = await ops.stat(name, False, dir_fd)
        except OSError:
            return None
        if not _stat.S_ISLNK(st.st_mode):
            return st
        if self.allow_symlink_escape:
            try:
                return await ops.stat(name, True, dir_fd)
            except OSError:
                return None
        fd, st, _ = await self._open(ops, root, os.path.join(rel, name), os.O_PATH)
        if fd is None:
            return None
        await txfs._close(ops, fd)
        return st

    def _head(self, request, st, name):
        """
        Set the status and headers of the response serving file C{name} of stat
        C{st}; return its body's parts (see L{_Ranges.parts}), or None when the
        response is complete without a body (finished here: a 304, a HEAD, nothing
        to send).
        """
        type_, encoding = _type_and_encoding(self, name)
        request.setHeader(b"accept-ranges", b"bytes")
        if request.setLastModified(st.st_mtime) is http.CACHED:
            request.finish()
            return None
        ranges = _Ranges(st.st_size, type_, encoding)
        if request.method == b"HEAD":
            ranges._setContentHeaders(request)
            request.finish()
            return None
        parts = ranges.parts(request)
        if not parts or all(size == 0 and not prefix for prefix, _, size in parts):
            request.finish()
            return None
        return parts

    async def _send(self, ops, request, fd, st, head, name, nowait=False):
        """
        Headers, then the body: from C{head} (the file's first bytes, read with its
        stat) when it holds it, else by reads, or by a L{FileProducer}, which takes
        over C{fd}. Returns the fd if it is still the caller's to close, else None.
        """
        parts = self._head(request, st, name)
        if parts is None:
            return fd
        if len(parts) == 1 and parts[0][2] <= self.chunk_size:
            # A small body: one read (or a few), one write, no producer.
            _, offset, size = parts[0]
            if head is not None and offset + size <= len(head):
                request.write(bytes(memoryview(head)[offset:offset + size]))
                request.finish()
                return fd
            buf = bytearray(size)
            await _fill(ops, fd, buf, offset, 0)
            request.write(bytes(buf))
            request.finish()
            return fd
        self._stream(ops, fd, request, parts, nowait)
        return None

    def _stream(self, ops, fd, request, parts, nowait):
        """
        Stream the body's C{parts} of C{fd} (which this takes over): spliced into the
        socket where L{txuring.websplice} can (C{splice}, and at least C{splice_min}
        bytes of the file), else by a L{FileProducer}.
        """
        if self.splice and sum(size for _, _, size in parts) >= self.splice_min:
            from txuring import websplice

            return websplice.start_body(ops, fd, request, parts, self.chunk_size, nowait)
        producer = FileProducer(ops, fd, request, parts, self.chunk_size, nowait=nowait)
        producer.start()
        return producer

    # ---- the fast path: what the kernel can do at once, done here ----

    def _serve_now(self, request, checked=False):
        """
        Serve C{request} without an op where the kernel can do it all at once:
        True if served (or handed to a L{FileProducer}), False to take the general
        path (nothing sent, nothing left open).

        io_uring itself first tries each op inline, with flags that make the kernel
        fail with EAGAIN rather than wait (LOOKUP_CACHED for an open, 5.12;
        IOCB_NOWAIT for a read), and hands the op to a kernel worker only then.
        This is that same attempt, made with the system calls that take the same
        flags -- openat2(RESOLVE_CACHED) (5.12) and preadv2(RWF_NOWAIT) (4.14) --
        minus the submission, the completion and a trip through the reactor each:
        the reactor still never waits for a disk. It is made for a plain file URL
        under a root on a local filesystem (the open kept there by RESOLVE_NO_XDEV,
        so that the fstat reads only the in-memory inode; once C{root_check_interval}
        seconds have passed, the request waits for one check of the root's path,
        L{_check_root}, with the others that come meanwhile); what the kernel cannot
        do at once (a name not
        in the dentry cache, pages not in the page cache), a directory, an error
        other than a plain 404, goes the general way.
        """
        root = self._root
        if root is None or not root.now:
            return False
        if not checked and time.monotonic() - root.checked >= self.root_check_interval:
            if not self.root_check_interval:
                return False  # (a check beside every open: the general path)
            # Served once the root's path is found to name this root still (else by
            # the general path, which opens the new one).
            waiter = Deferred()
            root.waiters.append(waiter)
            if len(root.waiters) == 1:
                self._check_root(root)
            waiter.addCallback(self._after_check, request)
            self._watch(request, waiter)
            return True
        segments = request.postpath
        if not segments or segments[-1] == b"":
            return False  # a directory
        names = self._names(segments)
        if not names:
            return False
        fd = _open_now(root.fd, "/".join(names).encode(), _OPEN_FLAGS,
                                 self._resolve_flags() | RESOLVE_NO_XDEV | RESOLVE_CACHED)
        if fd < 0:
            if -fd in (errno.ENOENT, errno.ENOTDIR):
                self._error(request, self.childNotFound)
                return True
            return False  # (EAGAIN: not cached; EXDEV: another mount, or outside...)
        # Its close is close(2) here, as an op would do nothing else: a file's last
        # reference, dropped by close(2) or by an inline IORING_OP_CLOSE, is released
        # (fput's task work) in the dropping thread either way, this one.
        try:
            st = os.fstat(fd)
            if not _stat.S_ISREG(st.st_mode):
                if _stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    return False  # (a redirect to the URL with a slash)
                self._error(request, self.childNotFound)
                os.close(fd)
                return True
            parts = self._head(request, st, names[-1])
            if parts is None:
                os.close(fd)
                return True
            if len(parts) != 1 or parts[0][2] > self.chunk_size:
                ops = self._fs().ops()  # (before the fd is handed over: it may raise)
                fd, body = -1, fd
                self._stream(ops, body, request, parts, True)
                return True
            _, offset, size = parts[0]
            buf = bytearray(size)
            try:
                n = _preadv(fd, [buf], offset, _RWF_NOWAIT)
            except OSError:
                n = 0  # (EAGAIN, or no RWF_NOWAIT here: the general read decides)
            if n == size:
                request.write(bytes(buf))
                request.finish()
                os.close(fd)
                return True
            fd, rest = -1, self._rest(request, fd, buf, offset, n)
            self._watch(request, Deferred.fromCoroutine(rest))
            return True
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise

    def _check_root(self, root):
        """
        Stat the root's path (an op); retire C{root} if the path names another
        directory now, or nothing, or cannot be stat'ed, else mark it checked; then
        fire C{root.waiters}, the requests that came meanwhile: one stat for all of
        them, where the general path makes one beside each request's open.
        """
        started = time.monotonic()

        def checked(st):
            if (st.st_dev, st.st_ino) == root.key:
                root.checked = started
            else:
                self._retire(root)

        def failed(failure):
            if not failure.check(OSError) or failure.value.errno not in _NOT_FOUND:
                log.err(failure, "txuring.web: checking the root %r" % (self.path,))
            self._retire(root)

        def wake(_):
            waiters, root.waiters = root.waiters, []
            for waiter in waiters:
                waiter.callback(None)

        try:
            d = self._fs().ops().stat(self.path)
        except BaseException:
            wake(None)  # (they take the general path, which raises the same)
            raise
        d.addCallbacks(checked, failed).addBoth(wake)

    def _after_check(self, _, request):
        """Serve C{request}, which waited for a check of the root."""
        if request.finished or request._disconnected:
            return None
        if self._serve_now(request, checked=True):
            return None
        return Deferred.fromCoroutine(self._serve(request, list(request.postpath)))

    async def _rest(self, request, fd, buf, offset, got):
        """The small body of L{_serve_now} whose first C{got} bytes are in C{buf}."""
        ops = self._fs().ops()
        try:
            await _fill(ops, fd, buf, offset, got)
            request.write(bytes(buf))
            request.finish()
        finally:
            ops.close(fd).addErrback(log.err, "txuring.web: closing a file")

    def _error(self, request, page):
        body = page.render(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()


def _open_now_works(dir_fd):
    """
    Whether openat2(RESOLVE_CACHED) works under C{dir_fd}: "." beneath a directory
    fd is always in the dentry cache, so anything but an fd means the kernel or a
    seccomp profile refuses it (ENOSYS before 5.6, EINVAL before 5.12, EPERM...).
    """
    fd = _open_now(dir_fd, b".", os.O_PATH | os.O_DIRECTORY,
                             RESOLVE_BENEATH | RESOLVE_CACHED)
    if fd < 0:
        log.msg("txuring.web: openat2(RESOLVE_CACHED) fails here (%s); every open is "
                "an op" % (os.strerror(-fd),))
        return False
    os.close(fd)  # (an O_PATH fd: its close never blocks)
    return True


class _Root:
    """
    The root directory's O_PATH fd, shared by the requests under way. Once replaced
    (the path names another directory now) it is closed when the last of them is
    done: an open in flight resolves its path under the fd's number, which must not
    name another file meanwhile.

    @ivar fd: the O_PATH fd.
    @ivar key: C{(st_dev, st_ino)} of the directory it is.
    @ivar checked: C{time.monotonic()} of the last time the root's path was found
        to name this directory.
    @ivar local: whether it is on one of the L{LOCAL_FILESYSTEMS}.
    @ivar waiters: Deferreds of the requests waiting for the check of the root's
        path under way (L{Directory._check_root}); empty when none is.
    @ivar now: whether files under it may be opened and read by L{Directory._serve_now}:
        it is local, and openat2 with RESOLVE_CACHED works here (5.12; and no seccomp
        profile refuses openat2).
    """

    def __init__(self, fd, st):
        self.fd = fd
        self.key = (st.st_dev, st.st_ino)
        self.checked = time.monotonic()
        self.local = filesystem_type(st.st_dev) in LOCAL_FILESYSTEMS
        self.now = self.local and _open_now_works(fd)
        self.waiters = []
        self._users = 0
        self._retired = False

    def acquire(self):
        self._users += 1
        return self

    def release(self):
        self._users -= 1
        self._close_if_done()

    def retire(self):
        self._retired = True
        self._close_if_done()

    def _close_if_done(self):
        if self._retired and self._users == 0 and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # (an O_PATH fd: its close never blocks)


@implementer(IPushProducer)
class FileProducer:
    """
    Streams parts of an open file to C{request} (any IConsumer with C{finish}): a
    push producer that writes one chunk at a time while its consumer has not paused
    it (bounded memory, and no more than a chunk or two of work per reactor pass
    and connection). It owns C{fd} and closes it when done, stopped, or failed.

    Each chunk is first read with preadv2(RWF_NOWAIT) (4.14; with C{nowait}: for a
    file on a local filesystem), which the kernel fails with EAGAIN rather than wait
    for the disk -- the attempt io_uring makes inline before it punts a read to a
    worker, without the op's trip through the reactor; where it fails, the chunk is
    a read op, and the writing goes on once it completes.

    @ivar parts: C{[(prefix, offset, size)]}: write C{prefix}, then C{size} bytes of
        the file from C{offset}.
    @ivar bytes_read: file bytes read so far (for monitoring and tests).
    @ivar done: a Deferred that fires (with None) once the producer has ended and
        its fd is closed, whichever way it ended.
    """

    def __init__(self, ops, fd, request, parts, chunk_size=CHUNK, nowait=False,
                 reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._ops = ops
        self._fd = fd
        self._request = request
        self._parts = parts
        self._chunk_size = chunk_size
        self._nowait = nowait  # try preadv2(RWF_NOWAIT) first
        self._buf = None  # the chunk buffer (a memoryview of a bytearray), made at start
        self._part = 0  # the index of the next part to begin
        self._offset = 0  # the file offset of the next read in the current part
        self._end = 0  # the end of the current part
        self._paused = None  # True while the consumer has paused it
        self._reading = None  # the Deferred of a read op in flight
        self._pumping = False  # inside _pump (a write may pause, resume or stop it)
        self._later = None  # the DelayedCall of a resumed pump (see resumeProducing)
        self._stopped = False
        self.bytes_read = 0
        self.done = None

    def start(self):
        self.done = Deferred()
        self._buf = memoryview(bytearray(self._chunk_size))
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._pump()
        return self.done

    def _pump(self):
        """Write chunks until paused, stopped, waiting for a read op, or done."""
        if self._pumping:
            return  # (the loop below goes on)
        self._pumping = True
        try:
            while (self._paused is None and self._reading is None
                   and not self._stopped and self._fd is not None):
                self._step()
        except BaseException:
            self._failed(Failure())
        finally:
            self._pumping = False

    def _step(self):
        """Begin the next part, or move the next chunk."""
        if self._offset >= self._end:
            if self._part == len(self._parts):
                return self._finish()
            prefix, offset, size = self._parts[self._part]
            self._part += 1
            self._offset, self._end = offset, offset + size
            if prefix:
                self._request.write(prefix)
            return
        self._chunk()

    def _chunk(self):
        """Write the next chunk of the current part, or start its read op."""
        view = self._buf[:min(self._chunk_size, self._end - self._offset)]
        if self._nowait:
            try:
                return self._got(_preadv(self._fd, [view], self._offset, _RWF_NOWAIT))
            except BlockingIOError:
                pass  # not all in the page cache: a read op
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP:
                    raise
                self._nowait = False  # (a filesystem without RWF_NOWAIT reads)
        d = self._reading = self._ops.read(self._fd, view, self._offset)
        d.addCallbacks(self._readDone, self._readFailed)

    def _got(self, n):
        """C{n} bytes were read into the buffer: write them."""
        if n == 0:
            raise OSError(errno.EIO, "the file shrank while being served")
        self._offset += n
        self.bytes_read += n
        self._request.write(bytes(self._buf[:n]))

    def _readDone(self, n):
        self._reading = None
        if self._stopped:
            return self._close()
        try:
            self._got(n)
        except BaseException:
            return self._failed(Failure())
        self._pump()

    def _readFailed(self, failure):
        self._reading = None
        if self._stopped:
            return self._close()
        self._failed(failure)

    def _finish(self):
        self._close()
        self._request.unregisterProducer()
        self._request.finish()

    def _close(self):
        """Close the fd (once: the op is not waited for); then C{done} fires."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._buf = None
        closed = txfs._close(self._ops, fd)
        Deferred.fromCoroutine(closed).addBoth(lambda _: self.done.callback(None))

    def _failed(self, failure):
        log.err(failure, "txuring.web: streaming a file")
        if not self._stopped:
            self._stopped = True
            self._request.unregisterProducer()
            # The length promised cannot be kept: close the connection. Through the
            # request (HTTPChannel.loseConnection), which unregisters the channel from
            # its transport first: the transport's own loseConnection waits for its
            # registered producer, and a transport that had paused the channel resumed
            # it when its buffer drained instead of closing (the connection stayed open
            # for good).
            lose = getattr(self._request, "loseConnection", None)
            if lose is None:
                lose = getattr(getattr(getattr(self._request, "channel", None),
                                       "transport", None), "loseConnection", None)
            if lose is not None:
                lose()
        if self._reading is None:
            self._close()

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        """
        Go on writing -- from the reactor's next turn, not from here: a transport
        resumes its producer when its buffer drains, which a send(2) made at the end
        of a loop pass may do at once, and again after the next chunk, within the
        same pass (UringReactor's completion transports flush up to 8 rounds in a
        pass). Producing from there, a few connections downloading big files took
        all of every pass, and a tiny request waited milliseconds for its turn; from
        the next turn, a connection writes at most a chunk or two per pass.
        """
        self._paused = None
        if self._later is None and self._reading is None and not self._stopped:
            self._later = self._reactor.callLater(0, self._resumed)

    def _resumed(self):
        self._later = None
        if self._reading is None and not self._stopped:
            self._pump()

    def stopProducing(self):
        """
        The client went away: cancel the read in flight (the fd is closed once it has
        ended: the kernel may be writing into the buffer until then), or close the fd.
        """
        if self._stopped:
            return
        self._stopped = True
        self._paused = None
        if self._later is not None:
            later, self._later = self._later, None
            later.cancel()
        if self._reading is not None:
            self._reading.cancel()
        else:
            self._close()
