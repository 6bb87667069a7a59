#include "upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "log.h"
#include "plainread.h"
#include "util.h"

/* Idle pooled connections: at most this many per worker, and none older than this. */
#define POOL_MAX_IDLE    256
#define POOL_IDLE_MAX_US (60u * 1000000u)

enum uc_state { UC_RESOLVING = 1, UC_CONNECTING, UC_HANDSHAKING };

/* evdns calls a lookup's callback exactly once, even after cancellation, possibly later from
 * the loop; the callback's argument is this token, which outlives the attempt it served. The
 * callback frees it. */
struct dns_token {
    struct upstream_connect *uc; /* NULL once the attempt is gone */
};

struct upstream_connect {
    enum uc_state state;
    struct worker *w;
    struct snapshot *snap; /* reference: the remap and TLS settings of the request */
    char *host;            /* as named by the sandbox: SNI, verification, pool key */
    uint16_t port;
    bool tls;
    bool allow_internal; /* the caller's permission (part of the pool key) */
    bool internal_ok;    /* ... or the host is remapped: internal addresses may be dialled */
    bool skipped_internal; /* an internal address was not tried */
    char *dial_host; /* where TCP goes (dns_remap applied) */
    uint16_t dial_port;
    struct evdns_getaddrinfo_request *dns_req;
    struct dns_token *dns_token; /* the pending lookup's back-pointer, cleared on cancel */
    bool resolving_inline; /* evdns may answer (hosts file) before evdns_getaddrinfo returns */
    struct evutil_addrinfo *addrs; /* owned; freed with evutil_freeaddrinfo */
    struct evutil_addrinfo *next_addr;
    int fd;
    struct event *timer;    /* connect + handshake deadline */
    struct event *conn_ev;  /* socket writable: TCP connect finished */
    struct event *start_ev; /* deferred start, so cb never runs inside upstream_connect_start */
    struct bufferevent *bev;
    upstream_connect_cb cb;
    void *arg;
};

static char *pool_key(const char *host, uint16_t port, bool tls, bool allow_internal)
{
    return xasprintf("%s|%s|%u%s", tls ? "https" : "http", host, port,
                     allow_internal ? "|internal" : "");
}

/* Frees everything of uc; does not call the callback. */
static void uc_free(struct upstream_connect *uc)
{
    if (uc->dns_req != NULL) {
        struct evdns_getaddrinfo_request *req = uc->dns_req;
        uc->dns_req = NULL;
        uc->dns_token->uc = NULL;
        evdns_getaddrinfo_cancel(req);
    }
    if (uc->timer)
        event_free(uc->timer);
    if (uc->start_ev)
        event_free(uc->start_ev);
    if (uc->conn_ev)
        event_free(uc->conn_ev);
    if (uc->bev)
        bufferevent_free(uc->bev); /* closes fd and frees the SSL */
    else if (uc->fd != -1)
        close(uc->fd);
    if (uc->addrs)
        evutil_freeaddrinfo(uc->addrs);
    snapshot_unref(uc->snap);
    free(uc->host);
    free(uc->dial_host);
    free(uc);
}

/* Reports the outcome and frees uc. On success the bufferevent moves into a new struct upstream. */
static void uc_finish(struct upstream_connect *uc, enum upstream_error err, const char *reason)
{
    struct upstream *u = NULL;
    if (err == UPSTREAM_OK) {
        u = xcalloc(1, sizeof(*u));
        u->w = uc->w;
        u->bev = uc->bev;
        u->tls = uc->tls;
        u->key = pool_key(uc->host, uc->port, uc->tls, uc->allow_internal);
        uc->bev = NULL;
        uc->fd = -1;
        bufferevent_setcb(u->bev, NULL, NULL, NULL, NULL);
        if (u->tls) {
            outflush_attach_tls(&u->flush, &u->w->outflush, u->bev);
            tls_readahead_attach(&u->readahead, &u->w->readahead, u->bev);
        } else {
            outflush_attach(&u->flush, &u->w->outflush, u->bev);
        }
    }
    upstream_connect_cb cb = uc->cb;
    void *arg = uc->arg;
    uc->cb = NULL;
    uc_free(uc);
    if (cb)
        cb(u, err, reason, arg);
    else if (u)
        upstream_free(u);
}

