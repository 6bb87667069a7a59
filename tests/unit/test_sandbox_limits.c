/* sandbox_limits: per-sandbox connection counts and request token buckets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "sandbox_limits.h"

static void test_connections_are_counted_per_key_up_to_max(void **state)
{
    (void)state;
    struct sandbox_limits *l = sandbox_limits_new();
    for (int i = 0; i < 3; i++)
        assert_true(sandbox_limits_conn_acquire(l, "box:a", 3));
    assert_false(sandbox_limits_conn_acquire(l, "box:a", 3));
    assert_true(sandbox_limits_conn_acquire(l, "box:b", 3)); /* another sandbox */
    assert_int_equal(sandbox_limits_connections(l, "box:a"), 3);
    sandbox_limits_conn_release(l, "box:a");
    assert_true(sandbox_limits_conn_acquire(l, "box:a", 3));
    assert_true(sandbox_limits_conn_acquire(l, "box:c", 0)); /* 0: no limit */
    for (int i = 0; i < 3; i++)
        sandbox_limits_conn_release(l, "box:a");
    sandbox_limits_conn_release(l, "box:b");
    sandbox_limits_conn_release(l, "box:c");
    assert_int_equal(sandbox_limits_connections(l, "box:a"), 0);
    sandbox_limits_free(l);
}

static void test_request_bucket_refills_at_the_rate(void **state)
{
    (void)state;
    struct sandbox_limits *l = sandbox_limits_new();
    uint64_t t = 1000000;
    int ok = 0;
    for (int i = 0; i < 30; i++)
        ok += sandbox_limits_request(l, "box:a", 10, 20, t);
    assert_int_equal(ok, 20); /* the burst */
    assert_false(sandbox_limits_request(l, "box:a", 10, 20, t));
    assert_true(sandbox_limits_request(l, "box:b", 10, 20, t)); /* buckets are per key */
    t += 500000;                                                 /* 0.5 s at 10/s: 5 tokens */
    ok = 0;
    for (int i = 0; i < 10; i++)
        ok += sandbox_limits_request(l, "box:a", 10, 20, t);
    assert_int_equal(ok, 5);
    assert_true(sandbox_limits_request(l, "box:a", 0, 0, t)); /* rate 0: no limit */
    sandbox_limits_free(l);
}

static void test_many_idle_keys_are_swept(void **state)
{
    (void)state;
    struct sandbox_limits *l = sandbox_limits_new();
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "addr:%d", i);
        assert_true(sandbox_limits_conn_acquire(l, key, 1));
        sandbox_limits_conn_release(l, key);
    }
    /* a key with a live connection survives the sweeps */
    assert_true(sandbox_limits_conn_acquire(l, "box:kept", 1));
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "addr:x%d", i);
        assert_true(sandbox_limits_conn_acquire(l, key, 1));
        sandbox_limits_conn_release(l, key);
    }
    assert_false(sandbox_limits_conn_acquire(l, "box:kept", 1));
    sandbox_limits_conn_release(l, "box:kept");
    sandbox_limits_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connections_are_counted_per_key_up_to_max),
        cmocka_unit_test(test_request_bucket_refills_at_the_rate),
        cmocka_unit_test(test_many_idle_keys_are_swept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
