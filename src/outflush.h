/* outflush: writes a plain socket's queued output once per event-loop turn, straight to the
 * socket, instead of through libevent's write event.
 *
 * Why: a socket bufferevent arms its write event (epoll_ctl) when data is queued and disarms
 * it (epoll_ctl) once the output has drained. On a proxied keep-alive exchange that is four
 * system calls per request — a third of the proxy's system calls on the plain HTTP path, and
 * system calls are most of its cost. An attached bufferevent keeps EV_WRITE disabled; an
 * output callback queues it on its worker's list when data is added, and one event (activated,
 * never polled) writes every queued output after the turn's callbacks have run, so a response
 * head and body added one after the other still leave in one writev.
 *
 * Whatever the socket does not take at once, and any write error, goes back to libevent: the
 * bufferevent's EV_WRITE is enabled and its own write path, write callback and error reporting
 * run exactly as without outflush. When outflush empties the output itself it runs the
 * bufferevent's write callback as libevent would (output at or below the low-water mark).
 * Code that enables EV_WRITE itself (closing after a flush, tunnels) keeps libevent's path.
 *
 * A TLS bufferevent (bufferevent_openssl) is attached with outflush_attach_tls. libevent writes
 * its output only once the socket reports writable: an epoll_ctl to arm the write event, a loop
 * turn, the write, an epoll_ctl to disarm it - and every evbuffer chain of the output becomes
 * a TLS record of its own, each its own write. Attached, the queued output's first record's
 * worth is made contiguous (head and small body leave as one record and one write) and the
 * bufferevent's write event is activated at the end of the turn, so its own write path runs at
 * once; with the worker's event base using epoll's changelist, the arm and disarm of the same
 * turn cancel and reach the kernel as nothing. What the socket does not take stays with
 * libevent as before. That needs the write event of the bufferevent, which only the
 * semi-public event2/bufferevent_struct.h exposes (libevent 2.1 has no call for "write now").
 *
 * Everything here runs in the one thread of the queue's event base. */
#ifndef AUTHPROXY_OUTFLUSH_H
#define AUTHPROXY_OUTFLUSH_H

#include <stdbool.h>
#include <sys/queue.h>

struct bufferevent;
struct event;
struct event_base;
struct evbuffer_cb_entry;

struct outflush;

/* One per event base (worker). */
struct outflush_queue {
    TAILQ_HEAD(outflush_list, outflush) pending;
    struct event *ev; /* activated when the first output is queued in a turn */
    /* Run first, before any queued output is written (NULL: nothing): what must be durable
     * before a client can see the turn's responses (the worker's audit lines). */
    void (*before_writes)(void *arg);
    void *before_writes_arg;
};

/* One per attached bufferevent, embedded in its owner; all zero means detached. */
struct outflush {
    struct bufferevent *bev;
    struct outflush_queue *q;
    struct evbuffer_cb_entry *cb;
    TAILQ_ENTRY(outflush) link;
    bool queued;
    bool tls; /* a bufferevent_openssl: its own write path is run, see above */
};

/* 0, or -1 if the event cannot be created (out of memory). */
int outflush_queue_init(struct outflush_queue *q, struct event_base *base);
/* Makes sure the queue runs at the end of this turn (for before_writes' sake) even if no
 * output is queued. */
void outflush_queue_kick(struct outflush_queue *q);
/* Every entry must have been detached. A zeroed (never initialised) queue is fine. */
void outflush_queue_free(struct outflush_queue *q);

/* Attaches bev (a socket bufferevent with an empty output) to q through f, which must stay
 * at the same address until outflush_detach: disables bev's EV_WRITE and watches its output. */
void outflush_attach(struct outflush *f, struct outflush_queue *q, struct bufferevent *bev);
/* Attaches bev, a bufferevent_openssl, through f (same lifetime rule): its EV_WRITE stays as
 * the caller sets it (libevent's TLS write path needs it enabled) and its output is written
 * by that path at the end of each turn data was added in, once the handshake is done. */
void outflush_attach_tls(struct outflush *f, struct outflush_queue *q, struct bufferevent *bev);
/* Stops watching (before the bufferevent is freed or handed to code that writes without
 * outflush); output still queued is left in the bufferevent, whose EV_WRITE is enabled again
 * so it is not stranded. Does nothing on a detached f. */
void outflush_detach(struct outflush *f);

#endif
