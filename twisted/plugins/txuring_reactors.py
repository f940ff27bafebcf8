"""
Makes C{--reactor=uring} known to twistd and trial.

This directory is a namespace shared with Twisted: it must never get an __init__.py.
"""

from twisted.application.reactors import Reactor

uring = Reactor(
    "uring",
    "txuring.reactor",
    "io_uring-based reactor (Linux 5.10+): one io_uring_enter per loop iteration",
)
