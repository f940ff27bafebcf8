"""
TCP echo round trips per second and the server's CPU time per round trip: Twisted's
echo protocol on UringReactor (and variants of it) and on EPollReactor, driven by a C
load client. A quick check of two or three servers on one workload; suite.py is the
full benchmark.

    python benchmarks/bench_echo.py [--quick] [--connections 50] [--size 64]
        [--seconds 3] [--repeat 5] [--servers uring,epoll,uring:OPTION=VALUE:...]

Servers: C{uring} (UringReactor as it comes), C{epoll} (EPollReactor), and
C{uring:OPTION=VALUE[:OPTION=VALUE...]}, UringReactor with those keyword options
(Python literals): C{uring:directSendThreshold=0} (sends always through the ring),
C{uring:completionTCP=False} (Twisted's own transports over poll ops),
C{uring:recvBundles=False}... Each server process imports this checkout's txuring
(PYTHONPATH is set to it).

The client (echo_client.c, compiled here with the C compiler) keeps one SIZE-byte
request in flight per connection. Each repeat starts a fresh server process per
server, alternating between them, so a slow drift of a shared machine spreads over
all of them. For each run: round trips per second, and the server's CPU time
(utime+stime from /proc/PID/stat over the client's run, and the user part alone)
divided by the round trips served: the steadier figure on a shared machine. Medians
over the repeats, and the ratios to EPollReactor.
"""

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _stats import fmt_rate, ratio, summarize, table  # noqa: E402

SERVER = r"""
import ast, sys
name = sys.argv[1]
if name == "uring" or name.startswith("uring:"):
    from txuring import reactor as r
    options = {}
    for part in name.split(":")[1:]:
        key, _, value = part.partition("=")
        options[key] = ast.literal_eval(value)
    r.install(**options)
elif name == "epoll":
    from twisted.internet import epollreactor as r
    r.install()
else:
    raise SystemExit("unknown server %r" % (name,))
from twisted.internet import reactor, protocol

class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)

port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), backlog=1024,
                         interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def build_client(workdir):
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = os.path.join(workdir, "echo_client")
    subprocess.run(cc.split() + ["-O2", "-o", exe, os.path.join(HERE, "echo_client.c")],
                   check=True)
    return exe


def cpu_seconds(pid):
    """(utime + stime, utime) of process C{pid}, in seconds."""
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    return user + system, user


def measure(client, name, connections, size, seconds):
    """One run: (round trips/s, server CPU us per round trip, of which user)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    server = subprocess.Popen([sys.executable, "-c", SERVER, name], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT)
    try:
        port = int(server.stdout.readline())
        time.sleep(0.2)
        cpu0, user0 = cpu_seconds(server.pid)
        t0 = time.monotonic()
        out = subprocess.run([client, str(port), str(connections), str(size), str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 60, check=True)
        elapsed = time.monotonic() - t0
        cpu1, user1 = cpu_seconds(server.pid)
        rate = float(out.stdout)
        served = rate * elapsed
        return rate, (cpu1 - cpu0) / served * 1e6, (user1 - user0) / served * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs, 3 repeats")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--servers", default="uring,epoll",
                        help="comma-separated: uring, epoll, uring:OPTION=VALUE:...")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    repeat = args.repeat or (3 if args.quick else 5)
    names = [n for n in args.servers.split(",") if n]
    with tempfile.TemporaryDirectory() as workdir:
        client = build_client(workdir)
        results = {name: [] for name in names}
        for _ in range(repeat):
            for name in names:
                results[name].append(measure(client, name, args.connections, args.size,
                                             seconds))
                time.sleep(0.2)
    print("python %s, kernel %s, %d connections, %d-byte requests, %d x %.1f s, medians"
          % (sys.version.split()[0], os.uname().release, args.connections, args.size,
             repeat, seconds))
    print("command: %s %s" % (os.path.basename(sys.executable), " ".join(sys.argv)))
    print()
    med = {n: {k: summarize([r[i] for r in v])["median"]
               for i, k in enumerate(("rate", "cpu", "user"))}
           for n, v in results.items()}
    base = med.get("epoll")
    rows = []
    for n, v in results.items():
        m = med[n]
        rows.append([n, fmt_rate(m["rate"]), fmt_rate(min(r[0] for r in v)),
                     fmt_rate(max(r[0] for r in v)),
                     "%.2fx" % ratio(m["rate"], base["rate"]) if base else "-",
                     "%.1f" % m["cpu"], "%.1f" % m["user"],
                     "%.2fx" % ratio(m["cpu"], base["cpu"]) if base else "-"])
    print(table(["server", "round trips/s", "min", "max", "vs epoll", "cpu us/req",
                 "user us/req", "cpu vs epoll"], rows))


if __name__ == "__main__":
    main()
