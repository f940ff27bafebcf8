"""
The submission side of a L{txuring.ring.Ring}: SQEs, the FIFO overflow queue behind
the SQ, and linked chains.

Why it is built this way:

  - An op never fails because the SQ is full: what does not fit waits, in order, in an
    overflow queue that moves into the SQ as the kernel takes SQEs. FIFO, because a
    program may rely on two writes to one fd going out in the order it made them.

  - Once one op waits in the overflow queue, every later op waits behind it, even if
    the SQ has room by then: otherwise a later op would overtake it.

  - A linked chain (C{IOSQE_IO_LINK}, 5.3) enters the SQ whole or not at all: the
    kernel ends a chain at the end of a submission, so a chain split across two
    submissions would lose its links. And if one of its SQEs cannot be prepared, the
    ones already prepared are taken back (C{txu_sq_rollback}): left in the SQ, the last
    one's link flag would tie it to whatever unrelated op comes next.

  - The queue records are small slotted objects (L{QueuedOp}, L{QueuedChain}), so each
    rule about them lives in one place here, not in tuples decoded by their readers.
"""

import errno
from collections import deque

from twisted.python import log

from txuring import errors
from txuring._core import lib
from txuring.handle import QUEUED, SUBMITTED

IOSQE_IO_LINK = 1 << 2  # 5.3: the next SQE starts only after this one succeeded
IOSQE_IO_HARDLINK = 1 << 3  # 5.5: the next SQE starts after this one, whatever its result


class QueuedOp:
    """
    One op waiting for room in the SQ (or collected into a chain being built).

    @ivar handle: its L{txuring.handle.Handle}.
    @ivar prep: the C{lib.txu_prep_*} function that fills its SQE.
    @ivar args: prep's arguments between the ring and (user_data, sqe_flags).
    """

    __slots__ = ("handle", "prep", "args")

    def __init__(self, handle, prep, args):
        self.handle = handle
        self.prep = prep
        self.args = args

    @property
    def handles(self):
        return [self.handle]


class QueuedChain:
    """
    A linked chain waiting for room for all of its SQEs at once.

    @ivar ops: its L{QueuedOp}s, in chain order.
    @ivar link: the SQE flag joining each op to the next: C{IOSQE_IO_LINK}, or
        C{IOSQE_IO_HARDLINK} for a chain whose ops run whatever the earlier ones gave.
    """

    __slots__ = ("ops", "link")

    def __init__(self, ops, link=IOSQE_IO_LINK):
        self.ops = ops
        self.link = link

    @property
    def handles(self):
        return [op.handle for op in self.ops]


