"""
Review 7 of the completion-based TCP and UNIX-stream transports (issue 7): each test
is one finding, and failed on the code it was written against. Named C{test_rN_...}
after the finding's number in the review report.

Where the finding is a difference from EPollReactor, the test runs on both reactors
(parametrized C{epoll}/C{uring}): EPollReactor shows what is expected.

Deterministic setups used here:
  - I{ops waiting in the overflow queue}: a reactor whose ring has one SQ entry and
    has not run yet (its ring is still disabled, so nothing is submitted before the
    first loop pass): every transport op after the first waits in the queue.
  - I{a connect that stays in flight}: a listening socket whose accept queue is full
    (listen(0) and a few connects nobody accepts): the kernel drops later SYNs, so a
    connect to it stays in SYN_SENT for seconds.
"""

import os
import random
import socket
import threading
import time
from threading import get_ident

import pytest

from twisted.internet import error, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python import failure

import txuring.reactor
import txuring.tcp
from txuring.reactor import UringReactor

from test_reactor_faults import cleanup, open_fds, run

KINDS = ["epoll", "uring"]


def make(kind, **options):
    if kind == "epoll":
        return EPollReactor()
    reactor = UringReactor(**options)
    assert reactor._completionTCP, "this kernel lacks provided-buffer rings (5.19)"
    return reactor


def release(reactor):
    """cleanup() for both kinds: an EPollReactor's epoll fd and waker are closed too."""
    if isinstance(reactor, UringReactor):
        cleanup(reactor)
        return
    reactor.disconnectAll()
    for call in reactor.getDelayedCalls():
        call.cancel()
    reactor._poller.close()
    for reader in list(reactor._internalReaders):
        reader.connectionLost(None)


def tcp_pair():
    """A connected pair of TCP sockets on the loopback (server side, client side)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    lst.close()
    return s, c


class Blackhole:
    """A listening socket whose accept queue is full: connects to it stay in flight."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)

    def close(self):
        for s in self.fillers + [self.sock]:
            s.close()


def recorder(into, name):
    class Recorder(Protocol):
        def dataReceived(self, data):
            into[name] = into.get(name, b"") + data

        def connectionLost(self, reason):
            into[name + " lost"] = reason

    return Factory.forProtocol(Recorder)


# ---- R1: ops left in the overflow queue by a closed connection, on a reused fd ----


