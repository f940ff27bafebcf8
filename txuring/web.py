"""
twisted.web resources on L{txuring.fs}: L{Directory} serves a directory tree as
C{twisted.web.static.File} does, without ever blocking the reactor on the disk.

Why: C{static.File} stats, opens and reads every chunk of every response with blocking
calls in the reactor thread, so one slow disk (or a cold page cache) stalls every
connection of the process. Here the open, the fstat and every chunk read are ring ops
(or thread-pool calls where io_uring is unusable; see L{txuring.fs}).

What matches static.File (tested side by side in tests/fs_suite/test_web.py): content
types and encodings (its tables and C{getTypeAndEncoding}), C{Accept-Ranges}, single
and multiple byte ranges (its own range parsing and multipart framing, reused),
C{If-Modified-Since} / 304 and C{Last-Modified}, HEAD, index files, the redirect of a
directory URL without its trailing slash, 404 and 403 pages.

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
  - No C{processors} (.rpy scripts) and no C{ignoredExts}.

Streaming: L{FileProducer} is a push producer: one chunk read at a time, written, the
next read started unless the transport paused it (bounded memory whatever the file's
size). When the client goes away mid-response, the read in flight is cancelled and
the fd closed.
"""

import errno
import os
import stat as _stat
from urllib.parse import quote

from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python import log
from twisted.web import http, resource, server, static
from twisted.web.util import redirectTo

from txuring import fs as txfs
from txuring.opcode import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS

#: Bytes per read op while streaming a body.
CHUNK = 64 * 1024

#: openat2 errors that mean "no such file here" to a client.
_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR, errno.EXDEV, errno.ELOOP, errno.ENAMETOOLONG,
              errno.ENXIO, errno.EINVAL)
