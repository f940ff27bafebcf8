"""
Review 8 (txuring.fs, txuring.web): each test is a finding, shown failing against the
first merged version. Each runs a small script in a subprocess of its own (a process
installs its global reactor once), on the reactor named, and checks what it printed.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import json, os, sys, threading, time
which = {reactor!r}
if which == "uring":
    from txuring.reactor import install; install()
elif which == "asyncio":
    from twisted.internet import asyncioreactor; asyncioreactor.install()
from twisted.internet import reactor, defer, task, threads
from txuring import fs
TMP = {tmp!r}
def report(value):
    print("RESULT " + json.dumps(value))
"""

WEB_PRELUDE = """
import http.client
from twisted.web import server, static, resource
from txuring.web import Directory
def serve(top):
    return reactor.listenTCP(0, server.Site(top), interface="127.0.0.1").getHost().port
def get(port, path, method="GET", headers={{}}):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return [r.status, r.getheader("location"), body.decode("latin1")]
"""


def run(tmp_path, body, reactor="epoll", env=None, web=False):
    """Run C{body} after the prelude; the value it passed to report()."""
    script = PRELUDE.format(reactor=reactor, tmp=str(tmp_path))
    if web:
        script += WEB_PRELUDE.format()
    script += textwrap.dedent(body)
    environ = dict(os.environ)
    environ.pop("TXURING_FS_THREADS", None)
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, env=environ, cwd=str(tmp_path))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no result (rc %s):\n%s\n%s" % (
        proc.returncode, proc.stdout[-5000:], proc.stderr[-5000:]))


# ---- 1. a write made in a "before shutdown" trigger is cancelled (data loss) ----

SAVE_ON_SHUTDOWN = """
path = os.path.join(TMP, "state")
with open(path, "wb") as f:
    f.write(b"old state")
results = []
def save():
    # What a Service.stopService does: save its state as the reactor stops.
    d = fs.write_file(path, b"new state", atomic={atomic})
    d.addCallbacks(results.append, lambda f: results.append(repr(f.value)))
    return d
reactor.addSystemEventTrigger("before", "shutdown", save)
@defer.inlineCallbacks
def main():
    yield fs.read_file(path)  # the service used txuring.fs while it ran
    reactor.stop()
reactor.callWhenRunning(main)
reactor.run()
report([results, open(path, "rb").read().decode()])
"""


@pytest.mark.parametrize("atomic", [False, True])
@pytest.mark.parametrize("reactor", ["epoll", "asyncio", "uring"])
def test_write_file_in_a_before_shutdown_trigger_completes(tmp_path, reactor, atomic):
    results, content = run(tmp_path, SAVE_ON_SHUTDOWN.format(atomic=atomic), reactor)
    assert results == [9], results
    assert content == "new state"


def test_open_file_written_at_shutdown_is_not_left_truncated(tmp_path):
    """A File opened "wb" (truncated) whose last write is made at shutdown: empty."""
    results, content = run(tmp_path, """
        path = os.path.join(TMP, "log")
        with open(path, "wb") as f:
            f.write(b"old")
        state, results = {}, []
        @defer.inlineCallbacks
        def save():
            try:
                yield state["f"].write(b"new state")
                results.append("written")
            except Exception as e:
                results.append(repr(e))
            yield state["f"].close()
        reactor.addSystemEventTrigger("before", "shutdown", save)
        @defer.inlineCallbacks
        def main():
            state["f"] = yield fs.open(path, "wb")
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report([results, open(path, "rb").read().decode()])
    """)
    assert results == ["written"], results
    assert content == "new state"


# ---- 2. File.close() from another thread: no WrongThread, and the fd leaks ----

@pytest.mark.parametrize("env", [{}, {"TXURING_FS_THREADS": "1"}], ids=["ring", "threads"])
def test_file_close_from_another_thread_raises_wrongthread(tmp_path, env):
    out = run(tmp_path, """
        path = os.path.join(TMP, "f")
        open(path, "wb").write(b"x")
        out = {}
        @defer.inlineCallbacks
        def main():
            f = yield fs.open(path, "rb")
            fd = f.fileno()
            def other():
                try:
                    f.close()
                    return "no error"
                except Exception as e:
                    return type(e).__name__
            out["from another thread"] = yield threads.deferToThread(other)
            out["closed flag"] = f.closed
            try:
                yield f.close()  # the reactor thread's close must close the fd
            except Exception as e:
                out["close in the reactor thread"] = repr(e)
            yield task.deferLater(reactor, 0.1, lambda: None)
            try:
                os.fstat(fd)
                out["fd"] = "still open (leaked)"
            except OSError:
                out["fd"] = "closed"
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report(out)
    """, env=env)
    assert out == {"from another thread": "WrongThread", "closed flag": False,
                   "fd": "closed"}, out


