"""
Malformed arguments to every public function of txuring, made in this subprocess so
that a crash is seen as a crash (tests/stress/test_stress_hostile.py runs it):

    python hostile_runner.py TARGET REACTOR SEED START PROGRESS_FILE [--all]

TARGET is a class of C{txuring.__all__} (its constructor and every public method), or
C{dead} (every method of a Ring, a Region and a BufferRing after the ring's exit()),
or C{fs} (every public function of C{txuring.fs} and C{txuring.web}'s resources, under
a running reactor). Each call replaces ONE argument with a hostile value (wrong
types, negative and huge sizes, a huge iovec count, NUL in paths, closed fds, a chunk
of another ring's Region, a handle of another ring, ...) and fills the others with
plausible ones. Without C{--all}, a seeded sample of the hostile values per argument.

Before each call its index and text go to PROGRESS_FILE (flushed), so the caller can
name the call that crashed, and START skips the calls before it. An op that returns a
Handle is driven until done (cancelled after 2 s); one that never finishes is a hang.
Writes PROGRESS_FILE.json: how many calls, and each call whose outcome was not a clear
Python error (C{unclear}: an exception of an unexpected type or without a message;
C{hang}).
"""

import errno
import faulthandler
import inspect
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time

CLEAR = (TypeError, ValueError, OverflowError, OSError, RuntimeError, LookupError,
         NotImplementedError)


class Hang(BaseException):
    pass


def on_alarm(signum, frame):
    raise Hang()


def hostile_values(ctx):
    # An fd number in range and not open (a closed one that stays closed: numbers
    # below are reused by the runner's own opens).
    closed_fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 7
    return [
        ("None", None), ("-1", -1), ("-2**31", -2 ** 31), ("2**31", 2 ** 31),
        ("2**63", 2 ** 63), ("2**64", 2 ** 64), ("-2**63-1", -2 ** 63 - 1),
        ("1.5", 1.5), ("nan", float("nan")), ("inf", float("inf")), ("True", True),
        ("''", ""), ("'a\\0b'", "a\0b"), ("b'a\\0b'", b"a\0b"), ("'x'*5000", "x" * 5000),
        ("b'x'*70000", b"x" * 70000), ("bytearray(0)", bytearray(0)),
        ("memoryview(b'ro')", memoryview(b"ro")), ("b'readonly'", b"readonly"),
        ("[bytearray(1)]*5000", [bytearray(1)] * 5000), ("[]", []),
        ("[b'ro']", [b"ro"]), ("[None]", [None]), ("object()", object()),
        ("closed fd", closed_fd), ("foreign chunk", ctx["foreign_chunk"]),
        ("freed chunk", ctx["freed_chunk"]), ("foreign handle", ctx["foreign_handle"]),
        ("done handle", ctx["done_handle"]), ("exited ring", ctx["dead_ring"]),
        ("str 'abc'", "abc"), ("dict", {"a": 1}), ("lambda", lambda *a: None),
        ("('127.0.0.1', -1)", ("127.0.0.1", -1)), ("('::1', 99999)", ("::1", 99999)),
        ("('nohost\\0', 1)", ("nohost\0", 1)), ("1e300", 1e300), ("-0.5", -0.5),
    ]


PLAUSIBLE_BY_NAME = {
    "fd": "file_fd", "fd_in": "file_fd", "fd_out": "file_fd2", "dirfd": "AT_FDCWD",
    "dir_fd": None, "olddirfd": "AT_FDCWD", "newdirfd": "AT_FDCWD",
    "buf": "bytearray16", "buffer": "bytearray16", "data": "b'x'", "bufs": "iov",
    "buffers": "iov", "path": "'p'", "oldpath": "'p'", "newpath": "'q'", "target": "'p'",
    "linkpath": "'q'", "offset": 0, "nbytes": 16, "length": 16, "len": 16, "size": 16,
    "count": 1, "flags": 0, "mode": 0o600, "how": 0, "handle": "own_handle",
    "chunk": "own_chunk", "callback": "callback", "timeout": 0, "delay": 0,
    "seconds": 0, "region": "region", "ring": "ring", "reactor": "reactor",
    "nblocks": 2, "block_size": 4096, "entries": 4, "buffer_size": 64, "group_id": None,
    "bufring": "bufring", "buffer_ring": "bufring", "res": 4, "bid": 0,
    "queue_depth": 8, "cq_depth": None, "events": 1, "poll_mask": 1, "mask": 1,
    "address": ("127.0.0.1", 0), "addr": ("127.0.0.1", 0), "backlog": 1,
    "domain": 2, "family": 2, "type": 1, "protocol": 0, "op": "noop",
    "err": -2, "filename": None, "filename2": None, "bounded": 0, "unbounded": 0,
    "resolve": 0, "index": 0, "multishot": False, "cancel": True, "nbytes_max": 16,
    "off_in": -1, "off_out": -1, "advice": 0, "mask_": 0, "user_data": 1,
    "ring_id": 1, "keep": (), "fds": [], "ancdata": [], "min_complete": 0,
}


