"""
txuring.web.Directory against twisted.web.static.File, both behind a real Site on
loopback, talked to over real sockets; on whichever reactor this process runs.
"""

import errno
import gzip
import os
import re

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.web import server, static

from fs_suite.conftest import open_fds, wait_until
from txuring import web

ensure = pytest_twisted.ensureDeferred


def reactor():
    from twisted.internet import reactor

    return reactor


class _Collect(protocol.Protocol):
    def __init__(self, request, abort_after=None, read=True):
        self.request = request
        self.data = bytearray()
        self.done = defer.Deferred()
        self.abort_after = abort_after
        self.read = read

    def connectionMade(self):
        if not self.read:
            self.transport.pauseProducing()
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data
        if self.abort_after is not None and len(self.data) >= self.abort_after:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.done.callback(bytes(self.data))


async def connect(port, proto):
    await protocol.ClientCreator(reactor(), lambda: proto).connectTCP("127.0.0.1", port)
    return proto


async def raw(port, path, method=b"GET", headers=()):
    """One request with Connection: close: (status, {header: value}, body)."""
    req = b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" % (method, path)
    for k, v in headers:
        req += b"%s: %s\r\n" % (k, v)
    proto = await connect(port, _Collect(req + b"\r\n"))
    data = await proto.done
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


#: Directory's modes the tests run in: "fast", its defaults (a file the kernel can
#: serve at once served without an op, big bodies spliced on UringReactor); "ops",
#: every open and read an op, every body copied.
MODES = {"fast": {}, "ops": {"nowait": False, "splice": False}}


