"""
The benchmark harness itself (benchmarks/suite.py), not the speed of anything: one tiny run
of the 1-connection echo and the idle-memory workload against UringReactor and the C server,
checking that the harness builds its C programs, starts and stops its servers, counts what
the load generator did and writes the JSON it promises. No figure is compared with a limit.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "suite.py")


def have_cc():
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


pytestmark = pytest.mark.skipif(not have_cc(), reason="no C compiler for the load generator")


def test_tiny_run_counts_requests(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, SUITE, "--workloads", "echo-1,memory", "--reactors", "uring,c",
         "--repeat", "1", "--seconds", "0.2", "--warmup", "0.05", "--idle-conns", "50",
         "--json", str(out), "--no-plot"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())

    assert results["failures"] == []
    assert results["meta"]["repeat"] == 1
    assert results["servers"]["uring"]["reactor"] == "txuring.reactor.UringReactor"
    assert set(results["workloads"]) == {"echo-1", "memory"}

    echo = results["workloads"]["echo-1"]
    assert echo["unit"] == "req"
    assert set(echo["samples"]) == {"uring", "c"}
    for server in ("uring", "c"):
        (sample,) = echo["samples"][server]
        assert sample["units"] > 0, sample
        assert sample["errors"] == 0
        assert sample["seconds"] > 0
        assert sample["rate"] == pytest.approx(sample["units"] / sample["seconds"])
        assert sample["server_cpu_s"] >= 0
        assert sample["client_cpu_s"] >= 0
        assert 0 < sample["p50_us"] <= sample["p99_us"]
        summary = echo["summary"][server]
        assert summary["n"] == 1
        assert summary["rate"]["median"] == sample["rate"]
    # Ratios are taken against EPollReactor, which was not run; the ceiling is.
    assert echo["summary"]["uring"]["rate_vs_epoll"] is None
    assert echo["summary"]["c"]["of_ceiling"] == 1.0

    memory = results["workloads"]["memory"]
    (sample,) = memory["samples"]["uring"]
    assert memory["connections"] == 50
    assert sample["rss_after_kib"] > 0 and sample["rss_before_kib"] > 0
    # the baseline comes after echo traffic (the buffer ring resident) and a first block
    assert sample["warm_requests"] >= 20000
    assert 0 < sample["rss_rest_kib"] <= sample["rss_before_kib"]

    assert "echo-1" in done.stdout and "client check" in done.stdout


def test_unknown_workload_is_refused():
    done = subprocess.run([sys.executable, SUITE, "--workloads", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown workload 'nope'" in done.stderr


def test_uring_variant_server(tmp_path):
    """uring:OPTION=VALUE runs UringReactor with that option, as a server of its own."""
    out = tmp_path / "results.json"
    name = "uring:directSendThreshold=0"
    done = subprocess.run(
        [sys.executable, SUITE, "--workloads", "echo-1", "--reactors", "uring," + name,
         "--repeat", "1", "--seconds", "0.2", "--warmup", "0.05",
         "--json", str(out), "--no-plot"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["failures"] == []
    assert results["servers"][name]["reactor"] == "txuring.reactor.UringReactor"
    (sample,) = results["workloads"]["echo-1"]["samples"][name]
    assert sample["units"] > 0
    bad = subprocess.run([sys.executable, SUITE, "--reactors", "uring:directSendThreshold"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown server" in bad.stderr


def test_counts_of_python_calls(tmp_path):
    """bench_counts.py --measure calls: Python calls per request counted in the window."""
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_counts.py"),
         "--measure", "calls", "--workloads", "echo-1", "--reactors", "uring",
         "--seconds", "0.3", "--warmup", "0.1", "--top", "3"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    line = [l for l in done.stdout.splitlines() if l.startswith("echo-1") and "calls" in l][0]
    py_calls = float(line.split("py calls ")[1].split(",")[0])
    assert py_calls > 1  # (a request runs at least the protocol's dataReceived)


def test_callgrind_call_counts_parser(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_counts
    finally:
        sys.path.pop(0)
    dump = tmp_path / "cg.out"
    dump.write_text("\n".join([
        "events: Ir", "fn=(1) main", "cfn=(2) malloc", "calls=3 0x10", "5 30",
        "cfn=(3) _PyObject_Malloc", "calls=7 0x20", "5 70",
        "fn=(4) other", "cfn=(2)", "calls=2 0x30", "6 20", "totals: 120", ""]))
    counts = bench_counts.call_counts(str(dump))
    assert counts["malloc"] == 5 and counts["_PyObject_Malloc"] == 7
