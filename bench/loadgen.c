/* loadgen: a small HTTP/1.1 load generator for authproxy's benchmarks.
 *
 * It exists because wrk cannot speak through an HTTP proxy's CONNECT tunnel and cannot open a
 * new TLS connection per request on purpose. One binary covers every client shape the
 * benchmarks need, so direct and proxied numbers come from the same code:
 *
 *   direct TLS            --connect 127.0.0.1:ORIGIN --tls --sni origin.test --cafile CA
 *   via CONNECT proxy     --connect 127.0.0.1:PROXY --tunnel origin.test:443 --tls --sni ... --cafile PROXYCA
 *   plain through proxy   --connect 127.0.0.1:PROXY --target http://origin.test/
 *
 * Workloads: keep-alive requests on N connections (closed loop, or paced at --rate requests/s
 * in total with latency measured from the scheduled send time, so a stalled server is not
 * hidden by the client waiting for it), one request per new connection (--new-conn: latency
 * includes TCP connect, CONNECT and a full TLS handshake; the client never resumes sessions),
 * and --idle N (open N connections, one request each, print READY, then hold them open).
 *
 * Each thread owns an edge-triggered epoll set and its connections; no locks on the hot path.
 * Latencies go into a log-bucketed histogram (1% resolution) per thread, merged at the end.
 * The last line of stdout is machine-readable: "RESULT key=value ...". */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define LG_HIST_BUCKETS 3200 /* 1.01^3200 ns is far beyond any run */
#define LG_HIST_BASE 1.01
#define LG_INBUF 16384
#define LG_OUTBUF 1024
#define LG_RETRY_NS (50ull * 1000 * 1000) /* back-off before reconnecting after an error */

enum lg_state {
    LG_ST_FREE = 0,      /* no socket; waiting for t_due to (re)connect */
    LG_ST_CONNECTING,    /* non-blocking TCP connect in progress */
    LG_ST_TUNNEL_SEND,   /* writing CONNECT */
    LG_ST_TUNNEL_READ,   /* reading the proxy's answer to CONNECT */
    LG_ST_HANDSHAKE,     /* TLS handshake */
    LG_ST_WAIT,          /* connected, next request scheduled for t_due (rate mode) */
    LG_ST_SEND,          /* writing the request */
    LG_ST_READ,          /* reading the response */
    LG_ST_HOLD,          /* idle mode: one request done, now held open */
};

enum lg_err {
    LG_E_CONNECT = 0, /* TCP connect failed */
    LG_E_TUNNEL,      /* CONNECT not answered with 200 */
    LG_E_TLS,         /* TLS handshake or verification failed */
    LG_E_IO,          /* reset, EOF or TLS error mid-exchange */
    LG_E_STATUS,      /* response status not 2xx */
    LG_E_PARSE,       /* response not parseable */
    LG_E_COUNT
};

static const char *const lg_err_names[LG_E_COUNT] = {"connect", "tunnel", "tls", "io", "status",
                                                     "parse"};

struct lg_hist {
    uint64_t counts[LG_HIST_BUCKETS];
    uint64_t n;
    uint64_t max_ns;
};

/* Options, read-only once threads start. */
struct lg_opts {
    struct sockaddr_in addr;  /* --connect */
    const char *tunnel;       /* --tunnel host:port, or NULL */
    bool tls;                 /* --tls */
    const char *sni;          /* --sni */
    const char *cafile;       /* --cafile */
    const char *target;       /* request-target as sent: "/" or "http://origin.test/" */
    const char *host;         /* Host header */
    int conns;                /* -c */
    int threads;              /* -t */
    double duration;          /* -d seconds (measured part) */
    double warmup;            /* -w seconds before measuring */
    bool new_conn;            /* --new-conn */
    double rate;              /* --rate total req/s, 0 = closed loop */
    int idle;                 /* --idle N, 0 = off */
    double hold;              /* --hold seconds */
    const char *label;        /* --label */
};

struct lg_thread;

/* One client connection; owned by its thread, lives for the whole run (sockets come and go). */
struct lg_conn {
    struct lg_thread *th;
    int fd;
    SSL *ssl;
    enum lg_state st;
    uint64_t t_due;   /* rate mode / retry: when to act next (ns, CLOCK_MONOTONIC) */
    uint64_t t_start; /* latency origin of the exchange in flight */
    size_t out_off;   /* bytes of the current outgoing message already written */
    char in[LG_INBUF];
    size_t in_len;
    /* response framing */
    bool head_done;
    bool chunked;
    bool conn_close;
    int chunk_state; /* 0 size line, 1 data, 2 CRLF after data, 3 trailers */
    uint64_t body_left;
    bool counted_open; /* idle mode: counted as established */
};

