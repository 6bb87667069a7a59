/* worker: one thread, one event loop, one DNS base; owns the connections it accepted.
 *
 * Workers share nothing mutable with each other. What they share is read-only (struct
 * serve_shared) or an immutable snapshot handed over through worker_post_snapshot, the one
 * cross-thread entry point besides worker_stop. */
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

    pthread_mutex_t lock; /* guards pending and stop_requested */
    struct snapshot *pending;
    bool stop_requested;

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
void worker_join_and_free(struct worker *w);
/* Audits r (audit.h) with the turn's other records: written before the turn's responses go
 * out. The worker's thread only. */
void worker_audit(struct worker *w, const struct audit_record *r);

#endif
