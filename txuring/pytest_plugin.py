"""
pytest plugin (a C{pytest11} entry point): C{pytest --reactor=uring} runs pytest-twisted
tests on L{txuring.reactor.UringReactor}.

pytest-twisted checks C{--reactor} against C{pytest_twisted.reactor_installers} when it
declares the option, before any conftest.py is read; so this module registers the
installer at import and, if pytest-twisted declared its option first, widens the
option's choices.
"""

try:
    import pytest_twisted
except ImportError:  # pytest-twisted not installed: nothing to extend
    pytest_twisted = None


def init_uring_reactor():
    """Install UringReactor as the global reactor and start pytest-twisted's greenlet."""
    from txuring import reactor as uring

    pytest_twisted._install_reactor(
        reactor_installer=uring.install, reactor_type=uring.UringReactor
    )


if pytest_twisted is not None:
    pytest_twisted.reactor_installers.setdefault("uring", init_uring_reactor)


def pytest_addoption(parser):
    if pytest_twisted is None:
        return
    for group in getattr(parser, "_groups", []):
        for option in group.options:
            if "--reactor" in option.names():
                choices = option._attrs.get("choices")
                if choices is not None and "uring" not in choices:
                    option._attrs["choices"] = tuple(choices) + ("uring",)