struct lg_thread {
    pthread_t tid;
    int idx;
    int ep;
    int tfd;
    struct lg_conn *conns;
    int nconns;
    struct lg_hist hist;
    uint64_t requests;  /* completed within the measured window */
    uint64_t requests_all; /* completed since the start, warm-up included */
    uint64_t handshakes; /* TLS handshakes completed within the window */
    uint64_t errors[LG_E_COUNT];
    uint64_t interval_ns; /* per-connection pacing interval in rate mode */
    uint64_t armed; /* absolute expiry the timerfd is armed for, 0 = disarmed */
    /* idle mode; read by the main thread while the run goes on */
    atomic_int idle_open;   /* completed their request and are held */
    atomic_int idle_failed; /* never got that far */
    atomic_int idle_closed; /* held, then closed by the peer */
};

static struct lg_opts g_opt;
static SSL_CTX *g_ctx;
static char g_req[LG_OUTBUF];
static size_t g_req_len;
static char g_tun[LG_OUTBUF];
static size_t g_tun_len;
static uint64_t g_t_measure; /* start of the measured window */
static uint64_t g_t_end;     /* end of the measured window (not used in idle mode) */
static volatile sig_atomic_t g_stop;
static _Atomic uint64_t g_hold_end = UINT64_MAX; /* idle mode: when the hold phase ends */

static uint64_t lg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void lg_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Prints a message and exits 2: for usage and setup errors only, never mid-run. */
static void lg_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* Records one latency sample (ns) into h; 1% relative resolution. */
static void lg_hist_add(struct lg_hist *h, uint64_t ns)
{
    size_t idx = 0;
    if (ns > 1)
        idx = (size_t)(log((double)ns) / log(LG_HIST_BASE));
    if (idx >= LG_HIST_BUCKETS)
        idx = LG_HIST_BUCKETS - 1;
    h->counts[idx]++;
    h->n++;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

/* Value (µs) at quantile q in [0,1] of h: the geometric middle of the bucket it falls in. */
static double lg_hist_quantile_us(const struct lg_hist *h, double q)
{
    if (h->n == 0)
        return 0.0;
    uint64_t want = (uint64_t)ceil(q * (double)h->n);
    if (want == 0)
        want = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < LG_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            double v = pow(LG_HIST_BASE, (double)i + 0.5) / 1000.0;
            double max_us = (double)h->max_ns / 1000.0;
            return v > max_us ? max_us : v;
        }
    }
    return (double)h->max_ns / 1000.0;
}

/* Closes c's socket and TLS state (if any). A clean TLS close sends close_notify without waiting
 * for the peer's, as browsers and curl do. The conn struct itself stays for reuse. */
static void lg_conn_drop(struct lg_conn *c, bool clean)
{
    if (c->ssl) {
        if (clean)
            SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd != -1) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->st = LG_ST_FREE;
    c->in_len = 0;
    c->out_off = 0;
}

static bool lg_in_window(uint64_t now)
{
    return now >= g_t_measure && now < g_t_end;
}

/* Counts an error of kind k, drops the socket and schedules a reconnect after a back-off (not in
 * idle mode, where a failed connection is simply counted). */
static void lg_conn_fail(struct lg_conn *c, enum lg_err k)
{
    uint64_t now = lg_now();
    struct lg_thread *th = c->th;
    if (g_opt.idle) {
        if (c->counted_open) {
            th->idle_open--;
            th->idle_closed++;
        } else {
            th->idle_failed++;
        }
        c->counted_open = false;
        lg_conn_drop(c, false);
        c->t_due = UINT64_MAX; /* never again */
        return;
    }
    if (lg_in_window(now))
        th->errors[k]++;
    lg_conn_drop(c, false);
    c->t_due = now + LG_RETRY_NS;
}

/* Opens a non-blocking TCP socket towards --connect and registers it (edge-triggered, both
 * directions, once for its lifetime). Returns false after counting the error. */
