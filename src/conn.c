/* conn: the data path of one client connection (see conn.h and docs/ARCHITECTURE.md).
 *
 * Life of a connection on the explicit port:
 *
 *   READ_HEAD --CONNECT, denied------------------------------> 403, CLOSING
 *   READ_HEAD --CONNECT, no_proxy--> TUNNEL_CONNECTING ------> TUNNEL (bytes both ways)
 *   READ_HEAD --CONNECT, inspect---> TUNNEL_ACCEPTING (200 sent, first byte peeked)
 *                                      --TLS--> CLIENT_HANDSHAKE --> READ_HEAD (in tunnel)
 *                                      --else-> READ_HEAD (plain HTTP in tunnel)
 *   READ_HEAD --request------------> UPSTREAM_CONNECTING --> FORWARDING --> READ_HEAD | CLOSING
 *   READ_HEAD --request, credential not cached--> RESOLVING --> READ_HEAD (head parsed again)
 *   FORWARDING --101 websocket-----> TUNNEL
 *
 * One request at a time per connection: a pipelined request waits in the input buffer until
 * the previous response is complete. Each request takes its own reference to the worker's
 * current snapshot, so a reload never splits a request across two policies. */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "audit.h"
#include "clienthello.h"
#include "credcache.h"
#include "dyncred.h"
#include "glob.h"
#include "http1.h"
#include "log.h"
#include "outflush.h"
#include "plainread.h"
#include "policy.h"
#include "registry.h"
#include "sandbox_limits.h"
#include "scrub.h"
#include "sigv4.h"
#include "store.h"
#include "tls_mitm.h"
#include "tls_readahead.h"
#include "upstream.h"
#include "util.h"

/* Stop reading from one side while the other side has this much unsent: bounded memory per
 * connection whatever the speed difference between client and origin. */
#define RELAY_HIGH_WATER (256 * 1024)
#define HOST_MAX         256

enum conn_state {
    CONN_READ_HEAD = 1,       /* waiting for a request head from the client */
    CONN_TUNNEL_CONNECTING,   /* no_proxy CONNECT: dialling the origin */
    CONN_TUNNEL_ACCEPTING,    /* 200 sent to a CONNECT; waiting for the client's first byte */
    CONN_CLIENT_HANDSHAKE,    /* TLS handshake with the client, leaf cert minted for the name */
    CONN_RESOLVING,           /* a callback / token exchange runs for this request's credential;
                                 its head stays in the input buffer, parsed again when it ends */
    CONN_UPSTREAM_CONNECTING, /* request parsed; getting an upstream connection */
    CONN_FORWARDING,          /* request head sent; relaying bodies, awaiting the response */
    CONN_TUNNEL,              /* opaque bytes both ways (no_proxy, WebSocket after 101) */
    CONN_CLOSING,             /* flushing a last response, then close */
};

/* The per-request part of a connection: created when a head is parsed, gone when the
 * exchange ends. Everything the audit record needs is kept here. */
struct request {
    struct snapshot *snap;          /* reference: the one policy version this request sees */
    const struct registry_box *box; /* the sandbox it is served for (borrowed from snap), or NULL */
    uint64_t start_us;
    char method[32];
    const char *scheme; /* "http" or "https" */
    char host[HOST_MAX];
    uint16_t port;
    char *path; /* without query; owned */
    bool upstream_tls;
    bool allow_internal; /* the policy names the host: internal addresses may be dialled */
    const char *decision;
    const char *decided_by;
    const char *error;
    const char **injected; /* header names, borrowed from the policy in snap or from cred;
                              array owned */
    struct cred_headers *cred; /* reference: dynamic credentials injected, or NULL */
    struct sigv4_signed *aws;  /* an "aws" rule's signature fields (the overrides point here) */
    const struct scrub *scrub; /* the injected credentials, redacted from the response; or NULL */
    struct scrub *scrub_owned; /* scrub, when built for this request (dynamic credentials) */
    bool scrub_body;           /* ... also from its (identity-encoded) body */
    size_t resp_held;          /* response bytes at the head of the upstream input that were
                                  validated/scrubbed but held back (they may begin a credential) */
    bool resp_eof;             /* the upstream closed: a close-delimited body is complete */
    size_t n_injected;
    int status;
    int upstream_status;
    uint64_t bytes_in;
    uint64_t bytes_out;

    struct evbuffer *head_out; /* the serialised head waiting for an upstream */
    bool client_keep_alive;
    bool websocket;
    bool expect_continue;

    enum http1_body_kind req_body;
    uint64_t req_remaining;
    struct http1_chunked req_chunked;
    bool req_done;

    bool resp_head_done;
    enum http1_body_kind resp_body;
    uint64_t resp_remaining;
    struct http1_chunked resp_chunked;
    bool resp_keep_alive;
    bool resp_done;
};

struct conn {
    LIST_ENTRY(conn) link;
    struct worker *w;
    enum conn_state state;
    int fd;
    struct bufferevent *client; /* socket or TLS over the socket */
    struct outflush client_flush; /* attached to client, plain or TLS (outflush.h) */
    struct tls_readahead client_readahead; /* attached to client when TLS (tls_readahead.h) */
    char peer[64];
    struct event *timer;   /* head timeout / idle timeout while between requests */
    struct event *peek_ev; /* TUNNEL_ACCEPTING: client's first byte */
    bool in_tunnel;        /* requests arrive inside a CONNECT tunnel */
    bool tunnel_tls;       /* ... terminated with our certificate */
    char tunnel_host[HOST_MAX];
    uint16_t tunnel_port;
    bool name_mismatch; /* SNI differs from the CONNECT target: every request gets 421 */
    bool head_started;  /* first byte of the current head seen (head timeout running) */
    struct request *req;
    struct upstream *up;
    struct upstream_connect *connecting;
    uint64_t tunnel_start_us; /* no_proxy tunnels: for the audit record */
    uint64_t tunnel_in, tunnel_out;
    /* Explicit-proxy identity (Proxy-Authorization), per CONNECT tunnel or per plain request. */
    bool has_identity;
    uint8_t token_hash[REGISTRY_HASH_LEN];
    char *tunnel_sandbox; /* for tunnel audit lines: sandbox name and workspace, owned */
    char *tunnel_workspace;
    /* Transparent capture: the sandbox dialled orig_ip:tunnel_port; TCP was redirected here. */
    bool transparent;
    bool transparent_http; /* plain HTTP: the name comes from each request's Host */
    struct in_addr sandbox_addr; /* the sandbox's address (its namespace's veth end) */
    char orig_ip[INET_ADDRSTRLEN];
    struct event *repeek_timer; /* ClientHello not complete yet: look again shortly */
    uint64_t peek_deadline_us;
    /* Dynamic credentials of the request being parsed (RESOLVING): the pending wait, then its
     * outcome for the key it was asked for (cred NULL with cred_ready: the resolution failed). */
    struct credcache_waiter *cred_waiter;
    bool cred_ready;
    uint8_t cred_key[CREDCACHE_KEY_LEN];
    struct cred_headers *cred;
    uint64_t body_deadline_us; /* waiting for body bytes a credential needs, until then */
    bool continue_sent;        /* we answered the client's Expect: 100-continue ourselves */
    char *limit_key; /* the sandbox this connection is counted for (sandbox_limits), or NULL */
};

static void conn_close(struct conn *c);
static void client_read_cb(struct bufferevent *bev, void *arg);
static void client_write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short events, void *arg);
static void upstream_read_cb(struct bufferevent *bev, void *arg);
static void upstream_write_cb(struct bufferevent *bev, void *arg);
static void upstream_event_cb(struct bufferevent *bev, short events, void *arg);
static void process_client_input(struct conn *c);
static void handle_request_head(struct conn *c);
static bool admit_connection(struct conn *c, const struct registry_box *box);

/* ---------------------------------------------------------------- audit and teardown */

static void request_audit(struct conn *c, struct request *r)
{
    struct audit_record rec = {
        .sandbox = r->box ? r->box->name : NULL,
        .workspace = r->box ? r->box->workspace_id : NULL,
        .client = c->peer,
        .method = r->method,
        .scheme = r->scheme,
        .host = r->host,
        .port = r->port,
        .path = r->path,
        .decision = r->decision ? r->decision : "error",
        .decided_by = r->decided_by,
        .injected = r->injected,
        .n_injected = r->n_injected,
        .status = r->status,
        .upstream_status = r->upstream_status,
        .bytes_from_client = r->bytes_in,
        .bytes_to_client = r->bytes_out,
        .duration_us = monotonic_us() - r->start_us,
        .error = r->error,
        .policy_version = r->snap ? r->snap->version : 0,
    };
    worker_audit(c->w, &rec);
    metrics_record_request(&c->w->metrics, rec.decision, r->n_injected ? r->decided_by : NULL,
                           r->n_injected, rec.duration_us, r->status == 502 || r->status == 504);
}

/* Ends the current request: writes its audit line and frees it. */
static void request_end(struct conn *c)
{
    struct request *r = c->req;
    if (r == NULL)
        return;
    c->req = NULL;
    request_audit(c, r);
    if (r->head_out)
        evbuffer_free(r->head_out);
    free(r->injected);
    free(r->path);
    cred_headers_unref(r->cred);
    scrub_free(r->scrub_owned);
    if (r->aws) {
        sigv4_signed_free(r->aws);
        free(r->aws);
    }
    snapshot_unref(r->snap);
    free(r);
}

/* Drops the current request without an audit line: its head stays in the input buffer and will
 * be parsed again (waiting for body bytes or for a credential). */
static void request_discard(struct conn *c)
{
    struct request *r = c->req;
    c->req = NULL;
    if (r == NULL)
        return;
    if (r->head_out)
        evbuffer_free(r->head_out);
    free(r->injected);
    free(r->path);
    cred_headers_unref(r->cred);
    scrub_free(r->scrub_owned);
    if (r->aws) {
        sigv4_signed_free(r->aws);
        free(r->aws);
    }
    snapshot_unref(r->snap);
    free(r);
}

static void tunnel_audit(struct conn *c, const char *decision, const char *decided_by,
                         const char *error, int status)
{
    struct audit_record rec = {
        .sandbox = c->tunnel_sandbox,
        .workspace = c->tunnel_workspace,
        .client = c->peer,
        .method = "CONNECT",
        .scheme = "tunnel",
        .host = c->tunnel_host,
        .port = c->tunnel_port,
        .decision = decision,
        .decided_by = decided_by,
        .status = status,
        .bytes_from_client = c->tunnel_in,
        .bytes_to_client = c->tunnel_out,
        .duration_us = monotonic_us() - c->tunnel_start_us,
        .error = error,
        .policy_version = c->w->current ? c->w->current->version : 0,
    };
    worker_audit(c->w, &rec);
    metrics_record_request(&c->w->metrics, decision, NULL, 0, rec.duration_us, status == 502);
}

