#include "tls_readahead.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h> /* ev_read of a TLS bufferevent: see tls_readahead.h */
#include <event2/event.h>
#include <openssl/ssl.h>

/* True when libevent's read path would read now if run: reading enabled and not held back by
 * a read high-water mark. */
static bool reading_wanted(struct bufferevent *bev)
{
    if (!(bufferevent_get_enabled(bev) & EV_READ))
        return false;
    size_t low = 0, high = 0;
    bufferevent_getwatermark(bev, EV_READ, &low, &high);
    return high == 0 || evbuffer_get_length(bufferevent_get_input(bev)) < high;
}

/* End of the turn: runs the read path of each queued connection whose SSL still holds input.
 * Before the handshake has finished libevent's handshake path reads everything it needs. */
static void tls_readahead_run_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tls_readahead_queue *q = arg;
    (void)fd;
    (void)what;
    struct tls_readahead *r;
    while ((r = TAILQ_FIRST(&q->pending)) != NULL) {
        TAILQ_REMOVE(&q->pending, r, link);
        r->queued = false;
        SSL *ssl = bufferevent_openssl_get_ssl(r->bev);
        if (ssl != NULL && SSL_is_init_finished(ssl) && SSL_has_pending(ssl) &&
            reading_wanted(r->bev))
            event_active(&r->bev->ev_read, EV_READ, 1);
    }
}

/* Queues r for the end-of-turn check. */
static void tls_readahead_queue_entry(struct tls_readahead *r)
{
    if (r->queued)
        return;
    r->queued = true;
    TAILQ_INSERT_TAIL(&r->q->pending, r, link);
    event_active(r->q->ev, EV_TIMEOUT, 0);
}

/* Input callback: the read path added data, so it may have stopped with records left. */
static void tls_readahead_input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info,
                                   void *arg)
{
    (void)buf;
    if (info->n_added > 0)
        tls_readahead_queue_entry(arg);
}

/* See tls_readahead.h. */
int tls_readahead_queue_init(struct tls_readahead_queue *q, struct event_base *base)
{
    TAILQ_INIT(&q->pending);
    q->ev = event_new(base, -1, 0, tls_readahead_run_cb, q);
    return q->ev != NULL ? 0 : -1;
}

/* See tls_readahead.h. */
void tls_readahead_queue_free(struct tls_readahead_queue *q)
{
    if (q->ev != NULL)
        event_free(q->ev);
    q->ev = NULL;
}

/* See tls_readahead.h. */
void tls_readahead_attach(struct tls_readahead *r, struct tls_readahead_queue *q,
                          struct bufferevent *bev)
{
    memset(r, 0, sizeof(*r));
    r->bev = bev;
    r->q = q;
    SSL_set_read_ahead(bufferevent_openssl_get_ssl(bev), 1);
    r->cb = evbuffer_add_cb(bufferevent_get_input(bev), tls_readahead_input_cb, r);
    if (r->cb == NULL)
        abort(); /* out of memory: the documented policy (util.h) */
}

/* See tls_readahead.h. */
void tls_readahead_recheck(struct tls_readahead *r)
{
    if (r->bev != NULL)
        tls_readahead_queue_entry(r);
}

/* See tls_readahead.h. */
void tls_readahead_detach(struct tls_readahead *r)
{
    if (r->bev == NULL)
        return;
    if (r->queued)
        TAILQ_REMOVE(&r->q->pending, r, link);
    evbuffer_remove_cb_entry(bufferevent_get_input(r->bev), r->cb);
    memset(r, 0, sizeof(*r));
}
