#include "worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "conn.h"
#include "dyncred.h"
#include "dns_server.h"
#include "log.h"
#include "upstream.h"
#include "util.h"

/* How long in-flight requests may run after a stop request before they are cut off. */
#define SHUTDOWN_GRACE_SECONDS 10

/* A connection accepted by one worker for another to serve (worker.h: connection balance). */
struct handoff {
    struct handoff *next;
    int fd;
    bool transparent;
    socklen_t peer_len;
    struct sockaddr_storage peer;
};

/* The worker a connection just accepted by self goes to: the one with the fewest live
 * connections, self on a tie (no hand-off without a gain). Counts the connection on it at once,
 * so the rest of a burst accepted in the same turn sees it. Any thread. */
static struct worker *balance_pick(struct worker *self)
{
    const struct serve_shared *sh = self->shared;
    struct worker *best = self;
    unsigned best_load = atomic_load(&self->load);
    for (size_t i = 0; i < sh->n_workers && best_load > 0; i++) {
        struct worker *peer = sh->workers[i];
        if (peer == NULL || peer == self || !atomic_load(&peer->accepting))
            continue;
        unsigned load = atomic_load(&peer->load);
        if (load < best_load) {
            best = peer;
            best_load = load;
        }
    }
    atomic_fetch_add(&best->load, 1);
    return best;
}

void worker_connection_gone(struct worker *w)
{
    atomic_fetch_sub(&w->load, 1);
}

/* Closes a connection that was counted on w but will never be served. */
static void handoff_drop(struct worker *w, int fd)
{
    close(fd);
    worker_connection_gone(w);
}

/* Queues fd (counted on `to` by balance_pick) for `to` and wakes it; closes it instead when
 * `to` is stopping. Runs on the accepting worker's thread. */
static void handoff_post(struct worker *to, int fd, bool transparent, const struct sockaddr *peer,
                         int peer_len)
{
    struct handoff *h = xcalloc(1, sizeof(*h));
    h->fd = fd;
    h->transparent = transparent;
    h->peer_len = (socklen_t)peer_len < sizeof(h->peer) ? (socklen_t)peer_len : sizeof(h->peer);
    memcpy(&h->peer, peer, h->peer_len);
    pthread_mutex_lock(&to->lock);
    bool stopping = to->stop_requested;
    if (!stopping) {
        *to->handoffs_tail = h;
        to->handoffs_tail = &h->next;
    }
    pthread_mutex_unlock(&to->lock);
    if (stopping) {
        handoff_drop(to, fd);
        free(h);
        return;
    }
    event_active(to->handoff_ev, EV_READ, 0);
}

/* Takes the whole hand-off queue (the caller owns the list). */
static struct handoff *handoff_take_all(struct worker *w)
{
    pthread_mutex_lock(&w->lock);
    struct handoff *list = w->handoffs;
    w->handoffs = NULL;
    w->handoffs_tail = &w->handoffs;
    pthread_mutex_unlock(&w->lock);
    return list;
}

/* Runs in w's thread after a peer queued connections for it: serves them as if w had accepted
 * them, or closes them once w drains. */
static void handoff_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    struct handoff *h = handoff_take_all(w);
    while (h != NULL) {
        struct handoff *next = h->next;
        if (w->draining)
            handoff_drop(w, h->fd);
        else if (h->transparent)
            conn_accept_transparent(w, h->fd, (struct sockaddr *)&h->peer, (int)h->peer_len);
        else
            conn_accept_explicit(w, h->fd, (struct sockaddr *)&h->peer, (int)h->peer_len);
        free(h);
        h = next;
    }
}

/* Both listeners' accept: serve here or hand to a less loaded worker. */
static void accept_balanced(struct worker *w, int fd, bool transparent, struct sockaddr *addr,
                            int len)
{
    struct worker *to = balance_pick(w);
    if (to != w)
        handoff_post(to, fd, transparent, addr, len);
    else if (transparent)
        conn_accept_transparent(w, fd, addr, len);
    else
        conn_accept_explicit(w, fd, addr, len);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr, int len,
                      void *arg)
{
    (void)l;
    accept_balanced(arg, fd, false, addr, len);
}

/* How long the listeners rest after running out of descriptors or memory, and how often that
 * is logged at most. */
#define ACCEPT_PAUSE_MS    100
#define ACCEPT_WARN_EVERY_US (10u * 1000000u)

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    if (w->draining)
        return;
    if (w->proxy_listener)
        evconnlistener_enable(w->proxy_listener);
    if (w->transparent_listener)
        evconnlistener_enable(w->transparent_listener);
}

