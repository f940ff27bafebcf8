"""
L{BufferRing}: a provided-buffer ring (C{IORING_REGISTER_PBUF_RING}, 5.19).

The kernel picks a buffer from the ring when data arrives, not when the op is
submitted, so a multishot recv on many idle connections needs no buffer per
connection. The CQE says which buffer was used (C{flags >> 16} with
C{IORING_CQE_F_BUFFER}); the application copies the bytes out and hands the buffer back
by publishing it at the ring's tail again.

Why the ownership rules: a buffer published twice is handed to the kernel twice, and
the kernel then writes two arrivals into one buffer; an id out of range would make it
write outside the buffers altogether. So the C core keeps, per buffer, who owns it
(published: the kernel's; delivered: a dispatched CQE carried it, marked by the op's
Handle; lent: the caller's, between L{BufferRing.lend} and L{BufferRing.provide}),
computes every address itself from a checked id, takes or lends only a delivered
buffer (a CQE taken twice, or flags made up, are refused), and refuses a hand-back of
a buffer it did not lend. The one obvious safe way to get a CQE's bytes is
L{BufferRing.take} (copy, then hand back); L{BufferRing.borrow} is the zero-copy way,
as a context manager that hands the buffer back when the block ends.
"""

import errno
import mmap
import os
from contextlib import contextmanager
from threading import get_ident

from txuring import errors
from txuring._core import ffi, lib
from txuring.ring import Ring

CQE_F_BUFFER = 1 << 0  # IORING_CQE_F_BUFFER: the CQE used a provided buffer
CQE_BUFFER_SHIFT = 16  # IORING_CQE_BUFFER_SHIFT: its id is in flags' upper 16 bits

#: A buffer group has fewer than 65536 entries, a power of two (io_register_pbuf_ring
#: refuses more, 5.19): so 32768 at most.
MAX_ENTRIES = 32768

#: The kernel reads or receives at most MAX_RW_COUNT (INT_MAX rounded down to a page)
#: bytes in one call (import_ubuf caps the length), and a CQE's result is a 32-bit
#: int: a larger buffer is never filled past this.
MAX_BUFFER_SIZE = 0x7FFFFFFF & ~(mmap.PAGESIZE - 1)


