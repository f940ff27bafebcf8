"""
tests/fs_suite (txuring.fs and txuring.web) on every reactor they serve, one subprocess
each (a process installs its global reactor once):

  - uring:    UringReactor; fs uses the reactor's own ring.
  - epoll:    EPollReactor (pytest-twisted's default here); fs attaches a private ring.
  - asyncio:  AsyncioSelectorReactor; a private ring, as on epoll.
  - threads:  EPollReactor with TXURING_FS_THREADS=1: the thread-pool fallback.
  - seccomp:  EPollReactor under a seccomp filter refusing io_uring_setup (as Docker's
              default profile does): the fallback chosen by itself, saying why.

Each run checks (tests/fs_suite/test_fs_api.py's first test) that it got the reactor
and backend named here. To run one by hand::

    cd tests && TXURING_FS_THREADS=1 ../.venv/bin/python -m pytest -q fs_suite
    cd tests && ../.venv/bin/python -m pytest -q fs_suite --reactor=uring
"""

import errno
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

RUNS = {
    "uring": (["--reactor=uring"], {}, "UringReactor", "io_uring"),
    "epoll": ([], {}, "EPollReactor", "io_uring"),
    "asyncio": (["--reactor=asyncio"], {}, "AsyncioSelectorReactor", "io_uring"),
    "threads": ([], {"TXURING_FS_THREADS": "1"}, "EPollReactor", "threads"),
    "seccomp": ([], {"TXURING_EXPECT_REASON": "seccomp"}, "EPollReactor", "threads"),
}
SECCOMP_EXEC = str(TESTS / "seccomp_exec.py")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_fs_suite(run):
    args, env, reactor_name, backend = RUNS[run]
    env = dict(os.environ, TXURING_EXPECT_REACTOR=reactor_name,
               TXURING_EXPECT_BACKEND=backend, **env)
    env.pop("PYTEST_ADDOPTS", None)
    prefix = []
    if run == "seccomp":
        if platform.machine() != "x86_64":
            pytest.skip("the seccomp filter is written for x86_64 syscall numbers")
        prefix = [sys.executable, SECCOMP_EXEC, str(errno.EPERM)]
    proc = subprocess.run(
        prefix + [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60",
         "fs_suite", *args],
        cwd=TESTS, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode == 3 and proc.stdout.startswith("NOSECCOMP"):
        pytest.skip("cannot install a seccomp filter here: %s" % (proc.stdout,))
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    print("%s: %s" % (run, summary))
    assert proc.returncode == 0, out[-20000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20, out[-5000:]
    assert " failed" not in summary and " error" not in summary, out[-20000:]
