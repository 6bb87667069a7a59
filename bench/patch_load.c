/* patch_load: the background load of bench/patch_latency.sh.
 *
 * Keeps N keep-alive connections to an explicit proxy busy with plain-HTTP requests in absolute
 * form that carry one sandbox's Proxy-Authorization (closed loop: each connection sends its
 * next request as soon as the previous response is in), and records how many responses
 * completed in each millisecond, on CLOCK_MONOTONIC — the clock Python's time.monotonic_ns()
 * reads, so the PATCH driver can line its PATCHes up with the load's throughput.
 *
 *   patch_load --connect 127.0.0.1:PROXY --target http://origin.test:PORT/ --host origin.test:PORT
 *              --auth 'Basic ...' -c 32 -d 60 --out FILE
 *
 * Runs for -d seconds or until SIGTERM/SIGINT, then writes FILE: a first line
 * "start_ns=... bucket_ms=1 ok=... errors=... error_kinds=..." and then one line per millisecond,
 * "OK ERR" (responses with a 2xx status / failed exchanges completed in that millisecond).
 * A failed exchange (connect error, reset, non-2xx, unparseable) closes the connection, which
 * reconnects after 10 ms. One thread, one edge-triggered epoll set. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PL_MAX_CONNS 1024
#define PL_INBUF     16384
#define PL_RETRY_NS  (10ull * 1000 * 1000)
#define PL_MAX_SECS  3600

enum pl_state { PL_FREE, PL_CONNECTING, PL_SEND, PL_READ };
enum pl_err { PL_E_CONNECT, PL_E_IO, PL_E_STATUS, PL_E_PARSE, PL_E_COUNT };
static const char *const pl_err_names[PL_E_COUNT] = {"connect", "io", "status", "parse"};

struct pl_conn {
    int fd;
    enum pl_state st;
    size_t sent;
    char in[PL_INBUF];
    size_t inlen;
    uint64_t t_retry;
};

struct pl {
    struct sockaddr_in addr;
    char *req;
    size_t reqlen;
    int ep;
    uint64_t t0;
    uint32_t (*buckets)[2]; /* [ms][0 ok, 1 err] */
    size_t n_buckets;
    uint64_t errs[PL_E_COUNT];
};

static volatile sig_atomic_t pl_stop;

static void pl_on_signal(int sig)
{
    (void)sig;
    pl_stop = 1;
}

static void pl_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "patch_load: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static uint64_t pl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pl_count(struct pl *p, int err)
{
    uint64_t ms = (pl_now() - p->t0) / 1000000ull;
    if (ms < p->n_buckets)
        p->buckets[ms][err ? 1 : 0]++;
}

static void pl_close(struct pl *p, struct pl_conn *c, int err)
{
    if (err >= 0) {
        p->errs[err]++;
        pl_count(p, 1);
    }
    if (c->fd != -1)
        close(c->fd);
    c->fd = -1;
    c->st = PL_FREE;
    c->t_retry = pl_now() + PL_RETRY_NS;
}

static void pl_connect(struct pl *p, struct pl_conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd == -1)
        pl_die("socket: %s", strerror(errno));
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(p->ep, EPOLL_CTL_ADD, c->fd, &ev) == -1)
        pl_die("epoll_ctl: %s", strerror(errno));
    c->inlen = 0;
    c->sent = 0;
    if (connect(c->fd, (struct sockaddr *)&p->addr, sizeof(p->addr)) == 0)
        c->st = PL_SEND;
    else if (errno == EINPROGRESS)
        c->st = PL_CONNECTING;
    else
        pl_close(p, c, PL_E_CONNECT);
}

/* Length of a complete response at the start of c->in (0: not complete yet, -1: unparseable),
 * and its status in *status. Responses are framed by Content-Length (nginx's fixed bodies). */
static long pl_response_len(const struct pl_conn *c, int *status)
{
    const char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
    if (end == NULL)
        return c->inlen >= sizeof(c->in) ? -1 : 0;
    size_t hlen = (size_t)(end - c->in) + 4;
    if (hlen < 12 || memcmp(c->in, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(c->in + 9);
    long body = -1;
    for (const char *l = memchr(c->in, '\n', hlen); l != NULL && l < end;
         l = memchr(l + 1, '\n', (size_t)(end - l))) {
        if (strncasecmp(l + 1, "content-length:", 15) == 0)
            body = strtol(l + 16, NULL, 10);
    }
    if (body < 0 || hlen + (size_t)body > sizeof(c->in))
        return -1;
    return c->inlen >= hlen + (size_t)body ? (long)(hlen + (size_t)body) : 0;
}

static void pl_drive(struct pl *p, struct pl_conn *c)
{
    for (;;) {
        if (c->st == PL_CONNECTING) {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 || err != 0) {
                if (err == EINPROGRESS)
                    return;
                pl_close(p, c, PL_E_CONNECT);
                return;
            }
            c->st = PL_SEND;
        }
        if (c->st == PL_SEND) {
            ssize_t n = send(c->fd, p->req + c->sent, p->reqlen - c->sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN)
                    pl_close(p, c, PL_E_IO);
                return;
            }
            c->sent += (size_t)n;
            if (c->sent < p->reqlen)
                continue;
            c->st = PL_READ;
        }
        if (c->st == PL_READ) {
            ssize_t n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN)) {
                pl_close(p, c, PL_E_IO);
                return;
            }
            if (n > 0)
                c->inlen += (size_t)n;
            int status = 0;
            long rlen = pl_response_len(c, &status);
            if (rlen < 0) {
                pl_close(p, c, PL_E_PARSE);
                return;
            }
            if (rlen == 0) {
                if (n < 0)
                    return; /* EAGAIN: wait for more */
                continue;
            }
            if (status < 200 || status > 299) {
                pl_close(p, c, PL_E_STATUS);
                return;
            }
            pl_count(p, 0);
            memmove(c->in, c->in + rlen, c->inlen - (size_t)rlen);
            c->inlen -= (size_t)rlen;
            c->sent = 0;
            c->st = PL_SEND;
            continue;
        }
        return;
    }
}

