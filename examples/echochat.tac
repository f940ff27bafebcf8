# An application for twistd: echo on port 8000, chat on 8001, and a status page on 8080
# showing which reactor runs it and its ring's counters.
#
#     twistd -n --reactor=uring -y examples/echochat.tac
#
# Then: `nc localhost 8001` (twice, to chat), `nc localhost 8000`, or open
# http://localhost:8080/. Ports can be changed with ECHO_PORT, CHAT_PORT, WEB_PORT.

import json
import os
import sys

from twisted.application import service, strports
from twisted.web import resource, server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echochat import ChatRoom, EchoFactory  # noqa: E402


class Status(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        from twisted.internet import reactor

        ring = getattr(reactor, "ring", None)
        status = {
            "reactor": type(reactor).__module__ + "." + type(reactor).__name__,
            "ring": ring.stats() if ring is not None else None,
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(status, indent=2).encode() + b"\n"


application = service.Application("echochat")
for port_var, default, factory in [
    ("ECHO_PORT", "8000", EchoFactory()),
    ("CHAT_PORT", "8001", ChatRoom()),
    ("WEB_PORT", "8080", server.Site(Status())),
]:
    port = os.environ.get(port_var, default)
    strports.service("tcp:%s" % (port,), factory).setServiceParent(application)