/* The single teardown path: every error and every normal end of a connection comes here. */
static void conn_close(struct conn *c)
{
    if (c->state == CONN_TUNNEL && c->req == NULL && c->tunnel_start_us != 0)
        tunnel_audit(c, "bypassed", "no_proxy", NULL, 200);
    if (c->req) {
        if (c->req->decision == NULL) {
            c->req->decision = "error";
            if (c->req->error == NULL)
                c->req->error = "connection closed before the exchange completed";
        }
        request_end(c);
    }
    upstream_connect_cancel(c->connecting);
    c->connecting = NULL;
    upstream_free(c->up);
    c->up = NULL;
    credcache_cancel(c->cred_waiter);
    cred_headers_unref(c->cred);
    if (c->limit_key != NULL) {
        sandbox_limits_conn_release(c->w->shared->limits, c->limit_key);
        free(c->limit_key);
    }
    if (c->timer)
        event_free(c->timer);
    if (c->peek_ev)
        event_free(c->peek_ev);
    if (c->repeek_timer)
        event_free(c->repeek_timer);
    outflush_detach(&c->client_flush);
    tls_readahead_detach(&c->client_readahead);
    if (c->client)
        bufferevent_free(c->client); /* a TLS/plain bufferevent made after CONNECT owns the fd */
    if (c->fd != -1)
        close(c->fd); /* the first bufferevent does not own it (see conn_accept_explicit) */
    free(c->tunnel_sandbox);
    free(c->tunnel_workspace);
    metrics_connection_delta(&c->w->metrics, -1);
    LIST_REMOVE(c, link);
    c->w->n_conns--;
    worker_connection_gone(c->w);
    if (c->w->draining && c->w->n_conns == 0)
        event_base_loopbreak(c->w->base);
    free(c);
}

void conn_abort(struct conn *c)
{
    conn_close(c);
}

void conn_close_idle(struct worker *w)
{
    struct conn *c, *next;
    for (c = LIST_FIRST(&w->conns); c != NULL; c = next) {
        next = LIST_NEXT(c, link);
        if (c->state == CONN_READ_HEAD && c->req == NULL && !c->head_started)
            conn_close(c);
    }
}

/* ---------------------------------------------------------------- responses the proxy makes */

/* Sends a complete response generated by the proxy and closes the connection once it is
 * flushed. Nothing more is read from the client. */
static void respond_and_close(struct conn *c, int status, const char *body)
{
    struct evbuffer *out = bufferevent_get_output(c->client);
    size_t body_len = strlen(body);
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        "Content-Length: %zu\r\n%sConnection: close\r\n\r\n%s\n",
                        status, http1_reason_phrase(status), body_len + 1,
                        status == 407   ? "Proxy-Authenticate: Basic realm=\"authproxy\"\r\n"
                        : status == 429 ? "Retry-After: 1\r\n"
                                        : "",
                        body);
    if (c->req) {
        c->req->status = status;
        c->req->bytes_out += evbuffer_get_length(out);
    }
    c->state = CONN_CLOSING;
    upstream_connect_cancel(c->connecting);
    c->connecting = NULL;
    upstream_free(c->up);
    c->up = NULL;
    if (c->timer)
        evtimer_del(c->timer);
    bufferevent_disable(c->client, EV_READ);
    bufferevent_setwatermark(c->client, EV_WRITE, 0, 0);
    bufferevent_setcb(c->client, NULL, client_write_cb, client_event_cb, c);
    bufferevent_enable(c->client, EV_WRITE);
    request_end(c);
}

/* Refuses the current request: the decision and its reason go to the audit record. */
static void refuse(struct conn *c, int status, const char *decision, const char *decided_by,
                   const char *body)
{
    if (c->req) {
        c->req->decision = decision;
        c->req->decided_by = decided_by;
        if (c->req->error == NULL)
            c->req->error = body;
    }
    respond_and_close(c, status, body);
}

/* ---------------------------------------------------------------- timers */

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    if (c->head_started && c->req == NULL && c->state == CONN_READ_HEAD) {
        /* A client that starts a head and does not finish it in time (slowloris). */
        respond_and_close(c, 408, "request head timed out");
        return;
    }
    conn_close(c);
}

