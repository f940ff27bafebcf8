"""
Load: many idle connections with busy ones among them, echo round trips checked message
by message, and connect/close cycles, against the server under test on UringReactor and
on EPollReactor (the control). Nothing lost, no fd growth, RSS flat (its slope reported).

Fast by default; C{TXURING_STRESS=full} runs the issue's figures: 10,000 idle + 500 busy
connections for 60 s, 1,000,000 round trips, 100,000 connect/close cycles.
"""

import os
import socket
import threading
import time

import pytest

import stresslib
from stresslib import REACTORS, EchoLoad, report, scale, servers  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(scale(300, 1800))]

MiB = 1 << 20



def rss_growth_allowed(seconds):
    """RSS a flat server may still gain over a run (allocator plateaus, caches)."""
    return 24 * MiB


def check_rss_flat(slope, seconds):
    """
    The RSS trend over the measured part of a run (after the first 30%) stays under
    L{rss_growth_allowed}. Only judged on runs of 10 s or more (the fast subset's are
    a warm-up), and not under AddressSanitizer (its quarantine holds freed memory).
    """
    if seconds < 10 or "libasan" in os.environ.get("LD_PRELOAD", ""):
        return
    growth = slope * seconds * 0.7
    assert growth < rss_growth_allowed(seconds), (
        "RSS grew %.1f MiB over the run (slope %.1f KiB/s)" % (growth / MiB,
                                                              slope / 1024))


@pytest.mark.parametrize("reactor", REACTORS)
def test_idle_and_busy_connections(reactor, servers):
    idle, busy = scale(1000, 10000), scale(50, 500)
    seconds = scale(3, 60)
    reason = stresslib.raise_nofile(idle + busy + 200)
    if reason:
        pytest.skip(reason)
    server = servers(reactor)
    if server.info["nofile"] < idle + busy + 100:
        pytest.skip("the server's RLIMIT_NOFILE is %d" % (server.info["nofile"],))
    port = server.port("echo")
    base_fds = server.fds()
    idle_socks = stresslib.connect_many(port, idle)
    try:
        assert stresslib.exchange_all(idle_socks, b"i") == 0
        load = EchoLoad(port, busy, depth=2, max_body=1024)
        try:
            server.sample()
            load.run(seconds=seconds, on_tick=server.sample, tick=scale(0.25, 2))
            held = server.fds() - base_fds
            server.sample()
            lost = load.bytes_lost
            round_trips = load.round_trips
        finally:
            load.close()
        # Every idle connection is still there and still echoes.
        assert stresslib.exchange_all(idle_socks, b"still here") == 0
    finally:
        for s in idle_socks:
            s.close()
    after = server.wait_fds(base_fds)
    stats = server.call("stats")
    rss_slope = server.rss_slope()
    report("idle_and_busy", reactor, idle=idle, busy=busy, seconds=seconds,
           server_fds_held=held, round_trips=round_trips, bytes_lost=lost,
           rss_mib=round(server.samples[-1][1] / MiB, 1),
           rss_slope_kib_s=round(rss_slope / 1024, 2),
           fds_before=base_fds, fds_after=after,
           completion_tcp=server.info["completion_tcp"])
    assert held >= idle + busy, "the server held %d connections, not %d" % (held,
                                                                           idle + busy)
    assert lost == 0
    assert after == base_fds, "server fds %d after the run, %d before" % (after, base_fds)
    assert stats["counters"].get("echo_lost", 0) == idle + busy
    check_rss_flat(rss_slope, seconds)
    server.stop()


@pytest.mark.parametrize("reactor", REACTORS)
def test_echo_round_trips(reactor, servers):
    total = scale(20000, 1000000)
    server = servers(reactor)
    base_fds = server.fds()
    load = EchoLoad(server.port("echo"), conns=scale(20, 50), depth=2, max_body=4096,
                    seed=1)
    server.sample()
    start = time.monotonic()
    try:
        load.run(round_trips=total, on_tick=server.sample, tick=scale(0.2, 2))
    finally:
        load.close()
    elapsed = time.monotonic() - start
    server.sample()
    after = server.wait_fds(base_fds)
    rss_slope = server.rss_slope()
    report("echo_round_trips", reactor, round_trips=load.round_trips,
           bytes_echoed=load.bytes_back, bytes_lost=load.bytes_lost,
           seconds=round(elapsed, 1), rss_slope_kib_s=round(rss_slope / 1024, 2),
           fds_before=base_fds, fds_after=after)
    assert load.round_trips >= total
    assert load.bytes_lost == 0
    assert after == base_fds
    check_rss_flat(rss_slope, elapsed)
    server.stop()


@pytest.mark.parametrize("reactor", REACTORS)
def test_connect_close_cycles(reactor, servers):
    """
    Connect, one exchange, close; from 8 threads, alternating source addresses so the
    client's TIME_WAIT ports never run out. Every 10th close is an abortive one (RST).
    """
    total = scale(2000, 100000)
    threads = 8
    server = servers(reactor)
    port = server.port("echo")
    base_fds = server.fds()
    errors = []
    done = [0]
    lock = threading.Lock()

    def worker(w):
        try:
            for i in range(total // threads):
                s = socket.socket()
                s.bind(("127.0.0.%d" % (2 + (i + w) % 16), 0))
                s.connect(("127.0.0.1", port))
                s.sendall(b"%08d" % i)
                got = b""
                while len(got) < 8:
                    chunk = s.recv(8 - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got != b"%08d" % i:
                    errors.append("cycle %d: got %r" % (i, got))
                if i % 10 == 0:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
                with lock:
                    done[0] += 1
        except Exception as e:  # reported below
            errors.append("worker %d: %r" % (w, e))

    start = time.monotonic()
    workers = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    while any(t.is_alive() for t in workers):
        server.sample()
        time.sleep(scale(0.1, 1))
    for t in workers:
        t.join()
    elapsed = time.monotonic() - start
    after = server.wait_fds(base_fds)
    stats = server.call("stats")
    rss_slope = server.rss_slope()
    report("connect_close_cycles", reactor, cycles=done[0], seconds=round(elapsed, 1),
           errors=len(errors), fds_before=base_fds, fds_after=after,
           server_made=stats["counters"].get("echo_made"),
           server_lost=stats["counters"].get("echo_lost"),
           rss_slope_kib_s=round(rss_slope / 1024, 2),
           fd_slope_per_s=round(server.fd_slope(), 3))
    assert not errors, errors[:5]
    assert done[0] == total // threads * threads
    assert after == base_fds
    assert stats["counters"].get("echo_made") == stats["counters"].get("echo_lost") == done[0]
    check_rss_flat(rss_slope, elapsed)
    server.stop()
