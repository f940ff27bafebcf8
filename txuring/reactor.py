"""
UringReactor: a Twisted reactor whose loop is one io_uring.

Install it before anything imports C{twisted.internet.reactor}::

    from txuring import reactor
    reactor.install()

or run C{twistd --reactor=uring ...}, C{trial --reactor=uring ...},
C{pytest --reactor=uring ...}.

Design, and why:

  - It is a L{PosixReactorBase}, so everything Twisted's POSIX reactors give (processes,
    UDP, UNIX sockets, TLS layering, signals, threads, adoptStreamPort...) runs on top of
    an L{IReactorFDSet} implemented here with io_uring poll ops.

  - One loop iteration is: run the due timed calls, then B{one} C{io_uring_enter} that
    submits every SQE queued since the last one and waits until a completion arrives or
    the next timed call is due, then dispatch of the whole harvested batch. Readiness
    changes made by callbacks (addReader, removeWriter...) are only SQEs in memory
    until that single enter: unlike epoll, which pays an C{epoll_ctl} system call for
    each of them.

  - Twisted's readers and writers expect level-triggered readiness (a doRead may leave
    data unread and count on being called again). A multishot poll is edge-triggered:
    it posts a CQE only on a new wakeup. So each fd gets a I{one-shot} poll per
    direction, re-armed after its event was dispatched while the selectable still
    wants it; a one-shot poll on an fd that is still ready completes at once, which is
    exactly level triggering. The reactor's own waker drains its eventfd on every read,
    so it can and does use a multishot poll (5.13) that stays armed in the ring.

  - Reading and writing have separate polls, so addWriter on a reading socket is one
    more SQE, not a remove-and-re-add of a combined mask.

  - A stream socket that starts writing (Twisted's tcp.Connection, which UNIX and TLS
    connections build on) is almost always writable, and its doWrite copes with a
    socket that is not (writeSomeData answers 0 for EAGAIN). So addWriter on one tries
    the write at the end of the iteration instead of polling first, and arms a
    POLLOUT poll only if data is left over: a reply goes out in the iteration that
    produced it, without a poll's round trip. Other writers are polled first, always.

  - A poll holds its own reference to the file: closing an fd behind the reactor's back
    (without removeReader) does not end the poll, as it would not on epoll either; the
    poll ends at the file's next event or when the selectable is removed.

  - The ring is created disabled (C{IORING_SETUP_R_DISABLED}) and enabled by the first
    thread that runs the reactor, so a reactor installed in one thread can run in
    another (crochet's way) even with SINGLE_ISSUER|DEFER_TASKRUN.
"""

import errno
import os
import select
import socket
from threading import get_ident

from zope.interface import implementer

from twisted.internet import base, posixbase, tcp
from twisted.internet.interfaces import IReactorDaemonize, IReactorFDSet
from twisted.python import context, log

from txuring._core import lib
from txuring.errors import UringUnavailable
from txuring.ring import CQE_F_MORE, Ring
from txuring.tcp import _passEnds

try:
    Ring(1).exit()
except UringUnavailable as e:
    # twistd --help-reactors shows "!uring" with this reason.
    # (No final full stop: twistd adds one after the reason.)
    raise ImportError("io_uring is unusable here: %s" % (str(e.strerror or e).rstrip("."),)) \
        from e
except OSError as e:
    raise ImportError("io_uring could not be set up: %s" % (e,)) from e

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR
POLLHUP = select.POLLHUP
POLLNVAL = select.POLLNVAL
_DISCONNECTED = POLLHUP | POLLERR | POLLNVAL