@pytest.mark.parametrize("depth", [1, 256], ids=["overflow-queue", "sq"])
def test_r1_unsubmitted_ops_of_a_closed_connection_never_reach_a_reused_fd(depth):
    """
    A connection whose recv and send are prepared but not yet submitted (in the SQ,
    or in the ring's overflow queue when the SQ is full) is closed, and a new
    connection gets its fd number before they reach the kernel. An SQE carries the
    fd number, looked up at submission, not the socket: they must not go out on the
    new connection's socket. (Before: A's bytes went to B's peer, and A's stale recv
    took B's first bytes, which were then dropped.)
    """
    reactor = make("uring", queueDepth=depth, directSendThreshold=0)
    got = {}
    socks = []
    try:
        d_s, d_c = tcp_pair()
        a_s, a_c = tcp_pair()
        b_s, b_c = tcp_pair()
        socks += [d_s, d_c, a_s, a_c, b_s, b_c]
        # D's recv fills the one SQ entry; A's recv waits in the overflow queue.
        reactor.adoptStreamConnection(d_s.fileno(), socket.AF_INET, recorder(got, "D"))
        a = reactor.adoptStreamConnection(a_s.fileno(), socket.AF_INET,
                                          recorder(got, "A"))
        a.write(b"secret of A")
        a.doWrite()  # what the loop does at the end of a pass: A's send is queued too
        if depth == 1:
            assert len(reactor.ring._sq) >= 2  # (both wait in the overflow queue)
        fd = a.fileno()
        b_c.sendall(b"for B only")
        # A is dropped (as disconnectAll or a protocol error would): its socket closes.
        reactor.removeReader(a)
        a.connectionLost(failure.Failure(error.ConnectionDone()))
        b = reactor.adoptStreamConnection(b_s.fileno(), socket.AF_INET,
                                          recorder(got, "B"))
        assert b.fileno() == fd, "the new connection did not get the freed fd number"

        def check():
            if got.get("B") == b"for B only":
                reactor.stop()
            else:
                reactor.callLater(0.01, check)

        reactor.callLater(0.2, check)  # (gives a stale send time to arrive)
        run(reactor, timeout=5)
        b_c.setblocking(False)
        try:
            leaked = b_c.recv(100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b"", "A's bytes went to B's peer: %r" % (leaked,)
        assert got.get("B") == b"for B only"
        assert "A" not in got
    finally:
        release(reactor)
        for s in socks:
            s.close()


# ---- R2: the direct drain reads on after a ring recv was armed ----


def test_r2_direct_drain_stops_once_a_ring_recv_is_armed():
    """
    A recv CQE that says more data is queued makes the connection drain the socket
    with recv(2). If the protocol pauses and resumes meanwhile (twisted.web does, per
    request), a ring recv is armed; once anything submits it (any op that finds the
    SQ full does), it takes the next bytes at once, and the drain must not read on
    past it. (Before: the bytes it took came late -- reordered -- or, with EOF right
    behind, were dropped.)
    """
    reactor = make("uring")
    s, c = tcp_pair()
    data = random.Random(7).randbytes(192 * 1024)
    c.sendall(data)  # queued before the first recv: it reports SOCK_NONEMPTY
    c.shutdown(socket.SHUT_WR)
    chunks = []

    class PauseResume(Protocol):
        def dataReceived(self, d):
            chunks.append(d)
            if len(chunks) > 1:
                self.transport.pauseProducing()
                self.transport.resumeProducing()
                reactor.ring.submit()  # as an op finding the SQ full would

        def connectionLost(self, reason):
            reactor.stop()

    try:
        reactor.adoptStreamConnection(s.fileno(), socket.AF_INET,
                                      Factory.forProtocol(PauseResume))
        s.close()
        run(reactor, timeout=5)
        # (the direct drain did run: recv(2) reads more than one ring buffer holds)
        assert max(len(x) for x in chunks) > reactor._recvBufferSize
        got = b"".join(chunks)
        assert len(got) == len(data), "%d bytes lost" % (len(data) - len(got),)
        assert got == data, "bytes reordered"
    finally:
        release(reactor)
        c.close()


# ---- R3: a closed transport re-registered under a reused fd ----


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call", ["startReading", "startWriting"])
def test_r3_start_after_connection_lost_raises_and_leaves_the_fd_alone(kind, call):
    """
    startReading/startWriting (reactor.addReader/addWriter) on a transport whose
    connection was lost raise ValueError, as on epoll (its fileno() is -1), and do
    not touch the connection that now has its fd number. (Before: the stale fd was
    registered again under the dead transport, and startReading armed a recv on the
    new connection's socket, which took its bytes.)
    """
    reactor = make(kind)
    got = {}
    conns = []
    out = {}

    class Server(Protocol):
        def connectionMade(self):
            conns.append(self)
            if len(conns) == 1:
                # Paused, so no recv of its own sees the end; then dropped.
                self.transport.pauseProducing()
                reactor.callLater(0.05, self.transport.abortConnection)

        def dataReceived(self, data):
            got[len(conns)] = got.get(len(conns), b"") + data

        def connectionLost(self, reason):
            if self is conns[0]:
                out["fd"] = getattr(self.transport, "_fd", None)
                reactor.callLater(0, second)

    class Second(Protocol):
        def connectionMade(self):
            reactor.callLater(0.05, self.poke)

        def poke(self):
            a = conns[0].transport
            try:
                getattr(a, call)()
            except ValueError:
                out["raised"] = True
            self.transport.write(b"hello B")
            reactor.callLater(0.2, self.done)

        def done(self):
            out["B in readers"] = conns[1].transport in reactor.getReaders()
            out["A listed"] = conns[0].transport in (reactor.getReaders()
                                                      + reactor.getWriters())
            reactor.stop()

    def second():
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(Second))

    port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
    try:
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(Protocol))
        run(reactor, timeout=5)
        assert out.get("raised"), "%s on a closed transport did not raise" % (call,)
        assert got.get(2) == b"hello B"
        assert out["B in readers"]
        assert not out["A listed"]
    finally:
        port.stopListening()
        release(reactor)


