"""
Hostile input: malformed arguments to every public function of txuring, made in a
subprocess per batch (hostile_runner.py) so that a crash is seen as one, each call
expected to give a clear Python error at the call (or be a valid call), never a crash
or a hang.

Batches: each class of C{txuring.__all__} (constructor and public methods), the
objects after their ring's exit() ("dead"), and C{txuring.fs}/C{txuring.web} (under a
running reactor, parametrised over uring and epoll; skipped until txuring.fs exists).
The Ring-level batches do not depend on the reactor and run once.

Fast: a seeded sample of 6 hostile values per argument. Full (TXURING_STRESS=full):
every value for every argument, with three seeds.

C{KNOWN} lists findings in code this suite does not own, each with where it is and
what to do; C{test_known_findings_still_there} fails (strict xfail) once one of them is
fixed, so that its entry gets removed.
"""

import json
import os
import subprocess
import sys

import pytest

from stresslib import FULL, HERE, REACTORS, report, scale

pytestmark = [pytest.mark.stress, pytest.mark.timeout(scale(300, 1800))]

CLASSES = ["Ring", "Handle", "Region", "Chunk", "BufferRing", "RingDriver",
           "error_of_errno", "dead"]

#: (callable, argument) -> the finding. Matched against the runner's "bad" calls.
KNOWN = {
    # Empty: the six findings listed here (non-callable callbacks accepted by poll_add,
    # read_multishot, recv_multishot and multishot accept; BufferRing and RingDriver
    # given a non-Ring; RingDriver(reactor=None) after registering its eventfd) are
    # fixed, with their regressions in tests/test_hostile_regressions.py.
}


def run_batch(target, reactor, seed, tmp_path, everything=FULL):
    """Run TARGET's calls, restarting after each crash; return (calls, findings)."""
    progress = str(tmp_path / ("progress-%s-%s-%d" % (target, reactor, seed)))
    findings = []
    start = 0
    calls = None
    crashes = 0
    while True:
        cmd = [sys.executable, os.path.join(HERE, "hostile_runner.py"), target, reactor,
               str(seed), str(start), progress] + (["--all"] if everything else [])
        if os.path.exists(progress + ".json"):
            os.unlink(progress + ".json")
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=scale(100, 900))
            status, err = done.returncode, done.stderr
        except subprocess.TimeoutExpired as e:
            status, err = "timeout", (e.stderr or b"").decode(errors="replace")
        if status == 0 and os.path.exists(progress + ".json"):
            with open(progress + ".json") as f:
                result = json.load(f)
            if "skip" in result:
                pytest.skip(result["skip"])
            if result.get("error"):
                raise AssertionError(result["error"])
            calls = result["calls"]
            findings += [(text, outcome) for _, text, outcome in result["bad"]]
            return calls, findings, crashes
        with open(progress) as f:
            lines = f.read().splitlines()
        last = lines[-1] if lines else "0 (before the first call)"
        k, text = last.split(" ", 1)
        findings.append((text, "crash: exit status %s: %s" % (status, err[-1500:])))
        crashes += 1
        start = int(k) + 1
        if crashes > 20:
            raise AssertionError("more than 20 crashes: %r" % (findings[-3:],))


def split(findings):
    """(known, new) findings: known ones match KNOWN by callable and argument."""
    known, new = [], []
    for text, outcome in findings:
        head = text.split("(", 1)
        arg = head[1].split("=", 1)[0] if len(head) > 1 else ""
        key = (head[0].replace("exited ", "").replace("closed ", ""), arg)
        if key in KNOWN and not outcome.startswith(("crash", "hang")):
            known.append((key, text, outcome))
        else:
            new.append((text, outcome))
    return known, new


@pytest.mark.parametrize("target", CLASSES)
def test_malformed_arguments(target, tmp_path):
    total = 0
    all_known, all_new, crashes = [], [], 0
    for seed in ([1, 2, 3] if FULL else [1]):
        calls, findings, c = run_batch(target, "epoll", seed, tmp_path)
        known, new = split(findings)
        total += calls
        crashes += c
        all_known += known
        all_new += new
    report("malformed_args", "-", target=target, calls=total, crashes=crashes,
           known_findings=len(all_known), new_findings=len(all_new))
    assert not all_new, "\n".join("%s: %s" % f for f in all_new[:20])


@pytest.mark.parametrize("reactor", REACTORS)
def test_malformed_arguments_to_fs(reactor, tmp_path):
    pytest.importorskip("txuring.fs")
    calls, findings, crashes = run_batch("fs", reactor, 1, tmp_path)
    report("malformed_args", reactor, target="fs", calls=calls, crashes=crashes,
           findings=len(findings))
    assert not findings, "\n".join("%s: %s" % f for f in findings[:20])


@pytest.mark.xfail(strict=True, reason="the KNOWN findings (owned elsewhere) are fixed: "
                   "remove their entries from KNOWN")
def test_known_findings_still_there(tmp_path):
    if not KNOWN:
        pytest.skip("no known findings left to watch")
    seen = set()
    for target in ("Ring", "BufferRing", "RingDriver"):
        _, findings, _ = run_batch(target, "epoll", 1, tmp_path, everything=True)
        seen |= {k for k, _, _ in split(findings)[0]}
    if seen == set(KNOWN):
        raise AssertionError("every KNOWN finding is still there")
    # (passing here fails the strict xfail: the entries of KNOWN - seen are fixed)
