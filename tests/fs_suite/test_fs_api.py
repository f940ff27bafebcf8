"""
txuring.fs against the real kernel and real files, on whichever reactor this process
runs (tests/test_fs_reactors.py runs this module on each; see conftest.py).
"""

import errno
import gc
import io
import os
import pathlib
import shutil
import stat
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError
from twisted.python.filepath import FilePath

from fs_suite.conftest import expected, open_fds, wait_until
from txuring import fs as txfs

ensure = pytest_twisted.ensureDeferred


def reactor():
    from twisted.internet import reactor

    return reactor


def turns(n):
    """A Deferred that fires after n reactor turns (callLater(0) each)."""
    d = defer.succeed(None)
    for _ in range(n):
        d.addCallback(lambda _: task.deferLater(reactor(), 0, lambda: None))
    return d


# ---- where we run ----


def test_runs_on_the_expected_reactor_and_backend(fs):
    want_reactor = expected("TXURING_EXPECT_REACTOR")
    if want_reactor:
        assert type(reactor()).__name__ == want_reactor
    want = expected("TXURING_EXPECT_BACKEND")
    if want:
        assert fs.kind == want, fs.reason
    if fs.kind == "io_uring":
        ring = fs.backend.ring
        if type(reactor()).__name__ == "UringReactor":
            assert ring is reactor().ring and fs.backend.driver is None
        else:
            assert fs.backend.driver is not None and fs.backend.driver.reactor is reactor()
    else:
        assert fs.reason
    want_reason = expected("TXURING_EXPECT_REASON")
    if want_reason:
        assert want_reason in fs.reason, fs.reason


# ---- whole files ----


@ensure
async def test_write_read_append(fs, tmp_path):
    p = tmp_path / "f"
    assert await fs.write_file(p, b"hello ") == 6
    assert await fs.append_file(p, bytearray(b"world")) == 5
    assert await fs.read_file(p) == b"hello world"
    assert await fs.write_file(p, memoryview(b"new")) == 3
    assert p.read_bytes() == b"new"