@pytest.mark.parametrize("kind", KINDS)
def test_r3_port_start_reading_after_stop_listening_raises_value_error(kind):
    """As on epoll: a stopped port has no fd to register (it raised AttributeError)."""
    reactor = make(kind)
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    out = {}

    def stopped(_):
        try:
            port.startReading()
        except ValueError:
            out["raised"] = True
        reactor.stop()

    try:
        reactor.callLater(0, lambda: port.stopListening().addCallback(stopped))
        run(reactor, timeout=5)
        assert out.get("raised")
    finally:
        release(reactor)


# ---- R4: connecting clients invisible to the FDSet view, missed at shutdown ----


@pytest.mark.parametrize("kind", KINDS)
def test_r4_connecting_client_is_listed_and_reached_by_disconnect_all(kind):
    """
    A client whose connect is in flight is in getReaders()/getWriters() (as on
    epoll, where it waits for writability), so removeAll() returns it and
    disconnectAll() -- which the reactor's shutdown runs -- fails it: the factory
    hears clientConnectionFailed and its socket is closed.
    """
    before = open_fds()
    reactor = make(kind)
    hole = Blackhole()
    out = {}

    class F(ClientFactory):
        protocol = Protocol

        def clientConnectionFailed(self, connector, reason):
            out["failed"] = reason

    connector = reactor.connectTCP("127.0.0.1", hole.port, F(), timeout=30)

    def check():
        t = connector.transport
        out["listed"] = (t in reactor.getReaders(), t in reactor.getWriters())
        out["fd"] = t.fileno()
        reactor.stop()  # the shutdown's disconnectAll must reach it

    try:
        reactor.callLater(0.1, check)
        run(reactor, timeout=5)
        assert out["listed"] == (True, True)
        assert "failed" in out, "shutdown left the connecting client alone"
        out["failed"].trap(error.ConnectError)
        assert connector.state == "disconnected"
    finally:
        release(reactor)
        hole.close()
    leaked = {fd: what for fd, what in open_fds().items() if before.get(fd) != what}
    assert not leaked, "fds left open: %r" % (leaked,)


def test_r4_shutdown_with_many_connections_closes_every_fd():
    """
    reactor.stop() with hundreds of connections still being made and data in
    flight: every protocol or factory hears of the end, and no fd is left open.
    (Before: clients whose connect op completed after the shutdown's disconnectAll
    stayed connected, their fds open.)
    """
    tcp._reservedFD.reserve()  # (Twisted's process-wide fd kept for EMFILE at accept)
    before = open_fds()
    reactor = make("uring")
    n = 300
    state = {"made": 0, "open": 0, "failed": 0}

    class Server(Protocol):
        def connectionMade(self):
            state["open"] += 1
            state["made"] += 1
            self.transport.write(b"y" * 100000)
            if state["made"] == n // 2:
                reactor.callLater(0, reactor.stop)

        def connectionLost(self, reason):
            state["open"] -= 1

    class Client(Protocol):
        def connectionMade(self):
            state["open"] += 1
            self.transport.write(b"y" * 100000)

        def connectionLost(self, reason):
            state["open"] -= 1

    class F(ClientFactory):
        protocol = Client

        def clientConnectionFailed(self, connector, reason):
            state["failed"] += 1

    port = reactor.listenTCP(0, Factory.forProtocol(Server), backlog=1024,
                             interface="127.0.0.1")
    connectors = [reactor.connectTCP("127.0.0.1", port.getHost().port, F())
                  for _ in range(n)]
    try:
        run(reactor, timeout=20)
        assert state["open"] == 0, "%d connections outlived the shutdown" % (state["open"],)
        assert all(c.state == "disconnected" for c in connectors)
    finally:
        release(reactor)
    leaked = {fd: what for fd, what in open_fds().items() if before.get(fd) != what}
    assert not leaked, "fds left open: %d" % (len(leaked),)


# ---- R5: close() with transport ops in the overflow queue ----


