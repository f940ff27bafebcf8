"""
txuring: a Twisted reactor on Linux io_uring, and the io_uring API beneath it.

Layers, bottom up (see ARCHITECTURE.md): C{txuring._core} (cffi, C) -> L{Ring} and its
L{Handle}s, L{Region}s and L{BufferRing}s -> the reactor, TCP transports and file
operations.
"""

from txuring.errors import (
    FixedBufferUnavailable,
    NoSpace,
    OpNotSupported,
    RingBusy,
    RingClosed,
    RingForked,
    UringUnavailable,
    error_of_errno,
)
from txuring.handle import Handle
from txuring.ring import Ring
from txuring.region import Chunk, Region
from txuring.bufring import BufferRing
from txuring.attach import RingDriver

__all__ = [
    "Ring", "Handle", "Region", "Chunk", "BufferRing", "RingDriver",
    "UringUnavailable", "RingClosed", "RingForked", "RingBusy", "OpNotSupported",
    "NoSpace", "FixedBufferUnavailable", "error_of_errno",
]
__version__ = "0.1.0"
