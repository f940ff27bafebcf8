"""
The state-by-state crash test (issue 6): every public method and property of L{Ring},
L{BufferRing}, L{Region}, L{Chunk} and L{RingDriver}, called in every state it is not
meant for: closed or exited (after C{ring.exit()}, C{BufferRing.close()},
C{Region.close()}, C{RingDriver.detach()}), inside C{ring.linked()} after an
C{exit()}, in a forked child (for each ring setup: the default, C{coop_taskrun},
C{plain} and SQPOLL; the parent then checks that its ring, buffer ring, region and
eventfd still work), and from a thread that is not the ring's issuer.

Allowed: a clear Python exception at the call (RingClosed, RingForked, a RuntimeError
naming the thread, ValueError...), or a harmless answer from a read-only property.
Never a crash, never a hang. The calls run in tests/state_cases.py, in one subprocess
that forks a child per case (see its docstring): a crash fails one case and names the
call that crashed.
"""

import json
import os
import subprocess
import sys

import pytest

import txuring

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import state_cases  # noqa: E402

#: What an error must be to count as "clear" (a Python error meant for the caller).
CLEAR = ("builtins.RuntimeError", "builtins.ValueError", "builtins.NotImplementedError",
         "txuring.errors.NoSpace")

#: The exception an "op" must raise, by state.
OP_ERROR = {
    "exited": "txuring.errors.RingClosed",
    "forked": "txuring.errors.RingForked",
    "thread": "builtins.RuntimeError",
}

#: Ring calls that need not raise in a state: (state, call) -> category.
RING_OVERRIDES = {
    # Nothing is in flight and the target is a finished op: no kernel needed.
    ("exited", "cancel"): "lenient",
    ("exited", "drain"): "lenient",
    ("exited", "fill_completions"): "lenient",
    ("exited", "exit"): "lenient",  # idempotent
    ("forked", "exit"): "lenient",  # closes the child's copy only
    # Outside ring.linked(), link_timeout is refused with ValueError in any state.
    ("exited", "link_timeout"): "lenient",
    ("forked", "link_timeout"): "lenient",
    ("thread", "link_timeout"): "lenient",
}


@pytest.fixture(scope="module")
def results():
    """Run every case once (one subprocess); the records, grouped by case."""
    ring = txuring.Ring(2)
    try:
        if not ring.op_supported("recv_multishot"):
            pytest.skip("the cases use a BufferRing with recv_multishot (Linux 6.0)")
    finally:
        ring.exit()
    proc = subprocess.run([sys.executable, os.path.join(HERE, "state_cases.py")]
                          + state_cases.all_cases(), capture_output=True, text=True,
                          timeout=300)
    by_case = {}
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        by_case.setdefault(record["case"], []).append(record)
    return by_case, proc.stderr


def _obj_instances():
    from twisted.internet.epollreactor import EPollReactor

    ring = txuring.Ring(4)
    bufring = txuring.BufferRing(ring, 2, 64)
    region = txuring.Region(ring, 1, 4096)
    chunk = region.alloc()
    reactor = EPollReactor()
    driver = txuring.RingDriver(ring, reactor)
    return ring, {"Ring": ring, "BufferRing": bufring, "Region": region, "Chunk": chunk,
                  "RingDriver": driver}, reactor


def test_every_public_name_has_a_case():
    """A public name added to one of the five classes must get a case here."""
    ring, objects, reactor = _obj_instances()
    try:
        for name, obj in objects.items():
            public = {n for n in dir(obj) if not n.startswith("_")}
            public |= {n for n in dir(type(obj)) if not n.startswith("_")}
            listed = set(state_cases.CALLS[name])
            assert public - listed == set(), (
                "%s has public names without a case in tests/state_cases.py: %s"
                % (name, sorted(public - listed)))
            assert listed - public == set(), (
                "tests/state_cases.py lists names %s no longer has: %s"
                % (name, sorted(listed - public)))
    finally:
        objects["RingDriver"].detach()
        objects["Chunk"].free()
        objects["Region"].close()
        ring.exit()
        reactor._poller.close()


def _is(record, cls):
    return cls in record.get("mro", ())


def _clear(record):
    msg = record.get("msg", "")
    return any(_is(record, c) for c in CLEAR) and len(msg) >= 15 and " " in msg


