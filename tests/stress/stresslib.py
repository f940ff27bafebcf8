"""
What the stress tests share: the scale (fast by default, the issue's figures with
C{TXURING_STRESS=full}), the server under test in a subprocess (L{Server}), clients that
check every byte (L{EchoLoad}), and the figures each test reports.

Why the test process is the client and the server a subprocess: see stress_server.py.
Every test is parametrised over C{REACTORS}: UringReactor, and EPollReactor as the
control; a test that fails on uring must pass on epoll for the failure to be txuring's.

Figures: L{report} prints one JSON line per test (visible with C{-s}) and appends it to
the file named by C{TXURING_STRESS_REPORT}, if set; C{python tests/stress/stresslib.py
FILE} prints them as a table.
"""

import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = os.environ.get("TXURING_STRESS", "").lower() == "full"
REACTORS = ["uring", "epoll"]


def scale(fast, full):
    """C{full} under C{TXURING_STRESS=full}, else C{fast}."""
    return full if FULL else fast


def report(test, reactor, **figures):
    """Print this test's figures as one JSON line, and append it to the report file."""
    line = json.dumps(dict(test=test, reactor=reactor, full=FULL, **figures),
                      sort_keys=True)
    print("STRESS " + line)
    path = os.environ.get("TXURING_STRESS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def raise_nofile(needed):
    """
    Raise this process's RLIMIT_NOFILE to at least C{needed} (the hard limit too, where
    allowed: root, or CAP_SYS_RESOURCE); return None, or the reason it cannot be done.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError) as e:
        if hard >= needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            return None
        return "RLIMIT_NOFILE hard limit is %d and raising it to %d was refused (%s)" % (
            hard, needed, e)
    return None


def slope(samples):
    """Least-squares slope of (t, value) samples, per second (0 with fewer than 3)."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if not den:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in samples) / den


def proc_rss(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Server:
    """
    stress_server.py in a subprocess: C{ports} from its first line, C{call(cmd, **kw)}
    on its control port, C{sample()} of its RSS and fds from /proc, and C{stop()} that
    checks it exited cleanly (a crash or a traceback fails the test that ran it).
    """

    def __init__(self, reactor, reactor_opts=None, web_root=None, env=None):
        cmd = [sys.executable, os.path.join(HERE, "stress_server.py"), reactor,
               "--reactor-opts", json.dumps(reactor_opts or {})]
        if web_root:
            cmd += ["--web-root", web_root]
        self.reactor = reactor
        self.errfile = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                          "stress-server-%d-%d.err" % (os.getpid(),
                                                                      id(self))), "w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.errfile, text=True,
                                     env=dict(os.environ, **(env or {})))
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError("the %s server did not start (status %s): %s" % (
                reactor, self.proc.returncode, self.stderr()))
        self.info = json.loads(line)
        self.pid = self.info["pid"]
        self._control = socket.create_connection(("127.0.0.1", self.info["control"]))
        self._control_file = self._control.makefile("rb")
        self.samples = []  # (t, rss, fds)
        self.t0 = time.monotonic()
        self.call("stats")  # (the control connection is accepted: fd counts are steady)

    def port(self, name):
        return self.info[name]

    def call(self, cmd, timeout=120, **kw):
        """Send one command on the control port and return the server's reply."""
        return _call(self, self._control, self._control_file, cmd, timeout, kw)

    def side_call(self, cmd, timeout=120, **kw):
        """L{call} on a control connection of its own (for another thread)."""
        sock = socket.create_connection(("127.0.0.1", self.info["control"]))
        try:
            with sock.makefile("rb") as f:
                return _call(self, sock, f, cmd, timeout, kw)
        finally:
            sock.close()

    def sample(self):
        """Record and return (t, rss, fds) of the server from /proc."""
        s = (time.monotonic() - self.t0, proc_rss(self.pid), proc_fds(self.pid))
        self.samples.append(s)
        return s

    def fds(self):
        return proc_fds(self.pid)

    def fd_listing(self):
        """fd -> what it is (readlink of /proc/PID/fd/N), for a message."""
        out = {}
        for fd in os.listdir("/proc/%d/fd" % self.pid):
            try:
                out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (self.pid, fd))
            except OSError:
                pass
        return out

    def settled_fds(self, quiet=0.5, timeout=10):
        """
        The server's fd count once it has not changed for C{quiet} s: a baseline taken
        just after a request may otherwise count that request's connection or file,
        closed a moment later.
        """
        deadline = time.monotonic() + timeout
        n, since = proc_fds(self.pid), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.05)
            m = proc_fds(self.pid)
            if m != n:
                n, since = m, time.monotonic()
        return n

    def wait_fds(self, at_most, timeout=30):
        """Wait until the server has at most C{at_most} fds; return its count."""
        deadline = time.monotonic() + timeout
        while True:
            n = proc_fds(self.pid)
            if n <= at_most or time.monotonic() > deadline:
                return n
            time.sleep(0.05)

    def rss_slope(self, skip=0.3):
        """RSS slope in bytes/s over the samples after the first C{skip} fraction."""
        samples = self.samples[int(len(self.samples) * skip):]
        return slope([(t, rss) for t, rss, _ in samples])

    def fd_slope(self, skip=0.3):
        samples = self.samples[int(len(self.samples) * skip):]
        return slope([(t, fds) for t, _, fds in samples])

    def stderr(self):
        self.errfile.flush()
        self.errfile.seek(0)
        return self.errfile.read()[-3000:]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, expected_errors=()):
        """
        Stop the server through its control port; return its exit report. A traceback
        in its log fails, unless it is one of C{expected_errors} (strings it contains).
        """
        try:
            self.call("stop", timeout=10)
        except (OSError, AssertionError):
            pass
        self._control.close()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the %s server did not stop in 30 s" % (self.reactor,))
        finally:
            self.errfile.close()
        err = open(self.errfile.name).read()
        os.unlink(self.errfile.name)
        assert self.proc.returncode == 0, "the %s server exited with %s: %s" % (
            self.reactor, self.proc.returncode, err[-3000:])
        expected = sum(err.count(e) for e in expected_errors)
        assert err.count("Traceback") <= expected, \
            "the %s server logged an error:\n%s" % (self.reactor, err[-3000:])
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return lines[-1] if lines else {}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._control.close()
        if not self.errfile.closed:
            self.errfile.close()
        if os.path.exists(self.errfile.name):
            os.unlink(self.errfile.name)



