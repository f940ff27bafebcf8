"""
UringReactor under faults and bad input (issue 3): each test builds a fresh
L{UringReactor}, runs it to completion under a timeout guard, and releases it with
L{UringReactor.close}, checking that no fd is left behind.

The reactors here are not the global one. Under pytest-twisted (epoll by default,
UringReactor with C{--reactor=uring}) a test body runs inside the global reactor's
greenlet, so these reactors run nested in it; they pass the same with
C{-p no:twisted}.
"""

import faulthandler
import gc
import os
import random
import select
import signal
import socket
import threading
import time

import pytest

from twisted.internet import error, process, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, ProcessProtocol, Protocol
from twisted.python import log

from txuring.reactor import UringReactor

#: A reactor that does not stop within this is a failure (and, if its own timer
#: cannot stop it, faulthandler ends the process after HARD_TIMEOUT with tracebacks).
TIMEOUT = 20.0
HARD_TIMEOUT = 120.0


def run(reactor, timeout=TIMEOUT, installSignalHandlers=False):
    """Run C{reactor} until it stops; fail if it is still running after C{timeout}."""
    timed_out = []

    def guard():
        timed_out.append(True)
        reactor.stop()

    call = reactor.callLater(timeout, guard)
    faulthandler.dump_traceback_later(HARD_TIMEOUT, exit=True)
    try:
        reactor.run(installSignalHandlers=installSignalHandlers)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if call.active():
        call.cancel()
    assert not timed_out, "reactor still running after %s s" % (timeout,)


def cleanup(reactor):
    """What Twisted's ReactorBuilder does after a test, then close the ring."""
    if reactor.ring.closed:
        return
    reactor.disconnectAll()
    for call in reactor.getDelayedCalls():
        call.cancel()
    reactor.close()