def _judge(record, state, obj):
    """None if the call's outcome is allowed in C{state}, else why not."""
    call = record["call"].split(":")[-1]
    category = record["category"]
    if obj == "Ring":
        category = RING_OVERRIDES.get((state, call), category)
    elif category == "op":
        # BufferRing.provide/take once closed or in a fork child: any clear error.
        # From another thread, objects other than the Ring are bookkeeping (or a
        # clear refusal).
        category = "lenient" if state == "thread" else "must-raise"
    outcome = record["outcome"]
    if outcome == "raise" and not _clear(record):
        return "raised an unclear error: %s(%r)" % (record["mro"][0], record["msg"])
    if category in ("prop", "lenient"):
        return None
    if outcome == "ok":
        return "returned %s instead of raising" % (record["value"],)
    if category == "must-raise":
        return None
    if state == "thread" and call == "exit" and _is(record, "txuring.errors.RingBusy"):
        return None  # refused anyway: an op is in flight
    expected = OP_ERROR[state]
    if not _is(record, expected):
        return "raised %s(%r), expected %s" % (record["mro"][0], record["msg"], expected)
    if state == "thread" and "thread" not in record["msg"]:
        return "raised %s(%r), which does not name the thread" % (
            record["mro"][0], record["msg"])
    return None


def _linked_judge(record):
    call = record["call"].split(":")[-1]
    # The ring is open here (once exit() is refused): the kernel's own answers (EBUSY
    # for a second eventfd) are fine.
    kernel_answer = _is(record, "builtins.OSError")
    if record["outcome"] == "raise" and not (_clear(record) or kernel_answer):
        return "raised an unclear error: %s(%r)" % (record["mro"][0], record["msg"])
    if call in ("exit-first", "exit", "linked") and record["outcome"] == "ok":
        # exit(): the chain's ops are not in flight yet, but leaving the block would
        # write them into an unmapped SQ. linked(): chains do not nest.
        return "was accepted inside ring.linked()"
    return None


def _report(case, records, stderr):
    """Every failure of one case: calls judged wrong, failed checks, a crash."""
    kind, state = case.split(":")
    failures = []
    started = None
    exit_status = None
    for record in records:
        phase = record["phase"]
        if phase == "start":
            started = record["call"]
        elif phase == "end":
            started = None
            if kind == "fork":
                why = _judge(record, "forked", record["obj"])
            elif state == "linked_exit":
                why = _linked_judge(record)
            else:
                why = _judge(record, "thread" if state == "thread" else "exited", kind)
            if why:
                failures.append("%s: %s" % (record["call"], why))
        elif phase == "check":
            started = None
            if not record["ok"]:
                failures.append("%s failed: %s%s" % (record["call"], record["detail"],
                                                      "\n" + record.get("tb", "")))
        elif phase == "child-exit":
            started = None
            status = record["status"]
            if os.WIFSIGNALED(status):
                last = [r["call"] for r in records if r["phase"] == "start"
                        and r["call"].startswith("child:") and r.get("obj") ==
                        record["call"].split(":")[1]]
                failures.append("the fork child for %s died of signal %d (%s) after "
                                "starting %s" % (record["call"], os.WTERMSIG(status),
                                                 _signame(status), last[-1:]))
        elif phase == "exit":
            exit_status = record["status"]
    if exit_status is None:
        failures.append("the runner never reported this case (stderr: %s)" % stderr[-2000:])
    elif os.WIFSIGNALED(exit_status):
        failures.append("CRASH: died of signal %d (%s) during %r" % (
            os.WTERMSIG(exit_status), _signame(exit_status), started))
    elif os.waitstatus_to_exitcode(exit_status) != 0:
        failures.append("the case child exited with %d"
                        % os.waitstatus_to_exitcode(exit_status))
    return failures


def _signame(status):
    sig = os.WTERMSIG(status)
    if sig == 14:
        return "SIGALRM: a hang of %d s" % (state_cases.CASE_TIMEOUT,)
    try:
        import signal
        return signal.Signals(sig).name
    except ValueError:
        return "?"


@pytest.mark.parametrize("case", state_cases.all_cases())
def test_state(case, results):
    by_case, stderr = results
    records = by_case.get(case, [])
    failures = _report(case, records, stderr)
    assert not failures, "%s:\n  %s" % (case, "\n  ".join(failures))