int main(int argc, char **argv)
{
    const char *connect_to = NULL, *target = NULL, *host = NULL, *auth = NULL, *out = NULL;
    int conns = 32, secs = 60;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            pl_die("%s needs a value", a);
        if (strcmp(a, "--connect") == 0)
            connect_to = v;
        else if (strcmp(a, "--target") == 0)
            target = v;
        else if (strcmp(a, "--host") == 0)
            host = v;
        else if (strcmp(a, "--auth") == 0)
            auth = v;
        else if (strcmp(a, "--out") == 0)
            out = v;
        else if (strcmp(a, "-c") == 0)
            conns = atoi(v);
        else if (strcmp(a, "-d") == 0)
            secs = atoi(v);
        else
            pl_die("unknown option %s", a);
        i++;
    }
    if (connect_to == NULL || target == NULL || host == NULL || out == NULL)
        pl_die("usage: --connect IP:PORT --target URL --host HOST [--auth VALUE] [-c N] [-d S] "
               "--out FILE");
    if (conns < 1 || conns > PL_MAX_CONNS || secs < 1 || secs > PL_MAX_SECS)
        pl_die("-c 1..%d, -d 1..%d", PL_MAX_CONNS, PL_MAX_SECS);

    struct pl p = {0};
    char ip[64];
    const char *colon = strrchr(connect_to, ':');
    if (colon == NULL || (size_t)(colon - connect_to) >= sizeof(ip))
        pl_die("--connect wants IPv4:PORT");
    memcpy(ip, connect_to, (size_t)(colon - connect_to));
    ip[colon - connect_to] = '\0';
    p.addr.sin_family = AF_INET;
    p.addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, ip, &p.addr.sin_addr) != 1)
        pl_die("--connect wants an IPv4 literal");
    size_t cap = strlen(target) + strlen(host) + (auth ? strlen(auth) : 0) + 200;
    p.req = malloc(cap);
    if (p.req == NULL)
        pl_die("out of memory");
    int n = snprintf(p.req, cap,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: authproxy-patch-bench/1\r\n"
                     "%s%s%s\r\n",
                     target, host, auth ? "Proxy-Authorization: " : "", auth ? auth : "",
                     auth ? "\r\n" : "");
    p.reqlen = (size_t)n;
    p.n_buckets = (size_t)secs * 1000 + 1000;
    p.buckets = calloc(p.n_buckets, sizeof(*p.buckets));
    struct pl_conn *cs = calloc((size_t)conns, sizeof(*cs));
    if (p.buckets == NULL || cs == NULL)
        pl_die("out of memory");
    p.ep = epoll_create1(EPOLL_CLOEXEC);
    if (p.ep == -1)
        pl_die("epoll_create1: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, pl_on_signal);
    signal(SIGINT, pl_on_signal);

    p.t0 = pl_now();
    uint64_t t_end = p.t0 + (uint64_t)secs * 1000000000ull;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = -1;
        pl_connect(&p, &cs[i]);
    }
    struct epoll_event evs[256];
    while (!pl_stop) {
        uint64_t now = pl_now();
        if (now >= t_end)
            break;
        for (int i = 0; i < conns; i++)
            if (cs[i].st == PL_FREE && now >= cs[i].t_retry)
                pl_connect(&p, &cs[i]);
        int k = epoll_wait(p.ep, evs, 256, 5);
        if (k < 0 && errno != EINTR)
            pl_die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < k; i++)
            pl_drive(&p, evs[i].data.ptr);
    }
    size_t used = (pl_now() - p.t0) / 1000000ull + 1;
    if (used > p.n_buckets)
        used = p.n_buckets;
    FILE *f = fopen(out, "w");
    if (f == NULL)
        pl_die("cannot write %s: %s", out, strerror(errno));
    uint64_t ok = 0, bad = 0;
    for (size_t i = 0; i < used; i++) {
        ok += p.buckets[i][0];
        bad += p.buckets[i][1];
    }
    fprintf(f,
            "start_ns=%llu bucket_ms=1 ok=%llu errors=%llu error_kinds=", (unsigned long long)p.t0,
            (unsigned long long)ok, (unsigned long long)bad);
    for (int e = 0; e < PL_E_COUNT; e++)
        fprintf(f, "%s%s:%llu", e ? "," : "", pl_err_names[e], (unsigned long long)p.errs[e]);
    fprintf(f, "\n");
    for (size_t i = 0; i < used; i++)
        fprintf(f, "%u %u\n", p.buckets[i][0], p.buckets[i][1]);
    fclose(f);
    for (int i = 0; i < conns; i++)
        if (cs[i].fd != -1)
            close(cs[i].fd);
    free(cs);
    free(p.buckets);
    free(p.req);
    return 0;
}