static void arm_timer(struct conn *c, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static const struct config_limits *conn_limits(const struct conn *c)
{
    return &c->w->current->config->limits;
}

/* Enables reading from the client. A TLS client's SSL may already hold the next records
 * (read-ahead): the recheck has them read even though the socket will not report them. */
static void client_enable_read(struct conn *c)
{
    bufferevent_enable(c->client, EV_READ);
    tls_readahead_recheck(&c->client_readahead);
}

/* The same for the upstream connection in use. */
static void upstream_enable_read(struct conn *c)
{
    bufferevent_enable(c->up->bev, EV_READ);
    tls_readahead_recheck(&c->up->readahead);
}

/* Enters READ_HEAD between requests: idle timeout until the next head starts. */
static void enter_read_head(struct conn *c)
{
    c->state = CONN_READ_HEAD;
    c->head_started = false;
    c->continue_sent = false;
    c->body_deadline_us = 0;
    arm_timer(c, conn_limits(c)->idle_timeout_ms);
    bufferevent_setwatermark(c->client, EV_WRITE, 0, 0);
    bufferevent_setcb(c->client, client_read_cb, NULL, client_event_cb, c);
    /* EV_READ only: enabling EV_WRITE adds the write event even with nothing to write (an
     * epoll_ctl and a wake-up per request); bufferevents arm it themselves when data is queued. */
    client_enable_read(c);
}

/* ---------------------------------------------------------------- relaying */

/* Moves up to max bytes from src to dst's output and applies back-pressure: when dst has more
 * than RELAY_HIGH_WATER pending, reading from src stops until dst drains (its write callback
 * re-enables it). Returns bytes moved. */
static size_t relay(struct bufferevent *src, struct bufferevent *dst, uint64_t max)
{
    struct evbuffer *in = bufferevent_get_input(src);
    struct evbuffer *out = bufferevent_get_output(dst);
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < max ? avail : (size_t)max;
    if (n > 0)
        evbuffer_remove_buffer(in, out, n);
    if (evbuffer_get_length(out) > RELAY_HIGH_WATER) {
        bufferevent_disable(src, EV_READ);
        bufferevent_setwatermark(dst, EV_WRITE, RELAY_HIGH_WATER / 2, 0);
    }
    return n;
}

/* Relays a chunked body from src to dst, validating the framing as it goes. Returns
 * HTTP1_INCOMPLETE, HTTP1_OK (body ended) or HTTP1_ERR_BAD; *moved gets the bytes moved. */
static int relay_chunked(struct bufferevent *src, struct bufferevent *dst,
                         struct http1_chunked *state, size_t *moved)
{
    struct evbuffer *in = bufferevent_get_input(src);
    size_t total = 0;
    int rc = HTTP1_INCOMPLETE;
    while (evbuffer_get_length(in) > 0 && rc == HTTP1_INCOMPLETE) {
        struct evbuffer_iovec vec;
        if (evbuffer_peek(in, -1, NULL, &vec, 1) < 1)
            break;
        size_t used = 0;
        rc = http1_chunked_feed(state, vec.iov_base, vec.iov_len, &used);
        if (rc == HTTP1_ERR_BAD)
            break;
        total += relay(src, dst, used);
        if (!(bufferevent_get_enabled(src) & EV_READ))
            break; /* back-pressure: resume from the write callback */
    }
    *moved = total;
    return rc;
}

/* ---------------------------------------------------------------- request completion */

static void maybe_finish_exchange(struct conn *c)
{
    struct request *r = c->req;
    if (r == NULL || !r->resp_done || !r->req_done)
        return;
    bool reusable = r->resp_keep_alive && !r->websocket;
    bool keep_client = r->client_keep_alive && !c->w->draining;
    if (r->decision == NULL)
        r->decision = "allowed";
    struct upstream *u = c->up;
    c->up = NULL;
    if (u) {
        u->requests++;
        upstream_release(u, reusable);
    }
    request_end(c);
    if (!keep_client) {
        c->state = CONN_CLOSING;
        bufferevent_disable(c->client, EV_READ);
        bufferevent_setwatermark(c->client, EV_WRITE, 0, 0);
        bufferevent_setcb(c->client, NULL, client_write_cb, client_event_cb, c);
        if (evbuffer_get_length(bufferevent_get_output(c->client)) == 0)
            conn_close(c);
        return;
    }
    enter_read_head(c);
    if (evbuffer_get_length(bufferevent_get_input(c->client)) > 0)
        process_client_input(c);
}

/* Joins a small output into one chunk. A TLS bufferevent writes each chunk of its output as a
 * record of its own with a write(2) of its own, so a response head and a small body queued as
 * two chunks cost two records and two system calls; one chunk costs one. Called where a head
 * and its body have just been queued; the copy is at most COALESCE_MAX bytes. */
#define COALESCE_MAX (16 * 1024)
static void coalesce_small_output(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    size_t len = evbuffer_get_length(out);
    if (len > 0 && len <= COALESCE_MAX && evbuffer_peek(out, -1, NULL, NULL, 0) > 1)
        evbuffer_pullup(out, -1);
}

/* Forwards whatever request body bytes are buffered from the client. */
static void pump_request_body(struct conn *c)
{
    struct request *r = c->req;
    if (r == NULL || r->req_done || c->up == NULL || c->state != CONN_FORWARDING)
        return;
    if (r->req_body == HTTP1_BODY_LENGTH) {
        size_t n = relay(c->client, c->up->bev, r->req_remaining);
        r->req_remaining -= n;
        r->bytes_in += n;
        if (r->req_remaining == 0)
            r->req_done = true;
    } else if (r->req_body == HTTP1_BODY_CHUNKED) {
        size_t n = 0;
        int rc = relay_chunked(c->client, c->up->bev, &r->req_chunked, &n);
        r->bytes_in += n;
        if (rc == HTTP1_ERR_BAD) {
            r->error = "invalid chunked request body";
            if (!r->resp_head_done) {
                refuse(c, 400, "error", NULL, "bad request: invalid chunked body");
            } else {
                conn_close(c);
            }
            return;
        }
        if (rc == HTTP1_OK)
            r->req_done = true;
    } else {
        r->req_done = true;
    }
    if (r->req_done)
        maybe_finish_exchange(c);
}

/* ---------------------------------------------------------------- upstream side */

static void start_forwarding(struct conn *c)
{
    struct request *r = c->req;
    c->state = CONN_FORWARDING;
    bufferevent_setcb(c->up->bev, upstream_read_cb, upstream_write_cb, upstream_event_cb, c);
    unsigned idle = conn_limits(c)->idle_timeout_ms;
    struct timeval tv = {.tv_sec = idle / 1000, .tv_usec = (idle % 1000) * 1000};
    bufferevent_set_timeouts(c->up->bev, &tv, NULL);
    upstream_enable_read(c);
    bufferevent_write_buffer(c->up->bev, r->head_out);
    evbuffer_free(r->head_out);
    r->head_out = NULL;
    bufferevent_setcb(c->client, client_read_cb, client_write_cb, client_event_cb, c);
    client_enable_read(c);
    pump_request_body(c);
    if (c->up != NULL && c->up->tls)
        coalesce_small_output(c->up->bev);
}

static void on_upstream_connected(struct upstream *u, enum upstream_error err, const char *reason,
                                  void *arg)
{
    struct conn *c = arg;
    c->connecting = NULL;
    if (err == UPSTREAM_ERR_FORBIDDEN || err == UPSTREAM_ERR_INTERNAL) {
        bool self = err == UPSTREAM_ERR_FORBIDDEN;
        const char *body = self ? "denied: the destination is authproxy itself"
                                : "denied: the destination address is internal (loopback, "
                                  "link-local or private) and the policy does not name this host";
        const char *by = self ? "self" : "internal_address";
        if (c->state == CONN_TUNNEL_CONNECTING) {
            tunnel_audit(c, "denied", by, body, 403);
            c->tunnel_start_us = 0;
            if (c->transparent)
                conn_close(c);
            else
                respond_and_close(c, 403, body);
        } else {
            refuse(c, 403, "denied", by, body);
        }
        return;
    }
    if (err != UPSTREAM_OK) {
        static const char *const bodies[] = {
            [UPSTREAM_ERR_DNS] = "upstream DNS resolution failed",
            [UPSTREAM_ERR_CONNECT] = "upstream connect failed",
            [UPSTREAM_ERR_TLS_VERIFY] = "upstream TLS verification failed",
            [UPSTREAM_ERR_TLS] = "upstream TLS handshake failed",
        };
        const char *body = bodies[err];
        char buf[512];
        if (err == UPSTREAM_ERR_TLS_VERIFY || err == UPSTREAM_ERR_TLS) {
            snprintf(buf, sizeof(buf), "%s: %s", body, reason);
            body = buf;
        }
        if (c->state == CONN_TUNNEL_CONNECTING) {
            tunnel_audit(c, "error", "no_proxy", bodies[err], 502);
            c->tunnel_start_us = 0;
            if (c->transparent)
                conn_close(c); /* nothing HTTP to answer on a raw tunnel: close */
            else
                respond_and_close(c, 502, body);
            return;
        }
        c->req->error = bodies[err];
        refuse(c, 502, "error", c->req->decided_by, body);
        return;
    }
    c->up = u;
    if (c->state == CONN_TUNNEL_CONNECTING) {
        /* no_proxy: confirm the CONNECT (explicit port only) and relay bytes untouched. */
        if (!c->transparent)
            evbuffer_add_printf(bufferevent_get_output(c->client),
                                "HTTP/1.1 200 Connection established\r\n\r\n");
        c->state = CONN_TUNNEL;
        unsigned idle = conn_limits(c)->idle_timeout_ms;
        struct timeval tv = {.tv_sec = idle / 1000, .tv_usec = (idle % 1000) * 1000};
        bufferevent_set_timeouts(c->client, &tv, NULL);
        bufferevent_set_timeouts(u->bev, &tv, NULL);
        bufferevent_setcb(u->bev, upstream_read_cb, upstream_write_cb, upstream_event_cb, c);
        bufferevent_setcb(c->client, client_read_cb, client_write_cb, client_event_cb, c);
        bufferevent_enable(u->bev, EV_READ | EV_WRITE);
        bufferevent_enable(c->client, EV_READ | EV_WRITE);
        c->tunnel_in += relay(c->client, u->bev, UINT64_MAX);
        return;
    }
    start_forwarding(c);
}

/* Parses and relays the response head(s); then the body. */
/* Appends the response head to the client's output with the request's injected credentials
 * redacted (an origin that echoes request headers back, scrub.h). */
static void write_response_head(struct request *r, struct evbuffer *out,
                                const struct http1_response *resp, bool client_keep_alive)
{
    if (r->scrub == NULL) {
        http1_write_response_head(out, resp, client_keep_alive);
        return;
    }
    struct evbuffer *tmp = evbuffer_new();
    http1_write_response_head(tmp, resp, client_keep_alive);
    size_t len = evbuffer_get_length(tmp);
    scrub_apply(r->scrub, (char *)evbuffer_pullup(tmp, -1), len, true, NULL);
    evbuffer_add_buffer(out, tmp);
    evbuffer_free(tmp);
}

/* Relays response-body bytes with the request's credentials redacted: the first n bytes of the
 * upstream input are body (final: they end it). A tail that may begin a credential stays in the
 * input for the next call. Returns the number of bytes moved to the client. */
static size_t relay_scrubbed(struct conn *c, size_t n, bool final)
{
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    if (n == 0)
        return 0;
    char *p = (char *)evbuffer_pullup(in, (ev_ssize_t)n);
    size_t hold = scrub_apply(c->req->scrub, p, n, final, NULL);
    return relay(c->up->bev, c->client, n - hold);
}

/* relay_chunked with redaction: validates the chunked framing beyond the bytes already held
 * (r->resp_held), then relays the validated bytes but a tail that may begin a credential. */
static int relay_chunked_scrubbed(struct conn *c, size_t *moved)
{
    struct request *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    size_t len = evbuffer_get_length(in);
    int rc = HTTP1_INCOMPLETE;
    while (r->resp_held < len) {
        struct evbuffer_ptr pos;
        struct evbuffer_iovec vec;
        evbuffer_ptr_set(in, &pos, r->resp_held, EVBUFFER_PTR_SET);
        if (evbuffer_peek(in, -1, &pos, &vec, 1) < 1)
            break;
        size_t used = 0;
        rc = http1_chunked_feed(&r->resp_chunked, vec.iov_base, vec.iov_len, &used);
        if (rc == HTTP1_ERR_BAD)
            return rc;
        r->resp_held += used;
        if (rc == HTTP1_OK)
            break;
    }
    size_t n = r->resp_held;
    *moved = relay_scrubbed(c, n, rc == HTTP1_OK);
    r->resp_held = n - *moved;
    return rc;
}

static void process_upstream_input(struct conn *c)
{
    struct request *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->up->bev);
    while (r && !r->resp_head_done && evbuffer_get_length(in) > 0) {
        size_t len = evbuffer_get_length(in);
        size_t max_head = conn_limits(c)->max_header_bytes;
        size_t take = len < max_head + 1 ? len : max_head + 1;
        const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)take);
        struct http1_response *resp = xmalloc(sizeof(*resp));
        size_t head_len = 0;
        int rc = http1_parse_response(buf, take, max_head, r->method, strlen(r->method), resp,
                                      &head_len);
        if (rc == HTTP1_INCOMPLETE) {
            free(resp);
            return;
        }
        if (rc != HTTP1_OK) {
            free(resp);
            r->error = "invalid response from upstream";
            refuse(c, 502, "error", r->decided_by, "invalid response from upstream");
            return;
        }
        r->upstream_status = resp->status;
        struct evbuffer *out = bufferevent_get_output(c->client);
        size_t before = evbuffer_get_length(out);
        if (resp->status >= 100 && resp->status < 200 && resp->status != 101) {
            /* Interim (100 Continue, 103 Early Hints): relay and wait for the final one. */
            write_response_head(r, out, resp, true);
            r->bytes_out += evbuffer_get_length(out) - before;
            evbuffer_drain(in, head_len);
            free(resp);
            continue;
        }
        if (resp->status == 101) {
            if (!r->websocket) {
                free(resp);
                r->error = "unexpected 101 from upstream";
                refuse(c, 502, "error", r->decided_by, "invalid response from upstream");
                return;
            }
            write_response_head(r, out, resp, true);
            r->bytes_out += evbuffer_get_length(out) - before;
            evbuffer_drain(in, head_len);
            free(resp);
            r->status = 101;
            r->decision = "allowed";
            /* The exchange becomes a tunnel; its audit line is written now. */
            request_end(c);
            c->state = CONN_TUNNEL;
            unsigned idle = conn_limits(c)->idle_timeout_ms;
            struct timeval tv = {.tv_sec = idle / 1000, .tv_usec = (idle % 1000) * 1000};
            bufferevent_set_timeouts(c->client, &tv, NULL);
            bufferevent_set_timeouts(c->up->bev, &tv, NULL);
            relay(c->up->bev, c->client, UINT64_MAX);
            relay(c->client, c->up->bev, UINT64_MAX);
            return;
        }
        r->status = resp->status;
        r->resp_body = resp->body_kind;
        r->resp_remaining = resp->content_length;
        r->resp_keep_alive = resp->keep_alive;
        bool client_ka = r->client_keep_alive && resp->body_kind != HTTP1_BODY_UNTIL_CLOSE;
        r->client_keep_alive = client_ka;
        write_response_head(r, out, resp, client_ka);
        if (r->scrub != NULL) {
            /* Compressed bodies are not inspected (scrub.h); identity ones are. */
            const struct http1_header *ce =
                http1_find_header(resp->headers, resp->n_headers, "Content-Encoding");
            r->scrub_body = ce == NULL || ascii_case_eq(ce->value, ce->value_len, "identity", 8);
        }
        r->bytes_out += evbuffer_get_length(out) - before;
        evbuffer_drain(in, head_len);
        free(resp);
        r->resp_head_done = true;
        http1_chunked_init(&r->resp_chunked);
        if (r->resp_body == HTTP1_BODY_NONE ||
            (r->resp_body == HTTP1_BODY_LENGTH && r->resp_remaining == 0))
            r->resp_done = true;
        /* An early final response (e.g. 413) ends the request body too: the client connection
         * cannot be reused if the body was not fully read. */
        if (!r->req_done && r->resp_done) {
            r->client_keep_alive = false;
            r->resp_keep_alive = false;
            r->req_done = true;
        }
    }
    if (r == NULL || !r->resp_head_done || r->resp_done)
        goto done;
    if (r->scrub_body) {
        struct evbuffer *body_in = bufferevent_get_input(c->up->bev);
        size_t avail = evbuffer_get_length(body_in);
        size_t n = 0;
        int rc = HTTP1_INCOMPLETE;
        if (r->resp_body == HTTP1_BODY_LENGTH) {
            size_t take = avail < r->resp_remaining ? avail : (size_t)r->resp_remaining;
            n = relay_scrubbed(c, take, take == r->resp_remaining);
            r->resp_remaining -= n;
            rc = r->resp_remaining == 0 ? HTTP1_OK : HTTP1_INCOMPLETE;
        } else if (r->resp_body == HTTP1_BODY_CHUNKED) {
            rc = relay_chunked_scrubbed(c, &n);
        } else if (r->resp_body == HTTP1_BODY_UNTIL_CLOSE) {
            n = relay_scrubbed(c, avail, r->resp_eof);
        }
        r->bytes_out += n;
        if (rc == HTTP1_ERR_BAD) {
            r->error = "invalid chunked response from upstream";
            conn_close(c);
            return;
        }
        if (rc == HTTP1_OK)
            r->resp_done = true;
    } else if (r->resp_body == HTTP1_BODY_LENGTH) {
        size_t n = relay(c->up->bev, c->client, r->resp_remaining);
        r->resp_remaining -= n;
        r->bytes_out += n;
        if (r->resp_remaining == 0)
            r->resp_done = true;
    } else if (r->resp_body == HTTP1_BODY_CHUNKED) {
        size_t n = 0;
        int rc = relay_chunked(c->up->bev, c->client, &r->resp_chunked, &n);
        r->bytes_out += n;
        if (rc == HTTP1_ERR_BAD) {
            r->error = "invalid chunked response from upstream";
            conn_close(c);
            return;
        }
        if (rc == HTTP1_OK)
            r->resp_done = true;
    } else if (r->resp_body == HTTP1_BODY_UNTIL_CLOSE) {
        r->bytes_out += relay(c->up->bev, c->client, UINT64_MAX);
    }
    if (r->resp_done && !r->req_done) {
        r->client_keep_alive = false;
        r->resp_keep_alive = false;
        r->req_done = true;
    }
