"""Twisted's twisted.internet.test.test_stdio, for UringReactor and EPollReactor."""
from ._builders import generate

generate(globals(), "test_stdio")
