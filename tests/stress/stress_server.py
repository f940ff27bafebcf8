"""
The server under test of tests/stress: one process running one reactor, serving the
stress suite's services with Twisted's stock pieces, and a control port through which
the test (its adversary, in another process) asks it for figures and for faults.

    python stress_server.py REACTOR [--reactor-opts JSON] [--web-root DIR] [--backlog N]

REACTOR is C{uring} (C{txuring.reactor.UringReactor}, whatever transports it has;
C{--reactor-opts} passes keyword arguments its constructor knows, the rest are reported
as ignored) or C{epoll} (C{EPollReactor}, the control).

Why a subprocess: pytest-twisted installs one global reactor per process, and a stress
test must run the same service on both reactors; the test's own process is then the
client, so the server's fds and memory are its own and measurable from /proc, and a
crash in the server is seen as a crash, not as pytest dying.

Prints one JSON line: the ports, the pid, the reactor class and what it uses for TCP,
then runs until the control port says C{stop} (or SIGTERM).

Services (all on 127.0.0.1, port 0):
  - echo: L{twisted.protocols.wire.Echo}
  - sink: counts what it receives, never writes
  - source: a push producer writing 64 KiB chunks while the transport has not paused
    it; counts pauses, and the most bytes ever buffered in the process (RSS) is read
    through C{stats}
  - halfclose: an L{IHalfCloseableProtocol} that, when the peer half-closes, writes the
    SHA-256 of everything received and closes
  - web: a L{twisted.web.server.Site}: C{/hello} (static Data), C{/dyn} (a dynamic
    resource), and C{/files/} (C{txuring.web}'s resource over C{--web-root} if that
    module exists, else C{twisted.web.static.File})
  - control: one JSON command per line, one JSON reply per line (see L{Control})
"""

import argparse
import hashlib
import inspect
import json
import os
import resource
import signal
import sys
import threading

CHUNK = 64 * 1024


def install(name, opts):
    """Install the reactor called C{name}; return (options used, options ignored)."""
    if name == "uring":
        from twisted.internet.main import installReactor

        from txuring.reactor import UringReactor

        known = inspect.signature(UringReactor.__init__).parameters
        used = {k: v for k, v in opts.items() if k in known}
        installReactor(UringReactor(**used))
        return used, sorted(set(opts) - set(used))
    if name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()
        return {}, sorted(opts)
    raise SystemExit("unknown reactor %r" % (name,))


def quiet_logging():
    """Warnings and errors to stderr; no per-connection chatter."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )


def fd_count():
    return len(os.listdir("/proc/self/fd")) - 1  # (the listing's own fd)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Counters(dict):
    """Named integers the services bump and C{stats} reports."""

    def bump(self, name, n=1):
        self[name] = self.get(name, 0) + n


def make_services(reactor, counters, web_root):
    from twisted.internet import interfaces, protocol
    from twisted.protocols import wire
    from twisted.web import resource as web_resource, server, static
    from zope.interface import implementer

    class Counted(protocol.Protocol):
        name = "?"

        def connectionMade(self):
            counters.bump(self.name + "_made")

        def connectionLost(self, reason):
            counters.bump(self.name + "_lost")
            counters.bump("lost_" + reason.type.__name__)

    class Echo(Counted, wire.Echo):
        name = "echo"

        def dataReceived(self, data):
            counters.bump("echo_bytes", len(data))
            self.transport.write(data)

    class Sink(Counted):
        name = "sink"

        def dataReceived(self, data):
            counters.bump("sink_bytes", len(data))

    @implementer(interfaces.IPushProducer)
    class Source(Counted):
        """Writes while not paused; a transport that never pauses it is found out by RSS."""

        name = "source"
        chunk = b"s" * CHUNK
        paused = False
        done = False

        def connectionMade(self):
            Counted.connectionMade(self)
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def connectionLost(self, reason):
            self.done = True
            Counted.connectionLost(self, reason)

        def pauseProducing(self):
            if not self.paused:
                counters.bump("source_pauses")
            self.paused = True

        def stopProducing(self):
            self.done = True

        def resumeProducing(self):
            self.paused = False
            for _ in range(16):
                if self.paused or self.done:
                    return
                self.transport.write(self.chunk)
                counters.bump("source_bytes", CHUNK)
            reactor.callLater(0, self._more)

        def _more(self):
            if not (self.paused or self.done):
                self.resumeProducing()

    @implementer(interfaces.IHalfCloseableProtocol)
    class HalfClose(Counted):
        name = "halfclose"

        def connectionMade(self):
            Counted.connectionMade(self)
            self.digest = hashlib.sha256()

        def dataReceived(self, data):
            self.digest.update(data)

        def readConnectionLost(self):
            counters.bump("halfclose_eof")
            self.transport.write(self.digest.hexdigest().encode() + b"\n")
            self.transport.loseConnection()

        def writeConnectionLost(self):
            pass

    class Dynamic(web_resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            counters.bump("dyn_requests")
            # (depends on the request only: the garbage test compares two servers)
            body = b"dynamic %s %s\n" % (request.method, request.uri[:200])
            request.setHeader(b"content-type", b"text/plain")
            return body

        render_HEAD = render_GET

        def render_POST(self, request):
            return b"posted %d\n" % (len(request.content.read()),)

    root = web_resource.Resource()
    root.putChild(b"hello", static.Data(b"hello world\n" * 4, "text/plain"))
    root.putChild(b"dyn", Dynamic())
    files = "none"
    if web_root:
        resource_, files = web_file_resource(web_root)
        root.putChild(b"files", resource_)
    factories = {
        "echo": protocol.Factory.forProtocol(Echo),
        "sink": protocol.Factory.forProtocol(Sink),
        "source": protocol.Factory.forProtocol(Source),
        "halfclose": protocol.Factory.forProtocol(HalfClose),
        "web": server.Site(root),
    }
    return factories, files


def web_file_resource(path):
    """C{txuring.web}'s static-file resource over C{path}, or static.File without it."""
    try:
        import txuring.web as txweb
    except ImportError:
        from twisted.web import static

        return static.File(path), "twisted.web.static.File"
    from twisted.web.resource import IResource

    for name in ("File", "StaticFile", "Static", "FileResource", "Directory"):
        cls = getattr(txweb, name, None)
        if cls is not None and isinstance(cls, type) and IResource.implementedBy(cls):
            return cls(path), "txuring.web." + name
    raise SystemExit("txuring.web has no static-file resource this server knows")