def test_r5_close_with_transport_ops_in_the_overflow_queue():
    """
    reactor.close() while transport ops (recvs, cancels) wait in the ring's
    overflow queue: they are ended there, and the ring closes. (Before: TypeError
    from cancel_all, which handed the queue's transport records to cancel().)
    """
    before = open_fds()
    reactor = make("uring", queueDepth=1)
    socks = []
    transports = []
    try:
        for _ in range(6):
            s, c = tcp_pair()
            socks += [s, c]
            transports.append(reactor.adoptStreamConnection(
                s.fileno(), socket.AF_INET, Factory.forProtocol(Protocol)))
            s.close()
        assert len(reactor.ring._sq) >= 5
        # close() removes the transports (it does not disconnect them): their recvs
        # are still queued when the ring's ops are cancelled.
        reactor.close()
        assert reactor.ring.closed
    finally:
        for t in transports:
            t.connectionLost(failure.Failure(error.ConnectionDone()))
        for s in socks:
            s.close()
        release(reactor)
    leaked = {fd: what for fd, what in open_fds().items() if before.get(fd) != what}
    assert not leaked


# ---- R6: stopListening twice ----


@pytest.mark.parametrize("kind", KINDS)
def test_r6_stop_listening_twice_fires_the_first_deferred(kind):
    """
    Two stopListening() calls: the first call's Deferred fires (and the second's
    is answered too, one way or another). (Before: the second call replaced the
    first's Deferred, which never fired.)
    """
    reactor = make(kind)
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    out = {}

    def go():
        d1 = port.stopListening()
        d2 = port.stopListening()
        d1.addBoth(lambda r: out.setdefault("d1", r))
        if d2 is None:
            out["d2"] = None
        else:
            d2.addBoth(lambda r: out.setdefault("d2", r))
        reactor.callLater(0.5, reactor.stop)

    try:
        reactor.callLater(0, go)
        run(reactor, timeout=5)
        assert "d1" in out, "the first stopListening's Deferred never fired"
        assert out["d1"] is None
        assert "d2" in out
        assert not port.connected
    finally:
        release(reactor)


# ---- R7: disconnectAll in a fork child ----


def test_r7_disconnect_all_in_a_fork_child():
    """
    In a child forked while the reactor runs (a listening port, a connection), the
    child can still drop what it inherited: disconnectAll() closes every transport,
    instead of stopping at the port with RingForked (its accept's cancel went
    through the public op path, which refuses a fork child, while the connections'
    cancels are skipped there). (EPollReactor fails here too, differently: its
    epoll fd is shared with the parent, and epoll_ctl DEL answers ENOENT.)
    """
    reactor = make("uring")
    rfd, wfd = os.pipe()
    out = {}

    class Forker(Protocol):
        def connectionMade(self):
            reactor.callLater(0.05, self.fork)

        def fork(self):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    reactor.disconnectAll()
                    left = reactor.getReaders() + reactor.getWriters()
                    code = 0 if not [s for s in left
                                     if s not in reactor._internalReaders] else 2
                except BaseException:
                    code = 3
                finally:
                    os.write(wfd, bytes([code]))
                    os._exit(0)
            os.waitpid(pid, 0)
            out["code"] = os.read(rfd, 1)[0]
            reactor.stop()

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(Forker))
        run(reactor, timeout=10)
        assert out.get("code") == 0, "child's disconnectAll: %r (3: it raised)" % (
            out.get("code"),)
    finally:
        port.stopListening()
        release(reactor)
        os.close(rfd)
        os.close(wfd)


# ---- R8: transport calls from another thread ----


