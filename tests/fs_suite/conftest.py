"""
Fixtures of the txuring.fs / txuring.web suite, which tests/test_fs_reactors.py runs
once per reactor (UringReactor, EPollReactor, AsyncioSelectorReactor, and the thread
fallback), each in a process of its own: a process installs its reactor only once.

C{TXURING_EXPECT_REACTOR} and C{TXURING_EXPECT_BACKEND} (set by the runner) name the
reactor class and the fs backend the run must be using; without them (running this
directory by hand) any is accepted.
"""

import os

import pytest
import pytest_twisted

from twisted.internet import defer, task

from txuring import fs as txfs


def open_fds():
    """The set of this process's open fd numbers."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue  # the directory fd listdir used
        found.add(int(name))
    return found


@defer.inlineCallbacks
def wait_until(reactor, condition, timeout=5.0):
    """Let the reactor run until C{condition()} is true (AssertionError after timeout)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % (timeout,))
        yield task.deferLater(reactor, 0.001, lambda: None)


@pytest.fixture
def fs():
    return txfs.filesystem()


@pytest.fixture(autouse=True)
def no_fd_leaks(fs):
    """Every test ends with the fds it started with (the backend is made first)."""
    from twisted.internet import reactor

    # The running reactor's own fds (signal wakers) and the private ring's, made once.
    pytest_twisted.blockon(task.deferLater(reactor, 0, lambda: None))
    fs.kind
    # twisted.internet.tcp keeps one fd of /dev/null in reserve (for EMFILE), opened by
    # the first listening port.
    from twisted.internet import tcp

    if hasattr(tcp, "_reservedFD"):
        tcp._reservedFD.reserve()
    before = open_fds()
    yield

    try:
        pytest_twisted.blockon(wait_until(reactor, lambda: open_fds() <= before, 2.0))
    except AssertionError:
        leaked = open_fds() - before
        raise AssertionError("fds leaked: %s" % (
            {fd: _describe(fd) for fd in sorted(leaked)},))


def _describe(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % (fd,))
    except OSError:
        return "?"


def expected(name):
    return os.environ.get(name) or None