static void uc_try_next(struct upstream_connect *uc);

static void uc_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_connect *uc = arg;
    (void)fd;
    (void)what;
    if (uc->state == UC_HANDSHAKING)
        uc_finish(uc, UPSTREAM_ERR_TLS, "TLS handshake timed out");
    else if (uc->state == UC_RESOLVING) /* the resolver did not answer (or is down) */
        uc_finish(uc, UPSTREAM_ERR_DNS, "name resolution timed out");
    else
        uc_finish(uc, UPSTREAM_ERR_CONNECT, "connect timed out");
}

static void uc_tls_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct upstream_connect *uc = arg;
    if (events & BEV_EVENT_CONNECTED) {
        uc_finish(uc, UPSTREAM_OK, NULL);
        return;
    }
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    const char *reason = ssl ? tls_upstream_failure_reason(ssl) : "handshake failed";
    uc_finish(uc, verify != X509_V_OK ? UPSTREAM_ERR_TLS_VERIFY : UPSTREAM_ERR_TLS, reason);
}

static void uc_connected(struct upstream_connect *uc)
{
    int one = 1;
    (void)setsockopt(uc->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!uc->tls) {
        uc->bev = bufferevent_socket_new(uc->w->base, uc->fd,
                                         BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (uc->bev == NULL) {
            uc_finish(uc, UPSTREAM_ERR_CONNECT, "cannot set up the connection");
            return;
        }
        plainread_attach(uc->bev);
        uc->fd = -1;
        uc_finish(uc, UPSTREAM_OK, NULL);
        return;
    }
    SSL *ssl = tls_upstream_new_ssl(uc->snap->upstream_tls, uc->host, uc->port);
    if (ssl == NULL) {
        uc_finish(uc, UPSTREAM_ERR_TLS, "cannot create TLS session");
        return;
    }
    uc->bev = bufferevent_openssl_socket_new(uc->w->base, uc->fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    /* It fails only without memory, and then (BEV_OPT_CLOSE_ON_FREE) libevent 2.1 has freed ssl
     * itself: freeing it here would be a double free. The documented OOM policy (util.h). */
    if (uc->bev == NULL)
        abort();
    uc->fd = -1; /* owned by the bufferevent now */
    bufferevent_openssl_set_allow_dirty_shutdown(uc->bev, 1);
    uc->state = UC_HANDSHAKING;
    bufferevent_setcb(uc->bev, NULL, NULL, uc_tls_event_cb, uc);
    bufferevent_enable(uc->bev, EV_READ | EV_WRITE);
}

static void uc_connect_done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_connect *uc = arg;
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    (void)what;
    event_free(uc->conn_ev);
    uc->conn_ev = NULL;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == -1)
        soerr = errno;
    if (soerr != 0) {
        log_debug("upstream %s:%u: connect failed: %s", uc->host, uc->port, strerror(soerr));
        close(uc->fd);
        uc->fd = -1;
        uc_try_next(uc);
        return;
    }
    uc_connected(uc);
}

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return false;
}

static bool is_any(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return false;
}

