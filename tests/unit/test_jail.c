/* Unit tests for jail (issue 4): real namespaces, mounts, seccomp and cgroups on this kernel.
 * Needs root; skipped with a message otherwise. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroup.h"
#include "jail.h"
#include "util.h"

/* Host directories the tests use: not under /tmp (the jail's /tmp is private anyway, so a
 * secret under the host's /tmp would be hidden for the wrong reason). */
static char g_ws[256];    /* workspace */
static char g_state[256]; /* stands in for the daemon's state dir */
static char g_conf[300];  /* stands in for a config file holding a secret */
static char g_ca[300];    /* CA bundle */

#define SECRET "sk-test-4f1b8c2e-secret-value"
#define CA_PEM "-----BEGIN CERTIFICATE-----\nTESTBUNDLE\n-----END CERTIFICATE-----\n"

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_ws, sizeof(g_ws), "/var/tmp/authproxy-jail-ws-XXXXXX");
    snprintf(g_state, sizeof(g_state), "/var/tmp/authproxy-jail-state-XXXXXX");
    if (mkdtemp(g_ws) == NULL || mkdtemp(g_state) == NULL)
        return -1;
    char *p = xasprintf("%s/ca.key", g_state);
    write_text(p, SECRET "\n");
    free(p);
    snprintf(g_conf, sizeof(g_conf), "%s.json", g_state);
    write_text(g_conf, "{\"secrets\": {\"OPENAI_API_KEY\": \"" SECRET "\"}}\n");
    snprintf(g_ca, sizeof(g_ca), "%s/ca-bundle.pem", g_state);
    write_text(g_ca, CA_PEM);
    /* A secret in the daemon's own environment must never reach a sandbox. */
    setenv("AUTHPROXY_TEST_PARENT_SECRET", SECRET, 1);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char *cmd = xasprintf("rm -rf '%s' '%s' '%s'", g_ws, g_state, g_conf);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

/* A spec with the common fields: workspace, CA bundle, hidden state dir and config file. */
static struct jail_spec base_spec(const char *const *argv)
{
    static const char *hidden[3];
    struct jail_spec s;

    hidden[0] = g_state;
    hidden[1] = g_conf;
    hidden[2] = NULL;
    memset(&s, 0, sizeof(s));
    s.argv = argv;
    s.workspace = g_ws;
    s.ca_bundle = g_ca;
    s.hidden_paths = hidden;
    s.netns_fd = -1;
    s.timeout_ms = 20000;
    return s;
}

/* Runs spec, asserting it started. */
static void run(const struct jail_spec *s, struct jail_result *r)
{
    char err[512] = "";
    int rc = jail_run(s, NULL, 0, 0, r, err, sizeof(err));
    if (rc != 0)
        fail_msg("jail_run: %s", err);
}

