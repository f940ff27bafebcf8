"""
Completion-based TCP transports for L{UringReactor}: the socket I/O itself is io_uring
operations, not readiness polls followed by system calls.

Design, and why:

  - The transports I{are} Twisted's: L{Server}, L{Client} and L{Port} subclass
    C{twisted.internet.tcp}'s classes (as iocpreactor reuses C{Connector},
    C{_BaseTCPClient}, C{_SocketCloser} and C{_AbortingMixin}) and keep their state in
    the same attributes (C{dataBuffer}, C{offset}, C{_tempDataBuffer}, C{producer},
    C{disconnecting}...). Only the four registration methods (startReading,
    stopReading, startWriting, stopWriting), C{doWrite} and C{connectionLost} are
    replaced. So everything users and Twisted's tests rely on -- producers and the
    write buffer's high-water mark, loseConnection after the drain, half-close,
    abortConnection, TLS (C{startTLS} layers a TLSMemoryBIOProtocol exactly as on
    epoll, and listenSSL/connectSSL/endpoints wrap the factory), connectionLost
    reasons -- is Twisted's own code, driven by completions instead of readiness.

  - Reading: one multishot recv (IORING_RECV_MULTISHOT, 6.0) per connection, whose
    buffers the kernel picks from ONE provided-buffer ring (L{BufferRing}, 5.19)
    shared by all the reactor's connections: an idle connection holds no buffer.
    Each data CQE is copied out as exact-size C{bytes}, its buffer handed back after
    the batch, and C{protocol.dataReceived} called. Where the kernel has recv
    bundles (IORING_RECVSEND_BUNDLE, 6.10), one CQE brings everything the socket had
    queued, over several consecutive buffers of the ring (one C{bytes}: one slice
    when they are consecutive in memory, as they usually are). A stream (a CQE that
    filled a shared buffer with more queued, or a big bundle) moves to a second,
    small ring of large buffers (64 KiB): C{dataReceived} then gets what epoll's
    C{recv(65536)} would, through 1 MiB of buffers that stay in the CPU's cache,
    instead of cycling through the whole shared ring (bulk receive cost ~1.5x more
    CPU that way); after a run of small messages, or when the large buffers run
    out, it moves back. Every (re-)arm starts with a
    single-shot recv (same buffer ring), and the multishot one is armed once a recv
    found the socket drained (see L{_CompletionConnection._armRecv} for the kernel
    behaviour that makes this necessary); it is armed again after its final CQE
    (ENOBUFS when the buffer ring ran dry under a burst, or a final data CQE). Where
    multishot recv is missing (5.19) or forced off, single-shot recvs are all there is.

  - Pausing (C{stopReading}, so C{pauseProducing}) cancels the recv at the end of the
    loop pass, unless it was resumed meanwhile (twisted.web pauses and resumes within
    one request). Data the kernel had already received before the cancel took effect
    is kept, in order, and handed over on resume: a paused connection holds at most
    what arrived in one loop pass, so memory stays bounded under a slow consumer.

  - Writing: C{write}/C{writeSequence} append to Twisted's list buffer; EXACTLY ONE
    send is in flight per socket (two sends of one socket could be reordered), and
    everything written meanwhile goes in the next one. Sends are prepared at the end
    of the loop pass, so they are submitted by the same C{io_uring_enter} that waits
    for the next completions; a short send is resumed from where it stopped. When
    few connections flush in a pass (one client, say), C{send(2)} is called directly
    instead: a completion round trip per reply would cost a second loop pass.

  - The hot path avoids the public op API: no Handle, Deferred or argument checks per
    message. Each op is a small record in the ring's user_data table
    (C{ring._handles}): a recv's is a L{_RecvOp}, which delivers its data CQEs
    itself; a send's is the connection (one send in flight); SQEs are prepared by C
    functions that take a C{bytes} object's own buffer; the buffer ring's chunks are
    precomputed C{ffi.buffer}s, one slice per message. Rare ops (accept, connect) go
    through the public API.

  - Memory per idle connection is no more than EPollReactor's: a connection keeps
    its recv record and its table entry, and nothing else of its own (no bound
    methods, no log context dicts: see L{_logContextEntry}); and C{tcp.Server}'s
    per-connection strings and bound C{fileno} are made when asked
    (L{_MadeWhenAsked}, C{_CompletionConnection.fileno}).

  - The reactor's IReactorFDSet view stays true: a transport is in C{getReaders()}
    while it reads and in C{getWriters()} while it has data to write, and
    C{removeAll()}/C{disconnectAll()} reach it (Twisted's tests check both).

Kernel facts relied on: a send on a non-blocking socket through io_uring waits for
room (it does not fail with EAGAIN) and may be short; a multishot recv ends with
ENOBUFS when the buffer ring is empty, with res 0 at EOF, and with ECANCELED after a
cancel, and its data CQEs carry C{IORING_CQE_F_BUFFER} with the buffer id in the
upper 16 bits of C{flags}; an op holds its own reference to the file, so closing the
fd does not end it (the transports cancel their ops on connectionLost); but an SQE
names its file by number, looked up only when the kernel takes the SQE, so the SQEs
of a socket that are not submitted yet when it is closed are made to fail with
EBADF first, and its queued ones ended (the number may be another socket's at the
next io_uring_enter: the next accept gets the lowest free number).

Threads: only the reactor's thread may prepare SQEs (the SQ has no lock). Twisted's
transports are not thread-safe, but on epoll a write or resumeProducing from another
thread works (epoll_ctl wakes the loop); here such calls are carried out in the
reactor's thread through callFromThread.
"""

import errno
import os
import socket
import sys
from threading import get_ident

from twisted.internet import error, main, tcp
from twisted.internet.abstract import _concatenate
from twisted.internet.defer import Deferred
from twisted.python import context, failure, log
from twisted.python.log import ILogContext

from txuring._core import ffi, lib
from txuring.bufring import BufferRing
from txuring.ring import CQE_F_MORE

_EBUSY = -errno.EBUSY
_ECANCELED = -errno.ECANCELED
_ENOBUFS = -errno.ENOBUFS
#: IORING_CQE_F_SOCK_NONEMPTY (5.19): the socket had more data queued after this recv.
_CQE_F_SOCK_NONEMPTY = 1 << 2
#: IORING_RECV_MULTISHOT (6.0), in a recv SQE's ioprio
_RECV_MULTISHOT = 1 << 1
#: IORING_RECVSEND_BUNDLE (6.10), in a recv SQE's ioprio: one CQE may fill several
#: provided buffers, consecutive in the ring, all the socket has queued
RECV_BUNDLE = lib.TXU_RECVSEND_BUNDLE
#: IORING_FEAT_RECVSEND_BUNDLE (6.10): the kernel takes RECV_BUNDLE
FEAT_RECVSEND_BUNDLE = 1 << 14
_CONNECTION_DONE = main.CONNECTION_DONE
_CONNECTION_LOST = main.CONNECTION_LOST
#: accept errors that say the socket cannot accept at all (not listening -- never
#: listen()ed, or shut down --, not a socket, closed): the port is closed. Other
#: errors (ECONNABORTED, ENOMEM, ENOBUFS, EPERM, the network errors accept(2) passes
#: on from a pending connection) concern one connection: the accept is re-armed.
_BROKEN_LISTENER = (-errno.EINVAL, -errno.EBADF, -errno.ENOTSOCK)
#: One send moves at most this much (the kernel's len is 32-bit; sends are short anyway).
_MAX_SEND = 1 << 30
#: A bundle CQE of at least this many bytes on the shared buffer group means a stream:
#: the connection moves to the large buffers (see _CompletionConnection._maybeStream).
_STREAM_MIN = 16384
#: After this many data CQEs in a row that each filled less than a shared buffer, a
#: connection on the large buffers moves back to the shared group.
_SMALL_RUN = 8


