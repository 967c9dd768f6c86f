/* The floor for any relay on this machine (bench/proxy.py's 10 MiB series): a TCP relay in C
 * that moves bytes with splice(2) through a pipe, never into user space, with no HTTP, no
 * checks and no event loop. A child process per client connection; each polls its two sockets
 * and splices whatever is readable through to the other side (blocking, 1 MiB at a time).
 *
 * Build: cc -O2 -o splice_relay splice_relay.c
 * Run:   splice_relay LISTEN_PORT UPSTREAM_PORT   (both on 127.0.0.1; stop it by pid)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIPE_BYTES (1 << 20)

/* One read's worth from `from` to `to` through the pipe `p`; -1 once either side is done. */
static int pump(int from, int p[2], int to) {
    ssize_t n = splice(from, NULL, p[1], NULL, PIPE_BYTES, SPLICE_F_MOVE);
    if (n <= 0)
        return -1;
    while (n > 0) {
        ssize_t m = splice(p[0], NULL, to, NULL, (size_t)n, SPLICE_F_MOVE);
        if (m <= 0)
            return -1;
        n -= m;
    }
    return 0;
}

static void relay(int client, struct sockaddr_in upstream_address) {
    int one = 1, up[2], down[2];
    int upstream = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(upstream, (struct sockaddr *)&upstream_address, sizeof upstream_address))
        _exit(1);
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (pipe(up) || pipe(down))
        _exit(1);
    fcntl(up[1], F_SETPIPE_SZ, PIPE_BYTES);
    fcntl(down[1], F_SETPIPE_SZ, PIPE_BYTES);
    struct pollfd sides[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
    while (poll(sides, 2, -1) > 0) {
        if (sides[0].revents && pump(client, up, upstream))
            break;
        if (sides[1].revents && pump(upstream, down, client))
            break;
    }
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    struct sockaddr_in upstream_address = address;
    upstream_address.sin_port = htons(atoi(argv[2]));
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 64)) {
        perror("splice_relay");
        return 1;
    }
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0)
            continue;
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM); /* stopped with the relay, by its pid */
            close(listener);
            relay(client, upstream_address);
        }
        close(client);
    }
}
