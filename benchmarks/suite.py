"""
The benchmark suite: every workload against UringReactor, EPollReactor, PollReactor,
AsyncioSelectorReactor (on uvloop where installed) and a small C epoll server (the box's
ceiling), with compiled C load generators in their own processes.

    python benchmarks/suite.py [--quick] [--workloads echo-1,echo-50,...]
                               [--reactors uring,epoll,poll,asyncio,c] [--pin]

Whatever C{txuring.reactor.UringReactor} is installed is what gets measured: the servers are
Twisted's stock protocols on whatever transports the reactor's listenTCP/listenSSL give.

How a run goes, and why:
  - One server process per (server, repeat), each serving every workload on its own port
    (suite_server.py; c_server.c for the ceiling). All servers of a repeat are up together
    and idle but for the one being measured, so within each workload the servers alternate
    A B C D E A B C D E ... over the repeats: slow drifts of a shared machine spread over
    all of them instead of landing on one.
  - Each measurement is one load-generator process (loadgen.c): its own connections, a
    warm-up that is not counted, then a fixed measured window. The load generator reads the
    server's utime+stime from /proc/PID/stat and its own CPU time at both edges of the
    window, so "server CPU per request" covers exactly the window. That figure is steadier
    than throughput on a shared box: it does not move when another process steals the core.
  - Medians over repeats; min and max of the rate shown beside them.
  - The client is not the bottleneck if its CPU share stays well below one core and the C
    server reaches a higher rate with the same client: both are printed.
  - Memory per idle connection: the server's RSS growth while the load generator opens N
    more idle connections (each did one echo exchange), divided by N, at the margin: after
    20,000 echo requests (fixed-size pools filled by serving, like UringReactor's receive
    buffer ring, are resident by then and not counted per connection), a first round of
    100 idle connections, and a first block of N held meanwhile (the first connections
    reuse memory the process freed since it started). The RSS before that block ("RSS at
    rest") and the first block's growth per connection are shown beside it.

Writes JSON (--json) and a PNG plot (--plot; needs matplotlib, skipped with a message if it
is missing). Standard library only otherwise.
"""

import argparse
import copy
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _stats import fmt_ratio, ratio, summarize, table  # noqa: E402

#: Every server the suite knows, in the order they alternate. "c" is the C ceiling.
SERVERS = ["uring", "epoll", "poll", "asyncio", "c"]
BASELINE = "epoll"
CEILING = "c"
HTTP_BODY = 64
IDLE_WARMUP_CONNS = 100
#: echo requests served before the memory baseline (see measure_memory), within
#: at most this many seconds
MEMORY_WARM_REQUESTS = 20000
MEMORY_WARM_SECONDS = 10.0


class Workload:
    """
    One workload: which load-generator mode runs against which service.

    @ivar name: the name used by --workloads and in the JSON
    @ivar mode: the loadgen.c mode
    @ivar service: the server's port to use (a key of the server's JSON line)
    @ivar conns: connections (for "connect": how many connections are in flight at once)
    @ivar size: bytes per request (echo, connect) or per write (bulk)
    @ivar unit: what one counted unit is, for the rate ("req", "MB", "conn")
    @ivar per_byte: the load generator counts bytes; rates are shown per MB
    @ivar ceiling: the C server has this service
    @ivar latency: the load generator measures latency for it
    """

    def __init__(self, name, mode, service, conns, size, unit, description,
                 per_byte=False, ceiling=True, latency=True):
        self.name = name
        self.mode = mode
        self.service = service
        self.conns = conns
        self.size = size
        self.unit = unit
        self.description = description
        self.per_byte = per_byte
        self.ceiling = ceiling
        self.latency = latency