# ---- 3. write_file(atomic=True) fails for a long (but valid) file name ----

def test_atomic_write_of_a_file_with_a_long_name(tmp_path):
    out = run(tmp_path, """
        out = []
        @defer.inlineCallbacks
        def main():
            p = os.path.join(TMP, "n" * 250)  # NAME_MAX is 255
            yield fs.write_file(p, b"a")
            try:
                yield fs.write_file(p, b"b", atomic=True)
                out.append(open(p, "rb").read().decode())
            except Exception as e:
                out.append(repr(e))
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report(out)
    """)
    assert out == ["b"], out


# ---- 4. web: behaviour vs static.File, and the root ----

def test_directory_url_without_slash_redirects_as_static_file(tmp_path):
    """Mounted at /files, GET /files must redirect to /files/ (relative links)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text('<a href="a.txt">a</a>')
    out = run(tmp_path, """
        top = resource.Resource()
        top.putChild(b"files", Directory(os.path.join(TMP, "site")))
        top.putChild(b"static", static.File(os.path.join(TMP, "site")))
        port = serve(top)
        def client():
            return [get(port, "/files")[:2], get(port, "/static")[:2]]
        def done(r):
            report(r)
            reactor.stop()
        reactor.callWhenRunning(lambda: threads.deferToThread(client).addBoth(done))
        reactor.run()
    """, web=True)
    ours, theirs = out
    assert theirs == [302, "/static/"]
    assert ours == [302, "/files/"], ours


def test_listing_does_not_reveal_what_lies_outside_the_root(tmp_path):
    """
    With listing on, a symlink leading out of the root (never served: 404) is listed
    with its target's type and size: metadata of files outside the root.
    """
    site = tmp_path / "site"
    site.mkdir()
    outside = tmp_path / "secret"
    outside.write_bytes(b"s" * 12345)
    (site / "link").symlink_to(outside)
    (site / "etc").symlink_to("/etc")
    out = run(tmp_path, """
        port = serve(Directory(os.path.join(TMP, "site"), listing=True))
        def client():
            return [get(port, "/"), get(port, "/link")[0], get(port, "/etc/")[0]]
        def done(r):
            report(r)
            reactor.stop()
        reactor.callWhenRunning(lambda: threads.deferToThread(client).addBoth(done))
        reactor.run()
    """, web=True)
    listing, link_status, etc_status = out
    assert listing[0] == 200
    assert (link_status, etc_status) == (404, 404)
    body = listing[2]
    assert "12K" not in body and "12345" not in body, "the size of a file outside"
    assert "etc/" not in body, "a directory outside listed as one"


def _site_run(tmp_path, client_body, directory="Directory(os.path.join(TMP, 'site'))"):
    return run(tmp_path, """
        port = serve(%s)
        def client():
%s
        def done(r):
            report(r if not hasattr(r, "value") else repr(r.value))
            reactor.stop()
        reactor.callWhenRunning(lambda: threads.deferToThread(client).addBoth(done))
        reactor.run()
    """ % (directory, textwrap.indent(textwrap.dedent(client_body), " " * 12)), web=True)


def test_suffix_range_longer_than_the_file_serves_the_whole_file(tmp_path):
    """
    RFC 9110 14.1.2: a suffix-length beyond the representation selects all of it.
    txuring.web drops the connection without any response (static.File's range code,
    reused, gives offset -990 and the ring refuses the read offset).
    """
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "f.txt").write_bytes(b"0123456789")
    out = _site_run(tmp_path, """
        try:
            return get(port, "/f.txt", headers={"Range": "bytes=-1000"})
        except Exception as e:
            return repr(e)
    """)
    assert isinstance(out, list), out
    assert out[0] in (200, 206) and out[2] == "0123456789", out


def test_a_file_url_with_a_trailing_slash_is_not_found(tmp_path):
    """GET /f.txt/ serves f.txt (static.File: 404; open("f.txt/"): ENOTDIR)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "f.txt").write_bytes(b"0123456789")
    out = _site_run(tmp_path, """
        return get(port, "/f.txt/")[:2]
    """)
    assert out == [404, None], out


