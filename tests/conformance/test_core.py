"""Twisted's twisted.internet.test.test_core, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_core")
