/* Unit tests for control's publishing (a real store in a temporary state dir): every publish
 * gives the data plane each box with the policy its stored config and the workspace secrets
 * make now — after a PATCH of one box, a secret's rotation, re-binding or deletion, a box's
 * deletion and a master-key rotation by another process — while a write recompiles only the
 * boxes it concerns (a PATCH of one box of many does not recompile the others: that is what
 * keeps PATCH-to-effect latency flat as boxes are added). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "control.h"
#include "policy.h"
#include "registry.h"
#include "seal.h"
#include "store.h"
#include "util.h"

#define HOST "api.example.com"

struct fixture {
    char *dir;
    struct control *c;
    struct store *st;
    char *ws;
    struct registry *last; /* reference to the last registry published */
    int publishes;
};

static void capture(void *ctx, struct registry *reg)
{
    struct fixture *f = ctx;
    registry_unref(f->last);
    f->last = registry_ref(reg);
    f->publishes++;
}

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    char err[256];
    unsetenv(SEAL_ENV_VAR);
    f->dir = xstrdup("/tmp/test_control.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->c = control_open(f->dir, err, sizeof(err));
    if (f->c == NULL) {
        fprintf(stderr, "control_open: %s\n", err);
        return -1;
    }
    control_set_publisher(f->c, capture, f);
    f->st = control_store(f->c);
    struct store_workspace ws = {0};
    if (store_workspace_find(f->st, "default", &ws) != STORE_OK)
        return -1;
    f->ws = ws.id;
    ws.id = NULL;
    store_workspace_free(&ws);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    registry_unref(f->last);
    control_close(f->c);
    char *cmd = xasprintf("rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(cmd);
    free(f->ws);
    free(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* A proxy_config injecting X-Auth: "<prefix>{secret}" (or a plaintext value when secret is
 * NULL) into requests to HOST. */
static char *config(const char *prefix, const char *secret)
{
    if (secret == NULL)
        return xasprintf("{\"rules\":[{\"name\":\"r\",\"match_hosts\":[\"" HOST "\"],"
                         "\"headers\":[{\"name\":\"X-Auth\",\"type\":\"plaintext\","
                         "\"value\":\"%s\"}]}]}",
                         prefix);
    return xasprintf("{\"rules\":[{\"name\":\"r\",\"match_hosts\":[\"" HOST "\"],"
                     "\"headers\":[{\"name\":\"X-Auth\",\"type\":\"workspace_secret\","
                     "\"value\":\"%s{%s}\"}]}]}",
                     prefix, secret);
}

static void make_box(struct fixture *f, const char *name, const char *cfg)
{
    struct store_box b = {.name = (char *)name, .proxy_config = (char *)cfg};
    char *id = NULL, *token = NULL;
    assert_int_equal(store_box_create(f->st, f->ws, &b, &id, &token), STORE_OK);
    free(id);
    secret_free(token);
}

static void patch_box(struct fixture *f, const char *name, const char *cfg)
{
    struct store_box b = {0};
    assert_int_equal(store_box_get(f->st, f->ws, name, &b), STORE_OK);
    free(b.proxy_config);
    b.proxy_config = xstrdup(cfg);
    assert_int_equal(store_box_update(f->st, f->ws, &b), STORE_OK);
    store_box_free(&b);
}

static void publish(struct fixture *f)
{
    int before = f->publishes;
    assert_int_equal(control_publish(f->c), 0);
    assert_int_equal(f->publishes, before + 1);
}

static const struct registry_box *box(struct fixture *f, const char *name)
{
    for (size_t i = 0; f->last != NULL && i < f->last->n; i++)
        if (strcmp(f->last->boxes[i].name, name) == 0)
            return &f->last->boxes[i];
    fail_msg("box %s is not in the published registry", name);
    return NULL;
}

/* The X-Auth value box name's published policy injects for HOST, or NULL when the box has no
 * policy (its requests are refused). */
static const char *injected(struct fixture *f, const char *name)
{
    const struct policy *p = box(f, name)->policy;
    if (p == NULL)
        return NULL;
    struct policy_request_decision d;
    policy_decide_request(p, HOST, "/", 1, true, &d);
    assert_int_equal(d.action, POLICY_INJECT);
    assert_int_equal(d.rule->n_headers, 1);
    return d.rule->headers[0].value;
}

static void put_secret(struct fixture *f, const char *name, const char *value, const char *hosts)
{
    assert_int_equal(store_secret_put(f->st, f->ws, name, value, hosts, NULL), STORE_OK);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_patch_recompiles_only_the_patched_box(void **state)
{
    struct fixture *f = *state;
    char *c_tok = config("Bearer ", "TOKEN"), *c_plain = config("fixed", NULL);
    put_secret(f, "TOKEN", "t1", "[{\"host\":\"" HOST "\"}]");
    make_box(f, "a", c_tok);
    make_box(f, "b", c_tok);
    make_box(f, "c", c_plain);
    publish(f);
    assert_int_equal(f->last->n, 3);
    assert_string_equal(injected(f, "a"), "Bearer t1");
    assert_string_equal(injected(f, "b"), "Bearer t1");
    assert_string_equal(injected(f, "c"), "fixed");
    const struct policy *pa = box(f, "a")->policy, *pb = box(f, "b")->policy,
                        *pc = box(f, "c")->policy;

    char *c_new = config("Token ", "TOKEN");
    patch_box(f, "b", c_new);
    publish(f);
    assert_string_equal(injected(f, "b"), "Token t1");
    assert_string_equal(injected(f, "a"), "Bearer t1");
    assert_ptr_not_equal(box(f, "b")->policy, pb);
    /* The others are the very policies published before: not recompiled. */
    assert_ptr_equal(box(f, "a")->policy, pa);
    assert_ptr_equal(box(f, "c")->policy, pc);

    /* A publish with nothing changed recompiles nothing. */
    const struct policy *pb2 = box(f, "b")->policy;
    publish(f);
    assert_ptr_equal(box(f, "b")->policy, pb2);
    assert_ptr_equal(box(f, "a")->policy, pa);
    free(c_new);
    free(c_tok);
    free(c_plain);
}

static void test_secret_changes_reach_every_box_using_it(void **state)
{
    struct fixture *f = *state;
    char *c_tok = config("Bearer ", "TOKEN"), *c_other = config("K ", "OTHER");
    put_secret(f, "TOKEN", "t1", "[{\"host\":\"" HOST "\"}]");
    put_secret(f, "OTHER", "o1", NULL);
    make_box(f, "a", c_tok);
    make_box(f, "b", c_tok);
    make_box(f, "o", c_other);
    publish(f);
    const struct policy *po = box(f, "o")->policy;

    /* Rotation: the same value stored again is a new version too (harmless recompile). */
    put_secret(f, "TOKEN", "t2", "[{\"host\":\"" HOST "\"}]");
    publish(f);
    assert_string_equal(injected(f, "a"), "Bearer t2");
    assert_string_equal(injected(f, "b"), "Bearer t2");
    assert_string_equal(injected(f, "o"), "K o1");
    assert_ptr_equal(box(f, "o")->policy, po); /* does not use TOKEN */

    /* Re-bound elsewhere: the configs using it no longer comply — refused (fail closed). */
    put_secret(f, "TOKEN", NULL, "[{\"host\":\"other.example.com\"}]");
    publish(f);
    assert_null(injected(f, "a"));
    assert_null(injected(f, "b"));
    assert_string_equal(injected(f, "o"), "K o1");

    /* Bound back, then deleted, then created again. */
    put_secret(f, "TOKEN", NULL, "[{\"host\":\"" HOST "\"}]");
    publish(f);
    assert_string_equal(injected(f, "a"), "Bearer t2");
    assert_int_equal(store_secret_delete(f->st, f->ws, "TOKEN"), STORE_OK);
    publish(f);
    assert_null(injected(f, "a"));
    assert_null(injected(f, "b"));
    put_secret(f, "TOKEN", "t3", "[{\"host\":\"" HOST "\"}]");
    publish(f);
    assert_string_equal(injected(f, "a"), "Bearer t3");
    assert_string_equal(injected(f, "b"), "Bearer t3");
    assert_ptr_equal(box(f, "o")->policy, po);

    /* A secret the configs never name changes nothing. */
    const struct policy *pa = box(f, "a")->policy;
    put_secret(f, "UNUSED", "u", NULL);
    publish(f);
    assert_ptr_equal(box(f, "a")->policy, pa);
    free(c_tok);
    free(c_other);
}

static void test_deleted_and_renamed_boxes(void **state)
{
    struct fixture *f = *state;
    char *c_plain = config("v", NULL);
    make_box(f, "a", c_plain);
    make_box(f, "b", c_plain);
    publish(f);
    assert_int_equal(f->last->n, 2);
    assert_int_equal(store_box_delete(f->st, f->ws, "a"), STORE_OK);
    publish(f);
    assert_int_equal(f->last->n, 1);
    assert_string_equal(f->last->boxes[0].name, "b");

    struct store_box b = {0};
    assert_int_equal(store_box_get(f->st, f->ws, "b", &b), STORE_OK);
    free(b.name);
    b.name = xstrdup("b2");
    assert_int_equal(store_box_update(f->st, f->ws, &b), STORE_OK);
    store_box_free(&b);
    publish(f);
    assert_int_equal(f->last->n, 1);
    assert_string_equal(f->last->boxes[0].name, "b2");
    assert_string_equal(injected(f, "b2"), "v");
    free(c_plain);
}

/* `authproxy keys rotate` in another process: a new key in the key file, every value re-sealed
 * under it. The daemon's next publish must read the new key and recompile what moved. */
static void test_master_key_rotation_by_another_process(void **state)
{
    struct fixture *f = *state;
    char *c_tok = config("Bearer ", "TOKEN"), *err = NULL;
    put_secret(f, "TOKEN", "t1", NULL);
    make_box(f, "a", c_tok);
    publish(f);
    assert_string_equal(injected(f, "a"), "Bearer t1");

    struct seal_keyring *kr = seal_keyring_open(f->dir, NULL, &err);
    assert_non_null(kr);
    struct store *other = store_open(f->dir, kr, &err);
    assert_non_null(other);
    assert_int_equal(seal_keyring_rotate(kr, &err), 0);
    size_t n = 0;
    assert_int_equal(store_reseal_all(other, &n), STORE_OK);
    assert_true(n >= 1);
    store_close(other);
    seal_keyring_free(kr);

    assert_int_equal(control_sync(f->c), 0);
    assert_string_equal(injected(f, "a"), "Bearer t1");
    /* New writes seal under the new key, which the daemon now holds. */
    put_secret(f, "TOKEN", "t2", NULL);
    publish(f);
    assert_string_equal(injected(f, "a"), "Bearer t2");
    free(c_tok);
}

static void test_check_proxy_config_names_unknown_secret(void **state)
{
    struct fixture *f = *state;
    struct errlist errs = {0};
    put_secret(f, "TOKEN", "t1", "[{\"host\":\"" HOST "\"}]");
    char *t_ok = config("Bearer ", "TOKEN"), *t_bad = config("Bearer ", "MISSING");
    json_t *ok = json_loads(t_ok, 0, NULL), *bad = json_loads(t_bad, 0, NULL);
    assert_int_equal(control_check_proxy_config(f->c, f->ws, ok, &errs), 0);
    assert_int_equal(errs.n, 0);
    assert_int_equal(control_check_proxy_config(f->c, f->ws, bad, &errs), -1);
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.msgs[0], "MISSING"));
    errlist_free(&errs);
    json_decref(ok);
    json_decref(bad);
    free(t_ok);
    free(t_bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_patch_recompiles_only_the_patched_box, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_secret_changes_reach_every_box_using_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_deleted_and_renamed_boxes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_master_key_rotation_by_another_process, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_check_proxy_config_names_unknown_secret, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
