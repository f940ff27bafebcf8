"""
Drive a L{Ring} from any Twisted reactor (epoll, select, asyncio...): the Ring signals
an eventfd when completions are waiting, the reactor watches it with C{addReader}, and
ops started between two reactor iterations are submitted together by a C{callLater(0)}.

This is how async_unix integrates C{Io_uring_raw} into Async's scheduler, and how
L{txuring.fs} serves services that stay on the epoll reactor.
"""

import os

from zope.interface import implementer

from twisted.internet.interfaces import IReadDescriptor
from twisted.python import log

from txuring.ring import Ring

#: What a RingDriver calls on its reactor (IReactorFDSet and IReactorTime).
_REACTOR_METHODS = ("addReader", "removeReader", "callLater")


@implementer(IReadDescriptor)
class RingDriver:
    """
    Watches C{ring}'s eventfd on C{reactor} and submits/harvests for it.

    The reactor's thread does the submitting: a ring made with SINGLE_ISSUER (the
    default setup) must have been created in that thread, or with
    C{start_disabled=True} so that the reactor's thread enables it.

    @ivar ring: the driven Ring.
    @ivar reactor: the reactor whose loop drives it.
    """

    def __init__(self, ring, reactor):
        # Everything is checked before anything is changed: a refused RingDriver
        # leaves no eventfd registered with the ring (which takes only one).
        if not isinstance(ring, Ring):
            raise TypeError("a RingDriver drives a txuring.Ring, not %s"
                            % (type(ring).__name__,))
        missing = [name for name in _REACTOR_METHODS
                   if not callable(getattr(reactor, name, None))]
        if missing:
            raise TypeError("a RingDriver needs a reactor with %s (IReactorFDSet and "
                            "IReactorTime); %s has no %s"
                            % (", ".join(_REACTOR_METHODS), type(reactor).__name__,
                               ", ".join(missing)))
        ring._check_usable()
        self.ring = ring
        self.reactor = reactor
        self._flush_call = None
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            ring.register_eventfd(self._eventfd)  # EBUSY if it has one already
        except BaseException:
            os.close(self._eventfd)
            self._eventfd = -1
            raise
        try:
            reactor.addReader(self)
        except BaseException:
            self._eventfd, fd = -1, self._eventfd
            try:
                ring.unregister_eventfd()
            finally:
                os.close(fd)
            raise
        ring.on_pending = self._schedule_flush
        if ring.sqe_ready:
            self._schedule_flush()

    def fileno(self):
        return self._eventfd

    def logPrefix(self):
        return "txuring.RingDriver"

    def _schedule_flush(self):
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self):
        self._flush_call = None
        if self.ring.closed:
            return
        self.ring.submit()
        self._harvest()

    def doRead(self):
        if self._eventfd < 0:
            return
        if self.ring._forked:
            # A fork child: the eventfd's counter is shared with the parent, whose
            # wake-up this read would steal.
            self.ring._check_usable()
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            pass
        self._harvest()

    def _harvest(self):
        """
        One pass per reactor turn: an enter (which, with DEFER_TASKRUN, posts the
        CQEs the eventfd announced) and one dispatch. Ops that callbacks start, or
        CQEs still waiting, get another pass through callLater(0): looping here
        instead would starve the reactor's timers and other descriptors while ops
        that complete at once (page-cache reads, noops) keep chaining.
        """
        ring = self.ring
        if ring.closed or self._eventfd < 0:
            return
        if ring.cqe_ready(0):
            ring.fill_completions()
        if not ring.closed and (ring.sqe_ready or ring.cq_ready):
            self._schedule_flush()

    def connectionLost(self, reason):
        pass

    def detach(self):
        """Stop driving the ring (it stays open) and close the eventfd. Idempotent."""
        if self._eventfd < 0:
            return
        self.reactor.removeReader(self)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.ring.on_pending = None
        if not self.ring.closed and not self.ring._forked:
            try:
                self.ring.unregister_eventfd()
            except (OSError, RuntimeError):
                log.err(None, "unregistering the ring's eventfd")
        fd, self._eventfd = self._eventfd, -1
        os.close(fd)