class _EventFDWaker(log.Logger):
    """
    Wakes the loop from other threads and signal handlers: an eventfd(2) whose counter
    any thread may bump; its doRead drains it completely, so a multishot poll suits it.

    @ivar _fd: the eventfd, or -1 once closed.
    """

    disconnected = 0
    #: Marker for UringReactor._arm: doRead drains the fd completely and does nothing
    #: else, so an edge-triggered multishot poll (a _DrainingPoll) serves it.
    _txuringMultishot = True

    def __init__(self):
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self):
        return self._fd

    def wakeUp(self):
        fd = self._fd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                pass  # the counter is near its maximum: the loop is woken anyway

    def doRead(self):
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def connectionLost(self, reason):
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class _Poll:
    """
    One poll op on the ring for one (fd, direction) of a selectable; the ring calls it
    with each CQE.

    @ivar live: False once the reactor stopped caring (removeReader...): a CQE that
        arrives later is ignored.
    """

    __slots__ = ("reactor", "fd", "selectable", "direction", "handle", "live")

    def __init__(self, reactor, fd, selectable, direction):
        self.reactor = reactor
        self.fd = fd
        self.selectable = selectable
        self.direction = direction
        self.handle = None
        self.live = True

    def __call__(self, res, flags):
        if self.live:
            self.reactor._pollCompleted(self, res, flags)


class _DrainingPoll(_Poll):
    """
    The multishot poll of a selectable whose doRead only drains its fd (the waker's
    eventfd): while the poll goes on, a wake-up calls doRead directly, skipping the
    generic dispatch (logging context, readiness bookkeeping) on the path every
    callFromThread takes. Its final CQE goes the usual way (re-arm, errors).
    """

    __slots__ = ()

    def __call__(self, res, flags):
        if self.live:
            if flags & CQE_F_MORE and res > 0:
                self.selectable.doRead()
            else:
                self.reactor._pollCompleted(self, res, flags)


def _checkTransportOptions(recvBuffers, recvBufferSize, directSendThreshold):
    """
    Refuse bad options of the completion transports at the constructor: the buffer
    ring they size is made only with the first connection, where an error would fail
    every connection, far from its cause.
    """
    if not isinstance(recvBuffers, int) or not 0 < recvBuffers <= 32768 \
            or recvBuffers & (recvBuffers - 1):
        raise ValueError("recvBuffers must be a power of two from 1 to 32768 (the "
                         "buffers of the shared receive buffer ring), not %r"
                         % (recvBuffers,))
    if not isinstance(recvBufferSize, int) or not 0 < recvBufferSize < 1 << 31:
        raise ValueError("recvBufferSize must be an int from 1 to 2**31-1 (bytes per "
                         "receive buffer), not %r" % (recvBufferSize,))
    if not isinstance(directSendThreshold, int) or directSendThreshold < 0:
        raise ValueError("directSendThreshold must be an int >= 0 (0: never send(2) "
                         "directly), not %r" % (directSendThreshold,))


