"""
L{Handle}: one operation given to a L{txuring.ring.Ring}, from its SQE to its final CQE.

A Handle is the owner of everything the kernel may read or write while the op is in
flight: buffers (held through cffi buffer exports, so a bytearray cannot be resized
under the kernel), iovec arrays, path bytes, sockaddrs, msghdrs, statx buffers,
timespecs. The Ring keeps the Handle in its table until the op's I{final} CQE (for
multishot ops the first CQE without C{IORING_CQE_F_MORE}; for send_zc the notification
CQE), so those objects outlive the caller's references and any Deferred that was
cancelled early.
"""

import os

from twisted.internet.defer import CancelledError, Deferred
from twisted.python import log
from twisted.python.failure import Failure

from txuring._core import lib
from txuring.errors import error_of_errno

# Handle.state
QUEUED = 0  # waiting in the Ring's overflow queue: the kernel has not seen it
SUBMITTED = 1  # its SQE is in the ring (given to the kernel, or about to be)
DONE = 2  # its final CQE has arrived; the kernel holds nothing of it any more

_F_MORE = 1 << 1  # IORING_CQE_F_MORE: more CQEs will follow for this SQE (5.13)
_F_NOTIF = 1 << 3  # IORING_CQE_F_NOTIF: send_zc's buffer-release notification (6.0)

_F_BUFFER = 1 << 0  # IORING_CQE_F_BUFFER: the CQE used a provided buffer (5.7)
_BUFFER_SHIFT = 16  # its id is in the flags' upper 16 bits

_UNSET = object()