def plausible(ctx, name, param):
    if param.default is not inspect.Parameter.empty and name not in PLAUSIBLE_BY_NAME:
        return param.default
    key = PLAUSIBLE_BY_NAME.get(name, 0)
    if isinstance(key, str):
        return {
            "file_fd": ctx["file_fd"], "file_fd2": ctx["file_fd2"], "AT_FDCWD": -100,
            "bytearray16": bytearray(16), "b'x'": b"x", "iov": [bytearray(8)],
            "'p'": "p", "'q'": "q", "own_handle": ctx["own_handle"],
            "own_chunk": ctx["own_chunk"], "callback": lambda *a: None,
            "region": ctx["region"], "ring": ctx["ring"], "reactor": ctx["reactor"],
            "bufring": ctx["bufring"], "noop": "noop",
        }.get(key, key)
    return key


def make_context(reactor):
    import txuring

    ring = txuring.Ring(8)
    other = txuring.Ring(8)
    region = txuring.Region(ring, 4, 4096)
    foreign_region = txuring.Region(other, 2, 4096)
    freed = region.alloc()
    freed.free()
    dead = txuring.Ring(4)
    dead_region = txuring.Region(dead, 2, 4096)
    dead_bufs = txuring.BufferRing(dead, 4, 64)
    dead_region.close()
    dead_bufs.close()
    dead.exit()
    foreign_handle = other.timeout(3600)
    other.submit()
    done = ring.noop()
    drive(ring, done)
    fd, path = tempfile.mkstemp(dir=".")
    os.write(fd, b"y" * 8192)
    fd2, _ = tempfile.mkstemp(dir=".")
    ctx = {"ring": ring, "other": other, "region": region, "own_chunk": region.alloc(),
           "foreign_chunk": foreign_region.alloc(), "freed_chunk": freed,
           "foreign_handle": foreign_handle, "done_handle": done, "dead_ring": dead,
           "dead_region": dead_region, "dead_bufs": dead_bufs,
           "bufring": txuring.BufferRing(ring, 4, 64), "file_fd": fd, "file_fd2": fd2,
           "reactor": reactor}
    ctx["own_handle"] = ring.timeout(3600)
    ring.submit()
    return ctx


def drive(ring, handle, limit=2.0):
    """Run C{ring} until C{handle} is done; cancel it after C{limit} s; False if never."""
    if ring.closed:
        return True
    end = time.monotonic() + limit
    cancelled = False
    while not handle.done:
        ring.submit()
        if ring.cqe_ready(0.01):
            ring.fill_completions()
        if time.monotonic() > end:
            if cancelled:
                return False
            cancelled = True
            end = time.monotonic() + limit
            try:
                ring.cancel(handle)
            except Exception:
                return handle.done
    return True


