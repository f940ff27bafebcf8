"""
Where io_uring cannot be used, importing txuring.reactor raises ImportError naming the
cause: twistd shows the reactor as unavailable with that reason, and install() is
never reached. Tested for real, behind a seccomp filter that refuses io_uring_setup.
"""

import errno
import os
import platform
import subprocess
import sys

import pytest

SECCOMP_EXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_exec.py")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def refused(*command):
    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter is written for x86_64 syscall numbers")
    proc = subprocess.run([sys.executable, SECCOMP_EXEC, str(errno.EPERM), *command],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 3 and proc.stdout.startswith("NOSECCOMP"):
        pytest.skip("cannot install a seccomp filter here: %s" % (proc.stdout,))
    return proc


def test_twistd_lists_uring_as_unavailable_with_the_reason():
    proc = refused(TWISTD, "--help-reactors")
    lines = [line for line in proc.stdout.splitlines() if "uring" in line]
    assert lines, proc.stdout + proc.stderr
    assert lines[0].lstrip().startswith("!uring"), lines
    assert "seccomp" in lines[0], lines


def test_import_and_install_raise_importerror_naming_the_cause():
    code = (
        "try:\n"
        "    from txuring import reactor\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n"
        "else:\n"
        "    print('IMPORTED')\n"
    )
    proc = refused(sys.executable, "-c", code)
    assert "IMPORTERROR" in proc.stdout, proc.stdout + proc.stderr
    assert "seccomp" in proc.stdout


def test_twistd_refuses_to_run_on_uring_with_the_reason(tmp_path):
    proc = refused(TWISTD, "-n", "--pidfile=", "--reactor=uring", "web", "--listen",
                   "tcp:0")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "uring" in out and "seccomp" in out, out


def test_twistd_lists_uring_as_available_here():
    proc = subprocess.run([TWISTD, "--help-reactors"], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in proc.stdout.splitlines() if "uring" in line]
    assert lines and lines[0].lstrip().startswith("uring"), proc.stdout


_WHICH_REACTOR = '''
from twisted.trial import unittest


class WhichReactor(unittest.TestCase):
    def test_reactor_is_uring(self):
        from twisted.internet import reactor
        self.assertEqual(type(reactor).__name__, "UringReactor")
'''


def _runner_module(tmp_path):
    (tmp_path / "test_which_reactor.py").write_text(_WHICH_REACTOR)
    return tmp_path


def test_pytest_reactor_uring_installs_uringreactor(tmp_path):
    where = _runner_module(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--reactor=uring", "test_which_reactor.py"],
        cwd=where, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_trial_reactor_uring_installs_uringreactor(tmp_path):
    where = _runner_module(tmp_path)
    trial = os.path.join(os.path.dirname(sys.executable), "trial")
    proc = subprocess.run([trial, "--reactor=uring", "test_which_reactor"], cwd=where,
                          env=dict(os.environ, PYTHONPATH=str(where)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout
