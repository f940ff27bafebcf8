"""
Run a command with io_uring refused, as Docker's default seccomp profile does:

    python tests/seccomp_exec.py ERRNO COMMAND [ARGS...]

installs a seccomp filter under which io_uring_setup(2) fails with ERRNO, then execs
COMMAND (filters are inherited across execve once PR_SET_NO_NEW_PRIVS is set). Exits 3
without running COMMAND if the filter cannot be installed; x86_64 only (the filter
names the syscall by its x86_64 number).
"""

import ctypes
import os
import sys

BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
NR_IO_URING_SETUP = 425
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refuse_io_uring_setup(err):
    """Install the filter in this process; returns 0 or the errno prctl gave."""
    prog = [
        SockFilter(BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        SockFilter(BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),  # another arch: allow
        SockFilter(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        SockFilter(BPF_JEQ_K, 0, 1, NR_IO_URING_SETUP),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | err),
        SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    libc = ctypes.CDLL(None, use_errno=True)
    program = (SockFilter * len(prog))(*prog)
    fprog = SockFprog(len(prog), program)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return ctypes.get_errno()
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        return ctypes.get_errno()
    return 0


if __name__ == "__main__":
    failed = refuse_io_uring_setup(int(sys.argv[1]))
    if failed:
        print("NOSECCOMP %d" % (failed,))
        sys.exit(3)
    os.execvp(sys.argv[2], sys.argv[2:])