class Handle:
    """
    One io_uring operation.

    @ivar user_data: the 64-bit id in the SQE and its CQEs; never reused by a Ring.
    @ivar op: the operation's name (C{"read"}, C{"accept"}, ...).
    @ivar state: L{QUEUED}, L{SUBMITTED} or L{DONE}.
    @ivar result: the final CQE's C{res} (a byte count, an fd, or C{-errno}) once
        L{DONE}, else None.
    @ivar flags: the final CQE's flags once L{DONE}.
    @ivar callback: for multishot ops, called as C{callback(res, flags)} for every CQE,
        the final one included (its flags lack C{IORING_CQE_F_MORE}).
    @ivar filename: the path a path op names, for the OSError it may raise.
    @ivar ring_id: the id of the L{Ring} that owns it: a Handle is refused by any
        other ring (its user_data means nothing there).
    @ivar _cqes: how many CQEs it took; bumped first thing, so the ring's dispatch can
        tell whether an exception stopped a CQE before it got in (L{txuring.cqueue}).
    """

    __slots__ = (
        "user_data",
        "ring_id",
        "_cqes",
        "op",
        "state",
        "result",
        "flags",
        "callback",
        "filename",
        "filename2",
        "_keep",
        "_convert",
        "_release",
        "_waiters",
        "_zc_result",
        "_ok_errnos",
        "_released",
        "_taken",
        "_converted",
        "_bufring",
        "__weakref__",
    )

    def __init__(self, user_data, ring_id, op, keep=(), convert=None, release=None,
                 callback=None, filename=None, filename2=None, ok_errnos=()):
        """
        @param keep: objects the kernel may touch; held until the final CQE.
        @param convert: maps a successful C{res} to the value L{Ring.syscall_result}
            gives (a StatxResult, an (fd, address) pair, ...).
        @param release: called with the converted value when nobody will receive it
            (every Deferred for it was cancelled): closes an fd, for instance.
        @param ok_errnos: errnos that are a normal outcome (a timeout's ETIME): passed
            to C{convert} as a negative C{res} instead of failing.
        """
        self.user_data = user_data
        self.ring_id = ring_id
        self._cqes = 0
        self.op = op
        self.state = QUEUED
        self.result = None
        self.flags = 0
        self.callback = callback
        self.filename = filename
        self.filename2 = filename2
        self._keep = keep
        self._convert = convert
        self._release = release
        self._waiters = None
        self._zc_result = None
        self._ok_errnos = ok_errnos
        self._released = False  # the result was released (an fd closed): gone for good
        self._taken = False  # a waiter received the result
        self._converted = _UNSET  # the outcome, once computed
        self._bufring = None  # the struct txu_bufring * its CQEs' buffers come from

    def __repr__(self):
        return "<Handle %s #%d %s result=%r>" % (
            self.op, self.user_data, ("queued", "submitted", "done")[self.state], self.result)

    @property
    def done(self):
        """Whether the op's final CQE has arrived."""
        return self.state == DONE

    def _more(self, res, flags):
        """A CQE with C{IORING_CQE_F_MORE}: the op goes on."""
        if flags & _F_BUFFER and self._bufring is not None:
            # (Idempotent, so before the count: a CQE handed over again is marked again.)
            lib.txu_bufring_deliver(self._bufring, flags >> _BUFFER_SHIFT)
        self._cqes += 1
        if self.callback is not None:
            self.callback(res, flags)
        elif self.op == "send_zc":
            self._zc_result = res

    def _final(self, res, flags):
        """The op's last CQE: release what the kernel held, then deliver (L{_finish})."""
        if flags & _F_BUFFER and self._bufring is not None:
            lib.txu_bufring_deliver(self._bufring, flags >> _BUFFER_SHIFT)
        self._cqes += 1
        if flags & _F_NOTIF and self._zc_result is not None:
            res = self._zc_result  # the notification carries no byte count
        self.state = DONE
        self.result = res
        self.flags = flags
        self._keep = None
        if self.callback is not None or self._waiters is not None:
            self._finish()

    def _finish(self):
        """
        Deliver the final CQE: the callback (at most once), then every waiter (exactly
        once each), then the release of a result nobody took. Idempotent: when an
        exception (a signal handler's) stops it half-way, the ring calls it again and it
        goes on where it stopped (see L{txuring.cqueue}).
        """
        callback = self.callback
        if callback is not None:
            self.callback = None  # (before the call: a callback runs at most once)
            _call_safely(callback, self.result, self.flags)
        if self._waiters is not None:
            self._answer(self._waiters)
            self._waiters = None

    def _outcome(self):
        """The op's result for its waiters: a value, or a Failure. Computed once."""
        outcome = self._converted
        if outcome is _UNSET:
            res = self.result
            if res < 0 and -res not in self._ok_errnos:
                outcome = Failure(error_of_errno(res, self.filename, self.filename2))
            elif self._convert is not None:
                try:
                    outcome = self._convert(res)
                except Exception:
                    outcome = Failure()
            else:
                outcome = res
            self._converted = outcome
        return outcome

    def _answer(self, waiters):
        """
        Fire every waiter not yet fired; unpause those cancelled meanwhile (paused with
        CancelledError, waiting for the kernel to let go). Safe to run again: a waiter
        already fired is called and not paused, and is skipped.
        """
        outcome = self._outcome()
        interrupted = None
        for d in waiters:  # (nothing adds a waiter once the op is done)
            try:
                if not d.called:
                    self._taken = True
                    d.callback(outcome)
                elif d.paused:
                    d.unpause()
            except BaseException as e:  # every waiter is answered before it goes on
                if interrupted is None:
                    interrupted = e
        if not self._taken and not self._released and self._release is not None \
                and not isinstance(outcome, Failure):
            self._released = True  # (before: a result is released at most once)
            try:
                self._release(outcome)
            except Exception:
                log.err(None, "releasing the result of a cancelled %s" % (self.op,))
        if interrupted is not None:
            raise interrupted

    def _answer_again(self):
        """A Deferred of the outcome of a finished op (a later syscall_result call)."""
        d = Deferred()
        if self._released:
            # Its fd was closed when every earlier waiter cancelled: the number may
            # already name another file, so it is never handed out.
            d.errback(Failure(CancelledError(
                "%s was cancelled and its result released" % (self.op,))))
        else:
            self._answer([d])
        return d

    def _add_waiter(self, ring):
        d = Deferred(lambda d: self._cancel_waiter(d, ring))
        if self._waiters is None:
            self._waiters = [d]
        else:
            self._waiters.append(d)
        return d

    def _cancel_waiter(self, d, ring):
        """
        Deferred.cancel() on a waiter. Twisted would errback synchronously, but the
        kernel may still be writing into this op's buffers: so the Deferred is fired
        with CancelledError while paused, and unpaused at the final CQE. A cancel
        request goes to the kernel unless another waiter still wants the result.
        """
        d.pause()
        d.errback(Failure(CancelledError("%s cancelled" % (self.op,))))
        if self.state == DONE:
            return  # the final CQE is being answered: _answer unpauses d
        if all(w.called for w in self._waiters):
            ring.cancel(self)


def _call_safely(callback, res, flags):
    """A multishot callback that raises must not keep the op's waiters unanswered."""
    try:
        callback(res, flags)
    except Exception:
        log.err(None, "multishot callback %r raised" % (callback,))


def close_fd(fd):
    """Release helper: close an fd nobody received."""
    os.close(fd)