static bool lg_conn_open(struct lg_conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        lg_conn_fail(c, LG_E_CONNECT);
        return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->t_start = lg_now();
    c->in_len = 0;
    c->out_off = 0;
    c->head_done = false;
    if (connect(fd, (const struct sockaddr *)&g_opt.addr, sizeof(g_opt.addr)) == -1 &&
        errno != EINPROGRESS) {
        lg_conn_fail(c, LG_E_CONNECT);
        return false;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(c->th->ep, EPOLL_CTL_ADD, fd, &ev) == -1) {
        lg_conn_fail(c, LG_E_CONNECT);
        return false;
    }
    c->st = LG_ST_CONNECTING;
    return true;
}

/* Reads into c->in. Returns >0 bytes, 0 on EOF, -1 when it would block, -2 on error. */
static ssize_t lg_read(struct lg_conn *c)
{
    size_t room = sizeof(c->in) - c->in_len;
    if (room == 0)
        return -2;
    if (c->ssl) {
        int n = SSL_read(c->ssl, c->in + c->in_len, (int)room);
        if (n > 0) {
            c->in_len += (size_t)n;
            return n;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -1;
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        ERR_clear_error();
        return -2;
    }
    ssize_t n = read(c->fd, c->in + c->in_len, room);
    if (n > 0) {
        c->in_len += (size_t)n;
        return n;
    }
    if (n == 0)
        return 0;
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : -2;
}

/* Writes buf[c->out_off..len). Returns 1 when all is written, 0 when it would block, -1 on
 * error. */
static int lg_write(struct lg_conn *c, const char *buf, size_t len, bool raw)
{
    while (c->out_off < len) {
        if (c->ssl && !raw) {
            int n = SSL_write(c->ssl, buf + c->out_off, (int)(len - c->out_off));
            if (n > 0) {
                c->out_off += (size_t)n;
                continue;
            }
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return 0;
            ERR_clear_error();
            return -1;
        }
        ssize_t n = write(c->fd, buf + c->out_off, len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return 0;
        return -1;
    }
    return 1;
}

/* Finds the end of an HTTP head in buf; returns its length including the blank line, or 0. */
static size_t lg_head_end(const char *buf, size_t len)
{
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r')
            return i + 1;
    return 0;
}

/* Status code of a response head ("HTTP/1.x NNN ..."), or -1. */
static int lg_status(const char *buf, size_t len)
{
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
        return -1;
    int s = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return -1;
        s = s * 10 + (buf[i] - '0');
    }
    return s;
}

/* Parses the framing headers of a response head of length hlen. Returns false when the head is
 * unusable (no framing we can follow). */
static bool lg_parse_head(struct lg_conn *c, size_t hlen)
{
    bool have_len = false;
    c->chunked = false;
    c->conn_close = false;
    c->body_left = 0;
    c->chunk_state = 0;
    const char *p = memchr(c->in, '\n', hlen);
    while (p && (size_t)(p + 1 - c->in) < hlen) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', hlen - (size_t)(line - c->in));
        if (!eol)
            break;
        size_t ll = (size_t)(eol - line);
        if (ll >= 15 && strncasecmp(line, "content-length:", 15) == 0) {
            c->body_left = strtoull(line + 15, NULL, 10);
            have_len = true;
        } else if (ll >= 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            if (memmem(line, ll, "chunked", 7))
                c->chunked = true;
        } else if (ll >= 11 && strncasecmp(line, "connection:", 11) == 0) {
            if (memmem(line, ll, "close", 5))
                c->conn_close = true;
        }
        p = eol;
    }
    return have_len || c->chunked;
}

/* Consumes body bytes from c->in (after the head was removed). Returns 1 when the response is
 * complete, 0 when more is needed, -1 on a framing error. */
static int lg_consume_body(struct lg_conn *c)
{
    if (!c->chunked) {
        size_t take = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;
        c->body_left -= take;
        memmove(c->in, c->in + take, c->in_len - take);
        c->in_len -= take;
        return c->body_left == 0 ? 1 : 0;
    }
    for (;;) {
        if (c->chunk_state == 1) {
            size_t take = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;
            c->body_left -= take;
            memmove(c->in, c->in + take, c->in_len - take);
            c->in_len -= take;
            if (c->body_left > 0)
                return 0;
            c->chunk_state = 2;
            continue;
        }
        char *nl = memchr(c->in, '\n', c->in_len);
        if (!nl)
            return 0;
        size_t ll = (size_t)(nl - c->in) + 1;
        int done = 0;
        if (c->chunk_state == 0) {
            char *end = NULL;
            unsigned long long sz = strtoull(c->in, &end, 16);
            if (end == c->in)
                return -1;
            if (sz == 0) {
                c->chunk_state = 3;
            } else {
                c->body_left = sz;
                c->chunk_state = 1;
            }
        } else if (c->chunk_state == 2) {
            c->chunk_state = 0; /* the CRLF after a chunk's data */
        } else if (ll <= 2) {
            done = 1; /* blank line after the last chunk / trailers */
        }
        memmove(c->in, c->in + ll, c->in_len - ll);
        c->in_len -= ll;
        if (done)
            return 1;
    }
}

