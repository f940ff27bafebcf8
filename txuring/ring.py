"""
L{Ring}: one io_uring, whose operations map to Deferreds, in the style of Jane Street
async_unix's C{Io_uring_raw}.

This module is the ring's owner and its loop-facing face; the rest lives apart, one
concern each: L{txuring.params} (setup flags and their fallbacks), L{txuring.squeue}
(the SQ, the overflow queue and linked chains), L{txuring.cqueue} (harvest and
dispatch), L{txuring.opcode} (the op methods), L{txuring.handle} (one op's lifetime).

Design, and why:

  - A Ring is passive. It never blocks on its own and never touches a reactor: the loop
    that owns it calls L{Ring.submit}, L{Ring.cqe_ready} and L{Ring.fill_completions}
    (UringReactor does all three in one C{io_uring_enter} per iteration), or watches an
    eventfd given to L{Ring.register_eventfd} (see L{txuring.attach}). So a Ring can
    serve any reactor, and tests can make many.

  - One thread owns a ring. The C core prepares SQEs with the GIL released, so an op
    started from another thread would race the loop's harvest; every call that touches
    the ring refuses another thread at once, and C{reactor.callFromThread} is the way
    in. (With SINGLE_ISSUER the kernel would refuse that thread's enter anyway, too
    late to say why.)

  - Every op method returns a L{Handle} at once and never fails because the SQ is full
    (see L{txuring.squeue}).

  - user_data is a 64-bit counter shared by every ring of the process and never
    reused, so a cancel can never hit a later op that took a recycled slot
    (ocaml-uring's hazard), nor another ring's op; and a Handle names its ring, so
    another ring refuses it.

  - The Handle holds every object the kernel may read or write until the op's final
    CQE, even when the caller's Deferred was cancelled long before: the kernel answers
    a cancel when it answers it, not when Python asks. For the same reason a Ring
    garbage-collected with ops in flight is not closed under them: it cancels them and
    is closed once they are reaped.

  - No call on a closed, exited or forked ring can touch unmapped or shared memory: the
    Python checks here say what went wrong, and the C core checks its own state again
    (C{RING_OK}) so that a missed check is an error code, never a crash.

  - Setup prefers C{SINGLE_ISSUER|DEFER_TASKRUN} (6.1: completions are posted only when
    the owner enters the kernel, so the loop's single C{io_uring_enter} both submits and
    reaps, with no task-work interrupts); see L{txuring.params}. C{start_disabled=True}
    (C{IORING_SETUP_R_DISABLED}, 5.10) lets the first thread that submits become the
    owner.
"""

import errno
import itertools
import os
import threading
import weakref
from threading import get_ident

from twisted.internet.defer import Deferred, succeed
from twisted.python import log

from txuring import errors, params
from txuring._core import ffi, lib
from txuring.cqueue import CQE_F_MORE, CompletionQueue
from txuring.handle import DONE, QUEUED, Handle
from txuring.opcode import OPCODES, Operations
from txuring.params import SETUP_CHAIN, SETUP_FLAG_NAMES, SETUP_R_DISABLED, SETUP_SQPOLL
from txuring.squeue import QueuedOp, SubmissionQueue

__all__ = ["Ring", "CQE_F_MORE"]

ASYNC_CANCEL_ALL = 1 << 0  # 5.19
ASYNC_CANCEL_FD = 1 << 1  # 5.19
ASYNC_CANCEL_ANY = 1 << 2  # 5.19

#: user_data for every op of every Ring of the process: never reused, and never the
#: same on two rings, so no id can ever name another ring's op.
_user_data = itertools.count(1)
#: Ring ids, for telling a Handle of another ring (L{Handle.ring_id}).
_ring_ids = itertools.count(1)

#: Waits longer than this many seconds (a century) have no limit.
_FOREVER = 100 * 365 * 86400

#: Every open Ring, so that a fork can mark them unusable in the child.
_live_rings = weakref.WeakSet()

#: Rings garbage-collected with ops in flight. Their buffers may still be written by the
#: kernel, so they are kept (not closed) until the thread that owns them has cancelled
#: and reaped every op: see L{Ring._abandon} and L{_reap_abandoned}.
_abandoned = []


