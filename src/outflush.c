#include "outflush.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h> /* ev_write of a TLS bufferevent: see outflush.h */
#include <event2/event.h>
#include <openssl/ssl.h>

/* The largest TLS record's plaintext: the most one SSL_write puts in one record. */
#define TLS_RECORD_PLAINTEXT_MAX 16384

/* Runs a TLS bufferevent's own write path now (see outflush.h). The first record's worth of
 * output is made one chain because libevent's TLS write path makes one SSL_write, so one
 * record and one write(2), of each chain; that is safe with a write pending retry, since
 * libevent sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER and the bytes keep their order. Before the
 * handshake has finished the write event is libevent's to drive. */
static void outflush_run_tls(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    size_t len = evbuffer_get_length(out);
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (len == 0 || !(bufferevent_get_enabled(bev) & EV_WRITE) || ssl == NULL ||
        !SSL_is_init_finished(ssl))
        return;
    evbuffer_pullup(out, len < TLS_RECORD_PLAINTEXT_MAX ? (ev_ssize_t)len : TLS_RECORD_PLAINTEXT_MAX);
    event_active(&bev->ev_write, EV_WRITE, 1);
}

/* Writes each queued output. What the socket does not take, or a failed write, is left to
 * libevent (EV_WRITE enabled: its write callback retries and reports errors through the event
 * callback); an output emptied here runs the write callback as libevent's would. */
static void outflush_run_cb(evutil_socket_t fd, short what, void *arg)
{
    struct outflush_queue *q = arg;
    (void)fd;
    (void)what;
    if (q->before_writes != NULL)
        q->before_writes(q->before_writes_arg);
    struct outflush *f;
    while ((f = TAILQ_FIRST(&q->pending)) != NULL) {
        TAILQ_REMOVE(&q->pending, f, link);
        f->queued = false;
        struct bufferevent *bev = f->bev;
        if (f->tls) {
            outflush_run_tls(bev);
            continue;
        }
        struct evbuffer *out = bufferevent_get_output(bev);
        if (evbuffer_get_length(out) == 0 || (bufferevent_get_enabled(bev) & EV_WRITE))
            continue; /* nothing left, or libevent is writing it */
        /* A socket bufferevent keeps its output's start frozen so that only its own write
         * path drains it; that path unfreezes around its write in the same way. */
        evbuffer_unfreeze(out, 1);
        int n = evbuffer_write(out, bufferevent_getfd(bev));
        evbuffer_freeze(out, 1);
        if (n < 0 || evbuffer_get_length(out) > 0) {
            bufferevent_enable(bev, EV_WRITE);
            continue;
        }
        /* Runs the write callback if the output is at or below its low-water mark (deferred:
         * the bufferevents are made with BEV_OPT_DEFER_CALLBACKS). */
        bufferevent_trigger(bev, EV_WRITE, 0);
    }
}

/* Output callback: data was added to an attached bufferevent's output. */
static void outflush_added_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct outflush *f = arg;
    (void)buf;
    if (info->n_added == 0 || f->queued)
        return;
    f->queued = true;
    TAILQ_INSERT_TAIL(&f->q->pending, f, link);
    outflush_queue_kick(f->q);
}

/* See outflush.h. */
int outflush_queue_init(struct outflush_queue *q, struct event_base *base)
{
    TAILQ_INIT(&q->pending);
    q->before_writes = NULL;
    q->before_writes_arg = NULL;
    q->ev = event_new(base, -1, 0, outflush_run_cb, q);
    return q->ev != NULL ? 0 : -1;
}

/* See outflush.h. */
void outflush_queue_kick(struct outflush_queue *q)
{
    event_active(q->ev, EV_TIMEOUT, 0);
}

/* See outflush.h. */
void outflush_queue_free(struct outflush_queue *q)
{
    if (q->ev != NULL)
        event_free(q->ev);
    q->ev = NULL;
}

/* Starts watching bev's output through f (zeroed first). */
static void outflush_watch(struct outflush *f, struct outflush_queue *q, struct bufferevent *bev,
                           bool tls)
{
    memset(f, 0, sizeof(*f));
    f->bev = bev;
    f->q = q;
    f->tls = tls;
    f->cb = evbuffer_add_cb(bufferevent_get_output(bev), outflush_added_cb, f);
    if (f->cb == NULL)
        abort(); /* out of memory: the documented policy (util.h) */
}

/* See outflush.h. */
void outflush_attach(struct outflush *f, struct outflush_queue *q, struct bufferevent *bev)
{
    bufferevent_disable(bev, EV_WRITE);
    outflush_watch(f, q, bev, false);
}

/* See outflush.h. */
void outflush_attach_tls(struct outflush *f, struct outflush_queue *q, struct bufferevent *bev)
{
    outflush_watch(f, q, bev, true);
}

/* See outflush.h. */
void outflush_detach(struct outflush *f)
{
    if (f->bev == NULL)
        return;
    if (f->queued)
        TAILQ_REMOVE(&f->q->pending, f, link);
    struct evbuffer *out = bufferevent_get_output(f->bev);
    evbuffer_remove_cb_entry(out, f->cb);
    if (!f->tls && evbuffer_get_length(out) > 0)
        bufferevent_enable(f->bev, EV_WRITE);
    memset(f, 0, sizeof(*f));
}
