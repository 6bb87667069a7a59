/* credcache: dynamic credentials (callback answers, GCP access tokens) shared by every worker —
 * a TTL cache of resolved header sets with single-flight misses.
 *
 * Keys are 32-byte digests the caller computes over everything that identifies a credential
 * (SPEC §4: sandbox, callback, host, port, and method and path with full_request), so two
 * different credentials never share an entry and no key holds a secret.
 *
 * One flight per key: the first miss makes its caller the leader, which fetches and reports the
 * outcome with credcache_complete; later misses for the key, from any worker thread, wait on
 * that flight. Each waiter belongs to one event base; it is called back in that base's thread
 * (through an event activated from the completing thread), so a connection's state is only ever
 * touched by its own worker. Failures are reported to every waiter and never cached (fail
 * closed: the next request asks again). */
#ifndef AUTHPROXY_CREDCACHE_H
#define AUTHPROXY_CREDCACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CREDCACHE_KEY_LEN 32

struct event_base;

/* An immutable set of headers to inject, shared by reference between the cache and requests.
 * Names and values are secret material (values) and are zeroed when the last reference goes. */
struct cred_header {
    char *name;
    char *value;
};

struct cred_headers {
    atomic_int refs;
    size_t n;
    struct cred_header *h;
};

/* A set of n empty headers (the caller fills h[i].name/value with malloc'd strings before
 * sharing it). One reference. */
struct cred_headers *cred_headers_new(size_t n);
struct cred_headers *cred_headers_ref(struct cred_headers *c);
void cred_headers_unref(struct cred_headers *c);

struct credcache;
struct credcache_waiter;

/* Called in the waiter's own thread when its flight ends: h is a reference the callee owns, or
 * NULL when the fetch failed. The waiter is freed after the callback returns. */
typedef void (*credcache_cb)(struct cred_headers *h, void *arg);

/* max_entries bounds memory: when full, expired entries go first, then the ones closest to
 * expiry. */
struct credcache *credcache_new(size_t max_entries);
/* Frees the cache. Every flight must have completed and every waiter been called or
 * cancelled. */
void credcache_free(struct credcache *cc);

enum credcache_result {
    CREDCACHE_HIT = 1, /* *hit holds a reference to the cached headers */
    CREDCACHE_WAIT,    /* a flight for key is under way; *waiter will be called back */
    CREDCACHE_LEAD,    /* no flight was under way: the caller must fetch and then call
                          credcache_complete(key) exactly once; *waiter is called back too */
};

/* Looks key up at time now_us (monotonic microseconds). On a miss registers a waiter whose
 * callback runs in base's thread. Thread-safe. */
enum credcache_result credcache_lookup(struct credcache *cc, const uint8_t key[CREDCACHE_KEY_LEN],
                                       uint64_t now_us, struct event_base *base, credcache_cb cb,
                                       void *arg, struct cred_headers **hit,
                                       struct credcache_waiter **waiter);

/* Ends key's flight: h (a reference, consumed; NULL: failure) is cached until expires_us unless
 * it is NULL, and every waiter is called back with it. Thread-safe. */
void credcache_complete(struct credcache *cc, const uint8_t key[CREDCACHE_KEY_LEN],
                        struct cred_headers *h, uint64_t expires_us);

/* Withdraws a waiter that has not been called back (its connection went away); must be called
 * in the waiter's own thread. Its callback will not run. The flight goes on for the others. */
void credcache_cancel(struct credcache_waiter *w);

/* Entries held now (for metrics and tests). */
size_t credcache_size(struct credcache *cc);

#endif