def calls_for(target, ctx, rng, sample):
    """(text, zero-argument function) pairs for TARGET."""
    import txuring

    values = hostile_values(ctx)
    out = []

    def callable_calls(label, fn, bound_self=None):
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return
        params = [(n, p) for n, p in sig.parameters.items()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        for i, (name, param) in enumerate(params):
            chosen = values if sample is None else rng.sample(values, min(sample,
                                                                          len(values)))
            for vtext, value in chosen:
                kwargs = {}
                for j, (n2, p2) in enumerate(params):
                    if j == i:
                        kwargs[n2] = value
                    elif p2.default is inspect.Parameter.empty or n2 in PLAUSIBLE_BY_NAME:
                        kwargs[n2] = plausible(ctx, n2, p2)
                text = "%s(%s=%s)" % (label, name, vtext)
                out.append((text, lambda fn=fn, kwargs=kwargs: fn(**kwargs)))
        if not params:
            out.append(("%s()" % (label,), fn))

    if target == "dead":
        for obj, label in ((ctx["dead_ring"], "exited Ring"),
                           (ctx["dead_region"], "closed Region"),
                           (ctx["dead_bufs"], "closed BufferRing")):
            for name, fn in inspect.getmembers(obj):
                if not name.startswith("_") and callable(fn):
                    callable_calls("%s.%s" % (label, name), fn)
        return out
    cls = getattr(txuring, target)
    if not inspect.isclass(cls):
        callable_calls(target, cls)
        return out
    if target != "Handle":  # (Handles are made by the op methods: not a public call)
        callable_calls(target, cls)
    instance = {"Ring": ctx["ring"], "Region": ctx["region"], "Chunk": ctx["own_chunk"],
                "BufferRing": ctx["bufring"], "Handle": ctx["own_handle"]}.get(target)
    if target == "RingDriver":
        instance = txuring.RingDriver(txuring.Ring(8), ctx["reactor"])
    for name, fn in inspect.getmembers(instance):
        if name.startswith("_") or not callable(fn) or name in SKIP.get(target, ()):
            continue
        callable_calls("%s.%s" % (target, name), fn)
    return out


#: Methods whose plausible use would break the runner itself, with the reason.
SKIP = {
    # exit() closes the ring every later call uses (exited rings are the "dead" target);
    # a wait with a hostile timeout may legitimately block for that long.
    "Ring": ("exit", "cqe_ready", "drain", "linked"),
    "Region": ("close", "alloc_or_wait"),
    "BufferRing": ("close",),
}


LOGGED = []


def log_errors(event):
    """Errors Twisted logs while a call's op is driven (a callback that raised)."""
    f = event.get("failure") or event.get("log_failure")
    if event.get("log_namespace") == "twisted.internet.defer":
        return  # (an op's error result nobody asked for, collected: not a finding)
    if f is not None:
        LOGGED.append(repr(f.value))


def classify(text, fn, ctx):
    """None if the call gave a clear outcome, else what went wrong."""
    from txuring import Handle

    del LOGGED[:]
    signal.alarm(5)
    try:
        try:
            result = fn()
        except Hang:
            return "hang: the call itself blocked for 5 s"
        except CLEAR as e:
            if not str(e).strip():
                return "unclear: %s with no message" % (type(e).__name__,)
            return None
        except BaseException as e:
            return "unclear: %s: %s" % (type(e).__name__, str(e)[:200])
        if isinstance(result, Handle):
            ring = ctx["ring"]
            if ring.closed or not any(h is result for h in ring._handles.values()):
                ring = None  # (a Handle made by hand is no op of the ring)
            if ring is not None and not drive(ring, result):
                return "hang: the op never finished, even cancelled"
        if LOGGED:
            return "accepted, then an error at completion: %s" % (LOGGED[0][:200],)
        return None
    finally:
        signal.alarm(0)


def run_fs(reactor, seed, start, progress, sample, emit):
    """Every public function of txuring.fs (and txuring.web's resources), hostile args."""
    from twisted.internet import defer, task

    try:
        from txuring import fs
    except ImportError as e:
        emit({"skip": "txuring.fs is not there yet: %s" % (e,)})
        return
    ctx_values = [v for v in hostile_values({"foreign_chunk": None, "freed_chunk": None,
                                            "foreign_handle": None, "done_handle": None,
                                            "dead_ring": None})]
    rng = random.Random(seed)
    # The module's functions delegate to the reactor's FileSystem (*args, **kwargs):
    # its bound methods carry the signatures. Then a File's methods, and the public
    # classes of txuring.web (only what these modules define: names they import are
    # other people's API).
    fsys = fs.filesystem(reactor)
    funcs = [("FileSystem." + name, getattr(fsys, name)) for name in dir(fsys)
             if not name.startswith("_") and inspect.ismethod(getattr(fsys, name))]
    funcs += [(name, getattr(fs, name)) for name in getattr(fs, "__all__", dir(fs))
              if not name.startswith("_") and inspect.isfunction(getattr(fs, name, None))
              and getattr(fs, name).__module__ == fs.__name__ and name != "open"]
    try:
        import txuring.web as web
    except ImportError:
        web = None
    if web is not None:
        funcs += [("web." + name, getattr(web, name)) for name in getattr(
            web, "__all__", dir(web)) if not name.startswith("_") and
            inspect.isclass(getattr(web, name, None)) and
            getattr(web, name).__module__ == web.__name__]
    with open("target", "wb") as f:
        f.write(b"t" * 10000)
    files = []  # Files opened for their methods' turn (in go(), in the reactor)
    calls = []

    def add_calls(name, fn):
        try:
            params = [(n, p) for n, p in inspect.signature(fn).parameters.items()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            return
        for i, (pname, p) in enumerate(params):
            chosen = ctx_values if sample is None else rng.sample(ctx_values, sample)
            for vtext, value in chosen:
                kwargs = {}
                for j, (n2, p2) in enumerate(params):
                    if j == i:
                        kwargs[n2] = value
                    elif p2.default is inspect.Parameter.empty:
                        kwargs[n2] = {"data": b"x", "size": 1, "length": 1, "offset": 0,
                                      "buffer": bytearray(4), "reactor": reactor}.get(
                                          n2, "target" if "path" in n2 or n2 in (
                                              "src", "dst") else "p")
                calls.append(("fs.%s(%s=%s)" % (name, pname, vtext),
                              lambda fn=fn, kwargs=kwargs: fn(**kwargs)))

    for name, fn in funcs:
        add_calls(name, fn)
    bad = []

    async def go():
        f = await fs.open("target", "r+b")
        files.append(f)
        for name in dir(f):
            method = getattr(f, name)
            if name.startswith("_") or not inspect.ismethod(method) or name == "close":
                continue
            add_calls("File." + name, method)
        for k, (text, fn) in enumerate(calls):
            if k < start:
                continue
            progress.write("%d %s\n" % (k, text))
            progress.flush()
            # The target file back to its 10,000 bytes: an earlier call may have made
            # it huge and sparse (a truncate, an allocate, a write far out), and a
            # read of all of it would then take as long as gigabytes take. Both the
            # path and the open File: an atomic write_file to "target" replaced the
            # path with a new file, and the File's (now unlinked) one grew unchecked.
            try:
                os.truncate("target", 10000)
            except OSError:  # (unlinked, or made a directory, by an earlier call)
                pass
            for f in files:
                try:
                    os.ftruncate(f.fileno(), 10000)
                except (OSError, ValueError):  # (closed by an earlier call)
                    pass
            try:
                result = fn()
            except CLEAR as e:
                if not str(e).strip():
                    bad.append((k, text, "unclear: %s with no message" % (
                        type(e).__name__,)))
                continue
            except Exception as e:
                bad.append((k, text, "unclear: %s: %s" % (type(e).__name__, str(e)[:200])))
                continue
            if isinstance(result, defer.Deferred):
                result.addTimeout(5, reactor)
                try:
                    await result
                except defer.TimeoutError:
                    bad.append((k, text, "hang: the Deferred did not fire in 5 s"))
                except CLEAR:
                    pass
                except Exception as e:
                    bad.append((k, text, "unclear (Deferred): %s: %s" % (
                        type(e).__name__, str(e)[:200])))
        return len(calls)

    out = {}

    def done(result):
        out["calls"] = result
        reactor.stop()

    def failed(f):
        out["error"] = f.getTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()).addCallbacks(done, failed))
    reactor.run()
    for name in os.listdir("."):
        if os.path.isfile(name):
            os.unlink(name)
    emit({"calls": out.get("calls"), "bad": bad, "error": out.get("error")})