static void run_sh(const char *script, struct jail_result *r)
{
    const char *argv[] = {"sh", "-c", script, NULL};
    struct jail_spec s = base_spec(argv);
    run(&s, r);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void test_env_is_built_from_scratch(void **state)
{
    (void)state;
    const char *argv[] = {"env", NULL};
    const char *env[] = {"FOO=bar baz", "HOME=/workspace/home", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    const char *expected[] = {
        "CURL_CA_BUNDLE=" JAIL_CA_BUNDLE_PATH,      "FOO=bar baz",
        "GIT_SSL_CAINFO=" JAIL_CA_BUNDLE_PATH,      "HOME=/workspace/home",
        "NODE_EXTRA_CA_CERTS=" JAIL_CA_BUNDLE_PATH, "PATH=" JAIL_DEFAULT_PATH,
        "REQUESTS_CA_BUNDLE=" JAIL_CA_BUNDLE_PATH,  "SSL_CERT_FILE=" JAIL_CA_BUNDLE_PATH,
    };
    char *lines[32];
    size_t n = 0;

    s.env = env;
    s.cwd = "/";
    run(&s, &r);
    assert_int_equal(r.status.exit_code, 0);
    for (char *line = strtok(r.out, "\n"); line != NULL && n < 32; line = strtok(NULL, "\n"))
        lines[n++] = line;
    qsort(lines, n, sizeof(lines[0]), cmp_str);
    assert_int_equal(n, ARRAY_LEN(expected));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(lines[i], expected[i]);
    jail_result_free(&r);
}

static void test_ca_bundle_is_the_system_bundle_inside(void **state)
{
    (void)state;
    struct jail_result r;

    run_sh("cat /etc/ssl/certs/ca-certificates.crt; cat \"$SSL_CERT_FILE\"; "
           "echo x >> /etc/ssl/certs/ca-certificates.crt 2>/dev/null || echo readonly",
           &r);
    assert_string_equal(r.out, CA_PEM CA_PEM "readonly\n");
    jail_result_free(&r);
}

static void test_hidden_paths_show_nothing(void **state)
{
    (void)state;
    struct jail_result r;
    char *script = xasprintf("cat '%s/ca.key' '%s' 2>/dev/null; ls -A '%s'; echo end", g_state,
                             g_conf, g_state);
    const char *argv[] = {"sh", "-c", script, NULL};
    struct jail_spec s = base_spec(argv);

    run(&s, &r);
    assert_null(strstr(r.out, SECRET));
    assert_string_equal(r.out, "end\n");
    jail_result_free(&r);
    /* Control: the same script without hiding does read the secret (the test can fail). */
    s.hidden_paths = NULL;
    run(&s, &r);
    assert_non_null(strstr(r.out, SECRET));
    jail_result_free(&r);
    free(script);
}

static void test_proc_shows_only_the_sandbox(void **state)
{
    (void)state;
    struct jail_result r;

    /* $$ is the command's pid (2, init being 1); /proc lists init, sh, ls, grep at most. */
    run_sh("echo $$; ls /proc | grep -c '^[0-9][0-9]*$'; hostname", &r);
    int pid = -1, count = -1;
    char host[64] = "";
    assert_int_equal(sscanf(r.out, "%d\n%d\n%63s", &pid, &count, host), 3);
    assert_int_equal(pid, 2);
    assert_in_range(count, 2, 4);
    assert_string_equal(host, "sandbox");
    jail_result_free(&r);
}

static void test_root_is_read_only_tmp_and_workspace_writable(void **state)
{
    (void)state;
    struct jail_result r;

    run_sh("touch /usr/jail-test 2>/dev/null || echo ro-usr; touch /etc/jail-test 2>/dev/null || "
           "echo ro-etc;"
           "touch /jail-test 2>/dev/null || echo ro-root; mkdir /var/lib/jail-test 2>/dev/null || "
           "echo ro-var;"
           "echo t > /tmp/f && cat /tmp/f; echo w > /workspace/written && echo ws-ok; pwd",
           &r);
    assert_string_equal(r.out, "ro-usr\nro-etc\nro-root\nro-var\nt\nws-ok\n/workspace\n");
    jail_result_free(&r);
    char *p = xasprintf("%s/written", g_ws);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    unlink(p);
    free(p);
    assert_int_equal(access("/usr/jail-test", F_OK), -1);
}

static void test_tmp_is_capped_at_fs_capacity(void **state)
{
    (void)state;
    const char *argv[] = {
        "sh", "-c",
        "head -c 3000000 /dev/zero > /tmp/big 2>/dev/null && echo fit || echo full;"
        "rm /tmp/big; head -c 500000 /dev/zero > /tmp/small && echo small-ok",
        NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;

    s.fs_capacity_bytes = 2u << 20;
    run(&s, &r);
    assert_string_equal(r.out, "full\n"
                               "small-ok\n");
    jail_result_free(&r);
}

static void test_output_and_exit_code_exact(void **state)
{
    (void)state;
    struct jail_result r;

    run_sh("printf 'a\\000b\\377\\n'; printf 'err\\001' >&2; exit 42", &r);
    assert_int_equal(r.status.exit_code, 42);
    assert_int_equal(r.status.signal, 0);
    assert_false(r.status.timed_out);
    assert_int_equal(r.out_len, 5);
    assert_memory_equal(r.out, "a\0b\377\n", 5);
    assert_int_equal(r.err_len, 4);
    assert_memory_equal(r.err, "err\001", 4);
    jail_result_free(&r);

    run_sh("kill -SEGV $$", &r);
    assert_int_equal(r.status.exit_code, -1);
    assert_int_equal(r.status.signal, 11);
    jail_result_free(&r);
}

static void test_stdin_round_trip(void **state)
{
    (void)state;
    const char *argv[] = {"cat", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    char err[256];
    size_t n = 300000;
    unsigned char *in = xmalloc(n);

    for (size_t i = 0; i < n; i++)
        in[i] = (unsigned char)(i * 7 + 3);
    s.want_stdin = true;
    assert_int_equal(jail_run(&s, in, n, 0, &r, err, sizeof(err)), 0);
    assert_int_equal(r.status.exit_code, 0);
    assert_int_equal(r.out_len, n);
    assert_memory_equal(r.out, in, n);
    jail_result_free(&r);
    /* A command that ignores its stdin must not SIGPIPE us. */
    const char *argv2[] = {"true", NULL};
    s.argv = argv2;
    assert_int_equal(jail_run(&s, in, n, 0, &r, err, sizeof(err)), 0);
    assert_int_equal(r.status.exit_code, 0);
    jail_result_free(&r);
    free(in);
}

static void test_output_cap(void **state)
{
    (void)state;
    const char *argv[] = {"sh", "-c", "head -c 100000 /dev/zero; echo done >&2", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    char err[256];

    assert_int_equal(jail_run(&s, NULL, 0, 1000, &r, err, sizeof(err)), 0);
    assert_int_equal(r.out_len, 1000);
    assert_true(r.out_truncated);
    assert_string_equal(r.err, "done\n");
    jail_result_free(&r);
}

static void test_timeout_kills_sleep(void **state)
{
    (void)state;
    const char *argv[] = {"sleep", "100", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    uint64_t t0 = monotonic_us();

    s.timeout_ms = 1000;
    run(&s, &r);
    uint64_t ms = (monotonic_us() - t0) / 1000;
    assert_true(r.status.timed_out);
    assert_int_equal(r.status.signal, 9);
    assert_in_range(ms, 900, 2500);
    jail_result_free(&r);
}

static void test_timeout_kills_background_children_too(void **state)
{
    (void)state;
    /* A child that double-forks away and holds stdout open: still gone at the deadline. */
    const char *argv[] = {"sh", "-c", "(sleep 100 &) ; sleep 100", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    uint64_t t0 = monotonic_us();

    s.timeout_ms = 500;
    run(&s, &r);
    assert_true(r.status.timed_out);
    assert_in_range((monotonic_us() - t0) / 1000, 400, 2500);
    jail_result_free(&r);
}

static void test_escapes_refused_with_eperm(void **state)
{
    (void)state;
    struct jail_result r;

    run_sh("python3 -c '\n"
           "import ctypes, errno, os, socket\n"
           "libc = ctypes.CDLL(None, use_errno=True)\n"
           "def e(rc): return \"ok\" if rc == 0 else errno.errorcode[ctypes.get_errno()]\n"
           "print(\"unshare\", e(libc.unshare(0x40000000)))\n"
           "print(\"unshare-user\", e(libc.unshare(0x10000000)))\n"
           "print(\"mount\", e(libc.mount(b\"none\", b\"/mnt\", b\"tmpfs\", 0, None)))\n"
           "print(\"setns\", e(libc.setns(os.open(\"/proc/self/ns/net\", os.O_RDONLY), 0)))\n"
           "print(\"clone-newnet\", e(0 if libc.syscall(56, 0x40000000 | 17, 0, 0, 0, 0) >= 0 else "
           "-1))\n"
           "for name, args in ((\"raw\", (socket.AF_INET, socket.SOCK_RAW, 1)),\n"
           "                   (\"packet\", (socket.AF_PACKET, socket.SOCK_DGRAM, 0))):\n"
           "    try:\n"
           "        socket.socket(*args); print(name, \"ok\")\n"
           "    except OSError as x:\n"
           "        print(name, errno.errorcode[x.errno])\n"
           "print(\"fork\", \"ok\" if os.fork() else os._exit(0))\n"
           "'; unshare -n true 2>/dev/null || echo unshare-cmd-refused",
           &r);
    assert_string_equal(
        r.out, "unshare EPERM\nunshare-user EPERM\nmount EPERM\nsetns EPERM\n"
               "clone-newnet EPERM\nraw EPERM\npacket EPERM\nfork ok\nunshare-cmd-refused\n");
    jail_result_free(&r);
}

static void test_no_capabilities_and_uid_switch(void **state)
{
    (void)state;
    const char *argv[] = {
        "sh", "-c",
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status;"
        "id -u; id -g; cat /root/.bashrc >/dev/null 2>&1 && echo read-root || echo no-root",
        NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;

    s.uid = 65534;
    s.gid = 65534;
    s.cwd = "/";
    run(&s, &r);
    assert_string_equal(
        r.out, "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
               "CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n"
               "Seccomp:\t2\n65534\n65534\nno-root\n");
    jail_result_free(&r);
}

static void test_fds_of_the_parent_do_not_leak(void **state)
{
    (void)state;
    int fd = open(g_conf, O_RDONLY); /* deliberately without O_CLOEXEC */
    struct jail_result r;

    assert_true(fd >= 0);
    run_sh("ls /proc/self/fd | tr '\\n' ' '", &r);
    /* stdio only (some ls versions also show their own directory fd, 3) */
    assert_true(strcmp(r.out, "0 1 2 ") == 0 || strcmp(r.out, "0 1 2 3 ") == 0);
    jail_result_free(&r);
    close(fd);
}

static void test_netns_new_or_joined(void **state)
{
    (void)state;
    const char *argv[] = {"readlink", "/proc/self/ns/net", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    char host[128] = "";
    ssize_t n = readlink("/proc/self/ns/net", host, sizeof(host) - 1);

    assert_true(n > 0);
    host[n] = '\0';
    run(&s, &r);
    assert_int_equal(r.status.exit_code, 0);
    assert_null(strstr(r.out, host)); /* -1: a new namespace */
    jail_result_free(&r);
    s.netns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    assert_true(s.netns_fd >= 0);
    run(&s, &r);
    assert_non_null(strstr(r.out, host)); /* joined the one given */
    jail_result_free(&r);
    close(s.netns_fd);
}

static void test_spawn_errors_are_reported(void **state)
{
    (void)state;
    const char *argv[] = {"no-such-command-xyz", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_proc p;
    char err[512] = "";

    /* The command's own problems (program, working directory) are told apart from the
     * sandbox's: an API answers the first with 400. */
    assert_int_equal(jail_spawn(&s, &p, err, sizeof(err)), JAIL_SPAWN_COMMAND_ERROR);
    assert_non_null(strstr(err, "cannot execute 'no-such-command-xyz'"));
    const char *argv2[] = {"true", NULL};
    s.argv = argv2;
    s.cwd = "/no-such-dir-xyz";
    assert_int_equal(jail_spawn(&s, &p, err, sizeof(err)), JAIL_SPAWN_COMMAND_ERROR);
    assert_non_null(strstr(err, "working directory '/no-such-dir-xyz'"));
    s.cwd = NULL;
    s.workspace = "/nonexistent/workspace";
    assert_int_equal(jail_spawn(&s, &p, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/workspace"));
}

/* ---- with cgroups ---- */

static struct cgroup_tree *g_tree;

static struct cgroup *make_cgroup(const char *id, const struct cgroup_limits *lim)
{
    char err[512] = "";
    struct cgroup *cg = cgroup_create(g_tree, id, lim, err, sizeof(err));
    if (cg == NULL)
        fail_msg("cgroup_create: %s", err);
    return cg;
}

static void test_memory_hog_is_oom_killed(void **state)
{
    (void)state;
    struct cgroup_limits lim = {.mem_bytes = 64u << 20, .pids_max = 64};
    struct cgroup *cg = make_cgroup("jail-test-oom", &lim);
    const char *argv[] = {"python3", "-c", "b = b'x' * (512 << 20); print('survived')", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;

    s.cgroup = cg;
    run(&s, &r);
    assert_int_equal(r.status.signal, 9);
    assert_true(r.status.oom_killed);
    assert_false(r.status.timed_out);
    assert_null(strstr(r.out, "survived"));
    jail_result_free(&r);
    /* A command within the limit runs normally in the same group afterwards. */
    const char *argv2[] = {"python3", "-c", "b = b'x' * (8 << 20); print('fine')", NULL};
    s.argv = argv2;
    run(&s, &r);
    assert_string_equal(r.out, "fine\n");
    assert_false(r.status.oom_killed);
    jail_result_free(&r);
    assert_int_equal(cgroup_destroy(cg), 0);
}

static void test_fork_bomb_is_contained(void **state)
{
    (void)state;
    struct cgroup_limits lim = {.pids_max = 40, .mem_bytes = 256u << 20};
    struct cgroup *cg = make_cgroup("jail-test-bomb", &lim);
    const char *argv[] = {"sh", "-c", "f() { f | f & }; f; sleep 2; echo survived", NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;
    const char *pdir = cgroup_path(cg, "pids");
    char *max_path = xasprintf("%s/pids.max", pdir);
    char *max = read_file(max_path, 64, NULL);

    /* Refuse to run a real fork bomb unless the limit is really in place. */
    if (max == NULL || strcmp(max, "40\n") != 0)
        fail_msg("pids.max not in place (%s)", max != NULL ? max : "unreadable");
    s.cgroup = cg;
    s.timeout_ms = 15000;
    uint64_t t0 = monotonic_us();
    run(&s, &r);
    assert_false(r.status.timed_out);
    assert_true(monotonic_us() - t0 < 10000000u);
    char *events_path = xasprintf("%s/pids.events", pdir);
    char *events = read_file(events_path, 256, NULL);
    assert_non_null(events);
    assert_true(strtoull(strchr(events, ' ') + 1, NULL, 10) > 0); /* "max N": the limit was hit */
    assert_int_equal(cgroup_nprocs(cg), 0);                       /* the whole tree is gone */
    free(events);
    free(events_path);
    free(max);
    free(max_path);
    jail_result_free(&r);
    assert_int_equal(cgroup_destroy(cg), 0);
    /* The host can still fork. */
    assert_int_equal(system("true"), 0);
}

static void test_cpu_limit_slows_a_spinner(void **state)
{
    (void)state;
    struct cgroup_limits lim = {.cpu_millicores = 100};
    struct cgroup *cg = make_cgroup("jail-test-cpu", &lim);
    /* Spin for 1 s of wall time and print the CPU time actually received. */
    const char *argv[] = {"python3", "-c",
                          "import time\nt=time.monotonic()\nwhile time.monotonic()-t<1: pass\n"
                          "print(int(time.process_time()*1000))",
                          NULL};
    struct jail_spec s = base_spec(argv);
    struct jail_result r;

    s.cgroup = cg;
    run(&s, &r);
    int cpu_ms = atoi(r.out);
    assert_in_range(cpu_ms, 1, 400); /* 0.1 CPU: ~100 ms per second; unlimited would be ~1000 */
    jail_result_free(&r);
    assert_int_equal(cgroup_destroy(cg), 0);
}

static void test_twenty_cycles_leave_nothing(void **state)
{
    (void)state;
    int before = cgroup_count(g_tree);

    for (int i = 0; i < 20; i++) {
        char id[32];
        struct cgroup_limits lim = {.cpu_millicores = 500, .mem_bytes = 64u << 20, .pids_max = 32};
        snprintf(id, sizeof(id), "jail-cycle-%d", i);
        struct cgroup *cg = make_cgroup(id, &lim);
        const char *argv[] = {"sh", "-c", "sleep 100 & echo started", NULL};
        struct jail_spec s = base_spec(argv);
        struct jail_proc p;
        struct jail_status st;
        char err[256];
        s.cgroup = cg;
        assert_int_equal(jail_spawn(&s, &p, err, sizeof(err)), 0);
        assert_int_equal(jail_wait(&p, true, &st), 1);
        jail_proc_close(&p);
        assert_int_equal(cgroup_destroy(cg), 0);
    }
    assert_int_equal(cgroup_count(g_tree), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_is_built_from_scratch),
        cmocka_unit_test(test_ca_bundle_is_the_system_bundle_inside),
        cmocka_unit_test(test_hidden_paths_show_nothing),
        cmocka_unit_test(test_proc_shows_only_the_sandbox),
        cmocka_unit_test(test_root_is_read_only_tmp_and_workspace_writable),
        cmocka_unit_test(test_tmp_is_capped_at_fs_capacity),
        cmocka_unit_test(test_output_and_exit_code_exact),
        cmocka_unit_test(test_stdin_round_trip),
        cmocka_unit_test(test_output_cap),
        cmocka_unit_test(test_timeout_kills_sleep),
        cmocka_unit_test(test_timeout_kills_background_children_too),
        cmocka_unit_test(test_escapes_refused_with_eperm),
        cmocka_unit_test(test_no_capabilities_and_uid_switch),
        cmocka_unit_test(test_fds_of_the_parent_do_not_leak),
        cmocka_unit_test(test_netns_new_or_joined),
        cmocka_unit_test(test_spawn_errors_are_reported),
    };
    const struct CMUnitTest cg_tests[] = {
        cmocka_unit_test(test_memory_hog_is_oom_killed),
        cmocka_unit_test(test_fork_bomb_is_contained),
        cmocka_unit_test(test_cpu_limit_slows_a_spinner),
        cmocka_unit_test(test_twenty_cycles_leave_nothing),
    };
    char err[512] = "";
    int failed;

    if (geteuid() != 0) {
        printf("test_jail: SKIPPED: needs root (namespaces, mounts, seccomp, cgroups)\n");
        return 0;
    }
    failed = cmocka_run_group_tests_name("jail", tests, group_setup, group_teardown);
    g_tree = cgroup_tree_open("authproxy-test", err, sizeof(err));
    if (g_tree == NULL) {
        printf("test_jail: cgroup tests SKIPPED: %s\n", err);
        return failed;
    }
    failed += cmocka_run_group_tests_name("jail+cgroup", cg_tests, group_setup, group_teardown);
    cgroup_reconcile(g_tree, NULL, 0);
    if (cgroup_tree_remove(g_tree) == -1)
        failed++;
    cgroup_tree_free(g_tree);
    return failed;
}
