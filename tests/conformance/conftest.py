"""Fixtures for Twisted's reactor conformance suite (see _builders.py)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def scratch_working_directory(tmp_path_factory):
    """
    Twisted's tests make temporary files and directories in the working directory
    (trial runs them in _trial_temp): run them in a scratch directory, not wherever
    pytest was started.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
