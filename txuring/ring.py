"""
L{Ring}: one io_uring, whose operations map to Deferreds, in the style of Jane Street
async_unix's C{Io_uring_raw}.

Design, and why:

  - A Ring is passive. It never blocks on its own and never touches a reactor: the loop
    that owns it calls L{Ring.submit}, L{Ring.cqe_ready} and L{Ring.fill_completions}
    (UringReactor does all three in one C{io_uring_enter} per iteration), or watches an
    eventfd given to L{Ring.register_eventfd} (see L{txuring.attach}). So a Ring can
    serve any reactor, and tests can make many.

  - Every op method returns a L{Handle} at once and never fails because the SQ is full:
    a full SQ is flushed to the kernel, and what still does not fit waits in a FIFO
    overflow queue that is moved into the SQ, in order, at the next L{submit}.

  - user_data is a 64-bit counter that is never reused, so a cancel can never hit a
    later op that took a recycled slot (ocaml-uring's hazard).

  - The Handle holds every object the kernel may read or write until the op's final
    CQE, even when the caller's Deferred was cancelled long before: the kernel answers
    a cancel when it answers it, not when Python asks.

  - Completions are harvested in batches: one C call copies up to C{batch} CQEs into
    three arrays and advances the CQ head once; Python then dispatches them.

  - Setup prefers C{SINGLE_ISSUER|DEFER_TASKRUN} (6.1: completions are posted only when
    the owner enters the kernel, so the loop's single C{io_uring_enter} both submits and
    reaps, with no task-work interrupts), then C{COOP_TASKRUN|TASKRUN_FLAG} (5.19), then
    plain. With DEFER_TASKRUN only the thread that created or enabled the ring may
    submit; C{start_disabled=True} (C{IORING_SETUP_R_DISABLED}, 5.10) lets the first
    thread that submits become that thread.
"""

import errno
import itertools
import os
import weakref
from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.python import log

from txuring import errors
from txuring._core import ffi, lib
from txuring.handle import DONE, QUEUED, SUBMITTED, Handle
from txuring.opcode import OPCODES, Operations

# io_uring_setup flags (include/uapi/linux/io_uring.h)
SETUP_SQPOLL = 1 << 1  # 5.1: a kernel thread polls the SQ
SETUP_CQSIZE = 1 << 3  # 5.5
SETUP_R_DISABLED = 1 << 6  # 5.10: start disabled, enable with REGISTER_ENABLE_RINGS
SETUP_SUBMIT_ALL = 1 << 7  # 5.18
SETUP_COOP_TASKRUN = 1 << 8  # 5.19: no IPI to run task work
SETUP_TASKRUN_FLAG = 1 << 9  # 5.19
SETUP_SINGLE_ISSUER = 1 << 12  # 6.0: one task submits
SETUP_DEFER_TASKRUN = 1 << 13  # 6.1: task work runs only when the owner enters

SETUP_FLAG_NAMES = {
    SETUP_SQPOLL: "SQPOLL",
    SETUP_R_DISABLED: "R_DISABLED",
    SETUP_SUBMIT_ALL: "SUBMIT_ALL",
    SETUP_COOP_TASKRUN: "COOP_TASKRUN",
    SETUP_TASKRUN_FLAG: "TASKRUN_FLAG",
    SETUP_SINGLE_ISSUER: "SINGLE_ISSUER",
    SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
}

#: The setup flag sets tried in order, best first (see the module docstring).
#: TASKRUN_FLAG makes the kernel flag pending task work in the SQ ring, so an idle
#: zero-timeout wait can skip io_uring_enter (accepted with DEFER_TASKRUN since 6.1).
SETUP_CHAIN = {
    "defer_taskrun": SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN | SETUP_TASKRUN_FLAG
    | SETUP_SUBMIT_ALL,
    "coop_taskrun": SETUP_COOP_TASKRUN | SETUP_TASKRUN_FLAG | SETUP_SUBMIT_ALL,
    "plain": 0,
}

FEAT_EXT_ARG = 1 << 8  # 5.11: io_uring_enter takes a timeout (struct io_uring_getevents_arg)

CQE_F_MORE = 1 << 1

ASYNC_CANCEL_ALL = 1 << 0  # 5.19
ASYNC_CANCEL_FD = 1 << 1  # 5.19
ASYNC_CANCEL_ANY = 1 << 2  # 5.19

