"""
L{Region} and L{Chunk}: a slab allocator over one registered fixed buffer, as
ocaml-uring's C{Region} and Eio's C{alloc_fixed}.

A fixed buffer is pinned and mapped by the kernel once (C{IORING_REGISTER_BUFFERS},
5.1), so C{read_fixed}/C{write_fixed} skip the per-op page pinning. Pinned pages count
against RLIMIT_MEMLOCK (since 5.12, registered buffers only) unless the process has
CAP_IPC_LOCK; when the kernel refuses, a Region made with C{fallback=True} carries on
with ordinary memory (C{fixed} is False and the ring uses plain read/write), and says so.
"""

import errno
import mmap
import warnings
from collections import deque

from twisted.internet.defer import Deferred

from txuring import errors
from txuring._core import ffi, lib


#: The kernel registers buffers of at most 1 GiB each (io_uring_register(2),
#: IORING_REGISTER_BUFFERS): larger ones fail with EFAULT or EINVAL.
_MAX_FIXED_BUFFER = 1 << 30


class Chunk:
    """
    One block of a L{Region}.

    @ivar region: the Region it belongs to.
    @ivar index: its block number.
    @ivar offset: its byte offset in the Region (ocaml-uring's C{to_offset}).
    @ivar length: its size in bytes.
    @ivar freed: whether it went back to the Region.
    """

    __slots__ = ("region", "index", "offset", "length", "_ptr", "freed", "_ops")

    def __init__(self, region, index):
        # A chunk is a pointer into its Region's memory that the kernel reads or
        # writes: outside the Region it would be anyone's memory (a fixed buffer is
        # range-checked by the kernel, but a Region without one uses plain reads).
        if not isinstance(region, Region):
            raise TypeError("a Chunk belongs to a Region, not %r (get chunks from "
                            "Region.alloc())" % (type(region).__name__,))
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError("a Chunk's index is an int, not %r" % (type(index).__name__,))
        if not 0 <= index < region._nblocks:
            raise ValueError("chunk index %d is outside the region's %d blocks"
                             % (index, region._nblocks))
        self.region = region
        self.index = index
        self.offset = index * region.block_size
        self.length = region.block_size
        self._ptr = region._base + self.offset
        self.freed = False
        self._ops = []  # Handles of the ops started on it (busy until all are done)

    def memoryview(self):
        """A zero-copy, writable view of the chunk's bytes."""
        return self.region._view[self.offset:self.offset + self.length]

    def bytes(self, nbytes=None):
        """A copy of the first C{nbytes} (default: all) of the chunk."""
        n = self.length if nbytes is None else min(nbytes, self.length)
        return bytes(self.region._view[self.offset:self.offset + n])

    def free(self):
        """Give the chunk back to its Region (see L{Region.free})."""
        self.region.free(self)

    @property
    def _busy(self):
        """Whether an op on it may still be in the kernel's hands."""
        ops = self._ops
        if ops:
            ops[:] = [h for h in ops if not h.done]
        return bool(ops)

    def __repr__(self):
        return "<Chunk %d of %r%s>" % (self.index, self.region, " freed" if self.freed else "")


