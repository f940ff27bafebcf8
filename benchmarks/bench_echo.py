"""
TCP echo round trips per second: the same Twisted echo server (Twisted's tcp.Port and
transports, so this measures the reactor underneath them) on UringReactor and on
EPollReactor, driven by a C load client.

    python benchmarks/bench_echo.py [--quick] [--connections 50] [--size 64]

The client (echo_client.c, compiled here with the C compiler) keeps one SIZE-byte
request in flight per connection. Each repeat starts a fresh server process per
reactor, alternating between the reactors; medians and the ratio are reported.
"""

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _stats import fmt_rate, fmt_ratio, ratio, summarize, table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

SERVER = r"""
import sys
reactor_name = sys.argv[1]
if reactor_name == "uring":
    from txuring import reactor as r
else:
    from twisted.internet import epollreactor as r
r.install()
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
    cc = sysconfig.get_config_var("CC") or "cc"
    exe = os.path.join(workdir, "echo_client")
    subprocess.run(cc.split() + ["-O2", "-o", exe, os.path.join(HERE, "echo_client.c")],
                   check=True)
    return exe


def measure(client, reactor_name, connections, size, seconds):
    server = subprocess.Popen([sys.executable, "-c", SERVER, reactor_name],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        out = subprocess.run([client, str(port), str(connections), str(size), str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 60, check=True)
        return float(out.stdout)
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
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    repeat = args.repeat or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as workdir:
        client = build_client(workdir)
        results = {"uring": [], "epoll": []}
        for _ in range(repeat):
            for name in results:
                results[name].append(measure(client, name, args.connections, args.size,
                                             seconds))
                time.sleep(0.2)
    print("python %s, kernel %s, %d connections, %d-byte requests, %d x %.0f s, medians"
          % (sys.version.split()[0], os.uname().release, args.connections, args.size,
             repeat, seconds))
    print("command: %s %s" % (os.path.basename(sys.executable), " ".join(sys.argv)))
    print()
    med = {k: summarize(v)["median"] for k, v in results.items()}
    print(table(["server", "round trips/s", "min", "max"],
                [[k, fmt_rate(med[k]), fmt_rate(min(v)), fmt_rate(max(v))]
                 for k, v in results.items()]))
    print()
    print("uring/epoll: %s" % fmt_ratio(ratio(med["uring"], med["epoll"])))


if __name__ == "__main__":
    main()
