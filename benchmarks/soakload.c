/*
 * The HTTP load of benchmarks/soak.py: one process, one thread, epoll; CONNS keep-alive
 * HTTP/1.1 connections, each with one GET in flight, cycling through PATH..., for
 * SECONDS; every INTERVAL seconds one JSON line on stdout with what that interval saw:
 *
 *     soakload PORT CONNS SECONDS INTERVAL PATH [PATH...]
 *
 *     {"t": 5.0, "ok": 41234, "errors": 0, "bad_status": 0, "resets": 0,
 *      "timeouts": 0, "connect_errors": 0, "bytes": 12345678}
 *
 * A response counts as ok when its status is 200 and its body is exactly its
 * Content-Length. Anything else is an error of one kind: a status other than 200
 * (bad_status), the connection closed or reset before the response was whole
 * (resets), no byte for 10 s (timeouts), a failed connect (connect_errors). After an
 * error the connection is closed and a new one made, so the load never thins out.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 16384
#define STALL_S 10.0

struct conn {
    int fd;
    int path;            /* index of the path requested */
    char head[HEAD_MAX]; /* the response's head so far */
    int headlen;
    long long body_left; /* -1: still reading the head */
    int status;
    double last;         /* when this connection last made progress */
};

static struct sockaddr_in addr;
static char **paths;
static int npaths, next_path;
static long long ok, errors, bad_status, resets, timeouts, connect_errors, bytes;
static int ep;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_request(struct conn *c)
{
    char req[1024];
    c->path = next_path++ % npaths;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     paths[c->path]);
    c->headlen = 0;
    c->body_left = -1;
    c->status = 0;
    c->last = now();
    return write(c->fd, req, n) == n ? 0 : -1; /* (a small request fits the buffer) */
}

static void open_conn(struct conn *c)
{
    for (;;) {
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd >= 0 && connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            break;
        connect_errors++;
        errors++;
        if (c->fd >= 0)
            close(c->fd);
        usleep(10000);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    if (send_request(c) < 0) {
        /* handled as a reset on the next read */
    }
}

static void reopen(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    open_conn(c);
}

/* Parse the head in c->head; return 1 when complete (sets status, body_left). */
static int parse_head(struct conn *c, int *consumed)
{
    char *end = memmem(c->head, c->headlen, "\r\n\r\n", 4);
    if (!end)
        return 0;
    *end = 0;
    c->status = atoi(c->head + 9); /* "HTTP/1.1 200" */
    char *cl = strcasestr(c->head, "\r\ncontent-length:");
    c->body_left = cl ? atoll(cl + 17) : 0;
    *consumed = (int)(end - c->head) + 4;
    return 1;
}

static void finished(struct conn *c)
{
    if (c->status == 200) {
        ok++;
    } else {
        bad_status++;
        errors++;
    }
    send_request(c);
}

static void on_readable(struct conn *c)
{
    char buf[65536];
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN)
            return;
        resets++;
        errors++;
        reopen(c);
        return;
    }
    bytes += n;
    c->last = now();
    char *p = buf;
    while (n > 0) {
        if (c->body_left < 0) {
            int room = HEAD_MAX - 1 - c->headlen;
            int take = n < room ? (int)n : room;
            memcpy(c->head + c->headlen, p, take);
            c->headlen += take;
            int consumed;
            if (!parse_head(c, &consumed)) {
                if (c->headlen >= HEAD_MAX - 1) {
                    bad_status++;
                    errors++;
                    reopen(c);
                    return;
                }
                return;
            }
            int used = consumed - (c->headlen - take);
            p += used;
            n -= used;
        } else {
            long long take = n < c->body_left ? n : c->body_left;
            c->body_left -= take;
            p += take;
            n -= take;
        }
        if (c->body_left == 0)
            finished(c);
    }
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s PORT CONNS SECONDS INTERVAL PATH [PATH...]\n", argv[0]);
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int nconn = atoi(argv[2]);
    double seconds = atof(argv[3]), interval = atof(argv[4]);
    paths = argv + 5;
    npaths = argc - 5;
    ep = epoll_create1(0);
    struct conn *conns = calloc(nconn, sizeof *conns);
    for (int i = 0; i < nconn; i++)
        open_conn(&conns[i]);
    double start = now(), next = start + interval, end = start + seconds;
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++)
            on_readable(evs[i].data.ptr);
        double t = now();
        if (t >= next) {
            for (int i = 0; i < nconn; i++)
                if (t - conns[i].last > STALL_S) {
                    timeouts++;
                    errors++;
                    reopen(&conns[i]);
                }
            printf("{\"t\": %.2f, \"ok\": %lld, \"errors\": %lld, \"bad_status\": %lld, "
                   "\"resets\": %lld, \"timeouts\": %lld, \"connect_errors\": %lld, "
                   "\"bytes\": %lld}\n", t - start, ok, errors, bad_status, resets,
                   timeouts, connect_errors, bytes);
            fflush(stdout);
            ok = errors = bad_status = resets = timeouts = connect_errors = bytes = 0;
            next += interval;
            if (t >= end)
                break;
        }
    }
    return 0;
}