static void lg_begin_request(struct lg_conn *c, uint64_t now);

/* The connection is ready for requests (TCP, tunnel and TLS all done). */
static void lg_conn_ready(struct lg_conn *c, uint64_t now)
{
    if (g_opt.tls && lg_in_window(now))
        c->th->handshakes++;
    if (g_opt.rate > 0 && !g_opt.new_conn) {
        if (c->t_due < now)
            c->t_due = now; /* first request after a (re)connect: no backlog to catch up */
        c->st = LG_ST_WAIT;
        return;
    }
    lg_begin_request(c, now);
}

/* Starts sending the request. The latency origin is the scheduled time in rate mode, the
 * connection's start in new-connection and idle modes, otherwise now. */
static void lg_begin_request(struct lg_conn *c, uint64_t now)
{
    if (g_opt.rate > 0 && !g_opt.new_conn)
        c->t_start = c->t_due;
    else if (!g_opt.new_conn && !g_opt.idle)
        c->t_start = now;
    c->out_off = 0;
    c->head_done = false;
    c->st = LG_ST_SEND;
}

/* One complete response arrived. Records it, then decides what the connection does next. */
static void lg_exchange_done(struct lg_conn *c)
{
    uint64_t now = lg_now();
    struct lg_thread *th = c->th;
    th->requests_all++;
    if (lg_in_window(now) && !g_opt.idle) {
        th->requests++;
        lg_hist_add(&th->hist, now - c->t_start);
    }
    if (g_opt.idle) {
        c->st = LG_ST_HOLD;
        c->counted_open = true;
        th->idle_open++;
        return;
    }
    if (g_opt.new_conn || c->conn_close) {
        lg_conn_drop(c, true);
        c->t_due = now; /* reconnect at once */
        return;
    }
    if (g_opt.rate > 0) {
        c->t_due += th->interval_ns;
        c->st = LG_ST_WAIT;
        return;
    }
    lg_begin_request(c, now);
}

/* Runs c's state machine until it would block. Edge-triggered epoll makes this the contract:
 * every step is tried until its I/O returns EAGAIN. */
