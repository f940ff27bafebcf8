"""
UringReactor's main loop (txuring/reactor.py, mainLoop and _passes): passes with nothing
due skip runUntilCurrent and timeout, and the error handler is entered once for many
passes. What Twisted's loop gives must still hold: timed calls run when due, calls from
threads run, an exception out of a pass is logged and the loop goes on, cancelled calls
are compacted out of the heap, and stop() ends the loop.
"""

import threading

from twisted.python import log

from txuring.reactor import UringReactor

from test_reactor_faults import cleanup, run


def test_timed_calls_thread_calls_and_stop():
    reactor = UringReactor()
    seen = []
    try:
        def fromThread():
            seen.append("thread")
            reactor.callLater(0.01, later)

        def later():
            seen.append("later")
            reactor.stop()

        reactor.callLater(0.01, lambda: threading.Thread(
            target=reactor.callFromThread, args=(fromThread,)).start())
        run(reactor)
    finally:
        cleanup(reactor)
    assert seen == ["thread", "later"]


def test_an_exception_out_of_a_pass_is_logged_and_the_loop_goes_on():
    reactor = UringReactor()
    errors = []
    log.addObserver(errors.append)
    seen = []
    original = reactor.doIteration
    raised = []

    def doIteration(timeout):
        if not raised:
            raised.append(True)
            raise RuntimeError("a pass failed")
        return original(timeout)

    reactor.doIteration = doIteration
    try:
        reactor.callLater(0.02, lambda: (seen.append("after"), reactor.stop()))
        run(reactor)
    finally:
        log.removeObserver(errors.append)
        cleanup(reactor)
    assert seen == ["after"]
    failures = [e for e in errors if e.get("isError") and "failure" in e]
    assert any(e["failure"].check(RuntimeError) for e in failures), errors


def test_cancelled_calls_are_compacted_while_none_is_due():
    """Calls cancelled outside runUntilCurrent (in I/O dispatch, here in doIteration)
    are compacted out at the next pass, though no timed call is due."""
    reactor = UringReactor()
    calls = [reactor.callLater(3600, lambda: None) for _ in range(200)]
    original = reactor.doIteration
    lengths = []

    def doIteration(timeout):
        if calls:
            for c in calls:
                c.cancel()
            del calls[:]
            return original(0)
        lengths.append(len(reactor._pendingTimedCalls))
        return original(timeout)

    reactor.doIteration = doIteration
    try:
        reactor.callLater(0.2, reactor.stop)
        run(reactor)
    finally:
        cleanup(reactor)
    # Twisted compacts the heap once more than 50 (and more than half) of its calls are
    # cancelled, checked in every runUntilCurrent: the fast passes still let it.
    assert lengths and lengths[0] < 10, lengths
