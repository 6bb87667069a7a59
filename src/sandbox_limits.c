#include "sandbox_limits.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define BUCKETS 256
/* Sweep idle entries once the table holds this many. */
#define SWEEP_AT 4096

struct entry {
    struct entry *next;
    char *key;
    unsigned conns;
    double tokens;    /* request tokens left */
    uint64_t last_us; /* when tokens was last refilled; 0: never (bucket starts full) */
    bool bucket_full; /* tokens reached the burst at the last refill */
};

struct sandbox_limits {
    pthread_mutex_t lock; /* guards everything below */
    struct entry *buckets[BUCKETS];
    size_t n;
};

static size_t hash_key(const char *s)
{
    size_t h = 5381;
    for (; *s; s++)
        h = h * 33 + (unsigned char)*s;
    return h % BUCKETS;
}

struct sandbox_limits *sandbox_limits_new(void)
{
    struct sandbox_limits *l = xcalloc(1, sizeof(*l));
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

void sandbox_limits_free(struct sandbox_limits *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < BUCKETS; i++) {
        struct entry *e = l->buckets[i];
        while (e) {
            struct entry *next = e->next;
            free(e->key);
            free(e);
            e = next;
        }
    }
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* Drops entries that hold nothing: no connection and a full bucket (l->lock held). */
static void sweep(struct sandbox_limits *l)
{
    for (size_t i = 0; i < BUCKETS; i++) {
        struct entry **pe = &l->buckets[i];
        while (*pe) {
            struct entry *e = *pe;
            if (e->conns == 0 && (e->last_us == 0 || e->bucket_full)) {
                *pe = e->next;
                free(e->key);
                free(e);
                l->n--;
            } else {
                pe = &e->next;
            }
        }
    }
}

/* The entry for key, created if create (l->lock held). */
static struct entry *find(struct sandbox_limits *l, const char *key, bool create)
{
    struct entry **pe = &l->buckets[hash_key(key)];
    for (struct entry *e = *pe; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    if (!create)
        return NULL;
    if (l->n >= SWEEP_AT)
        sweep(l);
    struct entry *e = xcalloc(1, sizeof(*e));
    e->key = xstrdup(key);
    e->next = *pe;
    *pe = e;
    l->n++;
    return e;
}

bool sandbox_limits_conn_acquire(struct sandbox_limits *l, const char *key, unsigned max)
{
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, key, true);
    bool ok = max == 0 || e->conns < max;
    if (ok)
        e->conns++;
    pthread_mutex_unlock(&l->lock);
    return ok;
}

void sandbox_limits_conn_release(struct sandbox_limits *l, const char *key)
{
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, key, false);
    if (e != NULL && e->conns > 0)
        e->conns--;
    pthread_mutex_unlock(&l->lock);
}

bool sandbox_limits_request(struct sandbox_limits *l, const char *key, unsigned rate,
                            unsigned burst, uint64_t now_us)
{
    if (rate == 0)
        return true;
    double cap = burst ? burst : rate;
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, key, true);
    if (e->last_us == 0) {
        e->tokens = cap;
    } else if (now_us > e->last_us) {
        e->tokens += (double)(now_us - e->last_us) * rate / 1e6;
        if (e->tokens > cap)
            e->tokens = cap;
    }
    e->last_us = now_us;
    bool ok = e->tokens >= 1.0;
    if (ok)
        e->tokens -= 1.0;
    e->bucket_full = e->tokens >= cap - 1.0;
    pthread_mutex_unlock(&l->lock);
    return ok;
}

unsigned sandbox_limits_connections(struct sandbox_limits *l, const char *key)
{
    pthread_mutex_lock(&l->lock);
    struct entry *e = find(l, key, false);
    unsigned n = e ? e->conns : 0;
    pthread_mutex_unlock(&l->lock);
    return n;
}
