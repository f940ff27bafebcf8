"""Twisted's twisted.internet.test.test_newtls, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_newtls")
