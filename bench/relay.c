/* relay: the floor under any user-space proxy on this machine, for authproxy's benchmarks.
 *
 * It accepts TCP connections, opens one upstream connection for each, and copies bytes both
 * ways without looking at them: no parsing, no policy, no header injection, no audit, no
 * allocation after accept. Per request it makes the same system calls a keep-alive HTTP proxy
 * cannot avoid (read from the client, write upstream, read the answer, write it back, and a
 * share of epoll_wait), so its throughput ratio to the direct path is what the machine's
 * kernel, loopback and scheduler leave for a proxy that does nothing at all. authproxy's ratio
 * is read against it (bench/README.md).
 *
 *   relay --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [-t THREADS]
 *
 * Each thread has its own SO_REUSEPORT listener and level-triggered epoll set; a connection
 * and its upstream live on the thread that accepted it. Runs until killed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RELAY_BUF 16384
#define RELAY_MAX_THREADS 16

/* One direction's endpoint: the socket it reads from, the bytes read but not yet written to
 * the other endpoint's socket. */
struct relay_end {
    int fd;
    struct relay_pair *pair;
    struct relay_end *peer;
    size_t off, len; /* pending bytes in buf, read from fd, owed to peer->fd */
    char buf[RELAY_BUF];
};

struct relay_pair {
    struct relay_end client, upstream;
};

static struct sockaddr_in listen_addr, upstream_addr;

static int parse_addr(const char *s, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

/* The events an endpoint's socket waits for: readable while it owes its peer nothing, writable
 * while the peer owes it bytes. */
static void rearm(int ep, struct relay_end *e)
{
    struct epoll_event ev = {.data.ptr = e};
    if (e->len == 0)
        ev.events |= EPOLLIN;
    if (e->peer->len != 0)
        ev.events |= EPOLLOUT;
    epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev);
}

static void pair_close(int ep, struct relay_pair *p)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, p->client.fd, NULL);
    epoll_ctl(ep, EPOLL_CTL_DEL, p->upstream.fd, NULL);
    close(p->client.fd);
    close(p->upstream.fd);
    free(p);
}

/* Writes what E owes its peer's socket; -1 when that socket is dead. Re-arms both sockets
 * when the write could not finish, or when it finished a backlog left by an earlier one. */
static int flush_to_peer(int ep, struct relay_end *e)
{
    int had_backlog = e->off != 0;
    while (e->len != 0) {
        ssize_t n = write(e->peer->fd, e->buf + e->off, e->len);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            return -1;
        }
        e->off += (size_t)n;
        e->len -= (size_t)n;
    }
    if (e->len == 0)
        e->off = 0;
    if (e->len != 0 || had_backlog) {
        rearm(ep, e);
        rearm(ep, e->peer);
    }
    return 0;
}

static void on_event(int ep, struct relay_end *e, uint32_t events)
{
    if ((events & EPOLLOUT) && flush_to_peer(ep, e->peer) != 0)
        goto dead;
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && e->len == 0) {
        ssize_t n = read(e->fd, e->buf, sizeof(e->buf));
        if (n == 0 || (n < 0 && errno != EAGAIN))
            goto dead;
        if (n > 0) {
            e->len = (size_t)n;
            if (flush_to_peer(ep, e) != 0)
                goto dead;
        }
    }
    return;
dead:
    pair_close(ep, e->pair);
}

static int add_end(int ep, struct relay_end *e)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = e};
    return epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev);
}

/* Accepts one client and connects its upstream (blocking: the upstream is on loopback, and the
 * floor is measured on keep-alive connections, where connecting is outside the requests). */
static void accept_one(int ep, int lfd)
{
    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    int ufd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (ufd < 0 || connect(ufd, (struct sockaddr *)&upstream_addr, sizeof(upstream_addr)) != 0 ||
        fcntl(ufd, F_SETFL, O_NONBLOCK) != 0) {
        close(cfd);
        if (ufd >= 0)
            close(ufd);
        return;
    }
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct relay_pair *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        close(cfd);
        close(ufd);
        return;
    }
    p->client = (struct relay_end){.fd = cfd, .pair = p, .peer = &p->upstream};
    p->upstream = (struct relay_end){.fd = ufd, .pair = p, .peer = &p->client};
    if (add_end(ep, &p->client) != 0 || add_end(ep, &p->upstream) != 0)
        pair_close(ep, p);
}

static void *relay_thread(void *arg)
{
    (void)arg;
    int one = 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ep < 0 || lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(lfd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) != 0 ||
        listen(lfd, 1024) != 0) {
        perror("relay: listen");
        exit(1);
    }
    static struct relay_end listener_tag; /* marks the listener's events; never read */
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listener_tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listener_tag)
                accept_one(ep, lfd);
            else
                on_event(ep, evs[i].data.ptr, evs[i].events);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 2;
    const char *listen_s = NULL, *upstream_s = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0)
            listen_s = argv[i + 1];
        else if (strcmp(argv[i], "--upstream") == 0)
            upstream_s = argv[i + 1];
        else if (strcmp(argv[i], "-t") == 0)
            threads = atoi(argv[i + 1]);
    }
    if (listen_s == NULL || upstream_s == NULL || parse_addr(listen_s, &listen_addr) != 0 ||
        parse_addr(upstream_s, &upstream_addr) != 0 || threads < 1 || threads > RELAY_MAX_THREADS) {
        fprintf(stderr, "usage: relay --listen IP:PORT --upstream IP:PORT [-t THREADS (1-%d)]\n",
                RELAY_MAX_THREADS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pthread_t t[RELAY_MAX_THREADS];
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, relay_thread, NULL) != 0) {
            fprintf(stderr, "relay: cannot start a thread\n");
            return 1;
        }
    pthread_join(t[0], NULL);
    return 0;
}
