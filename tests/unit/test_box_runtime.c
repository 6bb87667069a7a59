/* Unit tests for box_runtime (issue 4): the pieces shared with sandbox run (environment, CA
 * bundle, tree removal) everywhere; the daemon's runtimes — real namespaces, cgroups, loop-mounted
 * disks and commands driven by a libevent loop — as root only (skipped with a message
 * otherwise). The runtimes' own e2e view is tests/e2e/test_box_runtime.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "box_runtime.h"
#include "policy.h"
#include "util.h"

#define CA_PEM "-----BEGIN CERTIFICATE-----\nUNITTESTCA\n-----END CERTIFICATE-----\n"

static char *make_state_dir(void)
{
    char *dir = xstrdup("/var/tmp/authproxy-boxrt-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char *ca = xasprintf("%s/ca.crt", dir);
    FILE *f = fopen(ca, "w");
    assert_non_null(f);
    fputs(CA_PEM, f);
    fclose(f);
    free(ca);
    return dir;
}

/* ---- everywhere ---- */

static void test_env_holds_enabled_rules_placeholders_in_order(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *doc = json_loads(
        "{\"rules\": ["
        " {\"name\": \"gh\", \"match_hosts\": [\"github.com\"], \"headers\": [],"
        "  \"env_vars\": {\"GH_TOKEN\": \"placeholder\"}},"
        " {\"name\": \"off\", \"enabled\": false, \"match_hosts\": [\"x.test\"], \"headers\": [],"
        "  \"env_vars\": {\"OFF_TOKEN\": \"never\"}},"
        " {\"name\": \"oa\", \"match_hosts\": [\"api.openai.com\"], \"headers\": [],"
        "  \"env_vars\": {\"OPENAI_API_KEY\": \"sk-placeholder\"}}]}",
        0, &jerr);
    assert_non_null(doc);
    struct secret_source none = {0};
    struct errlist errs = {0};
    struct policy *p = policy_compile(doc, &none, "proxy_config", 1, &errs);
    assert_non_null(p);
    struct box_runtime_env env = {0};
    box_runtime_env_add(&env, "FIRST", "1");
    box_runtime_env_add_policy(&env, p);
    box_runtime_env_add_policy(&env, NULL); /* a box without an applicable policy: nothing */
    const char *const *v = box_runtime_env_list(&env);
    assert_string_equal(v[0], "FIRST=1");
    assert_string_equal(v[1], "GH_TOKEN=placeholder");
    assert_string_equal(v[2], "OPENAI_API_KEY=sk-placeholder");
    assert_null(v[3]);
    box_runtime_env_free(&env);
    struct box_runtime_env empty = {0};
    assert_null(box_runtime_env_list(&empty)[0]); /* never NULL itself: jail_spec.env */
    box_runtime_env_free(&empty);
    policy_unref(p);
    errlist_free(&errs);
    json_decref(doc);
}

static void test_ca_bundle_is_system_roots_plus_our_ca_world_readable(void **state)
{
    (void)state;
    char *dir = make_state_dir();
    char *path = xasprintf("%s/bundle.pem", dir);
    char err[256] = "";
    assert_int_equal(box_runtime_write_ca_bundle(path, dir, err, sizeof(err)), 0);
    size_t len = 0;
    char *text = read_file(path, 64u << 20, &len);
    assert_non_null(text);
    assert_non_null(strstr(text, "UNITTESTCA"));
    size_t sys_len = 0;
    char *sys = read_file(BOX_RUNTIME_SYSTEM_CA, 64u << 20, &sys_len);
    if (sys != NULL) /* the system roots come first, unchanged */
        assert_memory_equal(text, sys, sys_len);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644); /* the sandbox's unprivileged user reads it */
    /* Written again (every daemon start): replaced, not appended to. */
    assert_int_equal(box_runtime_write_ca_bundle(path, dir, err, sizeof(err)), 0);
    size_t len2 = 0;
    char *again = read_file(path, 64u << 20, &len2);
    assert_int_equal(len2, len);
    free(again);
    free(sys);
    free(text);
    /* Without authproxy's CA there is nothing to trust: an error, not a bundle of roots only. */
    char *nodir = xasprintf("%s/missing", dir);
    assert_int_equal(box_runtime_write_ca_bundle(path, nodir, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "ca.crt"));
    free(nodir);
    assert_int_equal(box_runtime_remove_tree(dir), 0);
    assert_int_equal(access(dir, F_OK), -1);
    free(path);
    free(dir);
}

