"""
Zero-copy file bodies for L{txuring.web}: file -> pipe -> socket, on UringReactor's
completion transports.

Why: L{txuring.web.FileProducer} copies every byte twice in the reactor's thread --
from the page cache into its buffer, and from the C{bytes} it writes into the
socket -- and once more making that C{bytes}. splice(2) moves page references
instead: from the file into a pipe, then from the pipe into the socket (loopback,
measured: about 2.5x the MB/s of read+send, a fifth of the CPU per MB).

How:
  - file -> pipe is an IORING_OP_SPLICE op (5.7): a splice from a file may wait for
    the disk, and has no non-blocking form, so it must not run in the reactor's
    thread (io_uring runs every splice op on a kernel worker). One chunk (the pipe's
    size, L{PIPE_SIZE}) per op.
  - pipe -> socket is splice(2) made here, with SPLICE_F_NONBLOCK on the socket's
    non-blocking fd: the pipe's pages are in memory, so nothing waits for a disk;
    when the socket's buffer is full (a short count, or EAGAIN), an
    IORING_OP_POLL_ADD (5.1) for POLLOUT says when to go on. The chunk is all in
    the socket before the next splice op starts: at most one chunk per connection
    per loop pass, and at most a pipe's worth of file data held per response.
  - The transport knows nothing of it, so the bytes must not overtake, nor be
    overtaken by, what it sends: the headers (and a multipart prefix) are written
    through the transport, and a chunk is spliced only once the transport has sent
    everything (no send in flight, nothing buffered; looked at on the next loop pass,
    then less and less often, down to every 50 ms for a client that reads nothing).
    Nothing else writes to the connection meanwhile: twisted.web writes the response
    of a pipelined request only once this one has finished, and the body has a
    Content-Length (no chunked framing to add).
  - Only where it is sound: a completion transport of UringReactor (its socket is
    the response's connection), no TLS (the bytes must be encrypted: the copy path),
    a Content-Length response. Elsewhere L{txuring.web.FileProducer} copies.
  - A client that goes away: the op in flight (a splice, or the poll, which holds
    the socket's file: its RST/FIN waits for the poll's end) is cancelled at once by
    C{stopProducing} (the request's notifyFinish errback); the pipe and the file are
    closed once it has ended. The socket is never used after the transport has
    begun to close it (its fd number may be another connection's by then): each
    splice into it checks first, in the reactor's thread.
"""

import errno
import fcntl
import os
import select

from twisted.internet.defer import Deferred
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web import http, server

from txuring.tcp import _CompletionConnection
from txuring.web import FileProducer

