"""Fixtures for Twisted's reactor conformance suite (see _builders.py)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def scratch_working_directory(tmp_path_factory):
    """
    Twisted's tests make temporary files and directories in the working directory
    (trial runs them in _trial_temp): run them in a scratch directory, not wherever
    pytest was started.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


#: With TXURING_COUNT_TRANSPORTS=<file>, every test that started one of txuring's
#: completion transports (txuring.tcp, txuring.unix: a connection that read or wrote,
#: or a port that accepted) on
#: UringReactor appends its id to <file>: tests/test_conformance.py reports how many of
#: Twisted's tests reach the completion-based transports.
_COUNT_FILE = os.environ.get("TXURING_COUNT_TRANSPORTS")

if _COUNT_FILE:
    from txuring import tcp as _utcp

    _started = [0]

    def _counting(method):
        def wrapper(self, *args, **kw):
            _started[0] += 1
            return method(self, *args, **kw)
        return wrapper

    for _cls, _names in ((_utcp._CompletionConnection, ("startReading", "startWriting")),
                         (_utcp._CompletionPort, ("startReading",))):
        for _name in _names:
            setattr(_cls, _name, _counting(getattr(_cls, _name)))

    @pytest.fixture(autouse=True)
    def count_transport_use(request):
        before = _started[0]
        yield
        if _started[0] != before:
            with open(_COUNT_FILE, "a") as f:
                f.write(request.node.nodeid + "\n")
