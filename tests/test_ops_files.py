"""
Every file operation of L{txuring.Ring}, checked against the C{os} module's answer on
real files, directories and pipes in C{tmp_path}.
"""

import errno
import os
import stat

import pytest
import pytest_twisted

import txuring
from txuring.opcode import RENAME_EXCHANGE, RENAME_NOREPLACE, RESOLVE_BENEATH

from conftest import open_fds


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def _need(ring, op):
    if not ring.op_supported(op):
        pytest.skip("this kernel lacks io_uring op %r" % (op,))


# ---- openat2 and close ----


@pytest_twisted.inlineCallbacks
def test_openat2_creates_with_flags_and_mode(ring, tmp_path):
    path = tmp_path / "new"
    fd = yield ring.syscall_result(
        ring.openat2(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    try:
        st = os.fstat(fd)
        assert st.st_ino == os.stat(path).st_ino
        assert stat.S_IMODE(st.st_mode) == 0o640 & ~_umask()
        assert not os.get_inheritable(fd)  # O_CLOEXEC added, as os.open does
        assert fcntl_flags(fd) & os.O_ACCMODE == os.O_WRONLY
        os.write(fd, b"abc")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abc"
    # O_EXCL on an existing file: the same error os.open gives.
    with pytest.raises(FileExistsError) as info:
        yield ring.syscall_result(ring.openat2(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                               0o600))
    assert info.value.errno == errno.EEXIST
    assert info.value.filename == path


def fcntl_flags(fd):
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


@pytest_twisted.inlineCallbacks
def test_openat2_read_only_and_append(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    fd = yield ring.syscall_result(ring.openat2(str(path)))
    try:
        with pytest.raises(OSError) as info:
            os.write(fd, b"x")
        assert info.value.errno == errno.EBADF
        assert os.read(fd, 10) == b"hello"
    finally:
        os.close(fd)
    fd = yield ring.syscall_result(ring.openat2(os.fsencode(path), os.O_WRONLY | os.O_APPEND))
    try:
        assert fcntl_flags(fd) & os.O_APPEND
        os.write(fd, b" world")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"hello world"


@pytest_twisted.inlineCallbacks
def test_openat2_missing_file_is_file_not_found_with_filename(ring, tmp_path):
    path = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as info:
        yield ring.syscall_result(ring.openat2(path))
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == path
    assert path in str(info.value)


@pytest_twisted.inlineCallbacks
def test_openat2_resolve_beneath(ring, tmp_path):
    (tmp_path / "outside").write_bytes(b"secret")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "inside").write_bytes(b"ok")
    dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # os.open would follow "../" happily; RESOLVE_BENEATH refuses it with EXDEV.
        os.close(os.open("../outside", os.O_RDONLY, dir_fd=dfd))
        with pytest.raises(OSError) as info:
            yield ring.syscall_result(
                ring.openat2("../outside", resolve=RESOLVE_BENEATH, dir_fd=dfd))
        assert info.value.errno == errno.EXDEV
        assert info.value.filename == "../outside"
        fd = yield ring.syscall_result(
            ring.openat2("inside", resolve=RESOLVE_BENEATH, dir_fd=dfd))
        assert os.read(fd, 10) == b"ok"
        os.close(fd)
    finally:
        os.close(dfd)


def test_openat2_unknown_resolve_flags_refused(ring, tmp_path):
    with pytest.raises(ValueError):
        ring.openat2(tmp_path, resolve=0x4000)
    assert ring.active_ops == 0


@pytest_twisted.inlineCallbacks
def test_close(ring, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    res = yield ring.syscall_result(ring.close(fd))
    assert res == 0
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    # Closing it again: EBADF, as os.close says.
    with pytest.raises(OSError) as info:
        yield ring.syscall_result(ring.close(fd))
    assert info.value.errno == errno.EBADF


# ---- read / write ----


@pytest_twisted.inlineCallbacks
def test_write_and_read_at_explicit_offsets(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(100))
    fd = os.open(path, os.O_RDWR)
    try:
        n = yield ring.syscall_result(ring.write(fd, b"0123456789", offset=40))
        assert n == 10
        assert os.pread(fd, 20, 35) == bytes(5) + b"0123456789" + bytes(5)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pwrite: the position did not move
        # nbytes: only part of the buffer.
        n = yield ring.syscall_result(ring.write(fd, memoryview(b"abcdef"), offset=0,
                                                 nbytes=3))
        assert n == 3
        buf = bytearray(20)
        n = yield ring.syscall_result(ring.read(fd, buf, offset=38))
        assert n == 20
        assert bytes(buf) == os.pread(fd, 20, 38)
        # Read at EOF: 0, as os.pread.
        n = yield ring.syscall_result(ring.read(fd, buf, offset=100))
        assert n == 0 == len(os.pread(fd, 20, 100))
        # A short read at the end.
        n = yield ring.syscall_result(ring.read(fd, buf, offset=95))
        assert bytes(buf[:n]) == os.pread(fd, 20, 95) and n == 5
    finally:
        os.close(fd)
    assert path.read_bytes()[:3] == b"abc"


@pytest_twisted.inlineCallbacks
def test_read_and_write_at_current_position(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        for part in (b"one ", b"two ", b"three"):
            n = yield ring.syscall_result(ring.write(fd, part, offset=-1))
            assert n == len(part)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 13
        assert path.read_bytes() == b"one two three"
        os.lseek(fd, 4, os.SEEK_SET)
        buf = bytearray(4)
        n = yield ring.syscall_result(ring.read(fd, buf))  # default: current position
        assert (n, bytes(buf)) == (4, b"two ")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 8
        n = yield ring.syscall_result(ring.read(fd, buf, -1))
        assert bytes(buf[:n]) == b"thre"
    finally:
        os.close(fd)


@pytest_twisted.inlineCallbacks
def test_read_into_memoryview_slice_and_array(ring, tmp_path):
    import array

    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)))
    fd = os.open(path, os.O_RDONLY)
    try:
        big = bytearray(b"x" * 20)
        n = yield ring.syscall_result(ring.read(fd, memoryview(big)[5:15], offset=100))
        assert n == 10
        assert big == b"x" * 5 + bytes(range(100, 110)) + b"x" * 5
        arr = array.array("B", bytes(8))
        n = yield ring.syscall_result(ring.read(fd, arr, offset=0))
        assert arr.tobytes() == bytes(range(8))
    finally:
        os.close(fd)


@pytest_twisted.inlineCallbacks
def test_readv_writev(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        n = yield ring.syscall_result(ring.writev(fd, [b"abc", bytearray(b"defg"),
                                                      memoryview(b"hi")], offset=0))
        assert n == 9
        assert os.pread(fd, 100, 0) == b"abcdefghi"
        # Current position (-1): two writev appended, position advanced.
        n = yield ring.syscall_result(ring.writev(fd, [b"12", b"34"]))
        n += yield ring.syscall_result(ring.writev(fd, [b"56"], offset=-1))
        assert n == 6
        assert os.pread(fd, 100, 0) == b"123456ghi"
        bufs = [bytearray(2), bytearray(3), bytearray(10)]
        n = yield ring.syscall_result(ring.readv(fd, bufs, offset=1))
        assert n == 8
        assert b"".join(bufs)[:n] == os.pread(fd, 100, 1)
        assert os.readv(fd, [bytearray(1)]) == 1  # position is 6 after the writevs
        os.lseek(fd, 0, os.SEEK_SET)
        bufs = [bytearray(4), bytearray(4)]
        n = yield ring.syscall_result(ring.readv(fd, bufs, -1))
        assert bufs == [b"1234", b"56gh"]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 8
    finally:
        os.close(fd)


@pytest_twisted.inlineCallbacks
def test_read_fixed_write_fixed_through_region_chunks(ring, tmp_path):
    region = txuring.Region(ring, 4, 4096)
    assert region.fixed  # root (CAP_IPC_LOCK) can always pin 16 KiB
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    a, b = region.alloc(), region.alloc()
    try:
        data = os.urandom(4096)
        a.memoryview()[:] = data
        n = yield ring.syscall_result(ring.write_fixed(fd, a, offset=0))
        assert n == 4096
        n = yield ring.syscall_result(ring.write_chunk(fd, a, offset=4096 + 10, nbytes=100))
        assert n == 100
        assert os.pread(fd, 4096, 0) == data
        assert os.pread(fd, 200, 4096) == bytes(10) + data[:100]
        n = yield ring.syscall_result(ring.read_fixed(fd, b, offset=4096 + 10, nbytes=100))
        assert n == 100
        assert b.bytes(100) == data[:100]
        n = yield ring.syscall_result(ring.read_chunk(fd, b, offset=0))
        assert n == 4096 and b.bytes() == data
        os.lseek(fd, 1000, os.SEEK_SET)
        n = yield ring.syscall_result(ring.read_fixed(fd, b, offset=-1, nbytes=10))
        assert b.bytes(10) == data[1000:1010]
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1010
        with pytest.raises(ValueError):
            ring.read_fixed(fd, b, nbytes=4097)
    finally:
        os.close(fd)
        a.free()
        b.free()
        region.close()


# ---- statx ----


def _same_stat(sx, st):
    assert sx.st_size == st.st_size
    assert sx.st_mode == st.st_mode
    assert sx.st_ino == st.st_ino
    assert sx.st_dev == st.st_dev
    assert sx.st_nlink == st.st_nlink
    assert sx.st_uid == st.st_uid and sx.st_gid == st.st_gid
    assert sx.st_mtime_ns == st.st_mtime_ns
    assert sx.st_ctime_ns == st.st_ctime_ns
    assert sx.st_blocks == st.st_blocks
    assert abs(sx.st_mtime - st.st_mtime) < 1e-6


@pytest_twisted.inlineCallbacks
def test_statx_matches_os_stat(ring, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 12345)
    os.chmod(path, 0o604)
    os.utime(path, ns=(1_000_000_123, 1_234_567_891_011))
    os.link(path, tmp_path / "second-name")
    sx = yield ring.syscall_result(ring.statx(path))
    st = os.stat(path)
    _same_stat(sx, st)
    assert sx.st_nlink == 2
    assert sx.st_mtime_ns == 1_234_567_891_011
    assert sx.is_file() and not sx.is_dir()
    d = yield ring.syscall_result(ring.statx(tmp_path))
    _same_stat(d, os.stat(tmp_path))
    assert d.is_dir()


@pytest_twisted.inlineCallbacks
def test_statx_symlink_follow_or_not_and_fstat(ring, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"abc")
    link = tmp_path / "link"
    os.symlink("target", link)
    followed = yield ring.syscall_result(ring.statx(link))
    _same_stat(followed, os.stat(link))
    assert followed.is_file()
    lst = yield ring.syscall_result(ring.statx(link, follow_symlinks=False))
    _same_stat(lst, os.lstat(link))
    assert lst.is_symlink()
    fd = os.open(target, os.O_RDONLY)
    try:
        fst = yield ring.syscall_result(ring.fstat(fd))
        _same_stat(fst, os.fstat(fd))
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError) as info:
        yield ring.syscall_result(ring.statx(tmp_path / "nope"))
    assert info.value.filename == tmp_path / "nope"


@pytest_twisted.inlineCallbacks
def test_statx_with_dir_fd(ring, tmp_path):
    (tmp_path / "t").write_bytes(b"12")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sx = yield ring.syscall_result(ring.statx("t", dir_fd=dfd))
        _same_stat(sx, os.stat("t", dir_fd=dfd))
    finally:
        os.close(dfd)


# ---- directory entries ----


@pytest_twisted.inlineCallbacks
def test_linkat(ring, tmp_path):
    _need(ring, "linkat")
    src = tmp_path / "src"
    src.write_bytes(b"data")
    res = yield ring.syscall_result(ring.linkat(src, tmp_path / "dst"))
    assert res == 0
    assert os.stat(tmp_path / "dst").st_ino == os.stat(src).st_ino
    assert os.stat(src).st_nlink == 2
    with pytest.raises(FileExistsError) as info:
        yield ring.syscall_result(ring.linkat(src, tmp_path / "dst"))
    assert info.value.filename == src
    assert info.value.filename2 == tmp_path / "dst"
    # With dir fds and relative names.
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield ring.syscall_result(ring.linkat("src", "dst2", old_dir_fd=dfd, new_dir_fd=dfd))
    finally:
        os.close(dfd)
    assert os.stat(src).st_nlink == 3
    # follow_symlinks: a link to a symlink's target, not to the symlink.
    os.symlink("src", tmp_path / "sym")
    yield ring.syscall_result(ring.linkat(tmp_path / "sym", tmp_path / "hard-nofollow"))
    assert os.path.islink(tmp_path / "hard-nofollow")
    yield ring.syscall_result(ring.linkat(tmp_path / "sym", tmp_path / "hard-follow",
                                          follow_symlinks=True))
    assert os.stat(tmp_path / "hard-follow", follow_symlinks=False).st_ino == \
        os.stat(src).st_ino


@pytest_twisted.inlineCallbacks
def test_unlinkat_file_and_directory(ring, tmp_path):
    _need(ring, "unlinkat")
    f = tmp_path / "f"
    f.write_bytes(b"")
    d = tmp_path / "d"
    d.mkdir()
    # unlink of a directory: EISDIR, as os.unlink says on Linux.
    with pytest.raises(IsADirectoryError):
        yield ring.syscall_result(ring.unlinkat(d))
    res = yield ring.syscall_result(ring.unlinkat(f))
    assert res == 0 and not f.exists()
    with pytest.raises(FileNotFoundError) as info:
        yield ring.syscall_result(ring.unlink(f))
    assert info.value.filename == f
    (d / "inner").write_bytes(b"")
    with pytest.raises(OSError) as info:
        yield ring.syscall_result(ring.rmdir(d))
    assert info.value.errno == errno.ENOTEMPTY
    os.unlink(d / "inner")
    res = yield ring.syscall_result(ring.unlinkat(d, rmdir=True))
    assert res == 0 and not d.exists()
    # rmdir of a file: ENOTDIR, as os.rmdir says.
    f.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        yield ring.syscall_result(ring.rmdir(f))
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield ring.syscall_result(ring.unlink("f", dir_fd=dfd))
    finally:
        os.close(dfd)
    assert not f.exists()


@pytest_twisted.inlineCallbacks
def test_mkdirat(ring, tmp_path):
    _need(ring, "mkdirat")
    d = tmp_path / "d"
    res = yield ring.syscall_result(ring.mkdirat(d, 0o751))
    assert res == 0
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o751 & ~_umask()
    with pytest.raises(FileExistsError) as info:
        yield ring.syscall_result(ring.mkdirat(d))
    assert info.value.filename == d
    with pytest.raises(FileNotFoundError):
        yield ring.syscall_result(ring.mkdirat(tmp_path / "no" / "parent"))
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield ring.syscall_result(ring.mkdirat("inner", dir_fd=dfd))
    finally:
        os.close(dfd)
    assert os.path.isdir(d / "inner")


@pytest_twisted.inlineCallbacks
def test_renameat(ring, tmp_path):
    _need(ring, "renameat")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    ino = os.stat(a).st_ino
    res = yield ring.syscall_result(ring.renameat(a, c))
    assert res == 0
    assert not a.exists() and os.stat(c).st_ino == ino
    # RENAME_NOREPLACE refuses to replace b.
    with pytest.raises(FileExistsError) as info:
        yield ring.syscall_result(ring.renameat(c, b, flags=RENAME_NOREPLACE))
    assert info.value.filename == c and info.value.filename2 == b
    assert c.read_bytes() == b"A" and b.read_bytes() == b"B"
    # Plain rename replaces, as os.rename.
    yield ring.syscall_result(ring.renameat(c, b))
    assert b.read_bytes() == b"A" and not c.exists()
    # RENAME_EXCHANGE swaps two names.
    a.write_bytes(b"new A")
    yield ring.syscall_result(ring.renameat(a, b, flags=RENAME_EXCHANGE))
    assert a.read_bytes() == b"A" and b.read_bytes() == b"new A"
    with pytest.raises(FileNotFoundError):
        yield ring.syscall_result(ring.renameat(tmp_path / "nope", tmp_path / "x"))
    with pytest.raises(ValueError):
        ring.renameat(a, b, flags=0x100)


@pytest_twisted.inlineCallbacks
def test_symlinkat(ring, tmp_path):
    _need(ring, "symlinkat")
    link = tmp_path / "link"
    res = yield ring.syscall_result(ring.symlinkat("some/where", link))
    assert res == 0
    assert os.readlink(link) == "some/where"
    with pytest.raises(FileExistsError) as info:
        yield ring.syscall_result(ring.symlinkat("x", link))
    assert info.value.filename == link
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield ring.syscall_result(ring.symlinkat("link", "link2", dir_fd=dfd))
    finally:
        os.close(dfd)
    assert os.readlink(tmp_path / "link2") == "link"


# ---- sync and size ----


@pytest_twisted.inlineCallbacks
def test_fsync_and_fdatasync(ring, tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 10000)
        assert (yield ring.syscall_result(ring.fsync(fd))) == 0
        assert (yield ring.syscall_result(ring.fdatasync(fd))) == 0
        assert (yield ring.syscall_result(ring.fsync(fd, offset=4096, length=4096))) == 0
        assert (yield ring.syscall_result(ring.fdatasync(fd, offset=0, length=100))) == 0
    finally:
        os.close(fd)
    # A closed fd: EBADF, as os.fsync says.
    with pytest.raises(OSError) as info:
        yield ring.syscall_result(ring.fsync(fd))
    assert info.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        ring.fsync(0, offset=-1)


@pytest_twisted.inlineCallbacks
def test_fallocate(ring, tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        res = yield ring.syscall_result(ring.fallocate(fd, 0, 1 << 20))
        assert res == 0
        st = os.fstat(fd)
        assert st.st_size == 1 << 20
        assert st.st_blocks * 512 >= 1 << 20
        # FALLOC_FL_KEEP_SIZE (1): blocks without changing the size.
        res = yield ring.syscall_result(ring.fallocate(fd, 1 << 20, 1 << 20, mode=1))
        st = os.fstat(fd)
        assert st.st_size == 1 << 20
        assert st.st_blocks * 512 >= 2 << 20
        assert os.pread(fd, 10, 1000) == bytes(10)
    finally:
        os.close(fd)


@pytest_twisted.inlineCallbacks
def test_ftruncate(ring, tmp_path):
    _need(ring, "ftruncate")
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDWR)
    try:
        assert (yield ring.syscall_result(ring.ftruncate(fd, 4))) == 0
        assert os.fstat(fd).st_size == 4
        assert (yield ring.syscall_result(ring.ftruncate(fd, 8))) == 0
        assert os.pread(fd, 100, 0) == b"0123" + bytes(4)
    finally:
        os.close(fd)
    rfd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            yield ring.syscall_result(ring.ftruncate(rfd, 0))
        assert info.value.errno in (errno.EBADF, errno.EINVAL)  # as os.ftruncate
    finally:
        os.close(rfd)


# ---- pipes ----


@pytest_twisted.inlineCallbacks
def test_splice_file_to_pipe_to_file(ring, tmp_path):
    src = tmp_path / "src"
    data = os.urandom(50000)
    src.write_bytes(data)
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    r, w = os.pipe()
    try:
        n = yield ring.syscall_result(ring.splice(fin, w, 1000, offset_in=100))
        assert n == 1000
        assert os.lseek(fin, 0, os.SEEK_CUR) == 0  # an explicit offset moves nothing
        m = yield ring.syscall_result(ring.splice(r, fout, n, offset_out=10))
        assert m == 1000
        assert os.pread(fout, 2000, 0) == bytes(10) + data[100:1100]
        # -1 offsets: the file position is used and advanced.
        os.lseek(fin, 5, os.SEEK_SET)
        n = yield ring.syscall_result(ring.splice(fin, w, 10))
        assert n == 10 and os.lseek(fin, 0, os.SEEK_CUR) == 15
        assert os.read(r, 100) == data[5:15]
    finally:
        for fd in (fin, fout, r, w):
            os.close(fd)


@pytest_twisted.inlineCallbacks
def test_tee_duplicates_without_consuming(ring):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w1, b"hello tee")
        n = yield ring.syscall_result(ring.tee(r1, w2, 100))
        assert n == 9
        assert os.read(r2, 100) == b"hello tee"
        assert os.read(r1, 100) == b"hello tee"  # still there in the first pipe
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


