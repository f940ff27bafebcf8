"""
User-space instructions per request (or per MB, per connection) of the suite's Twisted
servers, counted by callgrind: the steady figure on a shared machine, where wall-clock
rates and even CPU time move with the neighbours. Kernel work is not counted (callgrind
sees only user space): read it beside the suite's server CPU per request.

    python benchmarks/bench_instr.py [--workloads echo-1,echo-50] [--reactors uring,epoll]
                                     [--seconds 4] [--warmup 2] [--top 25]

Each server is C{suite_server.py} run under C{valgrind --tool=callgrind
--instr-atstart=no}; the load generator (loadgen.c, with C{LOADGEN_EDGE_HOOK}) turns
instrumentation on when its measured window opens and off, and dumps, when it closes,
while it has no request of its own in flight. Instructions per unit = the dump's total
/ the units the load generator counted in the window. The server is some 50x slower
under callgrind, so rates are meaningless here and batches are larger than on a real
run; the figures compare reactors under the same load, not absolute speeds.

Servers: as in suite.py (uring, epoll, poll, asyncio, and uring:OPTION=VALUE:...
variants). With --top N, the N functions with most self instructions of each
dump are printed too (callgrind_annotate).

Needs valgrind (callgrind_control, callgrind_annotate) and a C compiler.
"""

import argparse
import glob
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import suite  # noqa: E402
from _stats import table  # noqa: E402


def start_server(name, workdir, cert):
    """The suite's server for C{name} under callgrind; returns (process, info)."""
    out = os.path.join(workdir, "cg.%p")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out,
           sys.executable, os.path.join(HERE, "suite_server.py"), name,
           "--http-body", str(suite.HTTP_BODY)]
    if cert:
        cmd += ["--tls-cert", cert[0], "--tls-key", cert[1]]
    env = dict(os.environ)
    # the worktree's txuring, whatever the venv's install points at
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.wait(10)
        raise RuntimeError("server %s did not start under callgrind" % (name,))
    import json

    return proc, json.loads(line)


def measure(exe, workload, proc, info, workdir, warmup, seconds):
    """Run one window; return (units, instructions, dump file)."""
    import json

    pid = proc.pid
    hook = os.path.join(workdir, "hook.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\n"
                "if [ \"$1\" = start ]; then callgrind_control -z %d >/dev/null && "
                "callgrind_control -i on %d >/dev/null; else callgrind_control -i off %d "
                ">/dev/null && callgrind_control -d %d >/dev/null; fi\n"
                % (pid, pid, pid, pid))
    os.chmod(hook, 0o755)
    before = set(glob.glob(os.path.join(workdir, "cg.%d.*" % pid)))
    env = dict(os.environ, LOADGEN_EDGE_HOOK=hook)
    port = info[workload.service]
    done = subprocess.run([exe, workload.mode, str(port), str(workload.conns),
                           str(workload.size), str(warmup), str(seconds), str(pid)],
                          capture_output=True, text=True, env=env, timeout=warmup + seconds + 300)
    if done.returncode != 0:
        raise RuntimeError("loadgen: " + done.stderr[-500:])
    raw = json.loads(done.stdout)
    deadline = time.time() + 30
    while True:
        new = set(glob.glob(os.path.join(workdir, "cg.%d.*" % pid))) - before
        if new or time.time() > deadline:
            break
        time.sleep(0.2)
    if not new:
        raise RuntimeError("no callgrind dump appeared")
    dump = max(new, key=os.path.getmtime)
    with open(dump) as f:
        text = f.read()
    # (the header's summary line and the closing totals line: the larger is the count)
    counts = [int(x) for x in re.findall(r"^(?:summary|totals): (\d+)", text, re.M)]
    units = raw["units"] / 1e6 if workload.per_byte else raw["units"]
    return units, max(counts or [0]), dump


def top_functions(dump, n):
    done = subprocess.run(["callgrind_annotate", dump],
                          capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if re.match(r"\s*[\d,]+ \(", l)]
    return lines[:n]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="echo-1,echo-50")
    parser.add_argument("--reactors", default="uring,epoll")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit("%s is not installed" % (tool,))
    cc = suite.compiler()
    if cc is None:
        raise SystemExit("no C compiler")
    workloads = [suite.BY_NAME[w] for w in args.workloads.split(",")]
    reactors = args.reactors.split(",")

    with tempfile.TemporaryDirectory(prefix="txuring-instr-") as workdir:
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
        results = {}
        for name in reactors:
            proc, info = start_server(name, workdir, cert)
            try:
                for w in workloads:
                    if w.mode == "idle":
                        continue
                    units, instr, dump = measure(exe_tls if w.mode == "tlsecho" else exe, w,
                                                 proc, info, workdir, args.warmup,
                                                 args.seconds)
                    results[w.name, name] = instr / units if units else None
                    print("%-10s %-30s %10.0f units  %14d instr  %10.0f instr/%s"
                          % (w.name, name, units, instr, instr / units if units else 0,
                             w.unit), flush=True)
                    if args.top:
                        for line in top_functions(dump, args.top):
                            print("    " + line)
            finally:
                proc.terminate()
                proc.wait(30)
    print()
    print("command: %s %s" % (os.path.basename(sys.executable), " ".join(sys.argv)))
    headers = ["workload"] + ["%s instr/unit" % r for r in reactors]
    if "epoll" in reactors:
        headers += ["%s / epoll" % r for r in reactors if r != "epoll"]
    out = []
    for w in workloads:
        if w.mode == "idle":
            continue
        row = [w.name] + ["{:,.0f}".format(results.get((w.name, r)) or 0) for r in reactors]
        if "epoll" in reactors:
            base = results.get((w.name, "epoll"))
            row += ["%.2fx" % (results[w.name, r] / base) if base and results.get((w.name, r))
                    else "-" for r in reactors if r != "epoll"]
        out.append(row)
    print(table(headers, out))


if __name__ == "__main__":
    main()