WORKLOADS = [
    Workload("memory", "idle", "echo", 2000, 64, "KiB/conn",
             "RSS growth of the server per idle connection",
             latency=False),
    Workload("echo-1", "echo", "echo", 1, 64, "req", "64-byte echo, 1 connection"),
    Workload("echo-50", "echo", "echo", 50, 64, "req", "64-byte echo, 50 connections"),
    Workload("echo-1000", "echo", "echo", 1000, 64, "req",
             "64-byte echo, 1,000 connections"),
    Workload("bulk-send", "source", "source", 1, 16384, "MB",
             "bulk out of the server, 16 KiB transport.write()s, 1 connection",
             per_byte=True, latency=False),
    Workload("bulk-recv", "sink", "discard", 1, 16384, "MB",
             "bulk into the server (client writes 16 KiB), 1 connection",
             per_byte=True, latency=False),
    Workload("connect", "connrate", "echo", 8, 64, "conn",
             "connection rate: connect, one 64-byte echo, close (8 at a time)"),
    Workload("http", "http", "http", 50, 0, "req",
             "twisted.web Site, static.Data of %d bytes, 50 keep-alive connections"
             % HTTP_BODY),
    Workload("tls-echo", "tlsecho", "tls", 50, 64, "req",
             "64-byte echo over TLS (listenSSL), 50 connections", ceiling=False),
]
BY_NAME = {w.name: w for w in WORKLOADS}


# -- building the C programs ----------------------------------------------------------

def compiler():
    """The C compiler command, or None when there is none."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    return cc if shutil.which(cc[0]) else None


def build(cc, source, exe, extra=()):
    """Compile benchmarks/SOURCE into EXE; return None, or the compiler's complaint."""
    cmd = cc + ["-O2", "-o", exe, os.path.join(HERE, source)] + list(extra)
    done = subprocess.run(cmd, capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or "cc failed")


def make_certificate(workdir):
    """
    A self-signed certificate and key for 127.0.0.1, made with C{cryptography}; Twisted's
    test certificate when cryptography is missing. Returns (cert, key) paths or None.
    """
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        try:
            import twisted.test

            pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
            return (pem, pem) if os.path.exists(pem) else None
        except ImportError:
            return None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(workdir, "cert.pem")
    key_path = os.path.join(workdir, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return cert_path, key_path


# -- server processes -----------------------------------------------------------------

#: How much to raise the benchmark processes' priority (--nice); 0 leaves it alone.
PRIORITY_BOOST = 0


def affinity(cpu):
    """
    A preexec_fn pinning the child to C{cpu} (None: no pinning) and raising its priority by
    L{PRIORITY_BOOST}; None when there is nothing to do.
    """
    boost = PRIORITY_BOOST
    if cpu is None and not boost:
        return None

    def setup():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if boost:
            os.setpriority(os.PRIO_PROCESS, 0, -boost)

    return setup


class Server:
    """
    One server process: a Twisted reactor running suite_server.py, or the C server.

    @ivar name: the server's name in L{SERVERS}
    @ivar info: what the process printed: its ports, pid, reactor class
    """

    def __init__(self, name, exes, cert, cpu):
        self.name = name
        if name == CEILING:
            cmd = [exes["c_server"], str(HTTP_BODY)]
        else:
            cmd = [sys.executable, os.path.join(HERE, "suite_server.py"), name,
                   "--http-body", str(HTTP_BODY)]
            if cert:
                cmd += ["--tls-cert", cert[0], "--tls-key", cert[1]]
        # (this checkout's txuring, whatever the interpreter's install points at)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                        preexec_fn=affinity(cpu), env=env,
                                        cwd=os.path.dirname(HERE))
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            self.process.wait(10)
            raise RuntimeError("server %s exited with %s before listening"
                               % (name, self.process.returncode))
        self.info = json.loads(line)
        self.info.setdefault("pid", self.process.pid)
        if name == CEILING:
            self.info["reactor"] = "C epoll loop (c_server.c)"

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.poll() is None

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS for %d" % self.pid)

    def stop(self):
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process.stdout.close()


# -- measurements ---------------------------------------------------------------------