/* accept() failed. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the
 * listening socket stays readable: retrying at once would spin on accept() and flood the log,
 * so the listeners rest for ACCEPT_PAUSE_MS (connections wait in the kernel's backlog) and the
 * condition is logged at most every ACCEPT_WARN_EVERY_US. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct worker *w = arg;
    (void)l;
    int err = EVUTIL_SOCKET_ERROR();
    uint64_t now = monotonic_us();
    if (w->accept_warned_us == 0 || now - w->accept_warned_us >= ACCEPT_WARN_EVERY_US) {
        w->accept_warned_us = now;
        log_warn("worker %d: accept failed: %s%s", w->index, evutil_socket_error_to_string(err),
                 err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM
                     ? " (pausing accepts briefly; repeats are not logged for 10 s)"
                     : "");
    }
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
        return;
    if (w->proxy_listener)
        evconnlistener_disable(w->proxy_listener);
    if (w->transparent_listener)
        evconnlistener_disable(w->transparent_listener);
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    evtimer_add(w->accept_resume, &tv);
}

static void grace_over_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    struct conn *c;
    while ((c = LIST_FIRST(&w->conns)) != NULL)
        conn_abort(c);
    event_base_loopbreak(w->base);
}

/* Runs in the worker thread when another thread activated w->wakeup. */
static void wakeup_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&w->lock);
    struct snapshot *next = w->pending;
    w->pending = NULL;
    bool stop = w->stop_requested;
    pthread_mutex_unlock(&w->lock);

    if (next != NULL) {
        struct snapshot *old = w->current;
        w->current = next;
        /* Pooled connections were verified under the old trust settings and may point at an
         * old dns_remap target: start afresh when those changed (a new base, SIGHUP). A new
         * registry alone (control-plane writes) changes neither, so the pool stays warm. */
        if (next->base != old->base)
            upstream_pool_flush(w);
        snapshot_unref(old);
        atomic_store(&w->applied_version, next->version);
    }
    if (stop && !w->draining) {
        w->draining = true;
        if (w->proxy_listener) {
            evconnlistener_free(w->proxy_listener);
            w->proxy_listener = NULL;
        }
        if (w->transparent_listener) {
            evconnlistener_free(w->transparent_listener);
            w->transparent_listener = NULL;
        }
        upstream_pool_flush(w);
        dns_server_free(w->dns_server);
        w->dns_server = NULL;
        conn_close_idle(w);
        if (w->n_conns == 0) {
            event_base_loopbreak(w->base);
        } else {
            struct timeval tv = {.tv_sec = SHUTDOWN_GRACE_SECONDS, .tv_usec = 0};
            event_base_once(w->base, -1, EV_TIMEOUT, grace_over_cb, w, &tv);
        }
    }
}

static void accept_transparent_cb(struct evconnlistener *l, evutil_socket_t fd,
                                  struct sockaddr *addr, int len, void *arg)
{
    (void)l;
    accept_balanced(arg, fd, true, addr, len);
}

/* outflush's before_writes: the turn's audit lines go to the file before its responses go out. */
static void worker_flush_audit(void *arg)
{
    struct worker *w = arg;
    audit_batch_flush(&w->audit);
}

/* See worker.h. */
void worker_audit(struct worker *w, const struct audit_record *r)
{
    if (audit_batch_add(&w->audit, r))
        outflush_queue_kick(&w->outflush);
}

