/* tls_readahead: TLS read-ahead on bufferevent_openssl connections, made safe.
 *
 * Why: without read-ahead OpenSSL reads every TLS record in two read(2) calls, its 5-byte
 * header and then its body; with it, one read takes whatever the socket holds. On the
 * intercepted HTTPS path that is two of the six system calls per proxied request, and system
 * calls are most of the proxy's cost on this kind of machine (docs/BENCHMARKS.md).
 *
 * What makes it unsafe alone: libevent 2.1's bufferevent_openssl reads until SSL_pending() is
 * zero and then waits for the socket. SSL_pending counts only the record being consumed; with
 * read-ahead, whole further records can sit in OpenSSL's buffer while the socket is empty, so
 * the connection would wait for bytes that have already arrived: a pipelined request, the body
 * record an origin sent right behind its head record, a request that came in the same segment
 * as the client's handshake Finished. libevent also only re-arms the socket event when reading
 * is enabled again.
 *
 * So an attached connection is checked at the end of every turn that could have left records
 * behind — its input received data, or its owner enabled reading (tls_readahead_recheck) —
 * and if OpenSSL still holds input (SSL_has_pending) while reading is enabled, the
 * bufferevent's own read event is activated: libevent's read path runs again and takes the
 * next record from memory. A partial record also counts as pending; its kick costs one read(2)
 * that the socket answers (the rest of the record) or refuses (EAGAIN, no data added, so no
 * further kick: the socket event is armed and fires when the rest arrives). Activating the
 * read event needs the semi-public event2/bufferevent_struct.h, as outflush does for writes.
 *
 * The owner's contract: call tls_readahead_recheck after every bufferevent_enable(EV_READ) of
 * an attached bufferevent (including the one after the handshake). A read high-water mark is
 * honoured (no kick while the input is at or above it), but libevent resumes reading by itself
 * when the input drains below the mark, without a recheck: an owner that sets one must recheck
 * after draining. authproxy sets none on these connections.
 *
 * Everything here runs in the one thread of the queue's event base. */
#ifndef AUTHPROXY_TLS_READAHEAD_H
#define AUTHPROXY_TLS_READAHEAD_H

#include <stdbool.h>
#include <sys/queue.h>

struct bufferevent;
struct event;
struct event_base;
struct evbuffer_cb_entry;

struct tls_readahead;

/* One per event base (worker). */
struct tls_readahead_queue {
    TAILQ_HEAD(tls_readahead_list, tls_readahead) pending;
    struct event *ev; /* activated when the first connection is queued in a turn */
};

/* One per attached bufferevent, embedded in its owner; all zero means detached. */
struct tls_readahead {
    struct bufferevent *bev;
    struct tls_readahead_queue *q;
    struct evbuffer_cb_entry *cb;
    TAILQ_ENTRY(tls_readahead) link;
    bool queued;
};

/* 0, or -1 if the event cannot be created (out of memory). */
int tls_readahead_queue_init(struct tls_readahead_queue *q, struct event_base *base);
/* Every entry must have been detached. A zeroed (never initialised) queue is fine. */
void tls_readahead_queue_free(struct tls_readahead_queue *q);

/* Turns read-ahead on for bev's SSL (bev is a bufferevent_openssl on a socket) and watches its
 * input through r, which must stay at the same address until tls_readahead_detach. May be
 * called before or after the handshake. */
void tls_readahead_attach(struct tls_readahead *r, struct tls_readahead_queue *q,
                          struct bufferevent *bev);
/* The owner enabled reading: check at the end of this turn. Does nothing on a detached r. */
void tls_readahead_recheck(struct tls_readahead *r);
/* Stops watching (before the bufferevent is freed). Does nothing on a detached r. */
void tls_readahead_detach(struct tls_readahead *r);

#endif
