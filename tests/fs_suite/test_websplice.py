"""
txuring.websplice: bodies spliced file -> pipe -> socket on UringReactor's completion
transports, against twisted.web.static.File over real sockets; on other reactors (and
over TLS, and without the splice op) the same requests take the copying producer.
"""

import errno
import os

import pytest
import pytest_twisted
from twisted.internet import defer, ssl
from twisted.web import server, static

from fs_suite.conftest import open_fds, wait_until
from fs_suite.test_web import _Collect, _same, _unboundary, connect, raw, reactor
from txuring import web, websplice

ensure = pytest_twisted.ensureDeferred


def on_uring():
    return getattr(reactor(), "ring", None) is not None and \
        type(reactor()).__name__ == "UringReactor"


@pytest.fixture
def spliced(tmp_path, monkeypatch):
    """
    static.File and a Directory splicing every body (C{splice_min=0}) of one tree;
    C{"producers"} records every producer made.
    """
    root = tmp_path / "root"
    root.mkdir()
    big = os.urandom(3 * websplice.PIPE_SIZE + 12345)
    (root / "big.bin").write_bytes(big)
    (root / "small.txt").write_bytes(b"0123456789" * 10)
    producers = []
    real_init = web.FileProducer.__init__

    def recording(self, *a, **kw):
        real_init(self, *a, **kw)
        producers.append(self)

    monkeypatch.setattr(web.FileProducer, "__init__", recording)
    ours = web.Directory(str(root), splice_min=0, chunk_size=16)
    ports = [reactor().listenTCP(0, server.Site(res), interface="127.0.0.1")
             for res in (static.File(str(root)), ours)]
    yield {"static": ports[0].getHost().port, "ours": ports[1].getHost().port,
           "root": root, "big": big, "resource": ours, "producers": producers}
    for p in ports:
        pytest_twisted.blockon(defer.maybeDeferred(p.stopListening))
    ours.close()


def _kinds(producers):
    return {type(p).__name__ for p in producers}


@ensure
async def test_spliced_bodies_match_static_file(spliced):
    """Whole files, single ranges, multipart ranges: static.File's bytes."""
    big = spliced["big"]
    status, hdrs, body = await raw(spliced["ours"], b"/big.bin")
    assert status == 200 and body == big
    _same(await raw(spliced["static"], b"/big.bin"), (status, hdrs, body))
    for path in (b"/big.bin", b"/small.txt"):
        for rng in (b"bytes=1000-700000", b"bytes=-5", b"bytes=0-0,5-9,-3",
                    b"bytes=10-20,300000-800000"):
            h = [(b"Range", rng)]
            _same(_unboundary(await raw(spliced["static"], path, headers=h)),
                  _unboundary(await raw(spliced["ours"], path, headers=h)))
    kinds = _kinds(spliced["producers"])
    if on_uring():
        assert kinds == {"SpliceProducer"}
        assert all(p.spliced == p.bytes_read for p in spliced["producers"])
    else:
        assert kinds == {"FileProducer"}  # (no completion transport to splice into)


@ensure
async def test_keep_alive_requests_after_a_spliced_body(spliced):
    """The next responses on the connection come after the spliced bytes, in order."""
    req = b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % (n,)
                   for n in (b"big.bin", b"small.txt", b"missing", b"big.bin"))
    req += b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    proto = await connect(spliced["ours"], _Collect(req))
    data = await proto.done
    assert data.count(b"HTTP/1.1 200") == 4 and data.count(b"HTTP/1.1 404") == 1
    assert data.count(spliced["big"]) == 2
    i = data.index(spliced["big"])
    assert data.index(b"0123456789" * 10) > i
    assert data.rindex(spliced["big"]) < data.rindex(b"0123456789" * 10)


