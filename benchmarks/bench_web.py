#!/usr/bin/env python3
"""
Static file serving over HTTP: txuring.web.Directory against twisted.web.static.File,
each on UringReactor and on EPollReactor (txuring.web there runs on a private ring
attached with RingDriver), every server in its own process, the load from a C client in
another (benchmarks/http_load.c, compiled on the fly with cc). The servers take turns
within each round (--rounds), so that the shared machine's noise falls on all of them.

    .venv/bin/python benchmarks/bench_web.py            # ~3 minutes
    .venv/bin/python benchmarks/bench_web.py --quick
    .venv/bin/python benchmarks/bench_web.py --variants   # + splice off, + all ops

Workloads:
  small files   --small files of 1-4 KiB, 50 keep-alive connections: req/s and the
                server's CPU microseconds per request (utime+stime from /proc).
  big file      one --big-mib file fetched again and again on 1 connection: MB/s and
                server CPU ms per 100 MB.
  tiny during   the latency (p50/p99) of a 20-byte file fetched on 1 connection while
  big           4 connections download the big file.
Medians over the rounds; ratios to static.File on EPollReactor (Twisted's usual way).
Nothing here asserts: it prints numbers.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _stats import table  # noqa: E402

SERVER = r'''
import sys
kind, reactor_name, root = sys.argv[1:4]
if reactor_name == "uring":
    from txuring import reactor as r; r.install()
else:
    from twisted.internet import epollreactor; epollreactor.install()
if kind.startswith("txuring"):
    from txuring.web import Directory
    options = {"txuring": {}, "txuring-copy": {"splice": False},
               "txuring-ops": {"nowait": False, "splice": False}}[kind]
    res = Directory(root, **options)
else:
    from twisted.web.static import File
    res = File(root)
from twisted.internet import reactor
from twisted.web import server
site = server.Site(res)
site.log = lambda request: None  # no access log: both sides alike
port = reactor.listenTCP(0, site, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
'''

SERVERS = [
    ("txuring", "uring", "txuring.web on uring"),
    ("txuring", "epoll", "txuring.web on epoll"),
    ("static", "uring", "static.File on uring"),
    ("static", "epoll", "static.File on epoll"),
]
BASELINE = "static.File on epoll"
#: With --variants: txuring.web on uring without splicing (bodies copied), and with
#: every open and read an op (no fast path, no splicing).
VARIANTS = [
    ("txuring-copy", "uring", "txuring.web, no splice"),
    ("txuring-ops", "uring", "txuring.web, all ops"),
]


def cpu_seconds(pid):
    """The process's user+system CPU seconds so far (/proc/PID/stat, fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_client(exe, port, seconds, conns, paths, pid=None):
    cpu0 = cpu_seconds(pid) if pid else None
    out = subprocess.run([exe, str(port), str(seconds), str(conns)] + paths,
                         capture_output=True, text=True, check=True).stdout.split()
    result = {out[i]: float(out[i + 1]) for i in range(0, len(out), 2)}
    if pid:
        result["server_cpu"] = cpu_seconds(pid) - cpu0
    return result


def one_round(exe, kind, reactor_name, root, names, seconds):
    env = dict(os.environ, PYTHONPATH=ROOT)
    server = subprocess.Popen([sys.executable, "-c", SERVER, kind, reactor_name, root],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        port = int(server.stdout.readline())
        run_client(exe, port, 0.5, 4, names[:50])  # warm up
        small = run_client(exe, port, seconds, 50, names, server.pid)
        big = run_client(exe, port, seconds, 1, ["/big.bin"], server.pid)
        loader = subprocess.Popen([exe, str(port), str(seconds + 1), "4", "/big.bin"],
                                  stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        tiny = run_client(exe, port, seconds, 1, ["/tiny.txt"])
        loader.wait()
    finally:
        server.terminate()
        server.wait()
    return {
        "small_rps": small["requests"] / small["seconds"],
        "small_cpu_us": 1e6 * small["server_cpu"] / max(1, small["requests"]),
        "big_mbps": big["bytes"] / big["seconds"] / 1e6,
        "big_cpu_ms_per_100mb": 1e3 * big["server_cpu"] / max(1e-9, big["bytes"] / 1e8),
        "tiny_p50_us": tiny["p50_us"],
        "tiny_p99_us": tiny["p99_us"],
        "errors": small["errors"] + big["errors"] + tiny["errors"],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--big-mib", type=int, default=100)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", help="comma-separated labels' first words, e.g. txuring,static")
    p.add_argument("--json", help="write the per-round results here")
    p.add_argument("--variants", action="store_true",
                   help="also txuring.web on uring with splice=False, and with "
                        "nowait=False, splice=False")
    args = p.parse_args()
    if args.quick:
        args.small, args.big_mib, args.seconds, args.rounds = 200, 32, 2, 1
    exe = os.path.join(tempfile.mkdtemp(), "http_load")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "http_load.c")], check=True)
    root = tempfile.mkdtemp(prefix="bench_web.")
    names = []
    for i in range(args.small):
        name = "f%04d.txt" % (i,)
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(random.randint(1024, 4096)))
        names.append("/" + name)
    with open(os.path.join(root, "tiny.txt"), "wb") as f:
        f.write(b"x" * 20)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        for _ in range(args.big_mib):
            f.write(os.urandom(1 << 20))
    servers = SERVERS + (VARIANTS if args.variants else [])
    if args.only:
        wanted = args.only.split(",")
        servers = [s for s in servers if s[0] in wanted or s[1] in wanted]
    results = {label: [] for _, _, label in servers}
    try:
        for _ in range(args.rounds):
            for kind, reactor_name, label in servers:
                results[label].append(
                    one_round(exe, kind, reactor_name, root, names, args.seconds))
    finally:
        subprocess.run(["rm", "-rf", root])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    med = {label: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for label, runs in results.items()}
    base = med.get(BASELINE)
    rows = []
    for label, m in med.items():
        rows.append([
            label,
            "{:,.0f}".format(m["small_rps"]),
            "%.2fx" % (m["small_rps"] / base["small_rps"]) if base else "-",
            "{:.0f}".format(m["small_cpu_us"]),
            "{:,.0f}".format(m["big_mbps"]),
            "%.2fx" % (m["big_mbps"] / base["big_mbps"]) if base else "-",
            "{:.0f}".format(m["big_cpu_ms_per_100mb"]),
            "{:.0f}".format(m["tiny_p50_us"]), "{:.0f}".format(m["tiny_p99_us"]),
            "%d" % m["errors"]])
    print("%d small files, %d MiB big file, %s s per workload, %d rounds (medians); "
          "load average %s" % (args.small, args.big_mib, args.seconds, args.rounds,
                               open("/proc/loadavg").read().split()[0]))
    print(table(["server", "small req/s", "vs static/epoll", "cpu us/req", "big MB/s",
                 "vs static/epoll", "cpu ms/100MB", "tiny p50 us", "tiny p99 us",
                 "errors"], rows))


if __name__ == "__main__":
    main()