done:
    if (c->tunnel_tls)
        coalesce_small_output(c->client);
    if (r && r->resp_done)
        maybe_finish_exchange(c);
}

static void upstream_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state == CONN_TUNNEL) {
        size_t n = relay(bev, c->client, UINT64_MAX);
        c->tunnel_out += n;
        return;
    }
    if (c->state == CONN_FORWARDING)
        process_upstream_input(c);
}

static void upstream_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    (void)bev;
    /* The upstream drained below the low-water mark: resume reading the client. */
    bufferevent_setwatermark(c->up->bev, EV_WRITE, 0, 0);
    if (c->state == CONN_TUNNEL || c->state == CONN_FORWARDING) {
        client_enable_read(c);
        if (c->state == CONN_FORWARDING)
            pump_request_body(c);
        else
            c->tunnel_in += relay(c->client, c->up->bev, UINT64_MAX);
    }
}

static void upstream_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct conn *c = arg;
    (void)bev;
    if (c->state == CONN_TUNNEL) {
        /* Flush what the origin sent, then close both sides. */
        relay(c->up->bev, c->client, UINT64_MAX);
        upstream_free(c->up);
        c->up = NULL;
        c->state = CONN_CLOSING;
        bufferevent_disable(c->client, EV_READ);
        bufferevent_setwatermark(c->client, EV_WRITE, 0, 0);
        bufferevent_setcb(c->client, NULL, client_write_cb, client_event_cb, c);
        if (evbuffer_get_length(bufferevent_get_output(c->client)) == 0)
            conn_close(c);
        return;
    }
    struct request *r = c->req;
    if (r == NULL) {
        conn_close(c);
        return;
    }
    if ((events & BEV_EVENT_EOF) && r->resp_head_done && r->resp_body == HTTP1_BODY_UNTIL_CLOSE) {
        /* The normal end of a close-delimited response. */
        r->resp_eof = true;
        process_upstream_input(c);
        r->resp_done = true;
        r->resp_keep_alive = false;
        r->req_done = true;
        maybe_finish_exchange(c);
        return;
    }
    if (!r->resp_head_done) {
        r->error =
            (events & BEV_EVENT_TIMEOUT) ? "upstream timed out" : "upstream closed the connection";
        refuse(c, (events & BEV_EVENT_TIMEOUT) ? 504 : 502, "error", r->decided_by,
               (events & BEV_EVENT_TIMEOUT) ? "upstream timed out"
                                            : "upstream closed the connection");
        return;
    }
    /* Mid-body failure: the client cannot be told with a status any more; cut it off. */
    r->error = "upstream closed mid-response";
    r->decision = "error";
    conn_close(c);
}

/* ---------------------------------------------------------------- request handling */

static bool split_authority(const char *s, size_t len, char *host, uint16_t *port,
                            uint16_t default_port)
{
    uint16_t p = 0;
    if (host_normalize(s, len, host, HOST_MAX, &p) != 0)
        return false;
    *port = p ? p : default_port;
    return true;
}

/* Splits an absolute-form target "scheme://authority/path?query". Sets *tls for https.
 * Returns false if the target is not a well-formed http(s) URI. */
static bool parse_absolute_target(const char *t, size_t len, bool *tls, char *host, uint16_t *port,
                                  const char **origin, size_t *origin_len)
{
    size_t skip;
    if (len >= 7 && ascii_case_eq(t, 7, "http://", 7)) {
        *tls = false;
        skip = 7;
    } else if (len >= 8 && ascii_case_eq(t, 8, "https://", 8)) {
        *tls = true;
        skip = 8;
    } else {
        return false;
    }
    const char *auth = t + skip;
    size_t rest = len - skip;
    size_t alen = 0;
    while (alen < rest && auth[alen] != '/' && auth[alen] != '?' && auth[alen] != '#')
        alen++;
    if (alen == 0 || memchr(auth, '@', alen) != NULL) /* userinfo is not allowed */
        return false;
    if (!split_authority(auth, alen, host, port, *tls ? 443 : 80))
        return false;
    *origin = auth + alen;
    *origin_len = rest - alen;
    return true;
}

/* Checks that the Host header names the same host and port as the connection/URI. */
static bool host_header_agrees(const struct http1_request *req, const char *host, uint16_t port,
                               uint16_t default_port)
{
    if (req->host == NULL)
        return req->version_minor == 0;
    char h[HOST_MAX];
    uint16_t p = 0;
    if (host_normalize(req->host->value, req->host->value_len, h, sizeof(h), &p) != 0)
        return false;
    if (p == 0)
        p = default_port;
    return strcmp(h, host) == 0 && p == port;
}

/* Reads the explicit-proxy identity from Proxy-Authorization: Basic base64(name:token). Only
 * the token identifies the sandbox (the name is for humans and logs). A token with authproxy's
 * prefix ("apt_") is a sandbox credential: if it matches no sandbox (wrong, or its sandbox was
 * deleted) the request gets 407, never the anonymous policy. Any other Basic credential (a
 * client whose proxy URL carries its own user:pass) is treated as anonymous. A malformed Basic
 * value, or a credential in another scheme (Bearer, Negotiate, ...), counts as an unknown
 * sandbox credential: 407, failing closed rather than guessing what it was meant to be. */
static void read_identity(struct conn *c, const struct http1_request *req)
{
    const struct http1_header *h =
        http1_find_header(req->headers, req->n_headers, "Proxy-Authorization");
    c->has_identity = h != NULL;
    memset(c->token_hash, 0, sizeof(c->token_hash));
    if (h == NULL)
        return;
    const char *v = h->value;
    size_t len = h->value_len;
    if (len < 7 || !ascii_case_eq(v, 6, "Basic ", 6))
        return;
    v += 6;
    len -= 6;
    while (len > 0 && *v == ' ') {
        v++;
        len--;
    }
    if (len == 0 || len > 1024 || len % 4 != 0)
        return;
    unsigned char decoded[1024];
    int n = EVP_DecodeBlock(decoded, (const unsigned char *)v, (int)len);
    if (n <= 0)
        return;
    while (n > 0 && len > 0 && v[len - 1] == '=') { /* DecodeBlock counts padding as zeros */
        n--;
        len--;
    }
    unsigned char *colon = memchr(decoded, ':', (size_t)n);
    size_t tlen = colon ? (size_t)n - (size_t)(colon + 1 - decoded) : 0;
    size_t plen = strlen(STORE_PROXY_TOKEN_PREFIX);
    if (colon != NULL && tlen >= plen && memcmp(colon + 1, STORE_PROXY_TOKEN_PREFIX, plen) == 0)
        SHA256(colon + 1, tlen, c->token_hash);
    else
        c->has_identity = false; /* not an authproxy sandbox credential: anonymous */
    secure_zero(decoded, sizeof(decoded));
}

/* The policy that governs this connection's requests under snapshot snap: the sandbox's, when
 * the client presents a sandbox credential or (transparent capture) comes from a running box's
 * address, else the config file's (given --config). NULL when
 * there is none; then *status and *why say how to refuse (407: unknown or missing credential; 403:
 * the sandbox's policy cannot be applied). *box gets the sandbox, if any. */
static const struct policy *select_policy(const struct conn *c, const struct snapshot *snap,
                                          const struct registry_box **box, int *status,
                                          const char **why)
{
    *box = NULL;
    if (c->transparent && (*box = registry_find_by_addr(snap->registry, c->sandbox_addr))) {
        if ((*box)->policy == NULL) {
            *status = 403;
            *why = "denied: the sandbox's proxy_config cannot be applied (see the daemon log)";
            return NULL;
        }
        return (*box)->policy;
    }
    if (c->has_identity) {
        *box = registry_find(snap->registry, c->token_hash);
        if (*box == NULL) {
            *status = 407;
            *why = "proxy authentication required: unknown sandbox credential";
            return NULL;
        }
        if ((*box)->policy == NULL) {
            *status = 403;
            *why = "denied: the sandbox's proxy_config cannot be applied (see the daemon log)";
            return NULL;
        }
        return (*box)->policy;
    }
    if (snap->base->anonymous_allowed)
        return snap->config->policy;
    *status = 407;
    *why = "proxy authentication required: use the sandbox's proxy credential";
    return NULL;
}

static struct request *request_new(struct conn *c)
{
    struct request *r = xcalloc(1, sizeof(*r));
    r->snap = snapshot_ref(c->w->current);
    r->start_us = monotonic_us();
    r->scheme = "http";
    return r;
}