def _logContextEntry(transport, key):
    """
    C{entry[key]} for an entry of the log context stack (C{twisted.python.context})
    that a transport's protocol callbacks run in: what C{log.callWithLogger(transport,
    ...)} pushes on the other reactors' loops, C{{ILogContext: {..., "system":
    logPrefix}}} (the default log context with the transport's prefix as "system").
    It is built only when something looks it up (a log call), so neither the
    connection nor the push holds a dict. (The stack's entries are only ever read by
    C{entry[key]}.)
    """
    if key is not ILogContext:
        raise KeyError(key)
    try:
        prefix = transport.logPrefix()
    except BaseException:
        prefix = "Uninitialized"
    ctx = dict(context.defaultContextDict.get(ILogContext) or {})
    ctx["system"] = prefix
    return ctx


class _LogContext:
    """An entry of the log context stack for C{transport} (see L{_logContextEntry})."""

    __slots__ = ("transport",)

    def __init__(self, transport):
        self.transport = transport

    def __getitem__(self, key):
        return _logContextEntry(self.transport, key)


def _filenoToRegister(selectable):
    """
    The fd of C{selectable}'s socket, to register it; ValueError once the socket is
    closed, as EPollReactor raises for a selectable whose fileno() is -1 (its old
    number may be another socket's by now).
    """
    skt = getattr(selectable, "socket", None)
    if skt is None:
        raise ValueError("%r has no file descriptor: its socket is closed" % (selectable,))
    return skt.fileno()


def _forgetUnsubmitted(reactor, fd):
    """
    C{fd} is about to be closed: the SQEs naming it that the kernel has not taken yet
    will fail with EBADF instead of acting on the fd number's next owner (the kernel
    looks the number up when it takes an SQE; see C{txu_sq_forget_fd}).
    """
    ring = reactor.ring
    if not (ring._closed or ring._forked):
        lib.txu_sq_forget_fd(ring._r, fd)


class _RecvBuffers:
    """
    One of the reactor's provided-buffer rings for receiving, with what the hot path
    needs precomputed: each buffer as an C{ffi.buffer} (slicing one gives C{bytes} in
    one copy) and its address.

    @ivar bufring: the L{BufferRing}.
    @ivar gid: its buffer group id (the recv SQEs name it).
    @ivar chunks: buffer id -> C{ffi.buffer} over that buffer.
    @ivar addrs: buffer id -> its address, to hand it back.
    @ivar size: bytes per buffer.
    @ivar bundle: C{RECV_BUNDLE} when recvs on this group take bundles, else 0 (the
        ioprio bit every recv armed on it carries).
    @ivar large: whether this is the reactor's group of large buffers for streams.
    @ivar streamAt: a data CQE of at least this many bytes on the shared group may
        come from a stream (see L{_CompletionConnection._maybeStream}).
    @ivar rearmed: recvs that ended with ENOBUFS (the ring ran dry) and were re-armed.
    """

    rearmed = 0

    def __init__(self, ring, entries, size, bundle=0, large=False):
        self.bufring = BufferRing(ring, entries, size)
        self.gid = self.bufring.group_id
        self.base = base = self.bufring._base
        self.addrs = [base + i * size for i in range(entries)]
        self.chunks = [ffi.buffer(a, size) for a in self.addrs]
        #: all the buffers as one C{ffi.buffer}: a bundle over consecutive buffers is
        #: one slice of it
        self.whole = ffi.buffer(base, entries * size)
        self.size = size
        self.entries = entries
        self.bundle = bundle
        self.large = large
        self.streamAt = max(size, _STREAM_MIN) if bundle else size
        self.b = self.bufring._b
        #: ids of buffers copied out and not yet handed back: the reactor hands them
        #: back in one call after each harvested batch (L{flush}), before its next
        #: enter (one C call per message cost ~0.4 us: cffi converting two pointers)
        self.pending = []
        self._bundleIds = ffi.new("uint16_t[]", entries)

    def bundled(self, bid, res):
        """
        The C{res} bytes of a bundle CQE (IORING_RECVSEND_BUNDLE, 6.10) whose data
        starts in buffer C{bid} and fills more than one buffer, as one C{bytes}; its
        buffers join the pending hand-back. Raises ValueError if the CQE does not
        match the ring (it then hands nothing back).
        """
        got = lib.txu_bufring_bundle(self.b, bid, res, self._bundleIds, self.entries)
        if got < 0:
            raise ValueError("a bundle CQE (buffer %d, %d bytes) does not match the buffer "
                             "ring (error %d)" % (bid, res, got))
        n = got & ~lib.TXU_BUNDLE_CONTIGUOUS
        ids = ffi.unpack(self._bundleIds, n)
        self.pending.extend(ids)
        size = self.size
        if got & lib.TXU_BUNDLE_CONTIGUOUS:
            start = bid * size
            return self.whole[start:start + res]
        chunks = self.chunks
        parts = [chunks[i] for i in ids]
        parts[-1] = parts[-1][0:res - (n - 1) * size]
        return b"".join(parts)

    def flush(self):
        """Hand every pending buffer back to the kernel (one C call)."""
        pending = self.pending
        if pending:
            self.pending = []
            lib.txu_bufring_recycle_many(self.b, pending, len(pending))


class _Quiet:
    """The record of an op whose completion nobody needs (a cancel request)."""

    __slots__ = ()
    _keep = None
    #: (the lean records take each CQE at most once: see txuring.cqueue)
    _cqes = None

    def _more(self, res, flags):
        pass

    def _final(self, res, flags):
        pass


_QUIET = _Quiet()


