"""
Twisted's own reactor conformance suite, generated for UringReactor and, as the
control, EPollReactor.

Each C{test_X.py} here is one line that calls L{generate} for the Twisted module
C{twisted.internet.test.test_X}. Twisted's modules build their test classes at import
with C{globals().update(SomeBuilder.makeTestCaseClasses())}: one
C{<Builder>_<ReactorClass>Tests} class per builder and reactor. L{generate} finds those
builders (the ReactorBuilder base of every class Twisted generated, so exactly the set
Twisted itself runs), subclasses each with our own C{_reactors}, and generates the test
classes into the calling module.

These are trial TestCases; pytest collects them. Run each module in its own process
(see C{tests/test_conformance.py}): a failing cleanup in one Twisted module can leave
the global reactor swapped and break every later one. A plain top-level C{pytest} run
does not collect this directory (see C{tests/conftest.py}); name a file here to run it.
"""

import importlib

from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.trial.unittest import SkipTest, SynchronousTestCase

URING = "txuring.reactor.UringReactor"
EPOLL = "twisted.internet.epollreactor.EPollReactor"

#: The reactors every builder is generated for: ours, and epoll as the control.
REACTORS = [URING, EPOLL]

#: Tests that cannot pass on UringReactor, with the reason a reviewer would accept,
#: keyed by (builder class name, test method name). Each becomes a skip on UringReactor
#: only (EPollReactor still runs Twisted's method); tests/test_conformance.py accepts a
#: skip on UringReactor alone only if it is listed here.
#:
#: Empty today. Note on ReactorFDSetTestsBuilder.test_lostFileDescriptor, which Twisted
#: skips for EPollReactor by class name: it passes on UringReactor, but only because
#: the reactor queues SQEs and submits them at the next io_uring_enter. The test calls
#: addReader before run() and swaps the fd (close + dup2 of a socket with data) in a
#: callLater(0), which runs before the first enter; the kernel then resolves the fd
#: number to the new socket, reports it readable, and _doReadOrWrite sees the old
#: selectable's fileno() == -1 and disconnects it. Once a poll is in the kernel it
#: holds its own reference to the old file and, as on epoll, the swap goes unnoticed
#: (tests/test_reactor_faults.py shows both cases). If the reactor ever submits
#: eagerly, this test will hang until trial's timeout: skip it here then, with that
#: reason.
URING_SKIPS = {}


def builders_of(module):
    """
    The L{ReactorBuilder} subclasses that C{module} generated test classes from, in
    the order Twisted generated them, leaving out the builders meant only for other
    reactors (their own C{_reactors} does not list EPollReactor: C{test_time}'s
    C{GlibTimeTestsBuilder} is for GIReactor only and needs PyGObject).
    """
    found = []
    for obj in vars(module).values():
        if not isinstance(obj, type):
            continue
        bases = obj.__bases__
        # makeTestCaseClasses makes `class testcase(cls, SynchronousTestCase)`.
        if (len(bases) == 2 and bases[1] is SynchronousTestCase
                and isinstance(bases[0], type) and issubclass(bases[0], ReactorBuilder)
                and EPOLL in bases[0]._reactors and bases[0] not in found):
            found.append(bases[0])
    return found


def _skipped(reason):
    def test(self):
        raise SkipTest(reason)

    return test


def generate(namespace, twisted_module, reactors=REACTORS):
    """
    Generate the test classes of Twisted's C{twisted.internet.test.<twisted_module>} for
    C{reactors} into C{namespace} (a test module's C{globals()}).
    """
    module = importlib.import_module("twisted.internet.test." + twisted_module)
    builders = builders_of(module)
    if not builders:
        raise RuntimeError("no ReactorBuilder found in %s" % (module.__name__,))
    for builder in builders:
        sub = type(builder.__name__, (builder,), {
            "_reactors": list(reactors),
            "__module__": namespace["__name__"],
            "__qualname__": builder.__name__,
            "__doc__": builder.__doc__,
        })
        classes = sub.makeTestCaseClasses()
        for name, cls in classes.items():
            if name.endswith("_UringReactorTests"):
                for (builder_name, method), reason in URING_SKIPS.items():
                    if builder_name == builder.__name__ and hasattr(cls, method):
                        setattr(cls, method, _skipped(reason))
        namespace.update(classes)
