#!/bin/bash
# System calls (strace -c) and malloc calls (perf uprobe on libc malloc, with
# PYTHONMALLOC=malloc so every Python allocation goes through malloc) per 64-byte echo
# request in a Twisted echo server on UringReactor or EPollReactor. Run as root.
#
#     tools/echo_syscalls.sh uring|epoll CONNECTIONS
#
# Needs /tmp/echo_client (cc -O2 -o /tmp/echo_client benchmarks/echo_client.c) and
# once: perf probe -x /lib/x86_64-linux-gnu/libc.so.6 malloc
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SRV=$(mktemp --suffix=.py)
PORTFILE=$(mktemp)
cat > "$SRV" <<'PYEOF'
import sys
if sys.argv[1] == "uring":
    from txuring import reactor as r
else:
    from twisted.internet import epollreactor as r
r.install()
from twisted.internet import reactor, protocol
class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)
port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), backlog=1024, interface="127.0.0.1")
open(sys.argv[2], "w").write(str(port.getHost().port))
reactor.run()
PYEOF
run() {  # run MODE: "strace" or "malloc"
    : > "$PORTFILE"
    if [ "$1" = malloc ]; then PYTHONMALLOC=malloc $PY "$SRV" "$NAME" "$PORTFILE" & else $PY "$SRV" "$NAME" "$PORTFILE" & fi
    SP=$!
    while [ ! -s "$PORTFILE" ]; do sleep 0.1; done
    sleep 0.3
    /tmp/echo_client "$(cat "$PORTFILE")" "$CONNS" 64 0.5 > /dev/null
    OUT=$(mktemp)
    if [ "$1" = strace ]; then
        strace -c -f -p $SP -o "$OUT" & TP=$!
        sleep 0.5
    else
        perf stat -e probe_libc:malloc -p $SP -o "$OUT" -- sleep 2 & TP=$!
    fi
    RATE=$(/tmp/echo_client "$(cat "$PORTFILE")" "$CONNS" 64 2)
    if [ "$1" = strace ]; then sleep 0.2; kill -INT $TP; fi
    wait $TP 2>/dev/null || true
    kill $SP; wait $SP 2>/dev/null || true
    REQ=$(python3 -c "print(int($RATE * 2))")
    if [ "$1" = strace ]; then
        echo "$NAME, $CONNS connections: system calls per request (~$REQ requests):"
        awk -v r="$REQ" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {printf "  %-16s %.3f\n", $NF, $4 / r}' "$OUT" | sort -k2 -rn | head -6
    else
        M=$(grep probe_libc "$OUT" | awk '{gsub(",", "", $1); print $1}')
        python3 -c "print('$NAME, $CONNS connections: %.1f mallocs per request' % ($M / $REQ))"
    fi
    rm -f "$OUT"
}
NAME=$1 CONNS=$2
run strace
run malloc
rm -f "$SRV" "$PORTFILE"
