# An application for twistd: echo on port 8000, chat on 8001, and on 8080 a static web
# server of this examples/ directory (txuring.web: every open, stat and read an io_uring
# op) with a status page at /_status showing the reactor and its ring's counters.
#
#     twistd -n --reactor=uring -y examples/echochat.tac
#
# Then: `nc localhost 8001` (twice, to chat), `nc localhost 8000`, or open
# http://localhost:8080/ and http://localhost:8080/_status. Ports can be changed with
# ECHO_PORT, CHAT_PORT, WEB_PORT.

import os
import sys

from twisted.application import service, strports
from twisted.web import server

from txuring.web import Directory
from txuring.webtap import WithStatus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echochat import ChatRoom, EchoFactory  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
site = server.Site(WithStatus(Directory(HERE, listing=True)))


application = service.Application("echochat")
for port_var, default, factory in [
    ("ECHO_PORT", "8000", EchoFactory()),
    ("CHAT_PORT", "8001", ChatRoom()),
    ("WEB_PORT", "8080", site),
]:
    port = os.environ.get(port_var, default)
    strports.service("tcp:%s" % (port,), factory).setServiceParent(application)
