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
 *         [--tls CERT KEY --upstream-tls NAME CAFILE]
 *
 * With --tls it is the same floor for intercepted HTTPS: it terminates the client's TLS with
 * CERT/KEY, speaks TLS to the upstream (SNI and verified name NAME, trust CAFILE), and copies
 * the plaintext between the two, record by record, with read-ahead on both sides as authproxy
 * has. Handshakes are done blocking at accept: the floor is measured on keep-alive
 * connections, where they are outside the requests.
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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define RELAY_BUF 16384
#define RELAY_MAX_THREADS 16

/* One direction's endpoint: the socket it reads from, the bytes read but not yet written to
 * the other endpoint's socket. */
struct relay_end {
    int fd;
    SSL *ssl; /* NULL: plain */
    struct relay_pair *pair;
    struct relay_end *peer;
    size_t off, len; /* pending bytes in buf, read from fd, owed to peer->fd */
    char buf[RELAY_BUF];
};

struct relay_pair {
    struct relay_end client, upstream;
    bool closed;               /* sockets closed; freed after the epoll batch that closed it */
    struct relay_pair *next_closed;
};

static struct sockaddr_in listen_addr, upstream_addr;
/* --tls: the client side's context and the upstream's (read-only once the threads run). */
static SSL_CTX *server_ctx, *upstream_ctx;
static const char *upstream_name;

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

static void end_close(int ep, struct relay_end *e)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, e->fd, NULL);
    SSL_free(e->ssl);
    e->ssl = NULL;
    close(e->fd);
}

/* Closes both sockets of P and puts it on *closed, to be freed once the current epoll batch is
 * done: the batch may still hold an event for P's other socket. */
static void pair_close(int ep, struct relay_pair *p, struct relay_pair **closed)
{
    end_close(ep, &p->client);
    end_close(ep, &p->upstream);
    p->closed = true;
    p->next_closed = *closed;
    *closed = p;
}

/* Reads what E's socket (or TLS) has into E's buffer: bytes read, 0 when nothing is there now,
 * -1 when the connection is over. */