static void test_remove_tree_never_follows_a_symlink_out(void **state)
{
    (void)state;
    char *outside = make_state_dir();
    char *victim = xasprintf("%s/ca.crt", outside);
    char *dir = make_state_dir();
    char *sub = xasprintf("%s/a/b", dir);
    char *msg = NULL;
    assert_int_equal(mkdir_p(sub, &msg), 0);
    char *link = xasprintf("%s/a/escape", dir);
    assert_int_equal(symlink(outside, link), 0);
    assert_int_equal(box_runtime_remove_tree(dir), 0);
    assert_int_equal(access(dir, F_OK), -1);
    assert_int_equal(access(victim, F_OK), 0);         /* what the link pointed at is untouched */
    assert_int_equal(box_runtime_remove_tree(dir), 0); /* gone already: fine */
    assert_int_equal(box_runtime_remove_tree(outside), 0);
    free(link);
    free(sub);
    free(victim);
    free(dir);
    free(outside);
}

/* ---- as root: the daemon's runtimes ---- */

struct done_log {
    int calls;
    enum box_exec_end end;
    int exit_code;
    bool timed_out, out_truncated;
    char out[256], err[256];
    size_t out_len;
};

static void on_done(void *arg, const struct box_exec_result *r)
{
    struct done_log *d = arg;
    d->calls++;
    d->end = r->end;
    d->exit_code = r->exit_code;
    d->timed_out = r->timed_out;
    d->out_truncated = r->out_truncated;
    d->out_len = r->out_len;
    snprintf(d->out, sizeof(d->out), "%.*s", (int)(r->out_len < 255 ? r->out_len : 255), r->out);
    snprintf(d->err, sizeof(d->err), "%.*s", (int)(r->err_len < 255 ? r->err_len : 255), r->err);
}

struct idle_log {
    int calls;
    char box_id[64];
};

static void on_idle(void *ctx, const char *ws_id, const char *box_id)
{
    struct idle_log *l = ctx;
    (void)ws_id;
    l->calls++;
    snprintf(l->box_id, sizeof(l->box_id), "%s", box_id);
}

struct fixture {
    struct event_base *base;
    char *state;
    struct box_runtime *rt;
    struct idle_log idle;
};

static int rt_setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    char err[512] = "";
    fx->base = event_base_new();
    fx->state = make_state_dir();
    struct box_runtime_config cfg = {
        .base = fx->base,
        .state_dir = fx->state,
        .transparent_port = 9, /* nothing listens: these tests do not use the network */
        .dns_port = 10,
        .hooks = {.idle_stopped = on_idle, .ctx = &fx->idle},
    };
    fx->rt = box_runtime_new(&cfg, err, sizeof(err));
    if (fx->rt == NULL) {
        print_error("box_runtime_new: %s\n", err);
        return -1;
    }
    *state = fx;
    return 0;
}

static int rt_teardown(void **state)
{
    struct fixture *fx = *state;
    box_runtime_free(fx->rt);
    event_base_free(fx->base);
    box_runtime_remove_tree(fx->state);
    free(fx->state);
    free(fx);
    return 0;
}

