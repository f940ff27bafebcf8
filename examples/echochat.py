"""
Two small line services to copy from: an echo server and a chat room.

Nothing here knows about io_uring: run under C{twistd --reactor=uring} (see
C{echochat.tac}) and the same code gets UringReactor.
"""

from twisted.internet import protocol
from twisted.protocols import basic


class Echo(protocol.Protocol):
    """Sends back every byte it receives."""

    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(protocol.Factory):
    protocol = Echo


class ChatUser(basic.LineReceiver):
    """
    One participant: the first line is the nickname, every later line goes to everybody
    else as C{<nick> line}. C{/who} lists who is here.
    """

    delimiter = b"\n"
    nick = None

    def connectionMade(self):
        self.sendLine(b"Welcome. Your nickname?")

    def lineReceived(self, line):
        line = line.rstrip(b"\r")
        room = self.factory
        if self.nick is None:
            if not line or line in room.users:
                self.sendLine(b"That nickname is empty or taken; another?")
                return
            self.nick = line
            room.users[line] = self
            room.broadcast(b"* %s joined" % (line,), exclude=self)
            self.sendLine(b"* %d here: %s" % (len(room.users), b", ".join(sorted(room.users))))
        elif line == b"/who":
            self.sendLine(b"* " + b", ".join(sorted(room.users)))
        elif line:
            room.broadcast(b"<%s> %s" % (self.nick, line), exclude=self)

    def connectionLost(self, reason):
        room = self.factory
        if self.nick is not None and room.users.get(self.nick) is self:
            del room.users[self.nick]
            room.broadcast(b"* %s left" % (self.nick,))


class ChatRoom(protocol.Factory):
    """The room: who is in it, and sending to all of them."""

    protocol = ChatUser

    def __init__(self):
        self.users = {}

    def broadcast(self, line, exclude=None):
        for user in self.users.values():
            if user is not exclude:
                user.sendLine(line)