def test_root_replaced_is_served_from_its_new_directory(tmp_path):
    """
    The root's O_PATH fd is cached at the first request and never reopened (nor
    closed): after a deploy that swaps the directory (rename old away, new in), the
    old tree is still served; static.File serves the path's current contents.
    """
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "v.txt").write_bytes(b"old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "v.txt").write_bytes(b"new")
    out = _site_run(tmp_path, """
        first = get(port, "/v.txt")[2]
        os.rename(os.path.join(TMP, "site"), os.path.join(TMP, "old"))
        os.rename(os.path.join(TMP, "new"), os.path.join(TMP, "site"))
        return [first, get(port, "/v.txt")[2]]
    """, directory="Directory(os.path.join(TMP, 'site'), root_check_interval=0)")
    assert out == ["old", "new"], out


def test_root_replaced_is_served_once_the_check_interval_has_passed(tmp_path):
    """
    With the default root_check_interval (1 s), the root's path is stat'ed again
    once a second has passed since the last check: the new tree is served then.
    """
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "v.txt").write_bytes(b"old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "v.txt").write_bytes(b"new")
    out = _site_run(tmp_path, """
        first = get(port, "/v.txt")[2]
        os.rename(os.path.join(TMP, "site"), os.path.join(TMP, "old"))
        os.rename(os.path.join(TMP, "new"), os.path.join(TMP, "site"))
        time.sleep(1.2)
        return [first, get(port, "/v.txt")[2]]
    """)
    assert out == ["old", "new"], out


@pytest.mark.parametrize("reactor", ["epoll", "asyncio", "uring"])
def test_a_file_closed_as_the_reactor_stops_is_closed(tmp_path, reactor):
    """
    On a private ring (epoll, asyncio) the ring is exited in a "before shutdown"
    trigger; a File closed by a later trigger of the same phase (a Service's
    stopService) gets RingClosed and its fd is never closed. The same happens to the
    fd of a txuring.web response being streamed when the reactor stops.
    """
    out = run(tmp_path, """
        path = os.path.join(TMP, "f")
        open(path, "wb").write(b"x")
        state, out = {}, {}
        @defer.inlineCallbacks
        def stop_service():
            try:
                yield state["f"].close()
                out["close"] = "ok"
            except Exception as e:
                out["close"] = type(e).__name__
        @defer.inlineCallbacks
        def main():
            state["f"] = yield fs.open(path, "rb")
            state["fd"] = state["f"].fileno()
            reactor.addSystemEventTrigger("before", "shutdown", stop_service)
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        try:
            os.fstat(state["fd"])
            out["fd"] = "still open"
        except OSError:
            out["fd"] = "closed"
        report(out)
    """, reactor)
    assert out == {"close": "ok", "fd": "closed"}, out


@pytest.mark.parametrize("reactor", ["epoll", "uring"])
def test_write_file_takes_the_data_as_it_was_at_the_call(tmp_path, reactor):
    """
    write_file keeps a memoryview of the caller's bytearray: bytes changed after the
    call are what gets written, and the caller's bytearray cannot be resized until
    the write ends (BufferError). Python's file.write(bytearray) takes the bytes at
    the call.
    """
    out = run(tmp_path, """
        p = os.path.join(TMP, "out")
        @defer.inlineCallbacks
        def main():
            ba = bytearray(b"a" * 100000)
            d = fs.write_file(p, ba)
            ba[:] = b"b" * 100000
            try:
                ba.extend(b"c")
                r = "extend ok"
            except BufferError:
                r = "BufferError"
            yield d
            report([r, open(p, "rb").read(1).decode()])
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
    """, reactor)
    assert out == ["extend ok", "a"], out


def test_atomic_write_cancelled_before_the_rename_leaves_the_target(tmp_path):
    """
    write_file(atomic=True)'s contract: "on any failure or cancel before the rename
    the temporary file is removed and path is untouched". A cancel that arrives while
    the temporary file's close is in flight is swallowed by fs._close, the rename
    goes on, and the cancelled Deferred succeeds. (Thread backend, so the close is
    certainly in flight when the cancel lands; the ring's close swallows it alike.)
    """
    out = run(tmp_path, """
        path = os.path.join(TMP, "target")
        open(path, "wb").write(b"old")
        out, state = {}, {}
        ops = fs.filesystem().ops()
        real_close = ops.close
        def close(fd):
            d = real_close(fd)
            if state.pop("arm", False):  # the first close: the temporary file's
                reactor.callLater(0, state["d"].cancel)
            return d
        ops.close = close
        @defer.inlineCallbacks
        def main():
            state["arm"] = True
            state["d"] = fs.write_file(path, b"new", atomic=True)
            try:
                yield state["d"]
                out["result"] = "succeeded"
            except defer.CancelledError:
                out["result"] = "CancelledError"
            out["target"] = open(path, "rb").read().decode()
            out["left"] = sorted(os.listdir(TMP))
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report(out)
    """, env={"TXURING_FS_THREADS": "1"})
    assert out == {"result": "CancelledError", "target": "old", "left": ["target"]}, out


# ---- regressions added with the fixes (not findings of the review) ----


def test_an_op_stuck_at_shutdown_is_cancelled_after_the_timeout(tmp_path):
    """
    Shutdown lets ops end by themselves, but not forever: a read of a FIFO nobody
    writes is cancelled once shutdown_timeout has passed (it fails with ECANCELED),
    the reactor stops, the ring is closed, later calls say so, and the File's close
    still closes its fd.
    """
    out = run(tmp_path, """
        fifo = os.path.join(TMP, "fifo")
        os.mkfifo(fifo)
        fsys = fs.FileSystem(reactor, shutdown_timeout=0.5)
        state, out = {}, {}
        @defer.inlineCallbacks
        def main():
            state["f"] = yield fsys.open(fifo, "r+b")  # (O_RDWR: no EOF, ever)
            d = state["f"].read(10)
            d.addCallbacks(lambda data: out.setdefault("read", data.decode()),
                           lambda f: out.setdefault("read", "%s %s" % (
                               type(f.value).__name__, getattr(f.value, "errno", ""))))
            reactor.callLater(0.1, reactor.stop)
        reactor.callWhenRunning(main)
        reactor.run()
        out["ring closed"] = fsys.backend is None
        out["kind"] = fsys.kind  # (still says which backend it had)
        try:
            fsys.stat(TMP)
            out["after"] = "no error"
        except Exception as e:
            out["after"] = type(e).__name__
        state["f"].close()
        def target(n):
            try:
                return os.readlink("/proc/self/fd/" + n)
            except OSError:
                return None  # (the fd of the listing itself)
        out["fds on the fifo"] = sum(target(n) == fifo for n in os.listdir("/proc/self/fd"))
        report(out)
    """)
    # (cancelled by the ring, not by Deferred.cancel: the kernel's ECANCELED)
    assert out == {"read": "OSError %d" % errno.ECANCELED, "ring closed": True,
                   "kind": "io_uring", "after": "RingClosed",
                   "fds on the fifo": 0}, out


@pytest.mark.parametrize("reactor", ["epoll", "asyncio"])
def test_a_file_closed_after_the_reactor_stopped_is_closed(tmp_path, reactor):
    """The private ring is closed by then: File.close() falls back to os.close."""
    out = run(tmp_path, """
        path = os.path.join(TMP, "f")
        open(path, "wb").write(b"x")
        state, out = {}, {}
        @defer.inlineCallbacks
        def main():
            state["f"] = yield fs.open(path, "rb")
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        fd = state["f"].fileno()
        state["f"].close().addCallbacks(lambda _: out.setdefault("close", "ok"),
                                        lambda f: out.setdefault("close", repr(f.value)))
        try:
            os.fstat(fd)
            out["fd"] = "still open"
        except OSError:
            out["fd"] = "closed"
        report(out)
    """, reactor)
    assert out == {"close": "ok", "fd": "closed"}, out


def test_file_close_in_another_thread_while_closing_raises_wrongthread(tmp_path):
    out = run(tmp_path, """
        path = os.path.join(TMP, "f")
        open(path, "wb").write(b"x")
        out = {}
        @defer.inlineCallbacks
        def main():
            f = yield fs.open(path, "rb")
            d = f.close()
            def other():
                try:
                    f.close()
                    return "no error"
                except Exception as e:
                    return type(e).__name__
            out["again from another thread"] = yield threads.deferToThread(other)
            yield d
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report(out)
    """)
    assert out == {"again from another thread": "WrongThread"}, out


@pytest.mark.parametrize("reactor", ["epoll", "uring"])
def test_atomic_write_cancelled_during_its_close_on_the_ring(tmp_path, reactor):
    """
    The ring's close alike: a cancel reaching write_file(atomic=True) while its
    temporary file's close is in flight does not cancel the close (the fd is closed
    whatever happens), and stops the write before its rename.
    """
    out = run(tmp_path, """
        path = os.path.join(TMP, "target")
        open(path, "wb").write(b"old")
        out, state = {}, {}
        ops = fs.filesystem().ops()
        real_close = ops.close
        def close(fd):
            d = real_close(fd)
            if state.pop("arm", False):  # the temporary file's close
                reactor.callLater(0, state["d"].cancel)  # (once the coroutine waits)
            return d
        ops.close = close
        @defer.inlineCallbacks
        def main():
            fds = len(os.listdir("/proc/self/fd"))
            state["arm"] = True
            state["d"] = fs.write_file(path, b"new", atomic=True)
            try:
                yield state["d"]
                out["result"] = "succeeded"
            except defer.CancelledError:
                out["result"] = "CancelledError"
            out["target"] = open(path, "rb").read().decode()
            out["left"] = sorted(os.listdir(TMP))
            out["fds leaked"] = len(os.listdir("/proc/self/fd")) - fds
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report(out)
    """, reactor)
    assert out == {"result": "CancelledError", "target": "old", "left": ["target"],
                   "fds leaked": 0}, out


def test_atomic_write_of_a_long_non_ascii_name(tmp_path):
    """The temporary name is cut by whole characters to fit NAME_MAX in bytes."""
    out = run(tmp_path, """
        out = []
        @defer.inlineCallbacks
        def main():
            p = os.path.join(TMP, "\\u00e9" * 127)  # 254 bytes in UTF-8
            yield fs.write_file(p, b"b", atomic=True)
            out.append(open(p, "rb").read().decode())
            out.append(sorted(os.listdir(TMP)) == [os.path.basename(p)])
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
        report(out)
    """)
    assert out == ["b", True], out


def test_file_write_takes_the_data_as_it_was_at_the_call(tmp_path):
    """File.write copies a mutable buffer as write_file does (bytes: no copy needed)."""
    out = run(tmp_path, """
        p = os.path.join(TMP, "out")
        @defer.inlineCallbacks
        def main():
            f = yield fs.open(p, "wb")
            ba = bytearray(b"a" * 100000)
            d = f.write(ba)
            ba[:] = b"b" * 100000
            ba.extend(b"c")
            yield d
            yield f.write(memoryview(b"xyz")[1:])
            yield f.close()
            data = open(p, "rb").read()
            report([len(data), sorted(set(data[:100000])), data[100000:].decode()])
            reactor.stop()
        reactor.callWhenRunning(main)
        reactor.run()
    """, "uring")
    assert out == [100002, [ord("a")], "yz"], out


def test_suffix_ranges_match_rfc_9110(tmp_path):
    """A suffix within the file as before; an empty file's suffix is unsatisfiable."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "f.txt").write_bytes(b"0123456789")
    (tmp_path / "site" / "empty.txt").write_bytes(b"")
    out = _site_run(tmp_path, """
        return [get(port, "/f.txt", headers={"Range": "bytes=-3"}),
                get(port, "/f.txt", headers={"Range": "bytes=-10"}),
                get(port, "/empty.txt", headers={"Range": "bytes=-5"})[0]]
    """)
    assert out[0] == [206, None, "789"], out
    assert out[1] == [206, None, "0123456789"], out
    assert out[2] == 416, out


def test_listing_follows_symlinks_inside_the_root(tmp_path):
    """A link to a file or directory inside the root is listed as its target."""
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "data.bin").write_bytes(b"d" * 12345)
    (site / "alias.bin").symlink_to("data.bin")
    (site / "subdir").symlink_to("sub")
    (site / "dangling").symlink_to("nothing")
    out = _site_run(tmp_path, """
        return get(port, "/")[2]
    """, "Directory(os.path.join(TMP, 'site'), listing=True)")
    assert out.count("12K") == 2, out  # data.bin and the link to it
    assert 'href="subdir/"' in out and 'href="sub/"' in out, out
    assert "dangling" not in out, out


def test_a_missing_root_is_not_found_until_it_appears(tmp_path):
    out = _site_run(tmp_path, """
        first = get(port, "/v.txt")[0]
        os.mkdir(os.path.join(TMP, "site"))
        open(os.path.join(TMP, "site", "v.txt"), "w").write("here")
        second = get(port, "/v.txt")
        os.rename(os.path.join(TMP, "site"), os.path.join(TMP, "gone"))
        third = get(port, "/v.txt")[0]
        return [first, second[0], second[2], third]
    """, directory="Directory(os.path.join(TMP, 'site'), root_check_interval=0)")
    assert out == [404, 200, "here", 404], out
