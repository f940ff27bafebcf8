"""
A soak: a twistd web service (benchmarks/soak.tac: txuring.web's static files plus a
dynamic page) under HTTP load for a set time, sampled every few seconds, with a verdict.

    .venv/bin/pip install -e '.[bench]' --config-settings editable_mode=compat  # matplotlib
    .venv/bin/python benchmarks/soak.py --minutes 10                  # uring, then epoll
    .venv/bin/python benchmarks/soak.py --reactors uring --minutes 1  # a short one

For each reactor in turn (never at once: on a small machine they would measure each
other), it starts C{twistd -n --reactor=REACTOR -y benchmarks/soak.tac} and the load
generator (benchmarks/soakload.c, compiled here with the system C compiler: keep-alive
connections cycling through small, medium and large static files and the dynamic page,
every response checked against its Content-Length and status). Every C{--interval}
seconds it records the server's RSS and open fds (from /proc), its CPU use, the
requests per second and the errors of that interval.

Writes, under C{--out} (default benchmarks/results/): C{soak-REACTOR.csv} per reactor,
C{soak.png} (RSS, fds, CPU and requests/s over time, the reactors overlaid) and
C{soak.json} (the summary). Ends with one verdict line per reactor: errors, the RSS
slope (least squares over the samples after the first 20%, the warm-up) and the fd
slope; PASS when there were no errors, no traceback in the server's log, a clean exit,
and, comparing the last fifth of the samples after the warm-up with the first fifth,
the mean fd count grew by at most 5 (a static file is open while it is sent, so the
count moves with the requests in flight) and the mean RSS by less than 5%.
"""

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def make_site(directory):
    """The static files served: an index page, and files of 1 KiB, 64 KiB and 1 MiB."""
    with open(os.path.join(directory, "index.html"), "w") as f:
        f.write("<html><body><h1>txuring soak</h1></body></html>\n")
    for name, size in (("small.txt", 1024), ("medium.bin", 64 * 1024),
                       ("large.bin", 1024 * 1024)):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(os.urandom(size))
    return ["/static/index.html", "/static/small.txt", "/dyn?a=1", "/static/medium.bin",
            "/static/small.txt", "/dyn?b=2", "/static/large.bin", "/static/index.html"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("twistd exited with %s" % (proc.returncode,))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("twistd did not listen on %d in %d s" % (port, timeout))


def proc_sample(pid):
    with open("/proc/%d/statm" % pid) as f:
        rss = int(f.read().split()[1]) * PAGE
    fds = len(os.listdir("/proc/%d/fd" % pid))
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return rss, fds, cpu


def slope(xs, ys):
    n = len(xs)
    if n < 3:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def run_one(reactor, args, loadgen, paths, site_dir):
    port = free_port()
    env = dict(os.environ, SOAK_ROOT=site_dir, SOAK_PORT=str(port))
    twistd = [os.path.join(os.path.dirname(sys.executable), "twistd")]
    if not os.path.exists(twistd[0]):
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    log_path = os.path.join(args.out, "soak-%s.log" % (reactor,))
    log = open(log_path, "w")
    server = subprocess.Popen(
        twistd + ["-n", "--pidfile=", "--reactor=" + reactor, "--logfile=-", "-y",
                  os.path.join(HERE, "soak.tac")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        cwd=site_dir)
    rows = []
    try:
        wait_listening(port, server)
        load = subprocess.Popen(
            [loadgen, str(port), str(args.conns), str(args.minutes * 60),
             str(args.interval)] + paths, stdout=subprocess.PIPE, text=True)
        _, _, cpu0 = proc_sample(server.pid)
        t_prev = time.monotonic()
        for line in load.stdout:
            sample = json.loads(line)
            rss, fds, cpu = proc_sample(server.pid)
            t = time.monotonic()
            rows.append({
                "t_s": round(sample["t"], 1), "rss_mib": round(rss / 2 ** 20, 2),
                "fds": fds, "cpu_pct": round(100 * (cpu - cpu0) / (t - t_prev), 1),
                "ok": sample["ok"], "req_s": round(sample["ok"] / args.interval, 1),
                "errors": sample["errors"], "bad_status": sample["bad_status"],
                "resets": sample["resets"], "timeouts": sample["timeouts"],
                "connect_errors": sample["connect_errors"],
                "mb_s": round(sample["bytes"] / args.interval / 1e6, 2)})
            cpu0, t_prev = cpu, t
            r = rows[-1]
            print("  %-5s t=%6.1fs  %7.1f req/s  rss %6.1f MiB  fds %4d  cpu %5.1f%%  "
                  "errors %d" % (reactor, r["t_s"], r["req_s"], r["rss_mib"], r["fds"],
                                 r["cpu_pct"], r["errors"]), flush=True)
        load.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
    with open(log_path) as f:
        text = f.read()
    served_by = [line.split("static files by ", 1)[1].strip()
                 for line in text.splitlines() if "static files by " in line]
    with open(os.path.join(args.out, "soak-%s.csv" % (reactor,)), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # twistd re-raises the SIGTERM it stopped on after a clean shutdown (exit -15).
    clean = server.returncode in (0, -signal.SIGTERM) and "Server Shut Down." in text
    return rows, {"server_exit": server.returncode, "clean_exit": clean,
                  "static": served_by[:1], "tracebacks": text.count("Traceback"),
                  "log": log_path}


def verdict(reactor, rows, extra):
    warm = rows[len(rows) // 5:] or rows
    ts = [r["t_s"] for r in warm]
    rss_slope = slope(ts, [r["rss_mib"] * 1024 for r in warm]) * 60  # KiB/min
    fd_slope = slope(ts, [r["fds"] for r in warm]) * 60  # fds/min
    requests = sum(r["ok"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    duration = rows[-1]["t_s"] - warm[0]["t_s"]
    rss_trend = rss_slope / 60 * duration / 1024  # MiB over the measured part
    fifth = max(1, len(warm) // 5)
    first, last = warm[:fifth], warm[-fifth:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    rss_growth = mean(last, "rss_mib") - mean(first, "rss_mib")
    fd_growth = mean(last, "fds") - mean(first, "fds")
    ok = (errors == 0 and fd_growth <= 5 and rss_growth < 0.05 * mean(first, "rss_mib")
          and extra["tracebacks"] == 0 and extra["clean_exit"])
    summary = {
        "reactor": reactor, "samples": len(rows), "seconds": rows[-1]["t_s"],
        "requests": requests,
        "median_req_s": sorted(r["req_s"] for r in rows)[len(rows) // 2],
        "errors": errors, "rss_start_mib": warm[0]["rss_mib"],
        "rss_end_mib": rows[-1]["rss_mib"], "rss_slope_kib_per_min": round(rss_slope, 1),
        "fds_start": warm[0]["fds"], "fds_end": rows[-1]["fds"],
        "fd_slope_per_min": round(fd_slope, 3), "rss_growth_mib": round(rss_growth, 2),
        "fd_growth": round(fd_growth, 1),
        "median_cpu_pct": sorted(r["cpu_pct"] for r in rows)[len(rows) // 2],
        "static": extra["static"], "server_tracebacks": extra["tracebacks"],
        "server_exit": extra["server_exit"], "clean_exit": extra["clean_exit"],
        "verdict": "PASS" if ok else "FAIL"}
    line = ("VERDICT %s: %s; %d requests, %d errors; RSS %.1f -> %.1f MiB, slope %+.1f "
            "KiB/min; fds %d -> %d, slope %+.3f/min; median %.0f req/s at %.0f%% CPU" % (
                reactor, summary["verdict"], summary["requests"], errors,
                summary["rss_start_mib"], summary["rss_end_mib"], rss_slope,
                summary["fds_start"], summary["fds_end"], fd_slope,
                summary["median_req_s"], summary["median_cpu_pct"]))
    return summary, line


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is in the 'bench' extra)")
        return None
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    for reactor, rows in results.items():
        t = [r["t_s"] / 60 for r in rows]
        for ax, key, label in zip(axes, ("rss_mib", "fds", "cpu_pct", "req_s"),
                                  ("server RSS (MiB)", "server open fds",
                                   "server CPU (%)", "requests/s")):
            ax.plot(t, [r[key] for r in rows], label=reactor)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        errs = [(r["t_s"] / 60, r["req_s"]) for r in rows if r["errors"]]
        if errs:
            axes[3].scatter(*zip(*errs), color="red", marker="x", label=reactor + " errors")
    for ax in axes:
        ax.set_ylim(bottom=0)
    axes[0].legend()
    axes[3].legend()
    axes[-1].set_xlabel("minutes")
    fig.suptitle("txuring soak: twistd web (static files + dynamic page) under HTTP load")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reactors", default="uring,epoll")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--keep", action="store_true",
                        help="plot and summarise the other reactors' earlier runs in "
                        "--out too (to run the reactors one at a time)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    work = tempfile.mkdtemp(prefix="txuring-soak-")
    try:
        loadgen = os.path.join(work, "soakload")
        subprocess.run([cc, "-O2", "-o", loadgen, os.path.join(HERE, "soakload.c")],
                       check=True)
        site = os.path.join(work, "site")
        os.mkdir(site)
        paths = make_site(site)
        results, summaries, lines = {}, [], []
        for reactor in [r.strip() for r in args.reactors.split(",") if r.strip()]:
            print("soak: %s for %g min, %d connections" % (reactor, args.minutes,
                                                           args.conns), flush=True)
            rows, extra = run_one(reactor, args, loadgen, paths, site)
            results[reactor] = rows
            summary, line = verdict(reactor, rows, extra)
            with open(os.path.join(args.out, "soak-%s.json" % (reactor,)), "w") as f:
                json.dump(summary, f, indent=1)
            summaries.append(summary)
            lines.append(line)
            print(line, flush=True)
        if args.keep:
            # Earlier runs of the other reactors (run one at a time, plotted together).
            for name in sorted(os.listdir(args.out)):
                reactor = name[len("soak-"):-len(".csv")]
                if not (name.startswith("soak-") and name.endswith(".csv")) or \
                        reactor in results:
                    continue
                with open(os.path.join(args.out, name)) as f:
                    results[reactor] = [{k: float(v) for k, v in row.items()}
                                        for row in csv.DictReader(f)]
                with open(os.path.join(args.out, "soak-%s.json" % (reactor,))) as f:
                    summaries.append(json.load(f))
                lines.append("(earlier run) %s: %s" % (reactor, summaries[-1]["verdict"]))
        png = plot(results, os.path.join(args.out, "soak.png"))
        with open(os.path.join(args.out, "soak.json"), "w") as f:
            json.dump({"minutes": args.minutes, "conns": args.conns,
                       "interval": args.interval, "paths": paths,
                       "summaries": summaries}, f, indent=1)
        print()
        for line in lines:
            print(line)
        if png:
            print("plot:", os.path.relpath(png, ROOT))
        return 0 if all(s["verdict"] == "PASS" for s in summaries) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
