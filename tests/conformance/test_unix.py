"""Twisted's twisted.internet.test.test_unix, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_unix")
