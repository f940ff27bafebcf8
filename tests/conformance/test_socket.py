"""Twisted's twisted.internet.test.test_socket, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_socket")