static void lg_conn_drive(struct lg_conn *c)
{
    for (;;) {
        switch (c->st) {
        case LG_ST_FREE:
        case LG_ST_WAIT:
            return;
        case LG_ST_HOLD: {
            /* A held connection should stay silent; any readable event means the peer closed or
             * misbehaved. Peek without consuming TLS records. */
            char b;
            ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0 || (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK))
                lg_conn_fail(c, LG_E_IO);
            return;
        }
        case LG_ST_CONNECTING: {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
                err = errno;
            if (err == EINPROGRESS || err == EALREADY)
                return;
            if (err != 0) {
                lg_conn_fail(c, LG_E_CONNECT);
                return;
            }
            /* getsockopt does not say "still connecting" for a fresh socket; a zero-byte peer
             * name check does. */
            struct sockaddr_in peer;
            socklen_t plen = sizeof(peer);
            if (getpeername(c->fd, (struct sockaddr *)&peer, &plen) == -1) {
                if (errno == ENOTCONN)
                    return;
                lg_conn_fail(c, LG_E_CONNECT);
                return;
            }
            if (g_opt.tunnel) {
                c->st = LG_ST_TUNNEL_SEND;
                c->out_off = 0;
            } else if (g_opt.tls) {
                c->st = LG_ST_HANDSHAKE;
            } else {
                lg_conn_ready(c, lg_now());
            }
            break;
        }
        case LG_ST_TUNNEL_SEND: {
            int r = lg_write(c, g_tun, g_tun_len, true);
            if (r < 0) {
                lg_conn_fail(c, LG_E_TUNNEL);
                return;
            }
            if (r == 0)
                return;
            c->st = LG_ST_TUNNEL_READ;
            c->in_len = 0;
            break;
        }
        case LG_ST_TUNNEL_READ: {
            ssize_t n = lg_read(c);
            if (n == -1)
                return;
            if (n <= 0) {
                lg_conn_fail(c, LG_E_TUNNEL);
                return;
            }
            size_t hl = lg_head_end(c->in, c->in_len);
            if (hl == 0)
                break;
            int st = lg_status(c->in, c->in_len);
            if (st != 200 || hl != c->in_len) {
                lg_conn_fail(c, LG_E_TUNNEL);
                return;
            }
            c->in_len = 0;
            if (g_opt.tls)
                c->st = LG_ST_HANDSHAKE;
            else
                lg_conn_ready(c, lg_now());
            break;
        }
        case LG_ST_HANDSHAKE: {
            if (!c->ssl) {
                c->ssl = SSL_new(g_ctx);
                if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) ||
                    !SSL_set_tlsext_host_name(c->ssl, g_opt.sni) ||
                    !SSL_set1_host(c->ssl, g_opt.sni)) {
                    lg_conn_fail(c, LG_E_TLS);
                    return;
                }
                SSL_set_connect_state(c->ssl);
            }
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                lg_conn_ready(c, lg_now());
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            ERR_clear_error();
            lg_conn_fail(c, LG_E_TLS);
            return;
        }
        case LG_ST_SEND: {
            int r = lg_write(c, g_req, g_req_len, false);
            if (r < 0) {
                lg_conn_fail(c, LG_E_IO);
                return;
            }
            if (r == 0)
                return;
            c->st = LG_ST_READ;
            c->in_len = 0;
            c->head_done = false;
            break;
        }
        case LG_ST_READ: {
            ssize_t n = lg_read(c);
            if (n == -1)
                return;
            if (n <= 0) {
                lg_conn_fail(c, LG_E_IO);
                return;
            }
            if (!c->head_done) {
                size_t hl = lg_head_end(c->in, c->in_len);
                if (hl == 0)
                    break;
                int st = lg_status(c->in, c->in_len);
                if (st < 0 || !lg_parse_head(c, hl)) {
                    lg_conn_fail(c, LG_E_PARSE);
                    return;
                }
                if (st < 200 || st > 299) {
                    lg_conn_fail(c, LG_E_STATUS);
                    return;
                }
                memmove(c->in, c->in + hl, c->in_len - hl);
                c->in_len -= hl;
                c->head_done = true;
            }
            int r = lg_consume_body(c);
            if (r < 0) {
                lg_conn_fail(c, LG_E_PARSE);
                return;
            }
            if (r == 1) {
                lg_exchange_done(c);
                if (c->st != LG_ST_SEND)
                    return;
            }
            break;
        }
        }
    }
}

/* Acts on connections whose t_due has come (reconnects, paced sends, idle-mode opens) and arms
 * the thread's timerfd for the earliest future one. */
static void lg_thread_timers(struct lg_thread *th)
{
    uint64_t now = lg_now();
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < th->nconns; i++) {
        struct lg_conn *c = &th->conns[i];
        if (c->st != LG_ST_FREE && c->st != LG_ST_WAIT)
            continue;
        if (c->t_due <= now) {
            if (c->st == LG_ST_FREE) {
                if (g_opt.idle)
                    c->counted_open = false;
                if (lg_conn_open(c))
                    lg_conn_drive(c);
            } else {
                lg_begin_request(c, now);
                lg_conn_drive(c);
            }
        }
        if ((c->st == LG_ST_FREE || c->st == LG_ST_WAIT) && c->t_due < next)
            next = c->t_due;
    }
    if (next == UINT64_MAX)
        next = 0;
    else if (next <= now)
        next = now + 1000;
    if (next == th->armed)
        return; /* spare the syscall: the common case in closed-loop runs */
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(next / 1000000000ull);
    its.it_value.tv_nsec = (long)(next % 1000000000ull);
    timerfd_settime(th->tfd, TFD_TIMER_ABSTIME, &its, NULL);
    th->armed = next;
}

static void *lg_thread_main(void *arg)
{
    struct lg_thread *th = arg;
    struct epoll_event evs[256];
    lg_thread_timers(th); /* first connections at once, not after the first 100 ms poll */
    for (;;) {
        if (g_stop)
            break;
        uint64_t now = lg_now();
        if (!g_opt.idle && now >= g_t_end)
            break;
        if (g_opt.idle && now >= atomic_load(&g_hold_end))
            break;
        int n = epoll_wait(th->ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), 100);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t x;
                if (read(th->tfd, &x, sizeof(x)) < 0) {
                    /* spurious wake-up; the scan below is idempotent */
                }
                th->armed = 0;
                continue;
            }
            lg_conn_drive(evs[i].data.ptr);
        }
        /* due reconnects, paced sends and idle-mode openings; O(connections of this thread) */
        lg_thread_timers(th);
    }
    return NULL;
}