class _RecvOp:
    """
    One recv SQE of a connection, on the reactor's shared buffer group. Its data CQEs
    are delivered here, in C{_more} (the hot path: what would be the connection's
    method, on the record itself, so that no bound method is kept per connection);
    the final CQE goes to the connection, and says which recv ended, so that a
    cancelled one's ending is never taken for the current one's.

    @ivar conn: the connection.
    @ivar ud: the op's user_data.
    @ivar bufs: the L{_RecvBuffers} whose buffers this recv fills.
    @cvar large: whether those are the reactor's large buffers.
    """

    __slots__ = ("conn", "ud", "bufs")
    _keep = None  # the buffers are the reactor's buffer ring's, which outlives the op
    _cqes = None  # (at most once: nothing here can take a CQE twice)
    large = False

    def __init__(self, conn, ud, bufs):
        self.conn = conn
        self.ud = ud
        self.bufs = bufs

    def _more(self, res, flags):
        """
        A data CQE (the hot path): copy out, hand the buffer back (after the batch:
        the reactor's flush), deliver. (L{_CompletionConnection._recvFrom}, inlined.)
        """
        conn = self.conn
        bufs = self.bufs
        bid = flags >> 16
        if res <= bufs.size:
            data = bufs.chunks[bid][0:res]
            bufs.pending.append(bid)
        else:
            data = conn._bundled(bufs, bid, res)  # (IORING_RECVSEND_BUNDLE, 6.10)
            if data is None:
                return
        if res >= bufs.streamAt:
            conn._maybeStream(res, flags)
        if not conn._reading or conn._stash is not None:
            if not conn.disconnected:
                conn._stashAdd(data)
            return
        contexts = conn.reactor._logContexts
        contexts.append(self)  # (the op is the log context entry: __getitem__)
        try:
            conn.protocol.dataReceived(data)
        except BaseException:
            conn._callbackFailed(True)
        finally:
            contexts.pop()

    def _final(self, res, flags):
        self.conn._recvEnded(self, res, flags)

    def __getitem__(self, key):
        """The op doubles as the log context entry its data is delivered in."""
        return _logContextEntry(self.conn, key)


class _LargeRecvOp(_RecvOp):
    """
    A recv on the reactor's large buffers (a stream: see L{_RecvBuffers}).

    @ivar multishot: whether it is the multishot recv (else the single-shot one every
        arm starts with).
    """

    __slots__ = ("multishot",)
    large = True

    def __init__(self, conn, ud, bufs):
        _RecvOp.__init__(self, conn, ud, bufs)
        self.multishot = False

    def _more(self, res, flags):
        self.conn._recvFrom(self.bufs, res, flags)


class _SendOp:
    """
    Mixed into a connection, which is itself the record of its send op in the ring's
    table (one send in flight per connection, so one record is enough, and an idle
    connection holds no extra object for it): the send's CQE comes to C{_final}.

    @ivar _keep: the C{bytes} the kernel is reading, held until the final CQE.
    @ivar _sendUd: the user_data of the send in flight (0: none).
    """

    _cqes = None  # (at most once: _final is the connection's own method)
    _keep = None
    _sendUd = 0

    @property
    def _sendOp(self):
        """True while a send is in flight, else None."""
        return True if self._sendUd else None

    def _more(self, res, flags):
        """(A send never gets more than its one CQE.)"""

    # _final(res, flags): the connection's (_CompletionConnection._final)


