"""
Fixtures shared by the tests.

C{ring}: a fresh L{txuring.Ring} driven by the reactor pytest-twisted runs (epoll by
default, UringReactor with C{--reactor=uring}) through a L{txuring.RingDriver}. After
the test it is drained, checked for leftovers, and closed.
"""

import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task

import txuring


def open_fds():
    """The set of this process's open fd numbers (for leak checks)."""
    listed = [int(n) for n in os.listdir("/proc/self/fd")]
    # The listing includes the directory fd listdir used (closed by now): drop it.
    return set(fd for fd in listed if _is_open(fd))


def _is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@defer.inlineCallbacks
def wait_until(reactor, condition, timeout=5.0):
    """Let the reactor run until C{condition()} is true (fail after C{timeout})."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % (timeout,))
        yield task.deferLater(reactor, 0.001, lambda: None)


@pytest.fixture
def pipe():
    """A pipe (read fd, write fd), both closed after the test unless closed already."""
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def make_ring(reactor):
    """A factory of driven rings; every ring made is drained and closed after the test."""
    made = []

    def make(queue_depth=32, **kw):
        ring = txuring.Ring(queue_depth, **kw)
        driver = txuring.RingDriver(ring, reactor)
        made.append((ring, driver))
        return ring

    yield make
    for ring, driver in made:
        if ring.closed:
            driver.detach()
            continue
        if ring.active_ops:
            pytest_twisted.blockon(ring.drain())
        driver.detach()
        ring.exit()


@pytest.fixture
def ring(make_ring):
    return make_ring()


# ---- tests/conformance: Twisted's reactor suite, run by tests/test_conformance.py ----

_CONFORMANCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance")
#: txuring.fs and txuring.web's tests, run once per reactor by tests/test_fs_reactors.py.
_FS_SUITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fs_suite")

#: Where tests/test_conformance.py leaves each module's counts for the summary.
CONFORMANCE_SUMMARY = pytest.StashKey[list]()


def _inside(directory, path):
    path = os.path.abspath(str(path))
    return path == directory or path.startswith(directory + os.sep)


def _inside_conformance(path):
    return _inside(_CONFORMANCE_DIR, path)


def pytest_ignore_collect(collection_path, config):
    """
    Leave tests/conformance to tests/test_conformance.py, which runs each of its
    modules in a subprocess of its own, and tests/fs_suite to tests/test_fs_reactors.py,
    which runs it once per reactor, unless the command line names something in them.
    """
    for directory in (_CONFORMANCE_DIR, _FS_SUITE_DIR):
        if _inside(directory, collection_path) and not any(
                _inside(directory, arg.split("::")[0]) for arg in config.args):
            return True
    return None


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(CONFORMANCE_SUMMARY, None)
    if lines:
        terminalreporter.section("Twisted reactor conformance (UringReactor vs EPollReactor)")
        for line in lines:
            terminalreporter.write_line(line)
