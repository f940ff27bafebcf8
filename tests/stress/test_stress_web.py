"""
twisted.web on the server under test: a slowloris-style client, pipelined garbage
requests (answered byte for byte as EPollReactor answers them, the control server
running beside it), path traversal attempts against txuring.web, and files deleted,
truncated or replaced while txuring.fs and txuring.web read them.
"""

import os
import random
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import stresslib
from stresslib import REACTORS, report, scale, servers  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(scale(300, 1800))]



def http_get(port, path, timeout=10, extra=b""):
    """One GET on a new connection (Connection: close); (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" +
                  extra + b"\r\n")
        data = read_all(s, timeout)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith(b"HTTP/") else None
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
    return status, headers, body


def read_all(s, timeout, idle=None):
    """Everything until EOF (or, with C{idle}, until C{idle} s pass with nothing)."""
    s.settimeout(idle or timeout)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if idle:
                break
            raise AssertionError("no EOF in %s s (%d bytes read)" % (timeout, len(out)))
        except ConnectionResetError:
            out += b"<RST>"
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


# ---- slowloris ----

@pytest.mark.parametrize("reactor", REACTORS)
def test_slowloris(reactor, servers):
    """
    Clients that send a request a byte at a time, slowly, hold connections open; the
    server keeps answering normal requests meanwhile, and each slow client gets its
    answer once its request is complete.
    """
    slow, rounds = scale(50, 1000), scale(20, 30)
    server = servers(reactor)
    base = server.fds()
    request = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 20 + b"\r\n\r\n"
    socks = stresslib.connect_many(server.port("web"), slow)
    normal_ok = 0
    step = max(1, len(request) // rounds)
    for i in range(0, len(request) - 4, step):  # all but the final CRLF CRLF
        for s in socks:
            s.sendall(request[i:min(i + step, len(request) - 4)])
        status, _, body = http_get(server.port("web"), b"/hello")
        normal_ok += status == 200 and body == b"hello world\n" * 4
        time.sleep(scale(0.02, 0.2))
    for s in socks:
        s.sendall(request[-4:])
    answered = 0
    want = b"hello world\n" * 4
    for s in socks:
        s.settimeout(10)
        data = b""
        while not data.endswith(want):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        answered += data.startswith(b"HTTP/1.1 200") and data.endswith(want)
        s.close()
    after = server.wait_fds(base)
    report("slowloris", reactor, slow_clients=slow, normal_requests_ok=normal_ok,
           slow_answered=answered, fds_before=base, fds_after=after)
    assert normal_ok == len(range(0, len(request) - 4, step))
    assert answered == slow
    assert after == base
    server.stop()


# ---- pipelined garbage, compared with the control ----

def corpus(rng, extra):
    ok = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
    cases = [
        ok * 3,
        ok + b"\x00\x01\x02 garbage\r\n\r\n" + ok,
        b"GET /hello HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n" + ok,
        b"FOO /hello HTTP/1.1\r\nHost: t\r\n\r\n" + ok,
        b"GET /hello HTTP/9.9\r\n\r\n" + ok,
        b"POST /dyn HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n" + ok,
        b"POST /dyn HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + ok,
        b"POST /dyn HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /dyn HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
        ok * 100,
        b"GET /" + b"x" * 100000 + b" HTTP/1.1\r\n\r\n",
        b"\r\n" * 1000 + ok,
        b"GET /hello HTTP/1.1\r\n" + b"H: v\r\n" * 1000 + b"\r\n",
        b"GET /hel\x00lo HTTP/1.1\r\nHost: t\r\n\r\n" + ok,
        b"GET /dyn?" + b"%" * 1000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /dyn HTTP/1.1\r\nHost: t\r\n\r\n" * 10 + b"\xff\xfe\xfd\r\n\r\n",
        b"POST /dyn HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n" + ok,
        b" " * 5000,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + ok,
    ]
    for _ in range(extra):  # random mutations of valid pipelines
        data = bytearray(ok * rng.randint(1, 5))
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            how = rng.randrange(3)
            if how == 0:
                data[i] = rng.randrange(256)
            elif how == 1:
                del data[i]
            else:
                data[i:i] = rng.randbytes(rng.randint(1, 20))
        cases.append(bytes(data))
    return cases


def normalise(response):
    """The response bytes without what differs between any two runs (the date)."""
    return re.sub(rb"(?im)^date: [^\r\n]*\r\n", b"", response)


def exchange(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        return normalise(read_all(s, 15, idle=scale(0.5, 1.0)))
    except (ConnectionResetError, BrokenPipeError):
        return b"<RST while sending>"
    finally:
        s.close()


@pytest.mark.parametrize("reactor", REACTORS)
def test_pipelined_garbage_as_on_epoll(reactor, servers):
    server = servers(reactor)
    control = servers("epoll")
    base = server.fds()
    cases = corpus(random.Random(11), scale(20, 300))
    different = []
    with ThreadPoolExecutor(16) as pool:
        for batch in range(0, len(cases), 16):
            part = cases[batch:batch + 16]
            got = list(pool.map(lambda d: exchange(server.port("web"), d), part))
            want = list(pool.map(lambda d: exchange(control.port("web"), d), part))
            for i, (data, g, w) in enumerate(zip(part, got, want)):
                if g != w:
                    different.append((batch + i, data[:60], g[:300], w[:300]))
    after = server.wait_fds(base)
    status, _, _ = http_get(server.port("web"), b"/hello")
    report("pipelined_garbage", reactor, inputs=len(cases), different=len(different),
           fds_before=base, fds_after=after)
    assert not different, "answered differently from EPollReactor:\n%s" % (
        "\n".join(repr(d) for d in different[:5]),)
    assert status == 200
    assert after == base
    server.stop()
    control.stop()


# ---- path traversal against txuring.web ----

TRAVERSALS = [
    b"/files/../secret.txt", b"/files/%2e%2e/secret.txt", b"/files/..%2fsecret.txt",
    b"/files/%2e%2e%2fsecret.txt", b"/files/..%2Fsecret.txt", b"/files/%252e%252e/secret.txt",
    b"/files/....//secret.txt", b"/files/./../secret.txt", b"/files/sub/../../secret.txt",
    b"/files/sub/%2e%2e/%2e%2e/secret.txt", b"/files/..\\secret.txt",
    b"/files/%5c..%5csecret.txt", b"/files//../secret.txt", b"/files/link",
    b"/files/link/", b"/files/sub/dirlink/secret.txt", b"/files/%00", b"/files/a%00b",
    b"/files/..%00/secret.txt", b"/files/" + b"../" * 20 + b"etc/passwd",
    b"/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd", b"/files//etc/passwd",
    b"/files/sub/../../../etc/passwd", b"/files/.%2e/secret.txt",
    b"/files/%c0%ae%c0%ae/secret.txt", b"/files/" + b"%2e" * 2 + b"%2f" + b"secret.txt",
]


@pytest.mark.parametrize("reactor", REACTORS)
def test_path_traversal(reactor, servers, tmp_path):
    pytest.importorskip("txuring.web")
    secret = b"SECRET-%d" % random.randrange(10 ** 9)
    (tmp_path / "secret.txt").write_bytes(secret)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "index.txt").write_bytes(b"public\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    os.symlink(tmp_path / "secret.txt", root / "link")
    os.symlink(tmp_path, root / "sub" / "dirlink")
    server = servers(reactor, web_root=str(root))
    leaks, statuses = [], {}
    for path in TRAVERSALS:
        status, _, body = http_get(server.port("web"), path)
        statuses[status] = statuses.get(status, 0) + 1
        if secret in body or b"root:x:0:0" in body:
            leaks.append((path, status))
    ok, _, body = http_get(server.port("web"), b"/files/sub/inner.txt")
    report("path_traversal", reactor, attempts=len(TRAVERSALS), leaks=len(leaks),
           statuses=statuses, files=server.info["files"])
    assert not leaks, leaks
    assert ok == 200 and body == b"inner\n"
    server.stop()


# ---- files changing under txuring.fs and txuring.web ----

@pytest.mark.parametrize("reactor", REACTORS)
def test_files_changing_under_fs(reactor, tmp_path):
    pytest.importorskip("txuring.fs")
    from test_stress_faults import run_scenario

    r = run_scenario("fs_race", reactor, files=20, seconds=scale(2.0, 20.0),
                     directory=str(tmp_path))
    report("fs_race", reactor, **r)
    assert r["finished"]
    assert not r["bad"], r["first_bad"]
    assert r["mutations"] > 0 and r["reads"] > 0
    assert r["fds_after"] <= r["fds_before"]


@pytest.mark.parametrize("reactor", REACTORS)
def test_files_changing_under_web(reactor, servers, tmp_path):
    """
    GETs of files that a thread here deletes, truncates, rewrites and replaces as
    fast as it can: each answer is a 200 whose body is some mix of the file's versions
    (shorter than its Content-Length only if the file shrank, the connection then
    closed), or a 404; never a hang, never another file's bytes; fds come back.
    """
    pytest.importorskip("txuring.web")
    from stress_scenarios import RECORD, content, valid_read

    root = tmp_path / "root"
    root.mkdir()
    files = 10
    for i in range(files):
        (root / ("f%03d" % i)).write_bytes(content(i, 0, 2000))
    server = servers(reactor, web_root=str(root))
    http_get(server.port("web"), b"/files/f000")  # (the root's fd is opened once)
    base = server.settled_fds()  # (not counting that request's socket or file)
    stop = threading.Event()
    mutations = [0]

    def mutate():
        rng = random.Random(2)
        v = 0
        while not stop.is_set():
            v += 1
            i = rng.randrange(files)
            p = str(root / ("f%03d" % i))
            how = rng.randrange(4)
            try:
                if how == 0:
                    os.unlink(p)
                elif how == 1:
                    os.truncate(p, min(os.path.getsize(p),
                                       rng.randrange(0, 2000) * RECORD))
                elif how == 2:
                    with open(p, "r+b" if os.path.exists(p) else "wb") as f:
                        f.write(content(i, v, rng.choice([0, 10, 2000, 4000])))
                        f.truncate()
                else:
                    with open(p + ".new", "wb") as f:
                        f.write(content(i, v, rng.choice([1, 500, 3000])))
                    os.rename(p + ".new", p)
            except FileNotFoundError:
                pass
            if not os.path.exists(p):
                with open(p, "wb") as f:
                    f.write(content(i, v, 100))
            mutations[0] += 1
            time.sleep(0.0005)

    t = threading.Thread(target=mutate)
    t.start()
    outcomes, bad = {}, []
    end = time.monotonic() + scale(3.0, 20.0)
    rng = random.Random(3)
    try:
        while time.monotonic() < end:
            i = rng.randrange(files)
            status, headers, body = http_get(server.port("web"), b"/files/f%03d" % i)
            key = str(status)
            if status == 200:
                length = int(headers.get(b"content-length", b"-1"))
                if len(body) != length:
                    key = "200-short"
                if not valid_read(i, body):
                    bad.append((i, body[:64]))
            elif status is None and not body:
                key = "closed"  # the file shrank before the first byte went out
            elif status == 500:
                key = "500"  # a small file that shrank before its one write (logged)
            elif status != 404:
                bad.append((i, status))
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        stop.set()
        t.join()
    after = server.wait_fds(base)
    report("web_race", reactor, requests=sum(outcomes.values()), outcomes=outcomes,
           bad=len(bad), mutations=mutations[0], fds_before=base, fds_after=after,
           files=server.info["files"])
    listing = server.fd_listing()
    shutil.rmtree(root)
    assert not bad, bad[:3]
    assert after == base, "server fds %d -> %d: %r" % (base, after, listing)
    # (txuring.web logs a file that shrank under a response, and closes the connection)
    server.stop(expected_errors=("the file shrank while being served",))
