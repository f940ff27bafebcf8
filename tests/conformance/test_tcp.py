"""Twisted's twisted.internet.test.test_tcp, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_tcp")
