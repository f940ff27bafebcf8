/*
 * A load client for echo servers: C connections to 127.0.0.1:PORT, each sending a
 * SIZE-byte request and waiting for SIZE bytes back before the next, for SECONDS.
 * Prints the number of completed round trips per second. Built and run by
 * bench_echo.py; written in C (epoll, one thread) so that the client is never the
 * bottleneck of a Python server.
 *
 *     echo_client PORT CONNECTIONS SIZE SECONDS
 */
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

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT CONNECTIONS SIZE SECONDS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), nconn = atoi(argv[2]), size = atoi(argv[3]);
    double seconds = atof(argv[4]);
    char *request = malloc(size), buf[65536];
    int *received = calloc(nconn, sizeof(int));
    int *fds = calloc(nconn, sizeof(int));
    memset(request, 'x', size);

    int ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < nconn; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fds[i], (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("connect");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    long long round_trips = 0;
    double start = now(), end = start + seconds;
    for (int i = 0; i < nconn; i++)
        if (write(fds[i], request, size) != size) {
            perror("write");
            return 1;
        }
    struct epoll_event events[256];
    while (now() < end) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            int i = events[e].data.u32;
            ssize_t got = read(fds[i], buf, sizeof buf);
            if (got <= 0) {
                fprintf(stderr, "connection %d closed (%zd, %s)\n", i, got, strerror(errno));
                return 1;
            }
            received[i] += got;
            while (received[i] >= size) {
                received[i] -= size;
                round_trips++;
                if (write(fds[i], request, size) != size) {
                    perror("write");
                    return 1;
                }
            }
        }
    }
    printf("%.0f\n", round_trips / (now() - start));
    return 0;
}
