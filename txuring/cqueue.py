"""
The completion side of a L{txuring.ring.Ring}: harvest CQEs in batches and hand each
to the op it belongs to, exactly once, whatever exception lands in between.

Why it is built this way:

  - One C call (C{txu_harvest}) copies a whole batch of CQEs into three arrays and moves
    the CQ head once: one crossing of the C/Python border per batch, not per CQE.

  - Once the head has moved, the kernel has forgotten those CQEs: this batch is the only
    record of them. So the batch's bounds live in C (C{batch_n}, C{batch_next} in
    C{struct txu_ring}), set by the same C call that moves the head, and C{batch_next}
    is brought up to date whenever the loop stops. An exception raised anywhere, even a
    signal handler's KeyboardInterrupt landing between two Python instructions of this
    loop, leaves the rest of the batch there, and the next L{CompletionQueue.dispatch}
    goes on from it. (CPython runs signal handlers only at a function's entry, a
    loop's back edge and the return of a C call, never inside the plain loads and
    stores below: the one window left is the entry of the target's own method, and
    the target's C{_cqes} counter, bumped first thing there, tells whether the CQE got
    in. If it did not, it is handed over again; if it did and the target has a
    C{_finish} method, as a Handle does, that is called again at the next dispatch to
    finish delivering it: a Handle's waiters are each answered exactly once, its
    callback at most once.)

  - The targets are whatever the ring's table maps a user_data to: a
    L{txuring.handle.Handle}, or a lean record of txuring's own transports. They have
    C{_more(res, flags)} for a CQE with C{IORING_CQE_F_MORE}, C{_final(res, flags)} for
    the last one (removed from the table first), and the C{_cqes} counter. A lean
    record whose methods are another object's own (a transport's) has C{_cqes = None}:
    it takes each CQE at most once (an exception at that method's very entry loses
    the CQE rather than risk handing it over twice).
"""

from twisted.python import log

from txuring._core import ffi, lib

CQE_F_MORE = 1 << 1  # IORING_CQE_F_MORE (5.13): more CQEs follow for this SQE


class CompletionQueue:
    """
    Harvests a ring's CQEs and dispatches them to the ops in C{handles}.

    @ivar batch: how many CQEs one C call harvests at most.
    """

    def __init__(self, r, handles, batch):
        """
        @param r: the ring's C{struct txu_ring *}.
        @param handles: the ring's table, user_data -> target, of ops in flight.
        """
        self._r = r
        self._handles = handles
        self.batch = batch
        self._user_data = ffi.new("uint64_t[]", batch)
        self._res = ffi.new("int32_t[]", batch)
        self._flags = ffi.new("uint32_t[]", batch)
        #: targets whose final delivery an exception stopped half-way (their _finish
        #: goes on with it at the next dispatch)
        self._unfinished = []
        #: set in a fork child (by the ring's at-fork hook): a callback that forked
        #: returns into the loop in the child too, which must not go on handing the
        #: parent's CQEs to the child's copies of their targets
        self.forked = False

    @property
    def undispatched(self):
        """CQEs harvested and not yet handed over (an exception interrupted them)."""
        return self._r.batch_n - self._r.batch_next

    @property
    def unfinished(self):
        """Final CQEs taken whose delivery an exception stopped half-way."""
        return len(self._unfinished)

    @property
    def dispatched(self):
        """CQEs handed over so far."""
        return self._r.harvested - self.undispatched

    def dispatch(self):
        """
        Hand every ready CQE to its target: first what an interrupted call left, then
        new batches while the CQ gives full ones.
        Returns the number of CQEs handed over. A BaseException from a target (or a
        signal handler) goes through at once; the rest waits for the next call.
        """
        r = self._r
        handles = self._handles
        unpack = ffi.unpack
        batch = self.batch
        total = 0
        unfinished = self._unfinished
        while unfinished:
            finish = getattr(unfinished[0], "_finish", None)
            if finish is not None:
                finish()  # (idempotent: may run again if interrupted)
            del unfinished[0]
        while r.fd >= 0 and not self.forked:  # (a target may close the ring, or fork)
            i = r.batch_next
            n = r.batch_n
            if i >= n:
                if lib.txu_harvest(r, self._user_data, self._res, self._flags, batch) <= 0:
                    break
                continue
            if n - i <= 2:
                # (one or two CQEs, as when few connections are busy: indexing the
                # arrays costs less than making three lists)
                user_data, results, flagss = self._user_data, self._res, self._flags
            else:
                user_data = unpack(self._user_data, n)
                results = unpack(self._res, n)
                flagss = unpack(self._flags, n)
            total += n - i
            # The position lives in the local i while the batch runs (a store into the
            # C struct per CQE would cost more than the rest of this loop); whatever
            # interrupts the loop, the handler below writes it back first thing.
            try:
                while i < n:
                    if self.forked:
                        break
                    ud = user_data[i]
                    res = results[i]
                    flags = flagss[i]
                    i += 1
                    try:
                        target = handles[ud]
                        seen = target._cqes
                        if flags & CQE_F_MORE:
                            target._more(res, flags)
                        else:
                            del handles[ud]
                            target._final(res, flags)
                    except KeyError:
                        log.msg("txuring: a CQE for an unknown op (user_data=%d res=%d "
                                "flags=%#x)" % (ud, res, flags))
                    except Exception:
                        log.err(None, "dispatching a completion (user_data=%d res=%d)"
                                % (ud, res))
                    except BaseException:
                        if seen is not None and target._cqes == seen:
                            # Raised before the target took the CQE: keep it for later.
                            if not flags & CQE_F_MORE:
                                handles[ud] = target
                            i -= 1
                        elif not flags & CQE_F_MORE:
                            # Its delivery goes on at the next dispatch. (No call before
                            # the append: CPython runs signal handlers after calls.)
                            unfinished.append(target)
                        raise
            except BaseException:
                r.batch_next = i
                raise
            r.batch_next = n
            if n < batch:
                break  # the CQ is drained (more may come with the next enter)
        return total
