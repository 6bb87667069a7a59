/* credcache: TTL cache with single-flight misses, waiters called back in their own thread. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "credcache.h"
#include "util.h"

struct outcome {
    int calls;
    bool got_headers;
    char value[64];
    pthread_t thread;
};

static void record_cb(struct cred_headers *h, void *arg)
{
    struct outcome *o = arg;
    o->calls++;
    o->thread = pthread_self();
    o->got_headers = h != NULL;
    if (h != NULL) {
        snprintf(o->value, sizeof(o->value), "%s", h->h[0].value);
        cred_headers_unref(h);
    }
}

static struct cred_headers *one_header(const char *value)
{
    struct cred_headers *h = cred_headers_new(1);
    h->h[0].name = xstrdup("Authorization");
    h->h[0].value = xstrdup(value);
    return h;
}

static void key_of(uint8_t key[CREDCACHE_KEY_LEN], int n)
{
    memset(key, 0, CREDCACHE_KEY_LEN);
    key[0] = (uint8_t)n;
    key[CREDCACHE_KEY_LEN - 1] = (uint8_t)(n * 7);
}

static void run_loop(struct event_base *base)
{
    event_base_loop(base, EVLOOP_NONBLOCK);
}

static void test_miss_leads_then_waits_then_hits(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct credcache *cc = credcache_new(16);
    uint8_t key[CREDCACHE_KEY_LEN];
    key_of(key, 1);
    struct outcome a = {0}, b = {0};
    struct cred_headers *hit;
    struct credcache_waiter *wa, *wb;

    assert_int_equal(credcache_lookup(cc, key, 1000, base, record_cb, &a, &hit, &wa),
                     CREDCACHE_LEAD);
    assert_null(hit);
    assert_int_equal(credcache_lookup(cc, key, 1000, base, record_cb, &b, &hit, &wb),
                     CREDCACHE_WAIT);
    run_loop(base);
    assert_int_equal(a.calls + b.calls, 0); /* nobody is called before the flight ends */

    credcache_complete(cc, key, one_header("Bearer one"), 5000);
    run_loop(base);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_true(a.got_headers && b.got_headers);
    assert_string_equal(b.value, "Bearer one");

    assert_int_equal(credcache_lookup(cc, key, 4999, base, record_cb, &a, &hit, &wa),
                     CREDCACHE_HIT);
    assert_non_null(hit);
    assert_string_equal(hit->h[0].value, "Bearer one");
    cred_headers_unref(hit);
    assert_int_equal(credcache_size(cc), 1);

    /* At expiry the entry is gone and the next asker leads a new flight. */
    assert_int_equal(credcache_lookup(cc, key, 5000, base, record_cb, &a, &hit, &wa),
                     CREDCACHE_LEAD);
    credcache_complete(cc, key, NULL, 0);
    run_loop(base);
    assert_int_equal(a.calls, 2);
    assert_false(a.got_headers);
    credcache_free(cc);
    event_base_free(base);
}

static void test_failure_is_not_cached(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct credcache *cc = credcache_new(16);
    uint8_t key[CREDCACHE_KEY_LEN];
    key_of(key, 2);
    struct outcome a = {0};
    struct cred_headers *hit;
    struct credcache_waiter *w;
    assert_int_equal(credcache_lookup(cc, key, 1, base, record_cb, &a, &hit, &w), CREDCACHE_LEAD);
    credcache_complete(cc, key, NULL, 999999);
    run_loop(base);
    assert_int_equal(a.calls, 1);
    assert_false(a.got_headers);
    assert_int_equal(credcache_size(cc), 0);
    assert_int_equal(credcache_lookup(cc, key, 2, base, record_cb, &a, &hit, &w), CREDCACHE_LEAD);
    credcache_complete(cc, key, one_header("Bearer later"), 999999);
    run_loop(base);
    assert_int_equal(a.calls, 2);
    assert_true(a.got_headers);
    credcache_free(cc);
    event_base_free(base);
}

static void test_cancelled_waiter_is_never_called(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct credcache *cc = credcache_new(16);
    uint8_t key[CREDCACHE_KEY_LEN];
    key_of(key, 3);
    struct outcome a = {0}, b = {0}, c = {0};
    struct cred_headers *hit;
    struct credcache_waiter *wa, *wb, *wc;
    credcache_lookup(cc, key, 1, base, record_cb, &a, &hit, &wa);
    credcache_lookup(cc, key, 1, base, record_cb, &b, &hit, &wb);
    credcache_cancel(wb); /* before completion */
    credcache_lookup(cc, key, 1, base, record_cb, &c, &hit, &wc);
    credcache_complete(cc, key, one_header("Bearer x"), 100);
    credcache_cancel(wc); /* after completion, before its callback ran */
    run_loop(base);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 0);
    assert_int_equal(c.calls, 0);
    credcache_free(cc);
    event_base_free(base);
}

