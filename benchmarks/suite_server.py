"""
The Twisted server of benchmarks/suite.py: one process per (reactor, repeat), serving every
workload's service on its own port with Twisted's stock pieces, so that what differs between
runs is the reactor (and whatever transports it brings).

    python benchmarks/suite_server.py REACTOR [--tls-cert PEM --tls-key PEM] [--http-body N]
                                      [--count-calls JSON] [--profile PSTATS]

REACTOR is uring (whatever C{txuring.reactor.UringReactor} is installed: its transports are
its own business), uring:OPTION=VALUE[:OPTION=VALUE...] (UringReactor with those keyword
options, Python literals: C{uring:directSendThreshold=0}), epoll, poll, or asyncio (AsyncioSelectorReactor, on a uvloop loop when
uvloop is importable, else on asyncio's own selector loop).

Prints one JSON line: the ports ({"echo", "discard", "source", "http", "tls"}), the pid and
the reactor class actually installed, then runs until SIGTERM.

Services:
  - echo: L{twisted.protocols.wire.Echo}
  - discard: L{twisted.protocols.wire.Discard} (bulk transfer into the server)
  - source: a push producer writing 16 KiB chunks through C{transport.write} until the
    transport pauses it (bulk transfer out of the server)
  - http: a L{twisted.web.server.Site} whose C{/hello} is a L{twisted.web.static.Data}
  - tls: Echo again, through C{listenSSL}
"""

import argparse
import json
import os
import resource
import sys

CHUNK = 16384


def install(name):
    """Install the reactor called C{name}; return a label saying what it runs on."""
    if name == "uring" or name.startswith("uring:"):
        import ast

        from txuring import reactor as module

        options = {}
        for part in name.split(":")[1:]:
            key, _, value = part.partition("=")
            options[key] = ast.literal_eval(value)
        module.install(**options)
        return ""
    if name == "epoll":
        from twisted.internet import epollreactor

        epollreactor.install()
        return ""
    if name == "poll":
        from twisted.internet import pollreactor

        pollreactor.install()
        return ""
    if name == "asyncio":
        import asyncio

        from twisted.internet import asyncioreactor

        try:
            import uvloop
        except ImportError:
            loop, label = asyncio.new_event_loop(), "asyncio " + sys.version.split()[0]
        else:
            loop, label = uvloop.new_event_loop(), "uvloop " + uvloop.__version__
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
        return label
    raise SystemExit("unknown reactor %r" % (name,))


def quiet_logging():
    """Send warnings and errors to stderr; drop the per-connection chatter."""
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


def source_factory(reactor):
    """A factory of protocols that write 16 KiB chunks for as long as the peer reads."""
    from twisted.internet import protocol
    from zope.interface import implementer
    from twisted.internet.interfaces import IPushProducer

    chunk = b"x" * CHUNK

    @implementer(IPushProducer)
    class Source(protocol.Protocol):
        """
        Writes while not paused. A transport that pauses its producer at its high-water mark
        (as Twisted's do, synchronously inside write()) stops the loop after a few chunks;
        one that never does is still bounded to 64 chunks per reactor iteration.
        """

        paused = True
        done = False

        def connectionMade(self):
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def connectionLost(self, reason):
            self.done = True

        def pauseProducing(self):
            self.paused = True

        def stopProducing(self):
            self.done = True

        def resumeProducing(self):
            self.paused = False
            for _ in range(64):
                if self.paused or self.done:
                    return
                self.transport.write(chunk)
            reactor.callLater(0, self._more)

        def _more(self):
            if not (self.paused or self.done):
                self.resumeProducing()

    return protocol.Factory.forProtocol(Source)


def count_calls_on_signals(path):
    """
    For bench_counts.py: SIGUSR1 starts counting the Python function calls and C
    calls the server makes (C{sys.setprofile}), SIGUSR2 stops and writes the counts,
    per function, to C{path} as JSON.
    """
    import collections
    import signal

    calls = collections.Counter()

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            calls["py " + os.path.basename(code.co_filename) + ":" + code.co_name] += 1
        elif event == "c_call":
            calls["C " + getattr(arg, "__qualname__", repr(arg))] += 1

    def start(signum, frame):
        calls.clear()
        sys.setprofile(profile)

    def stop(signum, frame):
        sys.setprofile(None)
        with open(path + ".tmp", "w") as f:
            json.dump(dict(calls), f)
        os.rename(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def profile_on_signals(path):
    """
    For bench_counts.py: SIGUSR1 starts a cProfile of the server, SIGUSR2 stops it and
    writes its statistics (pstats format) to C{path}.
    """
    import cProfile
    import signal

    state = {}

    def start(signum, frame):
        state["p"] = cProfile.Profile()
        state["p"].enable()

    def stop(signum, frame):
        prof = state.pop("p", None)
        if prof is None:
            return
        prof.disable()
        prof.dump_stats(path + ".tmp")
        os.rename(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reactor")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--http-body", type=int, default=64)
    parser.add_argument("--count-calls", metavar="JSON",
                        help="count Python calls between SIGUSR1 and SIGUSR2, into JSON")
    parser.add_argument("--profile", metavar="PSTATS",
                        help="cProfile the server between SIGUSR1 and SIGUSR2, into PSTATS")
    args = parser.parse_args()
    if args.count_calls:
        count_calls_on_signals(args.count_calls)
    if args.profile:
        profile_on_signals(args.profile)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    label = install(args.reactor)
    quiet_logging()
    from twisted.internet import protocol, reactor
    from twisted.protocols import wire
    from twisted.web import resource as web_resource, server, static

    def listen(factory):
        return reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")

    ports = {
        "echo": listen(protocol.Factory.forProtocol(wire.Echo)),
        "discard": listen(protocol.Factory.forProtocol(wire.Discard)),
        "source": listen(source_factory(reactor)),
    }
    root = web_resource.Resource()
    root.putChild(b"hello", static.Data(b"x" * args.http_body, "text/plain"))
    ports["http"] = listen(server.Site(root))
    if args.tls_cert:
        from twisted.internet import ssl

        context = ssl.DefaultOpenSSLContextFactory(args.tls_key, args.tls_cert)
        ports["tls"] = reactor.listenSSL(
            0, protocol.Factory.forProtocol(wire.Echo), context, backlog=4096,
            interface="127.0.0.1")
    info = {name: port.getHost().port for name, port in ports.items()}
    info["pid"] = os.getpid()
    cls = type(reactor)
    info["reactor"] = cls.__module__ + "." + cls.__qualname__
    info["runs_on"] = label
    print(json.dumps(info), flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
