"""
Ring creation: the C{io_uring_setup(2)} flags txuring asks for, the order it falls back
in, the queue sizes the kernel accepts, and the errors that name why a setup failed.

Why a negotiation at all: the best flags (C{SINGLE_ISSUER|DEFER_TASKRUN}, 6.1) are
refused with EINVAL by older kernels, and users run anything from 5.10 up. EINVAL means
"flags too new": try the next set. Any other error (EPERM from seccomp, ENOMEM from
RLIMIT_MEMLOCK) is the answer, named with its cause and remedy.
"""

import errno

from txuring import errors
from txuring._core import lib

# io_uring_setup flags (include/uapi/linux/io_uring.h)
SETUP_SQPOLL = 1 << 1  # 5.1: a kernel thread polls the SQ
SETUP_CQSIZE = 1 << 3  # 5.5
SETUP_R_DISABLED = 1 << 6  # 5.10: start disabled, enable with REGISTER_ENABLE_RINGS
SETUP_SUBMIT_ALL = 1 << 7  # 5.18
SETUP_COOP_TASKRUN = 1 << 8  # 5.19: no IPI to run task work
SETUP_TASKRUN_FLAG = 1 << 9  # 5.19
SETUP_SINGLE_ISSUER = 1 << 12  # 6.0: one task submits
SETUP_DEFER_TASKRUN = 1 << 13  # 6.1: task work runs only when the owner enters

SETUP_FLAG_NAMES = {
    SETUP_SQPOLL: "SQPOLL",
    SETUP_R_DISABLED: "R_DISABLED",
    SETUP_SUBMIT_ALL: "SUBMIT_ALL",
    SETUP_COOP_TASKRUN: "COOP_TASKRUN",
    SETUP_TASKRUN_FLAG: "TASKRUN_FLAG",
    SETUP_SINGLE_ISSUER: "SINGLE_ISSUER",
    SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
}

#: The setup flag sets tried in order, best first. TASKRUN_FLAG makes the kernel flag
#: pending task work in the SQ ring, so an idle zero-timeout wait can skip
#: io_uring_enter (accepted with DEFER_TASKRUN since 6.1).
SETUP_CHAIN = {
    "defer_taskrun": SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN | SETUP_TASKRUN_FLAG
    | SETUP_SUBMIT_ALL,
    "coop_taskrun": SETUP_COOP_TASKRUN | SETUP_TASKRUN_FLAG | SETUP_SUBMIT_ALL,
    "plain": 0,
}

FEAT_EXT_ARG = 1 << 8  # 5.11: io_uring_enter takes a timeout (struct io_uring_getevents_arg)

#: IORING_MAX_ENTRIES: the largest SQ the kernel makes.
MAX_SQ_ENTRIES = 32768
#: IORING_MAX_CQ_ENTRIES (2 x IORING_MAX_ENTRIES): the largest CQ; more is EINVAL.
MAX_CQ_ENTRIES = 2 * MAX_SQ_ENTRIES


def cq_entries_for(queue_depth, cq_depth):
    """
    The CQ size to ask for: C{cq_depth} if given (checked against the kernel's limits),
    else 4x the SQ (at least 256) so bursts of completions fit, capped at the kernel's
    maximum.
    """
    if cq_depth is None:
        return min(max(256, 4 * queue_depth), MAX_CQ_ENTRIES)
    if not isinstance(cq_depth, int) or not queue_depth <= cq_depth <= MAX_CQ_ENTRIES:
        raise ValueError(
            "cq_depth must be an int from queue_depth (%d) to %d (IORING_MAX_CQ_ENTRIES, "
            "the kernel's limit), not %r" % (queue_depth, MAX_CQ_ENTRIES, cq_depth))
    return cq_depth


def create(r, queue_depth, cq_entries, setup, start_disabled, polling_timeout):
    """
    Set up ring C{r} (a C{struct txu_ring *}), trying the flag sets of C{setup}
    (C{"auto"}: the whole chain) in order. Raises what the kernel's refusal means.
    """
    base = SETUP_R_DISABLED if start_disabled else 0
    idle = 0
    if polling_timeout is not None:
        # DEFER_TASKRUN needs a task that enters the kernel: not with SQPOLL.
        chain = [SETUP_SQPOLL]
        idle = polling_timeout
    elif setup == "auto":
        chain = list(SETUP_CHAIN.values())
    else:
        chain = [SETUP_CHAIN[setup]]
    err = 0
    for flags in chain:
        err = lib.txu_setup(r, queue_depth, cq_entries, base | flags, idle)
        if err == 0:
            return
        if err != -errno.EINVAL:
            break  # EINVAL: these flags are too new for the kernel; try the next
    reason = errors.explain_setup_errno(-err)
    if reason is not None:
        raise errors.UringUnavailable(-err, reason)
    if err == -errno.ENOMEM:
        # Not "unavailable": a resource limit, named so it can be raised.
        raise OSError(errno.ENOMEM,
                      "io_uring_setup: not enough memory for a ring of %d entries. "
                      "Ring memory counts against RLIMIT_MEMLOCK (ulimit -l) for "
                      "processes without CAP_IPC_LOCK before Linux 5.12 and again "
                      "since 6.13, and against the memory cgroup in between: raise "
                      "the limit, or ask for a smaller queue_depth" % (queue_depth,))
    raise errors.error_of_errno(err)
