"""The probe: which ops the kernel has, and the error an absent op gives."""

import socket

import pytest

import txuring
from txuring.opcode import OPCODES


def test_probe_lists_what_this_kernel_has():
    with txuring.Ring(4) as ring:
        names = ring.get_probe()
        assert "nop" in names and "read" in names
        assert set(names) <= set(OPCODES)
        for name in names:
            assert ring.op_supported(name)
        assert ring.op_supported(OPCODES["read"].opcode)
        with pytest.raises(ValueError, match="unknown io_uring operation"):
            ring.op_supported("teleport")


def test_an_op_the_kernel_lacks_names_itself_and_the_version_it_needs():
    with txuring.Ring(4) as ring:
        # As on a 6.6 kernel, which has neither bind nor listen (6.11).
        ring._ops_ok = ring._ops_ok - {"bind", "listen"}
        with socket.socket() as s:
            with pytest.raises(txuring.OpNotSupported) as caught:
                ring.bind(s.fileno(), socket.AF_INET, ("127.0.0.1", 0))
        assert caught.value.op == "bind"
        assert caught.value.since == "6.11"
        assert "'bind'" in str(caught.value) and "Linux 6.11" in str(caught.value)
        assert ring.active_ops == 0


def test_iowq_worker_limits_are_set_and_reported_back():
    with txuring.Ring(4) as ring:
        ring.set_iowq_max_workers(3, 5)
        assert ring.set_iowq_max_workers(0, 0) == (3, 5)  # 0 reads without changing
