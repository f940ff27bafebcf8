/*
 * The load generator of benchmarks/suite.py: one process, one thread, epoll, so that a
 * Python server is never waiting on its client. suite.py compiles it at run time with
 * the system C compiler (and a second time with -DWITH_OPENSSL for TLS echo).
 *
 *     loadgen MODE PORT CONNS SIZE WARMUP SECONDS SERVER_PID
 *
 * MODE is one of
 *   echo      CONNS connections, each keeping one SIZE-byte request in flight and
 *             waiting for SIZE bytes back (a unit is one round trip)
 *   tlsecho   the same over TLS (OpenSSL; only when built with -DWITH_OPENSSL)
 *   http      CONNS HTTP/1.1 keep-alive connections, one GET /hello in flight on each,
 *             no pipelining; a response is complete after its Content-Length
 *   sink      CONNS connections writing SIZE-byte chunks as fast as the server reads
 *             (a unit is one byte written)
 *   source    CONNS connections reading what the server writes (a unit is one byte read)
 *   connrate  CONNS slots, each looping: connect, send SIZE bytes, read SIZE bytes back,
 *             close (a unit is one connection)
 *   idle      CONNS connections, one SIZE-byte exchange each, then print {"ready": N}
 *             and hold them open until stdin reaches EOF
 *
 * The run has two phases: WARMUP seconds of load that is not counted, then a measured
 * window of SECONDS. At both edges of the window the client reads the server's
 * utime+stime from /proc/SERVER_PID/stat and its own CPU time from getrusage(), so the
 * figures cover exactly the window; and the whole machine's busy CPU time from /proc/stat,
 * so that the suite can tell how much CPU other processes took meanwhile (busy_cpu_s).
 * It prints one JSON object on stdout.
 *
 * With LOADGEN_EDGE_HOOK set, that shell command is run with "start" appended just before
 * the window opens and with "end" just after it closes (bench_instr.py uses it to count
 * only the window's instructions under callgrind).
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define HIST_US 2000000 /* latency histogram: 1 us buckets up to 2 s (more counts as 2 s) */
#define HTTP_BUF 8192

static unsigned *hist;
static long long hist_n;
static int port, nconn, size, server_pid;
static double warmup, seconds;
static struct sockaddr_in addr;

struct conn {
    int fd;
    long long got;        /* bytes of the current reply received */
    double sent;          /* when the current request (or connect) started */
    char *buf;            /* http: the response so far */
    int buflen;
#ifdef WITH_OPENSSL
    SSL *ssl;
#endif
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double server_cpu(void)
{
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    /* The command name may hold spaces: fields are counted from its closing paren.
       utime and stime are fields 14 and 15, that is the 12th and 13th after it. */
    char *p = strrchr(text, ')');
    if (!p)
        return -1;
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

/* CPU seconds all CPUs spent busy (not idle, not waiting for I/O), from /proc/stat. */
static double busy_cpu(void)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / sysconf(_SC_CLK_TCK);
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* LOADGEN_EDGE_HOOK: a shell command run (with "start" or "end" appended) at the edges
 * of the measured window, while no request is in flight on this side: bench_instr.py
 * turns callgrind's instrumentation of the server on and off with it. */
static void run_hook(const char *hook, const char *edge)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s", hook, edge);
    if (system(cmd) != 0)
        fprintf(stderr, "loadgen: LOADGEN_EDGE_HOOK %s failed\n", edge);
}

static void record(double seconds_taken)
{
    long us = (long)(seconds_taken * 1e6);
    if (us >= HIST_US)
        us = HIST_US - 1;
    if (us < 0)
        us = 0;
    hist[us]++;
    hist_n++;
}

static double percentile(double q)
{
    if (!hist_n)
        return -1;
    long long want = (long long)(q * hist_n), seen = 0;
    for (long i = 0; i < HIST_US; i++) {
        seen += hist[i];
        if (seen > want)
            return i + 0.5;
    }
    return HIST_US;
}

static void nonblocking(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int new_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0)
        die("socket");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int connect_blocking(void)
{
    int fd = new_socket();
    for (int tries = 0; connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0; tries++) {
        if (errno != EINTR && (errno != EAGAIN || tries > 100))
            die("connect");
    }
    return fd;
}

static void write_all(int fd, const char *data, int len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            die("write");
        }
        data += n;
        len -= n;
    }
}

static void read_exactly(int fd, char *buf, int len)
{
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n == 0) {
            errno = ECONNRESET;
            die("read");
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            die("read");
        }
        buf += n;
        len -= n;
    }
}

