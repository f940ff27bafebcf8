"""
What one request (or MB, or connection) costs the suite's Twisted servers, counted
rather than timed, so that the figures hold on a shared machine where wall-clock
rates and even CPU time move with the neighbours:

  - instructions: user-space instructions (callgrind), and allocations: calls to
    CPython's object allocator (_PyObject_Malloc/_PyObject_Calloc: every Python
    object, list, dict...) and to libc's malloc/calloc/realloc. Kernel work is not
    counted (callgrind sees only user space).
  - syscalls: system calls (strace -c -f), in all and the most frequent ones.
  - calls: Python function calls and calls of C functions from Python
    (sys.setprofile), with the most frequent ones.
  - cpu: the server's CPU time per unit, split into user and kernel time (utime and
    stime from /proc/PID/stat at the window's edges; no tool attached, clock ticks of
    10 ms, so use windows of seconds).
  - profile: where the server's Python time goes, by module (cProfile between the
    window's edges; each function's own time, grouped: txuring, Twisted, zope.interface,
    the rest of Python's library, and C functions called from Python). cProfile slows
    Python calls more than C work, so read the shares as a guide to where the
    interpreter's time goes, not as exact figures.

    python benchmarks/bench_counts.py [--measure instructions,syscalls,calls,cpu,profile]
        [--workloads echo-1,echo-50] [--reactors uring,epoll] [--seconds 4]
        [--warmup 2] [--top 12]

Each measurement is C{suite_server.py} (the worktree's txuring: PYTHONPATH is set to
this checkout) serving the suite's workloads, and one run of the load generator
(loadgen.c) whose C{LOADGEN_EDGE_HOOK} starts the count when its measured window
opens and stops it when it closes, while it has no request of its own in flight.
Per unit = the count / the units the load generator counted in the window. Under
callgrind the server is some 50x slower, under strace and setprofile a few times:
batches are then larger than on a real run, so per-request figures are those of a
loaded server. Servers: as in suite.py (uring, epoll, poll, asyncio, and
uring:OPTION=VALUE:... variants).

Needs valgrind (instructions), strace (syscalls) and a C compiler.
"""

import argparse
import collections
import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import suite  # noqa: E402
from _stats import table  # noqa: E402

MEASURES = ["instructions", "syscalls", "calls", "cpu", "profile"]
#: profile: how a function's file is grouped (first match of a path fragment)
PROFILE_GROUPS = [("/txuring/", "txuring"), ("/twisted/", "Twisted"),
                  ("/zope/", "zope.interface")]
#: profile: the calls in which a reactor sleeps until something happens (left out)
PROFILE_WAITS = ("txu_wait", "'poll' of 'select.epoll", "'poll' of 'select.poll",
                 "'select' of 'select")
PY_ALLOC = ("_PyObject_Malloc", "_PyObject_Calloc")
C_ALLOC = ("malloc", "calloc", "realloc")


def server_env():
    """The environment of a server process: this checkout's txuring first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_server(name, measure, workdir, cert):
    """The suite's server for C{name}, set up for C{measure}; returns (process, info)."""
    cmd = [sys.executable, os.path.join(HERE, "suite_server.py"), name,
           "--http-body", str(suite.HTTP_BODY)]
    if cert:
        cmd += ["--tls-cert", cert[0], "--tls-key", cert[1]]
    if measure == "instructions":
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               "--callgrind-out-file=" + os.path.join(workdir, "cg.%p")] + cmd
    elif measure == "calls":
        cmd += ["--count-calls", os.path.join(workdir, "calls.json")]
    elif measure == "profile":
        cmd += ["--profile", os.path.join(workdir, "profile.pstats")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT, env=server_env())
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait(10)
        raise RuntimeError("server %s did not start" % (name,))
    return proc, json.loads(line)


