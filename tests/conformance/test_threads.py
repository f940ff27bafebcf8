"""Twisted's twisted.internet.test.test_threads, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_threads")
