/* worker: one thread, one event loop, one DNS base; owns the connections it serves.
 *
 * Workers share nothing mutable with each other but connection hand-offs. What they share is
 * read-only (struct serve_shared) or an immutable snapshot handed over through
 * worker_post_snapshot; the cross-thread entry points are that, worker_stop, and the accept
 * path's hand-off below.
 *
 * Connection balance: every worker polls the same listening sockets, and whichever wakes first
 * accepts everything queued, so a burst of connections (a client's pool opening, a load
 * generator, a sandbox starting its work) would all land on one worker and stay there for
 * their keep-alive life. Each accepted connection therefore goes to the accepting worker
 * only if no other has fewer live connections; otherwise it is handed to the least loaded one
 * (a queue under its lock and a wake-up), which serves it from then on. */
#ifndef AUTHPROXY_WORKER_H
#define AUTHPROXY_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/queue.h>

#include "metrics.h"
#include "audit.h"
#include "outflush.h"
#include "tls_readahead.h"
#include "snapshot.h"

struct event_base;
struct evdns_base;
struct event;
struct evconnlistener;
struct conn;
struct upstream;
struct dyncred_fetch;
struct handoff;

/* State every worker reads and nobody writes after serve has started them. */
struct serve_shared {
    struct tls_mitm *mitm;
    struct audit_log *audit;
    const char *upstream_dns; /* "ip:port" of the resolver for upstream names, or NULL */
    /* authproxy's own listeners (control API, proxy): never a destination, whatever name or
     * address a sandbox uses to reach them. */
    struct sockaddr_storage self[4];
    size_t n_self;
    /* Dynamic credentials (dyncred): the cache all workers share, the keys that sign callback
     * requests, and the "iss" of those signatures (the control API's origin). */
    struct credcache *credcache;
    struct signkeys *signkeys;
    struct sandbox_limits *limits; /* per-sandbox connection and request-rate counters */
    const char *callback_issuer;
    /* Transparent listener: is this peer address one of our sandboxes? NULL: none are. */
    bool (*is_sandbox_peer)(void *ctx, struct in_addr addr);
    void *sandbox_ctx;
    /* Every worker, for connection balance: the array is set before any worker starts and not
     * changed after (the workers it points to are, of course, live). */
    struct worker *const *workers;
    size_t n_workers;
};

LIST_HEAD(conn_list, conn);
TAILQ_HEAD(upstream_list, upstream);
LIST_HEAD(dyncred_fetch_list, dyncred_fetch);

struct worker {
    int index;
    const struct serve_shared *shared;
    pthread_t thread;
    struct event_base *base;
    struct evdns_base *dns;
    struct evconnlistener *proxy_listener;
    struct evconnlistener *transparent_listener;
    struct dns_server *dns_server; /* the sandboxes' resolver, on worker 0 only; owned */
    struct event *wakeup;          /* activated from other threads: new snapshot, stop */
    struct event *accept_resume;   /* re-enables the listeners after an accept pause */
    uint64_t accept_warned_us;     /* last "accept failed" warning (rate limit) */

    pthread_mutex_t lock; /* guards pending, stop_requested and the hand-off queue */
    struct snapshot *pending;
    bool stop_requested;
    struct handoff *handoffs, **handoffs_tail; /* accepted by a peer, to be served here */
    struct event *handoff_ev;                  /* activated by a peer that queued one */
    /* Live client connections assigned to this worker (counted from the moment a peer or the
     * worker itself picks it, until the connection closes); read by every accepting worker. */
    atomic_uint load;
    atomic_bool accepting; /* cleared by worker_stop: peers hand this worker nothing more */

    /* Below: touched only by the worker's own thread. */
    struct snapshot *current; /* one reference */
    struct conn_list conns;   /* every live client connection */
    size_t n_conns;
    struct upstream_list idle_upstreams; /* pool of reusable upstream connections, LRU first */
    size_t n_idle_upstreams;
    bool draining; /* stop accepting; close connections as they go idle */
    struct dyncred_fetch_list fetches; /* credential exchanges this worker runs for everyone */
    struct outflush_queue outflush;    /* sockets' output written once per turn */
    struct tls_readahead_queue readahead; /* TLS input OpenSSL read ahead, resumed per turn */
    struct audit_batch audit;          /* this turn's audit lines, written before that output */

    atomic_uint_fast64_t applied_version; /* the snapshot version now in use (any thread reads) */
    struct metrics metrics;               /* written by this worker, read by /metrics scrapes */
};

/* Creates the worker's event base, DNS base and listeners on the shared listening sockets
 * proxy_fd and transparent_fd (not owned; -1: none), and takes one reference to snap. Does not
 * start the thread. */
struct worker *worker_new(int index, const struct serve_shared *shared, int proxy_fd,
                          int transparent_fd, struct snapshot *snap, char *err, size_t err_len);
int worker_start(struct worker *w);
/* Hands snap to the worker (takes a reference). Thread-safe. */
void worker_post_snapshot(struct worker *w, struct snapshot *snap);
/* Asks the worker to stop accepting, finish in-flight requests (at most grace_ms) and exit. */
void worker_stop(struct worker *w);
/* Waits for the worker's thread to exit (no-op if it never started or was joined). Stop and join
 * every worker before freeing any: a running peer may still hand one a connection. */
void worker_join(struct worker *w);
void worker_join_and_free(struct worker *w);
/* A connection of w's closed (conn.c): one less for the balance. */
void worker_connection_gone(struct worker *w);
/* Audits r (audit.h) with the turn's other records: written before the turn's responses go
 * out. The worker's thread only. */
void worker_audit(struct worker *w, const struct audit_record *r);

#endif