/* http: the number of bytes of the first complete response in buf, or 0. */
static int http_complete(struct conn *c)
{
    char *end = memmem(c->buf, c->buflen, "\r\n\r\n", 4);
    if (!end)
        return 0;
    if (c->buflen < 12 || memcmp(c->buf + 9, "200", 3) != 0) {
        fprintf(stderr, "loadgen: bad HTTP response: %.*s\n", c->buflen, c->buf);
        exit(1);
    }
    *end = 0;
    char *cl = strcasestr(c->buf, "\ncontent-length:");
    *end = '\r';
    if (!cl) {
        fprintf(stderr, "loadgen: HTTP response without Content-Length\n");
        exit(1);
    }
    int total = (int)(end + 4 - c->buf) + atoi(cl + 16);
    return c->buflen >= total ? total : 0;
}

static const char http_request[] = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: %s MODE PORT CONNS SIZE WARMUP SECONDS SERVER_PID\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    port = atoi(argv[2]);
    nconn = atoi(argv[3]);
    size = atoi(argv[4]);
    warmup = atof(argv[5]);
    seconds = atof(argv[6]);
    server_pid = atoi(argv[7]);
    int echo = !strcmp(mode, "echo"), tls = !strcmp(mode, "tlsecho"),
        http = !strcmp(mode, "http"), sink = !strcmp(mode, "sink"),
        source = !strcmp(mode, "source"), connrate = !strcmp(mode, "connrate"),
        idle = !strcmp(mode, "idle");
    if (!(echo || tls || http || sink || source || connrate || idle)) {
        fprintf(stderr, "loadgen: unknown mode %s\n", mode);
        return 2;
    }
#ifndef WITH_OPENSSL
    if (tls) {
        fprintf(stderr, "loadgen: built without OpenSSL\n");
        return 2;
    }