class _RecordingLib:
    """C{txuring._core.lib} with the threads that call its lean-path functions noted."""

    def __init__(self, lib, calls):
        self._lib = lib
        self._calls = calls

    def __getattr__(self, name):
        f = getattr(self._lib, name)
        if not name.startswith("txu_lean"):
            return f
        calls = self._calls

        def recorded(*args):
            calls.append((name, get_ident()))
            return f(*args)

        return recorded


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("call", ["write", "loseConnection", "resumeProducing"])
def test_r8_transport_calls_from_another_thread_take_effect(kind, call, monkeypatch):
    """
    A transport's methods are not thread-safe in Twisted, but on epoll a write,
    loseConnection or resumeProducing from another thread takes effect (the
    epoll_ctl wakes the loop); here too, with every SQE still prepared by the
    reactor's thread. (Before: nothing happened until something else woke the loop
    -- never, in an idle program -- and resumeProducing prepared its recv SQE from
    the calling thread, racing the reactor's thread on the SQ.)
    """
    calls = []
    if kind == "uring":
        monkeypatch.setattr(txuring.tcp, "lib", _RecordingLib(txuring.tcp.lib, calls))
        monkeypatch.setattr(txuring.reactor, "lib",
                            _RecordingLib(txuring.reactor.lib, calls))
    reactor = make(kind)
    out = {}

    class Server(Protocol):
        def connectionMade(self):
            out["loop thread"] = get_ident()
            if call == "resumeProducing":
                self.transport.pauseProducing()
            threading.Thread(target=self.elsewhere).start()

        def elsewhere(self):
            time.sleep(0.3)  # the loop is idle by then, waiting in io_uring_enter
            # (set first: the loop may take the call and deliver the data it resumed
            # before this thread runs again)
            out["called"] = True
            if call == "write":
                self.transport.write(b"from a thread")
            elif call == "loseConnection":
                self.transport.loseConnection()
            else:
                self.transport.resumeProducing()

        def dataReceived(self, data):
            if out.get("called"):
                out["server got"] = data
                reactor.stop()

    class Client(Protocol):
        def connectionMade(self):
            reactor.callLater(0.1, self.transport.write, b"to server")

        def dataReceived(self, data):
            out["client got"] = data
            reactor.stop()

        def connectionLost(self, reason):
            # (ConnectionDone: the server closed it; the shutdown's would be Lost)
            if reason.check(error.ConnectionDone):
                out["client lost"] = True
            if reactor.running:
                reactor.stop()

    port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
    try:
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(Client))
        run(reactor, timeout=5)
    except AssertionError:
        pass  # a hang: reported below
    finally:
        port.stopListening()
        release(reactor)
    expected = {"write": "client got", "loseConnection": "client lost",
                "resumeProducing": "server got"}[call]
    assert expected in out, "the call from another thread took no effect: %r" % (out,)
    strangers = [name for name, ident in calls if ident != out["loop thread"]]
    assert not strangers, "SQEs prepared outside the reactor's thread: %r" % (strangers,)


# ---- R9: a persistent accept error ----


@pytest.mark.parametrize("kind", KINDS)
def test_r9_persistent_accept_error_closes_the_port_instead_of_spinning(kind):
    """
    adoptStreamPort of a socket that was bound but never listen()ed: every accept
    fails with EINVAL. On epoll the port is closed (its poll reports the hang-up);
    here too, after the error is logged once, instead of re-arming the accept op
    forever (before: thousands of "Could not accept" messages a second, the loop
    never idle).
    """
    from twisted.python import log

    reactor = make(kind)
    messages = []

    def observer(event):
        messages.append(event)

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    out = {}
    log.addObserver(observer)
    try:
        port = reactor.adoptStreamPort(s.fileno(), socket.AF_INET,
                                       Factory.forProtocol(Protocol))
        s.close()

        def check():
            out["listening"] = port.connected
            out["listed"] = port in reactor.getReaders()
            reactor.stop()

        reactor.callLater(0.3, check)
        run(reactor, timeout=5)
    finally:
        log.removeObserver(observer)
        release(reactor)
    assert not out["listening"] and not out["listed"]
    assert len(messages) < 10, "%d log messages in 0.3 s" % (len(messages),)


# ---- R10: buffer-ring exhaustion livelocks the dispatch ----

_BURST = r"""
import sys
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from txuring.reactor import UringReactor

N, SIZE = 400, 65536
reactor = UringReactor(queueDepth=8, recvBuffers=16)
state = {"done": 0}

class Sink(Protocol):
    n = 0
    def dataReceived(self, data):
        self.n += len(data)
        if self.n == SIZE:
            state["done"] += 1
            if state["done"] == N:
                reactor.stop()

class Burst(Protocol):
    def connectionMade(self):
        self.transport.write(b"z" * SIZE)

port = reactor.listenTCP(0, Factory.forProtocol(Sink), backlog=1024, interface="127.0.0.1")
for _ in range(N):
    reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Burst))
reactor.callLater(20, reactor.stop)
reactor.run(installSignalHandlers=False)
print("done", state["done"], "rearmed", reactor._recvBufs.rearmed)
"""