def _physical_memory():
    """The machine's RAM in bytes (None where sysconf does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


class BufferRing:
    """
    C{entries} buffers of C{buffer_size} bytes, registered as buffer group
    C{group_id} of C{ring}.

    @ivar group_id: the buffer group id ops name (IOSQE_BUFFER_SELECT).
    @ivar buffer_size: the size of each buffer.
    @ivar entries: how many buffers (a power of two).
    @ivar closed: whether the group was unregistered (L{close}, or the ring's exit).
    """

    def __init__(self, ring, entries=256, buffer_size=4096, group_id=None):
        if not isinstance(ring, Ring):
            raise TypeError("a BufferRing is registered with a txuring.Ring, not %s"
                            % (type(ring).__name__,))
        ring._check_usable()
        if not isinstance(entries, int) or entries <= 0 or entries & (entries - 1) \
                or entries > MAX_ENTRIES:
            raise ValueError("entries must be a power of two from 1 to %d (the kernel's "
                             "limit for a buffer group), not %r" % (MAX_ENTRIES, entries))
        if not isinstance(buffer_size, int) or not 0 < buffer_size <= MAX_BUFFER_SIZE:
            raise ValueError("buffer_size must be an int from 1 to %d (MAX_RW_COUNT: the "
                             "most the kernel reads or receives in one call), not %r"
                             % (MAX_BUFFER_SIZE, buffer_size))
        ram = _physical_memory()
        if ram is not None and entries * buffer_size > ram:
            raise ValueError("%d buffers of %d bytes (%d bytes) are more than this "
                             "machine's memory (%d bytes)"
                             % (entries, buffer_size, entries * buffer_size, ram))
        if group_id is None:
            group_id = next(g for g in range(65536) if g not in ring._buffer_rings)
        elif not isinstance(group_id, int) or not 0 <= group_id < 65536:
            raise ValueError("group_id must be an int from 0 to 65535")
        elif group_id in ring._buffer_rings:
            raise ValueError("buffer group %d is taken on this ring" % (group_id,))
        self._ring = ring
        self.group_id = group_id
        self.entries = entries
        self.buffer_size = buffer_size
        self.closed = True
        # The buffers: held here for as long as this object lives, and every op that
        # names the group holds this object until its final CQE (Handle keep).
        # Private anonymous memory, page-aligned, taken from the system as the kernel
        # first writes into each page (not all at once, as a zero-filled bytearray
        # would); private, so that a fork child's copy is its own.
        self._mem = mmap.mmap(-1, entries * buffer_size, flags=mmap.MAP_PRIVATE)
        self._view = memoryview(self._mem)
        self._base = ffi.from_buffer(self._mem)
        self._b = ffi.new("struct txu_bufring *")
        err = lib.txu_bufring_setup(ring._r, self._b, entries, group_id, self._base,
                                    buffer_size)
        if err < 0:
            raise errors.error_of_errno(err)
        self.closed = False
        ring._buffer_rings[group_id] = self

    def _check_caller(self):
        """Refuse a fork child and a thread other than the ring's owner (the C core
        updates the buffer ring's tail without atomics, with the GIL released)."""
        ring = self._ring
        if ring._forked or get_ident() != ring._owner and ring._owner is not None:
            ring._check_usable()

    def _bid(self, flags):
        """The buffer id a CQE names; ValueError for a CQE that used none."""
        if not flags & CQE_F_BUFFER:
            raise ValueError("this CQE carries no buffer (no IORING_CQE_F_BUFFER: EOF, an "
                             "error, or a CQE of another op); there is nothing to take")
        return flags >> CQE_BUFFER_SHIFT

    def _check(self, err, bid, doing):
        """Raise what C{err}, the C core's answer to C{doing} buffer C{bid}, means."""
        if err == 0:
            return
        if err == -errno.EBADFD:
            raise errors.RingClosed("buffer group %d is closed (by close() or the ring's "
                                    "exit()): can not go on %s buffer %d"
                                    % (self.group_id, doing, bid))
        if err == -errno.EINVAL:
            raise ValueError("buffer id %d is out of range (this group has %d buffers)"
                             % (bid, self.entries))
        if doing == "handing back":
            raise ValueError("buffer %d was not lent, so it can not be handed back: it is "
                             "the kernel's, and a second hand-back would give it to the "
                             "kernel twice" % (bid,))
        raise ValueError("buffer %d can not be %s: no CQE dispatched since it was last "
                         "handed back carries it (each CQE's buffer is taken or lent "
                         "once), or it is lent already"
                         % (bid, {"taking": "taken", "lending": "lent"}[doing]))

    @property
    def lent(self):
        """How many buffers the caller holds (lent and not handed back)."""
        return 0 if self.closed else self._b.lent

    def buffer_id(self, flags):
        """The buffer a CQE used, from its flags (None if it used none)."""
        if not flags & CQE_F_BUFFER:
            return None
        return flags >> CQE_BUFFER_SHIFT

    def take(self, res, flags):
        """
        The C{res} bytes a CQE delivered, copied out; the buffer goes back to the kernel.
        Returns b"" for a CQE that carries no buffer (EOF, error). After L{close} (a CQE
        harvested before the group was closed) the bytes are still returned, and there
        is no kernel to hand the buffer back to.
        """
        self._check_caller()
        if not flags & CQE_F_BUFFER:
            return b""
        bid = flags >> CQE_BUFFER_SHIFT
        if not 0 <= bid < self.entries:
            self._check(-errno.EINVAL, bid, "taking")
        if res < 0 or res > self.buffer_size:
            raise ValueError("a CQE result of %d bytes does not fit a %d-byte buffer"
                             % (res, self.buffer_size))
        start = bid * self.buffer_size
        data = bytes(self._view[start:start + res])  # one copy
        if not self.closed:
            self._check(lib.txu_bufring_recycle(self._b, bid), bid, "taking")
        return data

    def lend(self, res, flags):
        """
        A zero-copy view of what a CQE delivered, and its buffer id. The buffer is the
        caller's until C{provide(bid)} hands it back, which the caller must do (once);
        the view must not be used after that. Prefer L{take} or L{borrow}.
        """
        bid = self._bid(flags)
        self._check_caller()
        if self.closed:
            self._check(-errno.EBADFD, bid, "lending")
        self._check(lib.txu_bufring_lend(self._b, bid), bid, "lending")
        start = bid * self.buffer_size
        return self._view[start:start + max(0, min(res, self.buffer_size))], bid

    view = lend

    @contextmanager
    def borrow(self, res, flags):
        """
        C{with bufring.borrow(res, flags) as view:} a zero-copy memoryview of what a
        CQE delivered, for the block only: the view is released and the buffer handed
        back to the kernel when the block ends.
        """
        view, bid = self.lend(res, flags)
        try:
            yield view
        finally:
            view.release()
            if not self.closed:
                self.provide(bid)

    def provide(self, bid):
        """Hand lent buffer C{bid} back to the kernel. Refused for a buffer not lent."""
        if not isinstance(bid, int):
            raise TypeError("a buffer id is an int, not %s" % (type(bid).__name__,))
        self._check_caller()
        if self.closed:
            self._check(-errno.EBADFD, bid, "handing back")
        self._check(lib.txu_bufring_provide(self._b, bid) if 0 <= bid < 65536
                    else -errno.EINVAL, bid, "handing back")

    def close(self):
        """
        Unregister the group. Ops that still name it fail with ENOBUFS. In a fork child
        nothing is unregistered: the ring is the parent's. Idempotent.
        """
        if self.closed:
            return
        self._check_caller()
        self._release()

    def _release(self):
        """Unregister and unmap (no checks: close() and the ring's exit made them)."""
        self.closed = True
        ring = self._ring
        if ring._buffer_rings.get(self.group_id) is self:
            del ring._buffer_rings[self.group_id]
        lib.txu_bufring_free(ring._r, self._b)  # no unregister in a fork child (C checks)
