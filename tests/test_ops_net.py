"""
The socket, polling, timer, linking and cancelling operations of L{txuring.Ring},
checked on real loopback sockets, socketpairs and pipes against what the C{socket}
module sees.
"""

import array
import errno
import fcntl
import os
import select
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

import txuring
from txuring.handle import Handle

from conftest import open_fds, wait_until

F_MORE = 1 << 1  # IORING_CQE_F_MORE
F_NOTIF = 1 << 3  # IORING_CQE_F_NOTIF


def _need(ring, op):
    if not ring.op_supported(op):
        pytest.skip("this kernel lacks io_uring op %r" % (op,))


def tcp_pair():
    """A connected loopback TCP pair (client, server) of blocking sockets."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
    return client, server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- socket, bind, listen, connect, accept ----


@pytest_twisted.inlineCallbacks
def test_socket_bind_listen_accept_connect(ring):
    for op in ("socket", "bind", "listen"):
        _need(ring, op)
    fd = yield ring.syscall_result(ring.socket(socket.AF_INET, socket.SOCK_STREAM))
    lsock = socket.socket(fileno=fd)
    try:
        assert lsock.family == socket.AF_INET and lsock.type == socket.SOCK_STREAM
        assert not os.get_inheritable(fd)  # SOCK_CLOEXEC added
        assert (yield ring.syscall_result(ring.bind(fd, socket.AF_INET, ("127.0.0.1", 0)))) == 0
        host, port = lsock.getsockname()
        assert host == "127.0.0.1" and port != 0
        assert (yield ring.syscall_result(ring.listen(fd, 8))) == 0
        assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1

        # Accept through the ring while a socket-module client connects.
        d = ring.syscall_result(ring.accept(fd))
        client = socket.create_connection(("127.0.0.1", port))
        try:
            afd, address = yield d
            assert address == client.getsockname()
            with socket.socket(fileno=afd) as accepted:
                assert accepted.getpeername() == client.getsockname()
                assert not os.get_inheritable(afd)
                client.sendall(b"ping")
                assert accepted.recv(10) == b"ping"
        finally:
            client.close()

        # Connect through the ring to the same listener.
        cfd = yield ring.syscall_result(ring.socket(socket.AF_INET, socket.SOCK_STREAM))
        with socket.socket(fileno=cfd) as csock:
            assert (yield ring.syscall_result(
                ring.connect(cfd, socket.AF_INET, ("127.0.0.1", port)))) == 0
            afd, address = yield ring.syscall_result(ring.accept(fd, flags=socket.SOCK_NONBLOCK))
            with socket.socket(fileno=afd) as accepted:
                assert address == csock.getsockname()
                # SOCK_NONBLOCK went to accept4
                assert fcntl.fcntl(afd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        lsock.close()


@pytest_twisted.inlineCallbacks
def test_bind_address_in_use(ring):
    _need(ring, "bind")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with socket.socket() as s:
            with pytest.raises(OSError) as info:
                yield ring.syscall_result(ring.bind(s.fileno(), socket.AF_INET,
                                                    taken.getsockname()))
            assert info.value.errno == errno.EADDRINUSE


@pytest_twisted.inlineCallbacks
def test_connect_refused_and_ipv6_and_unix(ring, tmp_path):
    port = free_port()
    with socket.socket() as s:
        with pytest.raises(ConnectionRefusedError):
            yield ring.syscall_result(ring.connect(s, socket.AF_INET, ("127.0.0.1", port)))
    if socket.has_ipv6:
        try:
            srv6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        except OSError:
            srv6 = None
        if srv6 is not None:
            with srv6, socket.socket(socket.AF_INET6) as c6:
                yield ring.syscall_result(ring.connect(c6, socket.AF_INET6,
                                                       srv6.getsockname()[:2]))
                conn, _ = srv6.accept()
                with conn:
                    assert conn.getpeername() == c6.getsockname()
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen()
        with socket.socket(socket.AF_UNIX) as c:
            yield ring.syscall_result(ring.connect(c, socket.AF_UNIX, path))
            d = ring.syscall_result(ring.accept(srv))
            afd, address = yield d
            os.close(afd)
            assert address in ("", None)  # an unbound client has no name


@pytest_twisted.inlineCallbacks
def test_accept_multishot(ring, reactor):
    _need(ring, "accept_multishot")
    srv = socket.create_server(("127.0.0.1", 0))
    got = []
    h = ring.accept(srv, multishot=True, callback=lambda res, flags: got.append((res, flags)))
    d = ring.syscall_result(h)
    clients = []
    try:
        for i in range(5):
            clients.append(socket.create_connection(srv.getsockname()))
        yield wait_until(reactor, lambda: len(got) == 5)
        assert all(res >= 0 and flags & F_MORE for res, flags in got)
        peers = set()
        for res, _ in got:
            with socket.socket(fileno=res) as s:
                peers.add(s.getpeername())
        assert peers == {c.getsockname() for c in clients}
        assert not h.done
        yield ring.cancel(h)
        with pytest.raises(OSError) as info:
            yield d
        assert info.value.errno == errno.ECANCELED
        assert got[-1] == (-errno.ECANCELED, 0)  # the final CQE reached the callback too
    finally:
        for c in clients:
            c.close()
        srv.close()


@pytest_twisted.inlineCallbacks
def test_shutdown(ring):
    client, server = tcp_pair()
    with client, server:
        assert (yield ring.syscall_result(ring.shutdown(client, socket.SHUT_WR))) == 0
        assert server.recv(10) == b""  # the peer sees EOF
        server.sendall(b"still open the other way")
        assert client.recv(100) == b"still open the other way"
        with pytest.raises(ValueError):
            ring.shutdown(client, 7)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            yield ring.syscall_result(ring.shutdown(r, socket.SHUT_RD))
        assert info.value.errno == errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)


# ---- send and recv ----


@pytest_twisted.inlineCallbacks
def test_send_and_recv(ring):
    client, server = tcp_pair()
    with client, server:
        n = yield ring.syscall_result(ring.send(client, b"hello world"))
        assert n == 11
        assert server.recv(100) == b"hello world"
        buf = bytearray(5)
        d = ring.syscall_result(ring.recv(client, buf))
        server.sendall(b"0123456789")
        assert (yield d) == 5 and buf == b"01234"
        # MSG_PEEK leaves the rest in the socket.
        buf = bytearray(100)
        n = yield ring.syscall_result(ring.recv(client, buf, socket.MSG_PEEK))
        assert bytes(buf[:n]) == b"56789"
        assert client.recv(100) == b"56789"
        big = os.urandom(1 << 20)
        d = ring.syscall_result(ring.send(server, big, socket.MSG_WAITALL))

        def receive_all():
            received = bytearray()
            while len(received) < len(big):
                received += client.recv(1 << 16)
            return received

        # The reactor must keep turning (the driver submits from it): receive in a thread.
        received = yield threads.deferToThread(receive_all)
        assert (yield d) == len(big) and received == big
        server.close()
        assert (yield ring.syscall_result(ring.recv(client, bytearray(10)))) == 0  # EOF


@pytest_twisted.inlineCallbacks
def test_recv_multishot_many_messages_enobufs_and_rearm(ring, reactor):
    _need(ring, "recv_multishot")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bufs = txuring.BufferRing(ring, entries=8, buffer_size=32)
    got = []
    held = []  # buffer ids not handed back: the ring runs dry
    final = []

    def on_cqe(res, flags):
        if res > 0:
            view, bid = bufs.view(res, flags)
            got.append(bytes(view))
            if keep_buffers:
                held.append(bid)
            else:
                bufs.provide(bid)
        if not flags & F_MORE:
            final.append(res)

    try:
        # Many messages (12x the buffers), each buffer handed back at once. The kernel
        # fills buffers for everything queued in one go, so bursts stay below 8.
        keep_buffers = False
        h = ring.recv_multishot(a, bufs, on_cqe)
        d = ring.syscall_result(h)
        expected = [b"message %03d" % i for i in range(100)]
        for i in range(0, 100, 5):
            for m in expected[i:i + 5]:
                b.send(m)
            yield wait_until(reactor, lambda: len(got) == i + 5)
        assert got == expected
        assert not h.done and not final
        assert ring.active_ops == 1

        # Keep the buffers: after 8 messages the kernel has none and ends the op.
        keep_buffers = True
        got.clear()
        for i in range(10):
            b.send(b"dry %d" % i)
        with pytest.raises(OSError) as info:
            yield d
        assert info.value.errno == errno.ENOBUFS
        assert final == [-errno.ENOBUFS]
        assert got == [b"dry %d" % i for i in range(8)]
        assert h.done and ring.active_ops == 0

        # Hand the buffers back and re-arm: what waited in the socket arrives.
        for bid in held:
            bufs.provide(bid)
        keep_buffers = False
        final.clear()
        got.clear()
        h = ring.recv_multishot(a, bufs, on_cqe)
        d = ring.syscall_result(h)
        yield wait_until(reactor, lambda: len(got) == 2)
        assert got == [b"dry 8", b"dry 9"]
        b.close()
        assert (yield d) == 0  # EOF ends it
        assert final == [0]
    finally:
        a.close()
        b.close()
        bufs.close()


@pytest_twisted.inlineCallbacks
def test_send_msg_recv_msg_with_fd_passing(ring):
    a, b = socket.socketpair()
    r, w = os.pipe()
    before = open_fds()
    try:
        n = yield ring.syscall_result(ring.send_msg(a, [b"head", b"er"], fds=[w, r]))
        assert n == 6
        bufs = [bytearray(3), bytearray(10)]
        msg = yield ring.syscall_result(ring.recv_msg(b, bufs, max_fds=4))
        assert msg.nbytes == 6
        assert b"".join(bufs)[:6] == b"header"
        assert len(msg.fds) == 2
        assert not msg.msg_flags & socket.MSG_CTRUNC
        w2, r2 = msg.fds
        assert set(msg.fds).isdisjoint({r, w})
        # The received fds work: they are the same pipe.
        os.write(w2, b"through the passed fd")
        assert os.read(r, 100) == b"through the passed fd"
        os.write(w, b"back")
        assert os.read(r2, 100) == b"back"
        assert os.fstat(w2).st_ino == os.fstat(w).st_ino
        os.close(w2)
        os.close(r2)
        assert open_fds() == before

        # Without room for fds, MSG_CTRUNC says some were dropped (and the kernel
        # closed them).
        yield ring.syscall_result(ring.send_msg(a, [b"x"], fds=[r]))
        msg = yield ring.syscall_result(ring.recv_msg(b, [bytearray(1)]))
        assert msg.fds == [] and msg.msg_flags & socket.MSG_CTRUNC
        assert open_fds() == before
    finally:
        for s in (a, b):
            s.close()
        os.close(r)
        os.close(w)


@pytest_twisted.inlineCallbacks
def test_send_msg_recv_msg_datagram_addresses(ring, tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        d = ring.syscall_result(ring.recv_msg(rx, [bytearray(100)]))
        n = yield ring.syscall_result(ring.send_msg(tx, [b"dgram"], address=rx.getsockname(),
                                                    family=socket.AF_INET))
        assert n == 5
        msg = yield d
        assert msg.nbytes == 5 and msg.address == tx.getsockname()


def test_recv_msg_cancelled_after_completion_closes_passed_fds():
    """
    The recv_msg completed in the kernel (its CQE waits, not yet harvested) when its
    Deferred is cancelled: nobody will receive the fds, so the Ring closes them.
    """
    ring = txuring.Ring(8)
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        a.sendmsg([b"fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                              array.array("i", [r, w]).tobytes())])
        before = open_fds()
        h = ring.recv_msg(b, [bytearray(10)], max_fds=2)
        d = ring.syscall_result(h)
        assert ring.cqe_ready(2.0)  # completed (the fds are installed), not harvested
        assert not h.done
        failures = []
        d.addErrback(failures.append)
        d.cancel()
        assert not failures  # paused until the kernel let go
        for _ in range(10):
            if h.done and not ring.active_ops:
                break
            ring.cqe_ready(1.0)
            ring.fill_completions()
        assert h.done and h.result == 3
        assert len(failures) == 1 and failures[0].check(defer.CancelledError)
        assert open_fds() == before  # the two passed fds were closed
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(w)
        ring.exit()


def test_send_zc_handle_held_until_notification(monkeypatch):
    ring = txuring.Ring(8)
    _need(ring, "send_zc")
    client, server = tcp_pair()
    seen = []
    real_more = Handle._more

    def spy_more(self, res, flags):
        seen.append((self.op, res, flags, self.state, self.user_data in ring._handles,
                     ring.active_ops))
        return real_more(self, res, flags)

    monkeypatch.setattr(Handle, "_more", spy_more)
    data = os.urandom(200000)
    try:
        h = ring.send_zc(client, data)
        received = bytearray()
        deadline = time.monotonic() + 5
        while not h.done:
            assert time.monotonic() < deadline
            ring.cqe_ready(0.01)
            ring.fill_completions()
            try:
                while True:
                    chunk = server.recv(1 << 20, socket.MSG_DONTWAIT)
                    if not chunk:
                        break
                    received += chunk
            except BlockingIOError:
                pass
        # The first CQE (bytes sent, F_MORE) did not end the op: the handle stayed in
        # the ring, holding the buffer, until the notification.
        assert seen and seen[0][0] == "send_zc"
        op, res, flags, state, in_ring, active = seen[0]
        assert res == len(data) and flags & F_MORE
        assert state != 2 and in_ring and active == 1
        assert h.flags & F_NOTIF  # the final CQE is the notification
        assert h.result == len(data)  # with the byte count of the first CQE
        assert ring.active_ops == 0
        d = ring.syscall_result(h)
        assert d.result == len(data)
        while len(received) < len(data):
            received += server.recv(1 << 20)
        assert received == data
    finally:
        client.close()
        server.close()
        ring.exit()


@pytest_twisted.inlineCallbacks
def test_send_zc_through_the_driver(ring):
    _need(ring, "send_zc")
    client, server = tcp_pair()
    with client, server:
        n = yield ring.syscall_result(ring.send_zc(client, b"zero copy"))
        assert n == 9
        assert server.recv(100) == b"zero copy"
        assert ring.active_ops == 0


# ---- polling ----


@pytest_twisted.inlineCallbacks
def test_poll_add_single(ring, reactor):
    a, b = socket.socketpair()
    with a, b:
        mask = yield ring.syscall_result(ring.poll_add(a, select.POLLOUT))
        assert mask & select.POLLOUT
        h = ring.poll_add(a, select.POLLIN)
        d = ring.syscall_result(h)
        yield task.deferLater(reactor, 0.02, lambda: None)
        assert not d.called  # nothing to read yet
        b.send(b"x")
        mask = yield d
        assert mask & select.POLLIN and h.done
        b.close()
        mask = yield ring.syscall_result(ring.poll_add(a, select.POLLIN | select.POLLRDHUP))
        assert mask & (select.POLLHUP | select.POLLRDHUP)


@pytest_twisted.inlineCallbacks
def test_poll_add_multishot_and_poll_remove(ring, reactor):
    _need(ring, "poll_add_multishot")
    r, w = os.pipe()
    masks = []
    try:
        h = ring.poll_add(r, select.POLLIN, multishot=True,
                          callback=lambda res, flags: masks.append((res, flags)))
        d = ring.syscall_result(h)
        for i in range(3):
            os.write(w, b"x")
            yield wait_until(reactor, lambda: len(masks) == i + 1)
            assert os.read(r, 10) == b"x"
        assert all(m & select.POLLIN and f & F_MORE for m, f in masks)
        assert not h.done
        res = yield ring.syscall_result(ring.poll_remove(h))
        assert res == 0
        with pytest.raises(OSError) as info:
            yield d
        assert info.value.errno == errno.ECANCELED
        assert not masks[-1][1] & F_MORE
        # Removing it again: ENOENT.
        with pytest.raises(FileNotFoundError):
            yield ring.syscall_result(ring.poll_remove(h))
    finally:
        os.close(r)
        os.close(w)


# ---- timers ----


@pytest_twisted.inlineCallbacks
def test_timeout_relative(ring):
    t0 = time.monotonic()
    res = yield ring.syscall_result(ring.timeout(0.05))
    elapsed = time.monotonic() - t0
    assert res == 0
    assert 0.05 <= elapsed < 2.0


@pytest_twisted.inlineCallbacks
def test_timeout_absolute(ring):
    t0 = time.monotonic()
    res = yield ring.syscall_result(ring.timeout(time.clock_gettime(time.CLOCK_MONOTONIC)
                                                 + 0.05, absolute=True))
    assert res == 0 and 0.049 <= time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    res = yield ring.syscall_result(ring.timeout(time.time() + 0.05, absolute=True,
                                                 clock="realtime"))
    assert res == 0 and 0.04 <= time.monotonic() - t0 < 2.0
    # An absolute time in the past fires at once.
    t0 = time.monotonic()
    yield ring.syscall_result(ring.timeout(1.0, absolute=True))
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ValueError):
        ring.timeout(1, clock="sundial")
    with pytest.raises(ValueError):
        ring.timeout(-1)


@pytest_twisted.inlineCallbacks
def test_timeout_count(ring):
    t0 = time.monotonic()
    h = ring.timeout(30, count=3)
    d = ring.syscall_result(h)
    for _ in range(3):
        yield ring.syscall_result(ring.noop())
    res = yield d
    assert res == 0
    assert h.result == 0  # count reached: 0, not -ETIME
    assert time.monotonic() - t0 < 5


@pytest_twisted.inlineCallbacks
def test_timeout_remove(ring):
    _need(ring, "timeout_remove")
    h = ring.timeout(30)
    d = ring.syscall_result(h)
    res = yield ring.syscall_result(ring.timeout_remove(h))
    assert res == 0
    with pytest.raises(OSError) as info:
        yield d
    assert info.value.errno == errno.ECANCELED
    # Removing a finished timeout: ENOENT.
    with pytest.raises(FileNotFoundError):
        yield ring.syscall_result(ring.timeout_remove(h))


# ---- linked ops ----


@pytest_twisted.inlineCallbacks
def test_link_timeout_cancels_a_silent_recv(ring):
    _need(ring, "link_timeout")
    a, b = socket.socketpair()
    with a, b:
        t0 = time.monotonic()
        with ring.linked():
            h = ring.recv(a, bytearray(100))
            t = ring.link_timeout(0.05)
        d = ring.syscall_result(h)
        fired = yield ring.syscall_result(t)
        assert fired is True
        with pytest.raises(OSError) as info:
            yield d
        assert info.value.errno == errno.ECANCELED
        assert 0.04 <= time.monotonic() - t0 < 2.0
        # The op finishes first: the link timeout reports False.
        b.send(b"data")
        buf = bytearray(100)
        with ring.linked():
            h = ring.recv(a, buf)
            t = ring.link_timeout(5)
        assert (yield ring.syscall_result(h)) == 4 and buf[:4] == b"data"
        assert (yield ring.syscall_result(t)) is False


@pytest_twisted.inlineCallbacks
def test_linked_chain_failure_cancels_the_rest(ring, tmp_path):
    path = tmp_path / "f"
    with ring.linked():
        bad = ring.openat2(tmp_path / "missing")
        after = ring.noop()
    with pytest.raises(FileNotFoundError):
        yield ring.syscall_result(bad)
    with pytest.raises(OSError) as info:
        yield ring.syscall_result(after)
    assert info.value.errno == errno.ECANCELED
    # A chain in order: write then fsync then read back.
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        buf = bytearray(5)
        with ring.linked():
            w = ring.write(fd, b"chain", 0)
            s = ring.fsync(fd)
            r = ring.read(fd, buf, 0)
        results = yield defer.gatherResults([ring.syscall_result(x) for x in (w, s, r)])
        assert results == [5, 0, 5] and buf == b"chain"
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        ring.link_timeout(1)  # outside linked()



@pytest_twisted.inlineCallbacks
def test_hard_linked_chain_runs_on_after_a_failure(ring, tmp_path):
    """
    linked(hard=True): IOSQE_IO_HARDLINK; a short read (a failure to a soft link)
    and an error both leave the next op to run: a read then the close of its fd.
    """
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(10)
    with ring.linked(hard=True):
        r = ring.read(fd, buf, 0)  # short: 3 of 10
        c = ring.close(fd)
    assert (yield ring.syscall_result(r)) == 3 and buf[:3] == b"abc"
    assert (yield ring.syscall_result(c)) == 0
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF  # the close ran
    # After an error too (the soft chain would cancel the noop):
    with ring.linked(hard=True):
        bad = ring.openat2(tmp_path / "missing")
        after = ring.noop()
    with pytest.raises(FileNotFoundError):
        yield ring.syscall_result(bad)
    assert (yield ring.syscall_result(after)) == 0
    # The same short read in a soft chain cancels what follows it.
    fd = os.open(path, os.O_RDONLY)
    try:
        with ring.linked():
            r = ring.read(fd, buf, 0)
            after = ring.noop()
        assert (yield ring.syscall_result(r)) == 3
        with pytest.raises(OSError) as info:
            yield ring.syscall_result(after)
        assert info.value.errno == errno.ECANCELED
    finally:
        os.close(fd)


# ---- cancellation ----


@pytest_twisted.inlineCallbacks
def test_cancel_by_handle(ring):
    a, b = socket.socketpair()
    with a, b:
        h = ring.recv(a, bytearray(10))
        d = ring.syscall_result(h)
        res = yield ring.cancel(h)
        assert res is None
        with pytest.raises(OSError) as info:
            yield d
        assert info.value.errno == errno.ECANCELED
        assert h.done
        # Cancelling a finished op answers at once.
        assert (yield ring.cancel(h)) is None


@pytest_twisted.inlineCallbacks
def test_cancel_fd(ring):
    _need(ring, "socket")  # IORING_ASYNC_CANCEL_FD came with 5.19
    a, b = socket.socketpair()
    c, e = socket.socketpair()
    with a, b, c, e:
        hs = [ring.recv(a, bytearray(10)) for _ in range(3)]
        other = ring.recv(c, bytearray(10))
        ds = [ring.syscall_result(h) for h in hs]
        yield ring.syscall_result(ring.noop())  # all submitted
        count = yield ring.cancel_fd(a.fileno())
        assert count == 3
        for d in ds:
            with pytest.raises(OSError) as info:
                yield d
            assert info.value.errno == errno.ECANCELED
        assert not other.done  # an op on another fd is untouched
        e.send(b"ok")
        assert (yield ring.syscall_result(other)) == 2
        # Nothing left on the fd: a count of 0.
        assert (yield ring.cancel_fd(a.fileno())) == 0


@pytest_twisted.inlineCallbacks
def test_cancel_all(ring):
    _need(ring, "socket")
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        hs = [ring.recv(a, bytearray(10)), ring.read(r, bytearray(10)), ring.timeout(30),
              ring.poll_add(b, select.POLLIN)]
        ds = [ring.syscall_result(h) for h in hs]
        yield ring.syscall_result(ring.noop())
        count = yield ring.cancel_all()
        assert count == 4
        for d in ds:
            with pytest.raises(OSError) as info:
                yield d
            assert info.value.errno in (errno.ECANCELED, errno.EINTR)
        assert ring.active_ops == 0
    finally:
        a.close()
        b.close()
        os.close(r)
        os.close(w)


@pytest_twisted.inlineCallbacks
def test_net_ops_leak_no_fds(ring):
    before = open_fds()
    srv = socket.create_server(("127.0.0.1", 0))
    with srv:
        for _ in range(10):
            fd = yield ring.syscall_result(ring.socket(socket.AF_INET, socket.SOCK_STREAM))
            d = ring.syscall_result(ring.accept(srv))
            yield ring.syscall_result(ring.connect(fd, socket.AF_INET, srv.getsockname()))
            afd, _ = yield d
            yield ring.syscall_result(ring.send(fd, b"x"))
            assert (yield ring.syscall_result(ring.recv(afd, bytearray(1)))) == 1
            yield ring.syscall_result(ring.close(afd))
            yield ring.syscall_result(ring.close(fd))
    assert open_fds() == before
