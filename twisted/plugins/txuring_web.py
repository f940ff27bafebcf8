"""
C{twistd txweb}: serve a directory with L{txuring.web.Directory} (every open, stat and
read an io_uring op, so the reactor never waits on the disk)::

    twistd -n --reactor=uring txweb --path DIR --listen tcp:8080

Options as twistd's C{web} plugin names them (C{--path}, C{--listen}, C{--logfile} for
the access log), plus C{--listing}, C{--allow-symlink-escape} and C{--status}.
This directory is a namespace shared with Twisted: it must never get an __init__.py.
"""

from twisted.application.service import ServiceMaker

txweb = ServiceMaker(
    "txuring static web server",
    "txuring.webtap",
    "Serve a directory over HTTP with io_uring file I/O (txuring.web)",
    "txweb",
)
