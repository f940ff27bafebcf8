"""
How the completion transports receive (txuring/tcp.py, txuring/csrc/core.c): recv
bundles (one CQE over several provided buffers, IORING_RECVSEND_BUNDLE, 6.10), the
large-buffer group streams move to and back from, and their fallbacks (forced off);
and the C walk that finds a bundle's buffers, on bad input.
"""

import hashlib

import pytest

from twisted.internet import error
from twisted.internet.protocol import ClientFactory, Factory, Protocol

import txuring
from txuring import tcp as utcp
from txuring._core import ffi, lib
from txuring.bufring import CQE_F_BUFFER
from txuring.reactor import UringReactor

from test_reactor_faults import cleanup, run
from test_tcp_transport import Sink, listen, pattern


def has_bundles():
    r = UringReactor()
    try:
        return bool(r._recvBundle)
    finally:
        r.close()


needs_bundles = pytest.mark.skipif(not has_bundles(),
                                   reason="the kernel has no recv bundles (6.10)")


class Recorder(Sink):
    """A Sink that keeps the size of each dataReceived."""

    def __init__(self, done=None):
        Sink.__init__(self, done)
        self.sizes = []

    def dataReceived(self, data):
        Sink.dataReceived(self, data)
        self.sizes.append(len(data))


def send_through(reactor, blobs, pause=0.0):
    """
    One client connection writes each of C{blobs} (with C{pause} seconds between them)
    and closes; returns the server's L{Recorder} and the server transport.
    """
    got = []

    class ServerFactory(Factory):
        def buildProtocol(self, addr):
            rec = Recorder(lambda s: reactor.stop())
            got.append(rec)
            return rec

    class Writer(Protocol):
        def connectionMade(self):
            self.left = list(blobs)
            self.next()

        def next(self):
            if not self.left:
                self.transport.loseConnection()
                return
            self.transport.write(self.left.pop(0))
            reactor.callLater(pause, self.next)

    port, portno = listen(reactor, ServerFactory())
    reactor.connectTCP("127.0.0.1", portno, ClientFactory.forProtocol(Writer))
    run(reactor, timeout=60)
    port.stopListening()
    rec, = got
    rec.reason.trap(error.ConnectionDone)
    return rec


# ---- the C walk over a bundle's buffers ----

def make_bufring(entries=8, size=16):
    ring = txuring.Ring(8)
    return ring, txuring.BufferRing(ring, entries, size)


def bundle(bufs, bid, res, room=None):
    out = ffi.new("uint16_t[]", room or bufs.entries)
    got = lib.txu_bufring_bundle(bufs._b, bid, res, out, room or bufs.entries)
    if got < 0:
        return got, None, None
    n = got & ~lib.TXU_BUNDLE_CONTIGUOUS
    return n, ffi.unpack(out, n), bool(got & lib.TXU_BUNDLE_CONTIGUOUS)


def test_bundle_walk_follows_the_ring_order():
    ring, bufs = make_bufring()
    try:
        # Published at setup in id order: a bundle from 2 over 40 bytes is 2, 3, 4.
        assert bundle(bufs, 2, 40) == (3, [2, 3, 4], True)
        assert bundle(bufs, 7, 16) == (1, [7], True)
        # Wraps from the last id to the first: consecutive in the ring, not in memory.
        assert bundle(bufs, 7, 17) == (2, [7, 0], False)
        # A hand-back in another order changes the ring order after the last one.
        assert lib.txu_bufring_recycle_many(bufs._b, ffi.new("uint16_t[]", [5, 1]), 2) == 2
        assert bundle(bufs, 7, 48) == (3, [7, 5, 1], False)
    finally:
        ring.exit()


def test_bundle_walk_refuses_what_does_not_match():
    ring, bufs = make_bufring()
    try:
        einval = -__import__("errno").EINVAL
        assert bundle(bufs, 8, 10)[0] == einval  # id out of range
        assert bundle(bufs, 100000, 10)[0] == einval
        assert bundle(bufs, 0, 0)[0] == einval  # no data
        assert bundle(bufs, 0, -5)[0] == einval
        assert bundle(bufs, 0, 16 * 8 + 1)[0] == einval  # more than every buffer
        assert bundle(bufs, 0, 16 * 3 + 1, room=3)[0] == einval  # more than the room
        # A lent buffer in the chain: the kernel can not have filled it.
        lib.txu_bufring_deliver(bufs._b, 3)
        bufs.lend(0, CQE_F_BUFFER | (3 << 16))
        assert bundle(bufs, 2, 40)[0] == einval
        # ... and the refused walk changed nothing: the rest of the chain still walks.
        assert bundle(bufs, 4, 64) == (4, [4, 5, 6, 7], True)
        bufs.provide(3)
        bufs.close()
        assert bundle(bufs, 0, 10)[0] == -__import__("errno").EBADFD
    finally:
        ring.exit()


def test_recv_mode_bits_are_checked():
    ring = txuring.Ring(8)
    try:
        assert lib.txu_lean_recv(ring._r, 0, 0, 1 << 0, 1, 0) == -__import__("errno").EINVAL
        ring.exit()
        assert lib.txu_lean_recv(ring._r, 0, 0, 0, 1, 0) == -__import__("errno").EBADFD
    finally:
        ring.exit()


# ---- bundles, large buffers and their fallbacks on real sockets ----