#else
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
#endif
    hist = calloc(HIST_US, sizeof *hist);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int bufsize = size > 262144 ? size : 262144;
    char *request = malloc(size > 0 ? size : 1), *buf = malloc(bufsize);
    memset(request, 'x', size);
    struct conn *conns = calloc(nconn, sizeof *conns);
    int ep = epoll_create1(0);

    if (idle) {
        for (int i = 0; i < nconn; i++) {
            conns[i].fd = connect_blocking();
            write_all(conns[i].fd, request, size);
            read_exactly(conns[i].fd, buf, size);
        }
        printf("{\"ready\": %d}\n", nconn);
        fflush(stdout);
        while (read(0, buf, bufsize) > 0)
            ;
        return 0;
    }

    /* Set up the connections and start the load. */
    for (int i = 0; i < nconn && !connrate; i++) {
        struct conn *c = &conns[i];
        c->fd = connect_blocking();
#ifdef WITH_OPENSSL
        if (tls) {
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            if (SSL_connect(c->ssl) != 1) {
                ERR_print_errors_fp(stderr);
                return 1;
            }
        }
#endif
        nonblocking(c->fd);
        struct epoll_event ev = {.events = sink ? EPOLLOUT : EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
        if (http)
            c->buf = malloc(HTTP_BUF);
    }
    double start = now();
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        c->sent = start;
        if (echo)
            write_all(c->fd, request, size);
        else if (http)
            write_all(c->fd, http_request, sizeof http_request - 1);
#ifdef WITH_OPENSSL
        else if (tls && SSL_write(c->ssl, request, size) != size)
            die("SSL_write");
#endif
        else if (connrate) {
            c->fd = -1;
            c->got = -1; /* not started */
        }
    }

    long long units = 0, errors = 0;
    int measuring = 0;
    const char *edge_hook = getenv("LOADGEN_EDGE_HOOK");
    double t0 = 0, scpu0 = 0, ccpu0 = 0, busy0 = 0, warm_end = start + warmup, end = warm_end + seconds;
    struct epoll_event events[512];
    for (;;) {
        double t = now();
        if (!measuring && t >= warm_end) {
            if (edge_hook) {
                run_hook(edge_hook, "start");
                t = now();
                end = t + seconds;
            }
            measuring = 1;
            units = 0;
            errors = 0;
            memset(hist, 0, HIST_US * sizeof *hist);
            hist_n = 0;
            t0 = t;
            scpu0 = server_cpu();
            ccpu0 = self_cpu();
            busy0 = busy_cpu();
        }
        if (t >= end)
            break;
        if (connrate) {
            /* Start a connection in every free slot. */
            for (int i = 0; i < nconn; i++) {
                struct conn *c = &conns[i];
                if (c->fd >= 0)
                    continue;
                c->fd = new_socket();
                nonblocking(c->fd);
                c->got = 0;
                c->sent = t;
                if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 &&
                    errno != EINPROGRESS) {
                    errors++;
                    close(c->fd);
                    c->fd = -1;
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                    die("epoll_ctl");
            }
        }
        int n = epoll_wait(ep, events, 512, 10);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        t = now();
        for (int e = 0; e < n; e++) {
            int i = events[e].data.u32;
            struct conn *c = &conns[i];
            if (sink) {
                /* Bounded: a server that reads as fast as this writes would otherwise
                   keep the loop here past the edges of the window. */
                for (int k = 0; k < 16; k++) {
                    ssize_t w = write(c->fd, request, size);
                    if (w < 0) {
                        if (errno == EAGAIN)
                            break;
                        die("write");
                    }
                    units += w;
                }
                continue;
            }
            if (connrate && c->got == 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errors++;
                    close(c->fd);
                    c->fd = -1;
                    continue;
                }
                write_all(c->fd, request, size);
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->got = 1; /* sent; counting replies from 1 */
                continue;
            }
            ssize_t got;
#ifdef WITH_OPENSSL
            if (tls) {
                got = 0;
                for (;;) {
                    int r = SSL_read(c->ssl, buf, bufsize);
                    if (r <= 0) {
                        int why = SSL_get_error(c->ssl, r);
                        if (why == SSL_ERROR_WANT_READ)
                            break;
                        fprintf(stderr, "loadgen: TLS connection %d lost (%d)\n", i, why);
                        ERR_print_errors_fp(stderr);
                        return 1;
                    }
                    got += r;
                }
                if (!got)
                    continue;
            } else
#endif
            {
                got = read(c->fd, http ? c->buf + c->buflen : buf,
                           http ? HTTP_BUF - c->buflen : bufsize);
                if (got < 0 && errno == EAGAIN)
                    continue;
                if (got <= 0) {
                    fprintf(stderr, "loadgen: connection %d closed (%zd, %s)\n", i, got,
                            got ? strerror(errno) : "EOF");
                    return 1;
                }
            }
            if (source) {
                units += got;
                continue;
            }
            if (http) {
                c->buflen += got;
                int whole;
                while ((whole = http_complete(c))) {
                    memmove(c->buf, c->buf + whole, c->buflen - whole);
                    c->buflen -= whole;
                    units++;
                    if (measuring)
                        record(t - c->sent);
                    c->sent = t;
                    write_all(c->fd, http_request, sizeof http_request - 1);
                }
                if (c->buflen == HTTP_BUF) {
                    fprintf(stderr, "loadgen: HTTP response too large\n");
                    return 1;
                }
                continue;
            }
            if (connrate) {
                c->got += got;
                if (c->got > size) {
                    units++;
                    if (measuring)
                        record(t - c->sent);
                    close(c->fd);
                    c->fd = -1;
                }
                continue;
            }
            /* echo, tlsecho */
            c->got += got;
            while (c->got >= size) {
                c->got -= size;
                units++;
                if (measuring)
                    record(t - c->sent);
                c->sent = t;
#ifdef WITH_OPENSSL
                if (tls) {
                    if (SSL_write(c->ssl, request, size) != size) {
                        fprintf(stderr, "loadgen: SSL_write failed\n");
                        return 1;
                    }
                    continue;
                }
#endif
                write_all(c->fd, request, size);
            }
        }
    }
    double t1 = now(), scpu1 = server_cpu(), ccpu1 = self_cpu(), busy1 = busy_cpu();
    if (edge_hook)
        run_hook(edge_hook, "end");
    printf("{\"mode\": \"%s\", \"conns\": %d, \"size\": %d, \"units\": %lld, "
           "\"seconds\": %.6f, \"server_cpu_s\": %.3f, \"client_cpu_s\": %.6f, "
           "\"busy_cpu_s\": %.3f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"errors\": %lld}\n",
           mode, nconn, size, units, t1 - t0, scpu0 < 0 || scpu1 < 0 ? -1 : scpu1 - scpu0,
           ccpu1 - ccpu0, busy0 < 0 || busy1 < 0 ? -1 : busy1 - busy0, percentile(0.5), percentile(0.99), errors);
    return 0;
}