_FORBIDDEN = (errno.EACCES, errno.EPERM)


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
    """

    isLeaf = True
    contentTypes = static.File.contentTypes
    contentEncodings = static.File.contentEncodings
    indexNames = ["index", "index.html", "index.htm"]
    childNotFound = resource._UnsafeNoResource("File not found.")
    forbidden = resource._UnsafeForbiddenResource()

    def __init__(self, path, defaultType="text/html", *, listing=False,
                 allow_symlink_escape=False, index_names=None, filesystem=None,
                 chunk_size=CHUNK):
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
        self._filesystem = filesystem
        self._root_fd = None  # an O_PATH fd of the root, opened at the first request

    def __repr__(self):
        return "<txuring.web.Directory %r>" % (self.path,)

    def close(self):
        """Close the root directory's fd (reopened by the next request, if any)."""
        fd, self._root_fd = self._root_fd, None
        if fd is not None:
            os.close(fd)

    def _resolve_flags(self):
        if self.allow_symlink_escape:
            return 0
        return RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS

    def getChild(self, path, request):
        return self  # isLeaf: never called by Twisted; kept for direct callers

    def render_GET(self, request):
        segments = list(request.postpath)
        d = Deferred.fromCoroutine(self._serve(request, segments))
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
        # Cancel what is in flight (an open, a stat) if the client leaves before the
        # producer takes over.
        finished_d = request.notifyFinish()
        finished_d.addBoth(finished.append)
        finished_d.addErrback(lambda _: d.cancel())
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    # ---- the coroutine of one request ----

    def _fs(self):
        if self._filesystem is None:
            self._filesystem = txfs.filesystem()
        return self._filesystem

    async def _root(self, ops):
        if self._root_fd is None:
            fd = await ops.open(self.path, os.O_PATH | os.O_DIRECTORY)
            if self._root_fd is None:
                self._root_fd = fd
            else:
                os.close(fd)  # another request opened it meanwhile
        return self._root_fd

    async def _serve(self, request, segments):
        names = []
        for i, seg in enumerate(segments):
            try:
                name = seg.decode("utf-8")
            except UnicodeDecodeError:
                return self._error(request, self.childNotFound)
            if name == "" and i == len(segments) - 1:
                break  # a trailing slash: the directory itself
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                return self._error(request, self.childNotFound)
            names.append(name)
        trailing_slash = not segments or segments[-1] == b""
        ops = self._fs().ops()
        root = await self._root(ops)
        rel = "/".join(names) or "."
        fd, st = await self._open(ops, root, rel)
        if fd is None:
            return self._error(request, st)
        try:
            if _stat.S_ISDIR(st.st_mode):
                if names and not trailing_slash:
                    request.write(redirectTo(static._addSlash(request), request))
                    request.finish()
                    return
                fd, st, rel = await self._index(ops, root, rel, fd, request)
                if fd is None:
                    return
            if not _stat.S_ISREG(st.st_mode):
                return self._error(request, self.childNotFound)
            fd = await self._send(ops, request, fd, st, os.path.basename(rel))
        finally:
            if fd is not None:
                # Not waited for: the response does not depend on it.
                ops.close(fd).addErrback(log.err, "txuring.web: closing a file")

    async def _open(self, ops, root, rel, flags=os.O_RDONLY | os.O_NONBLOCK):
        """(fd, stat), or (None, the error resource) for the client."""
        try:
            fd = await ops.open(rel, flags, 0, resolve=self._resolve_flags(), dir_fd=root)
        except OSError as e:
            if e.errno in _NOT_FOUND:
                return None, self.childNotFound
            if e.errno in _FORBIDDEN:
                return None, self.forbidden
            raise
        try:
            return fd, await ops.fstat(fd)
        except BaseException:
            await txfs._close(ops, fd)
            raise

    async def _index(self, ops, root, rel, dir_fd, request):
        """The index file of directory C{rel} (fd, stat, path), or a listing / 403."""
        for name in self.indexNames:
            fd, st = await self._open(ops, root, os.path.join(rel, name))
            if fd is not None:
                await txfs._close(ops, dir_fd)
                return fd, st, os.path.join(rel, name)
        if not self.listing:
            await txfs._close(ops, dir_fd)
            self._error(request, self.forbidden)
            return None, None, None
        try:
            names = sorted(await ops.listdir(dir_fd))
            stats = {}
            for name in names:
                try:
                    stats[name] = await ops.stat(name, dir_fd=dir_fd)
                except OSError:
                    pass
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
        return None, None, None

    async def _send(self, ops, request, fd, st, name):
        """
        Headers, then the body by a L{FileProducer}, which takes over C{fd}.
        Returns the fd if it is still the caller's to close, else None.
        """
        type_, encoding = static.getTypeAndEncoding(
            name, self.contentTypes, self.contentEncodings, self.defaultType)
        request.setHeader(b"accept-ranges", b"bytes")
        if request.setLastModified(st.st_mtime) is http.CACHED:
            request.finish()
            return fd
        ranges = _Ranges(st.st_size, type_, encoding)
        if request.method == b"HEAD":
            ranges._setContentHeaders(request)
            request.finish()
            return fd
        parts = ranges.parts(request)
        if not parts or all(size == 0 and not prefix for prefix, _, size in parts):
            request.finish()
            return fd
        if len(parts) == 1 and parts[0][2] <= self.chunk_size:
            # A small body: one read (or a few), one write, no producer.
            _, offset, size = parts[0]
            buf = bytearray(size)
            got = 0
            while got < size:
                n = await ops.read(fd, memoryview(buf)[got:], offset + got)
                if n == 0:
                    raise OSError(errno.EIO, "the file shrank while being served")
                got += n
            request.write(bytes(buf))
            request.finish()
            return fd
        FileProducer(ops, fd, request, parts, self.chunk_size).start()
        return None

    def _error(self, request, page):
        body = page.render(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()


@implementer(IPushProducer)
class FileProducer:
    """
    Streams parts of an open file to C{request} (any IConsumer with C{finish}): a
    push producer reading one chunk at a time, pausing while the transport's buffer
    is full. It owns C{fd} and closes it when done, stopped, or failed.

    @ivar parts: C{[(prefix, offset, size)]}: write C{prefix}, then C{size} bytes of
        the file from C{offset}.
    """

    def __init__(self, ops, fd, request, parts, chunk_size=CHUNK):
        self._ops = ops
        self._fd = fd
        self._request = request
        self._parts = parts
        self._chunk_size = chunk_size
        self._paused = None  # a Deferred the loop waits on while paused
        self._reading = None  # the read in flight
        self._stopped = False
        self.bytes_read = 0  # file bytes read so far (for monitoring and tests)
        self.done = None  # the Deferred of the streaming loop, once started

    def start(self):
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.done = Deferred.fromCoroutine(self._stream())
        self.done.addErrback(self._failed)
        return self.done

    async def _stream(self):
        buf = bytearray(self._chunk_size)
        try:
            for prefix, offset, size in self._parts:
                if prefix:
                    await self._write(prefix)
                end = offset + size
                while offset < end and not self._stopped:
                    want = min(len(buf), end - offset)
                    self._reading = self._ops.read(self._fd, memoryview(buf)[:want], offset)
                    try:
                        n = await self._reading
                    finally:
                        self._reading = None
                    if n == 0:
                        raise OSError(errno.EIO, "the file shrank while being served")
                    offset += n
                    self.bytes_read += n
                    await self._write(bytes(buf[:n]))
                if self._stopped:
                    return
        finally:
            fd, self._fd = self._fd, None
            await txfs._close(self._ops, fd)
        if not self._stopped:
            self._request.unregisterProducer()
            self._request.finish()

    async def _write(self, data):
        while self._paused is not None and not self._stopped:
            await self._paused
        if not self._stopped:
            self._request.write(data)

    def _failed(self, failure):
        if failure.check(CancelledError) and self._stopped:
            return None
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

    def pauseProducing(self):
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self):
        """The client went away: cancel the read in flight; the loop closes the fd."""
        if self._stopped:
            return
        self._stopped = True
        self.resumeProducing()
        if self._reading is not None:
            self._reading.cancel()