_MAX_QUEUE_DEPTH = 32768

#: Every open Ring, so that a fork can mark them unusable in the child.
_live_rings = weakref.WeakSet()

#: What the ops of rings garbage-collected with ops in flight hold (buffers, iovecs,
#: paths...): the kernel may still write into them while it tears the ring down, so
#: they are never freed. Only those objects: not the Handles and their callbacks.
_orphaned_buffers = []


def _after_fork_in_child():
    for ring in list(_live_rings):
        ring._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class Ring(Operations):
    """
    One io_uring.

    Not thread-safe: one thread (the loop's) calls every method. The op methods come
    from L{txuring.opcode.Operations}.

    @ivar queue_depth: SQ entries the kernel gave (a power of two, >= what was asked).
    @ivar cq_depth: CQ entries (at least 4x the SQ, so bursts of completions fit).
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
            after this many milliseconds idle (on 2 cores SQPOLL usually loses).
        @param cq_depth: CQ size; default 4x the SQ (at least 256).
        @param setup: C{"auto"} tries the setup chain; or one of C{SETUP_CHAIN}'s names
            to demand that one (raises if the kernel refuses it).
        @param start_disabled: create with C{IORING_SETUP_R_DISABLED}; the first thread
            that submits enables the ring and becomes its issuer.
        @param ext_arg: None to use C{IORING_ENTER_EXT_ARG} timeouts where the kernel
            has them (5.11); False to force the older timeout-SQE way (for tests).
        @param batch: CQEs harvested per C call (default: the CQ size).
        """
        if not isinstance(queue_depth, int) or not 1 <= queue_depth <= _MAX_QUEUE_DEPTH:
            raise ValueError("queue_depth must be an int from 1 to %d, not %r"
                             % (_MAX_QUEUE_DEPTH, queue_depth))
        if polling_timeout is not None and (not isinstance(polling_timeout, int)
                                            or polling_timeout < 0):
            raise ValueError("polling_timeout must be None or milliseconds >= 0")
        if setup != "auto" and setup not in SETUP_CHAIN:
            raise ValueError("setup must be 'auto' or one of %s" % (sorted(SETUP_CHAIN),))
        self._r = ffi.new("struct txu_ring *")
        self._r.fd = -1
        self._forked = False
        self._closed = True
        self._create(queue_depth, polling_timeout, cq_depth, setup, start_disabled)
        self._closed = False
        self.queue_depth = self._r.sq_entries
        self.cq_depth = self._r.cq_entries
        self.setup_flags = self._r.setup_flags & ~SETUP_CQSIZE
        self.features = self._r.features
        self._ext_arg = bool(self.features & FEAT_EXT_ARG) if ext_arg is None else bool(
            ext_arg and self.features & FEAT_EXT_ARG)
        self._disabled = bool(start_disabled)
        self.on_pending = on_pending
        self._pending_notified = False  # on_pending was called since the last submit
        self._ids = itertools.count(1)
        self._handles = {}
        self._backlog = deque()
        self._linking = None
        self._dispatching = False
        self._drain_waiters = []
        self._fixed = None  # the registered fixed buffer's Region, if any
        self._buffer_rings = {}
        n = batch or self.cq_depth
        self._batch = n
        self._cqe_ud = ffi.new("uint64_t[]", n)
        self._cqe_res = ffi.new("int32_t[]", n)
        self._cqe_flags = ffi.new("uint32_t[]", n)
        self._completed = 0  # CQEs dispatched
        self._backlogged = 0  # ops that had to wait in the overflow queue
        # With TASKRUN_FLAG the kernel says when an enter is needed to post CQEs.
        self._taskrun_flag = bool(self.setup_flags & SETUP_TASKRUN_FLAG)
        self._supported = self._probe()
        #: op names the kernel has: one set lookup per op call (see Operations._require)
        self._ops_ok = frozenset(name for name in OPCODES if self.op_supported(name))
        _live_rings.add(self)

    # ---- setup and teardown ----

    def _create(self, queue_depth, polling_timeout, cq_depth, setup, start_disabled):
        cq = cq_depth if cq_depth is not None else max(256, 4 * queue_depth)
        if cq < queue_depth:
            raise ValueError("cq_depth must be at least queue_depth")
        base = SETUP_R_DISABLED if start_disabled else 0
        idle = 0
        if polling_timeout is not None:
            # DEFER_TASKRUN needs a task that enters the kernel: not with SQPOLL.
            chain = [SETUP_SQPOLL]
            idle = polling_timeout
        elif setup == "auto":
            chain = list(SETUP_CHAIN.values())
        else:
            chain = [SETUP_CHAIN[setup]]
        err = 0
        for flags in chain:
            err = lib.txu_setup(self._r, queue_depth, cq, base | flags, idle)
            if err == 0:
                return
            if err != -errno.EINVAL:
                break  # EINVAL: these flags are too new for the kernel; try the next
        reason = errors.explain_setup_errno(-err)
        if reason is not None:
            raise errors.UringUnavailable(-err, reason)
        if err == -errno.ENOMEM:
            # Not "unavailable": a resource limit, named so it can be raised.
            raise OSError(errno.ENOMEM,
                              "io_uring_setup: not enough memory for a ring of %d entries. "
                              "Ring memory counts against RLIMIT_MEMLOCK (ulimit -l) for "
                              "processes without CAP_IPC_LOCK before Linux 5.12 and again "
                              "since 6.13, and against the memory cgroup in between: raise "
                              "the limit, or ask for a smaller queue_depth" % (queue_depth,))
        raise errors.error_of_errno(err)

    def _probe(self):
        supported = ffi.new("unsigned char[256]")
        if lib.txu_probe(self._r, supported, 256) < 0:
            # Before 5.6 there is no probe: let the kernel answer each op instead.
            return bytes([1]) * 256
        return bytes(supported)

    def exit(self):
        """
        Close the ring. Refused with L{RingBusy} while ops are in flight (see L{drain}),
        since the kernel could still write into their buffers. Idempotent.
        """
        if self._closed:
            return
        if self._forked:
            # The child owns a copy of the fd and mapping: close them, touch nothing.
            lib.txu_close(self._r)
            self._closed = True
            return
        if self._handles or self._backlog:
            raise errors.RingBusy(
                "%d operations are in flight on this ring; wait for drain() before exit()"
                % (self.active_ops,))
        for bufring in list(self._buffer_rings.values()):
            bufring.close()
        lib.txu_close(self._r)
        self._closed = True
        _live_rings.discard(self)

    def __del__(self):
        if getattr(self, "_closed", True):
            return
        try:  # (at interpreter exit, module globals may already be gone)
            if self._handles:
                _orphaned_buffers.extend(h._keep for h in self._handles.values() if h._keep)
            self._handles = {}
            self._backlog = deque()
            self.exit()
        except Exception:
            pass

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

    def _check_usable(self):
        if self._forked:
            raise errors.RingForked(
                "this ring belongs to the parent process (pid changed by fork); "
                "make a new Ring in the child")
        if self._closed:
            raise errors.RingClosed("the ring is closed; make a new Ring")

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
        return Handle(next(self._ids), op, keep, convert, release, callback, filename,
                      filename2, ok_errnos)

    def _push(self, handle, prep, *args):
        """
        Prepare C{handle}'s SQE with C{prep(ring, *args, user_data, sqe_flags)}, or
        queue it behind the ones already waiting. Returns the handle.
        """
        if self._closed or self._forked:
            self._check_usable()
        if self._linking is not None:
            self._linking.append((handle, prep, args))
            return handle
        queued = bool(self._backlog) or prep(self._r, *args, handle.user_data, 0) == \
            -errno.EBUSY
        # Registered only after prep: a prep that raises (cffi refusing an argument)
        # leaves nothing behind.
        self._handles[handle.user_data] = handle
        if queued:
            handle.state = QUEUED
            self._backlog.append((handle, prep, args))
            self._backlogged += 1
            if not self._disabled and len(self._backlog) == 1:
                self.submit()  # the SQ is full: give it to the kernel to make room
        else:
            handle.state = SUBMITTED
        self._notify_pending()
        return handle

    def _notify_pending(self):
        """Tell on_pending, once per submit, that something waits to be submitted."""
        if self.on_pending is not None and not self._pending_notified:
            self._pending_notified = True
            self.on_pending()

    def _fill_from_backlog(self):
        """Move queued ops into the SQ in FIFO order while there is room."""
        backlog = self._backlog
        r = self._r
        while backlog:
            handle, prep, args = backlog[0]
            if prep is None:
                # A linked chain goes in whole or not at all: a chain split across two
                # submissions would be cut by the kernel at the first one's end.
                chain = handle
                if lib.txu_sq_space(r) < len(chain):
                    return
                last = len(chain) - 1
                for i, (h, p, a) in enumerate(chain):
                    self._prep_queued(h, p, a, _IOSQE_IO_LINK if i < last else 0)
            elif not self._prep_queued(handle, prep, args, 0):
                return
            backlog.popleft()

    def _prep_queued(self, handle, prep, args, sqe_flags):
        """Prepare a queued op's SQE; False if the SQ is full."""
        try:
            if prep(self._r, *args, handle.user_data, sqe_flags) == -errno.EBUSY:
                return False
        except (TypeError, ValueError, OverflowError):
            # cffi refused an argument: fail this op alone, not the whole submit.
            log.err(None, "preparing queued %s" % (handle.op,))
            self._handles.pop(handle.user_data, None)
            handle._final(-errno.EINVAL, 0)
            return True
        handle.state = SUBMITTED
        return True

    def linked(self):
        """
        A context manager: the ops started inside it form one chain
        (C{IOSQE_IO_LINK}, 5.3): each starts only after the previous one succeeded,
        and a failure cancels the rest with ECANCELED. A L{link_timeout} in the chain
        bounds the op before it. The chain enters the SQ whole, never split.

            with ring.linked():
                h = ring.read(fd, buf)
                ring.link_timeout(1.0)
        """
        return _Chain(self)

    # ---- loop-facing calls (Io_uring_raw) ----

    @property
    def sqe_ready(self):
        """Ops prepared in the SQ, or queued behind it, that the kernel has not taken."""
        return lib.txu_sq_ready(self._r) + sum(
            len(h) if p is None else 1 for h, p, _ in self._backlog)

    @property
    def cq_ready(self):
        """CQEs posted and not yet harvested (no system call: with DEFER_TASKRUN, more
        may be waiting for the next enter)."""
        return lib.txu_cq_ready(self._r)

    @property
    def active_ops(self):
        """Ops started and not yet finished (final CQE not yet dispatched)."""
        return len(self._handles)

    def has_pending_jobs(self):
        """Whether anything is queued, in the SQ or in flight."""
        return bool(self._handles or self._backlog or lib.txu_sq_ready(self._r))

    def _enable(self):
        """
        Enable a ring made with C{start_disabled}: the calling thread becomes the one
        that may submit (SINGLE_ISSUER) and whose enters post completions.
        """
        self._check_usable()
        if self._disabled:
            err = lib.txu_enable_rings(self._r)
            if err < 0:
                raise errors.error_of_errno(err)
            self._disabled = False
            self.setup_flags &= ~SETUP_R_DISABLED

    def _enter_error(self, ret):
        if ret == -errno.EEXIST and self.setup_flags & SETUP_SINGLE_ISSUER:
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
        if self._closed or self._forked or self._disabled:
            self._enable()
        self._pending_notified = False
        r = self._r
        total = 0
        entered = False
        while True:
            queued = len(self._backlog)
            if queued:
                self._fill_from_backlog()
            if not lib.txu_sq_ready(r):  # also SQEs a failed enter left untaken
                break
            if entered and queued and len(self._backlog) == queued:
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
            if not self._backlog:
                break
        return total

    def cqe_ready(self, timeout=None):
        """
        Submit what is queued and wait until a completion is ready or C{timeout}
        seconds passed (None: no limit; 0: do not wait). Returns whether completions
        are ready. A signal interrupts the wait and returns False, so that Python runs
        its handlers; the caller's loop then carries on.
        """
        if self._closed or self._forked or self._disabled:
            self._enable()
        self._pending_notified = False
        if self._backlog:
            # Ops waiting in the overflow queue must reach the kernel before a blocking
            # wait, or the wait could outlast them (an SQ full of idle polls).
            self.submit()
            if self._backlog:
                timeout = 0
        if timeout is None:
            timeout_ns = -1
        elif timeout <= 0:
            timeout_ns = 0
        else:
            timeout_ns = max(1, int(timeout * 1e9))
        ready = lib.txu_wait(self._r, timeout_ns, self._ext_arg, self._taskrun_flag)
        if ready < 0:
            if ready == -errno.EINTR:
                return False
            raise self._enter_error(ready)
        return ready > 0

    def fill_completions(self):
        """
        Harvest every ready CQE and dispatch it to its Handle (whose Deferreds then
        fire). Returns the number of CQEs dispatched. Reentrant calls (from a callback)
        return 0.
        """
        if self._forked:
            # The CQ mapping is shared with the parent: harvesting here would steal
            # the parent's completions.
            self._check_usable()
        if self._dispatching or self._closed:
            return 0
        self._dispatching = True
        try:
            total = self._dispatch_all()
        finally:
            self._dispatching = False
        if self._drain_waiters and not self._handles:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
        return total

    def _dispatch_all(self):
        r = self._r
        handles = self._handles
        uds, ress, flagss = self._cqe_ud, self._cqe_res, self._cqe_flags
        batch = self._batch
        unpack = ffi.unpack
        total = 0
        interrupted = None
        # A callback may close the ring (ring.exit() after its last op): never touch
        # the unmapped rings after that.
        while not self._closed:
            n = lib.txu_harvest(r, uds, ress, flagss, batch)
            if n == 0:
                break
            total += n
            for ud, res, flags in zip(unpack(uds, n), unpack(ress, n), unpack(flagss, n)):
                try:
                    if flags & CQE_F_MORE:
                        handles[ud]._more(res, flags)
                    else:
                        handles.pop(ud)._final(res, flags)
                except Exception:
                    log.err(None, "dispatching a completion (user_data=%d res=%d)" % (ud, res))
                except BaseException as e:
                    # KeyboardInterrupt and the like: the CQ head has moved past this
                    # batch, so dispatch the rest of it before letting it through.
                    if interrupted is None:
                        interrupted = e
            if n < batch or interrupted is not None:
                break  # the rest (if any) is for the next iteration
        self._completed += total
        if interrupted is not None:
            raise interrupted
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
        if self._cancelled_locally(handle):
            return succeed(None)
        return self._submit_cancel(handle.user_data, -1, 0, "cancel")

    def _cancel_quietly(self, handle):
        """
        L{cancel} for callers that need no answer (the reactor removing a poll): one
        cancel SQE, no Deferred. The op still ends with its own final CQE.
        """
        if not self._cancelled_locally(handle):
            self._push_unlinked(self._new_handle("cancel"), lib.txu_prep_cancel,
                                handle.user_data, -1, 0)

    def _cancelled_locally(self, handle):
        """
        Whether C{handle} needs no cancel SQE: it is done, or it was still in the
        overflow queue and has been ended here with ECANCELED (nothing submitted).
        """
        if handle.state == DONE:
            return True
        if handle.state == QUEUED:
            removed = self._unqueue(handle)
            for h in removed:
                self._handles.pop(h.user_data, None)
                h._final(-errno.ECANCELED, 0)
            return bool(removed)
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
        while self._backlog:
            queued, prep, _ = self._backlog[0]
            self.cancel(queued[0][0] if prep is None else queued)
        if self.op_supported("socket"):  # IORING_ASYNC_CANCEL_ANY came with 5.19's socket
            return self._submit_cancel(0, -1, ASYNC_CANCEL_ANY | ASYNC_CANCEL_ALL,
                                       "cancel_all", count=True)
        targets = [h for h in list(self._handles.values()) if not h.op.startswith("cancel")]
        for h in targets:
            self.cancel(h).addErrback(log.err, "cancelling %s" % (h.op,))
        return succeed(len(targets))

    def _submit_cancel(self, target, fd, cancel_flags, op, count=False):
        h = self._new_handle(op)
        d = h._add_waiter(self)
        # A cancel never joins a ring.linked() chain that is being built: it would
        # wait behind the chain's ops (and a link_timeout would bound it, not them).
        self._push_unlinked(h, lib.txu_prep_cancel, target, fd, cancel_flags)
        ok = (errno.ENOENT, errno.EALREADY)

        def answered(result):
            return result if count else None

        def maybe_ok(failure):
            failure.trap(OSError)
            if failure.value.errno in ok:
                return 0 if count else None
            return failure

        return d.addCallbacks(answered, maybe_ok)

    def _push_unlinked(self, handle, prep, *args):
        linking, self._linking = self._linking, None
        try:
            return self._push(handle, prep, *args)
        finally:
            self._linking = linking

    def _unqueue(self, handle):
        """
        Take C{handle} out of the overflow queue; returns the handles removed with it
        (a linked chain goes as a whole: the kernel would cancel the rest anyway), or
        an empty list if it was not there.
        """
        for entry in self._backlog:
            queued = entry[0]
            if queued is handle or entry[1] is None and any(
                    h is handle for h, _, _ in queued):
                self._backlog.remove(entry)
                return [h for h, _, _ in queued] if isinstance(queued, list) else [queued]
        return []

    def drain(self, cancel=True):
        """
        A Deferred that fires when no op is left in flight; with C{cancel}, every op is
        cancelled first. Someone must go on driving the ring (the reactor does).
        """
        if not self._handles and not self._backlog:
            return succeed(None)
        d = Deferred()
        self._drain_waiters.append(d)
        if cancel:
            self.cancel_all().addErrback(log.err, "drain: cancelling every op")
        return d

    # ---- stats ----

    def stats(self):
        """Counters for monitoring and debugging (get_debug_stats in ocaml-uring)."""
        r = self._r
        closed = self._closed
        return {
            "sq_entries": self.queue_depth,
            "cq_entries": self.cq_depth,
            "setup_flags": [n for f, n in sorted(SETUP_FLAG_NAMES.items())
                            if self.setup_flags & f],
            "ext_arg": self._ext_arg,
            "sq_ready": 0 if closed else lib.txu_sq_ready(r),
            "cq_ready": 0 if closed else lib.txu_cq_ready(r),
            "cq_overflow": 0 if closed else lib.txu_cq_overflow(r),
            "sq_dropped": 0 if closed else lib.txu_sq_dropped(r),
            "active_ops": len(self._handles),
            "backlog": len(self._backlog),
            "wait_timeouts_pending": r.wait_timeouts_pending,
            "submitted": r.submitted,
            "completed": self._completed,
            "enters": r.enters,
            "backlogged": self._backlogged,
        }

    # ---- lean path for txuring's own transports ----
    # txuring.tcp prepares its per-message SQEs itself: ring._handles[ud] = record (an
    # object with _more/_final/_keep, no Handle), then lib.txu_lean_*(ring._r, ...,
    # ud). Only when that finds the SQ full (or ops already queued, so order must be
    # kept) does it come here.

    def _lean_queue(self, user_data, record, prep, args):
        """
        A transport's op (already in C{_handles} under C{user_data}) did not fit the
        SQ: submit to make room and try again, else queue it behind the overflow
        queue, in order. Never drops it.
        """
        if not self._backlog and not self._disabled and not self._closed:
            self.submit()
            if not self._backlog and prep(self._r, *args, user_data, 0) != -errno.EBUSY:
                return
        self._backlog.append((_LeanQueued(user_data, record), prep, args))
        self._backlogged += 1
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


_IOSQE_IO_LINK = 1 << 2


class _Chain:
    """The context manager of L{Ring.linked}."""

    def __init__(self, ring):
        self._ring = ring

    def __enter__(self):
        ring = self._ring
        if ring._linking is not None:
            raise RuntimeError("ring.linked() chains cannot be nested")
        ring._check_usable()
        ring._linking = []
        return self

    def __exit__(self, exc_type, exc, tb):
        ring = self._ring
        chain, ring._linking = ring._linking, None
        if not chain:
            return False
        if exc_type is not None or len(chain) > ring.queue_depth:
            # The chain never reaches the kernel: its ops end here, as cancelled, so
            # their waiters and callbacks (a Region chunk's busy count) hear of it.
            for h, _, _ in chain:
                h._final(-errno.ECANCELED, 0)
            if exc_type is None:
                raise ValueError("a linked chain of %d ops does not fit a ring of depth %d"
                                 % (len(chain), ring.queue_depth))
            return False
        for h, _, _ in chain:
            ring._handles[h.user_data] = h
            h.state = QUEUED
        ring._backlog.append((chain, None, None))
        ring._notify_pending()
        if not ring._disabled:
            ring._fill_from_backlog()
        return False