struct worker *worker_new(int index, const struct serve_shared *shared, int proxy_fd,
                          int transparent_fd, struct snapshot *snap, char *err, size_t err_len)
{
    struct worker *w = xcalloc(1, sizeof(*w));
    w->index = index;
    w->shared = shared;
    pthread_mutex_init(&w->lock, NULL);
    metrics_init(&w->metrics);
    LIST_INIT(&w->conns);
    TAILQ_INIT(&w->idle_upstreams);
    LIST_INIT(&w->fetches);
    w->handoffs_tail = &w->handoffs;
    atomic_init(&w->load, 0);
    atomic_init(&w->accepting, true);
    w->current = snapshot_ref(snap);
    atomic_init(&w->applied_version, snap->version);

    /* epoll's changelist: event additions and removals are applied once per turn, so a write
     * event armed and disarmed in the same turn (outflush.h: TLS output) costs no system call.
     * Safe here: the daemon never dup()s a socket it polls, the case libevent warns about. */
    struct event_config *cfg = event_config_new();
    if (cfg != NULL && event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
        w->base = event_base_new_with_config(cfg);
    if (cfg != NULL)
        event_config_free(cfg);
    /* Two priorities: a new snapshot (the wakeup, priority 0) is taken before any queued I/O
     * callback, so a control-plane write is not held up by a busy loop. */
    if (w->base == NULL || event_base_priority_init(w->base, 2) != 0) {
        snprintf(err, err_len, "cannot create event base");
        goto fail;
    }
    /* Resolver: the configured one, else /etc/resolv.conf. /etc/hosts is honoured either way. */
    int dns_flags = shared->upstream_dns ? 0 : EVDNS_BASE_INITIALIZE_NAMESERVERS;
    w->dns = evdns_base_new(w->base, dns_flags | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (w->dns == NULL) {
        snprintf(err, err_len, "cannot create DNS resolver");
        goto fail;
    }
    if (shared->upstream_dns && evdns_base_nameserver_ip_add(w->dns, shared->upstream_dns) != 0) {
        snprintf(err, err_len, "invalid --upstream-dns address '%s'", shared->upstream_dns);
        goto fail;
    }
    evdns_base_load_hosts(w->dns, NULL);
    evdns_base_set_option(w->dns, "timeout:", "3");
    evdns_base_set_option(w->dns, "attempts:", "2");
    if (outflush_queue_init(&w->outflush, w->base) != 0) {
        snprintf(err, err_len, "cannot create the output flush event");
        goto fail;
    }
    if (tls_readahead_queue_init(&w->readahead, w->base) != 0) {
        snprintf(err, err_len, "cannot create the TLS read-ahead event");
        goto fail;
    }
    audit_batch_init(&w->audit, shared->audit);
    w->outflush.before_writes = worker_flush_audit;
    w->outflush.before_writes_arg = w;
    w->wakeup = event_new(w->base, -1, EV_PERSIST, wakeup_cb, w);
    event_priority_set(w->wakeup, 0);
    event_add(w->wakeup, NULL);
    w->handoff_ev = event_new(w->base, -1, EV_PERSIST, handoff_cb, w);
    event_add(w->handoff_ev, NULL);
    /* Backlog 0 above: the sockets already listen (serve.c, with its backlog); -1 would make
     * libevent listen() again with 128. */
    w->accept_resume = evtimer_new(w->base, accept_resume_cb, w);
    if (proxy_fd != -1) {
        w->proxy_listener =
            evconnlistener_new(w->base, accept_cb, w, LEV_OPT_CLOSE_ON_EXEC, 0, proxy_fd);
        if (w->proxy_listener == NULL) {
            snprintf(err, err_len, "cannot listen on the proxy socket");
            goto fail;
        }
        evconnlistener_set_error_cb(w->proxy_listener, accept_error_cb);
    }
    if (transparent_fd != -1) {
        w->transparent_listener = evconnlistener_new(w->base, accept_transparent_cb, w,
                                                     LEV_OPT_CLOSE_ON_EXEC, 0, transparent_fd);
        if (w->transparent_listener == NULL) {
            snprintf(err, err_len, "cannot listen on the transparent socket");
            goto fail;
        }
        evconnlistener_set_error_cb(w->transparent_listener, accept_error_cb);
    }
    return w;
fail:
    worker_join_and_free(w);
    return NULL;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main thread's business */
    event_base_dispatch(w->base);
    return NULL;
}

int worker_start(struct worker *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

void worker_post_snapshot(struct worker *w, struct snapshot *snap)
{
    pthread_mutex_lock(&w->lock);
    if (w->pending)
        snapshot_unref(w->pending);
    w->pending = snapshot_ref(snap);
    pthread_mutex_unlock(&w->lock);
    event_active(w->wakeup, EV_READ, 0);
}

void worker_stop(struct worker *w)
{
    atomic_store(&w->accepting, false);
    pthread_mutex_lock(&w->lock);
    w->stop_requested = true;
    pthread_mutex_unlock(&w->lock);
    event_active(w->wakeup, EV_READ, 0);
}

void worker_join(struct worker *w)
{
    if (w != NULL && w->thread) {
        pthread_join(w->thread, NULL);
        w->thread = 0;
    }
}

void worker_join_and_free(struct worker *w)
{
    if (w == NULL)
        return;
    worker_join(w);
    /* Connections peers handed over that the loop never took (every peer is joined by now). */
    for (struct handoff *h = handoff_take_all(w), *next; h != NULL; h = next) {
        next = h->next;
        handoff_drop(w, h->fd);
        free(h);
    }
    if (w->handoff_ev)
        event_free(w->handoff_ev);
    w->handoff_ev = NULL;
    struct conn *c;
    while ((c = LIST_FIRST(&w->conns)) != NULL)
        conn_abort(c);
    dyncred_worker_shutdown(w); /* after the conns: none of ours waits on them any more */
    upstream_pool_flush(w);
    dns_server_free(w->dns_server); /* before its evdns base goes */
    w->dns_server = NULL;
    /* A bufferevent freed while one of its deferred callbacks is queued is released only when
     * the loop runs that callback: give the loop one last non-blocking turn (the thread is
     * gone, so this thread may drive the base). */
    if (w->base)
        event_base_loop(w->base, EVLOOP_NONBLOCK);
    if (w->proxy_listener)
        evconnlistener_free(w->proxy_listener);
    if (w->transparent_listener)
        evconnlistener_free(w->transparent_listener);
    if (w->wakeup)
        event_free(w->wakeup);
    if (w->accept_resume)
        event_free(w->accept_resume);
    outflush_queue_free(&w->outflush); /* every conn and upstream is gone: none is queued */
    tls_readahead_queue_free(&w->readahead);
    audit_batch_free(&w->audit);       /* the last turn's records, if its flush never ran */
    if (w->dns)
        evdns_base_free(w->dns, 1);
    if (w->base)
        event_base_free(w->base);
    snapshot_unref(w->pending);
    snapshot_unref(w->current);
    pthread_mutex_destroy(&w->lock);
    metrics_destroy(&w->metrics);
    free(w);
}
