"""
Twisted's reactor conformance suite (tests/conformance/), one subprocess per Twisted
module, for UringReactor against EPollReactor on the same machine.

Each parametrized test runs::

    python -m pytest -q -p no:cacheprovider --junitxml=... tests/conformance/test_X.py

in a fresh process and a scratch working directory (Twisted's tests make temporary
files in the working directory, as they would in trial's _trial_temp), reads every
test's outcome, and fails if:

  - a test passes (or is skipped) on EPollReactor and fails, errors, or is missing on
    UringReactor, unless L{ALLOWED_URING_FAILURES} gives a reason;
  - a test passes on EPollReactor and is skipped on UringReactor, unless
    C{tests/conformance/_builders.URING_SKIPS} gives the reason (it makes the skip);
  - the module ran no test for either reactor, or pytest itself broke.

Failures on both reactors are environment facts, printed but not failed: here (root in
a sandbox) C{test_changeUID} fails for both, because the child cannot exec as uid 1.

Each module's counts per reactor, and its runtime, are printed in the terminal summary
(see tests/conftest.py). To see one module's tests directly::

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/conformance/test_tcp.py
"""

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from conftest import CONFORMANCE_SUMMARY

sys.path.insert(0, str(Path(__file__).parent))
from conformance._builders import URING_SKIPS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "tests" / "conformance"

#: The Twisted modules (twisted.internet.test.test_X), one subprocess each.
MODULES = ["core", "time", "fdset", "threads", "tcp", "udp", "unix", "process", "tls",
           "socket", "newtls", "stdio"]

#: The two reactors, by the suffix of the test classes generated for them.
URING, EPOLL = "_UringReactorTests", "_EPollReactorTests"

#: Tests allowed to fail or error on UringReactor although they pass on EPollReactor:
#: (builder class name, test method name) -> the reason. Empty: every test that
#: passes on EPollReactor passes on UringReactor.
ALLOWED_URING_FAILURES = {}

#: A whole module is given this long (seconds) before it counts as hung. Twisted's
#: ReactorBuilder.runReactor stops a stuck reactor after 120 s, so a single hung test
#: still gives a report within the limit.
MODULE_TIMEOUT = 600


def _outcomes(junit_xml):
    """
    {(reactor suffix, builder, method): outcome} from a pytest junit XML report, and
    {reactor suffix: seconds spent in its tests}.
    """
    outcomes = {}
    seconds = Counter()
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        for suffix in (URING, EPOLL):
            if cls.endswith(suffix):
                break
        else:
            continue
        tags = {child.tag for child in case}
        if "error" in tags:
            outcome = "error"
        elif "failure" in tags:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        seconds[suffix] += float(case.get("time") or 0)
        key = (suffix, cls[: -len(suffix)], case.get("name"))
        # A test reported twice (call, then teardown error) keeps the worse outcome.
        if outcomes.get(key) not in ("error", "failed"):
            outcomes[key] = outcome
    return outcomes, seconds


def _describe(outcomes, seconds, reactor):
    counts = Counter(o for (r, _, _), o in outcomes.items() if r == reactor)
    return "%3d passed %2d failed %2d errors %2d skipped  (%.1f s in tests)" % (
        counts["passed"], counts["failed"], counts["error"], counts["skipped"],
        seconds[reactor])


def _run_pytest(targets, scratch):
    """
    Run pytest on C{targets} (a module path or node ids) in a fresh process, in a
    scratch directory; return (outcomes, seconds, output, set of tests that reached
    the completion transports, elapsed seconds).
    """
    scratch.mkdir()
    junit = scratch / "junit.xml"
    work = scratch / "cwd"
    work.mkdir()
    reached = scratch / "reached.txt"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), "-o", "addopts=",
           "-rfE", "--junitxml", str(junit)] + list(targets)
    env = dict(os.environ, TXURING_COUNT_TRANSPORTS=str(reached))
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              timeout=MODULE_TIMEOUT, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.output or ""
        if isinstance(out, bytes):
            out = out.decode("utf-8", "replace")
        pytest.fail("%s did not finish within %d s:\n%s" % (
            " ".join(targets), MODULE_TIMEOUT, out[-5000:]))
    elapsed = time.monotonic() - started
    out = proc.stdout
    # 0: all passed, 1: some failed; anything else is pytest breaking (usage, import).
    assert proc.returncode in (0, 1) and junit.exists(), (
        "pytest exited with %d:\n%s" % (proc.returncode, out[-5000:]))
    outcomes, seconds = _outcomes(junit)
    reaching = set(reached.read_text().split()) if reached.exists() else set()
    return outcomes, seconds, out, reaching, elapsed


