"""
The completion transports' own write() and writeSequence() (txuring/tcp.py), which
do in one call what tcp.Connection and FileDescriptor do in several: type checks,
order of the bytes, and the streaming producer paused at the high-water mark.
"""

import hashlib

import pytest

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from txuring.reactor import UringReactor

from test_reactor_faults import cleanup, run
from test_tcp_transport import Sink, listen


@implementer(IPushProducer)
class Producer:
    def __init__(self):
        self.paused = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def test_writes_type_checks_order_and_producer():
    reactor = UringReactor()
    sinks = []
    seen = {}
    pieces = [b"head-", b"a" * 1000, b"-", b"b" * 70000, b"-tail"]
    expected = b"one;" + b"".join(pieces) + b"two;" + b"".join(pieces[:2])

    class Writer(Protocol):
        def connectionMade(self):
            t = self.transport
            for bad in ("text", bytearray(b"x"), 3):
                with pytest.raises(TypeError):
                    t.write(bad)
                with pytest.raises(TypeError):
                    t.writeSequence([b"ok", bad])
            t.writeSequence([])  # nothing
            t.write(b"")  # nothing
            producer = Producer()
            t.registerProducer(producer, True)
            t.write(b"one;")
            t.writeSequence(pieces)  # over the high-water mark (64 KiB): paused
            seen["paused"] = producer.paused
            seen["producerPaused"] = t.producerPaused
            t.write(b"two;")
            t.writeSequence(tuple(pieces[:2]))
            t.unregisterProducer()
            t.loseConnection()

    def done(sink):
        reactor.stop()

    class ServerFactory(Factory):
        def buildProtocol(self, addr):
            s = Sink(done)
            sinks.append(s)
            return s

    try:
        port, portno = listen(reactor, ServerFactory())
        reactor.connectTCP("127.0.0.1", portno, ClientFactory.forProtocol(Writer))
        run(reactor, timeout=30)
        sink, = sinks
        assert sink.hash.hexdigest() == hashlib.sha256(expected).hexdigest()
        assert seen == {"paused": 1, "producerPaused": True}
    finally:
        cleanup(reactor)
