/*
 * A small HTTP/1.1 keep-alive load client for bench_web.py (nothing to install):
 *
 *     http_load PORT SECONDS CONNECTIONS PATH [PATH...]
 *
 * CONNECTIONS sockets to 127.0.0.1:PORT, one request in flight on each, the paths
 * taken in turn; every response is read whole (Content-Length). Prints one line:
 * "requests N bytes B seconds S p50_us X p99_us Y errors E".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXLAT 4000000

struct conn {
    int fd;
    char head[8192];
    size_t headlen;
    long long body_left; /* -1: reading headers */
    double started;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char **paths;
static int npaths, next_path;
static double *lat;
static long nlat;

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void send_request(struct conn *c) {
    char req[1024];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n",
                     paths[next_path++ % npaths]);
    c->headlen = 0;
    c->body_left = -1;
    c->started = now();
    if (write(c->fd, req, n) != n) { perror("write"); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: http_load PORT SECONDS CONNS PATH...\n"); return 2; }
    int port = atoi(argv[1]);
    double seconds = atof(argv[2]);
    int nconn = atoi(argv[3]);
    paths = argv + 4;
    npaths = argc - 4;
    lat = malloc(sizeof(double) * MAXLAT);
    int ep = epoll_create1(0);
    struct conn *conns = calloc(nconn, sizeof *conns);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    double start = now(), end = start + seconds;
    for (int i = 0; i < nconn; i++) send_request(&conns[i]);
    long long requests = 0, bytes = 0, errors = 0;
    static char buf[1 << 20];
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            for (;;) {
                ssize_t r = read(c->fd, buf, sizeof buf);
                if (r < 0 && errno == EAGAIN) break;
                if (r <= 0) { fprintf(stderr, "connection closed\n"); return 1; }
                char *p = buf;
                size_t left = r;
                while (left) {
                    if (c->body_left < 0) {
                        size_t take = left < sizeof c->head - c->headlen - 1 ? left : sizeof c->head - c->headlen - 1;
                        memcpy(c->head + c->headlen, p, take);
                        c->headlen += take;
                        c->head[c->headlen] = 0;
                        char *eoh = strstr(c->head, "\r\n\r\n");
                        if (!eoh) { p += take; left -= take; continue; }
                        size_t used = (eoh + 4 - c->head) - (c->headlen - take);
                        p += used; left -= used;
                        if (strncmp(c->head + 9, "200", 3) && strncmp(c->head + 9, "206", 3)) errors++;
                        char *cl = strcasestr(c->head, "\r\ncontent-length:");
                        c->body_left = cl ? atoll(cl + 17) : 0;
                    }
                    long long take = (long long)left < c->body_left ? (long long)left : c->body_left;
                    p += take; left -= take; c->body_left -= take; bytes += take;
                    if (c->body_left == 0) {
                        requests++;
                        if (nlat < MAXLAT) lat[nlat++] = now() - c->started;
                        if (left) { fprintf(stderr, "unexpected extra data\n"); return 1; }
                        send_request(c);
                    }
                }
            }
        }
    }
    double took = now() - start;
    qsort(lat, nlat, sizeof *lat, cmp);
    printf("requests %lld bytes %lld seconds %.3f p50_us %.0f p99_us %.0f errors %lld\n",
           requests, bytes, took, nlat ? lat[nlat / 2] * 1e6 : 0,
           nlat ? lat[(long)(nlat * 0.99)] * 1e6 : 0, errors);
    return 0;
}