class _CompletionConnection(_SendOp):
    """
    The completion-based I/O of a connected stream socket, mixed in before
    C{tcp.Connection} (see the module docstring).

    @ivar _fd: the fd under which the transport is registered in the reactor.
    @ivar _large: recvs are armed on the reactor's large buffers (a stream).
    @ivar _smallRun: data CQEs in a row, on the large buffers, smaller than a shared
        buffer.
    @ivar _reading: registered for reading (listed by getReaders).
    @ivar _writing: registered for writing (listed by getWriters).
    @ivar _recvOp: the L{_RecvOp} armed now, or None.
    @ivar _stash: None, or what arrived while not reading, in order: C{bytes}, then
        possibly the reason the read side ended.
    @ivar _readEnded: EOF or a receive error was seen: no recv is armed again.
    @ivar _passQueued: in the reactor's end-of-pass list.
    """

    _txuringCompletion = True
    _fd = -1
    _reading = False
    _writing = False
    _recvOp = None
    _stash = None
    _readEnded = False
    _passQueued = False
    _large = False
    _smallRun = 0

    # ---- fileno: made when asked ----
    # tcp.Connection keeps the socket's bound fileno method per connection (assigned
    # in __init__, deleted in connectionLost, after which FileDescriptor.fileno gives
    # -1). The same answers, with nothing kept per connection: memory per idle
    # connection.

    _filenoGone = False
    _filenoKept = None

    def _filenoNow(self):
        if self._filenoGone:
            return -1
        skt = getattr(self, "socket", None)
        return -1 if skt is None else skt.fileno()

    @property
    def fileno(self):
        kept = self._filenoKept
        return self._filenoNow if kept is None else kept

    @fileno.setter
    def fileno(self, value):
        skt = getattr(self, "socket", None)
        if self._filenoGone:
            del self._filenoGone
        if skt is not None and value == skt.fileno:
            # (tcp.Connection.__init__: the socket's own, which _filenoNow calls)
            if self._filenoKept is not None:
                del self._filenoKept
        else:
            self._filenoKept = value  # something else: kept, as assigned

    @fileno.deleter
    def fileno(self):
        if self._filenoKept is not None:
            del self._filenoKept
        self._filenoGone = True

    # ---- registration (IReactorFDSet's view) ----

    def _register(self, primary):
        reactor = self.reactor
        if self._fd < 0:
            self._fd = _filenoToRegister(self)
        primary.add(self._fd)
        reactor._selectables[self._fd] = self

    def _unregister(self, primary, other):
        fd = self._fd
        primary.discard(fd)
        selectables = self.reactor._selectables
        if fd not in other and selectables.get(fd) is self:
            del selectables[fd]

    def startReading(self):
        if self._reading:
            return
        reactor = self.reactor
        if reactor.ring._owner != get_ident() and reactor.ring._owner is not None:
            return self._callInLoop(self.startReading)
        self._register(reactor._reads)
        self._reading = True
        if self._stash:
            self._queuePass()  # hand over what arrived while paused, first
        if self._recvOp is None and not self._readEnded:
            self._armRecv()

    def stopReading(self):
        if not self._reading:
            return
        reactor = self.reactor
        if reactor.ring._owner != get_ident() and reactor.ring._owner is not None:
            return self._callInLoop(self.stopReading)
        self._reading = False
        self._unregister(reactor._reads, reactor._writes)
        if self._recvOp is not None:
            self._queuePass()  # cancel the recv then, unless resumed meanwhile

    def startWriting(self):
        # (on every reply's path: _register inlined)
        if self._writing:
            return
        reactor = self.reactor
        if reactor.ring._owner != get_ident() and reactor.ring._owner is not None:
            return self._callInLoop(self.startWriting)
        fd = self._fd
        if fd < 0:
            self._register(reactor._writes)
        else:
            reactor._writes.add(fd)
            reactor._selectables[fd] = self
        self._writing = True
        if not self._passQueued:
            self._passQueued = True
            reactor._passQueue.append(self)

    def stopWriting(self):
        # (on every reply's path: _unregister inlined)
        if not self._writing:
            return
        self._writing = False
        reactor = self.reactor
        fd = self._fd
        reactor._writes.discard(fd)
        if fd not in reactor._reads:
            selectables = reactor._selectables
            if selectables.get(fd) is self:
                del selectables[fd]

    def _callInLoop(self, method):
        """
        C{method} (startReading, stopReading, startWriting) was called from a thread
        other than the reactor's -- a write, loseConnection, pauseProducing or
        resumeProducing there. Twisted's transports are not thread-safe, but on epoll
        such a call takes effect (its epoll_ctl wakes the loop); here it would touch
        the ring's SQ and the end-of-pass list, which only the reactor's thread may.
        So it is made there, as soon as the loop wakes (callFromThread wakes it),
        unless the connection ended meanwhile.
        """
        def inLoop():
            if not self.disconnected:
                method()

        self.reactor.callFromThread(inLoop)

    def _queuePass(self):
        if not self._passQueued:
            self._passQueued = True
            self.reactor._passQueue.append(self)

    # ---- receiving ----

    def _armRecv(self, multishot=0):
        """
        Arm a recv. Every (re-)arm starts single-shot; a multishot recv is armed only
        once a recv CQE said the socket's queue was empty (no
        C{IORING_CQE_F_SOCK_NONEMPTY}, 5.19). Kernel fact (6.18): a multishot recv
        armed on a socket whose reset or EOF came in before it was armed, with data
        still queued, reads the data and then waits for a wakeup that never comes;
        a single-shot recv reports the pending error, and a multishot armed on a
        drained socket sees every later event.
        """
        reactor = self.reactor
        ring = reactor.ring
        if ring._closed or ring._forked:
            return  # the reactor was closed (or this is a fork child): nothing to arm
        if self._large:
            bufs = reactor._largeRecvBuffers()
            op = _LargeRecvOp
        else:
            bufs = reactor._recvBufs or reactor._recvBuffers()
            op = _RecvOp
        ud = next(ring._ids)
        op = self._recvOp = op(self, ud, bufs)
        if multishot and bufs.large:
            op.multishot = True
        ring._handles[ud] = op
        args = (self._fd, bufs.gid, (_RECV_MULTISHOT if multishot else 0) | bufs.bundle)
        if ring._sq.backlog or lib.txu_lean_recv(ring._r, *args, ud, 0) == _EBUSY:
            ring._lean_queue(ud, op, lib.txu_lean_recv, args)

    def _recvFrom(self, bufs, res, flags):
        """A data CQE of a recv on C{bufs} (either group): see L{_RecvOp._more}."""
        bid = flags >> 16
        if res <= bufs.size:
            data = bufs.chunks[bid][0:res]
            bufs.pending.append(bid)
        else:
            data = self._bundled(bufs, bid, res)
            if data is None:
                return
        if not bufs.large:
            if res >= bufs.streamAt:
                self._maybeStream(res, flags)
        elif res < self.reactor._recvBufs.size:
            self._smallRun += 1
            if self._smallRun >= _SMALL_RUN and self._large:
                self._toGroup(False)  # small messages again: back to the shared group
        else:
            self._smallRun = 0
        if not self._reading or self._stash is not None:
            if not self.disconnected:
                self._stashAdd(data)
            return
        contexts = self.reactor._logContexts
        contexts.append(_LogContext(self))
        try:
            self.protocol.dataReceived(data)
        except BaseException:
            self._callbackFailed(True)
        finally:
            contexts.pop()

    def _callbackFailed(self, isRead):
        """A protocol callback raised: log it and drop the connection, as epoll does."""
        why = sys.exc_info()[1]
        contexts = self.reactor._logContexts
        contexts.append(_LogContext(self))
        try:
            log.err()
            self.reactor._disconnectSelectable(self, why, isRead)
        finally:
            contexts.pop()

    def _stashAdd(self, item):
        if self._stash is None:
            self._stash = [item]
        else:
            self._stash.append(item)

    def _maybeStream(self, res, flags):
        """
        A data CQE of C{res} bytes filled a shared buffer (or, with bundles, brought
        at least C{_STREAM_MIN} bytes): a stream. It moves to the reactor's large
        buffers, where each CQE brings up to a large buffer's worth: fewer, bigger
        C{dataReceived} calls, and the data goes through few, cache-warm buffers
        instead of cycling through the whole shared group.
        """
        if self._large or not (flags & _CQE_F_SOCK_NONEMPTY or res >= _STREAM_MIN):
            return
        if self.reactor._largeRecvBuffers() is not None:
            self._toGroup(True)

    def _toGroup(self, large):
        """Arm later recvs on the large buffers (or the shared ones): at the pass end,
        the armed recv is cancelled and one on the other group armed."""
        self._large = large
        self._smallRun = 0
        if self._recvOp is not None:
            self._queuePass()

    def _recvEnded(self, op, res, flags):
        """The final CQE of recv C{op}."""
        current = op is self._recvOp
        if current:
            self._recvOp = None
        if res > 0:
            # A last data CQE (single-shot recv; or the multishot stopped).
            self._recvFrom(op.bufs, res, flags)
        elif res == 0 or (res != _ECANCELED and res != _ENOBUFS):
            if not self._readEnded:
                self._readEnded = True
                self._readEnd(_CONNECTION_DONE if res == 0 else _CONNECTION_LOST)
            return
        elif res == _ECANCELED:
            return  # we cancelled it (paused, moved to another group, or the end)
        else:
            # ENOBUFS: the buffer ring ran dry. Re-armed at the end of the pass, once
            # the batch's buffers are back (L{_passEnd}): re-armed now, with the SQ
            # full, it would be submitted at once and fail again at once, and the
            # dispatch would never run out of CQEs (a livelock, under a burst).
            op.bufs.rearmed += 1
            if op.large and current and not op.multishot:  # (op: a _LargeRecvOp)
                # The multishot recv of a stream faster than the loop ends so when it
                # has filled every large buffer (they come back after the batch), and
                # is re-armed on them; but a single-shot one that found none means
                # other streams hold them all: this one goes back to the shared group.
                self._large = False
            if current:
                self._queuePass()
            return
        if (current and self._reading and self._recvOp is None and not self._readEnded
                and not self.disconnected):
            if res > 0 and not flags & _CQE_F_SOCK_NONEMPTY:
                # The socket is drained: multishot (where the kernel has it).
                self._armRecv(self.reactor._multishotRecv)
            elif res > 0 and self.reactor._multishotRecv:
                # Data still queued (a stream): drain it with recv(2) here, as epoll
                # would, so that the multishot recv starts on a drained socket.
                self._drainDirectly()
            else:
                self._armRecv(0)  # no multishot: single-shot again

    #: At most this much is read by recv(2) in one _drainDirectly (then a ring recv
    #: takes over, so that one busy stream does not hold the loop).
    _DIRECT_BUDGET = 1 << 20

    def _drainDirectly(self):
        """
        Read what is queued with recv(2) until the socket is empty (then arm the
        multishot recv), the budget is spent or reading stops (then a single-shot), or
        a ring recv was armed by the protocol meanwhile (it goes on from there).
        """
        budget = self._DIRECT_BUDGET
        recv = self.socket.recv
        size = self.bufferSize
        contexts = self.reactor._logContexts
        while budget > 0:
            if not self._reading or self.disconnected or self._stash is not None \
                    or self._recvOp is not None:
                # (A ring recv armed meanwhile -- paused and resumed in dataReceived --
                # owns the reading now: it may take the next bytes as soon as anything
                # submits, and a recv(2) here would overtake them.)
                break
            try:
                data = recv(size)
            except BlockingIOError:
                if self._reading and self._recvOp is None and not self.disconnected:
                    self._armRecv(self.reactor._multishotRecv)
                return
            except OSError:
                self._readEnded = True
                self._readEnd(_CONNECTION_LOST)
                return
            if not data:
                self._readEnded = True
                self._readEnd(_CONNECTION_DONE)
                return
            budget -= len(data)
            contexts.append(_LogContext(self))
            try:
                self.protocol.dataReceived(data)
            except BaseException:
                self._callbackFailed(True)
                return
            finally:
                contexts.pop()
        if self._reading and self._recvOp is None and not self.disconnected \
                and not self._readEnded:
            self._armRecv(0)

    def _readEnd(self, why):
        """EOF or a receive error: now if reading and nothing is stashed, else later."""
        if self.disconnected:
            return
        if not self._reading or self._stash is not None:
            self._stashAdd(why)
            return
        contexts = self.reactor._logContexts
        contexts.append(_LogContext(self))
        try:
            self.reactor._disconnectSelectable(self, why, True)
        except BaseException:
            self._callbackFailed(True)
        finally:
            contexts.pop()

    def _deliverStash(self):
        """Hand over what arrived while paused, in order, while still reading."""
        stash = self._stash
        contexts = self.reactor._logContexts
        contexts.append(_LogContext(self))
        try:
            while stash and self._reading and not self.disconnected:
                item = stash.pop(0)
                if isinstance(item, Exception):  # the reason the read side ended
                    self._stash = None if not stash else stash
                    self.reactor._disconnectSelectable(self, item, True)
                    return
                self._deliverStashed(item)
        except BaseException:
            self._callbackFailed(True)
        finally:
            contexts.pop()
        if not stash:
            self._stash = None

    def _deliverStashed(self, item):
        """Hand over one stashed arrival (C{bytes} here)."""
        self.protocol.dataReceived(item)

    # ---- sending ----

    def write(self, data):
        """
        C{ITransport.write}: what C{tcp.Connection.write} (through TLS if started)
        and C{FileDescriptor.write} do, in one call on the hot path.
        """
        if self.TLS:
            if self.connected:
                self.protocol.write(data)
            return
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        if not self.connected or self._writeDisconnected or not data:
            return
        if not self.dataBuffer and not self._tempDataLen:
            # Nothing buffered: the data is the next send's buffer as it is (no
            # list, no join). (Empty dataBuffer: offset is 0, see _writeDrained.)
            self.dataBuffer = data
        else:
            self._tempDataBuffer.append(data)
            self._tempDataLen += len(data)
        if self.producer is not None:
            self._buffered()
        elif not self._writing:
            # (startWriting, inlined: on every reply's path)
            reactor = self.reactor
            owner = reactor.ring._owner
            if owner != get_ident() and owner is not None:
                return self._callInLoop(self.startWriting)  # (see startWriting)
            self._writing = True
            fd = self._fd
            if fd < 0:
                self._register(reactor._writes)
            else:
                reactor._writes.add(fd)
                reactor._selectables[fd] = self
            if not self._passQueued:
                self._passQueued = True
                reactor._passQueue.append(self)

    def writeSequence(self, iovec):
        """
        C{ITransport.writeSequence}: what C{tcp.Connection.writeSequence} and
        C{FileDescriptor.writeSequence} do (twisted.web writes its headers with it,
        some twenty pieces), without a Python call per piece.
        """
        if self.TLS:
            if self.connected:
                self.protocol.writeSequence(iovec)
            return
        for i in iovec:
            if not isinstance(i, bytes):
                raise TypeError("Data must be bytes")
        if not self.connected or not iovec or self._writeDisconnected:
            return
        self._tempDataBuffer.extend(iovec)
        self._tempDataLen += sum(map(len, iovec))
        self._buffered()

    def _buffered(self):
        """
        Data was just buffered: pause a streaming producer if the buffer is over its
        high-water mark (C{FileDescriptor._maybePauseProducer}), and start writing.
        """
        producer = self.producer
        if (producer is not None and self.streamingProducer
                and len(self.dataBuffer) + self._tempDataLen > self.bufferSize):
            self.producerPaused = True
            producer.pauseProducing()
        if not self._writing:
            self.startWriting()

    def doWrite(self):
        """
        Start the next send, at the end of a loop pass (the reactor calls this, never
        a readiness event). Returns what C{FileDescriptor.doWrite} returns: None, or
        the reason to disconnect.
        """
        if self._sendUd:
            return None  # one send in flight; its completion comes back here
        remaining = len(self.dataBuffer) - self.offset
        if remaining < self.SEND_LIMIT:
            if self._tempDataBuffer:
                if remaining > 0:
                    self.dataBuffer = _concatenate(
                        self.dataBuffer, self.offset, self._tempDataBuffer)
                else:
                    self.dataBuffer = b"".join(self._tempDataBuffer)
                self.offset = 0
                self._tempDataBuffer = []
                self._tempDataLen = 0
        data = self.dataBuffer
        off = self.offset
        n = len(data) - off
        if not n:
            return self._writeDrained()
        reactor = self.reactor
        if reactor._directSend:
            try:
                sent = self.socket.send(memoryview(data)[off:] if off else data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return _CONNECTION_LOST
            off = self.offset = off + sent
            n -= sent
            if not n:
                if self._tempDataLen:
                    self._queuePass()  # more behind SEND_LIMIT: next pass
                    return None
                if (self.producer is None and not self.disconnecting
                        and not self._writeDisconnecting):
                    # (_writeDrained and stopWriting, inlined: on every reply's path
                    # when few connections flush)
                    self.dataBuffer = b""
                    self.offset = 0
                    self._writing = False
                    fd = self._fd
                    reactor._writes.discard(fd)
                    if fd not in reactor._reads:
                        selectables = reactor._selectables
                        if selectables.get(fd) is self:
                            del selectables[fd]
                    return None
                return self._writeDrained()
        ring = reactor.ring
        if ring._closed or ring._forked:
            return _CONNECTION_LOST  # the reactor was closed: the bytes cannot go
        ud = self._sendUd = next(ring._ids)
        self._keep = data
        ring._handles[ud] = self  # (the connection is its send's record: see _SendOp)
        if n > _MAX_SEND:
            n = _MAX_SEND
        if ring._sq.backlog or lib.txu_lean_send(ring._r, self._fd, data, off, n, ud,
                                                 0) == _EBUSY:
            ring._lean_queue(ud, self, lib.txu_lean_send, (self._fd, data, off, n))
        return None

    def _final(self, res, flags):
        """
        The send in flight completed (the connection is its send's record: see
        L{_SendOp}): account for it; the rest goes next pass.
        """
        self._keep = None
        self._sendUd = 0
        if self.disconnected:
            return
        if res < 0:
            if res == _ECANCELED:
                return
            contexts = self.reactor._logContexts
            contexts.append(_LogContext(self))
            try:
                self.reactor._disconnectSelectable(self, _CONNECTION_LOST, False)
            finally:
                contexts.pop()
            return
        self.offset += res
        if not self._writing:
            return  # aborted, or stopped by someone else
        if self.offset == len(self.dataBuffer) and not self._tempDataLen:
            # All sent and nothing written meanwhile: finish now rather than in a pass.
            if (self.producer is None and not self.disconnecting
                    and not self._writeDisconnecting):
                # (_writeDrained and stopWriting, inlined: on every reply's path)
                self.dataBuffer = b""
                self.offset = 0
                self._writing = False
                reactor = self.reactor
                fd = self._fd
                reactor._writes.discard(fd)
                if fd not in reactor._reads:
                    selectables = reactor._selectables
                    if selectables.get(fd) is self:
                        del selectables[fd]
                return
            try:
                why = self._writeDrained()
                if why:
                    self._lostInContext(why, False)
            except BaseException:
                self._callbackFailed(False)
        else:
            self._queuePass()

    def _writeDrained(self):
        """
        Everything was sent: the tail of C{FileDescriptor.doWrite}; the protocol code
        it may run (a producer resumed, writeConnectionLost) runs in the transport's
        log context.
        """
        self.dataBuffer = b""
        self.offset = 0
        self.stopWriting()
        if self.producer is None and not self.disconnecting and not self._writeDisconnecting:
            return None
        contexts = self.reactor._logContexts
        contexts.append(_LogContext(self))
        try:
            if self.producer is not None and (
                    (not self.streamingProducer) or self.producerPaused):
                self.producerPaused = False
                self.producer.resumeProducing()
            elif self.disconnecting:
                return self._postLoseConnection()
            elif self._writeDisconnecting:
                self._writeDisconnected = True
                return self._closeWriteConnection()
            return None
        finally:
            contexts.pop()

    def _bundled(self, bufs, bid, res):
        """
        The bytes of a bundle CQE (see L{_RecvBuffers.bundled}), or None if it does
        not match the buffer ring: then the stream can not go on whole, and the
        connection is dropped (ConnectionLost) rather than hand over a gap.
        """
        try:
            return bufs.bundled(bid, res)
        except ValueError:
            log.err(None, "txuring: receiving on %r" % (self,))
            if not self.disconnected:
                self._readEnded = True
                self._lostInContext(_CONNECTION_LOST, True)
            return None

    def _lostInContext(self, why, isRead):
        """Disconnect for C{why}, the protocol's callbacks in its log context."""
        contexts = self.reactor._logContexts
        contexts.append(_LogContext(self))
        try:
            self.reactor._disconnectSelectable(self, why, isRead)
        finally:
            contexts.pop()

    # ---- the end of a loop pass ----

    def _passEnd(self):
        """
        Called by the reactor once per loop pass in which this connection asked for it:
        hand over stashed data, cancel a recv the pause still wants stopped (or arm the
        one an ENOBUFS ended), start the next send.
        """
        self._passQueued = False
        if self.disconnected:
            return
        if self._stash and self._reading:
            self._deliverStash()
        if self._recvOp is None:
            if self._reading and not self._readEnded and not self.disconnected:
                self._armRecv(0)  # (after ENOBUFS: the buffers are back by now)
        elif not self._reading or self._recvOp.large != self._large:
            # Paused (and not resumed since), or moving to another buffer group.
            op, self._recvOp = self._recvOp, None
            self.reactor._leanCancel(op.ud)
            if self._reading and not self._readEnded:
                self._armRecv()
        if self._writing and not self._sendUd and not self.disconnected:
            # (doWrite itself runs no protocol code; _writeDrained and _lostInContext
            # give what they call the transport's log context)
            try:
                why = self.doWrite()
                if why:
                    self._lostInContext(why, False)
            except BaseException:
                self._callbackFailed(False)

    #: whether L{_passEnds} may do this class's pass end itself (its C{doWrite} is
    #: the one above: a subclass with its own sets it False)
    _passInline = True

    # ---- the end ----

    def abortConnection(self):
        """
        C{tcp.Connection.abortConnection}, which makes C{doWrite} a no-op on the
        instance: from then on L{_passEnds} leaves this connection to L{_passEnd}
        (which calls that C{doWrite}), so nothing written after the abort goes out,
        even if the protocol resumes the transport and writes before the abort's
        connectionLost (on the next turn).
        """
        super().abortConnection()
        if self._aborting:
            self._passInline = False

    def connectionLost(self, reason):
        if not hasattr(self, "socket"):
            return
        self._cancelOps()
        self._stash = None
        super().connectionLost(reason)

    def _closeSocket(self, orderly):
        """
        Close the socket (Twisted's C{_SocketCloser}), first turning any SQE that
        names its fd and is not submitted yet (a recv or send prepared this pass) into
        one that fails with EBADF: the kernel looks the fd number up only when it takes
        the SQE, and by then the number may be another connection's (see
        C{txu_sq_forget_fd}). (Its ops already submitted hold the socket itself; they
        end with their cancels.)
        """
        _forgetUnsubmitted(self.reactor, self.socket.fileno())
        super()._closeSocket(orderly)
        self._fd = -1  # (the number may be another socket's from now on)

    def _cancelOps(self):
        """Cancel the recv and the send in flight (they hold the socket's file)."""
        reactor = self.reactor
        if self._recvOp is not None:
            op, self._recvOp = self._recvOp, None
            reactor._leanCancel(op.ud)
        if self._sendUd:
            reactor._leanCancel(self._sendUd)

    def _newRing(self):
        """The reactor replaced its ring (daemon after fork): ops start over."""
        self._recvOp = None
        self._sendUd = 0
        self._large = False
        if self._reading and not self._readEnded:
            self._armRecv()
        if self._writing:
            self._queuePass()


def _passEnds(reactor, pending, direct):
    """
    L{_CompletionConnection._passEnd} for each of C{pending}, the connections that
    asked for it this pass. The common case, a connection reading as before with one
    buffer to send and no send in flight, is done here: the data goes out with
    C{send(2)} when C{direct} (few connections flush: see the reactor's
    C{directSendThreshold}), else (or for what a short C{send(2)} left) as a send
    SQE, prepared in this loop; either way without the two Python calls
    (C{_passEnd}, C{doWrite}) per reply that would repeat the same checks. Anything
    else goes to C{_passEnd}, which may run protocol code: the ring's state is read
    again after it.
    """
    ring = reactor.ring
    usable = not (ring._closed or ring._forked)
    handles = ring._handles
    ids = ring._ids
    sq = ring._sq
    r = ring._r
    send = lib.txu_lean_send
    for conn in pending:
        recvOp = conn._recvOp
        if (usable and conn._passInline and conn._writing and not conn._sendUd
                and not conn._stash and not conn._tempDataBuffer
                and recvOp is not None and conn._reading
                and recvOp.large == conn._large and not conn.disconnected):
            data = conn.dataBuffer
            off = conn.offset
            n = len(data) - off
            if 0 < n <= _MAX_SEND:
                conn._passQueued = False
                if direct:
                    # (doWrite's send(2), inlined)
                    try:
                        sent = conn.socket.send(memoryview(data)[off:] if off else data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        try:
                            conn._lostInContext(_CONNECTION_LOST, False)
                        except BaseException:
                            conn._callbackFailed(False)
                        usable = not (ring._closed or ring._forked)
                        continue
                    if sent == n:
                        if (conn.producer is None and not conn.disconnecting
                                and not conn._writeDisconnecting):
                            # (_writeDrained and stopWriting, inlined)
                            conn.dataBuffer = b""
                            conn.offset = 0
                            conn._writing = False
                            fd = conn._fd
                            reactor._writes.discard(fd)
                            if fd not in reactor._reads:
                                selectables = reactor._selectables
                                if selectables.get(fd) is conn:
                                    del selectables[fd]
                            continue
                        conn.offset = off + sent
                        try:
                            why = conn._writeDrained()
                            if why:
                                conn._lostInContext(why, False)
                        except BaseException:
                            conn._callbackFailed(False)
                        usable = not (ring._closed or ring._forked)
                        continue
                    off = conn.offset = off + sent
                    n -= sent
                # (doWrite's ring send, inlined)
                ud = conn._sendUd = next(ids)
                conn._keep = data
                handles[ud] = conn  # (the connection is its send's record: _SendOp)
                if sq.backlog or send(r, conn._fd, data, off, n, ud, 0) == _EBUSY:
                    ring._lean_queue(ud, conn, send, (conn._fd, data, off, n))
                continue
        conn._passEnd()
        usable = not (ring._closed or ring._forked)


class _MadeWhenAsked:
    """
    C{tcp.Server}'s C{logstr} and C{repstr}, made when asked instead of kept as two
    strings per connection (memory per idle connection: they are read only by
    C{logPrefix()} and C{repr()}). C{tcp.Server.__init__} assigns both; what it
    assigns is compared with what they are made from (the protocol's log prefix and
    class name as they were then, the session number, the peer's host, the port's
    number: objects held anyway, referenced here, never copied), and kept only if it
    differs.
    """

    _logPrefixOf = None
    _logstrKept = None
    _reprName = None
    _reprPort = None
    _repstrKept = None

    def _logstrOf(self, prefix):
        return "%s,%s,%s" % (prefix, self.sessionno, self.hostname)

    @property
    def logstr(self):
        if self._logstrKept is not None:
            return self._logstrKept
        if self._logPrefixOf is None:
            return tcp.Connection.logstr  # (the class default: "Uninitialized")
        return self._logstrOf(self._logPrefixOf)

    @logstr.setter
    def logstr(self, value):
        prefix = self._getLogPrefix(self.protocol)
        if value == self._logstrOf(prefix):
            self._logPrefixOf = prefix
            if self._logstrKept is not None:  # (no new attribute when there is none)
                del self._logstrKept
        else:
            self._logstrKept = value

    def _repstrOf(self, name, port):
        return "<%s #%s on %s>" % (name, self.sessionno, port)

    @property
    def repstr(self):
        if self._repstrKept is not None:
            return self._repstrKept
        if self._reprName is None:
            raise AttributeError("repstr")  # (as when tcp.Server never assigned it)
        return self._repstrOf(self._reprName, self._reprPort)

    @repstr.setter
    def repstr(self, value):
        name = self.protocol.__class__.__name__
        port = getattr(self.server, "_realPortNumber", None)
        if value == self._repstrOf(name, port):
            self._reprName = name
            self._reprPort = port
            if self._repstrKept is not None:
                del self._repstrKept
        else:
            self._repstrKept = value


class _LocalAddressOnce:
    """
    C{getHost()} with the kernel asked for the local address once per connection (it
    does not change once the socket is connected): twisted.web asks for it on every
    request, and each answer cost a C{getsockname(2)}. Each call still returns a new
    address object, as Twisted's does, and fails as Twisted's once the socket is gone.
    """

    _localAddress = None

    def getHost(self):
        skt = self.socket  # (AttributeError after connectionLost, as in tcp.Connection)
        local = self._localAddress
        if local is None:
            local = tcp._getsockname(skt)
            if self.connected:  # (a client's, before it connects, is not the one)
                self._localAddress = local
        return self._addressType("TCP", *local)


class Server(_LocalAddressOnce, _MadeWhenAsked, _CompletionConnection, tcp.Server):
    """A connection a L{Port} accepted, on completions."""


class _CompletionConnect:
    """
    The connect of an outgoing stream connection as an io_uring connect op, bounded by
    the connector's timeout (which cancels it); mixed in before Twisted's client (and
    before L{_CompletionConnection}: its stopReading/stopWriting come first).

    While the connect is in flight the client is listed by getReaders() and
    getWriters(), as on epoll (where it waits for writability): so removeAll() and
    disconnectAll() -- which the reactor's shutdown runs -- reach it, and fail it.

    @ivar _connectHandle: the connect op's Handle while it is in flight.
    @ivar _connectFd: the fd listed in the reactor's readers and writers while the
        connect is in flight, or -1.
    """

    _connectHandle = None
    _connectFd = -1

    def _listConnecting(self):
        reactor = self.reactor
        fd = self._connectFd = self.socket.fileno()
        reactor._reads.add(fd)
        reactor._writes.add(fd)
        reactor._selectables[fd] = self

    def _unlistConnecting(self, reads=True, writes=True):
        fd = self._connectFd
        if fd < 0:
            return
        reactor = self.reactor
        if reads:
            reactor._reads.discard(fd)
        if writes:
            reactor._writes.discard(fd)
        if fd not in reactor._reads and fd not in reactor._writes:
            self._connectFd = -1
            if reactor._selectables.get(fd) is self:
                del reactor._selectables[fd]

    def stopReading(self):
        if self._connectFd >= 0:
            self._unlistConnecting(writes=False)
        super().stopReading()

    def stopWriting(self):
        if self._connectFd >= 0:
            self._unlistConnecting(reads=False)
        super().stopWriting()

    def doConnect(self):
        if not hasattr(self, "connector"):
            return  # stopConnecting() ran before the connect started
        ring = self.reactor.ring
        if self.addressFamily != socket.AF_UNIX:
            port = self.realAddress[1]
            if isinstance(port, int) and not 0 <= port <= 65535:
                # What socket.connect_ex raises (and epoll's Client passes on) for it.
                raise OverflowError("connect_ex(): port must be 0-65535.")
        try:
            h = ring.connect(self.socket.fileno(), self.addressFamily, self.realAddress)
        except OSError as e:
            self.failIfNotConnected(error.getConnectError((e.errno, os.strerror(e.errno))))
            return
        self._connectHandle = h
        self._listConnecting()
        ring.syscall_result(h).addCallbacks(self._connectAnswered, self._connectRefused)

    def _connectAnswered(self, _):
        self._connectHandle = None
        self._unlistConnecting()
        if self.connected or self.disconnected or not hasattr(self, "connector"):
            return
        log.callWithLogger(self, self._connectedNow)

    def _connectedNow(self):
        try:
            self._connectDone()
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
            self.reactor._disconnectSelectable(self, why, False)

    def _connectRefused(self, f):
        self._connectHandle = None
        self._unlistConnecting()
        f.trap(OSError)
        err = f.value.errno
        if err == errno.ECANCELED:
            return
        self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))

    def _stopReadingAndWriting(self):
        super()._stopReadingAndWriting()
        self._unlistConnecting()
        h = self._connectHandle
        if h is not None:
            self._connectHandle = None
            self.reactor.ring._cancel_quietly(h)