static ssize_t read_some(struct relay_end *e)
{
    if (e->ssl == NULL) {
        ssize_t n = read(e->fd, e->buf, sizeof(e->buf));
        return n > 0 ? n : (n < 0 && errno == EAGAIN ? 0 : -1);
    }
    int n = SSL_read(e->ssl, e->buf, sizeof(e->buf));
    if (n > 0)
        return n;
    int err = SSL_get_error(e->ssl, n);
    return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

/* Writes up to len bytes to E's socket (or TLS): bytes written, 0 when it would block, -1 when
 * the connection is over. */
static ssize_t write_some(struct relay_end *e, const char *buf, size_t len)
{
    if (e->ssl == NULL) {
        ssize_t n = write(e->fd, buf, len);
        return n >= 0 ? n : (errno == EAGAIN ? 0 : -1);
    }
    int n = SSL_write(e->ssl, buf, (int)len);
    if (n > 0)
        return n;
    int err = SSL_get_error(e->ssl, n);
    return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

/* Writes what E owes its peer; -1 when the peer is dead. Re-arms both sockets when the write
 * could not finish, or when it finished a backlog left by an earlier one. */
static int flush_to_peer(int ep, struct relay_end *e)
{
    int had_backlog = e->off != 0;
    while (e->len != 0) {
        ssize_t n = write_some(e->peer, e->buf + e->off, e->len);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
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

/* Moves what E has to read to its peer, as long as the peer takes it: one read from a plain
 * socket (epoll says when there is more), and on TLS as long as OpenSSL holds read-ahead
 * records, which epoll cannot see. -1 when either side is dead. */
static int pump(int ep, struct relay_end *e)
{
    while (e->len == 0) {
        ssize_t n = read_some(e);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        e->len = (size_t)n;
        if (flush_to_peer(ep, e) != 0)
            return -1;
        if (e->ssl == NULL || !SSL_has_pending(e->ssl))
            break;
    }
    return 0;
}

static void on_event(int ep, struct relay_end *e, uint32_t events, struct relay_pair **closed)
{
    if (events & EPOLLOUT) { /* E's socket takes what its peer owes it; then the peer reads on */
        if (flush_to_peer(ep, e->peer) != 0 || (e->peer->len == 0 && pump(ep, e->peer) != 0))
            goto dead;
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && pump(ep, e) != 0)
        goto dead;
    return;
dead:
    pair_close(ep, e->pair, closed);
}

static int add_end(int ep, struct relay_end *e)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = e};
    return epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev);
}

/* With --tls: the blocking handshakes of a new pair (client side as server, upstream side as a
 * verifying client); 0 when both succeeded. */
static int tls_handshakes(struct relay_pair *p)
{
    p->client.ssl = SSL_new(server_ctx);
    p->upstream.ssl = SSL_new(upstream_ctx);
    if (p->client.ssl == NULL || p->upstream.ssl == NULL ||
        SSL_set_fd(p->client.ssl, p->client.fd) != 1 ||
        SSL_set_fd(p->upstream.ssl, p->upstream.fd) != 1 ||
        SSL_set_tlsext_host_name(p->upstream.ssl, upstream_name) != 1 ||
        SSL_set1_host(p->upstream.ssl, upstream_name) != 1)
        return -1;
    if (SSL_accept(p->client.ssl) != 1 || SSL_connect(p->upstream.ssl) != 1) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    return 0;
}

/* Accepts one client and connects its upstream, both blocking until they are ready (the
 * upstream is on loopback, and the floor is measured on keep-alive connections, where
 * connecting and handshakes are outside the requests), then non-blocking in the epoll set. */
static void accept_one(int ep, int lfd)
{
    int one = 1;
    struct relay_pair *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return;
    p->client = (struct relay_end){.fd = -1, .pair = p, .peer = &p->upstream};
    p->upstream = (struct relay_end){.fd = -1, .pair = p, .peer = &p->client};
    p->client.fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (p->client.fd < 0)
        goto fail;
    p->upstream.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (p->upstream.fd < 0 ||
        connect(p->upstream.fd, (struct sockaddr *)&upstream_addr, sizeof(upstream_addr)) != 0)
        goto fail;
    setsockopt(p->client.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(p->upstream.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (server_ctx != NULL && tls_handshakes(p) != 0)
        goto fail;
    if (fcntl(p->client.fd, F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(p->upstream.fd, F_SETFL, O_NONBLOCK) != 0 || add_end(ep, &p->client) != 0 ||
        add_end(ep, &p->upstream) != 0)
        goto fail;
    /* Read-ahead during the handshake may already hold the client's first request (sent with
     * its Finished): epoll will not report it, so move it now. */
    if (p->client.ssl != NULL && SSL_has_pending(p->client.ssl) && pump(ep, &p->client) != 0)
        goto fail;
    return;
fail:
    SSL_free(p->client.ssl);
    SSL_free(p->upstream.ssl);
    epoll_ctl(ep, EPOLL_CTL_DEL, p->client.fd, NULL); /* (fails harmlessly when not added) */
    epoll_ctl(ep, EPOLL_CTL_DEL, p->upstream.fd, NULL);
    if (p->client.fd >= 0)
        close(p->client.fd);
    if (p->upstream.fd >= 0)
        close(p->upstream.fd);
    free(p);
}

/* The two --tls contexts; 0 when both are ready. Read-ahead on both, as authproxy has. */
static int tls_setup(const char *cert, const char *key, const char *cafile)
{
    server_ctx = SSL_CTX_new(TLS_server_method());
    upstream_ctx = SSL_CTX_new(TLS_client_method());
    if (server_ctx == NULL || upstream_ctx == NULL ||
        SSL_CTX_use_certificate_chain_file(server_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(server_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(upstream_ctx, cafile, NULL) != 1) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    SSL_CTX_set_verify(upstream_ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_read_ahead(server_ctx, 1);
    SSL_CTX_set_read_ahead(upstream_ctx, 1);
    SSL_CTX_set_mode(server_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_mode(upstream_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return 0;
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
        struct relay_pair *closed = NULL;
        for (int i = 0; i < n; i++) {
            struct relay_end *e = evs[i].data.ptr;
            if (e == &listener_tag)
                accept_one(ep, lfd);
            else if (!e->pair->closed)
                on_event(ep, e, evs[i].events, &closed);
        }
        while (closed != NULL) {
            struct relay_pair *next = closed->next_closed;
            free(closed);
            closed = next;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 2;
    const char *listen_s = NULL, *upstream_s = NULL, *cert = NULL, *key = NULL, *cafile = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0)
            listen_s = argv[i + 1];
        else if (strcmp(argv[i], "--upstream") == 0)
            upstream_s = argv[i + 1];
        else if (strcmp(argv[i], "-t") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
            cert = argv[i + 1];
            key = argv[++i + 1];
        } else if (strcmp(argv[i], "--upstream-tls") == 0 && i + 2 < argc) {
            upstream_name = argv[i + 1];
            cafile = argv[++i + 1];
        } else {
            listen_s = NULL; /* unknown option: usage */
            break;
        }
    }
    if (listen_s == NULL || upstream_s == NULL || parse_addr(listen_s, &listen_addr) != 0 ||
        parse_addr(upstream_s, &upstream_addr) != 0 || threads < 1 || threads > RELAY_MAX_THREADS ||
        (cert == NULL) != (cafile == NULL)) {
        fprintf(stderr, "usage: relay --listen IP:PORT --upstream IP:PORT [-t THREADS (1-%d)]\n"
                        "             [--tls CERT KEY --upstream-tls NAME CAFILE]\n",
                RELAY_MAX_THREADS);
        return 2;
    }
    if (cert != NULL && tls_setup(cert, key, cafile) != 0)
        return 1;
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