@pytest.fixture
def servers():
    """Start servers with C{servers(reactor, ...)}; any left running are killed."""
    made = []

    def start(reactor, **kw):
        s = Server(reactor, **kw)
        made.append(s)
        return s

    yield start
    for s in made:
        s.kill()

def _call(server, sock, f, cmd, timeout, kw):
    sock.settimeout(timeout)
    sock.sendall(json.dumps(dict(cmd=cmd, **kw)).encode() + b"\n")
    line = f.readline()
    if not line:
        raise AssertionError("the %s server closed its control port (status %s): %s"
                             % (server.reactor, server.proc.poll(), server.stderr()))
    reply = json.loads(line)
    if "error" in reply:
        raise AssertionError("the %s server: %s" % (server.reactor, reply["error"]))
    return reply


# ---- an echo load that checks every message ----

HEADER = struct.Struct("!IIII")  # connection id, sequence, body length, crc32(body)
_BLOB = random.Random(9).randbytes(1 << 17)


class _Conn:
    __slots__ = ("sock", "cid", "seq", "inflight", "rx", "expect", "sent", "got")

    def __init__(self, sock, cid):
        self.sock, self.cid = sock, cid
        self.seq = 0
        self.inflight = 0
        self.rx = bytearray()
        self.expect = []  # the messages sent and not yet echoed, in order
        self.sent = self.got = 0