/* Handles a CONNECT on the explicit port. */
static void handle_connect(struct conn *c, const struct http1_request *req, size_t head_len)
{
    struct evbuffer *in = bufferevent_get_input(c->client);
    c->tunnel_start_us = monotonic_us();
    if (c->in_tunnel ||
        !split_authority(req->target, req->target_len, c->tunnel_host, &c->tunnel_port, 0) ||
        c->tunnel_port == 0) {
        respond_and_close(c, 400, "bad request: CONNECT needs host:port");
        return;
    }
    read_identity(c, req); /* req points into the input buffer: read it before draining */
    evbuffer_drain(in, head_len);
    const struct registry_box *box;
    int refuse_status = 0;
    const char *why = NULL;
    const struct policy *pol = select_policy(c, c->w->current, &box, &refuse_status, &why);
    if (box != NULL) {
        c->tunnel_sandbox = xstrdup(box->name);
        c->tunnel_workspace = xstrdup(box->workspace_id);
    }
    if (pol == NULL) {
        tunnel_audit(c, "denied", refuse_status == 407 ? "proxy_auth" : "sandbox_policy", why,
                     refuse_status);
        c->tunnel_start_us = 0;
        respond_and_close(c, refuse_status, why);
        return;
    }
    if (!admit_connection(c, box)) {
        const char *body = "too many connections from this sandbox";
        tunnel_audit(c, "denied", "limits", body, 429);
        c->tunnel_start_us = 0;
        respond_and_close(c, 429, body);
        return;
    }
    if (upstream_is_self_literal(c->w->shared, c->tunnel_host, c->tunnel_port)) {
        const char *body = "denied: the destination is authproxy itself";
        tunnel_audit(c, "denied", "self", body, 403);
        c->tunnel_start_us = 0;
        respond_and_close(c, 403, body);
        return;
    }
    struct policy_host_decision d;
    policy_decide_host(pol, c->tunnel_host, &d);
    if (d.verdict == POLICY_HOST_DENY) {
        char body[64];
        snprintf(body, sizeof(body), "denied by %s", d.decided_by);
        tunnel_audit(c, "denied", d.decided_by, body, 403);
        c->tunnel_start_us = 0;
        respond_and_close(c, 403, body);
        return;
    }
    if (d.verdict == POLICY_HOST_BYPASS) {
        c->state = CONN_TUNNEL_CONNECTING;
        bufferevent_disable(c->client, EV_READ);
        c->connecting = upstream_connect_start(c->w, c->w->current, c->tunnel_host, c->tunnel_port,
                                               false, policy_names_host(pol, c->tunnel_host),
                                               on_upstream_connected, c);
        return;
    }
    /* Intercept: confirm, then look at the first byte the client sends to tell TLS from
     * plain HTTP. */
    c->tunnel_start_us = 0;
    c->in_tunnel = true;
    c->state = CONN_TUNNEL_ACCEPTING;
    evbuffer_add_printf(bufferevent_get_output(c->client),
                        "HTTP/1.1 200 Connection established\r\n\r\n");
    bufferevent_disable(c->client, EV_READ);
    bufferevent_setwatermark(c->client, EV_WRITE, 0, 0);
    bufferevent_setcb(c->client, NULL, client_write_cb, client_event_cb, c);
}

static void client_tls_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct conn *c = arg;
    if (c->state == CONN_CLIENT_HANDSHAKE && (events & BEV_EVENT_CONNECTED)) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        const char *sni = tls_mitm_client_sni(ssl);
        if (sni != NULL && strcmp(sni, c->tunnel_host) != 0)
            c->name_mismatch = true;
        c->tunnel_tls = true;
        enter_read_head(c);
        if (evbuffer_get_length(bufferevent_get_input(c->client)) > 0)
            process_client_input(c);
        return;
    }
    client_event_cb(bev, events, arg);
}

/* Terminates the client's TLS on its socket (nothing consumed yet: the first bytes were only
 * peeked) with a leaf for tunnel_host or the SNI; READ_HEAD follows the handshake. */
static void start_client_tls(struct conn *c)
{
    SSL *ssl = tls_mitm_new_server_ssl(c->w->shared->mitm, c->tunnel_host);
    if (ssl == NULL) {
        conn_close(c);
        return;
    }
    c->client = bufferevent_openssl_socket_new(c->w->base, c->fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                               BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    /* It fails only without memory, and then (BEV_OPT_CLOSE_ON_FREE) libevent 2.1 has freed ssl
     * itself: freeing it here would be a double free. The documented OOM policy (util.h). */
    if (c->client == NULL)
        abort();
    c->fd = -1;
    bufferevent_openssl_set_allow_dirty_shutdown(c->client, 1);
    outflush_attach_tls(&c->client_flush, &c->w->outflush, c->client);
    tls_readahead_attach(&c->client_readahead, &c->w->readahead, c->client);
    c->state = CONN_CLIENT_HANDSHAKE;
    arm_timer(c, conn_limits(c)->header_timeout_ms);
    bufferevent_setcb(c->client, client_read_cb, NULL, client_tls_event_cb, c);
    bufferevent_enable(c->client, EV_READ | EV_WRITE);
}

/* Puts the client's socket under a plain bufferevent, its output written by outflush. With
 * owns_fd the bufferevent closes the socket when freed (c->fd is handed over); without, the
 * socket stays c's (it may move to a TLS bufferevent after a CONNECT). False when it cannot be
 * made: c is closed then. */
static bool client_plain_bev(struct conn *c, bool owns_fd)
{
    int options = BEV_OPT_DEFER_CALLBACKS | (owns_fd ? BEV_OPT_CLOSE_ON_FREE : 0);
    c->client = bufferevent_socket_new(c->w->base, c->fd, options);
    if (c->client == NULL) {
        conn_close(c);
        return false;
    }
    plainread_attach(c->client);
    outflush_attach(&c->client_flush, &c->w->outflush, c->client);
    if (owns_fd)
        c->fd = -1;
    return true;
}

/* Reads plain HTTP from the client's socket (which the new bufferevent now owns). */
static void start_client_plain(struct conn *c)
{
    if (!client_plain_bev(c, true))
        return;
    enter_read_head(c);
}

/* TUNNEL_ACCEPTING: the first byte tells whether the client speaks TLS (0x16, a handshake
 * record) or plain HTTP inside the tunnel. Peeked, not consumed, so the chosen bufferevent
 * reads the stream from its start. */
static void peek_first_byte_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    unsigned char b;
    (void)what;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    event_free(c->peek_ev);
    c->peek_ev = NULL;
    if (n <= 0) {
        conn_close(c);
        return;
    }
    outflush_detach(&c->client_flush);
    bufferevent_free(c->client); /* no BEV_OPT_CLOSE_ON_FREE: the fd stays open */
    c->client = NULL;
    if (b == 0x16) {
        start_client_tls(c);
        return;
    }
    start_client_plain(c);
}

/* Parses one request head from the client, decides, and starts forwarding (or refuses, or
 * opens a tunnel). Does nothing but arm the head timeout while the head is incomplete. May
 * free c: callers must not touch c afterwards. */

/* ---------------------------------------------------------------- per-sandbox limits */

/* Counts this connection for its sandbox. From accept on it is counted for the client's address
 * (so connections that never send anything count too), or for the box when the capture address
 * names it; when a request later names the box (the explicit port's credential), the count moves
 * from the address to the box. Returns false when that sandbox already has its maximum of
 * connections: the caller refuses with 429 (or closes, where nothing HTTP was said). */
static bool admit_connection(struct conn *c, const struct registry_box *box)
{
    char key[128];
    if (box != NULL) {
        snprintf(key, sizeof(key), "box:%s", box->box_id);
    } else {
        const char *port = strrchr(c->peer, ':'); /* c->peer is "ip:port", IPv6 unbracketed */
        int ip_len = port ? (int)(port - c->peer) : (int)strlen(c->peer);
        snprintf(key, sizeof(key), "addr:%.*s", ip_len, c->peer);
    }
    if (c->limit_key != NULL && (box == NULL || strcmp(c->limit_key, key) == 0))
        return true; /* counted already (an anonymous request stays on its address) */
    struct sandbox_limits *l = c->w->shared->limits;
    if (!sandbox_limits_conn_acquire(l, key, conn_limits(c)->max_connections_per_sandbox))
        return false;
    if (c->limit_key != NULL) {
        sandbox_limits_conn_release(l, c->limit_key);
        free(c->limit_key);
    }
    c->limit_key = xstrdup(key);
    return true;
}

/* One request of this connection's sandbox against its rate limit; false: refuse with 429. */
static bool admit_request(struct conn *c)
{
    const struct config_limits *l = conn_limits(c);
    return c->limit_key == NULL ||
           sandbox_limits_request(c->w->shared->limits, c->limit_key,
                                  l->requests_per_second_per_sandbox, l->request_burst_per_sandbox,
                                  monotonic_us());
}

/* ---------------------------------------------------------------- dynamic credentials */

/* True when the first want body bytes follow the head (head_len bytes) in the client's input.
 * Otherwise the request is put back — its head stays buffered, c->req is dropped unaudited — to
 * be parsed again when more bytes arrive, and a deadline (the head timeout, counted once) keeps
 * a client that never sends them from holding the connection. A client waiting for "100
 * Continue" before it sends a body gets it from us. */
