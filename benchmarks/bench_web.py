#!/usr/bin/env python3
"""
Static file serving over HTTP: txuring.web.Directory on UringReactor against
twisted.web.static.File on EPollReactor, each server in its own process, the load
from a C client in another (benchmarks/http_load.c, compiled on the fly with cc).

    .venv/bin/python benchmarks/bench_web.py            # ~1 minute
    .venv/bin/python benchmarks/bench_web.py --quick

Workloads:
  small files   --small files of 1-4 KiB, 50 keep-alive connections, req/s.
  big file      one --big-mib file fetched again and again on 1 connection, MB/s.
  tiny during   the latency (p50/p99) of a 20-byte file fetched on 1 connection while
  big           4 connections download the big file.
Nothing here asserts: it prints numbers.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _stats import table  # noqa: E402

SERVER = r'''
import sys
kind, root = sys.argv[1], sys.argv[2]
if kind == "txuring":
    from txuring import reactor as r; r.install()
    from txuring.web import Directory
    res = Directory(root)
else:
    from twisted.internet import epollreactor; epollreactor.install()
    from twisted.web.static import File
    res = File(root)
from twisted.internet import reactor
from twisted.web import server
port = reactor.listenTCP(0, server.Site(res), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
'''


def run_client(exe, port, seconds, conns, paths):
    out = subprocess.run([exe, str(port), str(seconds), str(conns)] + paths,
                         capture_output=True, text=True, check=True).stdout.split()
    return {out[i]: float(out[i + 1]) for i in range(0, len(out), 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--big-mib", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5)
    args = p.parse_args()
    if args.quick:
        args.small, args.big_mib, args.seconds = 200, 32, 2
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
    rows = []
    for kind, label in (("txuring", "txuring.web on uring"),
                        ("static", "static.File on epoll")):
        server = subprocess.Popen([sys.executable, "-c", SERVER, kind, root],
                                  stdout=subprocess.PIPE, text=True)
        try:
            port = int(server.stdout.readline())
            run_client(exe, port, 0.5, 4, names[:50])  # warm up
            small = run_client(exe, port, args.seconds, 50, names)
            big = run_client(exe, port, args.seconds, 1, ["/big.bin"])
            loader = subprocess.Popen([exe, str(port), str(args.seconds + 1), "4",
                                       "/big.bin"], stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            tiny = run_client(exe, port, args.seconds, 1, ["/tiny.txt"])
            loader.wait()
        finally:
            server.terminate()
            server.wait()
        rows.append([label, "{:,.0f}".format(small["requests"] / small["seconds"]),
                     "{:,.0f}".format(big["bytes"] / big["seconds"] / 1e6),
                     "{:.0f}".format(tiny["p50_us"]), "{:.0f}".format(tiny["p99_us"]),
                     "%d" % (small["errors"] + big["errors"] + tiny["errors"])])
    subprocess.run(["rm", "-rf", root])
    print("%d small files, %d MiB big file, %s s per workload" % (
        args.small, args.big_mib, args.seconds))
    print(table(["server", "small req/s (50 conns)", "big MB/s", "tiny p50 us",
                 "tiny p99 us", "errors"], rows))


if __name__ == "__main__":
    main()