@pytest.fixture(params=sorted(MODES))
def site(tmp_path, request):
    """Two servers of the same tree: static.File and txuring.web.Directory."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"hello text\n")
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "blob.unknownext").write_bytes(os.urandom(3000))
    (root / "data.json.gz").write_bytes(gzip.compress(b"{}"))
    (root / "empty.txt").write_bytes(b"")
    big = os.urandom(300 * 1024 + 17)
    (root / "big.bin").write_bytes(big)
    # At and just past the first read that comes with the stat (web.CHUNK bytes):
    (root / "edge.bin").write_bytes(os.urandom(web.CHUNK))
    (root / "edge1.bin").write_bytes(os.urandom(web.CHUNK + 1))
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<h1>index</h1>")
    (root / "sub" / "x.css").write_bytes(b"p{}")
    (root / "noindex").mkdir()
    (root / "noindex" / "f.txt").write_bytes(b"f")
    (root / "noindex" / "d").mkdir()
    (tmp_path / "outside").write_bytes(b"SECRET")
    (root / "escape-rel").symlink_to("../outside")
    (root / "escape-abs").symlink_to(str(tmp_path / "outside"))
    (root / "inside-link.txt").symlink_to("a.txt")
    os.mkfifo(root / "fifo")
    (root / "sneaky").mkdir()
    (root / "sneaky" / "index.html").symlink_to("../../outside")
    ours = web.Directory(str(root), **MODES[request.param])
    ports = []
    for res in (static.File(str(root)), ours):
        ports.append(reactor().listenTCP(0, server.Site(res), interface="127.0.0.1"))
    yield {"static": ports[0].getHost().port, "ours": ports[1].getHost().port,
           "root": root, "big": big, "resource": ours, "mode": request.param}
    for p in ports:
        pytest_twisted.blockon(defer.maybeDeferred(p.stopListening))
    ours.close()


def _same(theirs, ours, headers=(b"content-type", b"content-length", b"content-range",
                                  b"content-encoding", b"accept-ranges",
                                  b"last-modified", b"location")):
    assert ours[0] == theirs[0], (ours, theirs)
    for h in headers:
        assert ours[1].get(h) == theirs[1].get(h), (h, ours[1], theirs[1])
    assert ours[2] == theirs[2]


@ensure
async def test_same_answers_as_static_file(site):
    for path in (b"/a.txt", b"/page.html", b"/blob.unknownext", b"/data.json.gz",
                 b"/empty.txt", b"/big.bin", b"/edge.bin", b"/edge1.bin", b"/sub/", b"/sub/x.css", b"/missing",
                 b"/sub/missing", b"/a.txt/x", b"/inside-link.txt", b"/%61.txt",
                 b"/sub", b"/sub?q=1"):
        theirs = await raw(site["static"], path)
        ours = await raw(site["ours"], path)
        if path.startswith(b"/sub") and theirs[0] == 302:
            assert ours[0] == 302 and ours[1][b"location"] == theirs[1][b"location"]
            continue
        if theirs[0] == 404:
            assert ours[0] == 404, path
            continue
        _same(theirs, ours)
    status, hdrs, body = await raw(site["ours"], b"/big.bin")
    assert status == 200 and body == site["big"]


@ensure
async def test_head_and_if_modified_since_as_static_file(site):
    for path in (b"/a.txt", b"/big.bin", b"/sub/"):
        _same(await raw(site["static"], path, b"HEAD"), await raw(site["ours"], path, b"HEAD"))
    last = (await raw(site["ours"], b"/a.txt"))[1][b"last-modified"]
    for since in (last, b"Sat, 01 Jan 2000 00:00:00 GMT"):
        h = [(b"If-Modified-Since", since)]
        theirs = await raw(site["static"], b"/a.txt", headers=h)
        ours = await raw(site["ours"], b"/a.txt", headers=h)
        _same(theirs, ours, headers=(b"last-modified",))
    assert ours[0] == 200 and (await raw(site["ours"], b"/a.txt", headers=[
        (b"If-Modified-Since", last)]))[0] == 304


def _unboundary(resp):
    status, hdrs, body = resp
    m = re.search(rb'boundary="?([0-9a-f]+)', hdrs.get(b"content-type", b""))
    if m:
        body = body.replace(m.group(1), b"B")
        hdrs = dict(hdrs)
        hdrs[b"content-type"] = hdrs[b"content-type"].replace(m.group(1), b"B")
    return status, hdrs, body


@ensure
async def test_ranges_as_static_file(site):
    for rng in (b"bytes=0-9", b"bytes=10-", b"bytes=-5", b"bytes=100-200",
                b"bytes=0-0,5-9,-3", b"bytes=99999999-", b"bytes=5-1", b"items=0-1",
                b"bytes=0-5,99999999-", b"bytes=300000-400000", b"garbage"):
        for path in (b"/big.bin", b"/a.txt", b"/edge1.bin"):
            h = [(b"Range", rng)]
            theirs = _unboundary(await raw(site["static"], path, headers=h))
            ours = _unboundary(await raw(site["ours"], path, headers=h))
            if theirs[0] == 416:
                assert ours[0] == 416 and ours[1][b"content-range"] == \
                    theirs[1][b"content-range"], (rng, path)
                continue
            _same(theirs, ours)
    status, hdrs, body = await raw(site["ours"], b"/big.bin", headers=[
        (b"Range", b"bytes=1000-70000")])
    assert status == 206 and body == site["big"][1000:70001]


@ensure
async def test_no_escape_from_the_root(site):
    assert b"SECRET" in (await raw(site["static"], b"/escape-rel"))[2]  # static.File does
    for path in (b"/escape-rel", b"/escape-abs", b"/../outside", b"/sub/../../outside",
                 b"/%2e%2e/outside", b"/sub/%2e%2e/%2e%2e/outside", b"/..%2Foutside",
                 b"/sub/..", b"/./a.txt", b"//a.txt", b"/a.txt%00", b"/fifo",
                 b"/\xff\xfe", b"/sneaky/", b"/sneaky/index.html"):
        status, hdrs, body = await raw(site["ours"], path)
        assert status in (404, 403, 400), (path, status)
        assert b"SECRET" not in body


@ensure
async def test_symlink_escape_when_allowed(site, tmp_path):
    res = web.Directory(site["root"], allow_symlink_escape=True)
    port = reactor().listenTCP(0, server.Site(res), interface="127.0.0.1")
    try:
        assert (await raw(port.getHost().port, b"/escape-rel"))[2] == b"SECRET"
        assert (await raw(port.getHost().port, b"/escape-abs"))[2] == b"SECRET"
        assert (await raw(port.getHost().port, b"/../outside"))[0] == 404  # never '..'
    finally:
        await port.stopListening()
        res.close()


@ensure
async def test_directory_listing_off_by_default_and_on_when_asked(site):
    assert (await raw(site["ours"], b"/noindex/"))[0] == 403
    assert (await raw(site["static"], b"/noindex/"))[0] == 200
    res = web.Directory(site["root"], listing=True)
    port = reactor().listenTCP(0, server.Site(res), interface="127.0.0.1")
    try:
        status, hdrs, body = await raw(port.getHost().port, b"/noindex/")
        theirs = await raw(site["static"], b"/noindex/")
        assert status == 200 and body == theirs[2]
        assert b'href="f.txt"' in body and b'href="d/"' in body
    finally:
        await port.stopListening()
        res.close()


@ensure
async def test_methods_other_than_get_and_head(site):
    theirs = await raw(site["static"], b"/a.txt", b"POST")
    ours = await raw(site["ours"], b"/a.txt", b"POST")
    assert ours[0] == theirs[0] == 405


@ensure
async def test_client_leaving_mid_response_closes_the_fd(site, monkeypatch):
    producers = []
    real = web.FileProducer

    class Recording(real):
        def __init__(self, *a, **kw):
            real.__init__(self, *a, **kw)
            producers.append(self)

    monkeypatch.setattr(web, "FileProducer", Recording)
    site["resource"].splice = False  # (FileProducer's; txuring.websplice's: test_websplice)
    big = site["root"] / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse: cheap to make and to read
    await raw(site["ours"], b"/a.txt")  # the root's fd, opened once
    del producers[:]
    before = open_fds()
    proto = await connect(site["ours"], _Collect(
        b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n", abort_after=500000))
    await proto.done
    assert producers
    try:
        await wait_until(reactor(), lambda: producers[0]._fd is None)
    except AssertionError:
        p = producers[0]
        raise AssertionError((p._stopped, p._paused, p._reading, p.bytes_read, p.done))
    assert producers[0]._stopped
    assert producers[0].bytes_read < 256 * 1024 * 1024
    try:
        await wait_until(reactor(), lambda: open_fds() <= before)
    except AssertionError:
        raise AssertionError([os.readlink("/proc/self/fd/%d" % fd)
                              for fd in open_fds() - before])


@ensure
async def test_a_client_that_does_not_read_pauses_the_producer(site, monkeypatch):
    producers = []
    real = web.FileProducer

    class Recording(real):
        def __init__(self, *a, **kw):
            real.__init__(self, *a, **kw)
            producers.append(self)

    monkeypatch.setattr(web, "FileProducer", Recording)
    site["resource"].splice = False  # (FileProducer's; txuring.websplice's: test_websplice)
    big = site["root"] / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    proto = await connect(site["ours"], _Collect(
        b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n", read=False))
    await wait_until(reactor(), lambda: producers and producers[0]._paused is not None)
    # The kernel's socket buffers fill (the transport resumes it meanwhile), then the
    # producer stays paused: what it read stops growing.
    samples = []

    def stable():
        # Paused and no longer reading (on the thread pool a read may be in flight for
        # a while with the count unchanged: stability alone does not mean paused).
        samples.append(producers[0].bytes_read)
        return len(samples) > 20 and samples[-1] == samples[-20] and \
            producers[0]._paused is not None

    await wait_until(reactor(), stable, timeout=10)
    assert producers[0].bytes_read < 64 * 1024 * 1024  # bounded: not the file
    proto.transport.abortConnection()
    await proto.done
    await wait_until(reactor(), lambda: producers[0]._fd is None)


@ensure
async def test_keep_alive_requests_in_a_row(site):
    req = b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % (n,)
                   for n in (b"a.txt", b"page.html", b"missing", b"big.bin"))
    req += b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    proto = await connect(site["ours"], _Collect(req))
    data = await proto.done
    assert data.count(b"HTTP/1.1 200") == 4 and data.count(b"HTTP/1.1 404") == 1
    assert site["big"] in data



@ensure
async def test_local_and_non_local_roots_serve_alike(site, monkeypatch):
    """
    Under a root on a local filesystem, a file's fstat is made in the reactor's
    thread (the open kept on that filesystem by RESOLVE_NO_XDEV); elsewhere it is a
    statx op. Both answer as static.File does.
    """
    ours = site["resource"]
    paths = (b"/a.txt", b"/big.bin", b"/edge1.bin", b"/empty.txt", b"/sub/", b"/fifo",
             b"/escape-rel", b"/missing")
    answers = {}
    for local in (True, False):
        ours.close()  # (the root is opened again, and its filesystem looked up again)
        if not local:
            monkeypatch.setattr(web, "LOCAL_FILESYSTEMS", frozenset())
        answers[local] = [await raw(site["ours"], p) for p in paths]
        assert ours._root.local is (local and web.filesystem_type(
            os.stat(site["root"]).st_dev) in web.LOCAL_FILESYSTEMS)
    for path, a, b in zip(paths, answers[True], answers[False]):
        _same(a, b)
        if path in (b"/fifo", b"/escape-rel", b"/missing"):
            assert a[0] == 404, path  # (static.File would open the FIFO and wait)
        else:
            _same(await raw(site["static"], path), a)

def test_bad_arguments():
    with pytest.raises(TypeError):
        web.Directory(3)
    with pytest.raises(ValueError):
        web.Directory("/tmp\0x")
    with pytest.raises(ValueError):
        web.Directory("/tmp", chunk_size=0)
    for bad in (-1, float("inf"), float("nan"), "1", True):
        with pytest.raises(ValueError):
            web.Directory("/tmp", root_check_interval=bad)


def test_the_last_resort_beneath_check_without_openat2(tmp_path):
    """Where a seccomp profile refuses openat2(2), the thread fallback checks by hand."""
    from txuring.fs import _open_beneath

    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"in")
    (tmp_path / "outside").write_bytes(b"out")
    (root / "up").symlink_to("../outside")
    (root / "abs").symlink_to(str(tmp_path / "outside"))
    (root / "ok").symlink_to("d/f")
    rfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for good in ("d/f", "ok", "d/../d/f"):
            fd = _open_beneath(good, os.O_RDONLY, 0, rfd)
            assert os.read(fd, 10) == b"in"
            os.close(fd)
        for bad in ("up", "abs", "../outside", "d/../../outside"):
            with pytest.raises(OSError) as e:
                _open_beneath(bad, os.O_RDONLY, 0, rfd)
            assert e.value.errno == errno.EXDEV, bad
    finally:
        os.close(rfd)



@ensure
async def test_a_file_shrinking_under_a_paused_response_closes_the_connection(site,
                                                                               monkeypatch):
    """
    A response paused by its transport (the client reads nothing) when the file
    shrinks; the client then reads: the producer writes the chunk it holds (more than
    the transport's high-water mark, so the transport pauses it again) and finds the
    end of the file. The connection must close (the promised length cannot be kept).
    It stayed open for good: the transport's own loseConnection waits for its
    registered producer, the HTTP channel, which only the request's (the channel's)
    loseConnection unregisters.
    """
    producers = []
    real = web.FileProducer

    class Recording(real):
        def __init__(self, *a, **kw):
            real.__init__(self, *a, **kw)
            producers.append(self)

    monkeypatch.setattr(web, "FileProducer", Recording)
    site["resource"].splice = False  # (FileProducer's; txuring.websplice's: test_websplice)
    site["resource"].chunk_size = 100 * 1024  # each chunk fills the transport past 64 KiB
    path = site["root"] / "huge.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse
    proto = await connect(site["ours"], _Collect(
        b"GET /huge.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", read=False))
    samples = []

    def paused_for_good():
        samples.append(producers[0].bytes_read if producers else -1)
        return len(samples) > 20 and samples[-1] == samples[-20] > 0 and \
            producers[0]._paused is not None

    await wait_until(reactor(), paused_for_good, timeout=10)
    os.truncate(path, producers[0].bytes_read)
    proto.transport.resumeProducing()
    data = await proto.done.addTimeout(10, reactor())
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: %d" % (64 * 1024 * 1024,) in head.lower()
    assert len(body) == producers[0].bytes_read  # what was read, then the close
    await wait_until(reactor(), lambda: producers[0]._fd is None)


@ensure
async def test_the_fast_path_serves_files_without_the_general_path(site, monkeypatch):
    """
    Once the root is open and checked, a file URL under a local root is served by
    L{web.Directory._serve_now} (no coroutine, no op) in the "fast" mode; the answers
    are static.File's either way.
    """
    ours = site["resource"]
    await raw(site["ours"], b"/a.txt")  # the root opened, and checked just now
    if not ours._root.now:
        pytest.skip("openat2(RESOLVE_CACHED) unusable here, or the root is not local")
    general = []
    real = web.Directory._serve

    def counting(self, request, segments):
        general.append(segments)
        return real(self, request, segments)

    monkeypatch.setattr(web.Directory, "_serve", counting)
    paths = (b"/a.txt", b"/big.bin", b"/edge.bin", b"/edge1.bin", b"/empty.txt",
             b"/sub/x.css", b"/missing", b"/fifo")
    for path in paths:
        ours_ = await raw(site["ours"], path)
        if path == b"/fifo":
            assert ours_[0] == 404  # (static.File would open it and wait for a writer)
        else:
            _same(await raw(site["static"], path), ours_)
    # (a name never looked up has no negative dentry yet: EAGAIN, the general path)
    general = [g for g in general if g != [b"missing"]]
    if site["mode"] == "fast":
        assert general == []
    else:
        assert len(general) == len(paths) - 1
    # A directory, and a URL with a trailing slash, take the general path.
    del general[:]
    await raw(site["ours"], b"/sub/")
    await raw(site["ours"], b"/sub")
    await raw(site["ours"], b"/a.txt/")
    assert len(general) == 3


@ensure
async def test_the_fast_path_hands_over_what_would_wait(site, monkeypatch):
    """
    Where the kernel says the open would need a lookup (EAGAIN from RESOLVE_CACHED)
    or a read would need the disk (EAGAIN from RWF_NOWAIT, or a short read), the ops
    take over, with the same answers.
    """
    await raw(site["ours"], b"/a.txt")
    calls = {"open": 0, "read": 0}
    real_read = web._preadv

    def open_would_wait(dir_fd, path, flags, resolve):
        calls["open"] += 1
        return -errno.EAGAIN

    def read_would_wait(fd, buffers, offset, flags):
        calls["read"] += 1
        if calls["read"] % 2:
            raise BlockingIOError(errno.EAGAIN, "would block")
        n = real_read(fd, [memoryview(buffers[0])[:5]], offset, flags)  # a short read
        return n

    paths = (b"/a.txt", b"/big.bin", b"/edge1.bin", b"/blob.unknownext")
    for hook in ("open", "read"):
        if hook == "open":
            monkeypatch.setattr(web, "_open_now", open_would_wait)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(web, "_preadv", read_would_wait)
        for path in paths:
            _same(await raw(site["static"], path), await raw(site["ours"], path))
        for rng in (b"bytes=1000-70000", b"bytes=0-0,5-9,-3"):
            h = [(b"Range", rng)]
            _same(_unboundary(await raw(site["static"], b"/big.bin", headers=h)),
                  _unboundary(await raw(site["ours"], b"/big.bin", headers=h)))
    if site["mode"] == "fast" and site["resource"]._root.now:
        assert calls["open"] and calls["read"]


@ensure
async def test_without_openat2_resolve_cached_every_request_takes_the_general_path(
        site, monkeypatch):
    """A kernel (before 5.12) or a seccomp profile refusing RESOLVE_CACHED."""
    refused = []

    def refusing(dir_fd, path, flags, resolve):
        refused.append(path)
        return -errno.EINVAL

    monkeypatch.setattr(web, "_open_now", refusing)
    ours = site["resource"]
    ours.close()
    for path in (b"/a.txt", b"/big.bin", b"/missing"):
        theirs = await raw(site["static"], path)
        got = await raw(site["ours"], path)
        if theirs[0] == 404:
            assert got[0] == 404
        else:
            _same(theirs, got)
    assert ours._root.now is False
    assert refused == ([b"."] if ours._root.local else [])


@ensure
async def test_a_root_swapped_by_a_deploy_is_served_from_the_new_tree(site, tmp_path):
    """
    The root's path renamed away and another directory renamed in its place: with
    C{root_check_interval=0} the next request sees the new tree; with an interval,
    a later one does (the fast path checks in the background, then reopens).
    """
    for interval in (0, 0.05):
        live = tmp_path / ("live%s" % (interval,))
        live.mkdir()
        (live / "v.txt").write_bytes(b"old")
        res = web.Directory(str(live), root_check_interval=interval,
                            **MODES[site["mode"]])
        port = reactor().listenTCP(0, server.Site(res), interface="127.0.0.1")
        try:
            for _ in range(3):
                assert (await raw(port.getHost().port, b"/v.txt"))[2] == b"old"
            new = tmp_path / ("new%s" % (interval,))
            new.mkdir()
            (new / "v.txt").write_bytes(b"new")
            live.rename(tmp_path / ("old%s" % (interval,)))
            new.rename(live)
            if interval == 0:
                assert (await raw(port.getHost().port, b"/v.txt"))[2] == b"new"
            else:
                seen = []
                while not seen or seen[-1] != b"new":
                    assert len(seen) < 1000, "the new tree never served"
                    seen.append((await raw(port.getHost().port, b"/v.txt"))[2])
                    await task.deferLater(reactor(), 0.01, lambda: None)
                assert set(seen) <= {b"old", b"new"}
            assert (await raw(port.getHost().port, b"/v.txt"))[2] == b"new"
        finally:
            await port.stopListening()
            res.close()


@ensure
async def test_requests_during_a_root_check_wait_for_that_one_check(site, monkeypatch):
    """
    Once root_check_interval has passed, the fast path's requests wait for one stat
    of the root's path (the general path makes one beside each open); all answered.
    """
    ours = site["resource"]
    await raw(site["ours"], b"/a.txt")
    ops = ours._fs().ops()
    stats = []
    real = ops.stat

    def counting(path, *a, **kw):
        if path == ours.path:
            stats.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(ops, "stat", counting)
    ours._root.checked -= ours.root_check_interval  # the check is due
    answers = await defer.gatherResults([
        defer.ensureDeferred(raw(site["ours"], b"/a.txt")) for _ in range(10)])
    assert [a[2] for a in answers] == [b"hello text\n"] * 10
    if site["mode"] == "fast" and ours._root.now:
        assert len(stats) == 1 and ours._root.waiters == []
    else:
        assert len(stats) >= 1