class SubmissionQueue:
    """
    Prepares SQEs for a ring, with the overflow queue and chains described above.

    @ivar chain: None, or the list of L{QueuedOp}s of the C{ring.linked()} block being
        built: ops started meanwhile join it instead of the SQ.
    @ivar backlog: the overflow queue (L{QueuedOp}s and L{QueuedChain}s); while it is
        not empty, a new op must queue behind it (FIFO).
    @ivar backlogged: how many ops ever had to wait in the overflow queue (stats).
    """

    def __init__(self, r, handles):
        """
        @param r: the ring's C{struct txu_ring *}.
        @param handles: the ring's table, user_data -> Handle, of ops in flight; an
            op enters it when it is prepared or queued.
        """
        self._r = r
        self._handles = handles
        self.backlog = deque()
        self.chain = None
        self._chain_link = IOSQE_IO_LINK  # the link flag of the chain being built
        self.backlogged = 0

    def __len__(self):
        """The number of entries (ops and chains) in the overflow queue."""
        return len(self.backlog)

    @property
    def waiting(self):
        """The number of ops in the overflow queue."""
        return sum(len(entry.handles) for entry in self.backlog)

    def push(self, handle, prep, args):
        """
        Prepare C{handle}'s SQE, or queue it (behind the ones already queued, or because
        the SQ is full). Returns True when it became the only queued entry: the caller
        should submit, to make room.
        """
        if self.chain is not None:
            self.chain.append(QueuedOp(handle, prep, args))
            return False
        # The order below keeps the table and the SQ in step even if an exception (a
        # signal handler's) lands between two steps: registered before the SQE exists,
        # and the queue record made before anything is registered.
        ud = handle.user_data
        if not self.backlog:
            r = self._r
            self._handles[ud] = handle
            handle.state = SUBMITTED
            tail = r.sqe_tail
            try:
                ret = prep(r, *args, ud, 0)
            except BaseException:
                # cffi refused an argument, or a signal handler raised after the call:
                # the handle stays exactly when its SQE exists. (Told with a field
                # read, not a call: CPython runs signal handlers again after calls.)
                if r.sqe_tail == tail:
                    del self._handles[ud]
                raise
            if ret == 0:
                return False
            del self._handles[ud]
            if ret != -errno.EBUSY:
                raise errors.RingClosed("the ring can not take SQEs (closed, or inherited "
                                        "from the parent process by fork)")
        return self.queue(QueuedOp(handle, prep, args), register=True)

    def queue(self, entry, register=False):
        """
        Append C{entry} (a L{QueuedOp}) to the overflow queue, entering its target in
        the table first with C{register} (else it is there already). Returns True when
        it is the only entry (see L{push}). (No call between the table and the append:
        CPython runs signal handlers at calls.)
        """
        handle = entry.handle
        handle.state = QUEUED
        if register:
            self._handles[handle.user_data] = handle
        self.backlog.append(entry)
        self.backlogged += 1
        return len(self.backlog) == 1

    def fill(self):
        """Move queued ops into the SQ, in FIFO order, while there is room."""
        backlog = self.backlog
        while backlog:
            entry = backlog[0]
            done = self._prep_chain(entry) if isinstance(entry, QueuedChain) else \
                self._prep_one(entry)
            if done is False:
                return  # the SQ is full
            if done:
                backlog.popleft()  # (None: it failed, and already left the queue)

    def _prep_one(self, op):
        """Prepare a queued op's SQE; False if the SQ is full."""
        handle = op.handle
        r = self._r
        tail = r.sqe_tail
        try:
            if op.prep(r, *op.args, handle.user_data, 0) == -errno.EBUSY:
                return False
        except (TypeError, ValueError, OverflowError):
            # cffi refused an argument: fail this op alone, not the whole submit.
            log.err(None, "preparing queued %s" % (handle.op,))
            self.backlog.popleft()
            self._end([handle], -errno.EINVAL)
            return None
        except BaseException:
            # A signal handler raised after the call: did the prep make the SQE? (Told
            # with a field read, not a call: CPython runs handlers again after calls.)
            if r.sqe_tail != tail:
                handle.state = SUBMITTED
                self.backlog.popleft()
            raise
        handle.state = SUBMITTED
        return True

    def _prep_chain(self, chain):
        """Prepare all of a chain's SQEs, or none; False if the SQ lacks room."""
        r = self._r
        ops = chain.ops
        if lib.txu_sq_space(r) < len(ops):
            return False
        last = len(ops) - 1
        tail = r.sqe_tail
        try:
            for i, op in enumerate(ops):
                op.prep(r, *op.args, op.handle.user_data, chain.link if i < last else 0)
        except (TypeError, ValueError, OverflowError):
            log.err(None, "preparing %s, op %d of a linked chain" % (op.handle.op, i))
            lib.txu_sq_rollback(r, r.sqe_tail - tail)  # un-prepare it, links and all
            self.backlog.popleft()
            # As the kernel ends a chain whose op fails: that op with its error, the
            # rest with ECANCELED (a hard chain too: its later ops never reached the
            # kernel, and their callers hear that they did not run).
            self._end([op.handle], -errno.EINVAL)
            self._end([o.handle for o in ops if o is not op], -errno.ECANCELED)
            return None
        except BaseException:
            # Interrupted half-way: take back what was prepared; it goes in whole later.
            lib.txu_sq_rollback(r, r.sqe_tail - tail)
            raise
        for op in ops:
            op.handle.state = SUBMITTED
        return True

    def _end(self, handles, res):
        """End ops the kernel never saw, as if their final CQE said C{res}."""
        for h in handles:
            self._handles.pop(h.user_data, None)
            h._final(res, 0)

    # ---- chains ----

    def begin_chain(self, hard=False):
        if self.chain is not None:
            raise RuntimeError("ring.linked() chains cannot be nested")
        self.chain = []
        self._chain_link = IOSQE_IO_HARDLINK if hard else IOSQE_IO_LINK

    def end_chain(self, failed, max_len):
        """
        Close the chain being built. With C{failed} (the block raised), or when it is
        longer than C{max_len} (the SQ could never hold it), its ops end here as
        cancelled, so their waiters and callbacks (a chunk's busy count) hear of it.
        Returns True when a chain was queued.
        """
        ops, self.chain = self.chain, None
        if not ops:
            return False
        if failed or len(ops) > max_len:
            for op in ops:
                op.handle._final(-errno.ECANCELED, 0)
            if not failed:
                raise ValueError("a linked chain of %d ops does not fit a ring of depth %d"
                                 % (len(ops), max_len))
            return False
        for op in ops:
            self._handles[op.handle.user_data] = op.handle
            op.handle.state = QUEUED
        self.backlog.append(QueuedChain(ops, self._chain_link))
        return True

    def unlinked(self, push, *args):
        """Call C{push(*args)} outside the chain being built, if any (cancels)."""
        chain, self.chain = self.chain, None
        try:
            return push(*args)
        finally:
            self.chain = chain

    # ---- leaving the queue ----

    def unqueue(self, handle):
        """
        Take C{handle} out of the overflow queue and end it with ECANCELED, nothing
        submitted; a chain goes as a whole (the kernel would cancel the rest anyway).
        Returns whether it was there.
        """
        for entry in self.backlog:
            if any(h is handle for h in entry.handles):
                self.backlog.remove(entry)
                self._end(entry.handles, -errno.ECANCELED)
                return True
        return False

    def clear(self):
        """Forget every queued op (the ring is ending them itself)."""
        self.backlog.clear()

    def first_queued(self):
        """The first queued op's handle, or None."""
        return self.backlog[0].handles[0] if self.backlog else None