def main():
    target, reactor_name, seed, start, progress_path = sys.argv[1:6]
    sample = None if "--all" in sys.argv else 6
    seed, start = int(seed), int(start)
    work = tempfile.mkdtemp(prefix="txuring-hostile-")
    os.chdir(work)
    if reactor_name == "uring":
        from txuring.reactor import install
    else:
        from twisted.internet.epollreactor import install
    install()
    from twisted.internet import reactor

    progress = open(progress_path, "a")
    # The result goes to PROGRESS_FILE.json: stdout is /dev/null, since a hostile
    # value True is fd 1 to every op that takes an fd (and closing it is allowed).
    result_path = progress_path + ".json"
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)

    def emit(obj):
        with open(result_path, "w") as f:
            json.dump(obj, f)
    if target == "fs":
        try:
            return run_fs(reactor, seed, start, progress, sample, emit)
        finally:
            os.chdir("/")
            shutil.rmtree(work, ignore_errors=True)
    signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.register(signal.SIGUSR2)  # (kill -USR2: where it is stuck)
    from twisted.python import log

    log.addObserver(log_errors)
    ctx = make_context(reactor)
    calls = calls_for(target, ctx, random.Random(seed), sample)
    bad = []
    for k, (text, fn) in enumerate(calls):
        if k < start:
            continue
        progress.write("%d %s\n" % (k, text))
        progress.flush()
        outcome = classify(text, fn, ctx)
        if outcome:
            bad.append((k, text, outcome))
    emit({"calls": len(calls), "bad": bad})
    os.chdir("/")
    shutil.rmtree(work, ignore_errors=True)
    os._exit(0)  # (the rings' handles in flight are the kernel's to drop at exit)


if __name__ == "__main__":
    main()