class Control:
    """
    The control port's commands (one JSON object per line; reply one JSON object):

      - C{{"cmd": "stats"}}: fds, rss, counters, the reactor's figures
      - C{{"cmd": "nofile", "soft": N}}: set RLIMIT_NOFILE's soft limit (None: back to
        the limit at start); replies with the fd count then
      - C{{"cmd": "connect", "port": P, "count": N}}: N connectTCP to 127.0.0.1:P, with
        a reply when each has connected or failed (errors by class name)
      - C{{"cmd": "spawn", "count": N}}: N short processes (C{true}) through
        spawnProcess, N at most 50 at once; reply when every one has ended
      - C{{"cmd": "threads", "threads": T, "calls": N}}: T threads each making N
        callFromThread calls; reply when all ran, with how many ran out of order
      - C{{"cmd": "forkexec", "count": N}}: N times os.fork() from the reactor thread, the
        child exec'ing C{true}; reply with the exit statuses
      - C{{"cmd": "stop"}}: reactor.stop()
    """

    def __init__(self, reactor, counters, start_nofile):
        self.reactor = reactor
        self.counters = counters
        self.start_nofile = start_nofile

    def stats(self, cmd):
        reactor = self.reactor
        out = {"fds": fd_count(), "rss": rss_bytes(), "counters": dict(self.counters)}
        bufs = getattr(reactor, "_recvBufs", None)
        if bufs is not None:
            out["recv_rearmed"] = getattr(bufs, "rearmed", None)
        ring = getattr(reactor, "ring", None)
        if ring is not None:
            out["ring_active_ops"] = ring.active_ops
        return out

    def nofile(self, cmd):
        soft = cmd.get("soft")
        if soft is None:
            soft = self.start_nofile
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return {"fds": fd_count(), "soft": soft}

    def connect(self, cmd):
        from twisted.internet import defer, protocol

        results = {}
        waiting = []

        class Client(protocol.Protocol):
            def connectionMade(self):
                self.factory.d.callback("connected")
                self.transport.loseConnection()

        class Factory(protocol.ClientFactory):
            protocol = Client

            def __init__(self):
                self.d = defer.Deferred()

            def clientConnectionFailed(self, connector, reason):
                text = str(reason.value)
                self.d.callback(reason.type.__name__ + (
                    ":EMFILE" if "Too many open files" in text else ":" + text[:60]))

        for _ in range(cmd["count"]):
            f = Factory()
            try:
                self.reactor.connectTCP("127.0.0.1", cmd["port"], f, timeout=10)
            except Exception as e:  # a synchronous failure is an outcome too
                f.d.callback("raised " + type(e).__name__)
            waiting.append(f.d)

        def done(outcomes):
            for o in outcomes:
                results[o] = results.get(o, 0) + 1
            return {"outcomes": results}

        return defer.gatherResults(waiting).addCallback(done)

    def spawn(self, cmd):
        from twisted.internet import defer, protocol

        count, batch = cmd["count"], cmd.get("batch", 50)
        ended = []
        result = defer.Deferred()
        state = {"started": 0, "running": 0}

        class P(protocol.ProcessProtocol):
            def processEnded(self, reason):
                ended.append(reason.value.exitCode)
                state["running"] -= 1
                more()

        def more():
            while state["started"] < count and state["running"] < batch:
                state["started"] += 1
                state["running"] += 1
                self.reactor.spawnProcess(P(), "/bin/true", ["true"], env={})
            if len(ended) == count and not result.called:
                result.callback({"ended": len(ended),
                                 "nonzero": sum(1 for c in ended if c != 0),
                                 "fds": fd_count()})

        more()
        return result

    def threads(self, cmd):
        from twisted.internet import defer

        nthreads, calls = cmd["threads"], cmd["calls"]
        seen = [[] for _ in range(nthreads)]
        result = defer.Deferred()
        total = nthreads * calls
        ran = [0]

        def note(t, i):
            seen[t].append(i)
            ran[0] += 1
            if ran[0] == total:
                disorder = sum(1 for s in seen if s != sorted(s))
                result.callback({"ran": ran[0], "threads_out_of_order": disorder})

        def worker(t):
            for i in range(calls):
                self.reactor.callFromThread(note, t, i)

        for t in range(nthreads):
            threading.Thread(target=worker, args=(t,), daemon=True).start()
        return result

    def forkexec(self, cmd):
        statuses = []
        for _ in range(cmd["count"]):
            pid = os.fork()
            if pid == 0:
                try:
                    os.execv("/bin/true", ["true"])
                finally:
                    os._exit(127)
            # Reaped here, before Twisted's SIGCHLD handler can (it only reaps the
            # processes it spawned).
            _, status = os.waitpid(pid, 0)
            statuses.append(os.waitstatus_to_exitcode(status))
        return {"forked": len(statuses), "nonzero": sum(1 for s in statuses if s != 0),
                "fds": fd_count()}

    def stop(self, cmd):
        self.reactor.callLater(0.05, self.reactor.stop)
        return {"stopping": True}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reactor")
    parser.add_argument("--reactor-opts", default="{}")
    parser.add_argument("--web-root")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # as root, raise the hard limit too (the idle-connections test needs 20,000+)
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    start_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    used, ignored = install(args.reactor, json.loads(args.reactor_opts))
    quiet_logging()
    from twisted.internet import defer, protocol, reactor
    from twisted.protocols import basic

    counters = Counters()

    def on_usr1(signum, frame):
        counters.bump("sigusr1")

    signal.signal(signal.SIGUSR1, on_usr1)
    factories, files = make_services(reactor, counters, args.web_root)
    control = Control(reactor, counters, start_nofile)

    class ControlProtocol(basic.LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 20

        def lineReceived(self, line):
            cmd = json.loads(line)
            d = defer.maybeDeferred(getattr(control, cmd["cmd"]), cmd)
            d.addErrback(lambda f: {"error": "%s: %s" % (f.type.__name__, f.value)})
            d.addCallback(lambda reply: self.sendLine(json.dumps(reply).encode()))

    factories["control"] = protocol.Factory.forProtocol(ControlProtocol)
    info = {name: reactor.listenTCP(0, f, backlog=args.backlog,
                                    interface="127.0.0.1").getHost().port
            for name, f in factories.items()}
    cls = type(reactor)
    info.update(pid=os.getpid(), reactor=cls.__module__ + "." + cls.__qualname__,
                reactor_opts=used, ignored_opts=ignored, files=files,
                completion_tcp=bool(getattr(reactor, "_completionTCP", False)),
                has_recv_buffer_ring=hasattr(reactor, "_recvBuffers"),
                nofile=start_nofile)
    print(json.dumps(info), flush=True)
    reactor.run()
    ring = getattr(reactor, "ring", None)
    if ring is not None:
        reactor.close()  # UringReactor: every op cancelled and answered, the ring closed
    print(json.dumps({"exit": True, "ring_closed": getattr(ring, "closed", None),
                      "fds": fd_count()}), flush=True)


if __name__ == "__main__":
    main()
