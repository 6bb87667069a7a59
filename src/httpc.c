#include "httpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "glob.h"
#include "http1.h"
#include "upstream.h"
#include "util.h"

#define HTTPC_MAX_HEAD (16 * 1024)

struct httpc {
    struct worker *w;
    struct snapshot *snap; /* reference */
    char host[256];
    uint16_t port;
    bool tls;
    char *request; /* the serialised request; may hold credentials (zeroed on free) */
    size_t request_len;
    size_t request_len_cap; /* allocated size of request */
    size_t max_body;
    struct upstream_connect *connecting;
    struct upstream *up;
    struct event *timer;
    bool head_done;
    struct http1_response resp; /* valid while head_done; pointers into head (owned) */
    char *head;
    size_t head_len;
    struct http1_chunked chunked;
    httpc_done_cb cb;
    void *arg;
};

static void httpc_free(struct httpc *h)
{
    if (h->connecting)
        upstream_connect_cancel(h->connecting);
    if (h->up)
        upstream_free(h->up);
    if (h->timer)
        event_free(h->timer);
    if (h->request) {
        secure_zero(h->request, h->request_len_cap);
        free(h->request);
    }
    if (h->head) {
        secure_zero(h->head, h->head_len);
        free(h->head);
    }
    snapshot_unref(h->snap);
    free(h);
}

/* Calls back once and frees the exchange. */
static void httpc_finish(struct httpc *h, const struct httpc_response *resp, const char *error)
{
    httpc_done_cb cb = h->cb;
    h->cb = NULL;
    if (cb)
        cb(resp, error, h->arg);
    httpc_free(h);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes a chunked body in place. The bytes were accepted by http1_chunked_feed first, so the
 * framing is known to be valid; this only strips it. Returns the decoded length. */
static size_t chunked_decode(char *buf, size_t len)
{
    size_t in = 0, out = 0;
    while (in < len) {
        uint64_t size = 0;
        int d;
        while (in < len && (d = hex_digit(buf[in])) >= 0) {
            size = size * 16 + (uint64_t)d;
            in++;
        }
        while (in < len && buf[in] != '\n') /* chunk extensions, CR */
            in++;
        in++;
        if (size == 0 || in > len || size > len - in)
            break; /* the last chunk; trailers are not needed */
        memmove(buf + out, buf + in, (size_t)size);
        out += (size_t)size;
        in += (size_t)size + 2; /* data, CRLF */
    }
    return out;
}

/* The body is complete in body[0..len): decode and report. */
static void deliver(struct httpc *h, char *body, size_t len)
{
    if (h->resp.body_kind == HTTP1_BODY_CHUNKED)
        len = chunked_decode(body, len);
    body[len] = '\0';
    struct httpc_response r = {.status = h->resp.status, .body = body, .body_len = len};
    httpc_finish(h, &r, NULL);
}

/* Looks at what has arrived; finishes the exchange when the response is complete or broken.
 * eof: the server closed the connection. */
static void consume(struct httpc *h, bool eof)
{
    struct evbuffer *in = bufferevent_get_input(h->up->bev);
    if (!h->head_done) {
        size_t len = evbuffer_get_length(in);
        size_t take = len < HTTPC_MAX_HEAD + 1 ? len : HTTPC_MAX_HEAD + 1;
        h->head = xmalloc(take + 1);
        h->head_len = take;
        evbuffer_copyout(in, h->head, take);
        size_t head_len = 0;
        int rc =
            http1_parse_response(h->head, take, HTTPC_MAX_HEAD, "POST", 4, &h->resp, &head_len);
        if (rc == HTTP1_INCOMPLETE) {
            secure_zero(h->head, h->head_len);
            free(h->head);
            h->head = NULL;
            if (eof)
                httpc_finish(h, NULL, "connection closed before a complete response");
            return;
        }
        if (rc != HTTP1_OK) {
            httpc_finish(h, NULL, "malformed response");
            return;
        }
        if (h->resp.status < 200) {
            httpc_finish(h, NULL, "unexpected interim response");
            return;
        }
        h->head_done = true;
        evbuffer_drain(in, head_len);
        http1_chunked_init(&h->chunked);
    }
    size_t have = evbuffer_get_length(in);
    switch (h->resp.body_kind) {
    case HTTP1_BODY_NONE: {
        char empty[1];
        deliver(h, empty, 0);
        return;
    }
    case HTTP1_BODY_LENGTH:
        if (h->resp.content_length > h->max_body) {
            httpc_finish(h, NULL, "response body too large");
            return;
        }
        if (have < h->resp.content_length) {
            if (eof)
                httpc_finish(h, NULL, "connection closed inside the response body");
            return;
        }
        have = (size_t)h->resp.content_length;
        break;
    case HTTP1_BODY_UNTIL_CLOSE:
        if (have > h->max_body) {
            httpc_finish(h, NULL, "response body too large");
            return;
        }
        if (!eof)
            return;
        break;
    case HTTP1_BODY_CHUNKED: {
        /* Validate what is new; the whole framed body stays in the buffer until it ends. */
        if (have > h->max_body + HTTPC_MAX_HEAD) {
            httpc_finish(h, NULL, "response body too large");
            return;
        }
        struct http1_chunked probe;
        http1_chunked_init(&probe);
        const char *p = (const char *)evbuffer_pullup(in, -1);
        size_t used = 0;
        int rc = http1_chunked_feed(&probe, p, have, &used);
        if (rc == HTTP1_ERR_BAD) {
            httpc_finish(h, NULL, "malformed chunked response body");
            return;
        }
        if (rc == HTTP1_INCOMPLETE) {
            if (eof)
                httpc_finish(h, NULL, "connection closed inside the response body");
            return;
        }
        have = used;
        break;
    }
    }
    char *body = xmalloc(have + 1);
    evbuffer_remove(in, body, have);
    deliver(h, body, have);
    secure_zero(body, have + 1);
    free(body);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    consume(arg, false);
}

static void event_cb(struct bufferevent *bev, short events, void *arg)
{
    (void)bev;
    struct httpc *h = arg;
    if (events & BEV_EVENT_EOF)
        consume(h, true);
    else if (events & BEV_EVENT_ERROR)
        httpc_finish(h, NULL, "connection error");
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    httpc_finish(arg, NULL, "timed out");
}

static void connected_cb(struct upstream *u, enum upstream_error err, const char *reason, void *arg)
{
    struct httpc *h = arg;
    h->connecting = NULL;
    if (err != UPSTREAM_OK) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s", reason ? reason : "connection failed");
        httpc_finish(h, NULL, msg);
        return;
    }
    h->up = u;
    bufferevent_setcb(u->bev, read_cb, NULL, event_cb, h);
    /* By reference: no unzeroed copy of the request in libevent's buffers. The upstream (and its
     * buffers) is freed before h->request is (httpc_free). */
    evbuffer_add_reference(bufferevent_get_output(u->bev), h->request, h->request_len, NULL, NULL);
    bufferevent_enable(u->bev, EV_READ | EV_WRITE);
}

