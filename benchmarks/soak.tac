"""
The service of benchmarks/soak.py, run by twistd:

    SOAK_ROOT=DIR SOAK_PORT=8080 twistd -n --pidfile= --reactor=uring -y benchmarks/soak.tac

A twisted.web Site on 127.0.0.1:SOAK_PORT with
  - /static/: DIR through txuring.web's static-file resource (where txuring.web exists;
    else twisted.web.static.File, and a line on stderr says so)
  - /dyn: a dynamic resource (a small computed page, different for every query)
"""

import hashlib
import os
import sys

from twisted.application import internet, service
from twisted.web import resource, server, static


def static_resource(path):
    try:
        import txuring.web as txweb
    except ImportError:
        sys.stderr.write("soak.tac: txuring.web is not there yet: serving the files with "
                         "twisted.web.static.File\n")
        return static.File(path), "twisted.web.static.File"
    from twisted.web.resource import IResource

    for name in ("File", "StaticFile", "Static", "FileResource", "Directory"):
        cls = getattr(txweb, name, None)
        if isinstance(cls, type) and IResource.implementedBy(cls):
            return cls(path), "txuring.web." + name
    raise SystemExit("txuring.web has no static-file resource soak.tac knows")


class Dynamic(resource.Resource):
    """A page computed per request: the SHA-256 of the query, 32 times over."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.count = 0

    def render_GET(self, request):
        self.count += 1
        digest = hashlib.sha256(request.uri).hexdigest().encode()
        request.setHeader(b"content-type", b"text/plain")
        return b"request %d\n%s\n" % (self.count, digest * 32)


root = resource.Resource()
files, label = static_resource(os.environ["SOAK_ROOT"])
root.putChild(b"static", files)
root.putChild(b"dyn", Dynamic())
sys.stderr.write("soak.tac: static files by %s\n" % (label,))
site = server.Site(root)
site.displayTracebacks = False
site.log = lambda request: None  # (no access log: a soak would write gigabytes)

application = service.Application("txuring-soak")
internet.TCPServer(int(os.environ["SOAK_PORT"]), site, backlog=1024,
                   interface="127.0.0.1").setServiceParent(application)