class Client(_LocalAddressOnce, _CompletionConnect, _CompletionConnection, tcp.Client):
    """An outgoing TCP connection, on completions."""


class Connector(tcp.Connector):
    """A TCP connector whose transport is a completion-based L{Client}."""

    def _makeTransport(self):
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


class _AcceptArm:
    """The callback of one multishot accept op; tells its port which op answered."""

    __slots__ = ("port", "handle")

    def __init__(self, port):
        self.port = port
        self.handle = None

    def __call__(self, res, flags):
        self.port._accepted(self, res, flags)


class _CompletionPort:
    """
    A listening stream port whose accepts are one multishot accept op (5.19), re-armed
    when it ends; single-shot accepts where the kernel lacks it (or when forced).
    EMFILE/ENFILE at accept is met as Twisted's Port meets it: the reserved fd is
    released and the waiting connections are accepted and closed.

    @ivar _arm: the L{_AcceptArm} of the accept op in flight, or None.
    @ivar _accepting: registered for reading (accepting connections).
    @ivar _armEnded: None, or a Deferred fired when the accept op in flight ended.
    @ivar _stopWaiters: while a stopListening is under way, the Deferreds of the
        calls made after it (None otherwise).
    """

    _txuringCompletion = True
    _arm = None
    _accepting = False
    _fd = -1
    _armEnded = None
    _stopWaiters = None

    def startReading(self):
        if self._accepting:
            return
        reactor = self.reactor
        self._fd = _filenoToRegister(self)
        self._accepting = True
        reactor._reads.add(self._fd)
        reactor._selectables[self._fd] = self
        if self._arm is None:
            self._armAccept()

    def stopReading(self):
        if not self._accepting:
            return
        self._accepting = False
        reactor = self.reactor
        reactor._reads.discard(self._fd)
        if reactor._selectables.get(self._fd) is self:
            del reactor._selectables[self._fd]
        arm = self._arm
        if arm is not None and arm.handle is not None:
            reactor.ring._cancel_quietly(arm.handle)

    def startWriting(self):
        """A listening port never writes."""

    def stopWriting(self):
        """A listening port never writes."""

    def _armAccept(self):
        reactor = self.reactor
        arm = self._arm = _AcceptArm(self)
        flags = socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        if reactor._multishotAccept:
            arm.handle = reactor.ring.accept(self._fd, flags=flags, multishot=True,
                                             callback=arm)
        else:
            h = arm.handle = reactor.ring.accept(self._fd, flags=flags)

            def answered(result):
                arm(result[0], 0)

            def failed(f):
                f.trap(OSError)
                arm(-f.value.errno, 0)

            reactor.ring.syscall_result(h).addCallbacks(answered, failed)

    def _accepted(self, arm, res, flags):
        current = arm is self._arm
        final = not flags & CQE_F_MORE
        if final and current:
            self._arm = None
        if res >= 0:
            if current and self._accepting and not self.disconnected:
                # (what log.callWithLogger(self, ...) gives, without its dicts)
                contexts = self.reactor._logContexts
                contexts.append(_LogContext(self))
                try:
                    self._newConnection(res)
                finally:
                    contexts.pop()
            else:
                os.close(res)  # accepted as the port stopped: nobody takes it
        elif res in (-errno.EMFILE, -errno.ENFILE):
            if current and self._accepting:
                # Twisted's own recovery: release the reserved fd, accept and close
                # the waiting connections (tcp.Port.doRead with _reservedFD).
                self.doRead()
        elif res in _BROKEN_LISTENER:
            if final and current and self._accepting and not self.disconnected:
                # Every accept would fail the same way: re-arming would spin. Close
                # the port, as epoll's does when its poll reports the hang-up.
                why = OSError(-res, os.strerror(-res))
                log.msg("Could not accept new connection (%s): stopped listening"
                        % (errno.errorcode.get(-res, -res),))
                self.reactor._disconnectSelectable(self, why, False)
                return
        elif res != _ECANCELED:
            log.msg("Could not accept new connection (%s)"
                    % (errno.errorcode.get(-res, -res),))
        if final and current:
            if self._accepting and not self.disconnected:
                self._armAccept()
            elif self._armEnded is not None:
                d, self._armEnded = self._armEnded, None
                d.callback(None)

    def _newConnection(self, fd):
        """What tcp.Port.doRead does for one accepted socket."""
        try:
            skt = socket.socket(self.addressFamily, socket.SOCK_STREAM, 0, fd)
            try:
                addr = skt.getpeername()
            except OSError:
                skt.close()  # reset before we got to it
                return
            if self.addressFamily == socket.AF_INET6:
                host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                addr = tuple([host[0]] + list(addr[1:]))
            protocol = self.factory.buildProtocol(self._buildAddr(addr))
            if protocol is None:
                skt.close()
                return
            s = self.sessionno
            self.sessionno = s + 1
            transport = self.transport(skt, protocol, addr, self, s, self.reactor)
            protocol.makeConnection(transport)
        except BaseException:
            log.deferr()

    def loseConnection(self, connDone=failure.Failure(main.CONNECTION_DONE)):
        """
        Stop accepting. The Deferred fires once the accept op has ended (the kernel
        holds the listening socket until then) and the socket is closed, so the port
        number can be bound again when it fires.
        """
        self.disconnecting = True
        self.stopReading()
        if self.connected:
            if self._stopWaiters is not None:
                # Stopping already: answered when that stop is done (a second
                # connectionLost would find no socket).
                d = Deferred()
                self._stopWaiters.append(d)
                return d
            self._stopWaiters = []
            if self._arm is not None:
                d = self._armEnded = Deferred()
            else:
                d = Deferred()
                self.reactor.callLater(0, d.callback, None)
            d.addCallback(lambda _: self.connectionLost(connDone))
            self.deferred = d.addBoth(self._stopAnswered)
            return self.deferred

    def _stopAnswered(self, result):
        """The stop is done: answer the later stopListening calls like the first."""
        waiters, self._stopWaiters = self._stopWaiters, None
        for d in waiters or ():
            if isinstance(result, failure.Failure):
                d.errback(result)
            else:
                d.callback(result)
        return result

    stopListening = loseConnection

    def _closeSocket(self, orderly):
        """
        Close the listening socket (Twisted's C{_SocketCloser}); an accept SQE still
        unsubmitted (armed this pass, the port dropped by disconnectAll) fails with
        EBADF rather than accept on the socket that gets the fd number next.
        """
        _forgetUnsubmitted(self.reactor, self.socket.fileno())
        super()._closeSocket(orderly)

    def _newRing(self):
        self._arm = None
        if self._accepting:
            self._armAccept()


class Port(_CompletionPort, tcp.Port):
    """A listening TCP port on completions."""

    transport = Server
