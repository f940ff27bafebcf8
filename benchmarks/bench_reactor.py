"""
Reactor loop costs: UringReactor against EPollReactor, in one run.

    python benchmarks/bench_reactor.py [--quick] [--repeat N]

Workloads (each repeated, a fresh reactor every time; medians reported):
  - idle loop: loop iterations per second when every iteration runs one
    callLater(0) that schedules the next (the fixed cost of one iteration: timed-call
    bookkeeping plus one zero-timeout wait in the kernel);
  - timers due at once: N timed calls due within 10 ms; timers fired per second
    (CPU-bound: the cost of running timed calls);
  - timer lateness: 1,000 timed calls spread over 0.5 s, sparse enough that the loop
    sleeps between them; the median of how late each fires after its due time;
  - callFromThread throughput: another thread posts N calls as fast as it can;
  - callFromThread latency: ping-pong between a thread and the reactor, one call at
    a time; median microseconds from post to run (the wakeup path: eventfd write ->
    the loop's wait returns).
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _stats import fmt_ratio, fmt_rate, ratio, summarize, table  # noqa: E402

from twisted.internet.epollreactor import EPollReactor  # noqa: E402

from txuring.reactor import UringReactor  # noqa: E402

REACTORS = [("uring", UringReactor), ("epoll", EPollReactor)]


def run_reactor(factory, start, timeout=60):
    """Build a reactor, call start(reactor, done) when it runs, return what done got."""
    reactor = factory()
    out = {}

    def done(value):
        out["value"] = value
        reactor.stop()

    reactor.callWhenRunning(start, reactor, done)
    guard = reactor.callLater(timeout, lambda: (out.setdefault("value", None),
                                                reactor.stop()))
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    ring = getattr(reactor, "ring", None)
    waker = reactor.waker
    reactor.removeAll()
    if waker is not None:
        reactor.removeReader(waker)
        waker.connectionLost(None)
    if ring is not None:
        ring.fill_completions()
    if out.get("value") is None:
        raise RuntimeError("workload timed out")
    return out["value"]


def idle_loop(iterations):
    def start(reactor, done):
        remaining = [iterations]
        t0 = time.perf_counter()

        def tick():
            remaining[0] -= 1
            if remaining[0]:
                reactor.callLater(0, tick)
            else:
                done(iterations / (time.perf_counter() - t0))

        reactor.callLater(0, tick)

    return start


def timer_throughput(count, spread=0.01):
    """C{count} timers all due within C{spread} s: timers fired per second (CPU-bound)."""

    def start(reactor, done):
        import random

        rng = random.Random(1)
        remaining = [count]
        t0 = time.perf_counter()

        def fire():
            remaining[0] -= 1
            if not remaining[0]:
                done(count / (time.perf_counter() - t0))

        for _ in range(count):
            reactor.callLater(rng.random() * spread, fire)

    return start


def timer_lateness(count, spread=0.5):
    """
    C{count} timers spread over C{spread} s, few enough that the loop is idle between
    them: the median of how late each fires after its due time.
    """

    def start(reactor, done):
        import random

        rng = random.Random(1)
        lateness = []

        def fire(due):
            lateness.append(time.perf_counter() - due)
            if len(lateness) == count:
                done(sorted(lateness)[count // 2])

        for _ in range(count):
            delay = rng.random() * spread
            reactor.callLater(delay, fire, time.perf_counter() + delay)

    return start


def call_from_thread_throughput(count):
    def start(reactor, done):
        seen = [0]
        t0 = []

        def hit():
            seen[0] += 1
            if seen[0] == count:
                done(count / (time.perf_counter() - t0[0]))

        def producer():
            t0.append(time.perf_counter())
            for _ in range(count):
                reactor.callFromThread(hit)

        threading.Thread(target=producer, daemon=True).start()

    return start


def call_from_thread_latency(rounds):
    def start(reactor, done):
        samples = []
        ran = threading.Event()

        def hit(posted):
            samples.append(time.perf_counter() - posted)
            ran.set()

        def pinger():
            for _ in range(rounds):
                ran.clear()
                time.sleep(0.0005)  # let the loop go back to waiting in the kernel
                reactor.callFromThread(hit, time.perf_counter())
                ran.wait(5)
            reactor.callFromThread(done, sorted(samples)[len(samples) // 2])

        threading.Thread(target=pinger, daemon=True).start()

    return start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 3 repeats")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    repeat = args.repeat or (3 if args.quick else 7)

    workloads = [
        ("idle loop (iterations/s)", idle_loop(int(100000 * scale)), "rate"),
        ("timers due at once (fired/s)", timer_throughput(int(50000 * scale)), "rate"),
        ("timer lateness (us)", timer_lateness(int(1000 * scale)), "latency"),
        ("callFromThread (calls/s)", call_from_thread_throughput(int(100000 * scale)), "rate"),
        ("callFromThread latency (us)", call_from_thread_latency(int(2000 * scale)),
         "latency"),
    ]
    print("python %s, kernel %s, %d repeats, medians"
          % (sys.version.split()[0], os.uname().release, repeat))
    print("command: %s %s" % (os.path.basename(sys.executable), " ".join(sys.argv)))
    print()
    rows = []
    for name, workload, kind in workloads:
        # Repeats alternate between the reactors, so that drift in the machine's load
        # falls on both sides alike.
        results = {label: [] for label, _ in REACTORS}
        for _ in range(repeat):
            for label, factory in REACTORS:
                results[label].append(run_reactor(factory, workload))
        if kind == "latency":
            med = {k: summarize(vs)["median"] * 1e6 for k, vs in results.items()}
            rows.append([name + ", lower is better", "%.1f" % med["uring"],
                         "%.1f" % med["epoll"], fmt_ratio(ratio(med["uring"], med["epoll"]))])
        else:
            med = {k: summarize(vs)["median"] for k, vs in results.items()}
            rows.append([name, fmt_rate(med["uring"]), fmt_rate(med["epoll"]),
                         fmt_ratio(ratio(med["uring"], med["epoll"]))])
        sys.stdout.write(".")
        sys.stdout.flush()
    print()
    print(table(["workload", "UringReactor", "EPollReactor", "uring/epoll"], rows))


if __name__ == "__main__":
    main()