static void lg_on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void lg_usage(void)
{
    fprintf(stderr,
            "usage: loadgen --connect IP:PORT [--tunnel HOST:PORT] [--tls --sni NAME --cafile FILE]\n"
            "               [--target /|http://host/path] [--host NAME] [-c CONNS] [-t THREADS]\n"
            "               [-d SECONDS] [-w WARMUP] [--new-conn | --rate RPS | --idle N --hold S]\n"
            "               [--label TEXT]\n");
    exit(2);
}

static void lg_parse_args(int argc, char **argv)
{
    g_opt.target = "/";
    g_opt.host = NULL;
    g_opt.conns = 32;
    g_opt.threads = 1;
    g_opt.duration = 10;
    g_opt.warmup = 1;
    g_opt.hold = 30;
    g_opt.label = "loadgen";
    const char *connect = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
#define LG_NEEDV()                                                                                 \
    do {                                                                                           \
        if (!v)                                                                                    \
            lg_usage();                                                                            \
        i++;                                                                                       \
    } while (0)
        if (strcmp(a, "--connect") == 0) {
            LG_NEEDV();
            connect = v;
        } else if (strcmp(a, "--tunnel") == 0) {
            LG_NEEDV();
            g_opt.tunnel = v;
        } else if (strcmp(a, "--tls") == 0) {
            g_opt.tls = true;
        } else if (strcmp(a, "--sni") == 0) {
            LG_NEEDV();
            g_opt.sni = v;
        } else if (strcmp(a, "--cafile") == 0) {
            LG_NEEDV();
            g_opt.cafile = v;
        } else if (strcmp(a, "--target") == 0) {
            LG_NEEDV();
            g_opt.target = v;
        } else if (strcmp(a, "--host") == 0) {
            LG_NEEDV();
            g_opt.host = v;
        } else if (strcmp(a, "-c") == 0) {
            LG_NEEDV();
            g_opt.conns = atoi(v);
        } else if (strcmp(a, "-t") == 0) {
            LG_NEEDV();
            g_opt.threads = atoi(v);
        } else if (strcmp(a, "-d") == 0) {
            LG_NEEDV();
            g_opt.duration = atof(v);
        } else if (strcmp(a, "-w") == 0) {
            LG_NEEDV();
            g_opt.warmup = atof(v);
        } else if (strcmp(a, "--new-conn") == 0) {
            g_opt.new_conn = true;
        } else if (strcmp(a, "--rate") == 0) {
            LG_NEEDV();
            g_opt.rate = atof(v);
        } else if (strcmp(a, "--idle") == 0) {
            LG_NEEDV();
            g_opt.idle = atoi(v);
        } else if (strcmp(a, "--hold") == 0) {
            LG_NEEDV();
            g_opt.hold = atof(v);
        } else if (strcmp(a, "--label") == 0) {
            LG_NEEDV();
            g_opt.label = v;
        } else {
            lg_usage();
        }
#undef LG_NEEDV
    }
    if (!connect)
        lg_usage();
    char ip[64];
    const char *colon = strrchr(connect, ':');
    if (!colon || (size_t)(colon - connect) >= sizeof(ip))
        lg_die("--connect wants IPv4:PORT, got %s", connect);
    memcpy(ip, connect, (size_t)(colon - connect));
    ip[colon - connect] = '\0';
    g_opt.addr.sin_family = AF_INET;
    g_opt.addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, ip, &g_opt.addr.sin_addr) != 1)
        lg_die("--connect wants an IPv4 literal, got %s", ip);
    if (g_opt.tls && (!g_opt.sni || !g_opt.cafile))
        lg_die("--tls needs --sni and --cafile (the client always verifies, as a real one would)");
    if (g_opt.conns < 1 || g_opt.threads < 1 || g_opt.threads > g_opt.conns)
        lg_die("need 1 <= -t <= -c");
    if (g_opt.rate > 0 && g_opt.new_conn)
        lg_die("--rate applies to keep-alive mode only");
    if (!g_opt.host)
        g_opt.host = g_opt.sni ? g_opt.sni : "localhost";
    if (g_opt.idle > 0)
        g_opt.warmup = 0;
}

