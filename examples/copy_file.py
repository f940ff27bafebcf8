"""
Copy a file with io_uring, from a service that stays on Twisted's default reactor:
openat2, statx, then reads and writes of 64 KiB chunks, each read's Deferred feeding the
next write.

    python examples/copy_file.py SOURCE DEST
"""

import os
import sys

from twisted.internet import defer, task

from txuring import Ring, RingDriver

CHUNK = 64 * 1024


@defer.inlineCallbacks
def copy(reactor, source, dest):
    ring = Ring(16)
    driver = RingDriver(ring, reactor)
    result = ring.syscall_result
    src = yield result(ring.openat2(source))
    dst = yield result(ring.openat2(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    try:
        size = (yield result(ring.fstat(src))).st_size
        buf = bytearray(CHUNK)
        offset = 0
        while offset < size:
            n = yield result(ring.read(src, buf, offset))
            if n == 0:
                break
            written = 0
            while written < n:
                written += yield result(
                    ring.write(dst, memoryview(buf)[written:n], offset + written))
            offset += n
        yield result(ring.fsync(dst))
    finally:
        yield result(ring.close(src))
        yield result(ring.close(dst))
        driver.detach()
        ring.exit()
    print("copied %d bytes from %s to %s with io_uring (%s)"
          % (offset, source, dest, ", ".join(ring.stats()["setup_flags"])))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    task.react(copy, sys.argv[1:])