/* Runs the loop until *calls reaches want or ms pass. */
static void loop_until(struct fixture *fx, const int *calls, int want, int ms)
{
    uint64_t end = monotonic_us() + (uint64_t)ms * 1000u;
    while (*calls < want && monotonic_us() < end)
        event_base_loop(fx->base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(2000);
}

static int exec_sh(struct fixture *fx, const char *id, const char *script, unsigned timeout_ms,
                   struct done_log *d)
{
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    const char *env[] = {"FROM_CALLER=yes", NULL};
    struct box_exec_request req = {.argv = argv, .env = env, .timeout_ms = timeout_ms};
    char err[512] = "";
    int rc = box_runtime_exec(fx->rt, id, &req, on_done, d, err, sizeof(err));
    if (rc != 0)
        print_message("box_runtime_exec: %s\n", err);
    return rc;
}

static const struct box_runtime_limits lim_default = {.name = "unit-box", .idle_ttl_seconds = 0};

static void test_exec_reports_output_and_exit_code_on_the_loop(void **state)
{
    struct fixture *fx = *state;
    const char *id = "0a1b2c3d-0000-4000-8000-00000000000a";
    char err[512] = "";
    assert_int_equal(box_runtime_start(fx->rt, "ws", id, &lim_default, err, sizeof(err)), 0);
    assert_true(box_runtime_running(fx->rt, id));
    assert_int_not_equal(box_runtime_addr(fx->rt, id).s_addr, 0);
    struct done_log d = {0};
    assert_int_equal(
        exec_sh(fx, id, "echo $FROM_CALLER; hostname; id -u; echo e >&2; exit 3", 0, &d), 0);
    assert_int_equal(d.calls, 0); /* nothing happens until the loop runs */
    loop_until(fx, &d.calls, 1, 10000);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.end, BOX_EXEC_EXITED);
    assert_int_equal(d.exit_code, 3);
    assert_string_equal(d.out, "yes\nunit-box\n65534\n");
    assert_string_equal(d.err, "e\n");
    /* A signal is reported as a shell would: 128 + n. */
    struct done_log k = {0};
    assert_int_equal(exec_sh(fx, id, "kill -9 $$", 0, &k), 0);
    loop_until(fx, &k.calls, 1, 10000);
    assert_int_equal(k.exit_code, 128 + SIGKILL);
    /* The command's own problems are told apart. */
    const char *argv[] = {"/no/such/shell", "-c", "true", NULL};
    struct box_exec_request bad = {.argv = argv};
    assert_int_equal(box_runtime_exec(fx->rt, id, &bad, on_done, &d, err, sizeof(err)), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(box_runtime_exec(fx->rt, "not-running", &bad, on_done, &d, err, sizeof(err)),
                     -1);
    assert_int_equal(errno, ENOENT);
    box_runtime_stop(fx->rt, id, BOX_EXEC_STOPPED);
    assert_false(box_runtime_running(fx->rt, id));
    assert_int_equal(box_runtime_addr(fx->rt, id).s_addr, 0);
}

static void test_timeout_and_output_cap(void **state)
{
    struct fixture *fx = *state;
    const char *id = "0a1b2c3d-0000-4000-8000-00000000000b";
    char err[512] = "";
    assert_int_equal(box_runtime_start(fx->rt, "ws", id, &lim_default, err, sizeof(err)), 0);
    struct done_log t = {0}, big = {0};
    uint64_t t0 = monotonic_us();
    assert_int_equal(exec_sh(fx, id, "echo before; sleep 30 & sleep 30", 300, &t), 0);
    assert_int_equal(exec_sh(fx, id, "head -c 3000000 /dev/zero", 0, &big), 0);
    loop_until(fx, &t.calls, 1, 10000);
    loop_until(fx, &big.calls, 1, 10000);
    assert_true(monotonic_us() - t0 < 5u * 1000000u);
    assert_true(t.timed_out);
    assert_int_equal(t.exit_code, BOX_RUNTIME_TIMEOUT_EXIT);
    assert_string_equal(t.out, "before\n");
    assert_int_equal(big.exit_code, 0);
    assert_true(big.out_truncated);
    assert_int_equal(big.out_len, BOX_RUNTIME_OUTPUT_MAX);
    box_runtime_stop(fx->rt, id, BOX_EXEC_STOPPED);
}

static void test_stop_ends_running_commands_and_caps_concurrency(void **state)
{
    struct fixture *fx = *state;
    const char *id = "0a1b2c3d-0000-4000-8000-00000000000c";
    char err[512] = "";
    struct done_log d[BOX_RUNTIME_EXEC_MAX + 1];
    memset(d, 0, sizeof(d));
    assert_int_equal(box_runtime_start(fx->rt, "ws", id, &lim_default, err, sizeof(err)), 0);
    for (int i = 0; i < BOX_RUNTIME_EXEC_MAX; i++)
        assert_int_equal(exec_sh(fx, id, "sleep 30", 0, &d[i]), 0);
    assert_int_equal(exec_sh(fx, id, "true", 0, &d[BOX_RUNTIME_EXEC_MAX]), -1);
    assert_int_equal(errno, EAGAIN);
    box_runtime_stop(fx->rt, id, BOX_EXEC_STOPPED);
    for (int i = 0; i < BOX_RUNTIME_EXEC_MAX; i++) {
        assert_int_equal(d[i].calls, 1); /* answered at once, not left hanging */
        assert_int_equal(d[i].end, BOX_EXEC_STOPPED);
    }
    assert_int_equal(d[BOX_RUNTIME_EXEC_MAX].calls, 0);
}

static void test_idle_stop_keeps_files_and_remove_deletes_them(void **state)
{
    struct fixture *fx = *state;
    const char *id = "0a1b2c3d-0000-4000-8000-00000000000d";
    char err[512] = "";
    struct box_runtime_limits lim = {
        .name = "idle", .idle_ttl_seconds = 1, .fs_capacity_bytes = 24 << 20};
    assert_int_equal(box_runtime_start(fx->rt, "ws", id, &lim, err, sizeof(err)), 0);
    struct done_log w = {0};
    assert_int_equal(exec_sh(fx, id,
                             "echo kept > /workspace/f; "
                             "dd if=/dev/zero of=/workspace/big bs=1M count=40 2>/dev/null; "
                             "echo rc=$?; rm -f /workspace/big",
                             0, &w),
                     0);
    loop_until(fx, &w.calls, 1, 20000);
    assert_string_equal(w.out, "rc=1\n"); /* the disk holds fs_capacity_bytes, no more */
    fx->idle.calls = 0;
    loop_until(fx, &fx->idle.calls, 1, 5000);
    assert_int_equal(fx->idle.calls, 1);
    assert_string_equal(fx->idle.box_id, id);
    assert_false(box_runtime_running(fx->rt, id));
    /* Started again: the files are there. */
    assert_int_equal(box_runtime_start(fx->rt, "ws", id, &lim, err, sizeof(err)), 0);
    struct done_log r = {0};
    assert_int_equal(exec_sh(fx, id, "cat /workspace/f", 0, &r), 0);
    loop_until(fx, &r.calls, 1, 10000);
    assert_string_equal(r.out, "kept\n");
    char *dir = xasprintf("%s/boxes/%s", fx->state, id);
    assert_int_equal(access(dir, F_OK), 0);
    assert_int_equal(box_runtime_remove(fx->rt, id), 0);
    assert_int_equal(access(dir, F_OK), -1);
    free(dir);
}

/* The ext4 UUID of an image (superblock at 1024, s_uuid at offset 0x68), as hex. */
static void image_uuid(const char *path, char out[33])
{
    unsigned char u[16];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd != -1);
    assert_int_equal(pread(fd, u, sizeof(u), 1024 + 0x68), (ssize_t)sizeof(u));
    close(fd);
    for (size_t i = 0; i < sizeof(u); i++)
        snprintf(out + 2 * i, 3, "%02x", u[i]);
}