/* Builds the request bytes once; every connection sends the same request. */
static void lg_build_messages(void)
{
    int n = snprintf(g_req, sizeof(g_req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: authproxy-bench/1\r\n"
                     "Accept: */*\r\n\r\n",
                     g_opt.target, g_opt.host);
    if (n < 0 || (size_t)n >= sizeof(g_req))
        lg_die("request too long");
    g_req_len = (size_t)n;
    if (g_opt.tunnel) {
        n = snprintf(g_tun, sizeof(g_tun), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", g_opt.tunnel,
                     g_opt.tunnel);
        if (n < 0 || (size_t)n >= sizeof(g_tun))
            lg_die("tunnel target too long");
        g_tun_len = (size_t)n;
    }
}

/* The client TLS context: verifies the peer against --cafile (and the name, per connection), no
 * session cache so every new connection is a full handshake. */
static void lg_build_tls(void)
{
    if (!g_opt.tls)
        return;
    g_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ctx)
        lg_die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(g_ctx, g_opt.cafile, NULL) != 1)
        lg_die("cannot load CA file %s", g_opt.cafile);
    SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/* Raises the open-file limit to what idle mode needs (soft up to hard). */
static void lg_raise_nofile(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur >= (rlim_t)want)
        return;
    rl.rlim_cur = rl.rlim_max < (rlim_t)want ? rl.rlim_max : (rlim_t)want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static double lg_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Closes every connection and frees what the run allocated (threads have been joined). */
static void lg_teardown(struct lg_thread *ths, struct lg_hist *all)
{
    for (int t = 0; t < g_opt.threads; t++) {
        for (int i = 0; i < ths[t].nconns; i++)
            lg_conn_drop(&ths[t].conns[i], false);
        free(ths[t].conns);
        close(ths[t].tfd);
        close(ths[t].ep);
    }
    free(ths);
    free(all);
    SSL_CTX_free(g_ctx);
    g_ctx = NULL;
}