def edge_hook(measure, pid, workdir):
    """The shell script loadgen runs at the window's edges (argument: start or end)."""
    if measure == "instructions":
        start = "callgrind_control -z %d >/dev/null && callgrind_control -i on %d >/dev/null" \
            % (pid, pid)
        end = "callgrind_control -i off %d >/dev/null && callgrind_control -d %d >/dev/null" \
            % (pid, pid)
    elif measure == "syscalls":
        out = os.path.join(workdir, "strace.txt")
        pidfile = os.path.join(workdir, "strace.pid")
        start = ("rm -f %(out)s; setsid strace -c -f -p %(pid)d -o %(out)s 2>/dev/null & "
                 "echo $! > %(pidfile)s; "
                 "for i in $(seq 200); do grep -q 'TracerPid:[[:space:]]*[1-9]' "
                 "/proc/%(pid)d/status && break; sleep 0.01; done"
                 % {"out": out, "pid": pid, "pidfile": pidfile})
        end = ("kill -INT $(cat %(pidfile)s); for i in $(seq 500); do "
               "kill -0 $(cat %(pidfile)s) 2>/dev/null || break; sleep 0.01; done"
               % {"pidfile": pidfile})
    elif measure == "cpu":
        start = "cat /proc/%d/stat > %s" % (pid, os.path.join(workdir, "stat.start"))
        end = "cat /proc/%d/stat > %s" % (pid, os.path.join(workdir, "stat.end"))
    else:
        start = "kill -USR1 %d" % (pid,)
        end = "kill -USR2 %d" % (pid,)
    path = os.path.join(workdir, "hook.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nif [ \"$1\" = start ]; then %s; else %s; fi\n" % (start, end))
    os.chmod(path, 0o755)
    return path


def call_counts(path):
    """{function name: times called} from a callgrind output file."""
    names = {}
    counts = collections.Counter()
    callee = None
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=", "cfi=", "cob=", "fl=", "fi=", "fe=", "ob=")):
                key, _, rest = line.rstrip("\n").partition("=")
                m = re.match(r"\((\d+)\)(?: (.*))?", rest)
                name = rest
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1), rest)
                if key == "cfn":
                    callee = name
            elif line.startswith("calls=") and callee is not None:
                counts[callee] += int(line[6:].split()[0])
    return counts