static bool await_body(struct conn *c, const struct http1_request *req, size_t head_len,
                       uint64_t want)
{
    struct evbuffer *in = bufferevent_get_input(c->client);
    if (evbuffer_get_length(in) >= head_len + want)
        return true;
    uint64_t now = monotonic_us();
    unsigned ms = conn_limits(c)->header_timeout_ms;
    if (c->body_deadline_us == 0)
        c->body_deadline_us = now + (uint64_t)ms * 1000;
    uint64_t left_ms = c->body_deadline_us > now ? (c->body_deadline_us - now) / 1000 : 0;
    arm_timer(c, (unsigned)left_ms);
    if (req->expect_continue && !c->continue_sent) {
        c->continue_sent = true;
        bufferevent_write(c->client, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    request_discard(c);
    return false;
}

/* Copies len body bytes that follow the head (at offset head_len) out of the input buffer
 * without rearranging it (the parsed head points into it). The caller secret_free's it. */
static char *copy_body(struct conn *c, size_t head_len, size_t len)
{
    struct evbuffer *in = bufferevent_get_input(c->client);
    struct evbuffer_ptr pos;
    char *out = xmalloc(len + 1);
    evbuffer_ptr_set(in, &pos, head_len, EVBUFFER_PTR_SET);
    evbuffer_copyout_from(in, &pos, out, len);
    out[len] = '\0';
    return out;
}

static void credentials_ready_cb(struct cred_headers *h, void *arg)
{
    struct conn *c = arg;
    c->cred_waiter = NULL;
    c->cred_ready = true;
    c->cred = h;
    c->state = CONN_READ_HEAD;
    client_enable_read(c);
    handle_request_head(c); /* the head is still buffered; this time the credential is known */
}

/* The credential for key: the outcome of the wait that just ended for this key, if any (moved
 * to *out, NULL meaning it failed), else a cache lookup through resolve. Returns false when the
 * request must wait: the connection is then RESOLVING, the request dropped unaudited. */
typedef enum credcache_result (*resolve_fn)(struct conn *c, const uint8_t *key, const void *what,
                                            const void *rq, struct cred_headers **hit);

static bool take_credentials(struct conn *c, const uint8_t key[CREDCACHE_KEY_LEN],
                             resolve_fn resolve, const void *what, const void *rq,
                             struct cred_headers **out)
{
    *out = NULL;
    if (c->cred_ready) {
        c->cred_ready = false;
        struct cred_headers *h = c->cred;
        c->cred = NULL;
        if (memcmp(c->cred_key, key, CREDCACHE_KEY_LEN) == 0) {
            *out = h;
            return true;
        }
        cred_headers_unref(h); /* asked for another key (the policy changed meanwhile) */
    }
    if (resolve(c, key, what, rq, out) == CREDCACHE_HIT)
        return true;
    memcpy(c->cred_key, key, CREDCACHE_KEY_LEN);
    c->state = CONN_RESOLVING;
    bufferevent_disable(c->client, EV_READ);
    evtimer_del(c->timer);
    request_discard(c);
    return false;
}

static enum credcache_result resolve_callback(struct conn *c, const uint8_t *key, const void *what,
                                              const void *rq, struct cred_headers **hit)
{
    return dyncred_callback_resolve(c->w, c->req->snap, what, rq, key, credentials_ready_cb, c,
                                    hit, &c->cred_waiter);
}

static enum credcache_result resolve_gcp(struct conn *c, const uint8_t *key, const void *what,
                                         const void *rq, struct cred_headers **hit)
{
    (void)rq;
    return dyncred_gcp_resolve(c->w, c->req->snap, what, key, credentials_ready_cb, c, hit,
                               &c->cred_waiter);
}

/* Turns a set of dynamic credentials into the request's overrides (r keeps the reference). */
static struct http1_header_override *cred_overrides(struct request *r, struct cred_headers *h,
                                                    size_t *n)
{
    r->cred = h;
    *n = h->n;
    struct http1_header_override *ov = xcalloc(h->n + 1, sizeof(*ov));
    r->injected = xcalloc(h->n + 1, sizeof(*r->injected));
    for (size_t i = 0; i < h->n; i++) {
        ov[i].name = h->h[i].name;
        ov[i].value = h->h[i].value;
        r->injected[i] = h->h[i].name;
    }
    r->n_injected = h->n;
    return ov;
}

/* Resolves the callback's headers for the request being parsed. Returns the overrides (owned by
 * the caller) with *n set, or NULL when the request waits (RESOLVING or more body) or was refused
 * (c->req is then gone). */
static struct http1_header_override *callback_credentials(struct conn *c,
                                                          const struct http1_request *req,
                                                          size_t head_len, const char *origin,
                                                          size_t origin_len,
                                                          const struct policy_callback *cb,
                                                          size_t *n)
{
    struct request *r = c->req;
    struct http1_header_override *ov = NULL;
    char *body = NULL;
    struct dyncred_request dq = {
        .host = r->host,
        .port = r->port,
        .tenant_id = r->box ? r->box->workspace_id : NULL,
        .sandbox_id = r->box ? r->box->box_id : NULL,
        .method = r->method,
        .scheme = r->scheme,
        .target = origin,
        .target_len = origin_len,
        .headers = req->headers,
        .n_headers = req->n_headers,
    };
    if (cb->full_request) {
        if (req->body_kind == HTTP1_BODY_LENGTH) {
            uint64_t want = req->content_length < DYNCRED_CALLBACK_BODY_MAX
                                ? req->content_length
                                : DYNCRED_CALLBACK_BODY_MAX;
            if (!await_body(c, req, head_len, want))
                goto out;
            dq.body = body = copy_body(c, head_len, (size_t)want);
            dq.body_len = (size_t)want;
            dq.body_truncated = req->content_length > want;
        } else if (req->body_kind == HTTP1_BODY_CHUNKED) {
            dq.body_truncated = true; /* a chunked body is not buffered for callbacks */
        }
    }
    uint8_t key[CREDCACHE_KEY_LEN];
    dyncred_callback_key(cb, &dq, key);
    struct cred_headers *h;
    if (!take_credentials(c, key, resolve_callback, cb, &dq, &h))
        goto out;
    if (h == NULL) {
        refuse(c, 502, "error", "callback", "callback resolution failed");
        goto out;
    }
    ov = cred_overrides(r, h, n);
out:
    if (body)
        secret_free(body);
    return ov;
}


/* Request bodies up to this size are hashed for AWS SigV4 (buffered before the head is sent);
 * larger or chunked ones are signed UNSIGNED-PAYLOAD where the service allows it (S3), else
 * refused. */
#define AWS_SIGN_BODY_MAX (8u * 1024 * 1024)

/* Hex SHA-256 of len body bytes at offset head_len of the client's input, read in place. */
static void hash_buffered_body(struct conn *c, size_t head_len, size_t len, char out[65])
{
    struct evbuffer *in = bufferevent_get_input(c->client);
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(in, &pos, head_len, EVBUFFER_PTR_SET);
    int n = evbuffer_peek(in, (ev_ssize_t)len, &pos, NULL, 0);
    struct evbuffer_iovec *vec = xcalloc(n > 0 ? (size_t)n : 1, sizeof(*vec));
    n = evbuffer_peek(in, (ev_ssize_t)len, &pos, vec, n);
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    unsigned char digest[32];
    if (sha == NULL || EVP_DigestInit_ex(sha, sha256_md(), NULL) != 1)
        abort(); /* OpenSSL fails here only without memory: the documented OOM policy */
    size_t left = len;
    for (int i = 0; i < n && left > 0; i++) {
        size_t take = vec[i].iov_len < left ? vec[i].iov_len : left;
        EVP_DigestUpdate(sha, vec[i].iov_base, take);
        left -= take;
    }
    EVP_DigestFinal_ex(sha, digest, NULL);
    EVP_MD_CTX_free(sha);
    free(vec);
    hex_encode(digest, sizeof(digest), out);
}

/* Signs the request being parsed for an "aws" rule (SPEC §2) with the rule's credentials:
 * the sandbox's own signature fields are dropped, a bounded body is hashed (the request waits
 * until it is buffered), a larger one is sent UNSIGNED-PAYLOAD where the service allows it.
 * host_field: the Host value the proxy adds (HTTP/1.0 without Host), else NULL. Returns the
 * overrides (the caller frees the array; r->aws keeps what they point to) with *n set, or NULL
 * when the request waits for its body or was refused. */
static struct http1_header_override *aws_sign_request(struct conn *c,
                                                      const struct http1_request *req,
                                                      size_t head_len, const char *origin,
                                                      size_t origin_len, const char *host_field,
                                                      const struct policy_rule *rule, size_t *n)
{
    struct request *r = c->req;
    struct sigv4_scope scope;
    const char *err = NULL;
    char hash[65];
    const char *payload = hash;
    if (sigv4_scope_from_host(r->host, strlen(r->host), &scope, &err) != 0) {
        r->error = err;
        refuse(c, 502, "error", rule->name, "cannot sign for this AWS host");
        return NULL;
    }
    bool unsigned_ok = sigv4_unsigned_payload_allowed(scope.service);
    const struct http1_header *client_hash =
        http1_find_header(req->headers, req->n_headers, "X-Amz-Content-Sha256");
    const char *trailer = SIGV4_STREAMING_UNSIGNED_TRAILER;
    if (client_hash != NULL && client_hash->value_len > 16 &&
        memcmp(client_hash->value, "STREAMING-AWS4-", 15) == 0) {
        /* aws-chunked with per-chunk signatures made with the sandbox's (fake) key */
        refuse(c, 400, "denied", rule->name,
               "bad request: chunk-signed AWS uploads cannot be re-signed by the proxy; use an "
               "unsigned payload");
        return NULL;
    }
    if (req->body_kind == HTTP1_BODY_NONE) {
        payload = SIGV4_EMPTY_SHA256;
    } else if (unsigned_ok && client_hash != NULL && client_hash->value_len == strlen(trailer) &&
               memcmp(client_hash->value, trailer, client_hash->value_len) == 0) {
        payload = trailer;
    } else if (req->body_kind == HTTP1_BODY_LENGTH && req->content_length <= AWS_SIGN_BODY_MAX) {
        if (!await_body(c, req, head_len, req->content_length))
            return NULL;
        hash_buffered_body(c, head_len, (size_t)req->content_length, hash);
    } else if (unsigned_ok) {
        payload = SIGV4_UNSIGNED_PAYLOAD;
    } else {
        refuse(c, 413, "denied", rule->name,
               "request body too large to sign for AWS (a chunked body, or over 8 MiB)");
        return NULL;
    }
    struct sigv4_request sr = {
        .method = req->method,
        .method_len = req->method_len,
        .target = origin,
        .target_len = origin_len,
        .headers = req->headers,
        .n_headers = req->n_headers,
        .host_field = host_field,
        .payload_hash = payload,
        .now = time(NULL),
    };
    struct sigv4_credentials cred = {rule->aws.access_key_id, rule->aws.secret_access_key,
                                     rule->aws.session_token};
    r->aws = xcalloc(1, sizeof(*r->aws));
    if (sigv4_sign(&sr, &scope, &cred, r->aws, &err) != 0) {
        r->error = err; /* static text, never credential material */
        refuse(c, 502, "error", rule->name, "cannot sign the request for AWS");
        return NULL;
    }
    struct http1_header_override *ov = xcalloc(SIGV4_MAX_OVERRIDES + 1, sizeof(*ov));
    *n = sigv4_signed_overrides(r->aws, ov);
    r->injected = xcalloc(*n + 1, sizeof(*r->injected));
    for (size_t i = 0; i < *n; i++)
        r->injected[i] = ov[i].name;
    r->n_injected = *n;
    if (r->aws->security_token == NULL) /* no token of ours: none of the sandbox's either */
        ov[(*n)++] = (struct http1_header_override){"X-Amz-Security-Token", NULL};
    return ov;
}

static void handle_request_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->client);
    size_t len = evbuffer_get_length(in);
    const struct config_limits *lim = conn_limits(c);
    size_t take = len < lim->max_header_bytes + 1 ? len : lim->max_header_bytes + 1;
    const char *buf = (const char *)evbuffer_pullup(in, (ssize_t)take);
    struct http1_request *req = xmalloc(sizeof(*req));
    size_t head_len = 0;

    int rc = http1_parse_request(buf, take, lim->max_header_bytes, req, &head_len);
    if (rc == HTTP1_INCOMPLETE) {
        if (!c->head_started) {
            c->head_started = true;
            arm_timer(c, lim->header_timeout_ms);
        }
        goto out;
    }
    evtimer_del(c->timer);
    if (rc != HTTP1_OK) {
        int status = -rc;
        const char *body = status == 431   ? "request header fields too large"
                           : status == 400 ? "bad request"
                                           : http1_reason_phrase(status);
        c->req = request_new(c);
        snprintf(c->req->method, sizeof(c->req->method), "-");
        if (c->in_tunnel) {
            snprintf(c->req->host, sizeof(c->req->host), "%s", c->tunnel_host);
            c->req->port = c->tunnel_port;
            c->req->scheme = c->tunnel_tls ? "https" : "http";
        }
        refuse(c, status, "denied", "http_parser", body);
        goto out;
    }
    if (req->is_connect) {
        handle_connect(c, req, head_len);
        goto out;
    }

    struct request *r = c->req = request_new(c);
    snprintf(r->method, sizeof(r->method), "%.*s",
             (int)(req->method_len < 31 ? req->method_len : 31), req->method);
    const char *origin = req->target;
    size_t origin_len = req->target_len;
    bool tls = false;
    char abs_host[HOST_MAX];
    uint16_t abs_port = 0;
    bool absolute = parse_absolute_target(req->target, req->target_len, &tls, abs_host, &abs_port,
                                          &origin, &origin_len);
    if (c->transparent_http && c->tunnel_host[0] == '\0') {
        /* Transparent plain HTTP: the connection's name is the first request's Host (the port
         * is the one the sandbox dialled); later requests must agree with it (421 otherwise). */
        uint16_t hp = 0;
        if (req->host == NULL || host_normalize(req->host->value, req->host->value_len,
                                                c->tunnel_host, sizeof(c->tunnel_host), &hp) != 0) {
            c->tunnel_host[0] = '\0';
            refuse(c, 400, "denied", "http_parser", "bad request: a valid Host is required");
            goto out;
        }
    }
    if (c->in_tunnel) {
        snprintf(r->host, sizeof(r->host), "%s", c->tunnel_host);
        r->port = c->tunnel_port;
        r->upstream_tls = c->tunnel_tls;
        r->scheme = c->tunnel_tls ? "https" : "http";
        if (absolute && (strcmp(abs_host, c->tunnel_host) != 0 || abs_port != c->tunnel_port ||
                         tls != c->tunnel_tls))
            c->name_mismatch = true;
    } else {
        if (!absolute) {
            refuse(c, 400, "denied", "http_parser",
                   "bad request: the proxy needs an absolute http:// URI or CONNECT");
            goto out;
        }
        snprintf(r->host, sizeof(r->host), "%s", abs_host);
        r->port = abs_port;
        r->upstream_tls = tls;
        r->scheme = tls ? "https" : "http";
    }
    if (origin_len == 0) {
        origin = "/";
        origin_len = 1;
    }
    if (origin[0] != '/' && !(origin_len == 1 && origin[0] == '*')) {
        refuse(c, 400, "denied", "http_parser", "bad request: invalid request target");
        goto out;
    }
    size_t path_len = 0;
    while (path_len < origin_len && origin[path_len] != '?')
        path_len++;
    r->path = xstrndup(origin, path_len);
    r->client_keep_alive = req->keep_alive;
    r->websocket = req->upgrade_websocket;
    r->expect_continue = req->expect_continue;
    r->req_body = req->body_kind;
    r->req_remaining = req->content_length;
    http1_chunked_init(&r->req_chunked);

    if (c->name_mismatch ||
        !host_header_agrees(req, r->host, r->port, r->upstream_tls ? 443 : 80)) {
        refuse(c, 421, "denied", "host_check",
               "misdirected request: the Host header does not match the connection's name");
        goto out;
    }

    if (!c->in_tunnel)
        read_identity(c, req);
    int refuse_status = 0;
    const char *why = NULL;
    const struct policy *pol = select_policy(c, r->snap, &r->box, &refuse_status, &why);
    if (pol == NULL) {
        refuse(c, refuse_status, "denied", refuse_status == 407 ? "proxy_auth" : "sandbox_policy",
               why);
        goto out;
    }
    if (!admit_connection(c, r->box)) {
        refuse(c, 429, "denied", "limits", "too many connections from this sandbox");
        goto out;
    }
    if (!admit_request(c)) {
        refuse(c, 429, "denied", "limits", "request rate limit of this sandbox exceeded");
        goto out;
    }
    struct policy_host_decision hd;
    policy_decide_host(pol, r->host, &hd);
    if (hd.verdict == POLICY_HOST_DENY) {
        char body[64];
        snprintf(body, sizeof(body), "denied by %s", hd.decided_by);
        r->error = NULL;
        refuse(c, 403, "denied", hd.decided_by, body);
        goto out;
    }
    struct http1_header_override *ov = NULL;
    size_t n_ov = 0;
    const struct policy_rule *secret_rule = NULL; /* a header rule whose values to scrub */
    char host_field[HOST_MAX + 16];
    if (req->host == NULL) {
        /* HTTP/1.0 without Host: the request goes upstream as HTTP/1.1, which requires one. */
        bool v6 = strchr(r->host, ':') != NULL;
        bool default_port = r->port == (r->upstream_tls ? 443 : 80);
        if (default_port)
            snprintf(host_field, sizeof(host_field), v6 ? "[%s]" : "%s", r->host);
        else
            snprintf(host_field, sizeof(host_field), v6 ? "[%s]:%u" : "%s:%u", r->host, r->port);
    }
    if (hd.verdict == POLICY_HOST_BYPASS) {
        r->decision = NULL;
        r->decided_by = "no_proxy";
    } else {
        struct policy_request_decision rd;
        policy_decide_request(pol, r->host, r->path, path_len, r->upstream_tls, &rd);
        switch (rd.action) {
        case POLICY_REFUSE_PLAINTEXT:
            refuse(c, 403, "denied", rd.rule->name,
                   "refused: credentials are only injected over TLS");
            goto out;
        case POLICY_CALLBACK:
            r->decided_by = "callback";
            ov = callback_credentials(c, req, head_len, origin, origin_len, rd.callback, &n_ov);
            if (ov == NULL)
                goto out; /* waiting, or refused */
            break;
        case POLICY_INJECT:
            r->decided_by = rd.rule->name;
            if (rd.rule->type == POLICY_RULE_GCP) {
                uint8_t key[CREDCACHE_KEY_LEN];
                struct cred_headers *h;
                dyncred_gcp_key(rd.rule, key);
                if (!take_credentials(c, key, resolve_gcp, rd.rule, NULL, &h))
                    goto out;
                if (h == NULL) {
                    refuse(c, 502, "error", rd.rule->name, "credential resolution failed");
                    goto out;
                }
                ov = cred_overrides(r, h, &n_ov);
                break;
            }
            if (rd.rule->type == POLICY_RULE_AWS) {
                ov = aws_sign_request(c, req, head_len, origin, origin_len,
                                      req->host ? NULL : host_field, rd.rule, &n_ov);
                if (ov == NULL)
                    goto out; /* waiting for the body, or refused */
                break;
            }
            n_ov = rd.rule->n_headers;
            secret_rule = rd.rule;
            ov = xcalloc(n_ov, sizeof(*ov));
            r->injected = xcalloc(n_ov, sizeof(*r->injected));
            for (size_t i = 0; i < n_ov; i++) {
                ov[i].name = rd.rule->headers[i].name;
                ov[i].value = rd.rule->headers[i].value;
                r->injected[i] = rd.rule->headers[i].name;
            }
            r->n_injected = n_ov;
            break;
        case POLICY_FORWARD:
            break;
        }
    }

    /* What was injected must not come back in the response (an echoing origin). */
    if (secret_rule != NULL) {
        r->scrub = secret_rule->scrub; /* borrowed: the policy outlives the request */
    } else if (r->cred != NULL || (r->aws != NULL && r->aws->security_token != NULL)) {
        r->scrub = r->scrub_owned = scrub_new();
        for (size_t i = 0; r->cred != NULL && i < r->cred->n; i++)
            scrub_add_credential(r->scrub_owned, r->cred->h[i].value);
        if (r->aws != NULL && r->aws->security_token != NULL)
            scrub_add_credential(r->scrub_owned, r->aws->security_token);
    }
    if (scrub_empty(r->scrub))
        r->scrub = NULL;
    if (req->host == NULL) {
        ov = xrealloc(ov, (n_ov + 1) * sizeof(*ov));
        ov[n_ov].name = "Host";
        ov[n_ov].value = host_field;
        n_ov++;
    }
    r->head_out = evbuffer_new();
    if (http1_write_request_head(r->head_out, req, origin, origin_len, ov, n_ov) != 0) {
        free(ov);
        refuse(c, 502, "error", r->decided_by, "invalid injected header value");
        goto out;
    }
    free(ov);
    r->bytes_in = head_len;
    evbuffer_drain(in, head_len);
    if (r->decided_by != NULL && hd.verdict == POLICY_HOST_BYPASS)
        r->decision = "bypassed";

    c->state = CONN_UPSTREAM_CONNECTING;
    r->allow_internal = policy_names_host(pol, r->host);
    c->up = upstream_pool_take(c->w, r->host, r->port, r->upstream_tls, r->allow_internal);
    if (c->up != NULL) {
        start_forwarding(c);
        goto out;
    }
    /* Stop reading the client while we connect, so its body cannot pile up in memory.
     * (Not on the pooled path above: each enable/disable costs an epoll_ctl.) */
    bufferevent_disable(c->client, EV_READ);
    c->connecting = upstream_connect_start(c->w, r->snap, r->host, r->port, r->upstream_tls,
                                           r->allow_internal,
                                           on_upstream_connected, c);
out:
    free(req);
}

