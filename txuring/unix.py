"""
Completion-based UNIX stream transports for L{UringReactor}: L{txuring.tcp}'s
connections and ports, with what UNIX sockets add -- passing file descriptors.

Design, and why:

  - A UNIX stream can carry fds (SCM_RIGHTS) with its bytes, and a plain recv drops
    them (the kernel closes fds that arrive where no control buffer takes them). So
    a UNIX connection receives with recvmsg ops (IORING_OP_RECVMSG, 5.3) into its own
    buffer, single-shot, taking up to 253 fds (SCM_MAX_FD) with each read, and hands
    them to Twisted's own handling (C{fileDescriptorReceived}, or logged and closed
    for a protocol that does not take fds) before the bytes, as Twisted's
    C{_SendmsgMixin.doRead} does. UNIX streams carry local IPC, not the many-client
    traffic the shared buffer ring is for.

  - Sending is L{txuring.tcp}'s (one send op in flight, everything written meanwhile
    in the next) until fds are queued by C{sendFileDescriptor}: then the bytes that
    carry them go out through Twisted's own C{sendmsg(2)} path, called directly, and
    a POLLOUT poll op waits if the socket is full. (A send op in flight is always
    finished first: bytes keep their order.)

  - Everything else -- pausing, producers, half-close, abort, connectionLost reasons,
    the FDSet view -- is L{txuring.tcp._CompletionConnection}'s.
"""

import errno
import os
import select
import socket
import struct

from twisted.internet import error, main, unix

from txuring import tcp as _tcp

_ECANCELED = errno.ECANCELED
#: SCM_MAX_FD: the most fds one sendmsg can pass (include/net/scm.h).
_MAX_FDS = 253


class _MsgOp:
    """A recvmsg op of a UNIX connection (its Handle's user_data, for cancelling)."""

    __slots__ = ("ud",)
    #: (not on the large receive buffers: see _tcp._RecvOp)
    large = False

    def __init__(self, ud):
        self.ud = ud


class _UNIXCompletionConnection(_tcp._CompletionConnection):
    """
    L{_tcp._CompletionConnection} reading with recvmsg ops and sending queued fds
    with sendmsg (see the module docstring).

    @ivar _pollOut: the Handle of the POLLOUT poll a blocked fd-carrying send waits on.
    """

    _pollOut = None

    def _register(self, primary):
        if self._fd < 0:
            self._fd = _tcp._filenoToRegister(self)
        primary.add(self._fd)
        self.reactor._selectables[self._fd] = self

    def _armRecv(self, multishot=0):
        ring = self.reactor.ring
        if ring._closed or ring._forked:
            return  # the reactor was closed (or this is a fork child)
        buf = bytearray(self.bufferSize)  # the Handle holds it until the op ends
        h = ring.recv_msg(self._fd, [buf], max_fds=_MAX_FDS)
        op = self._recvOp = _MsgOp(h.user_data)
        ring.syscall_result(h).addCallbacks(self._msgReceived, self._msgFailed,
                                            callbackArgs=(op, buf), errbackArgs=(op,))

    def _msgReceived(self, result, op, buf):
        current = op is self._recvOp
        if current:
            self._recvOp = None
        n, fds = result.nbytes, result.fds
        if self.disconnected:
            for fd in fds:
                _close(fd)
            return
        if n == 0 and not fds:
            if not self._readEnded:
                self._readEnded = True
                self._readEnd(main.CONNECTION_DONE)
            return
        item = (bytes(buf[:n]), fds)
        if not self._reading or self._stash is not None:
            self._stashAdd(item)
        else:
            contexts = self.reactor._logContexts
            contexts.append(_tcp._LogContext(self))
            try:
                self._deliverMessage(item)
            except BaseException:
                self._callbackFailed(True)
            finally:
                contexts.pop()
        if (current and self._reading and self._recvOp is None and not self._readEnded
                and not self.disconnected):
            self._armRecv()

    def _msgFailed(self, f, op):
        if op is self._recvOp:
            self._recvOp = None
        f.trap(OSError)
        if f.value.errno == _ECANCELED:
            return
        if not self._readEnded:
            self._readEnded = True
            self._readEnd(main.CONNECTION_LOST)

    def _deliverMessage(self, item):
        """What C{_SendmsgMixin.doRead} does with a message: fds first, then bytes."""
        data, fds = item
        if fds:
            self._ancillaryLevelSOLSOCKETTypeSCMRIGHTS(struct.pack("%di" % len(fds), *fds))
        if data:
            self.protocol.dataReceived(data)

    def _deliverStashed(self, item):
        if isinstance(item, tuple):
            self._deliverMessage(item)
        else:
            _tcp._CompletionConnection._deliverStashed(self, item)

    def connectionLost(self, reason):
        if not hasattr(self, "socket"):
            return
        stash, self._stash = self._stash, None
        for item in stash or ():
            if isinstance(item, tuple):
                for fd in item[1]:
                    _close(fd)
        if self._pollOut is not None:
            h, self._pollOut = self._pollOut, None
            self.reactor.ring._cancel_quietly(h)
        _tcp._CompletionConnection.connectionLost(self, reason)

    _passInline = False  # (its own doWrite, below: see tcp._passEnds)

    def doWrite(self):
        if not self._sendmsgQueue:
            return _tcp._CompletionConnection.doWrite(self)
        if self._sendUd or self._pollOut is not None:
            return None  # the send in flight, or writability, comes first
        remaining = len(self.dataBuffer) - self.offset
        if remaining < self.SEND_LIMIT and self._tempDataBuffer:
            self.dataBuffer = self.dataBuffer[self.offset:] + b"".join(self._tempDataBuffer)
            self.offset = 0
            self._tempDataBuffer = []
            self._tempDataLen = 0
        # Twisted's sendmsg path, called directly: the fds ride their bytes.
        sent = unix._SendmsgMixin.writeSomeData(
            self, memoryview(self.dataBuffer)[self.offset:])
        if isinstance(sent, Exception):
            return sent
        self.offset += sent
        if self.offset == len(self.dataBuffer) and not self._tempDataLen:
            return self._writeDrained()
        if self._sendmsgQueue and not sent:
            # The socket is full: wait for room with a poll op, then try again.
            self._pollOut = self.reactor.ring.poll_add(self._fd, select.POLLOUT,
                                                       callback=self._writable)
        else:
            self._queuePass()
        return None

    def _writeDrained(self):
        if self._sendmsgQueue:
            # fds queued with no byte left to carry them: what Twisted's sendmsg
            # path answers (epoll's doWrite would find the same).
            return error.FileDescriptorOverrun()
        return _tcp._CompletionConnection._writeDrained(self)

    def _writable(self, res, flags):
        self._pollOut = None
        if not self.disconnected and self._writing:
            self._queuePass()


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


class Server(_UNIXCompletionConnection, unix.Server):
    """A UNIX stream connection a L{Port} accepted, on completions."""


class Client(_tcp._CompletionConnect, _UNIXCompletionConnection, unix.Client):
    """An outgoing UNIX stream connection, on completions."""


class Connector(unix.Connector):
    def _makeTransport(self):
        return Client(self.address, self, self.reactor, self.checkPID)


class Port(_tcp._CompletionPort, unix.Port):
    """A listening UNIX stream port on completions."""

    transport = Server


__all__ = ["Server", "Client", "Connector", "Port"]
