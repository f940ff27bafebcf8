"""
64-byte echo through Twisted's echo protocol, req/s and the server's CPU time per
request (utime+stime of the server process over the run, divided by the requests
served): the steadier figure on a shared machine. Servers, alternated per repeat:

  uring           UringReactor with txuring.tcp's completion transports (the default)
  uring-nodirect  the same, sends always through the ring (no direct send(2))
  uring-poll      UringReactor with Twisted's transports over poll ops (completionTCP=False)
  epoll           Twisted's EPollReactor

    python tools/echo_cpu.py CONNECTIONS SECONDS REPEATS [server,server,...]

The load client is benchmarks/echo_client.c (compiled here).
"""
import os, subprocess, sys, time, statistics, tempfile
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
SERVER = r"""
import sys, os
name = sys.argv[1]
if name.startswith("uring"):
    from txuring import reactor as r
    opts = {}
    if name == "uring-poll": opts["completionTCP"] = False
    if name == "uring-nodirect": opts["directSendThreshold"] = 0
    r.install(**opts)
else:
    from twisted.internet import epollreactor as r
    r.install()
from twisted.internet import reactor, protocol
class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)
port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), backlog=1024, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""
def cpu(pid, which=(11, 12)):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return sum(int(f[i]) for i in which) / os.sysconf("SC_CLK_TCK")
def measure(client, name, conns, size, secs, py):
    srv = subprocess.Popen([py, "-c", SERVER, name], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline())
        time.sleep(0.2)
        c0 = cpu(srv.pid); u0 = cpu(srv.pid, (11,)); t0 = time.monotonic()
        out = subprocess.run([client, str(port), str(conns), str(size), str(secs)], capture_output=True, text=True, check=True)
        t1 = time.monotonic(); c1 = cpu(srv.pid); u1 = cpu(srv.pid, (11,))
        rate = float(out.stdout)
        n = rate * (t1 - t0)
        return rate, (c1 - c0) / n * 1e6, (u1 - u0) / n * 1e6
    finally:
        srv.terminate(); srv.wait(10)
def main():
    conns = int(sys.argv[1]); secs = float(sys.argv[2]); reps = int(sys.argv[3])
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else ["uring", "epoll"]
    py = sys.executable
    d = tempfile.mkdtemp()
    exe = os.path.join(d, "echo_client")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "echo_client.c")], check=True)
    res = {n: [] for n in names}
    for _ in range(reps):
        for n in names:
            res[n].append(measure(exe, n, conns, 64, secs, py))
    base = statistics.median(r[0] for r in res["epoll"]) if "epoll" in res else None
    print("%d conns, 64 B, %d x %.1f s, medians" % (conns, reps, secs))
    for n in names:
        rate = statistics.median(r[0] for r in res[n])
        us = statistics.median(r[1] for r in res[n])
        user = statistics.median(r[2] for r in res[n])
        print("%-15s %10.0f req/s  %5.2fx epoll  server CPU %6.2f us/req (user %5.2f)  (rates %s)"
              % (n, rate, rate / base if base else 0, us, user, [int(r[0]) for r in res[n]]))
main()