def test_r10_buffer_ring_exhaustion_under_a_burst_does_not_livelock():
    """
    Hundreds of connections with data waiting and the shared buffer ring empty: each
    recv ends with ENOBUFS and is re-armed. Re-armed inside the dispatch, with the SQ
    full, the re-arm was submitted at once and failed again at once (the buffers are
    handed back only after the dispatch), so the dispatch never ran out of CQEs: the
    loop hung (even its timers never ran). Here every byte arrives. (In a subprocess:
    the hang it guards against cannot be interrupted from inside.)
    """
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _BURST], capture_output=True,
                              timeout=30, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the reactor hung (livelock in the dispatch)")
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    assert words[:2] == ["done", "400"], done.stdout
    assert int(words[3]) > 0  # (the buffer ring did run dry: recvs were re-armed)


# ---- R11: a closed port's unsubmitted accept, on a reused fd ----


def test_r11_unsubmitted_accept_of_a_closed_port_never_reaches_a_reused_fd():
    """
    A port dropped (as disconnectAll drops it) while its accept SQE is prepared but
    not submitted, and a new port that gets its fd number: the stale accept must not
    run on the new port's socket. (Before: it accepted the new port's connection,
    and closed it -- its port was gone.)
    """
    reactor = make("uring")
    got = []

    class Accepted(Protocol):
        def connectionMade(self):
            got.append("accepted")
            reactor.stop()

    try:
        a = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        fd = a.fileno()
        reactor.removeReader(a)
        a.connectionLost(failure.Failure(error.ConnectionDone()))
        b = reactor.listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
        assert b.fileno() == fd, "the new port did not get the freed fd number"
        reactor.connectTCP("127.0.0.1", b.getHost().port,
                           ClientFactory.forProtocol(Protocol))
        run(reactor, timeout=5)
        assert got == ["accepted"]
    finally:
        release(reactor)


# ---- R12: the transports' reactor options, checked at the call ----


@pytest.mark.parametrize("options", [
    {"recvBuffers": 500}, {"recvBuffers": 0}, {"recvBuffers": 65536}, {"recvBuffers": "x"},
    {"recvBufferSize": 0}, {"recvBufferSize": -5}, {"recvBufferSize": 1.5},
    {"directSendThreshold": "x"}, {"directSendThreshold": -1},
], ids=lambda o: "%s=%r" % next(iter(o.items())))
def test_r12_bad_transport_options_are_refused_by_the_constructor(options):
    """
    UringReactor(recvBuffers=500) and the like raise at the call, with a sentence
    naming the option. (Before: accepted; then every connection failed with an error
    logged from deep inside -- neither side's connectionMade ran -- or the main loop
    hit "Unexpected error" at every pass.)
    """
    name = next(iter(options))
    with pytest.raises((ValueError, TypeError), match=name):
        UringReactor(**options)


# ---- R13 (review 7c): the batched pass end and an aborted transport ----


@pytest.mark.parametrize("kind,threshold", [("epoll", None), ("uring", 4), ("uring", 0)],
                         ids=["epoll", "uring-direct", "uring-ring"])
def test_r13_no_bytes_leave_an_aborted_transport_resumed_and_written(kind, threshold):
    """
    abortConnection drops what is buffered and sends nothing more (Twisted replaces the
    transport's doWrite with a no-op). A protocol that then resumes the transport
    (resumeProducing: reading again) and writes -- twisted.web's channel resumes its
    transport when a request finishes -- must not get those bytes out before the
    abort's connectionLost. (Before: _passEnds took the aborted connection for the
    common case, reading with one buffer to send, and sent it with send(2) or a send
    op, never asking its doWrite.)
    """
    reactor = make(kind) if threshold is None else make(kind, directSendThreshold=threshold)
    got = []

    class Aborter(Protocol):
        def dataReceived(self, data):
            t = self.transport
            t.abortConnection()
            t.resumeProducing()
            t.write(b"leak")

    try:
        port = reactor.listenTCP(0, Factory.forProtocol(Aborter), interface="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.settimeout(5)

        def read():
            data = b""
            try:
                while True:
                    chunk = client.recv(100)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                data += b"<RST>"
            got.append(data)
            reactor.callFromThread(reactor.stop)

        client.sendall(b"x")
        reader = threading.Thread(target=read)
        reader.start()
        run(reactor, timeout=5)
        reader.join(5)
        client.close()
        assert got == [b"<RST>"]
    finally:
        release(reactor)
