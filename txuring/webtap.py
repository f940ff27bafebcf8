"""
The C{twistd txweb} plugin's options and service (see twisted/plugins/txuring_web.py):
a L{txuring.web.Directory} behind a twisted.web Site on one or more endpoints, with an
optional JSON status page of the reactor's ring at C{/_status}.
"""

import json
import os

from twisted.application import service, strports
from twisted.python import usage
from twisted.web import resource, server

from txuring.web import Directory


class Status(resource.Resource):
    """JSON: the running reactor, its ring's counters, and the fs backend in use."""

    isLeaf = True

    def render_GET(self, request):
        from twisted.internet import reactor

        from txuring import fs

        ring = getattr(reactor, "ring", None)
        files = fs.filesystem(reactor)
        status = {
            "reactor": type(reactor).__module__ + "." + type(reactor).__name__,
            "ring": ring.stats() if ring is not None else None,
            "fs": {"backend": files.kind, "reason": files.reason},
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(status, indent=2).encode() + b"\n"


class WithStatus(resource.Resource):
    """The directory at /, and the L{Status} page at /_status."""

    def __init__(self, directory, status=None):
        resource.Resource.__init__(self)
        self.directory = directory
        self.status = status or Status()

    def getChild(self, name, request):
        if name == b"_status" and len(request.postpath) == 0:
            return self.status
        # Put the segment back: the directory resolves the whole path itself.
        request.postpath.insert(0, request.prepath.pop())
        return self.directory

    def render(self, request):
        return self.directory.render(request)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve the files under --path over HTTP; every open, stat and read is "
                "an io_uring op (on the thread pool where io_uring is unusable).")
    optParameters = [
        ["path", None, os.curdir, "The directory to serve."],
        ["logfile", "l", None, "Path of the HTTP access log (none by default)."],
        ["mime-type", "m", "text/html", "Type of files whose extension is unknown."],
    ]
    optFlags = [
        ["listing", None, "List directories that have no index file (off by default)."],
        ["allow-symlink-escape", None, "Let symlinks lead out of --path."],
        ["status", None, "Serve the ring's counters as JSON at /_status."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []

    def opt_listen(self, endpoint):
        """An endpoint to listen on (repeatable), e.g. tcp:8080 (default)."""
        self["listen"].append(endpoint)

    def postOptions(self):
        if not os.path.isdir(self["path"]):
            raise usage.UsageError("--path %r is not a directory" % (self["path"],))
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]


def makeService(config):
    directory = Directory(config["path"], config["mime-type"], listing=config["listing"],
                          allow_symlink_escape=config["allow-symlink-escape"])
    root = WithStatus(directory) if config["status"] else directory
    site = server.Site(root, logPath=config["logfile"])
    services = service.MultiService()
    for endpoint in config["listen"]:
        strports.service(endpoint, site).setServiceParent(services)
    return services
