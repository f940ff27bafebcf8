"""Twisted's twisted.internet.test.test_time, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_time")