def cpu_ticks(path):
    """(utime, stime) in seconds from a copy of /proc/PID/stat."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def profile_split(path):
    """{group: seconds of own time} from a pstats file (see PROFILE_GROUPS)."""
    import pstats

    groups = collections.Counter()
    for (filename, _, name), (_, _, tottime, _, _) in pstats.Stats(path).stats.items():
        if any(w in name for w in PROFILE_WAITS):
            continue  # (time asleep, not CPU)
        if filename == "~":
            group = "C functions called from Python"
        else:
            group = next((g for frag, g in PROFILE_GROUPS if frag in filename),
                         "other Python")
        groups[group] += tottime
    return groups


def measure_one(exe, workload, measure, proc, info, workdir, warmup, seconds):
    """One window; returns (units, {figure: count}, {name: count} for the top list)."""
    hook = edge_hook(measure, proc.pid, workdir)
    before = set(glob.glob(os.path.join(workdir, "cg.%d.*" % proc.pid)))
    calls_file = os.path.join(workdir, "calls.json")
    for stale in (calls_file, os.path.join(workdir, "profile.pstats"),
                  os.path.join(workdir, "stat.start"), os.path.join(workdir, "stat.end")):
        if os.path.exists(stale):
            os.unlink(stale)
    env = dict(os.environ, LOADGEN_EDGE_HOOK=hook)
    done = subprocess.run([exe, workload.mode, str(info[workload.service]),
                           str(workload.conns), str(workload.size), str(warmup),
                           str(seconds), str(proc.pid)],
                          capture_output=True, text=True, env=env,
                          timeout=warmup + seconds + 300)
    if done.returncode != 0:
        raise RuntimeError("loadgen: " + done.stderr[-500:])
    raw = json.loads(done.stdout)
    units = raw["units"] / 1e6 if workload.per_byte else raw["units"]
    deadline = time.time() + 60
    if measure == "instructions":
        while True:
            new = set(glob.glob(os.path.join(workdir, "cg.%d.*" % proc.pid))) - before
            if new or time.time() > deadline:
                break
            time.sleep(0.2)
        if not new:
            raise RuntimeError("no callgrind dump appeared")
        dump = max(new, key=os.path.getmtime)
        with open(dump) as f:
            text = f.read()
        # (the header's summary line and the closing totals line: the larger counts)
        instr = max([int(x) for x in re.findall(r"^(?:summary|totals): (\d+)", text, re.M)]
                    or [0])
        calls = call_counts(dump)
        figures = {"instructions": instr,
                   "py allocs": sum(calls[n] for n in PY_ALLOC),
                   "C mallocs": sum(calls[n] for n in C_ALLOC)}
        done = subprocess.run(["callgrind_annotate", dump], capture_output=True, text=True)
        top = {}
        for line in done.stdout.splitlines():
            m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)$", line)
            if m and "PROGRAM TOTALS" not in line:
                where = re.sub(r" \[.*\]$", "", m.group(2))
                top[where] = int(m.group(1).replace(",", ""))
        return units, figures, top
    if measure == "syscalls":
        out = os.path.join(workdir, "strace.txt")
        while not (os.path.exists(out) and os.path.getsize(out)) and time.time() < deadline:
            time.sleep(0.1)
        top = {}
        with open(out) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and parts[-1] != "total" and parts[3].isdigit():
                    top[parts[-1]] = int(parts[3])
        return units, {"syscalls": sum(top.values())}, top
    if measure == "cpu":
        (u0, s0), (u1, s1) = (cpu_ticks(os.path.join(workdir, "stat.start")),
                              cpu_ticks(os.path.join(workdir, "stat.end")))
        # (in microseconds, so that the per-unit figures read as us per unit)
        figures = {"user us": (u1 - u0) * 1e6, "kernel us": (s1 - s0) * 1e6}
        return units, figures, {}
    if measure == "profile":
        path = os.path.join(workdir, "profile.pstats")
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.1)
        groups = profile_split(path)
        total = sum(groups.values()) or 1
        # shares in percent (the top list gives the same per unit, under cProfile)
        figures = {"%% %s" % g: 100.0 * v / total * units for g, v in groups.items()}
        return units, figures, {g: v * 1e6 for g, v in groups.items()}
    while not os.path.exists(calls_file) and time.time() < deadline:
        time.sleep(0.1)
    with open(calls_file) as f:
        counts = json.load(f)
    figures = {"py calls": sum(v for k, v in counts.items() if k.startswith("py ")),
               "C calls": sum(v for k, v in counts.items() if k.startswith("C "))}
    return units, figures, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", default="instructions,syscalls,calls",
                        help="comma-separated, from: %s" % ",".join(MEASURES))
    parser.add_argument("--workloads", default="echo-1,echo-50")
    parser.add_argument("--reactors", default="uring,epoll")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=0,
                        help="also print the N biggest items of each measurement")
    args = parser.parse_args()
    measures = [m for m in args.measure.split(",") if m]
    for m in measures:
        if m not in MEASURES:
            parser.error("unknown measure %r" % (m,))
    for tool, m in (("valgrind", "instructions"), ("callgrind_control", "instructions"),
                    ("strace", "syscalls")):
        if m in measures and not shutil.which(tool):
            raise SystemExit("%s is not installed (needed for %s)" % (tool, m))
    cc = suite.compiler()
    if cc is None:
        raise SystemExit("no C compiler")
    workloads = [suite.BY_NAME[w] for w in args.workloads.split(",")
                 if suite.BY_NAME[w].mode != "idle"]
    reactors = args.reactors.split(",")
    results = collections.defaultdict(dict)
    with tempfile.TemporaryDirectory(prefix="txuring-counts-") as workdir:
        exe = os.path.join(workdir, "loadgen")
        exe_tls = os.path.join(workdir, "loadgen_tls")
        err = suite.build(cc, "loadgen.c", exe)
        if err:
            raise SystemExit(err)
        cert = None
        if any(w.mode == "tlsecho" for w in workloads):
            err = suite.build(cc, "loadgen.c", exe_tls, ["-DWITH_OPENSSL", "-lssl", "-lcrypto"])
            if err:
                raise SystemExit(err)
            cert = suite.make_certificate(workdir)
        for measure in measures:
            for name in reactors:
                proc, info = start_server(name, measure, workdir, cert)
                try:
                    for w in workloads:
                        units, figures, top = measure_one(
                            exe_tls if w.mode == "tlsecho" else exe, w, measure, proc,
                            info, workdir, args.warmup, args.seconds)
                        for k, v in figures.items():
                            results[w.name, k][name] = v / units if units else None
                        print("%-10s %-28s %-12s %8.0f %s: %s" % (
                            w.name, name, measure, units, w.unit,
                            ", ".join("%s %.2f" % (k, v / units if units else 0)
                                      for k, v in figures.items())), flush=True)
                        for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:args.top]:
                            print("    %12.2f /%s  %s" % (v / units if units else 0, w.unit, k))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
    print()
    print("command: %s %s" % (os.path.basename(sys.executable), " ".join(sys.argv)))
    headers = ["workload", "per unit"] + reactors
    if "epoll" in reactors:
        headers += ["%s / epoll" % r for r in reactors if r != "epoll"]
    rows = []
    for (wname, figure), per in results.items():
        row = [wname, figure] + ["-" if per.get(r) is None else
                                 ("{:,.0f}" if per[r] >= 1000 else "{:.2f}").format(per[r])
                                 for r in reactors]
        if "epoll" in reactors:
            base = per.get("epoll")
            row += ["%.2fx" % (per[r] / base) if base and per.get(r) is not None else "-"
                    for r in reactors if r != "epoll"]
        rows.append(row)
    print(table(headers, rows))


if __name__ == "__main__":
    main()
