"""Twisted's twisted.internet.test.test_tls, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_tls")