class Region:
    """
    A fixed buffer of C{nblocks * block_size} bytes registered with C{ring}, handed out
    in chunks of C{block_size}. One Region per Ring (the kernel's buffer table is the
    ring's).

    @ivar ring: the Ring it is registered with.
    @ivar fixed: whether the kernel has it registered (False when it refused, and
        once the Region is closed).
    @ivar closed: whether it was closed (L{close}, or its ring's exit).
    @ivar buf_index: its index in the ring's buffer table.
    """

    def __init__(self, ring, nblocks, block_size=4096, *, fallback=True):
        from txuring.ring import Ring

        if not isinstance(ring, Ring):
            raise TypeError("a Region is registered with a Ring, not %r"
                            % (type(ring).__name__,))
        ring._check_usable()
        if not isinstance(nblocks, int) or nblocks <= 0:
            raise ValueError("nblocks must be an int > 0")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError("block_size must be an int > 0")
        if ring._fixed is not None:
            raise ValueError("this ring already has a Region; close it first")
        if nblocks * block_size > _MAX_FIXED_BUFFER and not fallback:
            raise ValueError("a registered buffer is at most 1 GiB (the kernel's limit "
                             "per buffer, whatever RLIMIT_MEMLOCK says); ask for fewer "
                             "or smaller blocks than %d x %d" % (nblocks, block_size))
        self.ring = ring
        self.block_size = block_size
        self.buf_index = 0
        self._mem = mmap.mmap(-1, nblocks * block_size)
        self._view = memoryview(self._mem)
        self._base = ffi.from_buffer("char[]", self._mem, require_writable=True)
        self._free = deque(range(nblocks))
        self._nblocks = nblocks
        self._waiters = deque()
        self.closed = False
        self.fixed = self._register(fallback)
        ring._fixed = self

    def _register(self, fallback):
        if len(self._mem) > _MAX_FIXED_BUFFER:
            warnings.warn("a %d-byte region is more than the 1 GiB the kernel registers "
                          "as one fixed buffer; carrying on without fixed buffers"
                          % (len(self._mem),), RuntimeWarning, stacklevel=3)
            return False
        iov = ffi.new("struct iovec *")
        iov.iov_base = self._base
        iov.iov_len = len(self._mem)
        err = lib.txu_register_buffers(self.ring._r, iov, 1)
        if err == 0:
            return True
        if err in (-errno.ENOMEM, -errno.EPERM, -errno.EFAULT, -errno.EOVERFLOW):
            message = (
                "could not register a %d-byte fixed buffer (%s): registered buffers are "
                "pinned and count against RLIMIT_MEMLOCK; raise it (ulimit -l, "
                "LimitMEMLOCK= in systemd, --ulimit memlock= in Docker) or grant "
                "CAP_IPC_LOCK" % (len(self._mem), errors.error_of_errno(err).strerror))
            if fallback:
                warnings.warn(message + "; carrying on without fixed buffers",
                              RuntimeWarning, stacklevel=3)
                return False
            self._view.release()
            raise errors.FixedBufferUnavailable(-err, message)
        raise errors.error_of_errno(err)

    @property
    def length(self):
        """The number of chunks."""
        return self._nblocks

    @property
    def avail(self):
        """The number of free chunks."""
        return len(self._free)

    def _check_open(self):
        if self.closed:
            raise errors.RingClosed("this region is closed; make a new Region")

    def alloc(self):
        """A free chunk; raises L{NoSpace} when none is left."""
        self._check_open()
        if not self._free:
            raise errors.NoSpace("all %d chunks of this region are in use" % (self._nblocks,))
        return Chunk(self, self._free.popleft())

    def alloc_or_wait(self):
        """
        A Deferred of a chunk: at once if one is free, else when one is freed (freed
        chunks go to waiters first, in order). Cancelling it leaves the queue.
        """
        self._check_open()
        if self._free and not self._waiters:
            d = Deferred()
            d.callback(self.alloc())
            return d
        d = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def free(self, chunk):
        """
        Return C{chunk}. Refused while an op still uses it (the kernel may be writing
        into it) and for a chunk of another region.
        """
        if not isinstance(chunk, Chunk):
            raise TypeError("Region.free() takes a Chunk, not %r" % (type(chunk).__name__,))
        if chunk.region is not self:
            raise ValueError("this chunk belongs to another region")
        if chunk.freed:
            raise ValueError("this chunk was already freed")
        if self.closed:
            chunk.freed = True  # (closed with its ring: nothing to give it back to)
            return
        if chunk._busy:
            raise RuntimeError("this chunk is used by an operation in flight; free it "
                               "after the operation completes")
        chunk.freed = True
        if self._waiters:
            self._waiters.popleft().callback(Chunk(self, chunk.index))
        else:
            self._free.append(chunk.index)

    def close(self):
        """
        Unregister the buffer. Refused while chunks are out. In a fork child nothing is
        unregistered: the ring is the parent's. Idempotent.
        """
        if self.closed:
            return
        if len(self._free) != self._nblocks:
            raise RuntimeError("%d chunks are still allocated"
                               % (self._nblocks - len(self._free),))
        ring = self.ring
        if self.fixed and not ring.closed and not ring._forked:
            ring._check_usable()
            lib.txu_unregister_buffers(ring._r)
        self._forget()

    def _forget(self):
        """Closed, with its ring's exit or by L{close}: no op may use it any more."""
        self.closed = True
        self.fixed = False
        if self.ring._fixed is self:
            self.ring._fixed = None
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(errors.RingClosed("the region was closed while waiting for a chunk"))

    def __repr__(self):
        return "<Region %d x %d bytes%s>" % (self._nblocks, self.block_size,
                                            "" if self.fixed else " (not fixed)")