@ensure
async def test_client_leaving_mid_splice_closes_file_and_pipe(spliced):
    huge = spliced["root"] / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse
    await raw(spliced["ours"], b"/small.txt")  # the root's fd, opened once
    del spliced["producers"][:]
    before = open_fds()
    proto = await connect(spliced["ours"], _Collect(
        b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n", abort_after=3000000))
    await proto.done
    p = spliced["producers"][0]
    await wait_until(reactor(), lambda: p._fd is None)
    assert p._stopped and p.bytes_read < 256 * 1024 * 1024
    if on_uring():
        assert type(p).__name__ == "SpliceProducer" and p._pipe is None
    await wait_until(reactor(), lambda: open_fds() <= before)


@ensure
async def test_a_client_that_does_not_read_holds_at_most_a_pipe(spliced):
    """
    The socket's buffers fill; the producer waits on a POLLOUT, with at most one
    pipe's worth read from the file beyond what went into the socket; an abort then
    ends it (the poll holds the socket's file: it must be cancelled).
    """
    huge = spliced["root"] / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    del spliced["producers"][:]
    proto = await connect(spliced["ours"], _Collect(
        b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n", read=False))
    samples = []

    def stuck():
        ps = spliced["producers"]
        samples.append(ps[0].bytes_read if ps else -1)
        return len(samples) > 20 and samples[-1] == samples[-20] > 0 and \
            (ps[0]._reading is not None or ps[0]._paused is not None)

    await wait_until(reactor(), stuck, timeout=10)
    p = spliced["producers"][0]
    assert p.bytes_read < 64 * 1024 * 1024
    if on_uring():
        assert p.bytes_read - p.spliced <= p._pipe_size
    proto.transport.abortConnection()
    await proto.done
    await wait_until(reactor(), lambda: p._fd is None)


@ensure
async def test_a_file_shrinking_under_a_splice_closes_the_connection(spliced):
    path = spliced["root"] / "shrinks.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    del spliced["producers"][:]
    proto = await connect(spliced["ours"], _Collect(
        b"GET /shrinks.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read=False))
    await wait_until(reactor(), lambda: spliced["producers"] and
                     spliced["producers"][0].bytes_read > 0, timeout=10)
    p = spliced["producers"][0]
    os.truncate(path, p.bytes_read)
    proto.transport.resumeProducing()
    data = await proto.done.addTimeout(10, reactor())
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: %d" % (64 * 1024 * 1024,) in head.lower()
    assert len(body) == p.bytes_read  # what was read, then the close
    await wait_until(reactor(), lambda: p._fd is None)


@ensure
async def test_without_the_splice_op_the_body_is_copied(spliced, monkeypatch):
    """A kernel without IORING_OP_SPLICE (before 5.7): the copying producer."""
    from txuring import fs as txfs

    ops = txfs.filesystem().ops()
    if ops.kind == "io_uring":
        real = ops._has
        monkeypatch.setattr(ops, "_has", lambda op: op != "splice" and real(op))
    status, hdrs, body = await raw(spliced["ours"], b"/big.bin")
    assert status == 200 and body == spliced["big"]
    assert _kinds(spliced["producers"]) == {"FileProducer"}


@ensure
async def test_tls_bodies_are_copied(spliced):
    """Over TLS the bytes must be encrypted: never spliced, and still right."""
    key = ssl.KeyPair.generate(size=2048)
    cert = key.selfSignedCert(1, CN="localhost")
    port = reactor().listenSSL(0, server.Site(spliced["resource"]), cert.options(),
                               interface="127.0.0.1")
    try:
        proto = _Collect(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        from twisted.internet import protocol

        await protocol.ClientCreator(reactor(), lambda: proto).connectSSL(
            "127.0.0.1", port.getHost().port, ssl.CertificateOptions())
        data = await proto.done
    finally:
        await port.stopListening()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == spliced["big"]
    assert _kinds(spliced["producers"]) == {"FileProducer"}


def test_bad_splice_min():
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError):
            web.Directory("/tmp", splice_min=bad)


@ensure
async def test_no_pipe_means_copying(spliced, monkeypatch):
    """pipe2 failing (EMFILE): the copying producer, and a right answer."""
    def no_pipe(flags):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(websplice.os, "pipe2", no_pipe)
    status, hdrs, body = await raw(spliced["ours"], b"/big.bin")
    assert status == 200 and body == spliced["big"]
    assert _kinds(spliced["producers"]) == {"FileProducer"}


@ensure
async def test_headers_not_yet_sent_are_waited_for_less_and_less_often(spliced):
    """
    A chunk is spliced only once the transport has sent all it holds (the headers
    here). Held back (the transport made to look as if a send of its were in flight,
    as for a client that reads nothing), the producer looks less and less often;
    once the transport sends, the body follows the headers, whole.
    """
    if not on_uring():
        pytest.skip("splicing is UringReactor's")
    held = {}
    real_init = websplice.SpliceProducer.__init__

    def holding(self, ops, fd, request, parts, transport, *a, **kw):
        real_init(self, ops, fd, request, parts, transport, *a, **kw)
        if not transport._sendUd:
            transport._sendUd = held["ud"] = -1  # (no op has this user_data)
            held["transport"] = transport

    websplice.SpliceProducer.__init__ = holding
    try:
        proto = await connect(spliced["ours"], _Collect(
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        await wait_until(reactor(), lambda: spliced["producers"] and
                         spliced["producers"][-1]._looks == 6, timeout=10)
    finally:
        websplice.SpliceProducer.__init__ = real_init
    p = spliced["producers"][-1]
    assert p.spliced == 0 and held
    transport = held["transport"]
    transport._sendUd = 0
    transport._queuePass()
    data = await proto.done
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == spliced["big"]
    assert p._looks == 0


@ensure
async def test_an_encoded_response_is_never_spliced(spliced):
    """
    Behind EncodingResourceWrapper (gzip), the body goes through the request's
    encoder: never spliced raw into the socket. HTTP/1.0, so that the response has
    no chunked framing either (the encoder drops its Content-Length).
    """
    import gzip

    from twisted.web.resource import EncodingResourceWrapper

    from fs_suite.test_web import _Collect, connect

    wrapped = EncodingResourceWrapper(spliced["resource"], [server.GzipEncoderFactory()])
    port = reactor().listenTCP(0, server.Site(wrapped), interface="127.0.0.1")
    try:
        req = b"GET /big.bin HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
        proto = await connect(port.getHost().port, _Collect(req))
        data = await proto.done
    finally:
        await defer.maybeDeferred(port.stopListening)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert gzip.decompress(body) == spliced["big"]
    assert "SpliceProducer" not in _kinds(spliced["producers"])


@ensure
async def test_nothing_is_spliced_after_the_server_aborts(spliced):
    """
    abortConnection (the channel's timeout, or the application) drops the
    connection at once, but Twisted's transport only marks itself C{_aborting}
    until its connectionLost on the next turn: a splice made meanwhile (a POLLOUT
    or a splice op completing in the same pass) must not send more of the body.
    """
    if not on_uring():
        pytest.skip("splicing is UringReactor's")
    huge = spliced["root"] / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    del spliced["producers"][:]
    proto = await connect(spliced["ours"], _Collect(
        b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n", read=False))

    def stuck():
        ps = spliced["producers"]
        return ps and ps[0]._in_pipe > 0 and ps[0]._reading is not None

    await wait_until(reactor(), stuck, timeout=10)
    p = spliced["producers"][0]
    p._transport.abortConnection()
    # As the poll's completion would, in the same pass: nothing more may go out.
    with pytest.raises(ConnectionError):
        p._drain()
    p._in_pipe = 0  # (so that _chunk's own check is reached)
    with pytest.raises(ConnectionError):
        p._chunk()
    proto.transport.abortConnection()  # (paused, the client would not see the RST)
    await proto.done
    await wait_until(reactor(), lambda: p._fd is None)


@ensure
async def test_a_failure_handing_the_file_to_a_producer_leaks_no_fd(spliced, monkeypatch):
    """
    The fast path hands its open file to a producer: should getting the ops to
    stream with fail (a closed filesystem, a bug), the file is closed, not leaked.
    """
    ours = spliced["resource"]
    status, _, body = await raw(spliced["ours"], b"/big.bin")  # (the root opened)
    assert status == 200 and body == spliced["big"]
    await wait_until(reactor(), lambda: all(p._fd is None for p in spliced["producers"]))
    before = open_fds()
    real = ours._fs()

    class Broken:
        def __getattr__(self, name):
            return getattr(real, name)

        def ops(self):
            raise RuntimeError("no ops (the test's)")

    monkeypatch.setattr(ours, "_fs", lambda: Broken())
    status, _, _ = await raw(spliced["ours"], b"/big.bin")
    assert status == 500
    monkeypatch.undo()
    await wait_until(reactor(), lambda: open_fds() <= before)
