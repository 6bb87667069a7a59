#include "credcache.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "util.h"

struct entry {
    struct entry *next; /* bucket chain */
    uint8_t key[CREDCACHE_KEY_LEN];
    struct cred_headers *h; /* reference */
    uint64_t expires_us;
};

TAILQ_HEAD(waiter_list, credcache_waiter);

struct flight {
    LIST_ENTRY(flight) link;
    uint8_t key[CREDCACHE_KEY_LEN];
    struct waiter_list waiters;
};

struct credcache_waiter {
    TAILQ_ENTRY(credcache_waiter) link;
    struct credcache *cc;
    struct flight *flight; /* under cc->lock: the flight waited on, NULL once it has ended */
    struct event *ev;      /* in the waiter's base: activated when the flight ends */
    struct cred_headers *result;
    credcache_cb cb;
    void *arg;
};

struct credcache {
    pthread_mutex_t lock; /* guards everything below */
    struct entry **buckets;
    size_t n_buckets;
    size_t n;
    size_t max;
    LIST_HEAD(, flight) flights;
};

struct cred_headers *cred_headers_new(size_t n)
{
    struct cred_headers *c = xcalloc(1, sizeof(*c));
    atomic_init(&c->refs, 1);
    c->n = n;
    c->h = xcalloc(n ? n : 1, sizeof(*c->h));
    return c;
}

struct cred_headers *cred_headers_ref(struct cred_headers *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void cred_headers_unref(struct cred_headers *c)
{
    if (c == NULL || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < c->n; i++) {
        secret_free(c->h[i].name);
        secret_free(c->h[i].value);
    }
    free(c->h);
    free(c);
}

static size_t bucket_of(const struct credcache *cc, const uint8_t key[CREDCACHE_KEY_LEN])
{
    uint64_t v; /* keys are digests: any 8 bytes are well spread */
    memcpy(&v, key, sizeof(v));
    return (size_t)(v % cc->n_buckets);
}

struct credcache *credcache_new(size_t max_entries)
{
    struct credcache *cc = xcalloc(1, sizeof(*cc));
    pthread_mutex_init(&cc->lock, NULL);
    cc->max = max_entries ? max_entries : 1;
    cc->n_buckets = cc->max < 64 ? 64 : cc->max;
    cc->buckets = xcalloc(cc->n_buckets, sizeof(*cc->buckets));
    LIST_INIT(&cc->flights);
    return cc;
}

void credcache_free(struct credcache *cc)
{
    if (cc == NULL)
        return;
    for (size_t i = 0; i < cc->n_buckets; i++) {
        struct entry *e = cc->buckets[i];
        while (e) {
            struct entry *next = e->next;
            cred_headers_unref(e->h);
            free(e);
            e = next;
        }
    }
    free(cc->buckets);
    pthread_mutex_destroy(&cc->lock);
    free(cc);
}

/* Unlinks and frees *pe (cc->lock held). */
static void entry_remove(struct credcache *cc, struct entry **pe)
{
    struct entry *e = *pe;
    *pe = e->next;
    cred_headers_unref(e->h);
    free(e);
    cc->n--;
}

/* Makes room for one entry (cc->lock held): drops expired entries, then, if still full, the one
 * that expires first. O(entries), but only on inserts into a full cache. */
static void make_room(struct credcache *cc, uint64_t now_us)
{
    if (cc->n < cc->max)
        return;
    struct entry **soonest = NULL;
    for (size_t i = 0; i < cc->n_buckets; i++) {
        struct entry **pe = &cc->buckets[i];
        while (*pe) {
            if ((*pe)->expires_us <= now_us) {
                entry_remove(cc, pe);
                continue;
            }
            if (soonest == NULL || (*pe)->expires_us < (*soonest)->expires_us)
                soonest = pe;
            pe = &(*pe)->next;
        }
    }
    if (cc->n >= cc->max && soonest != NULL)
        entry_remove(cc, soonest);
}

static void waiter_fire_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct credcache_waiter *w = arg;
    /* The flight has ended (it activated us after detaching us under the lock): nothing else
     * touches w any more. */
    credcache_cb cb = w->cb;
    struct cred_headers *h = w->result;
    void *cb_arg = w->arg;
    event_free(w->ev);
    free(w);
    cb(h, cb_arg);
}

