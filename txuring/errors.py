"""
Exceptions txuring raises, and the mapping of a kernel C{-errno} to Python's.

The kernel reports an op's failure as a negative errno in the CQE. L{error_of_errno}
turns it into C{OSError(errno, strerror, filename)}, so Python picks the subclass users
already catch (C{FileNotFoundError}, C{ConnectionRefusedError}, ...).
"""

import errno
import os


def error_of_errno(err, filename=None, filename2=None):
    """
    The exception for a kernel error number (positive or negative).

    @param err: C{errno} value, as the CQE's C{res} (negative) or positive.
    @param filename: the path a path operation worked on, shown in the message.
    @return: an L{OSError} of the subclass Python picks for that errno.
    """
    err = abs(err)
    if filename2 is not None:
        return OSError(err, os.strerror(err), filename, None, filename2)
    if filename is not None:
        return OSError(err, os.strerror(err), filename)
    return OSError(err, os.strerror(err))


class UringUnavailable(OSError):
    """
    io_uring cannot be used here: the kernel lacks it, a sysctl disables it, or a
    seccomp filter (Docker's default profile, for one) refuses its system calls.
    The message names the cause and the way out; C{errno} is what the kernel said.
    """


def explain_setup_errno(err):
    """
    A sentence naming why C{io_uring_setup} failed with C{err} and what to do about
    it, or None when C{err} is an ordinary resource error the caller should see as is.
    """
    if err == errno.ENOSYS:
        return (
            "io_uring is not available: this kernel was built without io_uring "
            "(CONFIG_IO_URING) or is older than 5.1, or a seccomp filter answers ENOSYS. "
            "txuring needs Linux 5.10 or newer with io_uring enabled."
        )
    if err == errno.EPERM:
        disabled = _read_sysctl("/proc/sys/kernel/io_uring_disabled")
        if disabled == "2":
            return (
                "io_uring is disabled on this machine by the sysctl "
                "kernel.io_uring_disabled=2; set it to 0 (sysctl -w "
                "kernel.io_uring_disabled=0) to use txuring."
            )
        if disabled == "1":
            group = _read_sysctl("/proc/sys/kernel/io_uring_group") or "?"
            return (
                "io_uring is restricted by the sysctl kernel.io_uring_disabled=1 to "
                "processes with CAP_SYS_ADMIN or in group id %s (kernel.io_uring_group); "
                "add this user to that group or set the sysctl to 0." % (group,)
            )
        return (
            "io_uring_setup was refused with EPERM, most likely by a seccomp filter "
            "(Docker's and Podman's default profiles deny io_uring): run the container "
            "with a profile that allows io_uring_setup, io_uring_enter and "
            "io_uring_register, or use another reactor."
        )
    return None


def _read_sysctl(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class RingClosed(RuntimeError):
    """The ring was closed with L{Ring.exit}; make a new Ring to go on."""


class RingForked(RuntimeError):
    """
    This process is a fork of the one that made the ring. The ring's memory is shared
    with the parent, so the child must never touch it: make a new Ring in the child.
    """


class RingBusy(RuntimeError):
    """The ring still has operations in flight; see L{Ring.drain}."""


class OpNotSupported(NotImplementedError):
    """
    The running kernel does not have an io_uring operation (found by the probe).

    @ivar op: the operation's name.
    @ivar since: the first kernel version that has it.
    """

    def __init__(self, op, since):
        self.op = op
        self.since = since
        NotImplementedError.__init__(
            self,
            "io_uring operation %r is not supported by this kernel (%s); it needs "
            "Linux %s or newer" % (op, os.uname().release, since),
        )


class NoSpace(Exception):
    """No free chunk is left in a L{Region}; free one or use L{Region.alloc_or_wait}."""


class FixedBufferUnavailable(OSError):
    """
    A fixed buffer could not be registered (pinned) with the kernel. Since Linux 5.12
    registered buffers count against RLIMIT_MEMLOCK (C{ulimit -l}) unless the process
    has CAP_IPC_LOCK.
    """
