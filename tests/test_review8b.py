"""
Review 8b (txuring.fs's positioned reads off the op API, fstat_read's linked chains,
read_file in two trips, filesystem()'s cache): each test is a finding, shown failing
against the version reviewed. Each runs a small script in a subprocess of its own (a
process installs its global reactor once; a hang there is killed, not waited for),
on the reactor (or backend) named, and checks what it printed.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import gc, json, os, sys, threading, weakref
which = {reactor!r}
if which == "uring":
    from txuring.reactor import install; install()
from twisted.internet import reactor, defer, task
from txuring import fs
TMP = {tmp!r}
def report(value):
    print("RESULT " + json.dumps(value), flush=True)
    os._exit(0)  # (a thread still blocked in open(2) must not hold the exit)
def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)
def fail(e):
    report("%s: %s" % (type(e).__name__, e))
"""

#: (reactor, environment) of each backend: the reactor's ring, a private ring on
#: epoll, the thread pool.
BACKENDS = {
    "uring": ("uring", {}),
    "epoll": ("epoll", {}),
    "threads": ("epoll", {"TXURING_FS_THREADS": "1"}),
}


def run(tmp_path, body, backend="epoll"):
    """Run C{body} after the prelude; the value it passed to report()."""
    reactor, env = BACKENDS[backend]
    script = PRELUDE.format(reactor=reactor, tmp=str(tmp_path)) + textwrap.dedent(body)
    environ = dict(os.environ)
    environ.pop("TXURING_FS_THREADS", None)
    environ.update(env)
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=20, env=environ, cwd=str(tmp_path))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("hung:\n%s\n%s" % (e.stdout, e.stderr))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no result (rc %s):\n%s\n%s" % (
        proc.returncode, proc.stdout[-5000:], proc.stderr[-5000:]))


# ---- 1. read_file of a FIFO: the chain's read eats the data, then a reopen hangs ----

FIFO = """
fifo = os.path.join(TMP, "fifo")
os.mkfifo(fifo)
def writer():
    with open(fifo, "wb") as f:
        f.write(b"x" * 1000)
threading.Thread(target=writer, daemon=True).start()
@defer.inlineCallbacks
def main():
    d = fs.read_file(fifo)
    d.addTimeout(3, reactor)
    try:
        data = yield d
    except Exception as e:
        fail(e)
    report(len(data))
reactor.callWhenRunning(main)
reactor.run()
"""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_read_file_of_a_fifo_reads_what_was_written(tmp_path, backend):
    # Python's open(fifo, "rb").read(): waits for a writer, reads to EOF.
    assert run(tmp_path, FIFO, backend) == 1000


# ---- 2. fstat_read's cancel fires before its ops have ended ----

FSTAT_READ_CANCEL = """
@defer.inlineCallbacks
def main():
    ops = fs.filesystem().ops()
    ring = ops.ring
    r, w = os.pipe()  # no data: the chain's read waits
    fd = os.dup(r)
    buf = bytearray(100)
    d = ops.fstat_read(fd, buf, close={close})
    yield sleep(0.1)
    seen = {{}}
    def cancelled(f):
        seen["error"] = f.type.__name__
        # At that moment the ops must have ended: the read lets go of buf, and the
        # close (with close=True) has closed fd.
        seen["read in flight"] = any(getattr(h, "op", None) == "read"
                                     for h in list(ring._handles.values()))
        try:
            os.fstat(fd)
            seen["fd open"] = True
        except OSError:
            seen["fd open"] = False
    d.addErrback(cancelled)
    d.cancel()
    for _ in range(50):
        if seen:
            break
        yield sleep(0.02)
    if not {close}:
        os.close(fd)
    report(seen)
reactor.callWhenRunning(main)
reactor.run()
"""


@pytest.mark.parametrize("backend", ["uring", "epoll"])
@pytest.mark.parametrize("close", [True, False])
def test_fstat_read_cancel_fires_once_its_ops_have_ended(tmp_path, backend, close):
    seen = run(tmp_path, FSTAT_READ_CANCEL.format(close=close), backend)
    assert seen == {"error": "CancelledError", "read in flight": False,
                    "fd open": not close}


# ---- 3. filesystem(reactor) keeps every reactor it was given alive ----

KEEPS_REACTORS = """
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.pollreactor import PollReactor
first, second = SelectReactor(), PollReactor()
fs_first = fs.filesystem(first)
assert fs.filesystem(first) is fs_first and fs.filesystem(second) is not fs_first
assert fs.filesystem(first) is fs_first  # (the cache follows the reactor asked for)
refs = [weakref.ref(first), weakref.ref(second)]
del first, second, fs_first
gc.collect()
report([r() is not None for r in refs])
"""


def test_filesystem_does_not_keep_a_reactor_alive(tmp_path):
    # A process that makes reactors (a test suite, a tool running one per job) must
    # not keep each, and what it holds (a UringReactor's ring), for its whole life.
    assert run(tmp_path, KEEPS_REACTORS) == [False, False]


# ---- 4. txuring.web: a GET of a FIFO in the served tree eats what was written ----

WEB_FIFO = """
import http.client
from twisted.internet import threads
from twisted.web import server
from txuring.web import Directory
site = os.path.join(TMP, "site")
os.mkdir(site)
fifo = os.path.join(site, "fifo")
os.mkfifo(fifo)
keeper = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # both ends: writes do not block
os.write(keeper, b"queued for the real reader")
port = reactor.listenTCP(0, server.Site(Directory(site)),
                         interface="127.0.0.1").getHost().port
def client():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/fifo")
    status = c.getresponse().status
    c.close()
    return status
def done(status):
    try:
        left = os.read(keeper, 100).decode()
    except BlockingIOError:
        left = ""
    report([status if isinstance(status, int) else repr(status), left])
reactor.callWhenRunning(lambda: threads.deferToThread(client).addBoth(done))
reactor.run()
"""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_web_get_of_a_fifo_leaves_its_data(tmp_path, backend):
    # Not a regular file: a 404, as static.File's isfile() check would give, and a
    # remote client must not drain what a local process queued for its reader.
    assert run(tmp_path, WEB_FIFO, backend) == [404, "queued for the real reader"]