def run_load(exe, workload, server, warmup, seconds, cpu):
    """Run the load generator once against C{server}; return its JSON figures."""
    port = server.info[workload.service]
    cmd = [exe, workload.mode, str(port), str(workload.conns), str(workload.size),
           str(warmup), str(seconds), str(server.pid)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + seconds + 120,
                          preexec_fn=affinity(cpu))
    if done.returncode != 0:
        raise RuntimeError("loadgen %s: %s" % (workload.mode, done.stderr.strip()[-500:]))
    raw = json.loads(done.stdout)
    if abs(raw["seconds"] - seconds) > max(0.05, 0.2 * seconds):
        raise RuntimeError("loadgen %s: the measured window lasted %.3f s, not %.3f s"
                           % (workload.mode, raw["seconds"], seconds))
    units = raw["units"] / 1e6 if workload.per_byte else raw["units"]
    sample = {
        "units": raw["units"],
        "seconds": raw["seconds"],
        "rate": units / raw["seconds"],
        "server_cpu_s": raw["server_cpu_s"],
        "client_cpu_s": raw["client_cpu_s"],
        "server_cpu_share": raw["server_cpu_s"] / raw["seconds"],
        "client_cpu_share": raw["client_cpu_s"] / raw["seconds"],
        # CPU the rest of the machine used meanwhile (other processes, this harness),
        # in CPUs: how noisy the window was.
        "others_cpu_share": (max(0.0, raw["busy_cpu_s"] - raw["server_cpu_s"]
                                 - raw["client_cpu_s"]) / raw["seconds"]
                             if raw.get("busy_cpu_s", -1) >= 0 else None),
        "cpu_us_per_unit": (raw["server_cpu_s"] * 1e6 / units
                            if units and raw["server_cpu_s"] >= 0 else None),
        "errors": raw["errors"],
    }
    if workload.latency:
        sample["p50_us"] = raw["p50_us"]
        sample["p99_us"] = raw["p99_us"]
    return sample