def _after_fork_in_child():
    for ring in list(_live_rings):
        ring._forked = True
        ring._r.forked = 1  # the C core refuses to touch the parent's ring from here on
        ring._cq.forked = True  # a dispatch under way (a callback forked) stops
    for ring in _abandoned:  # the parent reaps them; the child only drops its copies
        lib.txu_close(ring._r)
        ring._closed = True
    del _abandoned[:]


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reap_abandoned():
    """
    Finish the abandoned rings this thread owns: harvest what the kernel has answered
    and close those with nothing left in flight. Called when a Ring is made, so their
    number stays bounded by the ops that truly never end.
    """
    me = get_ident()
    for ring in list(_abandoned):
        if ring._owner != me and not ring._owner_gone():
            continue
        try:
            if ring._owner == me:
                ring.cqe_ready(0)
                ring.fill_completions()
            if not ring._handles or ring._owner_gone():
                _abandoned.remove(ring)
                ring.exit()
        except Exception:
            _abandoned.remove(ring)
            log.err(None, "reaping an abandoned ring")


class Ring(Operations):
    """
    One io_uring.

    Not thread-safe: one thread, the ring's I{owner}, calls every method that touches
    the ring. That is the thread that made it, or, for a ring made with
    C{start_disabled=True}, the thread that first submits (and so enables it). Calls
    from any other thread raise RuntimeError at once: on a reactor, use
    C{reactor.callFromThread}. The op methods come from L{txuring.opcode.Operations}.

    @ivar queue_depth: SQ entries the kernel gave (a power of two, >= what was asked).
    @ivar cq_depth: CQ entries (at least 4x the SQ up to the kernel's maximum, so
        bursts of completions fit).
    @ivar setup_flags: the io_uring_setup flags that were accepted.
    @ivar features: the kernel's C{IORING_FEAT_*} bits.
    @ivar on_pending: None, or a callable the Ring calls (with no argument) when an op
        is queued while nothing was waiting to be submitted: a loop that does not submit
        every iteration uses it to schedule a L{submit} (see L{txuring.attach}).
    """

    def __init__(self, queue_depth=64, *, polling_timeout=None, cq_depth=None,
                 setup="auto", start_disabled=False, ext_arg=None, batch=None,
                 on_pending=None):
        """
        @param queue_depth: SQ size wanted, 1 to 32768 (rounded up to a power of two).
        @param polling_timeout: None, or use SQPOLL with a kernel thread that sleeps
            after this many milliseconds idle (on 2 cores SQPOLL usually loses). Needs
            EXT_ARG waits (5.11).
        @param cq_depth: CQ size, queue_depth to 65536; default 4x the SQ (at least
            256, at most 65536).
        @param setup: C{"auto"} tries the setup chain; or one of C{SETUP_CHAIN}'s names
            to demand that one (raises if the kernel refuses it).
        @param start_disabled: create with C{IORING_SETUP_R_DISABLED}; the first thread
            that submits enables the ring and becomes its owner.
        @param ext_arg: None to use C{IORING_ENTER_EXT_ARG} timeouts where the kernel
            has them (5.11); False to force the older timeout-SQE way (for tests).
        @param batch: CQEs harvested per C call (default: the CQ size).
        """
        if not isinstance(queue_depth, int) or not \
                1 <= queue_depth <= params.MAX_SQ_ENTRIES:
            raise ValueError("queue_depth must be an int from 1 to %d (IORING_MAX_ENTRIES), "
                             "not %r" % (params.MAX_SQ_ENTRIES, queue_depth))
        if polling_timeout is not None and (not isinstance(polling_timeout, int)
                                            or polling_timeout < 0):
            raise ValueError("polling_timeout must be None or milliseconds >= 0")
        if setup != "auto" and setup not in SETUP_CHAIN:
            raise ValueError("setup must be 'auto' or one of %s" % (sorted(SETUP_CHAIN),))
        if batch is not None and (not isinstance(batch, int) or
                                  not 0 < batch <= params.MAX_CQ_ENTRIES):
            raise ValueError("batch must be None or an int from 1 to %d (the largest CQ)"
                             % (params.MAX_CQ_ENTRIES,))
        cq_entries = params.cq_entries_for(queue_depth, cq_depth)
        if _abandoned:
            _reap_abandoned()
        self._id = next(_ring_ids)
        self._r = ffi.new("struct txu_ring *")
        self._r.fd = -1
        self._forked = False
        self._closed = True
        # The owner thread; none yet for a disabled ring: any thread may queue ops
        # until one submits, enables it, and becomes the owner (see _enable).
        self._owner = None if start_disabled else get_ident()
        self._owner_thread = None if start_disabled else threading.current_thread()
        params.create(self._r, queue_depth, cq_entries, setup, start_disabled,
                      polling_timeout)
        try:
            self._init_state(ext_arg, start_disabled, on_pending, batch)
        except BaseException:
            lib.txu_close(self._r)  # (nothing else was given to the kernel yet)
            raise
        self._closed = False
        _live_rings.add(self)

    # ---- lifecycle: owner thread, fork, exit ----

    def _init_state(self, ext_arg, start_disabled, on_pending, batch):
        """The Python side of a ring the kernel has just made (see __init__)."""
        self.queue_depth = self._r.sq_entries
        self.cq_depth = self._r.cq_entries
        self.setup_flags = self._r.setup_flags & ~params.SETUP_CQSIZE
        self.features = self._r.features
        self._ext_arg = bool(self.features & params.FEAT_EXT_ARG) if ext_arg is None \
            else bool(ext_arg and self.features & params.FEAT_EXT_ARG)
        if self.setup_flags & SETUP_SQPOLL and not self._ext_arg:
            # Before EXT_ARG a wait is bounded by a timeout SQE whose timespec lives in
            # the ring's struct; the SQ thread may read it after a later wait rewrote
            # it (or after the struct is gone). SQPOLL before 5.11 needed root anyway.
            raise ValueError("SQPOLL (polling_timeout) needs EXT_ARG waits (Linux "
                             "5.11); this ring has none")
        self._disabled = bool(start_disabled)
        self.on_pending = on_pending
        self._pending_notified = False  # on_pending was called since the last submit
        #: fresh user_data for an op (shared by every ring: see _user_data)
        self._ids = _user_data
        #: user_data -> the op's target (a Handle) for every op queued or in flight
        self._handles = {}
        self._sq = SubmissionQueue(self._r, self._handles)
        self._cq = CompletionQueue(self._r, self._handles, batch or self.cq_depth)
        self._dispatching = False
        self._drain_waiters = []
        self._fixed = None  # the registered fixed buffer's Region, if any
        self._buffer_rings = {}
        # With TASKRUN_FLAG the kernel says when an enter is needed to post CQEs.
        self._taskrun_flag = bool(self.setup_flags & params.SETUP_TASKRUN_FLAG)
        self._supported = self._probe()
        #: op names the kernel has: one set lookup per op call (see Operations._require)
        self._ops_ok = frozenset(name for name in OPCODES if self.op_supported(name))

    def _probe(self):
        supported = ffi.new("unsigned char[256]")
        if lib.txu_probe(self._r, supported, 256) < 0:
            # Before 5.6 there is no probe: let the kernel answer each op instead.
            return bytes([1]) * 256
        return bytes(supported)

    def _check_thread(self):
        """Raise unless the calling thread owns this ring (or nobody does yet)."""
        if get_ident() != self._owner and self._owner is not None:
            self._check_usable()

    def _check_usable(self):
        """Raise unless the calling thread may use this ring now."""
        if self._forked:
            raise errors.RingForked(
                "this ring belongs to the parent process (pid changed by fork); "
                "make a new Ring in the child")
        if self._closed:
            raise errors.RingClosed("the ring is closed; make a new Ring")
        if get_ident() != self._owner and self._owner is not None:
            raise RuntimeError(
                "this ring belongs to thread %r, the thread that created or enabled it; "
                "only that thread may use it. From another thread go through "
                "reactor.callFromThread, or make the ring with start_disabled=True so "
                "that the thread that first submits becomes its owner"
                % (self._owner_thread.name,))

    def exit(self):
        """
        Close the ring. Refused with L{RingBusy} while ops are in flight (see L{drain}),
        since the kernel could still write into their buffers, and inside a
        C{ring.linked()} block. Only the owner thread may close it, unless that thread
        has ended: the kernel cancels and waits for a thread's ops when it exits, so
        ops left in flight by a dead owner end here with ECANCELED. Idempotent.
        """
        if self._closed:
            return
        if self._forked:
            # The child owns a copy of the fd and mapping: close them, touch nothing.
            lib.txu_close(self._r)
            self._closed = True
            return
        if self._sq.chain is not None:
            raise errors.RingBusy("exit() inside a ring.linked() block: leave the block "
                                  "first (its ops are about to be submitted)")
        owner_gone = self._owner_gone()
        if not owner_gone:
            self._check_thread()
        if self.active_ops or len(self._sq):
            if not owner_gone:
                raise errors.RingBusy(
                    "%d operations are in flight on this ring; wait for drain() before "
                    "exit()" % (self.active_ops,))
            self._end_all(-errno.ECANCELED)
        self._release()

    def _owner_gone(self):
        """
        Whether the owner thread has ended, in the kernel too: its task (whose exit
        cancels and waits for every op it submitted) is gone from /proc.
        """
        owner = self._owner_thread
        return owner is not None and not owner.is_alive() and not os.path.exists(
            "/proc/self/task/%d" % (owner.native_id,))

    def _end_all(self, res):
        """
        End every op the kernel holds nothing of any more: first with the CQEs it
        posted (an op that ran, a close for one, must not look as if it had not), then
        the rest as if with C{res}.
        """
        if not self._dispatching:
            self._cq.dispatch()
        self._sq.clear()
        while self._handles:
            _, target = self._handles.popitem()
            try:
                target._final(res, 0)
            except Exception:
                log.err(None, "ending an op of a ring whose owner thread ended")
        self._cq.dispatch()  # (finishes deliveries an exception stopped half-way)

    def _release(self):
        """Give the ring back to the kernel (no checks: exit() and __del__ made them)."""
        for bufring in list(self._buffer_rings.values()):
            bufring._release()
        lib.txu_close(self._r)
        self._closed = True
        _live_rings.discard(self)
        if self._fixed is not None:
            self._fixed._forget()  # (after the close: its waiters may try new ops)

    def __del__(self):
        if getattr(self, "_closed", True):
            return
        try:  # (at interpreter exit, module globals may already be gone)
            if self._forked:
                self.exit()
            elif self._handles and not self._owner_gone():
                self._abandon()
            else:
                # Nothing in flight (or a dead owner's): close, from whatever thread
                # the garbage collector runs in.
                self._handles.clear()
                self._release()
        except Exception:
            pass

    def _abandon(self):
        """
        Garbage-collected with ops in flight: the kernel may still write into their
        buffers, so the ring is kept alive (with them) until its owner thread has
        cancelled and reaped them all (L{_reap_abandoned}); nothing is freed early.
        """
        self.on_pending = None
        self._drain_waiters = []
        if self._disabled:
            # Never enabled, so nothing was ever submitted: the kernel holds nothing.
            lib.txu_close(self._r)
            self._closed = True
            _live_rings.discard(self)
            return
        for h in self._handles.values():
            if isinstance(h, Handle):
                h.callback = None  # its owner is gone: nobody to tell
                h._waiters = None
        if get_ident() == self._owner:
            try:
                self.cancel_all()
                # Most ops (polls, socket ops) answer a cancel at once: reap them now.
                for _ in range(3):
                    self.cqe_ready(0)
                    self.fill_completions()
                    if not self._handles:
                        self.exit()
                        return
            except Exception:
                pass
        _abandoned.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.exit()

    @property
    def fd(self):
        """The ring's file descriptor (-1 once closed)."""
        return self._r.fd

    @property
    def closed(self):
        return self._closed

    # ---- probe ----

    def op_supported(self, op):
        """
        Whether the running kernel has io_uring operation C{op} (a name from
        L{txuring.opcode.OPCODES}, or an opcode number).
        """
        if isinstance(op, str):
            info = OPCODES.get(op)
            if info is None:
                raise ValueError("unknown io_uring operation %r" % (op,))
            if not self._supported[info.opcode]:
                return False
            if isinstance(info.requires, int):
                return bool(self.features & info.requires)
            return info.requires is None or self.op_supported(info.requires)
        if not isinstance(op, int) or not 0 <= op < 256:
            raise ValueError("an opcode is an int from 0 to 255 (or a name from "
                             "txuring.opcode.OPCODES), not %r" % (op,))
        return bool(self._supported[op])

    def get_probe(self):
        """The names of the operations this kernel supports."""
        return sorted(name for name in OPCODES if self.op_supported(name))

    def supports_ext_arg(self):
        """Whether waits use C{IORING_ENTER_EXT_ARG} timeouts (5.11) on this ring."""
        return self._ext_arg

    # ---- queueing SQEs ----

    def _new_handle(self, op, keep=(), convert=None, release=None, callback=None,
                    filename=None, filename2=None, ok_errnos=()):
        # Explicit parameters, passed on positionally: no kwargs dict per op.
        return Handle(next(_user_data), self._id, op, keep, convert, release, callback,
                      filename, filename2, ok_errnos)

    def _push(self, handle, prep, *args):
        """
        Prepare C{handle}'s SQE with C{prep(ring, *args, user_data, sqe_flags)}, or
        queue it behind the ones already waiting. Returns the handle.
        """
        if self._closed or self._forked or get_ident() != self._owner:
            self._check_usable()  # (a disabled ring has no owner yet: anyone may queue)
        if self._sq.push(handle, prep, args) and not self._disabled:
            # The SQ is full: give it to the kernel to make room. The op is queued
            # whatever happens; an enter that fails is reported by the loop's own
            # next submit or wait, not to the caller of an op method.
            try:
                self.submit()
            except Exception:
                pass
        if self.on_pending is not None and not self._pending_notified:
            self._notify_pending()
        return handle

    def _notify_pending(self):
        """Tell on_pending, once per submit, that something waits to be submitted."""
        if self.on_pending is not None and not self._pending_notified:
            self._pending_notified = True
            self.on_pending()

    def _own(self, handle):
        """Refuse a Handle of another ring: its user_data means nothing here."""
        if getattr(handle, "ring_id", None) != self._id:
            if not isinstance(handle, Handle):
                raise TypeError("expected a txuring Handle, not %s" % (type(handle).__name__,))
            raise ValueError("%r belongs to another ring; pass it to the ring that started "
                             "it" % (handle,))
        return handle

    def linked(self, *, hard=False):
        """
        A context manager: the ops started inside it form one chain
        (C{IOSQE_IO_LINK}, 5.3): each starts only after the previous one succeeded,
        and a failure (a short read or write counts as one) cancels the rest with
        ECANCELED. A L{link_timeout} in the chain bounds the op before it. The chain
        enters the SQ whole, never split.

            with ring.linked():
                h = ring.read(fd, buf)
                ring.link_timeout(1.0)

        With C{hard=True} (C{IOSQE_IO_HARDLINK}, 5.5) each op still waits for the one
        before, but runs whatever its result: a read then the close of its fd.
        """
        return _Chain(self, hard)

    @property
    def _linking(self):
        """The chain being built (a list of queued ops), or None."""
        return self._sq.chain

    # ---- loop-facing calls (Io_uring_raw) ----

    @property
    def sqe_ready(self):
        """Ops prepared in the SQ, or queued behind it, that the kernel has not taken."""
        if self._closed or self._forked:
            return 0
        return lib.txu_sq_ready(self._r) + self._sq.waiting

    @property
    def cq_ready(self):
        """CQEs posted and not yet dispatched (no system call: with DEFER_TASKRUN, more
        may be waiting for the next enter)."""
        if self._closed or self._forked:
            return 0
        return lib.txu_cq_ready(self._r) + self._cq.undispatched + self._cq.unfinished

    @property
    def active_ops(self):
        """Ops started and not yet finished (final CQE not yet fully delivered)."""
        return len(self._handles) + self._cq.unfinished

    def has_pending_jobs(self):
        """Whether anything is queued, in the SQ or in flight."""
        return bool(self.active_ops or len(self._sq) or self.sqe_ready)

    def _enable(self):
        """
        Check the calling thread may use the ring, and enable a ring made with
        C{start_disabled}: the calling thread becomes its owner, the one that may
        submit (SINGLE_ISSUER) and whose enters post completions.
        """
        if self._disabled and not self._closed and not self._forked:
            err = lib.txu_enable_rings(self._r)
            if err < 0:
                raise errors.error_of_errno(err)
            self._owner = get_ident()
            self._owner_thread = threading.current_thread()
            self._disabled = False
            self.setup_flags &= ~SETUP_R_DISABLED
        self._check_usable()

    def _enter_error(self, ret):
        if ret == -errno.EEXIST and self.setup_flags & params.SETUP_SINGLE_ISSUER:
            # The kernel's answer to a submit from a thread other than the issuer.
            return RuntimeError(
                "this ring (SINGLE_ISSUER) belongs to the thread that created or enabled "
                "it; only that thread may submit (make it with start_disabled=True to "
                "choose the thread later)")
        return errors.error_of_errno(ret)

    def submit(self):
        """
        Give every prepared SQE (and as much of the overflow queue as fits) to the
        kernel. Returns how many SQEs the kernel took. Does not wait.
        """
        if self._closed or self._forked or self._disabled or \
                get_ident() != self._owner:
            self._enable()
        self._pending_notified = False
        r = self._r
        sq = self._sq
        total = 0
        entered = False
        while True:
            queued = len(sq)
            if queued:
                sq.fill()
            if not lib.txu_sq_ready(r):  # also SQEs a failed enter left untaken
                break
            if entered and queued and len(sq) == queued:
                break  # the kernel took nothing more (SQPOLL's thread lags): later
            entered = True
            ret = lib.txu_submit_and_wait(r, 0, -1, self._ext_arg)
            if ret == -errno.EINTR:
                continue
            if ret in (-errno.EBUSY, -errno.EAGAIN):
                break  # CQ backlog in the kernel: fill_completions() then submit again
            if ret < 0:
                raise self._enter_error(ret)
            total += ret
            if not len(sq):
                break
        return total

    def cqe_ready(self, timeout=None):
        """
        Submit what is queued and wait until a completion is ready or C{timeout}
        seconds passed (None: no limit; 0: do not wait). Returns whether completions
        are ready. A signal interrupts the wait and returns False, so that Python runs
        its handlers; the caller's loop then carries on.
        """
        if self._closed or self._forked or self._disabled or \
                get_ident() != self._owner:
            self._enable()
        self._pending_notified = False
        cq = self._cq
        r = self._r
        # (len(self._sq), cq.undispatched, cq.unfinished, read without their Python
        # calls: this runs once per loop pass)
        if self._sq.backlog or r.batch_next < r.batch_n or cq._unfinished:
            # Ops waiting in the overflow queue must reach the kernel before a blocking
            # wait, or the wait could outlast them (an SQ full of idle polls); CQEs an
            # exception left undispatched (or half-delivered) are ready now.
            self.submit()
            if self._sq.backlog or r.batch_next < r.batch_n or cq._unfinished:
                timeout = 0
        if timeout is None or timeout > _FOREVER:
            timeout_ns = -1  # (a wait of centuries, or inf: no limit)
        elif timeout <= 0:
            timeout_ns = 0
        else:
            timeout_ns = max(1, int(timeout * 1e9))
        ready = lib.txu_wait(r, timeout_ns, self._ext_arg, self._taskrun_flag)
        if ready > 0:
            return True
        if ready < 0 and ready != -errno.EINTR:
            raise self._enter_error(ready)
        return bool(cq.undispatched or cq.unfinished)

    def fill_completions(self):
        """
        Harvest every ready CQE and dispatch it to its Handle (whose Deferreds then
        fire). Returns the number of CQEs dispatched. Reentrant calls (from a callback)
        return 0. A BaseException raised meanwhile (KeyboardInterrupt) goes through at
        once; the CQEs not yet dispatched wait for the next call, none is lost.
        """
        if self._closed or self._dispatching:
            return 0
        if self._forked or get_ident() != self._owner:
            # (A fork child: the CQ mapping is shared with the parent, and harvesting
            # here would steal the parent's completions.)
            self._check_usable()
        self._dispatching = True
        try:
            total = self._cq.dispatch()
        finally:
            self._dispatching = False
        if self._drain_waiters and not self._handles and not self._cq.unfinished:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
        return total

    def register_eventfd(self, fd):
        """
        Have the kernel signal eventfd C{fd} whenever a CQE is posted (or, with
        DEFER_TASKRUN, when work is waiting for the next enter). One per ring.
        """
        self._check_usable()
        err = lib.txu_register_eventfd(self._r, fd)
        if err < 0:
            raise errors.error_of_errno(err)

    def unregister_eventfd(self):
        self._check_usable()
        err = lib.txu_unregister_eventfd(self._r)
        if err < 0:
            raise errors.error_of_errno(err)

    def set_iowq_max_workers(self, bounded=0, unbounded=0):
        """
        Cap the kernel worker threads that run this ring's blocking work (file I/O,
        5.15). 0 leaves a limit unchanged. Returns the previous C{(bounded, unbounded)}.
        """
        self._check_usable()
        for value in (bounded, unbounded):
            if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise ValueError("worker limits are ints from 0 to 2**32-1, not %r"
                                 % (value,))
        values = ffi.new("unsigned[2]", [bounded, unbounded])
        err = lib.txu_register_iowq_max_workers(self._r, values)
        if err < 0:
            raise errors.error_of_errno(err)
        return values[0], values[1]

    # ---- results and cancellation ----

    def syscall_result(self, handle):
        """
        A new Deferred that fires with the op's result (a byte count, an fd, a
        StatxResult, ...) or fails with the C{OSError} the kernel's errno maps to.

        Cancelling it asks the kernel to cancel the op; its errbacks (with
        CancelledError) run only once the kernel has released the op's buffers, and a
        result the op produced anyway (an fd) is closed rather than leaked.
        """
        self._own(handle)
        if handle.state == DONE:
            return handle._answer_again()
        return handle._add_waiter(self)

    def cancel(self, handle):
        """
        Ask the kernel to cancel C{handle}'s op. Returns a Deferred that fires (with
        None) when the kernel has answered the request; the op itself ends with its own
        CQE (usually ECANCELED). ENOENT (already finished) and EALREADY (running, will
        end soon) count as answered. An op still in the overflow queue is removed and
        ends with ECANCELED at once, and nothing is submitted.
        """
        self._own(handle)
        self._check_thread()
        chain = self._sq.chain
        if chain is not None and any(op.handle is handle for op in chain):
            raise ValueError("%r is part of the ring.linked() block being built: cancel "
                             "it once the block has ended" % (handle,))
        if self._cancelled_locally(handle):
            return succeed(None)
        return self._submit_cancel(handle.user_data, -1, 0, "cancel")

    def _cancel_quietly(self, handle):
        """
        L{cancel} for callers that need no answer (the reactor removing a poll): one
        cancel SQE, no Deferred. The op still ends with its own final CQE. Nothing to
        do on a closed ring or in a fork child (none of its ops runs here any more):
        so a transport or port can still be dropped there (disconnectAll).
        """
        if self._closed or self._forked:
            return
        if not self._cancelled_locally(handle):
            self._sq.unlinked(self._push, self._new_handle("cancel"), lib.txu_prep_cancel,
                              handle.user_data, -1, 0)

    def _cancelled_locally(self, handle):
        """
        Whether C{handle} needs no cancel SQE: it is done, or it was still in the
        overflow queue and has been ended here with ECANCELED (nothing submitted).
        """
        if handle.state == DONE:
            return True
        return handle.state == QUEUED and self._sq.unqueue(handle)

    def _unqueue_user_data(self, user_data):
        """
        End the op with C{user_data} here with ECANCELED if it still waits in the
        overflow queue (a transport's lean op: its record is no Handle); nothing is
        submitted. Returns whether it was there. Its SQE must never be prepared
        later: its fd number may belong to another file by then.
        """
        sq = self._sq
        for entry in sq.backlog:
            for handle in entry.handles:
                if handle.user_data == user_data:
                    return sq.unqueue(handle)
        return False

    def cancel_fd(self, fd):
        """Cancel every op on file descriptor C{fd} (5.19). Deferred of the count."""
        return self._submit_cancel(0, fd, ASYNC_CANCEL_FD | ASYNC_CANCEL_ALL, "cancel_fd",
                                   count=True)

    def cancel_all(self):
        """
        Cancel every op in flight on this ring. Deferred of the count of ops the
        kernel cancelled. One request where the kernel matches any op (5.19); one per
        op before that.
        """
        self._check_usable()
        while len(self._sq):
            # (Ended here, never submitted; not through cancel(), which takes Handles
            # only: a transport's queued op is a lean record.)
            self._sq.unqueue(self._sq.first_queued())
        if self.op_supported("socket"):  # IORING_ASYNC_CANCEL_ANY came with 5.19's socket
            return self._submit_cancel(0, -1, ASYNC_CANCEL_ANY | ASYNC_CANCEL_ALL,
                                       "cancel_all", count=True)
        targets = [h for h in list(self._handles.values())
                   if isinstance(h, Handle) and not h.op.startswith("cancel")]
        for h in targets:
            self.cancel(h).addErrback(log.err, "cancelling %s" % (h.op,))
        return succeed(len(targets))

    def _submit_cancel(self, target, fd, cancel_flags, op, count=False):
        h = self._new_handle(op)
        d = h._add_waiter(self)
        # A cancel never joins a ring.linked() chain that is being built: it would
        # wait behind the chain's ops (and a link_timeout would bound it, not them).
        self._sq.unlinked(self._push, h, lib.txu_prep_cancel, target, fd, cancel_flags)
        ok = (errno.ENOENT, errno.EALREADY)

        def answered(result):
            return result if count else None

        def maybe_ok(failure):
            failure.trap(OSError)
            if failure.value.errno in ok:
                return 0 if count else None
            return failure

        return d.addCallbacks(answered, maybe_ok)

    def drain(self, cancel=True):
        """
        A Deferred that fires when no op is left in flight; with C{cancel}, every op is
        cancelled first. Someone must go on driving the ring (the reactor does).
        """
        if not self.active_ops and not len(self._sq):
            return succeed(None)
        self._check_usable()
        d = Deferred()
        self._drain_waiters.append(d)
        if cancel:
            self.cancel_all().addErrback(log.err, "drain: cancelling every op")
        return d

    # ---- stats ----

    def stats(self):
        """Counters for monitoring and debugging (get_debug_stats in ocaml-uring)."""
        r = self._r
        usable = not (self._closed or self._forked)
        return {
            "sq_entries": self.queue_depth,
            "cq_entries": self.cq_depth,
            "setup_flags": [n for f, n in sorted(SETUP_FLAG_NAMES.items())
                            if self.setup_flags & f],
            "ext_arg": self._ext_arg,
            "sq_ready": lib.txu_sq_ready(r) if usable else 0,
            "cq_ready": lib.txu_cq_ready(r) if usable else 0,
            "cq_overflow": lib.txu_cq_overflow(r) if usable else 0,
            "sq_dropped": lib.txu_sq_dropped(r) if usable else 0,
            "active_ops": len(self._handles),
            "backlog": self._sq.waiting,
            "wait_timeouts_pending": r.wait_timeouts_pending,
            "submitted": r.submitted,
            "completed": self._cq.dispatched,
            "undispatched": self._cq.undispatched,
            "enters": r.enters,
            "backlogged": self._sq.backlogged,
        }

    # ---- lean path for txuring's own transports ----
    # txuring.tcp prepares its per-message SQEs itself: ring._handles[ud] = record (an
    # object with _more/_final and _cqes = None, no Handle), then lib.txu_lean_*(ring._r,
    # ..., ud, 0). Only when that finds the SQ full (or ops already queued, so order
    # must be kept: ring._sq.backlog) does it come here.

    def _lean_queue(self, user_data, record, prep, args):
        """
        A transport's op (already in C{_handles} under C{user_data}) did not fit the
        SQ: submit to make room and try again, else queue it behind the overflow
        queue, in order. Never drops it.
        """
        sq = self._sq
        if not sq.backlog and not self._disabled and not self._closed:
            self.submit()
            if not sq.backlog and prep(self._r, *args, user_data, 0) != -errno.EBUSY:
                return
        sq.queue(QueuedOp(_LeanQueued(user_data, record), prep, args))
        if self.on_pending is not None and not self._pending_notified:
            self._notify_pending()


class _LeanQueued:
    """
    A transport's op waiting in the overflow queue: what the queue's users (submit,
    cancel, cancel_all) expect of a Handle. Its completions go to the record itself,
    which stays in C{Ring._handles}.
    """

    __slots__ = ("user_data", "record", "state")
    op = "transport op"

    def __init__(self, user_data, record):
        self.user_data = user_data
        self.record = record
        self.state = QUEUED

    def _final(self, res, flags):
        self.state = DONE
        self.record._final(res, flags)


class _Chain:
    """The context manager of L{Ring.linked}."""

    def __init__(self, ring, hard):
        self._ring = ring
        self._hard = bool(hard)

    def __enter__(self):
        ring = self._ring
        ring._check_usable()
        ring._sq.begin_chain(self._hard)
        return self

    def __exit__(self, exc_type, exc, tb):
        ring = self._ring
        if ring._sq.end_chain(exc_type is not None, ring.queue_depth):
            ring._notify_pending()
            if not ring._disabled:
                ring._sq.fill()
        return False