#: The pipe's size asked for (F_SETPIPE_SZ, 2.6.35; at most /proc/sys/fs/pipe-max-size,
#: 1 MiB by default, for an unprivileged process), so the bytes per splice op and the
#: most a connection moves in one loop pass. Measured on loopback (bench_web.py): 1 MiB
#: gave some 20% more MB/s on one connection than 256 KiB, but a tiny request made
#: during four downloads waited 3 ms at p99 instead of 0.8 ms.
PIPE_SIZE = 256 * 1024
_SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
_SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: The writes of requests whose bytes go to the transport untransformed (but for the
#: chunked framing, which L{start_body} checks).
_PLAIN_WRITES = (server.Request.write, http.Request.write)


def splice_transport(request, ops):
    """
    The completion transport whose socket C{request}'s body may be spliced into, or
    None: UringReactor's TCP transport, no TLS, and ops that are io_uring ops with
    splice and poll ops. (The response must not be chunked either: L{start_body}
    checks once the headers are written.)
    """
    if getattr(ops, "kind", None) != "io_uring" or not ops._has("splice") \
            or not ops._has("poll_add"):
        return None
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    # (isinstance, not an attribute: a wrapping protocol -- TLSMemoryBIOProtocol, any
    # ProtocolWrapper -- passes attribute lookups on to the transport beneath it)
    if not isinstance(transport, _CompletionConnection) or transport.TLS \
            or _closing(transport):
        return None
    # The body must reach the socket as the request would write it: not where an
    # encoder (EncodingResourceWrapper's gzip) transforms what is written, nor where
    # a Request subclass's own write does something to it.
    if getattr(request, "_encoder", None) is not None \
            or type(request).write not in _PLAIN_WRITES:
        return None
    return transport


def _closing(transport):
    """
    Whether C{transport} has begun to close (or is closed): loseConnection sets
    C{disconnecting}, but abortConnection only C{_aborting} until its connectionLost
    on the next turn -- and an aborted connection must not get another byte.
    """
    return transport.disconnecting or not transport.connected \
        or getattr(transport, "_aborting", False)


class SpliceProducer(FileProducer):
    """
    L{FileProducer} whose chunks go file -> pipe -> socket (see the module
    docstring); its prefixes (multipart framing) and the headers go through the
    transport. Built by L{start_body}.

    @ivar _transport: the completion transport of the response's connection.
    @ivar _pipe: C{(read end, write end)} of its pipe, None once closed.
    @ivar _pipe_size: bytes per splice op (the pipe's size).
    @ivar _in_pipe: bytes spliced into the pipe and not yet into the socket.
    @ivar spliced: bytes spliced into the socket so far (for monitoring and tests).
    """

    def __init__(self, ops, fd, request, parts, transport, pipe, pipe_size, **kw):
        FileProducer.__init__(self, ops, fd, request, parts, **kw)
        self._transport = transport
        self._pipe = pipe
        self._pipe_size = pipe_size
        self._in_pipe = 0
        self._looks = 0  # looks in a row at a transport that had not sent all yet
        self.spliced = 0

    def start(self):
        self.done = Deferred()
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._pump()
        return self.done

    def _step(self):
        if self._in_pipe:
            return self._drain()
        FileProducer._step(self)

    def _chunk(self):
        """Splice the next chunk into the pipe once the transport has sent all it had."""
        transport = self._transport
        if _closing(transport):
            raise ConnectionError("the connection began to close during the response")
        if transport._sendUd or len(transport.dataBuffer) > transport.offset \
                or transport._tempDataLen:
            # Usually sent by the next pass; for a client that reads nothing, the
            # looks back off to every 50 ms (else the reactor spins on timeout 0).
            delay = min(0.05, 0.001 * (1 << self._looks)) if self._looks else 0
            self._looks = min(self._looks + 1, 6)
            return self._wait(self._after(delay))
        self._looks = 0
        want = min(self._pipe_size, self._end - self._offset)
        self._wait(self._ops.splice(self._fd, self._pipe[1], want, self._offset, -1),
                   self._filled)

    def _after(self, delay):
        """A Deferred that fires C{delay} seconds from now (0: the next turn)."""
        d = Deferred(lambda _: call.cancel())
        call = self._reactor.callLater(delay, d.callback, None)
        return d

    def _wait(self, d, then=None):
        """Wait for C{d} (an op, or the next turn), then C{then(result)} and go on."""
        self._reading = d
        d.addCallbacks(self._waited, self._readFailed, (then,))

    def _waited(self, result, then):
        self._reading = None
        if self._stopped:
            return self._close()
        try:
            if then is not None:
                then(result)
        except BaseException:
            return self._failed(Failure())
        self._pump()

    def _filled(self, n):
        if n == 0:
            raise OSError(errno.EIO, "the file shrank while being served")
        self._offset += n
        self.bytes_read += n
        self._in_pipe = n

    def _drain(self):
        """Splice what the pipe holds into the socket; when it is full, poll."""
        transport = self._transport
        if _closing(transport):
            raise ConnectionError("the connection began to close during the response")
        sock = transport.fileno()
        try:
            n = os.splice(self._pipe[0], sock, self._in_pipe,
                          flags=_SPLICE_F_NONBLOCK | _SPLICE_F_MOVE)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError):
            return self._lost()
        self._in_pipe -= n
        self.spliced += n
        self._request.sentLength += n
        if self._in_pipe:
            ring = self._ops.ring
            self._wait(ring.syscall_result(ring.poll_add(sock, select.POLLOUT)))
        else:
            self._resetTimeout()

    def _lost(self):
        """
        The peer is gone (EPIPE, ECONNRESET): what the transport does when its send
        finds that -- the connection is lost, here at once (its recv, paused with the
        channel, may never see it) -- without logging an error.
        """
        self._stopped = True
        self._request.unregisterProducer()
        self._close()
        self._transport.abortConnection()

    def _resetTimeout(self):
        """A chunk went out: the channel's idle timeout starts again (as on a write)."""
        reset = getattr(self._request.channel, "resetTimeout", None)
        if reset is not None:
            reset()

    def _close(self):
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            for end in pipe:
                os.close(end)  # (a pipe's close never blocks)
        FileProducer._close(self)


def start_body(ops, fd, request, parts, chunk_size, nowait):
    """
    Stream C{parts} of C{fd} to C{request}: by splicing where L{splice_transport}
    allows it (the headers written first), else by L{FileProducer}. Returns the
    producer, started.
    """
    transport = splice_transport(request, ops)
    if transport is not None:
        request.write(b"")  # the headers (twisted.web decides on chunked framing here)
        if request.chunked or request._disconnected:
            transport = None
    if transport is None:
        producer = FileProducer(ops, fd, request, parts, chunk_size, nowait=nowait)
        producer.start()
        return producer
    try:
        pipe = os.pipe2(os.O_CLOEXEC)
    except OSError as e:
        log.msg("txuring.web: no pipe to splice through (%s); copying" % (e,))
        producer = FileProducer(ops, fd, request, parts, chunk_size, nowait=nowait)
        producer.start()
        return producer
    try:
        size = fcntl.fcntl(pipe[1], _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        size = fcntl.fcntl(pipe[1], 1032)  # F_GETPIPE_SZ: the default (64 KiB) it has
    producer = SpliceProducer(ops, fd, request, parts, transport, pipe, size,
                              chunk_size=chunk_size, nowait=nowait)
    producer.start()
    return producer