enum credcache_result credcache_lookup(struct credcache *cc, const uint8_t key[CREDCACHE_KEY_LEN],
                                       uint64_t now_us, struct event_base *base, credcache_cb cb,
                                       void *arg, struct cred_headers **hit,
                                       struct credcache_waiter **waiter)
{
    enum credcache_result res;
    *hit = NULL;
    *waiter = NULL;
    pthread_mutex_lock(&cc->lock);
    struct entry **pe = &cc->buckets[bucket_of(cc, key)];
    while (*pe) {
        if (memcmp((*pe)->key, key, CREDCACHE_KEY_LEN) == 0) {
            if ((*pe)->expires_us > now_us) {
                *hit = cred_headers_ref((*pe)->h);
                res = CREDCACHE_HIT;
                goto out;
            }
            entry_remove(cc, pe); /* expired: fetch again */
            break;
        }
        pe = &(*pe)->next;
    }
    struct flight *f;
    LIST_FOREACH(f, &cc->flights, link)
    if (memcmp(f->key, key, CREDCACHE_KEY_LEN) == 0)
        break;
    res = CREDCACHE_WAIT;
    if (f == NULL) {
        f = xcalloc(1, sizeof(*f));
        memcpy(f->key, key, CREDCACHE_KEY_LEN);
        TAILQ_INIT(&f->waiters);
        LIST_INSERT_HEAD(&cc->flights, f, link);
        res = CREDCACHE_LEAD;
    }
    struct credcache_waiter *w = xcalloc(1, sizeof(*w));
    w->cc = cc;
    w->flight = f;
    w->cb = cb;
    w->arg = arg;
    w->ev = event_new(base, -1, 0, waiter_fire_cb, w);
    if (w->ev == NULL)
        abort(); /* out of memory: the documented policy (util.h) */
    TAILQ_INSERT_TAIL(&f->waiters, w, link);
    *waiter = w;
out:
    pthread_mutex_unlock(&cc->lock);
    return res;
}

void credcache_complete(struct credcache *cc, const uint8_t key[CREDCACHE_KEY_LEN],
                        struct cred_headers *h, uint64_t expires_us)
{
    pthread_mutex_lock(&cc->lock);
    struct flight *f;
    LIST_FOREACH(f, &cc->flights, link)
    if (memcmp(f->key, key, CREDCACHE_KEY_LEN) == 0)
        break;
    if (h != NULL) {
        struct entry **pe = &cc->buckets[bucket_of(cc, key)];
        while (*pe && memcmp((*pe)->key, key, CREDCACHE_KEY_LEN) != 0)
            pe = &(*pe)->next;
        if (*pe)
            entry_remove(cc, pe);
        make_room(cc, monotonic_us());
        struct entry *e = xcalloc(1, sizeof(*e));
        memcpy(e->key, key, CREDCACHE_KEY_LEN);
        e->h = cred_headers_ref(h);
        e->expires_us = expires_us;
        size_t b = bucket_of(cc, key);
        e->next = cc->buckets[b];
        cc->buckets[b] = e;
        cc->n++;
    }
    if (f != NULL) {
        LIST_REMOVE(f, link);
        struct credcache_waiter *w;
        while ((w = TAILQ_FIRST(&f->waiters)) != NULL) {
            TAILQ_REMOVE(&f->waiters, w, link);
            w->flight = NULL;
            w->result = h ? cred_headers_ref(h) : NULL;
            event_active(w->ev, 0, 0); /* w may be freed by its thread from here on */
        }
        free(f);
    }
    pthread_mutex_unlock(&cc->lock);
    cred_headers_unref(h);
}

void credcache_cancel(struct credcache_waiter *w)
{
    if (w == NULL)
        return;
    struct credcache *cc = w->cc;
    pthread_mutex_lock(&cc->lock);
    if (w->flight != NULL) {
        TAILQ_REMOVE(&w->flight->waiters, w, link);
        w->flight = NULL;
    }
    pthread_mutex_unlock(&cc->lock);
    /* Same thread as the callback: freeing the event also withdraws a pending activation. */
    event_free(w->ev);
    cred_headers_unref(w->result);
    free(w);
}

size_t credcache_size(struct credcache *cc)
{
    pthread_mutex_lock(&cc->lock);
    size_t n = cc->n;
    pthread_mutex_unlock(&cc->lock);
    return n;
}
