/*
 * The ceiling of benchmarks/suite.py: the same services as suite_server.py, served by a
 * small single-threaded C epoll loop (level-triggered, no buffering beyond the kernel's).
 * With the same load generator, its rate is what this box reaches with no Python at all,
 * and its CPU per request is the kernel's share.
 *
 *     c_server HTTP_BODY_SIZE
 *
 * Listens on 127.0.0.1 (ports chosen by the kernel) for
 *   echo     write back whatever arrives
 *   discard  read and drop
 *   source   write 16 KiB chunks for as long as the peer reads
 *   http     answer every request (anything up to a blank line) with a 200 and a body of
 *            HTTP_BODY_SIZE bytes, keep-alive
 * and prints {"echo": PORT, ...} on stdout. Runs until killed.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum { ECHO, DISCARD, SOURCE, HTTP, NSERVICES };
static const char *names[NSERVICES] = {"echo", "discard", "source", "http"};

#define CHUNK 16384
#define MAXFD 65536

static unsigned char service_of[MAXFD]; /* the service of a connection */
static unsigned char http_tail[MAXFD];  /* http: how much of "\r\n\r\n" ended the last read */
static int listeners[NSERVICES];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue; /* small replies: the peer is reading, spin */
            return;       /* the peer went away: its EPOLLHUP closes it */
        }
        data += n;
        len -= n;
    }
}

int main(int argc, char **argv)
{
    int body = argc > 1 ? atoi(argv[1]) : 64;
    char response[1024], chunk[CHUNK], buf[65536];
    int hlen = snprintf(response, sizeof response,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\n\r\n", body);
    memset(response + hlen, 'x', body);
    int rlen = hlen + body;
    memset(chunk, 'x', sizeof chunk);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max < MAXFD ? rl.rlim_max : MAXFD;
    setrlimit(RLIMIT_NOFILE, &rl);

    int ep = epoll_create1(0);
    printf("{");
    for (int s = 0; s < NSERVICES; s++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        struct sockaddr_in sa = {.sin_family = AF_INET};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        socklen_t len = sizeof sa;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
            die("listen");
        listeners[s] = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        printf("%s\"%s\": %d", s ? ", " : "", names[s], ntohs(sa.sin_port));
    }
    printf("}\n");
    fflush(stdout);

    struct epoll_event events[512];
    for (;;) {
        int n = epoll_wait(ep, events, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            int fd = events[e].data.fd, s;
            for (s = 0; s < NSERVICES && listeners[s] != fd; s++)
                ;
            if (s < NSERVICES) {
                int c;
                while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    if (c >= MAXFD) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    service_of[c] = s;
                    http_tail[c] = 0;
                    struct epoll_event ev = {.events = s == SOURCE ? EPOLLIN | EPOLLOUT : EPOLLIN,
                                             .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            s = service_of[fd];
            if (s == SOURCE && (events[e].events & EPOLLOUT)) {
                ssize_t w;
                while ((w = write(fd, chunk, sizeof chunk)) > 0)
                    ;
                if (w < 0 && errno != EAGAIN) {
                    close(fd);
                    continue;
                }
            }
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t got = read(fd, buf, sizeof buf);
            if (got < 0 && errno == EAGAIN)
                continue;
            if (got <= 0) {
                close(fd);
                continue;
            }
            if (s == ECHO) {
                write_all(fd, buf, got);
            } else if (s == HTTP) {
                /* Count the request ends ("\r\n\r\n"), also when split across reads. */
                static const char end[] = "\r\n\r\n";
                int state = http_tail[fd], replies = 0;
                for (ssize_t i = 0; i < got; i++) {
                    if (buf[i] == end[state])
                        state++;
                    else
                        state = buf[i] == '\r' ? 1 : 0;
                    if (state == 4) {
                        replies++;
                        state = 0;
                    }
                }
                http_tail[fd] = state;
                while (replies--)
                    write_all(fd, response, rlen);
            }
        }
    }
}