static void process_client_input(struct conn *c)
{
    switch (c->state) {
    case CONN_READ_HEAD:
        /* One head at a time: the next pipelined one is parsed when this exchange ends
         * (maybe_finish_exchange). */
        if (c->req == NULL && evbuffer_get_length(bufferevent_get_input(c->client)) > 0)
            handle_request_head(c);
        break;
    case CONN_FORWARDING:
        pump_request_body(c);
        break;
    case CONN_TUNNEL:
        if (c->up)
            c->tunnel_in += relay(c->client, c->up->bev, UINT64_MAX);
        break;
    default:
        /* Bytes that arrive while we wait for an upstream stay buffered. */
        break;
    }
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    process_client_input(arg);
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *out = bufferevent_get_output(bev);
    if (c->state == CONN_CLOSING) {
        if (evbuffer_get_length(out) == 0)
            conn_close(c);
        return;
    }
    if (c->state == CONN_TUNNEL_ACCEPTING) {
        if (evbuffer_get_length(out) != 0)
            return;
        if (evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
            /* The client sent tunnel bytes along with its CONNECT; we do not buffer-splice a
             * TLS stream, so refuse that (no mainstream client does it). */
            conn_close(c);
            return;
        }
        c->peek_ev = event_new(c->w->base, c->fd, EV_READ | EV_PERSIST, peek_first_byte_cb, c);
        event_add(c->peek_ev, NULL);
        arm_timer(c, conn_limits(c)->header_timeout_ms);
        return;
    }
    /* Client drained below the low-water mark: resume reading from the upstream. */
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    if (c->up && (c->state == CONN_FORWARDING || c->state == CONN_TUNNEL)) {
        upstream_enable_read(c);
        if (c->state == CONN_FORWARDING)
            process_upstream_input(c);
        else
            c->tunnel_out += relay(c->up->bev, c->client, UINT64_MAX);
    }
}

