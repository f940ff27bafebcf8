"""
The README's main job, for real: C{twistd --reactor=uring -y examples/echochat.tac} in a
subprocess (found through the installed twistd plugin), talked to over loopback.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    """
    A port free now on every address (the examples listen on all of them), below the
    kernel's ephemeral range: twistd binds it a moment later, and a port from the
    ephemeral range (what bind to 0 gives) can be taken meanwhile as the source port
    of any connection on the machine, on any 127.x address (EADDRINUSE).
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def connect(port, deadline):
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def recv_until(sock, marker):
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def echochat(tmp_path):
    ports = {"ECHO_PORT": free_port(), "CHAT_PORT": free_port(), "WEB_PORT": free_port()}
    env = dict(os.environ, **{k: str(v) for k, v in ports.items()})
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--reactor=uring", "-y",
         os.path.join(ROOT, "examples", "echochat.tac")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield ports
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    # twistd re-raises the signal that stopped it, so that its exit status says so.
    assert proc.returncode == -signal.SIGTERM, out.decode(errors="replace")
    assert b"reactor class: txuring.reactor.UringReactor" in out
    assert b"Server Shut Down." in out
    assert b"Traceback" not in out, out.decode(errors="replace")


def test_echochat_tac_serves_echo_chat_and_status(echochat):
    deadline = time.monotonic() + 20
    with connect(echochat["ECHO_PORT"], deadline) as echo:
        payload = os.urandom(200000)
        echo.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += echo.recv(65536)
        assert got == payload

    with connect(echochat["CHAT_PORT"], deadline) as ann, \
            connect(echochat["CHAT_PORT"], deadline) as bob:
        recv_until(ann, b"nickname?\n")
        recv_until(bob, b"nickname?\n")
        ann.sendall(b"ann\n")
        recv_until(ann, b"here: ann\n")
        bob.sendall(b"bob\n")
        assert b"* bob joined" in recv_until(ann, b"joined\n")
        recv_until(bob, b"\n")
        bob.sendall(b"hello ann\n")
        assert recv_until(ann, b"hello ann\n").endswith(b"<bob> hello ann\n")

    web = "http://127.0.0.1:%d/" % echochat["WEB_PORT"]
    with urllib.request.urlopen(web, timeout=10) as response:
        listing = response.read()
    assert b'href="echochat.tac"' in listing and b'href="copy_file.py"' in listing
    with urllib.request.urlopen(web + "echochat.py", timeout=10) as response:
        assert response.headers["content-type"] == "text/x-python"
        assert response.read() == open(os.path.join(ROOT, "examples", "echochat.py"),
                                       "rb").read()
    with urllib.request.urlopen(web + "_status", timeout=10) as response:
        status = json.load(response)
    assert status["reactor"] == "txuring.reactor.UringReactor"
    assert status["ring"]["completed"] > 0
    assert status["fs"]["backend"] == "io_uring"


def test_echochat_tac_runs_as_a_daemon(tmp_path):
    """twistd's default mode forks into the background after building the reactor."""
    port = free_port()
    env = dict(os.environ, ECHO_PORT=str(port), CHAT_PORT=str(free_port()),
               WEB_PORT=str(free_port()))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    subprocess.run([twistd, "--reactor=uring", "--pidfile", str(pidfile), "--logfile",
                    str(logfile), "-y", os.path.join(ROOT, "examples", "echochat.tac")],
                   cwd=tmp_path, env=env, check=True, timeout=60)
    deadline = time.monotonic() + 20
    while not pidfile.exists():
        assert time.monotonic() < deadline, logfile.read_text() if logfile.exists() else ""
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    try:
        with connect(port, deadline) as echo:
            echo.sendall(b"from the daemon\n")
            assert recv_until(echo, b"\n") == b"from the daemon\n"
    finally:
        os.kill(pid, signal.SIGTERM)
        while pidfile.exists() and time.monotonic() < deadline + 20:
            time.sleep(0.05)
    log = logfile.read_text()
    assert "Server Shut Down." in log and "Traceback" not in log, log


def _http(method, url, data=None):
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_notes_example_on_epoll(tmp_path):
    """examples/notes.py: a service on the default reactor using txuring.fs."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "notes.py"), str(tmp_path / "n"),
         str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        connect(port, time.monotonic() + 20).close()
        base = "http://127.0.0.1:%d/" % (port,)
        payload = os.urandom(100000)
        assert _http("PUT", base + "notes/first", payload)[0] == 201
        assert _http("GET", base + "notes/first") == (200, payload)
        assert _http("GET", base + "files/first") == (200, payload)
        assert _http("GET", base + "notes/") == (200, b'["first"]')
        assert _http("GET", base + "notes/missing")[0] == 404
        assert _http("GET", base + "notes/..")[0] == 404
        assert _http("DELETE", base + "notes/first")[0] == 204
        assert _http("GET", base + "notes/")[1] == b"[]"
        assert os.listdir(tmp_path / "n") == []
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert b"reactor: EPollReactor" in out
    assert b"Traceback" not in out, out.decode(errors="replace")


def test_twistd_txweb_plugin_serves_a_directory(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_bytes(b"<h1>hello</h1>")
    (tmp_path / "site" / "big.bin").write_bytes(os.urandom(1 << 20))
    port = free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--reactor=uring", "txweb", "--path",
         str(tmp_path / "site"), "--listen", "tcp:%d:interface=127.0.0.1" % (port,),
         "--logfile", str(tmp_path / "access.log"), "--status"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        connect(port, time.monotonic() + 20).close()
        base = "http://127.0.0.1:%d/" % (port,)
        assert _http("GET", base) == (200, b"<h1>hello</h1>")
        assert _http("GET", base + "big.bin")[1] == (tmp_path / "site" / "big.bin").read_bytes()
        assert _http("GET", base + "nope")[0] == 404
        status = json.loads(_http("GET", base + "_status")[1])
        assert status["reactor"] == "txuring.reactor.UringReactor"
        assert status["fs"]["backend"] == "io_uring"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert b"Traceback" not in out, out.decode(errors="replace")
    assert b'"GET /big.bin HTTP/1.1" 200 1048576' in (tmp_path / "access.log").read_bytes()
