"""
Python-level calls (sys.setprofile "call" and "c_call" events) per 64-byte echo
request inside the server, for UringReactor or EPollReactor:

    python tools/echo_calls.py uring|epoll CONNECTIONS

Needs the load client built at /tmp/echo_client:
    cc -O2 -o /tmp/echo_client benchmarks/echo_client.c
"""
import subprocess
import sys
import threading

name, conns = sys.argv[1], sys.argv[2]
if name == "uring":
    from txuring import reactor as r
else:
    from twisted.internet import epollreactor as r
r.install()
from twisted.internet import protocol, reactor  # noqa: E402

count = {"n": 0}
calls = {"call": 0, "c_call": 0}
state = {}


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        count["n"] += 1
        self.transport.write(data)


def prof(frame, event, arg):
    if event in calls:
        calls[event] += 1


port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), backlog=1024,
                         interface="127.0.0.1")


def client():
    subprocess.run(["/tmp/echo_client", str(port.getHost().port), conns, "64", "3"],
                   capture_output=True)
    reactor.callFromThread(reactor.stop)


def start():
    state["n0"] = count["n"]
    sys.setprofile(prof)


def stop():
    sys.setprofile(None)
    state["n1"] = count["n"]


threading.Thread(target=client).start()
reactor.callLater(1.0, start)
reactor.callLater(2.0, stop)
reactor.run()
n = state["n1"] - state["n0"]
print("%s, %s connections: %d requests profiled; per request %.1f Python calls, %.1f C calls"
      % (name, conns, n, calls["call"] / n, calls["c_call"] / n))
