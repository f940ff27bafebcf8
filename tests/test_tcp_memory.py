"""
What the completion transports keep per connection instead of what Twisted's
tcp.Server keeps (txuring/tcp.py: _MadeWhenAsked, the fileno descriptor, the log
context entries): the same answers as Twisted's, made when asked.
"""

import socket

import pytest

from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python import log

from txuring import tcp as utcp
from txuring.reactor import UringReactor

from test_reactor_faults import cleanup, run


class Keeper(Protocol):
    """Keeps its transport; logs one line from dataReceived."""

    instances = []

    def connectionMade(self):
        Keeper.instances.append(self)

    def dataReceived(self, data):
        log.msg("got %d" % (len(data),))
        self.transport.write(data)


class Prefixed(Keeper):
    def logPrefix(self):
        return "Custom Prefix"


def serve_one(reactor, protocol, check):
    """One connection to a server of C{protocol}; C{check(server transport)} runs
    after one echo, then both ends close."""
    Keeper.instances = []
    seen = {}

    class Client(Protocol):
        def connectionMade(self):
            self.transport.write(b"ping")

        def dataReceived(self, data):
            t = Keeper.instances[0].transport
            check(t, seen)
            t.loseConnection()

        def connectionLost(self, reason):
            reactor.stop()

    port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
    reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Client))
    events = []
    log.addObserver(events.append)
    try:
        run(reactor, timeout=30)
    finally:
        log.removeObserver(events.append)
    port.stopListening()
    return seen, events, port


@pytest.mark.parametrize("protocol", [Keeper, Prefixed])
def test_logstr_repr_and_log_context_as_twisted_makes_them(protocol):
    reactor = UringReactor()
    try:
        def check(t, seen):
            assert isinstance(t, utcp.Server)
            seen["logPrefix"] = t.logPrefix()
            seen["repr"] = repr(t)
            seen["expected_prefix"] = "%s,%s,%s" % (
                t._getLogPrefix(t.protocol), t.sessionno, t.hostname)
            seen["expected_repr"] = "<%s #%s on %s>" % (
                t.protocol.__class__.__name__, t.sessionno, t.server._realPortNumber)
            seen["t"] = t

        seen, events, port = serve_one(reactor, protocol, check)
        assert seen["logPrefix"] == seen["expected_prefix"]
        assert seen["repr"] == seen["expected_repr"]
        # after connectionLost (protocol gone), still what tcp.Server kept
        t = seen["t"]
        assert t.logPrefix() == seen["expected_prefix"]
        assert repr(t) == seen["expected_repr"]
        got = [e for e in events if e.get("message") == ("got 4",)]
        assert got and got[0]["system"] == seen["expected_prefix"]
    finally:
        cleanup(reactor)


def test_assigned_logstr_and_repstr_are_kept():
    reactor = UringReactor()
    try:
        def check(t, seen):
            t.logstr = "something else"
            t.repstr = "<other>"
            seen["lp"] = t.logPrefix()
            seen["repr"] = repr(t)
            # assigning what it would be made from goes back to making it
            t.logstr = "%s,%s,%s" % (t._getLogPrefix(t.protocol), t.sessionno, t.hostname)
            seen["lp2"] = t.logPrefix()
            seen["expected2"] = t.logstr

        seen, _, _ = serve_one(reactor, Keeper, check)
        assert seen["lp"] == "something else" and seen["repr"] == "<other>"
        assert seen["lp2"] == seen["expected2"]
    finally:
        cleanup(reactor)


def test_fileno_answers_as_twisted_does():
    reactor = UringReactor()
    try:
        def check(t, seen):
            seen["fd"] = t.fileno()
            seen["socket_fd"] = t.socket.fileno()
            seen["t"] = t

        seen, _, _ = serve_one(reactor, Keeper, check)
        assert seen["fd"] == seen["socket_fd"] >= 0
        t = seen["t"]
        assert t.fileno() == -1  # after connectionLost, as FileDescriptor.fileno
        t.fileno = lambda: 1234  # assigned: kept, as assigned
        assert t.fileno() == 1234
        del t.fileno
        assert t.fileno() == -1
        with pytest.raises(AttributeError):
            del t._filenoKept  # (nothing kept after the del)
    finally:
        cleanup(reactor)


def test_log_context_entries_only_answer_their_key():
    reactor = UringReactor()
    try:
        a, b = socket.socketpair()
        conn = reactor.adoptStreamConnection(a.fileno(), socket.AF_UNIX, Factory.forProtocol(Protocol))
        entry = utcp._LogContext(conn)
        with pytest.raises(KeyError):
            entry["not the log context"]
        from twisted.python.log import ILogContext
        assert entry[ILogContext]["system"] == conn.logPrefix()
        conn.loseConnection()
        a.close()
        b.close()
    finally:
        cleanup(reactor)


def test_get_host_asks_the_kernel_once_and_answers_as_twisted():
    reactor = UringReactor()
    try:
        def check(t, seen):
            seen["first"] = t.getHost()
            seen["kept"] = t._localAddress  # (asked once, kept)
            seen["second"] = t.getHost()
            seen["expected"] = t.socket.getsockname()
            seen["t"] = t

        seen, _, _ = serve_one(reactor, Keeper, check)
        assert seen["first"] == seen["second"]
        assert (seen["first"].host, seen["first"].port) == seen["expected"][:2]
        assert seen["kept"] == seen["expected"][:2]
        assert seen["first"] is not seen["second"]  # a new object per call, as Twisted's
        with pytest.raises(AttributeError):
            seen["t"].getHost()  # the socket is gone, as in tcp.Connection
    finally:
        cleanup(reactor)
