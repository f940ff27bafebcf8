"""Twisted's twisted.internet.test.test_udp, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_udp")