static void test_full_cache_evicts_the_soonest_to_expire(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct credcache *cc = credcache_new(2);
    uint8_t k1[CREDCACHE_KEY_LEN], k2[CREDCACHE_KEY_LEN], k3[CREDCACHE_KEY_LEN];
    key_of(k1, 11);
    key_of(k2, 12);
    key_of(k3, 13);
    struct outcome o = {0};
    struct cred_headers *hit;
    struct credcache_waiter *w;
    credcache_lookup(cc, k1, 1, base, record_cb, &o, &hit, &w);
    credcache_complete(cc, k1, one_header("1"), UINT64_MAX / 2);
    credcache_lookup(cc, k2, 1, base, record_cb, &o, &hit, &w);
    credcache_complete(cc, k2, one_header("2"), UINT64_MAX / 4); /* expires first */
    credcache_lookup(cc, k3, 1, base, record_cb, &o, &hit, &w);
    credcache_complete(cc, k3, one_header("3"), UINT64_MAX / 2);
    run_loop(base);
    assert_int_equal(credcache_size(cc), 2);
    assert_int_equal(credcache_lookup(cc, k1, 2, base, record_cb, &o, &hit, &w), CREDCACHE_HIT);
    cred_headers_unref(hit);
    assert_int_equal(credcache_lookup(cc, k3, 2, base, record_cb, &o, &hit, &w), CREDCACHE_HIT);
    cred_headers_unref(hit);
    assert_int_equal(credcache_lookup(cc, k2, 2, base, record_cb, &o, &hit, &w), CREDCACHE_LEAD);
    credcache_complete(cc, k2, NULL, 0);
    run_loop(base);
    credcache_free(cc);
    event_base_free(base);
}

/* A waiter registered from another thread's base is called back in that thread. */
struct remote {
    struct event_base *base;
    struct credcache *cc;
    uint8_t key[CREDCACHE_KEY_LEN];
    struct outcome out;
    pthread_t thread;
    int registered; /* guarded by lock */
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static void stop_when_called(struct cred_headers *h, void *arg)
{
    struct remote *r = arg;
    record_cb(h, &r->out);
    event_base_loopbreak(r->base);
}

static void *remote_thread(void *arg)
{
    struct remote *r = arg;
    struct cred_headers *hit;
    struct credcache_waiter *w;
    enum credcache_result res =
        credcache_lookup(r->cc, r->key, 1, r->base, stop_when_called, r, &hit, &w);
    pthread_mutex_lock(&r->lock);
    r->registered = res;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    /* A persistent dummy event keeps the loop running until the callback breaks it. */
    struct event *keep = event_new(r->base, -1, EV_PERSIST, NULL, NULL);
    struct timeval tv = {3600, 0};
    event_add(keep, &tv);
    event_base_dispatch(r->base);
    event_free(keep);
    return NULL;
}

static void test_waiter_in_another_thread_is_called_there(void **state)
{
    (void)state;
    struct remote r = {0};
    pthread_mutex_init(&r.lock, NULL);
    pthread_cond_init(&r.cond, NULL);
    r.base = event_base_new();
    r.cc = credcache_new(4);
    key_of(r.key, 21);
    struct event_base *mine = event_base_new();
    struct outcome leader = {0};
    struct cred_headers *hit;
    struct credcache_waiter *w;
    assert_int_equal(credcache_lookup(r.cc, r.key, 1, mine, record_cb, &leader, &hit, &w),
                     CREDCACHE_LEAD);
    assert_int_equal(pthread_create(&r.thread, NULL, remote_thread, &r), 0);
    pthread_mutex_lock(&r.lock);
    while (r.registered == 0)
        pthread_cond_wait(&r.cond, &r.lock);
    pthread_mutex_unlock(&r.lock);
    assert_int_equal(r.registered, CREDCACHE_WAIT);
    credcache_complete(r.cc, r.key, one_header("Bearer remote"), 1000);
    pthread_join(r.thread, NULL);
    run_loop(mine);
    assert_int_equal(r.out.calls, 1);
    assert_true(pthread_equal(r.out.thread, r.thread));
    assert_string_equal(r.out.value, "Bearer remote");
    assert_int_equal(leader.calls, 1);
    credcache_free(r.cc);
    event_base_free(r.base);
    event_base_free(mine);
    pthread_cond_destroy(&r.cond);
    pthread_mutex_destroy(&r.lock);
}

int main(void)
{
    evthread_use_pthreads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_miss_leads_then_waits_then_hits),
        cmocka_unit_test(test_failure_is_not_cached),
        cmocka_unit_test(test_cancelled_waiter_is_never_called),
        cmocka_unit_test(test_full_cache_evicts_the_soonest_to_expire),
        cmocka_unit_test(test_waiter_in_another_thread_is_called_there),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
