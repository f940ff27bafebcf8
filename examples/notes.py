"""
A legacy service that stays on Twisted's default reactor (epoll) and gains
asynchronous file I/O from txuring.fs: a small notes store over HTTP.

    python examples/notes.py DIRECTORY PORT

    curl -X PUT --data-binary @somefile http://localhost:PORT/notes/name   # atomic save
    curl http://localhost:PORT/notes/name                                  # read back
    curl http://localhost:PORT/notes/                                      # list (JSON)
    curl -X DELETE http://localhost:PORT/notes/name
    curl http://localhost:PORT/files/name                                  # txuring.web

Nothing here names io_uring: txuring.fs attaches a private ring to the running epoll
reactor (through txuring.RingDriver) on first use, or runs on the thread pool where
io_uring is unusable. Every read, write, fsync, rename and stat is a Deferred, so a
slow disk never stalls the other connections.
"""

import json
import os
import sys

from twisted.internet import defer
from twisted.python import log
from twisted.web import resource, server

from txuring import fs
from txuring.web import Directory


class Note(resource.Resource):
    isLeaf = True

    def __init__(self, directory):
        resource.Resource.__init__(self)
        self.directory = directory

    def render(self, request):
        d = defer.ensureDeferred(self.handle(request))
        d.addErrback(self.failed, request)
        return server.NOT_DONE_YET

    def _path(self, request):
        if len(request.postpath) != 1:
            return None
        name = request.postpath[0].decode("utf-8", "replace")
        if name in ("", ".", "..") or "/" in name or name.startswith("."):
            return None
        return os.path.join(self.directory, name)

    async def handle(self, request):
        if request.postpath in ([], [b""]):
            names = sorted(n for n in await fs.listdir(self.directory)
                           if not n.startswith("."))
            return self.reply(request, 200, json.dumps(names).encode(), b"application/json")
        path = self._path(request)
        if path is None:
            return self.reply(request, 404, b"no such note\n")
        if request.method == b"PUT":
            n = await fs.write_file(path, request.content.read(), atomic=True)
            return self.reply(request, 201, b"saved %d bytes\n" % (n,))
        if request.method == b"DELETE":
            await fs.unlink(path)
            return self.reply(request, 204, b"")
        if request.method == b"GET":
            return self.reply(request, 200, await fs.read_file(path),
                              b"application/octet-stream")
        return self.reply(request, 405, b"GET, PUT or DELETE\n")

    def failed(self, failure, request):
        if failure.check(FileNotFoundError):
            return self.reply(request, 404, b"no such note\n")
        log.err(failure, "notes")
        return self.reply(request, 500, b"error\n")

    def reply(self, request, code, body, content_type=b"text/plain"):
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.write(body)
        request.finish()


def main(reactor, directory, port):
    os.makedirs(directory, exist_ok=True)
    root = resource.Resource()
    root.putChild(b"notes", Note(directory))
    root.putChild(b"files", Directory(directory))
    reactor.listenTCP(int(port), server.Site(root), interface="127.0.0.1")
    log.msg("notes on http://127.0.0.1:%s/notes/ (reactor: %s)"
            % (port, type(reactor).__name__))
    return defer.Deferred()  # run until stopped


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    from twisted.internet import task

    log.startLogging(sys.stdout)
    task.react(main, sys.argv[1:])
