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
 * Only for bufferevent_socket bufferevents: bufferevent_openssl owns its socket's I/O.
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
};

/* One per attached bufferevent, embedded in its owner; all zero means detached. */
struct outflush {
    struct bufferevent *bev;
    struct outflush_queue *q;
    struct evbuffer_cb_entry *cb;
    TAILQ_ENTRY(outflush) link;
    bool queued;
};

/* 0, or -1 if the event cannot be created (out of memory). */
int outflush_queue_init(struct outflush_queue *q, struct event_base *base);
/* Every entry must have been detached. A zeroed (never initialised) queue is fine. */
void outflush_queue_free(struct outflush_queue *q);

/* Attaches bev (a socket bufferevent with an empty output) to q through f, which must stay
 * at the same address until outflush_detach: disables bev's EV_WRITE and watches its output. */
void outflush_attach(struct outflush *f, struct outflush_queue *q, struct bufferevent *bev);
/* Stops watching (before the bufferevent is freed or handed to code that writes without
 * outflush); output still queued is left in the bufferevent, whose EV_WRITE is enabled again
 * so it is not stranded. Does nothing on a detached f. */
void outflush_detach(struct outflush *f);

#endif