def _differences(uring, epoll):
    """
    The tests that pass (or skip) on EPollReactor and do not on UringReactor, without
    a reason given for it: {(builder, method): (uring outcome, epoll outcome)}.
    """
    found = {}
    for key, o in sorted(epoll.items()):
        if o in ("failed", "error"):
            continue  # no control: an environment fact, reported above
        got = uring.get(key, "missing")
        if got == "passed" or got == "skipped" and (o == "skipped" or key in URING_SKIPS):
            continue
        if got in ("failed", "error") and key in ALLOWED_URING_FAILURES:
            continue
        # Includes a failure where EPollReactor skipped (test_lostFileDescriptor).
        found[key] = (got, o)
    return found


def _by_reactor(outcomes):
    return ({(b, m): o for (r, b, m), o in outcomes.items() if r == URING},
            {(b, m): o for (r, b, m), o in outcomes.items() if r == EPOLL})


@pytest.mark.parametrize("module", MODULES)
def test_conformance(module, tmp_path, request):
    path = CONFORMANCE / ("test_%s.py" % (module,))
    outcomes, seconds, out, reaching, elapsed = _run_pytest([str(path)],
                                                            tmp_path / "module")
    uring, epoll = _by_reactor(outcomes)
    both_failed = sorted("%s.%s" % k for k, o in epoll.items()
                         if o in ("failed", "error") and uring.get(k) in ("failed", "error"))
    reaching_uring = sum(1 for t in reaching if URING in t)
    report = ["test_%s (%.1f s, subprocess included)" % (module, elapsed),
              "  UringReactor: " + _describe(outcomes, seconds, URING)
              + "; %d reached the completion transports" % (reaching_uring,),
              "  EPollReactor: " + _describe(outcomes, seconds, EPOLL)]
    if both_failed:
        report.append("  failing on both (environment): " + ", ".join(both_failed))

    assert uring and epoll, "no test ran for one of the reactors:\n%s" % (out[-5000:],)
    differences = _differences(uring, epoll)
    if differences:
        # This machine is shared: a test that takes a free port and then listens on it
        # can lose it to another process in between (EADDRINUSE on one reactor only).
        # Each difference is run once more, on both reactors, in a fresh process; only
        # one that stays a difference counts.
        rel = path.relative_to(ROOT)
        ids = ["%s::%s%s::%s" % (rel, builder, suffix, method)
               for builder, method in differences for suffix in (URING, EPOLL)]
        again, _, again_out, _, _ = _run_pytest([str(ROOT / i) for i in ids],
                                                tmp_path / "again")
        again_uring, again_epoll = _by_reactor(again)
        # A test that did not run again on EPollReactor (no control) still counts.
        still = dict(_differences(again_uring, again_epoll),
                     **{k: v for k, v in differences.items() if k not in again_epoll})
        report.append("  differing once, run again: %s; still differing: %s" % (
            ", ".join("%s.%s" % k for k in differences),
            ", ".join("%s.%s" % k for k in still if k in differences) or "none"))
        differences = {k: v for k, v in still.items() if k in differences}
        out += "\n\nThe differing tests, run again:\n" + again_out
    request.config.stash.setdefault(CONFORMANCE_SUMMARY, []).append("\n".join(report))
    print("\n".join(report))
    problems = ["%s.%s: %s on UringReactor, %s on EPollReactor" % (k + v)
                for k, v in sorted(differences.items())]
    assert not problems, "\n".join(problems) + "\n\npytest output:\n" + out[-8000:]
