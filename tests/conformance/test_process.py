"""Twisted's twisted.internet.test.test_process, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_process")