@needs_bundles
def test_bundles_deliver_more_than_one_buffer_at_once():
    """
    With bundles and no large group, data queued faster than it is read comes in
    dataReceived calls bigger than one shared buffer, whole and in order.
    """
    reactor = UringReactor(recvBufferSize=1024, recvBuffers=256, largeRecvBuffers=0)
    try:
        blob = pattern(1, 300000)
        rec = send_through(reactor, [blob])
        assert rec.hash.hexdigest() == hashlib.sha256(blob).hexdigest()
        assert max(rec.sizes) > 1024, rec.sizes
    finally:
        cleanup(reactor)


@pytest.mark.parametrize("options", [
    {"recvBundles": False, "largeRecvBuffers": 0},
    {"recvBundles": False},
    {"largeRecvBuffers": 0},
    {"multishotRecv": False, "recvBundles": False, "largeRecvBuffers": 0},
], ids=["no-bundles-no-large", "no-bundles", "no-large", "singleshot-plain"])
def test_fallbacks_deliver_whole_and_in_order(options):
    reactor = UringReactor(recvBufferSize=1024, recvBuffers=64, **options)
    try:
        blob = pattern(2, 300000)
        rec = send_through(reactor, [blob])
        assert rec.hash.hexdigest() == hashlib.sha256(blob).hexdigest()
        if options.get("recvBundles") is False:
            assert reactor._recvBundle == 0 and reactor._recvBufs.bundle == 0
        if options.get("largeRecvBuffers") == 0:
            assert reactor._recvBufsLarge is None
    finally:
        cleanup(reactor)


def test_stream_moves_to_large_buffers_and_back():
    """
    A stream moves to the large group (dataReceived calls bigger than a shared
    buffer, up to a large one), and after a run of small messages back to the
    shared group; every byte arrives in order.
    """
    reactor = UringReactor(recvBufferSize=1024, recvBuffers=64, recvBundles=False,
                           largeRecvBuffers=4, largeRecvBufferSize=8192)
    seen = []
    orig = utcp._CompletionConnection._toGroup

    def spy(self, large):
        seen.append(large)
        return orig(self, large)

    utcp._CompletionConnection._toGroup = spy
    try:
        # (pieces with pauses between them: what is queued when a recv is armed is
        # read with recv(2) instead; see _drainDirectly)
        blobs = [pattern(3 + i, 50000) for i in range(8)] + \
            [b"x" * 100] * (utcp._SMALL_RUN + 4)
        rec = send_through(reactor, blobs, pause=0.02)
        assert rec.hash.hexdigest() == hashlib.sha256(b"".join(blobs)).hexdigest()
        assert seen[:1] == [True] and False in seen, seen
        assert any(1024 < s <= 8192 for s in rec.sizes), rec.sizes
        assert reactor._recvBufsLarge is not None
    finally:
        utcp._CompletionConnection._toGroup = orig
        cleanup(reactor)


def test_streams_exhausting_the_large_buffers():
    """
    More streams than large buffers: the large group runs dry (ENOBUFS), streams fall
    back to the shared group, and every stream still arrives whole and in order.
    """
    reactor = UringReactor(recvBufferSize=1024, recvBuffers=64, largeRecvBuffers=2,
                           largeRecvBufferSize=4096)
    n, size = 20, 200000
    sinks = []

    class ServerFactory(Factory):
        def buildProtocol(self, addr):
            s = Sink(lambda s: len([x for x in sinks if x.reason]) == n and reactor.stop())
            sinks.append(s)
            return s

    class Burst(Protocol):
        def connectionMade(self):
            self.transport.write(self.factory.data)
            self.transport.loseConnection()

    try:
        port, portno = listen(reactor, ServerFactory())
        expected = []
        for i in range(n):
            f = ClientFactory.forProtocol(Burst)
            f.data = pattern(100 + i, size)
            expected.append(hashlib.sha256(f.data).hexdigest())
            reactor.connectTCP("127.0.0.1", portno, f)
        run(reactor, timeout=60)
        assert sorted(s.hash.hexdigest() for s in sinks) == sorted(expected)
        assert reactor._recvBufsLarge is not None
        assert reactor._recvBufsLarge.rearmed + reactor._recvBufs.rearmed > 0
    finally:
        cleanup(reactor)


def test_a_bundle_that_does_not_match_drops_the_connection():
    """
    A bundle CQE that does not match the ring (here: more bytes than the ring holds)
    drops the connection with ConnectionLost and logs why, rather than deliver the
    stream with a gap.
    """
    from twisted.python import log

    reactor = UringReactor(recvBufferSize=1024, recvBuffers=8)
    got = {}
    events = []

    class Server(Protocol):
        def connectionMade(self):
            got["server"] = self

        def dataReceived(self, data):
            got.setdefault("data", []).append(data)
            # as if the kernel had reported a bundle bigger than the ring (once the
            # multishot recv is armed, a pass later)
            reactor.callLater(0.05, self.bogus)

        def bogus(self):
            self.transport._recvOp._more(1024 * 8 + 1, CQE_F_BUFFER | (0 << 16))

        def connectionLost(self, reason):
            got["reason"] = reason
            reactor.callLater(0, reactor.stop)

    class Client(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello")

    log.addObserver(events.append)
    try:
        port, portno = listen(reactor, Factory.forProtocol(Server))
        reactor.connectTCP("127.0.0.1", portno, ClientFactory.forProtocol(Client))
        run(reactor, timeout=30)
        got["reason"].trap(error.ConnectionLost)
        assert got["data"] == [b"hello"]
        assert any(e.get("isError") and "does not match" in str(e.get("failure", ""))
                   for e in events)
    finally:
        log.removeObserver(events.append)
        cleanup(reactor)