static bool ipv4_is_internal(uint32_t a) /* host byte order */
{
    static const struct {
        uint32_t net;
        unsigned bits;
    } ranges[] = {
        {0x00000000, 8},  /* 0.0.0.0/8 "this network" */
        {0x0a000000, 8},  /* 10/8 private */
        {0x64400000, 10}, /* 100.64/10 shared address space (CGNAT) */
        {0x7f000000, 8},  /* 127/8 loopback */
        {0xa9fe0000, 16}, /* 169.254/16 link-local, cloud metadata */
        {0xac100000, 12}, /* 172.16/12 private */
        {0xc0000000, 24}, /* 192.0.0/24 IETF protocol assignments */
        {0xc0a80000, 16}, /* 192.168/16 private */
        {0xc6120000, 15}, /* 198.18/15 benchmarking (the sandbox resolver's placeholders) */
        {0xe0000000, 4},  /* 224/4 multicast */
        {0xf0000000, 4},  /* 240/4 reserved, broadcast */
    };
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
        if ((a >> (32 - ranges[i].bits)) == (ranges[i].net >> (32 - ranges[i].bits)))
            return true;
    return false;
}

bool upstream_addr_is_internal(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ipv4_is_internal(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family != AF_INET6)
        return true; /* nothing else is dialled */
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t zero12[12] = {0};
    if (memcmp(b, v4mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 || memcmp(b, zero12, 12) == 0)
        return ipv4_is_internal((uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 |
                                (uint32_t)b[14] << 8 | b[15]); /* also ::, ::1, v4-compatible */
    if (b[0] == 0x20 && b[1] == 0x02) /* 2002::/16 6to4: the IPv4 address follows */
        return ipv4_is_internal((uint32_t)b[2] << 24 | (uint32_t)b[3] << 16 |
                                (uint32_t)b[4] << 8 | b[5]);
    return (b[0] & 0xfe) == 0xfc ||                  /* fc00::/7 unique local */
           (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || /* fe80::/10 link-local */
           (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) || /* fec0::/10 site-local (deprecated) */
           b[0] == 0xff;                              /* multicast */
}

/* True if dst is one of authproxy's own listeners: same port, and the same address, or any
 * loopback address when the listener is on loopback or on the wildcard address (which
 * includes loopback). Checked on the resolved address, so no name leads there. */
static bool is_self(const struct serve_shared *sh, const struct sockaddr *dst)
{
    uint16_t port = dst->sa_family == AF_INET ? ((const struct sockaddr_in *)dst)->sin_port
                                              : ((const struct sockaddr_in6 *)dst)->sin6_port;
    for (size_t i = 0; i < sh->n_self; i++) {
        const struct sockaddr *l = (const struct sockaddr *)&sh->self[i];
        uint16_t lport = l->sa_family == AF_INET ? ((const struct sockaddr_in *)l)->sin_port
                                                 : ((const struct sockaddr_in6 *)l)->sin6_port;
        if (lport != port)
            continue;
        if (is_any(l) || (is_loopback(l) && is_loopback(dst)))
            return true;
        if (l->sa_family == dst->sa_family &&
            (l->sa_family == AF_INET
                 ? ((const struct sockaddr_in *)l)->sin_addr.s_addr ==
                       ((const struct sockaddr_in *)dst)->sin_addr.s_addr
                 : memcmp(&((const struct sockaddr_in6 *)l)->sin6_addr,
                          &((const struct sockaddr_in6 *)dst)->sin6_addr, 16) == 0))
            return true;
    }
    return false;
}

bool upstream_is_self_literal(const struct serve_shared *sh, const char *host, uint16_t port)
{
    struct evutil_addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = EVUTIL_AI_NUMERICHOST;
    hints.ai_socktype = SOCK_STREAM;
    char p[8];
    snprintf(p, sizeof(p), "%u", port);
    if (evutil_getaddrinfo(host, p, &hints, &res) != 0 || res == NULL)
        return false;
    bool self = is_self(sh, res->ai_addr);
    evutil_freeaddrinfo(res);
    return self;
}

/* Tries the next resolved address; reports a connect failure when none is left. */
static void uc_try_next(struct upstream_connect *uc)
{
    while (uc->next_addr != NULL) {
        struct evutil_addrinfo *ai = uc->next_addr;
        uc->next_addr = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (is_self(uc->w->shared, ai->ai_addr)) {
            uc_finish(uc, UPSTREAM_ERR_FORBIDDEN, "the destination is authproxy itself");
            return;
        }
        if (!uc->internal_ok && upstream_addr_is_internal(ai->ai_addr)) {
            uc->skipped_internal = true;
            continue;
        }
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
            uc->fd = fd;
            uc->state = UC_CONNECTING;
            uc->conn_ev = event_new(uc->w->base, fd, EV_WRITE, uc_connect_done_cb, uc);
            event_add(uc->conn_ev, NULL);
            return;
        }
        close(fd);
    }
    if (uc->skipped_internal)
        uc_finish(uc, UPSTREAM_ERR_INTERNAL, "the destination address is internal");
    else
        uc_finish(uc, UPSTREAM_ERR_CONNECT, "connection refused or unreachable");
}

static void uc_resolved_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct dns_token *token = arg;
    struct upstream_connect *uc = token->uc;
    free(token);
    if (uc == NULL) {
        /* The attempt was cancelled: drop the answer. */
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    uc->dns_req = NULL;
    uc->dns_token = NULL;
    if (result != 0 || res == NULL) {
        if (res)
            evutil_freeaddrinfo(res);
        if (uc->resolving_inline) {
            /* Answered before evdns_getaddrinfo returned: report from the caller instead. */
            uc->addrs = NULL;
            uc->resolving_inline = false;
            return;
        }
        log_debug("upstream %s: resolution failed: %s", uc->dial_host, evutil_gai_strerror(result));
        uc_finish(uc, UPSTREAM_ERR_DNS, "name did not resolve");
        return;
    }
    uc->addrs = res;
    uc->next_addr = res;
    if (uc->resolving_inline) {
        uc->resolving_inline = false;
        return;
    }
    uc_try_next(uc);
}

/* Deferred start, so the caller's callback never runs before upstream_connect_start returns. */
static void uc_start_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_connect *uc = arg;
    (void)fd;
    (void)what;
    event_free(uc->start_ev);
    uc->start_ev = NULL;
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    char port[8];
    snprintf(port, sizeof(port), "%u", uc->dial_port);

    /* IP literals never go to the resolver. */
    struct evutil_addrinfo numeric = hints;
    numeric.ai_flags = EVUTIL_AI_NUMERICHOST;
    struct evutil_addrinfo *res = NULL;
    if (evutil_getaddrinfo(uc->dial_host, port, &numeric, &res) == 0 && res != NULL) {
        uc->addrs = res;
        uc->next_addr = res;
        uc_try_next(uc);
        return;
    }
    uc->state = UC_RESOLVING;
    uc->resolving_inline = true;
    uc->dns_token = xcalloc(1, sizeof(*uc->dns_token));
    uc->dns_token->uc = uc;
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(uc->w->dns, uc->dial_host, port, &hints, uc_resolved_cb, uc->dns_token);
    if (uc->resolving_inline) {
        uc->dns_req = req;
        /* Still pending asynchronously. */
        uc->resolving_inline = false;
        return;
    }
    /* Answered inline (hosts file, or an immediate failure); the token is already freed. */
    if (uc->addrs == NULL)
        uc_finish(uc, UPSTREAM_ERR_DNS, "name did not resolve");
    else
        uc_try_next(uc);
}

struct upstream_connect *upstream_connect_start(struct worker *w, struct snapshot *snap,
                                                const char *host, uint16_t port, bool tls,
                                                bool allow_internal, upstream_connect_cb cb,
                                                void *arg)
{
    struct upstream_connect *uc = xcalloc(1, sizeof(*uc));
    uc->w = w;
    uc->snap = snapshot_ref(snap);
    uc->host = xstrdup(host);
    uc->port = port;
    uc->tls = tls;
    uc->fd = -1;
    uc->cb = cb;
    uc->arg = arg;
    uc->state = UC_RESOLVING;
    const struct dns_remap_entry *remap = config_find_remap(snap->config, host);
    uc->dial_host = xstrdup(remap ? remap->host : host);
    uc->allow_internal = allow_internal;
    uc->internal_ok = allow_internal || remap != NULL;
    uc->dial_port = (remap && remap->port) ? remap->port : port;

    unsigned ms = snap->config->limits.connect_timeout_ms;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    uc->timer = evtimer_new(w->base, uc_timeout_cb, uc);
    evtimer_add(uc->timer, &tv);
    uc->start_ev = evtimer_new(w->base, uc_start_cb, uc);
    event_active(uc->start_ev, EV_TIMEOUT, 0);
    return uc;
}

void upstream_connect_cancel(struct upstream_connect *uc)
{
    if (uc == NULL)
        return;
    uc->cb = NULL;
    uc_free(uc);
}

static void idle_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct upstream *u = arg;
    (void)bev;
    (void)events;
    /* EOF, error or timeout on an idle connection: the origin closed it. */
    TAILQ_REMOVE(&u->w->idle_upstreams, u, idle_link);
    u->w->n_idle_upstreams--;
    upstream_free(u);
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
{
    /* An origin must not send anything while no request is outstanding. */
    idle_event_cb(bev, BEV_EVENT_ERROR, arg);
}

struct upstream *upstream_pool_take(struct worker *w, const char *host, uint16_t port, bool tls,
                                    bool allow_internal)
{
    char *key = pool_key(host, port, tls, allow_internal);
    uint64_t now = monotonic_us();
    struct upstream *u, *found = NULL;
    /* Newest last: search from the tail so the warmest connection is reused. */
    TAILQ_FOREACH_REVERSE(u, &w->idle_upstreams, upstream_list, idle_link)
    {
        if (strcmp(u->key, key) == 0 && now - u->idle_since_us < POOL_IDLE_MAX_US) {
            found = u;
            break;
        }
    }
    free(key);
    if (found) {
        TAILQ_REMOVE(&w->idle_upstreams, found, idle_link);
        w->n_idle_upstreams--;
        bufferevent_setcb(found->bev, NULL, NULL, NULL, NULL);
        bufferevent_set_timeouts(found->bev, NULL, NULL);
    }
    return found;
}

void upstream_release(struct upstream *u, bool reusable)
{
    struct worker *w = u->w;
    if (!reusable || w->draining || evbuffer_get_length(bufferevent_get_input(u->bev)) > 0) {
        upstream_free(u);
        return;
    }
    if (w->n_idle_upstreams >= POOL_MAX_IDLE) {
        struct upstream *oldest = TAILQ_FIRST(&w->idle_upstreams);
        TAILQ_REMOVE(&w->idle_upstreams, oldest, idle_link);
        w->n_idle_upstreams--;
        upstream_free(oldest);
    }
    u->idle_since_us = monotonic_us();
    struct timeval tv = {.tv_sec = POOL_IDLE_MAX_US / 1000000u, .tv_usec = 0};
    bufferevent_set_timeouts(u->bev, &tv, NULL);
    bufferevent_setcb(u->bev, idle_read_cb, NULL, idle_event_cb, u);
    bufferevent_enable(u->bev, EV_READ);
    tls_readahead_recheck(&u->readahead); /* bytes behind the response: idle_read_cb drops u */
    TAILQ_INSERT_TAIL(&w->idle_upstreams, u, idle_link);
    w->n_idle_upstreams++;
}

void upstream_free(struct upstream *u)
{
    if (u == NULL)
        return;
    outflush_detach(&u->flush);
    tls_readahead_detach(&u->readahead);
    if (u->bev)
        bufferevent_free(u->bev);
    free(u->key);
    free(u);
}

void upstream_pool_flush(struct worker *w)
{
    struct upstream *u;
    while ((u = TAILQ_FIRST(&w->idle_upstreams)) != NULL) {
        TAILQ_REMOVE(&w->idle_upstreams, u, idle_link);
        w->n_idle_upstreams--;
        upstream_free(u);
    }
}
