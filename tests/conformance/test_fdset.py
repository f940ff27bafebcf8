"""Twisted's twisted.internet.test.test_fdset, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_fdset")