static void client_event_cb(struct bufferevent *bev, short events, void *arg)
{
    struct conn *c = arg;
    (void)bev;
    if (c->state == CONN_CLIENT_HANDSHAKE && c->req == NULL) {
        struct audit_record rec = {
            .client = c->peer,
            .scheme = "https",
            .host = c->tunnel_host,
            .port = c->tunnel_port,
            .decision = "error",
            .error = "client TLS handshake failed (does the client trust the authproxy CA?)",
            .policy_version = c->w->current->version,
        };
        worker_audit(c->w, &rec);
    }
    if (c->state == CONN_TUNNEL && c->up && (events & BEV_EVENT_EOF)) {
        /* Client finished sending: pass what is left, then let the origin finish. */
        relay(c->client, c->up->bev, UINT64_MAX);
    }
    if (c->req && c->req->decision == NULL) {
        c->req->decision = "error";
        c->req->error = "client closed the connection";
    }
    conn_close(c);
}

/* ---------------------------------------------------------------- transparent capture */

/* Refuses a transparently captured connection before any HTTP is spoken: audit, then close
 * (SPEC §3: on the transparent path a refusal closes the connection). */
static void transparent_refuse(struct conn *c, const char *decision, const char *decided_by,
                               const char *why)
{
    tunnel_audit(c, decision, decided_by, why, 0);
    c->tunnel_start_us = 0;
    conn_close(c);
}

/* Opens an untouched byte tunnel to tunnel_host:tunnel_port (no_proxy). allow_internal: the
 * policy names the host (upstream_connect_start). */
static void transparent_bypass(struct conn *c, bool allow_internal)
{
    if (!client_plain_bev(c, true))
        return;
    bufferevent_disable(c->client, EV_READ);
    c->state = CONN_TUNNEL_CONNECTING;
    c->connecting = upstream_connect_start(c->w, c->w->current, c->tunnel_host, c->tunnel_port,
                                           false, allow_internal, on_upstream_connected, c);
}

/* Decides what to do with a captured connection once its first bytes are known. */
static void transparent_dispatch(struct conn *c, const uint8_t *buf, size_t len)
{
    struct clienthello_info hello;
    int rc = clienthello_parse(buf, len, &hello);
    const struct registry_box *box;
    int refuse_status = 0;
    const char *why = NULL;
    const struct policy *pol = select_policy(c, c->w->current, &box, &refuse_status, &why);
    if (box != NULL && c->tunnel_sandbox == NULL) { /* who it is, for the tunnel's audit line */
        c->tunnel_sandbox = xstrdup(box->name);
        c->tunnel_workspace = xstrdup(box->workspace_id);
    }

    if (rc == CLIENTHELLO_NEED_MORE) {
        if (monotonic_us() > c->peek_deadline_us) {
            transparent_refuse(c, "error", NULL, "incomplete TLS ClientHello");
            return;
        }
        struct timeval tv = {0, 5000};
        evtimer_add(c->repeek_timer, &tv);
        return;
    }
    if (pol == NULL) {
        transparent_refuse(c, "denied", "proxy_auth", why);
        return;
    }
    if (!admit_connection(c, box)) {
        transparent_refuse(c, "denied", "limits", "too many connections from this sandbox");
        return;
    }
    if (rc == CLIENTHELLO_INVALID) {
        transparent_refuse(c, "denied", "tls_parser", hello.error);
        return;
    }
    if (rc == CLIENTHELLO_OK) {
        /* The name is the SNI; without one, the address the sandbox dialled. */
        snprintf(c->tunnel_host, sizeof(c->tunnel_host), "%s",
                 hello.has_sni ? hello.sni : c->orig_ip);
        struct policy_host_decision d;
        policy_decide_host(pol, c->tunnel_host, &d);
        if (d.verdict == POLICY_HOST_DENY) {
            char body[64];
            snprintf(body, sizeof(body), "denied by %s", d.decided_by);
            transparent_refuse(c, "denied", d.decided_by, body);
            return;
        }
        if (d.verdict == POLICY_HOST_BYPASS) {
            transparent_bypass(c, policy_names_host(pol, c->tunnel_host));
            return;
        }
        c->tunnel_start_us = 0;
        c->in_tunnel = true;
        start_client_tls(c);
        return;
    }
    /* Not TLS. An HTTP request starts with a method token (upper-case letters). */
    if (buf[0] >= 'A' && buf[0] <= 'Z') {
        c->tunnel_start_us = 0;
        c->in_tunnel = true;
        c->tunnel_tls = false;
        c->transparent_http = true;
        c->tunnel_host[0] = '\0';
        start_client_plain(c);
        return;
    }
    /* Another protocol: only a no_proxy destination (by the address dialled) may pass. */
    snprintf(c->tunnel_host, sizeof(c->tunnel_host), "%s", c->orig_ip);
    struct policy_host_decision d;
    policy_decide_host(pol, c->tunnel_host, &d);
    if (d.verdict != POLICY_HOST_BYPASS) {
        transparent_refuse(c, "denied", d.verdict == POLICY_HOST_DENY ? d.decided_by : "protocol",
                           "neither TLS nor HTTP, and the destination is not in no_proxy");
        return;
    }
    transparent_bypass(c, policy_names_host(pol, c->tunnel_host));
}

/* The first bytes of a captured connection are peeked (not consumed): the TLS or plain
 * bufferevent chosen afterwards reads the stream from its start. */
static void transparent_peek_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    uint8_t buf[16384];
    (void)what;
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK);
    if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
        event_add(c->peek_ev, NULL);
        return;
    }
    if (n <= 0) {
        conn_close(c);
        return;
    }
    transparent_dispatch(c, buf, (size_t)n);
}

/* Re-peek after a short wait: a ClientHello split across segments. Waiting on readability
 * instead would spin, since peeked bytes keep the socket readable. */
static void transparent_repeek_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    event_add(c->peek_ev, NULL);
}

/* Sets up the parts of a conn shared by both listeners. */
static struct conn *conn_new(struct worker *w, int fd, const struct sockaddr *peer)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->w = w;
    c->fd = fd;
    char ip[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (peer->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        port = ntohs(sin->sin_port);
    } else if (peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)peer;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        port = ntohs(sin6->sin6_port);
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, port);
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    LIST_INSERT_HEAD(&w->conns, c, link);
    w->n_conns++;
    metrics_connection_delta(&w->metrics, 1);
    c->timer = evtimer_new(w->base, conn_timer_cb, c);
    return c;
}

void conn_accept_transparent(struct worker *w, int fd, const struct sockaddr *peer, int peer_len)
{
    (void)peer_len;
    struct conn *c = conn_new(w, fd, peer);
    c->transparent = true;
    c->tunnel_start_us = monotonic_us();
    struct sockaddr_in orig;
    socklen_t olen = sizeof(orig);
    if (peer->sa_family != AF_INET || w->shared->is_sandbox_peer == NULL ||
        !w->shared->is_sandbox_peer(w->shared->sandbox_ctx,
                                    ((const struct sockaddr_in *)peer)->sin_addr)) {
        /* Only sandboxes reach this port through their capture rules. */
        conn_close(c);
        return;
    }
    c->sandbox_addr = ((const struct sockaddr_in *)peer)->sin_addr;
    if (!admit_connection(c, registry_find_by_addr(w->current->registry, c->sandbox_addr))) {
        conn_close(c); /* over its connection limit; nothing was said, so nothing to answer */
        return;
    }
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &orig, &olen) == -1) {
        log_warn("transparent: %s: no original destination: %s", c->peer, strerror(errno));
        conn_close(c);
        return;
    }
    inet_ntop(AF_INET, &orig.sin_addr, c->orig_ip, sizeof(c->orig_ip));
    snprintf(c->tunnel_host, sizeof(c->tunnel_host), "%s", c->orig_ip);
    c->tunnel_port = ntohs(orig.sin_port);
    if (upstream_is_self_literal(w->shared, c->orig_ip, c->tunnel_port)) {
        transparent_refuse(c, "denied", "self", "the destination is authproxy itself");
        return;
    }
    c->peek_deadline_us = monotonic_us() + (uint64_t)conn_limits(c)->header_timeout_ms * 1000;
    arm_timer(c, conn_limits(c)->header_timeout_ms);
    c->peek_ev = event_new(w->base, fd, EV_READ, transparent_peek_cb, c);
    c->repeek_timer = evtimer_new(w->base, transparent_repeek_cb, c);
    event_add(c->peek_ev, NULL);
}

void conn_accept_explicit(struct worker *w, int fd, const struct sockaddr *peer, int peer_len)
{
    (void)peer_len;
    struct conn *c = conn_new(w, fd, peer);
    /* The socket stays c's: after a CONNECT it moves to a TLS bufferevent. */
    if (!client_plain_bev(c, false))
        return;
    enter_read_head(c);
    if (!admit_connection(c, NULL)) {
        respond_and_close(c, 429, "too many connections from this address");
        return;
    }
    /* A fresh connection has the head timeout, not the idle one, to start its first request:
     * connections opened and left silent are not held for idle_timeout_ms. */
    const struct config_limits *lim = conn_limits(c);
    arm_timer(c, lim->header_timeout_ms < lim->idle_timeout_ms ? lim->header_timeout_ms
                                                                 : lim->idle_timeout_ms);
}