int main(int argc, char **argv)
{
    lg_parse_args(argc, argv);
    lg_build_messages();
    lg_build_tls();
    signal(SIGPIPE, SIG_IGN);
    /* paced sends should leave on time: no timer coalescing for this process */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    struct sigaction sa = {.sa_handler = lg_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* In idle mode every connection gets its own slot (they are all held at once); -c is then
     * the opening concurrency, enforced by handing out start times in waves. */
    int total_slots = g_opt.idle > 0 ? g_opt.idle : g_opt.conns;
    lg_raise_nofile(total_slots + 256);

    struct lg_thread *ths = calloc((size_t)g_opt.threads, sizeof(*ths));
    if (!ths)
        lg_die("out of memory");
    uint64_t t0 = lg_now();
    g_t_measure = t0 + (uint64_t)(g_opt.warmup * 1e9);
    g_t_end = g_opt.idle ? UINT64_MAX : g_t_measure + (uint64_t)(g_opt.duration * 1e9);
    for (int t = 0; t < g_opt.threads; t++) {
        struct lg_thread *th = &ths[t];
        th->idx = t;
        th->nconns = total_slots / g_opt.threads + (t < total_slots % g_opt.threads ? 1 : 0);
        th->conns = calloc((size_t)th->nconns, sizeof(*th->conns));
        th->ep = epoll_create1(EPOLL_CLOEXEC);
        th->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (!th->conns || th->ep == -1 || th->tfd == -1)
            lg_die("thread setup failed: %s", strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(th->ep, EPOLL_CTL_ADD, th->tfd, &ev);
        if (g_opt.rate > 0)
            th->interval_ns = (uint64_t)((double)g_opt.conns / g_opt.rate * 1e9);
        int lane_conc = g_opt.conns / g_opt.threads;
        if (lane_conc < 1)
            lane_conc = 1;
        for (int i = 0; i < th->nconns; i++) {
            struct lg_conn *c = &th->conns[i];
            c->th = th;
            c->fd = -1;
            c->st = LG_ST_FREE;
            if (g_opt.rate > 0) {
                /* spread the connections' phases evenly over one interval */
                int global = t + i * g_opt.threads;
                c->t_due = t0 + th->interval_ns * (uint64_t)global / (uint64_t)g_opt.conns;
            } else if (g_opt.idle) {
                /* waves of lane_conc openings, 20 ms apart, so the proxy's accept queue and
                 * handshake rate are not the thing being measured */
                c->t_due = t0 + (uint64_t)(i / lane_conc) * 20000000ull;
            } else {
                c->t_due = t0;
            }
        }
    }
    double cpu0 = lg_cpu_seconds();
    for (int t = 0; t < g_opt.threads; t++)
        if (pthread_create(&ths[t].tid, NULL, lg_thread_main, &ths[t]) != 0)
            lg_die("pthread_create failed");

    if (g_opt.idle) {
        /* Wait until every connection was attempted and settled, print READY, then hold. */
        uint64_t deadline = t0 + 120ull * 1000000000ull;
        for (;;) {
            int open = 0, failed = 0;
            for (int t = 0; t < g_opt.threads; t++) {
                open += atomic_load(&ths[t].idle_open);
                failed += atomic_load(&ths[t].idle_failed);
            }
            if (open + failed >= g_opt.idle || lg_now() > deadline || g_stop) {
                printf("READY open=%d failed=%d\n", open, failed);
                fflush(stdout);
                break;
            }
            usleep(20000);
        }
        atomic_store(&g_hold_end, lg_now() + (uint64_t)(g_opt.hold * 1e9));
    }
    for (int t = 0; t < g_opt.threads; t++)
        pthread_join(ths[t].tid, NULL);
    double cpu = lg_cpu_seconds() - cpu0;

    if (g_opt.idle) {
        int open = 0, failed = 0, closed = 0;
        for (int t = 0; t < g_opt.threads; t++) {
            open += atomic_load(&ths[t].idle_open);
            failed += atomic_load(&ths[t].idle_failed);
            closed += atomic_load(&ths[t].idle_closed);
        }
        printf("RESULT label=%s mode=idle wanted=%d open=%d failed=%d closed_by_peer=%d\n",
               g_opt.label, g_opt.idle, open, failed, closed);
        lg_teardown(ths, NULL);
        return 0;
    }

    struct lg_hist *all = calloc(1, sizeof(*all));
    if (!all)
        lg_die("out of memory");
    uint64_t req = 0, req_all = 0, hs = 0, errs[LG_E_COUNT] = {0}, err_total = 0;
    for (int t = 0; t < g_opt.threads; t++) {
        for (size_t b = 0; b < LG_HIST_BUCKETS; b++)
            all->counts[b] += ths[t].hist.counts[b];
        all->n += ths[t].hist.n;
        if (ths[t].hist.max_ns > all->max_ns)
            all->max_ns = ths[t].hist.max_ns;
        req += ths[t].requests;
        req_all += ths[t].requests_all;
        hs += ths[t].handshakes;
        for (int k = 0; k < LG_E_COUNT; k++) {
            errs[k] += ths[t].errors[k];
            err_total += ths[t].errors[k];
        }
    }
    double secs = g_opt.duration;
    char errbuf[256] = "";
    size_t off = 0;
    for (int k = 0; k < LG_E_COUNT; k++)
        if (errs[k] && off < sizeof(errbuf))
            off += (size_t)snprintf(errbuf + off, sizeof(errbuf) - off, "%s%s:%llu",
                                    off ? "," : "", lg_err_names[k], (unsigned long long)errs[k]);
    printf("RESULT label=%s mode=%s conns=%d threads=%d secs=%.1f requests=%llu rps=%.1f "
           "handshakes=%llu errors=%llu error_kinds=%s p50_us=%.1f p90_us=%.1f p99_us=%.1f "
           "p999_us=%.1f max_us=%.1f target_rate=%.0f client_cpu=%.2f requests_all=%llu hist=",
           g_opt.label, g_opt.new_conn ? "new-conn" : (g_opt.rate > 0 ? "paced" : "keep-alive"),
           g_opt.conns, g_opt.threads, secs, (unsigned long long)req, (double)req / secs,
           (unsigned long long)hs, (unsigned long long)err_total, off ? errbuf : "none",
           lg_hist_quantile_us(all, 0.50), lg_hist_quantile_us(all, 0.90),
           lg_hist_quantile_us(all, 0.99), lg_hist_quantile_us(all, 0.999),
           (double)all->max_ns / 1000.0, g_opt.rate, cpu / (secs + g_opt.warmup),
           (unsigned long long)req_all);
    /* The histogram itself (non-empty buckets as index:count, bucket i = [1.01^i, 1.01^(i+1))
     * ns), so runs split into slices can be merged exactly by bench/report.py. */
    bool first = true;
    for (size_t b = 0; b < LG_HIST_BUCKETS; b++) {
        if (all->counts[b] == 0)
            continue;
        printf("%s%zu:%llu", first ? "" : ",", b, (unsigned long long)all->counts[b]);
        first = false;
    }
    printf("%s\n", first ? "none" : "");
    lg_teardown(ths, all);
    return 0;
}
