"""
Review 8c: hostile use of txuring.leanfile (the lean read_file, statx and pread of
txuring.fs), each test failing before its fix. Driven by hand on a Ring, as
tests/test_leanfile.py does (its fixture checks that no fd is left open).
"""

import errno
import os

import pytest

from txuring import errors, fs, leanfile
from txuring._core import lib

from ringutil import drive_until, settle, wait_cqes
from test_leanfile import LIMIT, open_fds, result, ring, start  # noqa: F401 (fixture)


# ---- arguments cffi would refuse only once the op is in the ring's table ----


@pytest.mark.parametrize("call", [
    lambda ring, ops: ops.fstat(2 ** 40),
    lambda ring, ops: ops.fstat("3"),
    lambda ring, ops: ops.stat("x", True, 2 ** 40),
    lambda ring, ops: ops.stat("x", True, "3"),
    lambda ring, ops: leanfile.pread(ring, 2 ** 40, bytearray(4), 0),
    lambda ring, ops: leanfile.pread(ring, -5, bytearray(4), 0),
], ids=["fstat-huge-fd", "fstat-str-fd", "stat-huge-dir_fd", "stat-str-dir_fd",
        "pread-huge-fd", "pread-negative-fd"])
def test_a_bad_fd_raises_at_the_call_and_leaves_nothing_in_flight(ring, call):
    # Before: cffi's OverflowError/TypeError came after the record had entered the
    # ring's table, with no SQE: active_ops stayed 1 for ever (drain never fired,
    # exit() raised RingBusy, FileSystem's shutdown waited its whole timeout).
    ops = fs.RingOps(ring, None)
    with pytest.raises(ValueError):
        call(ring, ops)
    assert ring.active_ops == 0
    ring.exit()  # (no RingBusy)


@pytest.mark.parametrize("how", ["stat", "read_file"])
def test_a_nul_byte_in_the_path_is_refused_not_cut_short(ring, tmp_path, how):
    # Before: cffi copied the whole bytes and the kernel read up to the NUL: stat and
    # read_file of "<file>\0junk" answered for <file>.
    p = tmp_path / "f"
    p.write_bytes(b"secret")
    evil = str(p) + "\0junk"
    with pytest.raises(ValueError, match="NUL"):
        if how == "stat":
            fs.RingOps(ring, None).stat(evil)
        else:
            start(ring, evil)
    assert ring.active_ops == 0
