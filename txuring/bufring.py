"""
L{BufferRing}: a provided-buffer ring (C{IORING_REGISTER_PBUF_RING}, 5.19).

The kernel picks a buffer from the ring when data arrives, not when the op is
submitted, so a multishot recv on many idle connections needs no buffer per
connection. The CQE says which buffer was used (C{flags >> 16} with
C{IORING_CQE_F_BUFFER}); the application copies the bytes out and hands the buffer back
by publishing it at the ring's tail again.
"""

from txuring import errors
from txuring._core import ffi, lib

CQE_F_BUFFER = 1 << 0
CQE_BUFFER_SHIFT = 16


class BufferRing:
    """
    C{entries} buffers of C{buffer_size} bytes, registered as buffer group
    C{group_id} of C{ring}.

    @ivar group_id: the buffer group id ops name (IOSQE_BUFFER_SELECT).
    @ivar buffer_size: the size of each buffer.
    @ivar entries: how many buffers (a power of two).
    """

    def __init__(self, ring, entries=256, buffer_size=4096, group_id=None):
        ring._check_usable()
        if not isinstance(entries, int) or entries <= 0 or entries & (entries - 1) \
                or entries > 32768:
            raise ValueError("entries must be a power of two from 1 to 32768")
        if not isinstance(buffer_size, int) or buffer_size <= 0:
            raise ValueError("buffer_size must be an int > 0")
        if group_id is None:
            group_id = next(g for g in range(65536) if g not in ring._buffer_rings)
        elif group_id in ring._buffer_rings:
            raise ValueError("buffer group %d is taken on this ring" % (group_id,))
        self._ring = ring
        self._b = ffi.new("struct txu_bufring *")
        err = lib.txu_bufring_setup(ring._r, self._b, entries, group_id)
        if err < 0:
            raise errors.error_of_errno(err)
        self.group_id = group_id
        self.entries = entries
        self.buffer_size = buffer_size
        self._mem = bytearray(entries * buffer_size)
        self._view = memoryview(self._mem)
        self._base = ffi.from_buffer(self._mem)
        ring._buffer_rings[group_id] = self
        for bid in range(entries):
            self.provide(bid)

    def provide(self, bid):
        """Hand buffer C{bid} (back) to the kernel."""
        lib.txu_bufring_provide(self._b, self._base + bid * self.buffer_size,
                                self.buffer_size, bid)

    def buffer_id(self, flags):
        """The buffer a CQE used, from its flags (None if it used none)."""
        if not flags & CQE_F_BUFFER:
            return None
        return flags >> CQE_BUFFER_SHIFT

    def take(self, res, flags):
        """
        The C{res} bytes a CQE delivered, copied out; the buffer goes back to the kernel.
        Returns b"" for a CQE that carries no buffer (EOF, error).
        """
        if not flags & CQE_F_BUFFER:
            return b""
        bid = flags >> CQE_BUFFER_SHIFT
        start = bid * self.buffer_size
        data = bytes(self._view[start:start + res]) if res > 0 else b""  # one copy
        self.provide(bid)
        return data

    def view(self, res, flags):
        """
        A zero-copy view of what a CQE delivered, and its buffer id: valid until
        C{provide(bid)} hands the buffer back, which the caller must do.
        """
        bid = flags >> CQE_BUFFER_SHIFT
        start = bid * self.buffer_size
        return self._view[start:start + max(res, 0)], bid

    def close(self):
        """Unregister the group. Ops that still name it will fail with ENOBUFS."""
        if self._ring._buffer_rings.get(self.group_id) is self:
            del self._ring._buffer_rings[self.group_id]
            lib.txu_bufring_free(self._ring._r, self._b)