class EchoLoad:
    """
    C{conns} connections to an echo server, each keeping C{depth} messages in flight:
    a message is a header (connection id, sequence number, length, CRC-32 of the body)
    and a body of 1 to C{max_body} bytes taken from a random blob at a random offset.
    Every echoed message is checked against the one sent (bytes, order, checksum); any
    difference raises at once. C{bytes_lost} is what was sent and never came back.
    """

    def __init__(self, port, conns, depth=1, max_body=2048, seed=0):
        self.rng = random.Random(seed)
        self.max_body = max_body
        self.depth = depth
        self.sel = selectors.DefaultSelector()
        self.conns = []
        for cid in range(conns):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            c = _Conn(s, cid)
            self.conns.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)
        self.round_trips = 0
        self.bytes_sent = 0
        self.bytes_back = 0

    def _send(self, c):
        n = self.rng.randint(1, self.max_body)
        off = self.rng.randrange(0, len(_BLOB) - n)
        body = _BLOB[off:off + n]
        msg = HEADER.pack(c.cid, c.seq, n, zlib.crc32(body)) + body
        c.seq += 1
        c.expect.append(msg)
        c.sock.setblocking(True)  # (a message is small: the send buffer takes it)
        c.sock.sendall(msg)
        c.sock.setblocking(False)
        c.sent += len(msg)
        self.bytes_sent += len(msg)

    def _received(self, c, data):
        c.rx += data
        c.got += len(data)
        while c.expect and len(c.rx) >= len(c.expect[0]):
            msg = c.expect.pop(0)
            got = bytes(c.rx[:len(msg)])
            del c.rx[:len(msg)]
            cid, seq, n, crc = HEADER.unpack_from(got)
            if got != msg or zlib.crc32(got[HEADER.size:]) != crc:
                raise AssertionError(
                    "connection %d: message %d came back different (%d bytes, crc "
                    "%08x vs %08x)" % (c.cid, HEADER.unpack_from(msg)[1], n,
                                       zlib.crc32(got[HEADER.size:]), crc))
            self.round_trips += 1
            self.bytes_back += len(msg)
        if len(c.rx) and not c.expect:
            raise AssertionError("connection %d: %d bytes nobody sent" % (c.cid, len(c.rx)))

    def run(self, round_trips=None, seconds=None, on_tick=None, tick=1.0):
        """
        Run until C{round_trips} more messages came back (or C{seconds} passed); then
        wait for every message in flight. C{on_tick()} is called every C{tick} s.
        """
        target = None if round_trips is None else self.round_trips + round_trips
        end = None if seconds is None else time.monotonic() + seconds
        next_tick = time.monotonic() + tick
        for c in self.conns:
            for _ in range(self.depth):
                self._send(c)
        stopping = False
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            if not stopping and ((target is not None and self.round_trips >= target) or
                                 (end is not None and now >= end)):
                stopping = True
            if stopping and not any(c.expect for c in self.conns):
                return
            if on_tick is not None and now >= next_tick:
                on_tick()
                next_tick = now + tick
            events = self.sel.select(0.5)
            if not events:
                if time.monotonic() - idle_since > 30:
                    raise AssertionError("no echo for 30 s: %d messages in flight" % (
                        sum(len(c.expect) for c in self.conns),))
                continue
            idle_since = time.monotonic()
            for key, _ in events:
                c = key.data
                try:
                    data = c.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    raise AssertionError("connection %d closed by the server with %d "
                                         "messages in flight" % (c.cid, len(c.expect)))
                before = len(c.expect)
                self._received(c, data)
                if not stopping:
                    for _ in range(before - len(c.expect)):
                        self._send(c)

    @property
    def bytes_lost(self):
        return self.bytes_sent - self.bytes_back

    def close(self):
        for c in self.conns:
            self.sel.unregister(c.sock)
            c.sock.close()
        self.sel.close()


def exchange_all(socks, payload=b"p", timeout=60):
    """Send C{payload} on every socket and read it back from each (an echo check)."""
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        s.setblocking(True)
        s.sendall(payload)
        s.setblocking(False)
        pending[s] = bytearray()
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    bad = 0
    try:
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError("%d of %d connections never echoed" % (
                    len(pending), len(socks)))
            for key, _ in sel.select(1):
                s = key.fileobj
                data = s.recv(4096)
                if not data:
                    bad += 1
                    sel.unregister(s)
                    del pending[s]
                    continue
                pending[s] += data
                if len(pending[s]) >= len(payload):
                    if bytes(pending[s]) != payload:
                        bad += 1
                    sel.unregister(s)
                    del pending[s]
    finally:
        sel.close()
    return bad


def connect_many(port, count, source_ips=8):
    """C{count} connected sockets to 127.0.0.1:C{port}, from 127.0.0.1..8 (ports)."""
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind(("127.0.0.%d" % (1 + i % source_ips), 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def summary(path):
    rows = [json.loads(line) for line in open(path)]
    for r in rows:
        test, reactor = r.pop("test"), r.pop("reactor")
        r.pop("full", None)
        print("%-34s %-6s %s" % (test, reactor, " ".join(
            "%s=%s" % (k, v) for k, v in sorted(r.items()))))


if __name__ == "__main__":
    summary(sys.argv[1])