@pytest_twisted.inlineCallbacks
def test_read_multishot_on_a_pipe_with_a_buffer_ring(ring, reactor):
    _need(ring, "read_multishot")
    from twisted.internet import task

    bufs = txuring.BufferRing(ring, entries=8, buffer_size=64)
    r, w = os.pipe()
    got = []
    ends = []

    def on_cqe(res, flags):
        if res > 0:
            got.append(bufs.take(res, flags))
        else:
            ends.append((res, flags))

    try:
        h = ring.read_multishot(r, bufs, on_cqe)
        d = ring.syscall_result(h)
        expected = b""
        for i in range(20):
            msg = b"message %d;" % i
            os.write(w, msg)
            expected += msg
            # Let the ring see each write (more than the 8 buffers in total).
            while sum(map(len, got)) < len(expected):
                yield task.deferLater(reactor, 0.001, lambda: None)
        assert b"".join(got) == expected
        assert not h.done
        os.close(w)
        w = None
        res = yield d
        assert res == 0  # EOF ends the multishot read
        assert h.done
        assert ends and ends[-1][0] == 0
        assert not ends[-1][1] & 2  # no IORING_CQE_F_MORE on the final CQE
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
        bufs.close()


@pytest_twisted.inlineCallbacks
def test_file_ops_leak_no_fds(ring, tmp_path):
    before = open_fds()
    for i in range(20):
        path = tmp_path / ("f%d" % i)
        fd = yield ring.syscall_result(ring.openat2(path, os.O_RDWR | os.O_CREAT, 0o600))
        assert (yield ring.syscall_result(ring.write(fd, b"abc", 0))) == 3
        assert (yield ring.syscall_result(ring.close(fd))) == 0
        yield ring.syscall_result(ring.unlink(path))
    assert open_fds() == before