@ensure
async def test_paths_of_every_kind(fs, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    for path in (str(p), os.fsencode(p), p, FilePath(str(p)), pathlib.PurePath(p)):
        assert await fs.read_file(path) == b"x"
        assert (await fs.stat(path)).st_size == 1
        assert await fs.exists(path)


@ensure
async def test_large_file_round_trip(fs, tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 7)
    p = tmp_path / "big"
    await fs.write_file(p, data)
    assert await fs.read_file(p) == data
    await fs.write_file(p, data, atomic=True)
    assert p.read_bytes() == data


@ensure
async def test_read_file_of_a_proc_file_reads_past_its_zero_size(fs):
    data = await fs.read_file("/proc/self/status")
    assert b"Pid:" in data and len(data) > 100


@ensure
async def test_errors_are_python_oserror_subclasses_with_filenames(fs, tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as e:
        await fs.read_file(missing)
    assert e.value.filename == missing and e.value.errno == errno.ENOENT
    with pytest.raises(IsADirectoryError) as e:
        await fs.read_file(tmp_path)
    assert e.value.filename == str(tmp_path)  # PathLike and FilePath: as str
    with pytest.raises(IsADirectoryError):
        await fs.write_file(tmp_path, b"x")
    with pytest.raises(FileExistsError) as e:
        await fs.mkdir(tmp_path)
    with pytest.raises(NotADirectoryError):
        await fs.stat(str(tmp_path / "f") + "/x") if (tmp_path / "f").write_bytes(b"") \
            is not None else None
    with pytest.raises(FileNotFoundError):
        await fs.stat("")
    with pytest.raises(FileNotFoundError) as e:
        await fs.rename(missing, str(tmp_path / "b"))
    assert e.value.filename == missing
    with pytest.raises(OSError) as e:
        await fs.rmdir(tmp_path / "f")
    assert e.value.errno == errno.ENOTDIR
    with pytest.raises(IsADirectoryError):
        await fs.unlink(tmp_path)


@ensure
async def test_permission_error(fs, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    p = tmp_path / "secret"
    p.write_bytes(b"x")
    p.chmod(0)
    with pytest.raises(PermissionError):
        await fs.read_file(p)


@ensure
async def test_atomic_write_keeps_the_targets_mode_and_leaves_no_temporary(fs, tmp_path):
    p = tmp_path / "conf"
    p.write_bytes(b"old")
    p.chmod(0o600)
    await fs.write_file(p, b"new", atomic=True)
    assert p.read_bytes() == b"new"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["conf"]
    await fs.write_file(tmp_path / "fresh", b"1", atomic=True)
    assert sorted(os.listdir(tmp_path)) == ["conf", "fresh"]


@ensure
async def test_atomic_write_failure_leaves_target_and_no_temporary(fs, tmp_path):
    target = tmp_path / "d"
    target.mkdir()  # rename of a file over a directory fails: EISDIR
    with pytest.raises(IsADirectoryError):
        await fs.write_file(target, b"x", atomic=True)
    assert os.listdir(tmp_path) == ["d"] and os.listdir(target) == []


# ---- metadata and names ----


@ensure
async def test_stat_lstat_exists_symlink_readlink_link(fs, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    st = await fs.stat(p)
    ref = os.stat(p)
    for field in ("st_size", "st_ino", "st_dev", "st_mode", "st_nlink", "st_mtime_ns"):
        assert getattr(st, field) == getattr(ref, field), field
    assert st.is_file() and not st.is_dir()
    await fs.symlink("f", tmp_path / "l")
    assert (await fs.lstat(tmp_path / "l")).is_symlink()
    assert (await fs.stat(tmp_path / "l")).st_ino == ref.st_ino
    assert await fs.readlink(tmp_path / "l") == "f"
    assert await fs.readlink(os.fsencode(tmp_path / "l")) == b"f"
    await fs.link(p, tmp_path / "h")
    assert (await fs.stat(p)).st_nlink == 2
    assert await fs.exists(tmp_path / "h")
    assert not await fs.exists(tmp_path / "nope")
    assert not await fs.exists(str(tmp_path / "f") + "/under-a-file")
    assert not await fs.exists("a\0b")  # as os.path.exists
    (tmp_path / "dangling").symlink_to("nowhere")
    assert not await fs.exists(tmp_path / "dangling")


@ensure
async def test_unlink_rmdir_rename_truncate(fs, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    await fs.truncate(p, 4)
    assert p.read_bytes() == b"0123"
    await fs.truncate(str(p), 100)
    assert p.stat().st_size == 100
    await fs.rename(p, tmp_path / "g")
    assert not p.exists() and (tmp_path / "g").exists()
    await fs.unlink(tmp_path / "g")
    assert not (tmp_path / "g").exists()
    (tmp_path / "d").mkdir()
    await fs.rmdir(tmp_path / "d")
    assert os.listdir(tmp_path) == []


@ensure
async def test_mkdir_parents_exist_ok(fs, tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    with pytest.raises(FileNotFoundError):
        await fs.mkdir(deep)
    await fs.mkdir(deep, parents=True)
    assert deep.is_dir()
    with pytest.raises(FileExistsError):
        await fs.mkdir(deep, parents=True)
    await fs.mkdir(deep, parents=True, exist_ok=True)
    await fs.mkdir(deep, exist_ok=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        await fs.mkdir(tmp_path / "file", exist_ok=True)
    await fs.mkdir(tmp_path / "m", 0o700)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o700 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


@ensure
async def test_listdir(fs, tmp_path):
    for name in ("b", "a", "c"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(await fs.listdir(tmp_path)) == ["a", "b", "c"]
    assert sorted(await fs.listdir(os.fsencode(tmp_path))) == [b"a", b"b", b"c"]
    with pytest.raises(NotADirectoryError):
        await fs.listdir(tmp_path / "a")


# ---- copy_file ----


@ensure
async def test_copy_file_contents_only_as_shutil(fs, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 11)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    src.chmod(0o751)
    assert await fs.copy_file(src, dst) is dst  # as given, as shutil
    assert dst.read_bytes() == data
    shutil.copyfile(src, tmp_path / "ref")
    assert dst.stat().st_mode == (tmp_path / "ref").stat().st_mode
    dst.write_bytes(b"x" * (len(data) * 2))  # longer: truncated
    await fs.copy_file(str(src), str(dst))
    assert dst.read_bytes() == data
    await fs.copy_file(src, tmp_path / "empty-copy") if False else None
    (tmp_path / "empty").write_bytes(b"")
    await fs.copy_file(tmp_path / "empty", tmp_path / "empty2")
    assert (tmp_path / "empty2").read_bytes() == b""


@ensure
async def test_copy_file_refusals_as_shutil(fs, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    with pytest.raises(shutil.SameFileError):
        await fs.copy_file(src, src)
    os.link(src, tmp_path / "hard")
    with pytest.raises(shutil.SameFileError):
        await fs.copy_file(src, tmp_path / "hard")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(shutil.SpecialFileError):
        await fs.copy_file(tmp_path / "fifo", tmp_path / "x")
    with pytest.raises(IsADirectoryError):
        await fs.copy_file(src, tmp_path)
    with pytest.raises(FileNotFoundError):
        await fs.copy_file(tmp_path / "missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@ensure
async def test_copy_file_from_proc_and_symlinks(fs, tmp_path):
    await fs.copy_file("/proc/self/mounts", tmp_path / "m")
    assert b" / " in (tmp_path / "m").read_bytes()
    (tmp_path / "t").write_bytes(b"target")
    (tmp_path / "l").symlink_to("t")
    await fs.copy_file(tmp_path / "l", tmp_path / "c1")
    assert (tmp_path / "c1").read_bytes() == b"target" and not (tmp_path / "c1").is_symlink()
    await fs.copy_file(tmp_path / "l", tmp_path / "c2", follow_symlinks=False)
    assert os.readlink(tmp_path / "c2") == "t"


# ---- File ----


@ensure
async def test_file_position_like_python(fs, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    f = await fs.open(p, "r+b")
    try:
        assert (f.name, f.mode, f.closed) == (str(p), "r+b", False)  # as Python's open()
        assert isinstance(f.fileno(), int)
        # Not awaited one by one: positional ops run in the order asked.
        a, b, c = f.read(3), f.read(3), f.read(offset=8)
        assert (await a, await b, await c) == (b"012", b"345", b"89")
        assert await f.tell() == 6
        assert await f.write(b"AB") == 2
        assert await f.read() == b"89"
        assert await f.read(5) == b""
        assert await f.read(2, offset=0) == b"01"
        assert await f.read(5, offset=8) == b"89"  # short at EOF: read on, then 0
        assert await f.read(5, offset=50) == b""
        assert await f.seek(0) == 0
        buf = bytearray(4)
        assert await f.readinto(buf) == 4 and buf == b"0123"
        assert await f.readinto(memoryview(buf)[:2], offset=6) == 2 and buf == b"AB23"
        assert await f.write(b"zz", offset=20) == 2
        assert (await f.stat()).st_size == 22
        await f.truncate(5)
        await f.fsync()
        await f.fdatasync()
        await f.allocate(0, 4096)
        assert (await f.stat()).st_size == 4096
    finally:
        await f.close()
    assert f.closed
    await f.close()  # idempotent
    assert p.read_bytes()[:5] == b"01234"


@ensure
async def test_open_modes(fs, tmp_path):
    p = tmp_path / "f"
    with pytest.raises(FileNotFoundError):
        await fs.open(p, "rb")
    async with fs.open(p, "wb") as f:
        await f.write(b"abc")
        with pytest.raises(io.UnsupportedOperation):
            f.read()
    with pytest.raises(FileExistsError):
        await fs.open(p, "xb")
    async with fs.open(p, "ab") as f:
        await f.write(b"def")
    async with fs.open(p, "a+b") as f:
        assert await f.read() == b""  # positioned at the end, as Python does
        await f.write(b"g", offset=0)  # O_APPEND: Linux appends anyway (pwrite(2) BUGS)
        assert await f.read(offset=0) == b"abcdefg"
    async with fs.open(p, "rb") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        assert await f.read() == b"abcdefg"
    async with fs.open(p, "r") as f:  # no 'b': still binary
        assert await f.read() == b"abcdefg"
    async with fs.open(p, "w+b") as f:
        assert await f.read() == b""
    async with fs.open(tmp_path / "new", "xb") as f:
        await f.write(b"1")
    with pytest.raises(IsADirectoryError):
        await fs.open(tmp_path)


@ensure
async def test_async_for_and_chunks(fs, tmp_path):
    data = os.urandom(txfs.ITER_CHUNK * 3 + 5)
    (tmp_path / "f").write_bytes(data)
    f = await fs.open(tmp_path / "f")
    async with f:
        got = [c async for c in f]
    assert b"".join(got) == data and len(got) == 4
    async with fs.open(tmp_path / "f") as f:
        sizes = [len(c) async for c in f.chunks(1000000)]
    assert sizes == [len(data)]


@pytest_twisted.inlineCallbacks
def test_coroutines_under_ensure_deferred_and_from_coroutine(fs, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")

    async def use():
        async with fs.open(tmp_path / "f") as f:
            return await f.read()

    assert (yield defer.Deferred.fromCoroutine(use())) == b"abc"
    assert (yield defer.ensureDeferred(use())) == b"abc"


# ---- misuse, answered at the call ----


def test_bad_arguments_raise_at_the_call(fs, tmp_path):
    for bad in (None, 3, 3.5, object(), [b"x"]):
        with pytest.raises(TypeError):
            fs.read_file(bad)
        with pytest.raises(TypeError):
            fs.stat(bad)
    for call in (fs.read_file, fs.stat, fs.unlink, fs.listdir, fs.open, fs.mkdir,
                 fs.readlink, fs.lstat):
        with pytest.raises(ValueError, match="NUL"):
            call(str(tmp_path) + "/a\0b")
        with pytest.raises(ValueError, match="NUL"):
            call(b"a\0b")
    with pytest.raises(ValueError):
        fs.rename("a", "b\0")
    with pytest.raises(TypeError):
        fs.write_file(tmp_path / "f", "text")
    with pytest.raises(TypeError):
        fs.write_file(tmp_path / "f", 123)
    with pytest.raises(ValueError):
        fs.truncate(tmp_path / "f", -1)
    with pytest.raises(ValueError):
        fs.truncate(tmp_path / "f", 2**64)
    for mode in (-1, 0o10000, 2**40, "0o777", True):
        with pytest.raises(ValueError):
            fs.mkdir(tmp_path / "m", mode)
    for mode in ("", "rw", "rr", "rt", "q", "r+w", "bb"):
        with pytest.raises(ValueError):
            fs.open(tmp_path / "f", mode)
    with pytest.raises(TypeError):
        fs.open(tmp_path / "f", 0)
    with pytest.raises(ValueError):
        txfs.FileSystem(max_workers=(1,))
    with pytest.raises(ValueError):
        txfs.FileSystem(max_workers=(-1, 2))
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            txfs.FileSystem(shutdown_timeout=bad)
    for bad in ("5", None, True):
        with pytest.raises(TypeError):
            txfs.FileSystem(shutdown_timeout=bad)
    assert not os.listdir(tmp_path)


@ensure
async def test_file_misuse(fs, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    f = await fs.open(tmp_path / "f", "r+b")
    with pytest.raises(TypeError):
        f.readinto(b"immutable")
    with pytest.raises(TypeError):
        f.readinto(123)
    with pytest.raises(TypeError):
        f.write("str")
    with pytest.raises(ValueError):
        f.read(offset=-5)
    with pytest.raises(ValueError):
        f.read(3.5)
    with pytest.raises(ValueError):
        f.allocate(0, 0)
    with pytest.raises(ValueError):
        f.truncate(-1)
    with pytest.raises(ValueError):
        f.chunks(0)
    # A huge size reads what there is, without allocating the size asked for.
    assert await f.read(2**62) == b"abc"
    assert await f.read(2**40, offset=1) == b"bc"
    await f.close()
    for call in (f.read, f.stat, f.fsync, f.fdatasync, f.tell, f.fileno,
                 lambda: f.write(b"x"), lambda: f.readinto(bytearray(1)),
                 lambda: f.truncate(0), lambda: f.allocate(0, 1), lambda: f.seek(0)):
        with pytest.raises(ValueError, match="closed file"):
            call()


@ensure
async def test_close_waits_for_the_ops_in_flight(fs, tmp_path):
    data = os.urandom(2 * 1024 * 1024)
    f = await fs.open(tmp_path / "f", "wb")
    writes = [f.write(data) for _ in range(4)]
    closed = f.close()
    await closed
    for w in writes:
        assert await w == len(data)
    assert (tmp_path / "f").read_bytes() == data * 4


@ensure
async def test_unclosed_file_collected_warns_and_closes(fs, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    f = await fs.open(tmp_path / "f")
    assert await f.read(1) == b"a"
    fd = f.fileno()
    assert fd in open_fds()
    with pytest.warns(ResourceWarning, match="unclosed file"):
        del f
        gc.collect()
    assert fd not in open_fds()


@ensure
async def test_calls_from_another_thread_raise_wrongthread(fs, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    f = await fs.open(tmp_path / "f")
    caught = []

    def other():
        for call in (lambda: fs.read_file(tmp_path / "f"), lambda: fs.stat(tmp_path),
                     lambda: txfs.listdir(tmp_path), f.read):
            try:
                call()
            except txfs.WrongThread as e:
                caught.append(str(e))
        try:
            f.close()
        except txfs.WrongThread as e:
            caught.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert not f.closed
    await f.close()
    assert len(caught) == 5 and "blockingCallFromThread" in caught[0]


@ensure
async def test_blocking_call_from_thread_is_the_way(fs, tmp_path):
    from twisted.internet.threads import blockingCallFromThread

    (tmp_path / "f").write_bytes(b"abc")
    got = []
    t = threading.Thread(target=lambda: got.append(
        blockingCallFromThread(reactor(), fs.read_file, tmp_path / "f")))
    t.start()
    await wait_until(reactor(), lambda: not t.is_alive())
    assert got == [b"abc"]


# ---- cancellation at every step ----


async def cancel_after(n, d):
    """Cancel d after n reactor turns; its outcome: 'cancelled', or its result."""
    if n:
        await turns(n)
    d.cancel()
    try:
        return await d
    except CancelledError:
        return "cancelled"


@ensure
async def test_cancel_read_file_and_write_file_at_every_step(fs, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"old" * 1000)
    outcomes = set()
    for n in range(0, 12):
        outcomes.add(await cancel_after(n, fs.read_file(p)))
        r = await cancel_after(n, fs.write_file(p, b"new" * 2000, atomic=True))
        outcomes.add(r if r == "cancelled" else "written")
        # Atomic: the target is whole, old or new, and no temporary is left.
        assert p.read_bytes() in (b"old" * 1000, b"new" * 2000)
        assert os.listdir(tmp_path) == ["f"], n
        p.write_bytes(b"old" * 1000)
    assert "cancelled" in outcomes


@ensure
async def test_cancel_open_copy_mkdir_at_every_step(fs, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    for n in range(0, 10):
        r = await cancel_after(n, fs.open(src))
        if r != "cancelled":
            await r.close()
        await cancel_after(n, fs.copy_file(src, tmp_path / "dst"))
        await cancel_after(n, fs.mkdir(tmp_path / "a" / "b" / str(n), parents=True))
        await cancel_after(n, fs.stat(src))
        await cancel_after(n, fs.listdir(tmp_path))
    # (the fd leak check runs after every test)


@ensure
async def test_cancel_file_ops(fs, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(os.urandom(1 << 20))
    async with fs.open(p, "r+b") as f:
        for n in range(4):
            r = await cancel_after(n, f.read())
            assert r == "cancelled" or len(r) == 1 << 20
            await f.seek(0)
            await cancel_after(n, f.write(b"x" * 100000, offset=0))
            await cancel_after(n, f.fsync())
        assert await f.read(3, offset=0) in (b"xxx", p.read_bytes()[:3])


@ensure
async def test_positioned_reads_cancelled_in_flight(fs, tmp_path):
    """
    File.read(size, offset), the positioned-read fast path: many in flight, half
    cancelled at once (before or after the kernel took them). Each cancelled one
    fails with CancelledError, each other gives the right bytes, and the file closes with nothing left in flight.
    """
    data = os.urandom(1 << 20)
    p = tmp_path / "f"
    p.write_bytes(data)
    async with fs.open(p, "rb") as f:
        ds = [f.read(4096, (i * 7919 % 256) * 4096) for i in range(200)]
        for d in ds[::2]:
            d.cancel()
        outcomes = await defer.DeferredList(ds, consumeErrors=True)
        for i, (ok, result) in enumerate(outcomes):
            if i % 2 == 0:  # (a cancel fails the Deferred at once, whenever the op ends)
                assert not ok and result.check(defer.CancelledError), result
            else:
                assert ok, result
                off = (i * 7919 % 256) * 4096
                assert result == data[off:off + 4096]
        assert await f.read(10, offset=len(data) - 4) == data[-4:]  # short: at EOF
        assert await f.read(10, offset=len(data) + 100) == b""


@ensure
async def test_cancel_a_blocked_open_of_a_fifo(fs, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    d = fs.open(fifo, "rb")
    await turns(5)
    if fs.kind == "io_uring":
        # io_uring's openat first tries with O_NONBLOCK (then clears it), so a FIFO
        # opens without waiting for a writer (a kernel difference from open(2)).
        f = await d
        await f.close()
        return
    assert not d.called  # open(2) blocks in the thread until a writer comes
    seen = []
    d.addErrback(lambda f: seen.append(f) or f)
    d.cancel()
    await turns(2)
    assert not seen  # a thread cannot be interrupted: the errback waits for it
    # Give the blocked open(2) its writer (once the thread is in it: ENXIO before).
    await wait_until(reactor(), lambda: _open_writer(fifo))
    with pytest.raises(CancelledError):
        await d
    # The cancelled open's fd was closed; a new open works.
    d = fs.open(fifo, "rb")
    w = []
    await wait_until(reactor(), lambda: _open_writer(fifo, w))
    async with await d as f:
        os.write(w[0], b"ping")
        os.close(w[0])
        assert await f.read() == b"ping"


def _open_writer(fifo, keep=None):
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no reader yet
            return False
        raise
    if keep is None:
        os.close(fd)
    else:
        keep.append(fd)
    return True


@ensure
async def test_cancel_a_blocked_read_of_a_fifo(fs, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR)  # so that opening it does not block
    try:
        f = await fs.open(fifo, "rb")
        d = f.read(10)
        await turns(5)
        assert not d.called
        d.cancel()
        if fs.kind == "threads":
            os.write(keep, b"unblock")
        with pytest.raises(CancelledError):
            await d
        await f.close()
    finally:
        os.close(keep)


# ---- io-wq caps, and ops the kernel lacks ----


def _iou_workers():
    """The thread ids of this process's io-wq workers."""
    found = set()
    for t in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/comm" % (t,)) as f:
                if f.read().startswith("iou-wrk"):
                    found.add(t)
        except OSError:
            pass
    return found


@ensure
async def test_iowq_worker_caps_bound_the_kernel_threads(fs, tmp_path):
    if fs.kind != "io_uring":
        pytest.skip("io-wq caps are an io_uring matter")
    capped = txfs.FileSystem(reactor(), max_workers=(2, 2))
    paths = [tmp_path / str(i) for i in range(100)]
    # Idle workers of earlier tests linger (5 s in the kernel) and may be reused.
    before = _iou_workers()
    seen, peak = set(), [0]

    def sample():
        now = _iou_workers()
        seen.update(now - before)
        peak[0] = max(peak[0], len(now))

    sampler = task.LoopingCall(sample)
    sampler.start(0.001)
    try:
        for _ in range(2):
            await defer.gatherResults([capped.write_file(p, b"y" * 4096, atomic=True)
                                       for p in paths])
    finally:
        sampler.stop()
        # (io-wq is per task: give the reactor's thread its default caps back)
        capped.ops().apply_max_workers(txfs.DEFAULT_MAX_WORKERS)
        if capped.ops().driver is not None:
            await capped._shutdown()
    # Two caps (bounded: file I/O; unbounded: the rest): 2 + 2 at most, where the
    # kernel's default (and TXURING_FS_MAX_WORKERS unset) would have let one per op.
    assert len(seen) <= 4 and 1 <= peak[0] <= max(4, len(before)), (seen, peak, before)


@ensure
async def test_an_op_the_kernel_lacks_runs_on_the_thread_pool(fs, tmp_path, monkeypatch):
    if fs.kind != "io_uring":
        pytest.skip("the thread backend has every op")
    ring = fs.ops().ring
    real = ring.op_supported
    monkeypatch.setattr(ring, "op_supported", lambda op: op not in (
        "mkdirat", "ftruncate") and real(op))
    monkeypatch.setattr(fs.ops(), "_ok", set())  # forget what earlier tests found
    logged = []
    from twisted.python import log

    log.addObserver(logged.append)
    try:
        await fs.mkdir(tmp_path / "d")
        (tmp_path / "f").write_bytes(b"12345")
        await fs.truncate(tmp_path / "f", 2)
        async with fs.open(tmp_path / "f", "r+b") as f:
            await f.truncate(1)
    finally:
        log.removeObserver(logged.append)
    assert (tmp_path / "d").is_dir() and (tmp_path / "f").read_bytes() == b"1"
    text = " ".join(" ".join(map(str, e.get("message", ()))) for e in logged)
    assert "no mkdirat op (it needs Linux 5.15)" in text or "mkdirat" in fs.ops()._logged