def idle_clients(exe, server, conns, cpu):
    """Start a load generator holding C{conns} idle connections; return it once ready."""
    port = server.info["echo"]
    proc = subprocess.Popen([exe, "idle", str(port), str(conns), "64", "0", "0",
                             str(server.pid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, preexec_fn=affinity(cpu))
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise RuntimeError("idle load generator failed (%s)" % proc.returncode)
    return proc


def release(proc):
    proc.stdin.close()
    proc.wait(30)
    proc.stdout.close()


def serve_a_while(exe, server, cpu, requests=MEMORY_WARM_REQUESTS,
                  deadline=MEMORY_WARM_SECONDS):
    """
    Put C{requests} 64-byte echoes through C{server} (50 connections; at most
    C{deadline} seconds): the state of a server that has served traffic. Returns how
    many it served.
    """
    load = Workload("warm", "echo", "echo", 50, 64, "req", "warm-up", latency=False)
    served, start = 0, time.monotonic()
    while served < requests and time.monotonic() - start < deadline:
        served += run_load(exe, load, server, 0, 0.25, cpu)["units"]
    return served


def measure_memory(exe, workload, server, cpu):
    """
    The server's RSS growth per idle connection, at the margin: what N more idle
    connections add to a server that has served traffic and already holds N.

    First some echo traffic (L{serve_a_while}), so that every fixed-size pool the
    server fills as it serves is resident before the baseline: UringReactor's shared
    receive buffer ring (2048 buffers of 2 KiB by default) becomes resident as the
    kernel first writes into each buffer, whatever the number of connections; counted
    as a slope, N < 2048 idle connections' one exchange each made N buffers resident,
    2 KiB per connection of what is a fixed 4 MiB. Then a first round of idle
    connections (lazy imports, free lists), and a first block of N idle connections
    that is held but not counted: the first connections a process takes reuse memory
    it freed since it started (the garbage of its imports, once collected), so the
    first block's growth says less than its connections take (about 1.0 KiB against
    1.6-1.9 for EPollReactor here). The baseline ("RSS at rest") is taken before that
    block; the figure is the growth from the second block of N.
    """
    warmed = serve_a_while(exe, server, cpu)
    release(idle_clients(exe, server, IDLE_WARMUP_CONNS, cpu))
    time.sleep(0.1)
    rest = server.rss_kib()
    first = idle_clients(exe, server, workload.conns, cpu)
    try:
        time.sleep(0.1)
        before = server.rss_kib()
        proc = idle_clients(exe, server, workload.conns, cpu)
        try:
            time.sleep(0.1)
            after = server.rss_kib()
        finally:
            release(proc)
    finally:
        release(first)
    return {"rss_rest_kib": rest, "rss_before_kib": before, "rss_after_kib": after,
            "warm_requests": warmed, "first_block_kib_per_conn": (before - rest) / workload.conns,
            "rate": (after - before) / workload.conns, "errors": 0}


# -- summaries ------------------------------------------------------------------------

def median_of(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None and s[key] >= 0]
    return summarize(values)["median"] if values else None


def summarize_workload(workload, per_server):
    """Medians, min/max and ratios for one workload; C{per_server} maps name -> samples."""
    out = {}
    for name, samples in per_server.items():
        if not samples:
            continue
        rates = [s["rate"] for s in samples]
        row = {"n": len(samples), "rate": summarize(rates)}
        for key in ("cpu_us_per_unit", "server_cpu_share", "client_cpu_share",
                    "others_cpu_share",
                    "p50_us", "p99_us", "rss_rest_kib", "first_block_kib_per_conn"):
            row[key] = median_of(samples, key)
        out[name] = row
    base, ceil = out.get(BASELINE), out.get(CEILING)
    for name, row in out.items():
        rate = row["rate"]["median"]
        row["rate_vs_epoll"] = ratio(rate, base and base["rate"]["median"])
        row["cpu_vs_epoll"] = ratio(row["cpu_us_per_unit"], base and base["cpu_us_per_unit"])
        row["of_ceiling"] = ratio(rate, ceil and ceil["rate"]["median"])
    return out


def fmt(x, spec="{:,.0f}"):
    return "-" if x is None else spec.format(x)


def report(workload, summary, labels):
    """The text table of one workload."""
    if workload.mode == "idle":
        headers = ["server", "KiB/conn", "min", "max", "vs epoll", "RSS at rest MiB",
                   "first N KiB/conn"]
        rows = [[labels[n], fmt(r["rate"]["median"], "{:.2f}"), fmt(r["rate"]["min"], "{:.2f}"),
                 fmt(r["rate"]["max"], "{:.2f}"), fmt_ratio(r["rate_vs_epoll"]),
                 fmt(r["rss_rest_kib"] and r["rss_rest_kib"] / 1024, "{:.1f}"),
                 fmt(r["first_block_kib_per_conn"], "{:.2f}")]
                for n, r in summary.items()]
        return table(headers, rows)
    unit = workload.unit + "/s"
    headers = ["server", unit, "min", "max", "vs epoll", "of C", "us/" + workload.unit,
               "cpu vs epoll"]
    if workload.latency:
        headers += ["p50 us", "p99 us"]
    headers += ["srv cpu", "client cpu", "others"]
    spec = "{:,.1f}" if workload.per_byte else "{:,.0f}"
    rows = []
    for n, r in summary.items():
        row = [labels[n], fmt(r["rate"]["median"], spec), fmt(r["rate"]["min"], spec),
               fmt(r["rate"]["max"], spec), fmt_ratio(r["rate_vs_epoll"]),
               fmt(r["of_ceiling"], "{:.2f}"), fmt(r["cpu_us_per_unit"], "{:.1f}"),
               fmt_ratio(r["cpu_vs_epoll"])]
        if workload.latency:
            row += [fmt(r["p50_us"]), fmt(r["p99_us"])]
        row += [fmt(r["server_cpu_share"], "{:.0%}"), fmt(r["client_cpu_share"], "{:.0%}"),
                fmt(r["others_cpu_share"], "{:.0%}")]
        rows.append(row)
    return table(headers, rows)


def client_check(workload, summary):
    """A line saying whether the load generator could have been the bottleneck."""
    twisted_share = max((r["client_cpu_share"] or 0) for n, r in summary.items()
                        if n != CEILING)
    text = ("client check: the load generator used at most %.0f%% of a CPU against the "
            "Twisted servers" % (twisted_share * 100))
    c = summary.get(CEILING)
    if c:
        spec = "{:,.1f}" if workload.per_byte else "{:,.0f}"
        text += ("; with the same client the C server reached %s %s/s (%.0f%% client CPU)"
                 % (fmt(c["rate"]["median"], spec), workload.unit,
                    (c["client_cpu_share"] or 0) * 100))
    return text


def overview(results, servers):
    """One line per workload: each server's rate and CPU per unit as ratios to epoll."""
    others = [s for s in servers if s != BASELINE]
    headers = ["workload"] + ["%s rate" % s for s in others] + ["%s cpu" % s for s in others
                                                                  if s != CEILING]
    rows = []
    for name, entry in results["workloads"].items():
        summary = entry.get("summary")
        if not summary or entry["mode"] == "idle":
            continue
        row = [name]
        row += [fmt_ratio(summary.get(s, {}).get("rate_vs_epoll")) for s in others]
        row += [fmt_ratio(summary.get(s, {}).get("cpu_vs_epoll")) for s in others
                if s != CEILING]
        rows.append(row)
    return table(headers, rows)


def plot(results, servers, path):
    """Three panels: rate vs epoll, server CPU per unit vs epoll, memory per connection."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return None
    names = [n for n, e in results["workloads"].items() if e.get("summary") and n != "memory"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5),
                             gridspec_kw={"width_ratios": [4, 4, 1.3]})
    width = 0.8 / max(1, len(servers))
    for panel, key, title in ((0, "rate_vs_epoll", "throughput / EPollReactor's (log; higher is better)"),
                              (1, "cpu_vs_epoll",
                               "server CPU per unit / EPollReactor's (log; lower is better)")):
        ax = axes[panel]
        for i, server in enumerate(servers):
            values = [results["workloads"][n]["summary"].get(server, {}).get(key)
                      or float("nan") for n in names]
            ax.bar([x + i * width for x in range(len(names))], values, width,
                   label=results["labels"][server])
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(names))])
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    mem = results["workloads"].get("memory", {}).get("summary")
    ax = axes[2]
    if mem:
        order = [s for s in servers if s in mem]
        ax.bar(range(len(order)), [mem[s]["rate"]["median"] for s in order],
               color=["C%d" % servers.index(s) for s in order])
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=30, ha="right")
    ax.set_title("KiB per idle connection", fontsize=10)
    fig.suptitle("txuring benchmark suite: %s" % results["meta"]["command"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the run --------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats of 0.3 s windows (about a minute and a half)")
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated, from: %s" % ",".join(BY_NAME))
    parser.add_argument("--reactors", default=",".join(SERVERS),
                        help="comma-separated servers, from: %s (c is the C ceiling); "
                        "also uring:OPTION=VALUE[:...], UringReactor with those options"
                        % ",".join(SERVERS))
    parser.add_argument("--repeat", type=int, help="repeats per server (default 5, quick 3)")
    parser.add_argument("--seconds", type=float,
                        help="measured window per run (default 1.5, quick 0.3)")
    parser.add_argument("--warmup", type=float,
                        help="uncounted load before the window (default 0.5, quick 0.15)")
    parser.add_argument("--pin", action="store_true",
                        help="pin servers to CPU 0 and load generators to CPU 1")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run servers and load generators at nice -N, ahead of other "
                        "processes of a shared machine (needs root or CAP_SYS_NICE)")
    parser.add_argument("--idle-conns", type=int, default=2000,
                        help="connections for the memory workload")
    parser.add_argument("--json", default="suite-results.json", help="where the JSON goes")
    parser.add_argument("--plot", default="suite-results.png", help="where the PNG goes")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--replot", metavar="JSON",
                        help="only draw --plot again from the JSON of an earlier run")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (3 if args.quick else 5)
    args.seconds = args.seconds or (0.3 if args.quick else 1.5)
    args.warmup = args.warmup if args.warmup is not None else (0.15 if args.quick else 0.5)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.reactors = [r.strip() for r in args.reactors.split(",") if r.strip()]
    for w in args.workloads:
        if w not in BY_NAME:
            parser.error("unknown workload %r (known: %s)" % (w, ", ".join(BY_NAME)))
    for r in args.reactors:
        if r not in SERVERS and not is_variant(r):
            parser.error("unknown server %r (known: %s, or uring:OPTION=VALUE:...)"
                         % (r, ", ".join(SERVERS)))
    return args


def is_variant(name):
    """
    Whether C{name} is a UringReactor variant, C{uring:OPTION=VALUE[:OPTION=VALUE...]}:
    UringReactor built with those keyword options (Python literals), e.g.
    C{uring:directSendThreshold=0} or C{uring:completionTCP=False}. Variants run after
    the plain servers, in the order given.
    """
    return name.startswith("uring:") and all(
        "=" in part for part in name.split(":")[1:])


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def server_label(name, info):
    if name == CEILING:
        return "c-epoll"
    if name == "asyncio" and info.get("runs_on"):
        return "asyncio/" + info["runs_on"].split()[0]
    return name


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.replot:
        with open(args.replot) as f:
            earlier = json.load(f)
        done = plot(earlier, [s for s in SERVERS if s in earlier["labels"]]
                    + [s for s in earlier["labels"] if is_variant(s)], args.plot)
        if done:
            print("plot: " + done)
        return earlier
    global PRIORITY_BOOST
    PRIORITY_BOOST = args.nice
    if args.nice:
        probe = subprocess.run([sys.executable, "-c", "import os; os.setpriority("
                                "os.PRIO_PROCESS, 0, -%d)" % args.nice],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            raise SystemExit("--nice %d: not allowed here (needs root or CAP_SYS_NICE)"
                             % args.nice)
    cc = compiler()
    if cc is None:
        raise SystemExit("no C compiler found (set CC): the load generators are C programs")
    workloads = [copy.copy(BY_NAME[n]) for n in args.workloads]
    for w in workloads:
        if w.mode == "idle":
            w.conns = args.idle_conns
            w.description += " (%d connections)" % w.conns
    servers = [s for s in SERVERS if s in args.reactors]
    servers += [s for s in args.reactors if is_variant(s) and s not in servers]
    server_cpu = client_cpu = None
    if args.pin:
        if os.cpu_count() < 2:
            raise SystemExit("--pin needs two CPUs")
        server_cpu, client_cpu = 0, 1
    results = {
        "meta": {
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "python": sys.version.split()[0],
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "repeat": args.repeat, "seconds": args.seconds, "warmup": args.warmup,
            "pinned": args.pin, "nice": -args.nice,
            "loadavg_start": loadavg(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "servers": {}, "labels": {}, "workloads": {}, "skipped": {},
    }
    try:
        import twisted

        results["meta"]["twisted"] = twisted.__version__
    except ImportError:
        pass

    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="txuring-bench-") as workdir:
        exes = {"loadgen": os.path.join(workdir, "loadgen"),
                "c_server": os.path.join(workdir, "c_server"),
                "loadgen_tls": os.path.join(workdir, "loadgen_tls")}
        error = build(cc, "loadgen.c", exes["loadgen"])
        if error:
            raise SystemExit("could not build loadgen.c:\n" + error)
        if CEILING in servers:
            error = build(cc, "c_server.c", exes["c_server"])
            if error:
                raise SystemExit("could not build c_server.c:\n" + error)
        cert = None
        if "tls-echo" in args.workloads:
            reason = None
            if not os.path.isdir("/usr/include/openssl"):
                reason = "no OpenSSL headers (/usr/include/openssl) for the TLS load generator"
            else:
                error = build(cc, "loadgen.c", exes["loadgen_tls"],
                              ["-DWITH_OPENSSL", "-lssl", "-lcrypto"])
                if error:
                    reason = "the TLS load generator did not build: " + error.splitlines()[0]
            if reason is None:
                try:
                    from OpenSSL import SSL  # noqa: F401  (what listenSSL needs)
                except ImportError:
                    reason = "pyOpenSSL is not installed (twisted[tls])"
            if reason is None:
                cert = make_certificate(workdir)
                if cert is None:
                    reason = "no certificate: neither cryptography nor Twisted's test one"
            if reason:
                print("SKIPPED tls-echo: " + reason)
                results["skipped"]["tls-echo"] = reason
                workloads = [w for w in workloads if w.name != "tls-echo"]

        samples = {w.name: {s: [] for s in servers if s != CEILING or w.ceiling}
                   for w in workloads}
        failures = []
        for rep in range(args.repeat):
            print("repeat %d/%d (%.0f s so far)" % (rep + 1, args.repeat,
                                                    time.time() - t_start), flush=True)
            running = {}
            try:
                for s in servers:
                    running[s] = Server(s, exes, cert, server_cpu)
                    results["servers"][s] = running[s].info
                    results["labels"][s] = server_label(s, running[s].info)
                for w in workloads:
                    for s in samples[w.name]:
                        server = running[s]
                        exe = exes["loadgen_tls"] if w.mode == "tlsecho" else exes["loadgen"]
                        try:
                            if w.mode == "idle":
                                sample = measure_memory(exe, w, server, client_cpu)
                            else:
                                sample = run_load(exe, w, server, args.warmup, args.seconds,
                                                  client_cpu)
                        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                            failures.append({"workload": w.name, "server": s, "repeat": rep,
                                             "error": str(e)})
                            print("  FAILED %s on %s: %s" % (w.name, s, e), flush=True)
                            if not server.alive():
                                server.stop()
                                running[s] = Server(s, exes, cert, server_cpu)
                            continue
                        sample["repeat"] = rep
                        samples[w.name][s].append(sample)
            finally:
                for server in running.values():
                    server.stop()

    labels = results["labels"]
    results["meta"]["loadavg_end"] = loadavg()
    results["meta"]["elapsed_s"] = round(time.time() - t_start, 1)
    results["failures"] = failures
    print()
    print("python %s, Twisted %s, kernel %s, %d CPUs; %d repeats, %.2f s windows after "
          "%.2f s warm-up; servers %s, nice %d; load average %s at start, %s at end"
          % (results["meta"]["python"], results["meta"].get("twisted", "?"),
             results["meta"]["kernel"], results["meta"]["cpus"], args.repeat, args.seconds,
             args.warmup, "pinned to CPU 0, clients to CPU 1" if args.pin else "unpinned",
             -args.nice,
             results["meta"]["loadavg_start"], results["meta"]["loadavg_end"]))
    others = [x["others_cpu_share"] for per in samples.values() for ss in per.values()
              for x in ss if x.get("others_cpu_share") is not None]
    if others:
        results["meta"]["others_cpu_share_median"] = summarize(others)["median"]
        print("the rest of the machine used a median %.0f%% of a CPU during the measured "
              "windows (column 'others'; more than ~10%% means the box was shared)"
              % (results["meta"]["others_cpu_share_median"] * 100))
    print("command: " + results["meta"]["command"])
    for s in servers:
        print("  %-14s %s" % (labels.get(s, s), results["servers"].get(s, {}).get("reactor")))
    for w in workloads:
        summary = summarize_workload(w, samples[w.name])
        results["workloads"][w.name] = {
            "description": w.description, "unit": w.unit, "mode": w.mode,
            "connections": w.conns, "size": w.size,
            "samples": samples[w.name], "summary": summary,
        }
        print()
        print("%s: %s" % (w.name, w.description))
        if summary:
            print(report(w, summary, labels))
        if w.mode != "idle" and summary:
            print(client_check(w, summary))
    for name, reason in results["skipped"].items():
        print()
        print("%s: SKIPPED (%s)" % (name, reason))
    print()
    print("Ratios to EPollReactor (rate: higher is better; cpu = server CPU per unit: "
          "lower is better)")
    print(overview(results, servers))
    memory = results["workloads"].get("memory", {}).get("summary")
    if memory:
        print("memory per idle connection (KiB, lower is better): "
              + ", ".join("%s %.2f" % (labels.get(s, s), r["rate"]["median"])
                          for s, r in memory.items()))
    if failures:
        print()
        print("%d measurement(s) failed: see 'failures' in the JSON" % len(failures))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print()
    print("JSON: " + args.json)
    if not args.no_plot:
        path = plot(results, servers, args.plot)
        if path:
            print("plot: " + path)
    print("elapsed: %.0f s" % results["meta"]["elapsed_s"])
    return results


if __name__ == "__main__":
    main()
