/* Out of memory is fail-closed (issue 6): every allocation of authproxy goes through util.h's x*
 * wrappers (and the jansson allocator util installs), which abort the process when memory runs
 * out, so a worker can never go on with a half-built request or policy and forward it. Checked
 * in a child process under a small address-space limit. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "util.h"

/* Runs fn in a child limited to 256 MiB of address space; returns its wait status. */
static int run_limited(void (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit rl = {256u << 20, 256u << 20};
        setrlimit(RLIMIT_AS, &rl);
        setrlimit(RLIMIT_CORE, &(struct rlimit){0, 0});
        fn();
        _exit(0); /* reached only if the allocation "succeeded" */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

static void big_xmalloc(void)
{
    volatile char *p = xmalloc((size_t)1 << 30);
    p[0] = 1;
}

static void big_xcalloc(void)
{
    volatile char *p = xcalloc((size_t)1 << 20, 1 << 10);
    p[0] = 1;
}

static void big_xstrndup(void)
{
    /* a string longer than the limit cannot exist; ask for a copy of a huge prefix instead */
    volatile char *p = xrealloc(NULL, (size_t)3 << 29);
    p[0] = 1;
}

static void big_json(void)
{
    util_install_zeroing_json_allocator();
    json_t *a = json_array();
    for (;;)
        json_array_append_new(a, json_string("............................................"));
}

static void assert_aborted(int status)
{
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void test_allocation_failure_aborts(void **state)
{
    (void)state;
#ifdef __SANITIZE_ADDRESS__
    /* ASan reserves terabytes of shadow address space and has its own out-of-memory report:
     * an address-space limit tests ASan, not us. The release build runs this test. */
    skip();
#endif
    assert_aborted(run_limited(big_xmalloc));
    assert_aborted(run_limited(big_xcalloc));
    assert_aborted(run_limited(big_xstrndup));
    assert_aborted(run_limited(big_json));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocation_failure_aborts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