def open_fds():
    """
    {fd: what it is} for this process's open fds. Listing /proc/self/fd opens a
    directory fd that is in the listing and closed by the time it is read back: left
    out, so that two listings compare even when the lowest free fd moved.
    """
    described = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            described[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return described


def assert_no_new_fds(before):
    now = open_fds()
    new = {fd: what for fd, what in now.items() if before.get(fd) != what}
    assert not new, "fds left open: %r" % (new,)


@pytest.fixture(scope="module", autouse=True)
def global_reactor_started(request):
    """
    pytest-twisted runs each test function inside its global reactor, which it starts
    right after the body of the first test it runs; starting opens fds (its SIGCHLD
    waker's pipe). Have that happen before any fd is counted here.
    """
    if not request.config.pluginmanager.hasplugin("twisted"):
        return
    import pytest_twisted
    from twisted.internet import reactor, task

    pytest_twisted.blockon(task.deferLater(reactor, 0.01, lambda: None))


@pytest.fixture
def uring():
    """
    A factory of fresh UringReactors, closed after the test, which must leave no fd
    open that was not open when the first one was built.
    """
    made = []
    before = []

    def make(**kw):
        if not before:
            gc.collect()
            before.append(open_fds())
        reactor = UringReactor(**kw)
        made.append(reactor)
        return reactor

    yield make
    for reactor in made:
        cleanup(reactor)
    if before:
        gc.collect()
        assert_no_new_fds(before[0])


@pytest.fixture
def reactor(uring):
    return uring()


@pytest.fixture
def logged_errors():
    """Every failure logged (log.err) while the test runs."""
    errors = []

    def observe(event):
        if event.get("isError") and event.get("failure") is not None:
            errors.append(event["failure"])

    log.addObserver(observe)
    yield errors
    log.removeObserver(observe)


@pytest.fixture
def socketpair():
    """A factory of connected AF_UNIX stream socket pairs, closed after the test."""
    made = []

    def make():
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield make
    for s in made:
        s.close()


class Reader(FileDescriptor):
    """A selectable over a socket (or file) that records what the reactor does to it."""

    def __init__(self, reactor, sock, on_read=None, on_write=None):
        FileDescriptor.__init__(self, reactor)
        self.sock = sock
        self.reads = 0
        self.writes = 0
        self.data = b""
        self.lost = []
        self.on_read = on_read
        self.on_write = on_write

    def fileno(self):
        # A closed socket's fileno() is -1, as Twisted's reactors expect.
        return self.sock.fileno()

    def doRead(self):
        self.reads += 1
        if self.on_read is not None:
            return self.on_read(self)
        return None

    def doWrite(self):
        self.writes += 1
        if self.on_write is not None:
            return self.on_write(self)
        return None

    def connectionLost(self, reason):
        self.lost.append(reason)


def recv_all(reader):
    """An on_read that reads what is there and keeps it."""
    try:
        data = reader.sock.recv(65536)
    except BlockingIOError:
        return None
    if not data:
        return error.ConnectionDone()
    reader.data += data
    return None


def peer_sees_close(sock, timeout=5.0):
    """Whether C{sock}'s peer has closed (EOF or reset) within C{timeout} seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# ---- a reader that raises ----


def test_reader_that_raises_is_disconnected_and_the_loop_goes_on(
        reactor, socketpair, logged_errors):
    """
    An exception from doRead is logged, that selectable alone is disconnected
    (connectionLost with the exception, removed in both directions), and the other
    selectables keep being served.
    """
    bad_sock, bad_peer = socketpair()
    bad2_sock, bad2_peer = socketpair()
    good_sock, good_peer = socketpair()

    def boom(reader):
        raise ValueError("doRead blew up")

    def boom_write(reader):
        raise KeyError("doWrite blew up")

    bad = Reader(reactor, bad_sock, on_read=boom)
    bad2 = Reader(reactor, bad2_sock, on_write=boom_write)  # registered both ways
    good = Reader(reactor, good_sock, on_read=recv_all)
    reactor.addReader(bad)
    reactor.addReader(bad2)
    reactor.addWriter(bad2)
    reactor.addReader(good)
    bad_peer.send(b"x")
    good_peer.send(b"first ")

    def later():
        good_peer.send(b"second")

    state = {}

    def check():
        if good.data == b"first second":
            # Before stop(): shutdown disconnects everything.
            state["readers"] = reactor.getReaders()
            state["writers"] = reactor.getWriters()
            state["good_lost"] = list(good.lost)
            reactor.stop()
        else:
            reactor.callLater(0.01, check)

    reactor.callLater(0.05, later)
    reactor.callLater(0.06, check)
    run(reactor)

    assert bad.reads == 1
    assert [f.type for f in bad.lost] == [ValueError]
    assert bad2.writes == 1
    assert [f.type for f in bad2.lost] == [KeyError]
    for b in (bad, bad2):
        assert b not in state["readers"]
        assert b not in state["writers"]
    assert good in state["readers"] and state["good_lost"] == []
    assert sorted(f.type.__name__ for f in logged_errors) == ["KeyError", "ValueError"]


# ---- a descriptor closed while registered ----


def test_descriptor_closed_while_registered_then_event(reactor, socketpair):
    """
    The socket is closed behind the reactor's back (no removeReader) while its poll
    is in the kernel; then its peer writes. The poll still references the old file, so
    the event arrives; the reactor sees fileno() == -1 and disconnects the selectable
    with ConnectionFdescWentAway instead of calling doRead; the kernel's reference is
    then gone, so the peer sees the close.
    """
    sock, peer = socketpair()
    reader = Reader(reactor, sock)
    reactor.addReader(reader)

    def close_behind_its_back():
        sock.close()
        reactor.callLater(0.02, peer.send, b"data for nobody")

    def check():
        if reader.lost:
            reactor.stop()
        else:
            reactor.callLater(0.01, check)

    reactor.callLater(0.05, close_behind_its_back)  # after the poll was submitted
    reactor.callLater(0.06, check)
    run(reactor)

    assert reader.reads == 0
    assert [f.type for f in reader.lost] == [error.ConnectionFdescWentAway]
    assert reader not in reactor.getReaders()
    assert peer_sees_close(peer)


def test_descriptor_closed_while_registered_then_removed(reactor, socketpair):
    """
    Closed behind the reactor's back and no event follows: nothing happens (as on
    epoll), the loop goes on running timers. Unlike epoll, the armed poll holds a
    reference to the file, so the peer does not see the close yet; removeReader
    (which finds the selectable by identity, since its fileno() is now -1) cancels
    the poll, and the peer then sees the close.
    """
    sock, peer = socketpair()
    reader = Reader(reactor, sock)
    reactor.addReader(reader)
    ticks = []
    seen = {}

    def close_behind_its_back():
        sock.close()
        reactor.callLater(0.01, ticks.append, 1)
        reactor.callLater(0.05, still_open)

    def still_open():
        peer.setblocking(False)
        try:
            seen["before_remove"] = peer.recv(1) == b""
        except BlockingIOError:
            seen["before_remove"] = False
        except ConnectionResetError:
            seen["before_remove"] = True
        reactor.removeReader(reader)
        reactor.callLater(0.05, reactor.stop)

    reactor.callLater(0.05, close_behind_its_back)
    run(reactor)

    assert ticks == [1]
    assert reader.reads == 0 and reader.lost == []
    assert reader not in reactor.getReaders()
    assert seen["before_remove"] is False, (
        "the peer saw the close while the poll was armed: io_uring no longer holds the "
        "file; update the reactor.py docstring")
    assert peer_sees_close(peer)


# ---- removing what was never added ----


def test_remove_of_never_added_is_a_no_op(reactor, socketpair):
    sock, peer = socketpair()
    never = Reader(reactor, sock)
    closed_sock, _ = socketpair()
    closed_sock.close()
    gone = Reader(reactor, closed_sock)  # fileno() == -1
    waker_only = reactor.getReaders()

    for selectable in (never, gone):
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
    assert reactor.removeAll() == []

    # Added for reading only: removeWriter leaves the reader alone, removing twice is
    # harmless.
    reactor.addReader(never)
    reactor.removeWriter(never)
    assert never in reactor.getReaders()
    reactor.removeReader(never)
    reactor.removeReader(never)
    assert reactor.getReaders() == waker_only and reactor.getWriters() == []

    peer.send(b"x")  # no one must be called for it
    reactor.callLater(0.05, reactor.stop)
    run(reactor)
    assert never.reads == 0 and never.lost == []


# ---- a regular file ----


def test_regular_file_reader_is_called_until_removed(reactor, tmp_path):
    """
    epoll refuses a regular file (EPERM) and Twisted polls it continuously instead;
    here the kernel's poll reports a regular file readable (and writable) at once, so
    doRead is called on every iteration until removeReader, and the timers keep
    running meanwhile (see UringReactor.addReader's docstring).
    """
    path = tmp_path / "regular"
    path.write_bytes(b"0123456789")
    with open(path, "rb+", buffering=0) as f:
        counts = {}

        def on_read(r):
            if r.reads == 5:
                reactor.removeReader(r)
                counts["at_remove"] = r.reads
                reactor.callLater(0.05, stop)

        reader = Reader(reactor, f, on_read=on_read)
        timer = []
        reactor.callLater(0, timer.append, 1)

        def stop():
            counts["after"] = reader.reads
            reactor.stop()

        reactor.addReader(reader)
        run(reactor)
        assert counts == {"at_remove": 5, "after": 5}
        assert timer == [1]
        assert reader.lost == []


def test_regular_file_writer_is_called_until_removed(reactor, tmp_path):
    path = tmp_path / "regular"
    with open(path, "wb", buffering=0) as f:

        def on_write(r):
            if r.writes == 5:
                reactor.removeWriter(r)
                reactor.callLater(0.05, reactor.stop)

        writer = Reader(reactor, f, on_write=on_write)
        reactor.addWriter(writer)
        run(reactor)
        assert writer.writes == 5 and writer.lost == []
        assert reactor.getWriters() == []


# ---- timers ----


def test_100k_timed_calls_with_random_cancels(reactor):
    """
    Every timed call that was not cancelled runs exactly once, none of the cancelled
    ones runs; cancels happen before the run and from inside other calls.
    """
    rng = random.Random(20261122)
    n = 100_000
    ran = bytearray(n)
    cancelled = set()
    calls = []

    def fire(i):
        ran[i] += 1
        if i % 10 == 0:
            # Cancel a random other call, if it has not run yet.
            j = rng.randrange(n)
            if calls[j].active():
                calls[j].cancel()
                cancelled.add(j)

    for i in range(n):
        calls.append(reactor.callLater(rng.uniform(0, 0.5), fire, i))
    for j in rng.sample(range(n), n // 3):
        calls[j].cancel()
        cancelled.add(j)
    reactor.callLater(0.6, reactor.stop)
    run(reactor)

    assert len(cancelled) > n // 3
    assert all(ran[j] == 0 for j in cancelled)
    assert all(ran[i] == 1 for i in range(n) if i not in cancelled)
    assert reactor.getDelayedCalls() == []


# ---- callFromThread ----


def test_callFromThread_from_8_threads_at_once(reactor):
    """Every call from every thread runs, in each thread's order; none is lost."""
    threads, per_thread = 8, 5000
    got = [[] for _ in range(threads)]
    finished = []
    barrier = threading.Barrier(threads)

    def done(t):
        finished.append(t)
        if len(finished) == threads:
            reactor.stop()

    def worker(t):
        barrier.wait()
        append = got[t].append
        for i in range(per_thread):
            reactor.callFromThread(append, i)
        reactor.callFromThread(done, t)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    reactor.callWhenRunning(lambda: [w.start() for w in workers])
    run(reactor)
    for w in workers:
        w.join()
    assert sorted(finished) == list(range(threads))
    for t in range(threads):
        assert got[t] == list(range(per_thread))


def test_callFromThread_wakes_an_idle_loop_within_milliseconds(reactor):
    """
    The loop sleeps in io_uring_enter with nothing due for TIMEOUT seconds; a
    callFromThread wakes it through the eventfd at once.
    """
    latencies = []
    samples = 30

    def record(sent):
        latencies.append(time.monotonic() - sent)

    def sender():
        for _ in range(samples):
            time.sleep(0.01)
            reactor.callFromThread(record, time.monotonic())
        reactor.callFromThread(reactor.stop)

    thread = threading.Thread(target=sender)
    reactor.callWhenRunning(thread.start)
    run(reactor)
    thread.join()
    latencies.sort()
    assert len(latencies) == samples
    # Typically well under a millisecond; generous bounds for a loaded CI machine.
    assert latencies[samples // 2] < 0.01, latencies
    assert latencies[-1] < 0.2, latencies


# ---- SIGCHLD storm ----


@pytest.fixture
def signals():
    """
    For a run with installSignalHandlers=True: SIGCHLD at its default while the test
    runs (as Twisted's ReactorBuilder does), and afterwards the SIGINT, SIGTERM and
    SIGCHLD handlers and the wakeup fd restored. A stopped reactor leaves its SIGINT
    handler installed and SIGCHLD at SIG_DFL with no wakeup fd (Twisted does that for
    every reactor); the global reactor pytest-twisted runs needs its own back.
    """
    saved = {sig: signal.getsignal(sig)
             for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(wakeup_fd)
    deadline = time.monotonic() + 30
    while process.reapProcessHandlers and time.monotonic() < deadline:
        process.reapAllProcesses()
        time.sleep(0.01)
    assert not process.reapProcessHandlers


def test_sigchld_storm(reactor, signals):
    """50 short processes at once: every processEnded fires, with exit status 0."""
    count = 50
    ended = []

    class Ends(ProcessProtocol):
        def processEnded(self, reason):
            ended.append(reason)
            if len(ended) == count:
                reactor.stop()

    def spawn():
        for _ in range(count):
            reactor.spawnProcess(Ends(), "/bin/true", ["/bin/true"], env={})

    reactor.callWhenRunning(spawn)
    run(reactor, installSignalHandlers=True)
    assert len(ended) == count
    assert all(r.check(error.ProcessDone) for r in ended), [r.value for r in ended]


# ---- threads: built in one, run in another ----


def test_built_in_one_thread_run_in_another(uring, socketpair):
    """
    crochet's way: the reactor is built (and given a reader and a timer) in the main
    thread and run in another; its ring, made disabled, belongs to the thread that
    first runs it. Work arrives by callFromThread; everything runs in the reactor's
    thread; it is closed there too.
    """
    reactor = uring()
    sock, peer = socketpair()
    seen = {}

    def on_read(r):
        seen["read"] = threading.get_ident()
        recv_all(r)

    reader = Reader(reactor, sock, on_read=on_read)
    reactor.addReader(reader)
    reactor.callLater(0, lambda: seen.setdefault("timer", threading.get_ident()))
    running = threading.Event()
    reactor.callWhenRunning(running.set)
    failures = []

    def main():
        try:
            run(reactor)
            cleanup(reactor)
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    thread = threading.Thread(target=main)
    thread.start()
    assert running.wait(10)
    peer.send(b"hello")
    done = threading.Event()
    reactor.callFromThread(lambda: seen.setdefault("call", threading.get_ident()))
    reactor.callFromThread(lambda: reactor.callLater(0.05, done.set))
    assert done.wait(10)
    reactor.callFromThread(reactor.stop)
    thread.join(30)
    assert not thread.is_alive() and not failures, failures
    assert seen == {"read": thread.ident, "timer": thread.ident, "call": thread.ident}
    assert reader.data == b"hello"
    assert reactor.ring.closed


# ---- iterate() ----


def test_iterate_drives_the_reactor(reactor, socketpair):
    sock, peer = socketpair()
    reader = Reader(reactor, sock, on_read=recv_all)
    reactor.addReader(reader)
    peer.send(b"abc")
    for _ in range(50):
        reactor.iterate(0.1)
        if reader.data:
            break
    assert reader.data == b"abc"

    ran = []
    reactor.callLater(0, ran.append, 1)
    reactor.iterate()
    reactor.iterate()
    assert ran == [1]

    # Nothing to do: iterate(delay) waits about that long, not for ever.
    start = time.monotonic()
    reactor.iterate(0.2)
    assert 0.1 < time.monotonic() - start < 2

    # A callFromThread wakes an iterate that would wait long (iterate runs the due
    # calls first, then waits: the call itself runs at the next iterate).
    timer = threading.Timer(0.05, reactor.callFromThread, (ran.append, 2))
    timer.start()
    start = time.monotonic()
    reactor.iterate(5)
    assert time.monotonic() - start < 2
    timer.join()
    reactor.iterate()
    assert ran == [1, 2]


# ---- stop and restart ----


def test_stop_and_restart_as_twisted_benchmarks_do(reactor, socketpair):
    """
    Twisted's benchmark helper (twisted.internet.testing._runReactor/_stopReactor)
    stops the reactor, iterates it once, resets its private state and runs it again.
    Each run here gets a socket read, a timer and a callFromThread through the waker.
    (Each stop disconnects every selectable, as shutdown does: a reader is added per
    run.)
    """
    testing = pytest.importorskip("twisted.internet.testing")
    stop_reactor = getattr(testing, "_stopReactor", None)
    if stop_reactor is None:
        pytest.skip("this Twisted has no _stopReactor benchmark helper")
    rounds = []

    for i in range(4):
        sock, peer = socketpair()
        d = Deferred()

        def on_read(r, d=d, i=i):
            recv_all(r)
            # A timer scheduled from a thread, then the run ends.
            threading.Thread(
                target=reactor.callFromThread,
                args=(reactor.callLater, 0.01, d.callback, (i, r.data))).start()

        reactor.addReader(Reader(reactor, sock, on_read=on_read))
        reactor.callWhenRunning(peer.send, b"%d" % i)
        d.addCallback(rounds.append)
        d.addBoth(lambda _: reactor.callLater(0, stop_reactor, reactor))
        run(reactor)
    assert rounds == [(0, b"0"), (1, b"1"), (2, b"2"), (3, b"3")]


# ---- fd leaks ----


def test_no_fd_leaks(signals):
    """
    Building a reactor opens exactly its ring and its waker's eventfd; a run with TCP,
    a process, threads and signal handlers leaves nothing else behind; close()
    releases both; and an unclosed reactor cleaned up as Twisted's ReactorBuilder
    does (waker closed, then garbage) leaves nothing either.
    """
    # A listening TCP port makes Twisted keep one /dev/null fd open for good, in
    # reserve for EMFILE on accept (tcp._reservedFD): not the reactor's. Reserve it now.
    tcp._reservedFD.reserve()
    gc.collect()
    fds_before = open_fds()
    reactor = UringReactor()
    built = open_fds().keys() - fds_before.keys()
    assert built == {reactor.ring.fd, reactor.waker.fileno()}

    class Echo(Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    class Client(Protocol):
        def connectionMade(self):
            self.transport.write(b"ping")

        def dataReceived(self, data):
            got.append(data)
            self.transport.loseConnection()

    class Ends(ProcessProtocol):
        def processEnded(self, reason):
            got.append("process")

    got = []
    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Client))
    reactor.spawnProcess(Ends(), "/bin/true", ["/bin/true"], env={})
    reactor.callInThread(reactor.callFromThread, got.append, "thread")

    def check():
        if len(got) == 3:
            reactor.stop()
        else:
            reactor.callLater(0.01, check)

    reactor.callLater(0.01, check)
    run(reactor, installSignalHandlers=True)
    assert sorted(map(str, got)) == ["b'ping'", "process", "thread"]
    gc.collect()
    after_run = open_fds()
    assert after_run.keys() - fds_before.keys() == built, after_run
    reactor.close()
    reactor.close()  # idempotent
    assert reactor.ring.closed
    gc.collect()
    assert_no_new_fds(fds_before)

    # Not closed: cleaned up as ReactorBuilder._unbuildReactor does, then dropped.
    reactor = UringReactor()
    reactor.callLater(0, reactor.stop)
    run(reactor)
    for reader in list(reactor._internalReaders):
        reactor.removeReader(reader)
        reader.connectionLost(None)
    reactor._internalReaders.clear()
    reactor.disconnectAll()
    del reactor, reader
    gc.collect()
    assert_no_new_fds(fds_before)


def test_close_refuses_a_running_reactor(reactor):
    failures = []

    def try_close():
        try:
            reactor.close()
        except RuntimeError as e:
            failures.append(e)
        reactor.stop()

    reactor.callWhenRunning(try_close)
    run(reactor)
    assert len(failures) == 1 and not reactor.ring.closed


# ---- optimistic writes on stream sockets ----


def _tcp_pair(reactor, server_protocol):
    """A listening port with server_protocol's factory, and a plain blocking client."""
    port = reactor.listenTCP(0, Factory.forProtocol(server_protocol), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    return port, client


def test_a_write_larger_than_the_socket_takes_waits_for_writability_and_arrives_whole():
    # Twisted's own transports over poll ops (txuring.tcp's completion transports,
    # the default, are tested in test_tcp_transport.py).
    reactor = UringReactor(completionTCP=False)
    payload = os.urandom(8 * 1024 * 1024)  # far more than a loopback socket buffers
    received = bytearray()
    polled = []

    class Sender(Protocol):
        def connectionMade(self):
            self.transport.write(payload)
            self.transport.loseConnection()

    port, client = _tcp_pair(reactor, Sender)

    def drain():
        client.setblocking(False)
        try:
            while True:
                chunk = client.recv(1 << 16)
                if not chunk:
                    reactor.stop()
                    return
                received.extend(chunk)
        except BlockingIOError:
            pass
        # While the client lags, the server's write is parked on a POLLOUT poll.
        polled.append(any(direction == select.POLLOUT for _, direction in reactor._polls))
        reactor.callLater(0.002, drain)

    reactor.callLater(0.05, drain)
    try:
        run(reactor)
    finally:
        client.close()
        port.stopListening()
        cleanup(reactor)
    assert bytes(received) == payload
    assert any(polled), "the unfinished write never waited on a POLLOUT poll"


def test_calls_scheduled_by_an_optimistic_write_run_without_waiting_for_the_next_timer():
    """
    An optimistic doWrite that empties the buffer resumes the transport's pull
    producer, which schedules its next chunk with callLater(0): nothing happens on the
    ring, so the loop's wait must not sleep until the next (far) timer first.
    """
    reactor = UringReactor()
    chunks = 5

    class Producer:
        def __init__(self, transport):
            self.transport = transport
            self.sent = 0

        def resumeProducing(self):
            reactor.callLater(0, self.produce)

        def produce(self):
            self.sent += 1
            self.transport.write(b"chunk %d;" % (self.sent,))
            if self.sent == chunks:
                self.transport.unregisterProducer()
                self.transport.loseConnection()

        def stopProducing(self):
            pass

    class Server(Protocol):
        def connectionMade(self):
            reactor.callLater(TIMEOUT / 2, lambda: None)  # the far timer
            self.transport.registerProducer(Producer(self.transport), False)

    port, client = _tcp_pair(reactor, Server)
    received = bytearray()

    def reader():
        client.settimeout(TIMEOUT)
        while True:
            data = client.recv(100)
            if not data:
                break
            received.extend(data)
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(threading.Thread(target=reader, daemon=True).start)
    began = time.monotonic()
    try:
        run(reactor)
    finally:
        client.close()
        port.stopListening()
        cleanup(reactor)
    assert bytes(received) == b"".join(b"chunk %d;" % (i,) for i in range(1, chunks + 1))
    assert time.monotonic() - began < TIMEOUT / 2, "the loop slept until the far timer"


def test_more_readers_than_the_ring_holds_registered_before_run_all_get_polled():
    # UringReactor(4): the 8 polls overflow the SQ of a ring not yet enabled (it is
    # enabled by the thread that runs the reactor), so they wait in the overflow queue.
    reactor = UringReactor(4)
    pipes = [os.pipe() for _ in range(8)]
    got = []

    class Reader(FileDescriptor):
        def __init__(self, fd):
            FileDescriptor.__init__(self, reactor)
            self.fd = fd

        def fileno(self):
            return self.fd

        def doRead(self):
            got.append(os.read(self.fd, 10))
            reactor.stop()

    readers = [Reader(r) for r, _ in pipes]
    for reader in readers:
        reactor.addReader(reader)
    os.write(pipes[7][1], b"last")
    try:
        run(reactor)
    finally:
        for reader in readers:
            reactor.removeReader(reader)
        cleanup(reactor)
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert got == [b"last"]
