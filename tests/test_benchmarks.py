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

    assert "echo-1" in done.stdout and "client check" in done.stdout


def test_unknown_workload_is_refused():
    done = subprocess.run([sys.executable, SUITE, "--workloads", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown workload 'nope'" in done.stderr