@implementer(IReactorFDSet, IReactorDaemonize)
class UringReactor(posixbase.PosixReactorBase, posixbase._PollLikeMixin):
    """
    A reactor whose I/O multiplexing and system calls go through one io_uring.

    @ivar ring: the L{Ring}; code running on this reactor may submit its own ops to it.
    @ivar _reads: fds registered for reading.
    @ivar _writes: fds registered for writing.
    @ivar _selectables: fd -> the selectable registered for it.
    @ivar _polls: (fd, POLLIN or POLLOUT) -> the L{_Poll} in flight for it.
    @ivar _tryWrites: (fd, writer) pairs registered since the last pass, whose doWrite
        is tried before any POLLOUT poll (see the module docstring).
    """

    _POLL_DISCONNECTED = _DISCONNECTED
    _POLL_IN = POLLIN
    _POLL_OUT = POLLOUT

    def __init__(self, queueDepth=256, *, completionTCP=None, multishotRecv=None,
                 multishotAccept=None, recvBundles=None, recvBuffers=2048,
                 recvBufferSize=2048, largeRecvBuffers=16, largeRecvBufferSize=65536,
                 directSendThreshold=4):
        """
        @param queueDepth: SQ entries of the reactor's ring (the CQ gets 4x).
        @param completionTCP: None (default) to use the completion-based transports
            of L{txuring.tcp} and L{txuring.unix} for TCP and UNIX streams where the
            kernel has provided-buffer rings (5.19); False for Twisted's own
            transports over poll ops.
        @param multishotRecv: None to use multishot recv where the kernel has it
            (6.0); False to force one single-shot recv per completion.
        @param multishotAccept: None to use multishot accept where the kernel has it
            (5.19); False to force single-shot accepts.
        @param recvBundles: None to let one recv completion fill several receive
            buffers (all the socket has queued: C{IORING_RECVSEND_BUNDLE}) where the
            kernel has it (6.10); False to force one buffer per completion.
        @param recvBuffers: buffers in the shared receive buffer ring (a power of 2):
            at least as many as connections that may receive in one loop pass (one
            buffer each; a recv that finds none ends with ENOBUFS and is re-armed).
        @param recvBufferSize: bytes per receive buffer (a message bigger than one
            comes over several: one bundle where the kernel has them, 6.10).
        @param largeRecvBuffers: buffers in the ring of large receive buffers that
            streams move to (a power of 2); 0 for none (streams stay on the shared
            ring).
        @param largeRecvBufferSize: bytes per large receive buffer.
        @param directSendThreshold: when at most this many connections flush in one
            loop pass, they call send(2) directly instead of submitting a send op (a
            reply then leaves without a completion round trip); 0 never does.
        """
        _checkTransportOptions(recvBuffers, recvBufferSize, directSendThreshold)
        self.ring = Ring(queueDepth, start_disabled=True)
        self._multishotPoll = self.ring.op_supported("poll_add_multishot")
        self._reads = set()
        self._writes = set()
        self._selectables = {}
        self._polls = {}
        self._tryWrites = []
        ring = self.ring
        if completionTCP is None:
            completionTCP = ring.op_supported("accept_multishot")  # rings came in 5.19 too
        self._completionTCP = bool(completionTCP)
        self._multishotRecv = int(ring.op_supported("recv_multishot")
                                  if multishotRecv is None else bool(multishotRecv))
        self._multishotAccept = (ring.op_supported("accept_multishot")
                                 if multishotAccept is None else bool(multishotAccept))
        from txuring.tcp import FEAT_RECVSEND_BUNDLE, RECV_BUNDLE
        hasBundles = bool(ring.features & FEAT_RECVSEND_BUNDLE)
        #: RECV_BUNDLE (or 0) for the ioprio of every recv the transports arm
        self._recvBundle = RECV_BUNDLE if (hasBundles if recvBundles is None
                                           else recvBundles and hasBundles) else 0
        self._recvBufferCount = recvBuffers
        self._recvBufferSize = recvBufferSize
        self._largeRecvBufferCount = largeRecvBuffers
        self._largeRecvBufferSize = largeRecvBufferSize
        self._recvBufsLarge = None
        #: the receive buffer groups made so far (their buffers go back after a batch)
        self._recvGroups = []
        self._directSendThreshold = directSendThreshold
        self._recvBufs = None
        #: completion transports to visit at the end of this loop pass (_runPasses)
        self._passQueue = []
        #: whether this pass's flushes call send(2) directly
        self._directSend = False
        #: the log context stack of the reactor's thread (twisted.python.context)
        self._logContexts = context.theContextTracker.currentContext().contexts
        posixbase.PosixReactorBase.__init__(self)

    def _wakerFactory(self):
        return _EventFDWaker()

    # ---- IReactorDaemonize: twistd forks after the reactor exists ----

    def beforeDaemonize(self):
        """Nothing to do: the child replaces the ring (see L{afterDaemonize})."""

    def afterDaemonize(self):
        """
        In the daemon (a fork of the process that built this reactor), the ring's
        memory is shared with the parent and must not be touched: close the child's
        copy, make a new ring, and poll again every registered descriptor.
        """
        old = self.ring
        if not old._forked:
            return  # no fork happened: the ring is this process's own
        old.exit()  # marked forked: closes the inherited fd and mappings only
        self.ring = Ring(old.queue_depth, start_disabled=True)
        self._recvBufs = self._recvBufsLarge = None
        self._recvGroups = []
        for poll in self._polls.values():
            poll.live = False
        self._polls = {}
        renewed = set()
        for fds, direction in ((self._reads, POLLIN), (self._writes, POLLOUT)):
            for fd in fds:
                selectable = self._selectables[fd]
                if getattr(selectable, "_txuringCompletion", False):
                    if selectable not in renewed:
                        renewed.add(selectable)
                        selectable._newRing()
                else:
                    self._arm(fd, selectable, direction)

    # ---- IReactorFDSet ----

    def addReader(self, reader):
        """
        Have C{reader.doRead} called whenever its fd is readable.

        A regular file (or a block device) is accepted, and is always readable: the
        kernel's poll of a file without a poll method reports it readable and writable
        at once, so C{doRead} is called on every iteration until C{removeReader}, and
        the loop does not sleep meanwhile. EPollReactor gets EPERM from C{epoll_ctl}
        for such a file and falls back to L{posixbase._ContinuousPolling}, which also
        calls C{doRead} over and over (every millisecond); the visible behaviour is
        the same, this one without the millisecond timer. The same holds for
        C{addWriter}.
        """
        self._add(reader, self._reads, POLLIN)

    def addWriter(self, writer):
        """Have C{writer.doWrite} called whenever its fd is writable."""
        self._add(writer, self._writes, POLLOUT)

    def _add(self, selectable, primary, direction):
        if getattr(selectable, "_txuringCompletion", False):
            # A txuring.tcp transport: it registers itself and starts its own ops.
            if direction == POLLIN:
                selectable.startReading()
            else:
                selectable.startWriting()
            return
        fd = selectable.fileno()
        if fd in primary:
            return  # as on epoll: already registered in this direction
        if fd < 0:
            raise ValueError("%r has no file descriptor (fileno() is %d)" % (selectable, fd))
        primary.add(fd)
        self._selectables[fd] = selectable
        if (fd, direction) in self._polls:
            return
        if direction == POLLOUT and isinstance(selectable, tcp.Connection):
            self._tryWrites.append((fd, selectable))
        else:
            self._arm(fd, selectable, direction)

    def removeReader(self, reader):
        """Stop calling C{reader.doRead}."""
        self._remove(reader, self._reads, self._writes, POLLIN)

    def removeWriter(self, writer):
        """Stop calling C{writer.doWrite}."""
        self._remove(writer, self._writes, self._reads, POLLOUT)

    def _remove(self, selectable, primary, other, direction):
        if getattr(selectable, "_txuringCompletion", False):
            if direction == POLLIN:
                selectable.stopReading()
            else:
                selectable.stopWriting()
            return
        fd = selectable.fileno()
        if fd == -1:
            # Closed already: find it by identity, as epollreactor does.
            for fd, registered in self._selectables.items():
                if registered is selectable:
                    break
            else:
                return
        if fd not in primary:
            return
        primary.discard(fd)
        self._disarm(fd, direction)
        if fd not in other:
            del self._selectables[fd]

    def removeAll(self):
        return self._removeAll(
            [self._selectables[fd] for fd in self._reads],
            [self._selectables[fd] for fd in self._writes],
        )

    def getReaders(self):
        return [self._selectables[fd] for fd in self._reads]

    def getWriters(self):
        return [self._selectables[fd] for fd in self._writes]

    # ---- releasing the ring ----

    def close(self):
        """
        Release what this reactor holds in the kernel, its ring and its waker's
        eventfd, once it is done for good: stopped and never to run again. Not part of
        any Twisted interface (an EPollReactor's epoll fd simply lives until garbage
        collection, and a UringReactor left to the garbage collector is released too,
        by L{Ring.__del__}); it is for programs and tests that build many reactors and
        want the fds back at a known point.

        Every registered selectable is removed (not disconnected: call
        C{disconnectAll} first for that), the waker is closed, ops still in flight
        on C{self.ring} are cancelled, and once the kernel has answered every cancel
        (a poll holds a reference to its file until then) the ring is closed. Call it
        from the thread that ran the reactor: with SINGLE_ISSUER only that thread may
        submit the cancels. Idempotent.
        """
        if self.running:
            raise RuntimeError("close() a reactor only after it stopped running")
        ring = self.ring
        if ring.closed:
            return
        for reader in list(self._internalReaders):
            self.removeReader(reader)
            reader.connectionLost(None)
        self._internalReaders.clear()
        self.removeAll()
        drained = []
        if ring.active_ops:
            # The polls removed above are being cancelled; drain cancels the rest.
            ring.drain().addBoth(drained.append)
            deadline = self.seconds() + 10
            while not drained and self.seconds() < deadline:
                ring.cqe_ready(0.1)
                ring.fill_completions()
        ring.exit()  # raises RingBusy if an op outlived the 10 s
        self.waker = None

    # ---- polls on the ring ----

    def _arm(self, fd, selectable, direction):
        multishot = self._multishotPoll and getattr(selectable, "_txuringMultishot", False)
        poll = (_DrainingPoll if multishot else _Poll)(self, fd, selectable, direction)
        poll.handle = self.ring.poll_add(fd, direction, multishot=multishot, callback=poll)
        self._polls[fd, direction] = poll

    def _disarm(self, fd, direction):
        poll = self._polls.pop((fd, direction), None)
        if poll is not None:
            poll.live = False
            # The cancelled poll's Handle stays in the ring until the kernel answers,
            # or for ever (Ring.__del__ keeps the handles of a garbage-collected ring's
            # unfinished ops): it must not keep the selectable or this reactor alive.
            poll.reactor = poll.selectable = None
            self.ring._cancel_quietly(poll.handle)

    def _pollCompleted(self, poll, res, flags):
        fd, direction, selectable = poll.fd, poll.direction, poll.selectable
        final = not flags & CQE_F_MORE
        if final:
            poll.live = False
            del self._polls[fd, direction]
        primary = self._reads if direction == POLLIN else self._writes
        if fd not in primary or self._selectables.get(fd) is not selectable:
            return  # removed, or replaced, since the poll was armed
        if res == -errno.ECANCELED:
            pass  # cancelled by someone else (cancel_fd): re-armed below
        elif res < 0:
            # EBADF and the like: the fd is not what was registered any more.
            log.callWithLogger(selectable, self._disconnectSelectable, selectable,
                               posixbase._NO_FILEDESC, False)
            return
        else:
            event = res
            if direction == POLLOUT and event & _DISCONNECTED and fd in self._reads:
                # The read poll sees the same hang-up and reads what is left first.
                event &= POLLOUT
            if event:
                log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
        if final and self._wantsPoll(fd, selectable, direction):
            self._arm(fd, selectable, direction)  # level triggering: poll again

    def _wantsPoll(self, fd, selectable, direction):
        """Whether C{selectable} is still registered for C{direction} with no poll."""
        primary = self._reads if direction == POLLIN else self._writes
        return (fd in primary and self._selectables.get(fd) is selectable
                and (fd, direction) not in self._polls)

    def _writeOptimistically(self):
        """
        Call doWrite on the stream sockets that started writing since the last pass;
        those with data left over wait for writability with a poll.
        """
        pending, self._tryWrites = self._tryWrites, []
        for fd, writer in pending:
            if self._wantsPoll(fd, writer, POLLOUT):
                log.callWithLogger(writer, self._doReadOrWrite, writer, fd, POLLOUT)
                if self._wantsPoll(fd, writer, POLLOUT):
                    self._arm(fd, writer, POLLOUT)

    # ---- completion-based transports (txuring.tcp) ----

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if not self._completionTCP:
            return posixbase.PosixReactorBase.listenTCP(self, port, factory, backlog,
                                                        interface)
        from txuring import tcp as utcp
        p = utcp.Port(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def connectTCP(self, host, port, factory, timeout=30.0, bindAddress=None):
        if not self._completionTCP:
            return posixbase.PosixReactorBase.connectTCP(self, host, port, factory,
                                                         timeout, bindAddress)
        from txuring import tcp as utcp
        c = utcp.Connector(host, port, factory, timeout, bindAddress, self)
        c.connect()
        return c

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        if not self._completionTCP:
            return posixbase.PosixReactorBase.listenUNIX(self, address, factory, backlog,
                                                         mode, wantPID)
        from txuring import unix as uunix
        p = uunix.Port(address, factory, backlog, mode, self, wantPID)
        p.startListening()
        return p

    def connectUNIX(self, address, factory, timeout=30, checkPID=0):
        if not self._completionTCP:
            return posixbase.PosixReactorBase.connectUNIX(self, address, factory, timeout,
                                                          checkPID)
        from txuring import unix as uunix
        c = uunix.Connector(address, factory, timeout, self, checkPID)
        c.connect()
        return c

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        if not self._completionTCP or addressFamily not in (socket.AF_INET,
                                                            socket.AF_INET6,
                                                            socket.AF_UNIX):
            return posixbase.PosixReactorBase.adoptStreamPort(
                self, fileDescriptor, addressFamily, factory)
        if addressFamily == socket.AF_UNIX:
            from txuring import unix as uunix
            p = uunix.Port._fromListeningDescriptor(self, fileDescriptor, factory)
        else:
            from txuring import tcp as utcp
            p = utcp.Port._fromListeningDescriptor(self, fileDescriptor, addressFamily,
                                                   factory)
        p.startListening()
        return p

    def adoptStreamConnection(self, fileDescriptor, addressFamily, factory):
        if not self._completionTCP or addressFamily not in (socket.AF_INET,
                                                            socket.AF_INET6,
                                                            socket.AF_UNIX):
            return posixbase.PosixReactorBase.adoptStreamConnection(
                self, fileDescriptor, addressFamily, factory)
        if addressFamily == socket.AF_UNIX:
            from txuring import unix as uunix
            return uunix.Server._fromConnectedSocket(fileDescriptor, factory, self)
        from txuring import tcp as utcp
        return utcp.Server._fromConnectedSocket(fileDescriptor, addressFamily, factory,
                                                self)

    def _recvBuffers(self):
        """The provided-buffer ring shared by this reactor's connections (made once)."""
        bufs = self._recvBufs
        if bufs is None:
            from txuring.tcp import _RecvBuffers
            bufs = self._recvBufs = _RecvBuffers(self.ring, self._recvBufferCount,
                                                 self._recvBufferSize, self._recvBundle)
            self._recvGroups.append(bufs)
        return bufs

    def _largeRecvBuffers(self):
        """The ring of large buffers streams move to (made once), or None."""
        bufs = self._recvBufsLarge
        if bufs is None and self._largeRecvBufferCount:
            from txuring.tcp import _RecvBuffers
            bufs = self._recvBufsLarge = _RecvBuffers(
                self.ring, self._largeRecvBufferCount, self._largeRecvBufferSize,
                large=True)
            self._recvGroups.append(bufs)
        return bufs

    def _leanCancel(self, target):
        """Cancel the transport op with user_data C{target}; nobody awaits the answer."""
        from txuring.tcp import _QUIET
        ring = self.ring
        if ring._closed or ring._forked:
            return  # nothing of this ring runs any more
        if ring._owner != get_ident() and ring._owner is not None:
            # (a connection dropped from another thread: only the owner preps SQEs)
            self.callFromThread(self._leanCancel, target)
            return
        if ring._sq.backlog and ring._unqueue_user_data(target):
            return  # never submitted: ended here (its fd may be closed and reused next)
        ud = next(ring._ids)
        ring._handles[ud] = _QUIET
        if ring._sq.backlog or lib.txu_lean_cancel(ring._r, target, ud, 0) == -errno.EBUSY:
            ring._lean_queue(ud, _QUIET, lib.txu_lean_cancel, (target,))

    def _runPasses(self):
        """
        The end of a loop pass for the completion transports that asked for it: their
        sends are prepared here (and go out with the next enter, the one that waits),
        stashed data is handed over, paused recvs are cancelled.
        """
        rounds = 0
        while self._passQueue and rounds < 8:
            rounds += 1
            pending, self._passQueue = self._passQueue, []
            self._directSend = direct = len(pending) <= self._directSendThreshold
            _passEnds(self, pending, direct)  # (the common case inlined: see there)

    # ---- the loop ----

    #: the longest wait, in seconds (Twisted's timeout(): 2**31 ms, epoll_wait's limit)
    _LONGEST_WAIT = 2147483

    if hasattr(base, "_topHandler"):
        def mainLoop(self):
            """
            Twisted's main loop (C{ReactorBase.mainLoop}), run in passes of
            L{_passes}: a pass with no timed call due, no call from a thread and no
            stop pending skips C{runUntilCurrent} and C{timeout} (they would find
            nothing to do), and the error handler is entered once for many passes
            rather than once per pass: six Python calls fewer per pass, which is per
            request when few connections are busy. An exception out of a pass is
            logged by the same handler as in Twisted's loop, and the loop goes on.
            """
            while self._started:
                with base._topHandler:
                    self._passes()
            base._log.info("Main loop terminated.")

    def _passes(self):
        """Loop passes while the reactor runs (see L{mainLoop})."""
        longest = self._LONGEST_WAIT
        while self._started:
            pending = self._pendingTimedCalls
            if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                    or self._cancellations > 50):
                self.runUntilCurrent()
                t = self.timeout()
            elif pending:
                t = pending[0].time - self.seconds()
                if t <= 0:
                    self.runUntilCurrent()  # a timed call is due
                    t = self.timeout()
                elif t > longest:
                    t = longest
            else:
                t = None
            self.doIteration(self.running and t)

    def doIteration(self, timeout):
        """
        One C{io_uring_enter}: submit what is queued and wait up to C{timeout} seconds
        (None: until something happens) for completions; then dispatch them all, and
        try the writes they started.
        """
        ring = self.ring
        self._logContexts = context.theContextTracker.currentContext().contexts
        if self._passQueue:
            # Work timed calls queued (writes, a resumed transport's stashed data):
            # done now, so this enter submits the sends; and no sleeping in the wait,
            # since it may have scheduled calls the timeout did not know about.
            self._runPasses()
            timeout = 0
        if self._tryWrites:
            # Started by timed calls: write now, and do not sleep in the wait, since
            # those writes may have scheduled calls the timeout did not know about.
            self._writeOptimistically()
            timeout = 0
        if ring.cqe_ready(timeout):
            ring.fill_completions()
        for bufs in self._recvGroups:
            pending = bufs.pending
            if pending:
                # the receive buffers of the batch, back in one call (bufs.flush())
                bufs.pending = []
                lib.txu_bufring_recycle_many(bufs.b, pending, len(pending))
        if self._passQueue:
            self._runPasses()
        if self._tryWrites:
            self._writeOptimistically()

    doPoll = doIteration


def install(queueDepth=256, **options):
    """
    Install UringReactor as C{twisted.internet.reactor}; C{options} go to
    L{UringReactor.__init__}.
    """
    from twisted.internet.main import installReactor

    reactor = UringReactor(queueDepth, **options)
    installReactor(reactor)
    return reactor


__all__ = ["UringReactor", "install"]