/* Appends s[0..n) to the request being built in h->request (capacity cap, grown by doubling;
 * the old copy is zeroed before it is freed, as it may hold credentials). */
static void request_append(struct httpc *h, size_t *cap, const char *s, size_t n)
{
    if (h->request_len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : 512;
        while (h->request_len + n + 1 > ncap)
            ncap *= 2;
        char *p = xmalloc(ncap);
        if (h->request) {
            memcpy(p, h->request, h->request_len);
            secure_zero(h->request, *cap);
            free(h->request);
        }
        h->request = p;
        *cap = ncap;
    }
    memcpy(h->request + h->request_len, s, n);
    h->request_len += n;
}

static void request_append_str(struct httpc *h, size_t *cap, const char *s)
{
    request_append(h, cap, s, strlen(s));
}

struct httpc *httpc_start(struct worker *w, struct snapshot *snap, const struct httpc_request *rq,
                          httpc_done_cb cb, void *arg)
{
    struct httpc *h = xcalloc(1, sizeof(*h));
    size_t cap = 0;
    const char *target;
    if (http1_parse_url(rq->url, &h->tls, h->host, sizeof(h->host), &h->port, &target) != 0)
        goto fail;
    /* The Host field is the authority as written in the URL. */
    const char *auth = rq->url + (h->tls ? 8 : 7);
    size_t auth_len = strcspn(auth, "/?");
    request_append_str(h, &cap, rq->method);
    request_append_str(h, &cap, " ");
    request_append_str(h, &cap, target);
    request_append_str(h, &cap, " HTTP/1.1\r\nHost: ");
    request_append(h, &cap, auth, auth_len);
    request_append_str(h, &cap, "\r\n");
    for (size_t i = 0; i < rq->n_headers; i++) {
        struct http1_header_override o = {rq->headers[i].name, rq->headers[i].value};
        if (!http1_override_valid(&o))
            goto fail;
        request_append_str(h, &cap, o.name);
        request_append_str(h, &cap, ": ");
        request_append_str(h, &cap, o.value);
        request_append_str(h, &cap, "\r\n");
    }
    char tail[96];
    snprintf(tail, sizeof(tail), "Content-Length: %zu\r\nConnection: close\r\n\r\n", rq->body_len);
    request_append_str(h, &cap, tail);
    request_append(h, &cap, rq->body, rq->body_len);
    h->request_len_cap = cap;

    h->w = w;
    h->snap = snapshot_ref(snap);
    h->max_body = rq->max_body;
    h->cb = cb;
    h->arg = arg;
    h->timer = evtimer_new(w->base, timeout_cb, h);
    struct timeval tv = {.tv_sec = rq->timeout_ms / 1000,
                         .tv_usec = (rq->timeout_ms % 1000) * 1000};
    evtimer_add(h->timer, &tv);
    /* Callback and token URLs come from the config, not from a sandbox: they may be internal. */
    h->connecting =
        upstream_connect_start(w, snap, h->host, h->port, h->tls, true, connected_cb, h);
    return h;
fail:
    if (h->request) {
        secure_zero(h->request, cap);
        free(h->request);
    }
    free(h);
    return NULL;
}

void httpc_cancel(struct httpc *h)
{
    if (h == NULL)
        return;
    h->cb = NULL;
    httpc_free(h);
}