static void test_disks_are_copies_of_one_template_per_size_and_independent(void **state)
{
    struct fixture *fx = *state;
    /* Distinct in their first characters: those name the namespaces (netns.h). */
    const char *a = "1e1b2c3d-0000-4000-8000-00000000000e";
    const char *b = "1f1b2c3d-0000-4000-8000-00000000000f";
    char err[512] = "", ua[33], ub[33], ut[33];
    struct box_runtime_limits lim = {.name = "tpl", .fs_capacity_bytes = 20 << 20};
    assert_int_equal(box_runtime_start(fx->rt, "ws", a, &lim, err, sizeof(err)), 0);
    assert_int_equal(box_runtime_start(fx->rt, "ws", b, &lim, err, sizeof(err)), 0);
    /* Both disks came from the one template of that size (mkfs.ext4 would have given each a
     * fresh UUID), and the template is nothing a box can reach: it lives in the state dir. */
    char *tpl = xasprintf("%s/boxes/.disk-template-%llu.img", fx->state, 20ull << 20);
    char *ia = xasprintf("%s/boxes/%s/disk.img", fx->state, a);
    char *ib = xasprintf("%s/boxes/%s/disk.img", fx->state, b);
    image_uuid(tpl, ut);
    image_uuid(ia, ua);
    image_uuid(ib, ub);
    assert_string_equal(ua, ut);
    assert_string_equal(ub, ut);
    struct stat st;
    assert_int_equal(stat(ia, &st), 0);
    assert_int_equal(st.st_size, 20 << 20);
    assert_true(st.st_blocks * 512 < (8 << 20)); /* still sparse */
    /* Yet each is its own filesystem: what one box writes the other never sees, and each is
     * still capped at its size. */
    struct done_log w = {0}, r = {0};
    assert_int_equal(exec_sh(fx, a,
                             "echo mine > /workspace/f; "
                             "dd if=/dev/zero of=/workspace/big bs=1M count=40 2>/dev/null; "
                             "echo rc=$?",
                             0, &w),
                     0);
    loop_until(fx, &w.calls, 1, 20000);
    assert_string_equal(w.out, "rc=1\n");
    assert_int_equal(exec_sh(fx, b,
                             "cat /workspace/f 2>&1 || echo absent; df -k /workspace | "
                             "awk 'NR == 2 {print ($4 > 10000) ? \"room\" : \"full\"}'",
                             0, &r),
                     0);
    loop_until(fx, &r.calls, 1, 20000);
    assert_non_null(strstr(r.out, "absent\nroom\n"));
    box_runtime_remove(fx->rt, a);
    box_runtime_remove(fx->rt, b);
    /* At most DISK_TEMPLATES_MAX (4) sizes are kept: a fifth size evicts the least used. */
    for (int i = 0; i < 5; i++) {
        char id[64];
        snprintf(id, sizeof(id), "0a1b2c3d-0000-4000-8000-0000000001%02d", i);
        struct box_runtime_limits li = {.name = "tpl", .fs_capacity_bytes = (17 + i) << 20};
        assert_int_equal(box_runtime_start(fx->rt, "ws", id, &li, err, sizeof(err)), 0);
        box_runtime_remove(fx->rt, id);
    }
    char *dir = xasprintf("%s/boxes", fx->state);
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += strncmp(e->d_name, ".disk-template-", 15) == 0;
    if (d != NULL)
        closedir(d);
    assert_int_equal(n, 4);
    free(dir);
    free(tpl);
    free(ia);
    free(ib);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_holds_enabled_rules_placeholders_in_order),
        cmocka_unit_test(test_ca_bundle_is_system_roots_plus_our_ca_world_readable),
        cmocka_unit_test(test_remove_tree_never_follows_a_symlink_out),
    };
    const struct CMUnitTest root_tests[] = {
        cmocka_unit_test(test_exec_reports_output_and_exit_code_on_the_loop),
        cmocka_unit_test(test_timeout_and_output_cap),
        cmocka_unit_test(test_stop_ends_running_commands_and_caps_concurrency),
        cmocka_unit_test(test_idle_stop_keeps_files_and_remove_deletes_them),
        cmocka_unit_test(test_disks_are_copies_of_one_template_per_size_and_independent),
    };
    int failed = cmocka_run_group_tests_name("box_runtime", tests, NULL, NULL);
    if (geteuid() != 0) {
        printf("test_box_runtime: runtime tests SKIPPED: need root\n");
        return failed;
    }
    failed += cmocka_run_group_tests_name("box_runtime (root)", root_tests, rt_setup, rt_teardown);
    return failed;
}
