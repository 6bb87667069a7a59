/* Unit tests for glob: host patterns, host normalisation, path globs (SPEC §3). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "glob.h"

/* Compiles pattern (asserting success), normalises host (asserting success) and matches. */
static bool match(const char *pattern, const char *raw_host)
{
    struct host_pattern p;
    const char *err = NULL;
    char host[256];
    uint16_t port;
    assert_int_equal(host_pattern_compile(pattern, &p, &err), 0);
    assert_int_equal(host_normalize(raw_host, strlen(raw_host), host, sizeof(host), &port), 0);
    bool m = host_pattern_match(&p, host, strlen(host));
    host_pattern_free(&p);
    return m;
}

static void assert_pattern_rejected(const char *pattern)
{
    struct host_pattern p;
    const char *err = NULL;
    if (host_pattern_compile(pattern, &p, &err) != -1)
        fail_msg("pattern \"%s\" was accepted", pattern);
    assert_non_null(err);
}

static void assert_normalizes(const char *in, const char *want, uint16_t want_port)
{
    char out[256];
    uint16_t port = 12345;
    if (host_normalize(in, strlen(in), out, sizeof(out), &port) != 0)
        fail_msg("host_normalize(\"%s\") failed", in);
    assert_string_equal(out, want);
    assert_int_equal(port, want_port);
}

static void assert_normalize_fails(const char *in)
{
    char out[256];
    uint16_t port;
    if (host_normalize(in, strlen(in), out, sizeof(out), &port) != -1)
        fail_msg("host_normalize(\"%s\") accepted it as \"%s\"", in, out);
}

static void test_exact_is_case_insensitive(void **state)
{
    (void)state;
    assert_true(match("api.openai.com", "api.openai.com"));
    assert_true(match("API.OpenAI.com", "api.openai.COM"));
    assert_false(match("api.openai.com", "api.openai.com.evil.net"));
    assert_false(match("api.openai.com", "xapi.openai.com"));
    assert_false(match("api.openai.com", "openai.com"));
}

static void test_wildcard_matches_any_depth_but_not_apex(void **state)
{
    (void)state;
    assert_true(match("*.github.com", "api.github.com"));
    assert_true(match("*.github.com", "a.b.c.github.com"));
    assert_true(match("*.GitHub.com", "Codeload.GITHUB.com"));
    assert_false(match("*.github.com", "github.com"));
    assert_false(match("*.github.com", "evilgithub.com"));
    assert_false(match("*.github.com", "github.com.evil.net"));
}

static void test_star_matches_everything(void **state)
{
    (void)state;
    assert_true(match("*", "example.com"));
    assert_true(match("*", "127.0.0.1"));
    assert_true(match("*", "[::1]"));
    assert_true(match("*", "localhost"));
}

static void test_ports_are_stripped_and_not_matched(void **state)
{
    (void)state;
    assert_normalizes("EXAMPLE.com:443", "example.com", 443);
    assert_normalizes("example.com", "example.com", 0);
    assert_true(match("example.com", "example.com:8443"));
    assert_pattern_rejected("example.com:443");
    assert_pattern_rejected("[::1]:443");
    assert_normalize_fails("example.com:0");
    assert_normalize_fails("example.com:65536");
    assert_normalize_fails("example.com:");
    assert_normalize_fails("example.com:44a");
    assert_normalizes("example.com:65535", "example.com", 65535);
}

static void test_trailing_dot_dropped(void **state)
{
    (void)state;
    assert_normalizes("Example.COM.", "example.com", 0);
    assert_normalizes("example.com.:80", "example.com", 80);
    assert_true(match("example.com.", "example.com"));
    assert_true(match("*.example.com", "www.example.com."));
    assert_normalize_fails("example.com..");
}

static void test_ipv4_literals_match_only_themselves(void **state)
{
    (void)state;
    assert_true(match("127.0.0.1", "127.0.0.1"));
    assert_true(match("127.0.0.1", "127.0.0.1:8080"));
    assert_false(match("127.0.0.1", "127.0.0.2"));
    assert_false(match("127.0.0.1", "127.0.0.10"));
    assert_false(match("10.0.0.1", "110.0.0.1"));
    assert_pattern_rejected("*.0.0.1");
}

static void test_ipv4_alternative_spellings_are_canonical(void **state)
{
    (void)state;
    /* Every resolver reads these as 127.0.0.1 / 10.0.0.1: a deny_list must see them so. */
    assert_normalizes("127.1", "127.0.0.1", 0);
    assert_normalizes("0x7f.0.0.1", "127.0.0.1", 0);
    assert_normalizes("2130706433", "127.0.0.1", 0);
    assert_normalizes("0177.0.0.1:80", "127.0.0.1", 80);
    assert_true(match("10.0.0.1", "0xa.1"));
    assert_normalize_fails("256.1.1.1");
    assert_normalize_fails("1.2.3.4.5");
    assert_normalize_fails("example.123");
    assert_normalize_fails("09.1.1.1");
}

static void test_ipv6_literals(void **state)
{
    (void)state;
    assert_normalizes("[::1]:8080", "::1", 8080);
    assert_normalizes("[::1]", "::1", 0);
    assert_normalizes("::1", "::1", 0);
    assert_normalizes("[0:0:0:0:0:0:0:1]", "::1", 0);
    assert_normalizes("[2001:DB8::1]", "2001:db8::1", 0);
    assert_normalizes("[::ffff:10.0.0.1]:443", "10.0.0.1", 443);
    assert_true(match("::1", "[::1]:8080"));
    assert_true(match("[::1]", "[0::1]"));
    assert_false(match("::1", "[::2]"));
    assert_true(match("10.0.0.1", "[::ffff:a00:1]"));
    assert_normalize_fails("[::1");
    assert_normalize_fails("[::1]x");
    assert_normalize_fails("[fe80::1%eth0]");
    assert_normalize_fails("[1.2.3.4]");
    assert_normalize_fails("[::1]:0");
    assert_pattern_rejected("*.[::1]");
}

static void test_invalid_patterns_rejected(void **state)
{
    (void)state;
    assert_pattern_rejected("");
    assert_pattern_rejected("a*.example.com");
    assert_pattern_rejected("*example.com");
    assert_pattern_rejected("*.");
    assert_pattern_rejected("example.*");
    assert_pattern_rejected("*.*.example.com");
    assert_pattern_rejected("exa mple.com");
    assert_pattern_rejected("a..b");
    assert_pattern_rejected(".example.com");
    assert_pattern_rejected("http://example.com");
    assert_pattern_rejected("example.com/path");
}

static void test_normalize_rejects_bad_input(void **state)
{
    (void)state;
    char small[8];
    uint16_t port;
    assert_normalize_fails("");
    assert_normalize_fails("exa mple.com");
    assert_normalize_fails("a\r\nb.com");
    assert_normalize_fails("user@example.com");
    assert_normalize_fails("*.example.com");
    assert_int_equal(host_normalize("example.com", 11, small, sizeof(small), &port), -1);
    /* Exactly fits. */
    assert_int_equal(host_normalize("abc.com", 7, small, sizeof(small), &port), 0);
    assert_string_equal(small, "abc.com");
    /* Embedded NUL: the length, not the NUL, bounds the input. */
    assert_int_equal(host_normalize("a.com\0b", 7, small, sizeof(small), &port), -1);
}

static void compile_ok(const char *src, struct host_pattern *p)
{
    const char *err;
    assert_int_equal(host_pattern_compile(src, p, &err), 0);
}

static bool within(const char *inner, const char *outer)
{
    struct host_pattern i, o;
    compile_ok(inner, &i);
    compile_ok(outer, &o);
    bool r = host_pattern_within(&i, &o);
    host_pattern_free(&i);
    host_pattern_free(&o);
    return r;
}

static void test_within(void **state)
{
    (void)state;
    assert_true(within("api.openai.com", "api.openai.com"));
    assert_true(within("API.openai.com", "api.openai.com"));
    assert_false(within("evil.example.com", "api.openai.com"));
    assert_true(within("api.github.com", "*.github.com"));
    assert_true(within("*.api.github.com", "*.github.com"));
    assert_true(within("*.github.com", "*.github.com"));
    assert_false(within("github.com", "*.github.com"));
    assert_false(within("*.github.com", "github.com"));
    assert_false(within("*.com", "*.github.com"));
    assert_false(within("*", "*.github.com"));
    assert_true(within("*", "*"));
    assert_true(within("anything.example", "*"));
    assert_false(within("*.evilgithub.com", "*.github.com"));
}

static void test_format(void **state)
{
    (void)state;
    struct host_pattern p;
    char buf[64];
    compile_ok("*.GitHub.com", &p);
    assert_string_equal(host_pattern_format(&p, buf, sizeof(buf)), "*.github.com");
    host_pattern_free(&p);
    compile_ok("*", &p);
    assert_string_equal(host_pattern_format(&p, buf, sizeof(buf)), "*");
    host_pattern_free(&p);
    compile_ok("[::1]", &p);
    assert_string_equal(host_pattern_format(&p, buf, sizeof(buf)), "::1");
    host_pattern_free(&p);
}

static bool pmatch(const char *pattern, const char *path)
{
    const char *err;
    assert_int_equal(path_pattern_validate(pattern, &err), 0);
    return path_pattern_match(pattern, path, strlen(path));
}

static void test_path_star_crosses_slashes(void **state)
{
    (void)state;
    assert_true(pmatch("/repos/*", "/repos/a"));
    assert_true(pmatch("/repos/*", "/repos/owner/name/pulls"));
    assert_true(pmatch("/repos/*", "/repos/"));
    assert_false(pmatch("/repos/*", "/repos"));
    assert_false(pmatch("/repos/*", "/user/repos/x"));
    assert_true(pmatch("/v1/*/chat", "/v1/a/b/chat"));
    assert_false(pmatch("/v1/*/chat", "/v1/a/b/chat/x"));
    assert_true(pmatch("*", "/anything/at/all"));
    assert_true(pmatch("/*", "/"));
    assert_true(pmatch("*.json", "/a/b.json"));
}

static void test_path_exact_and_case(void **state)
{
    (void)state;
    assert_true(pmatch("/user", "/user"));
    assert_false(pmatch("/user", "/user/"));
    assert_false(pmatch("/user", "/User"));
    assert_false(pmatch("/user", "/users"));
}

static void test_path_query_is_left_to_caller(void **state)
{
    (void)state;
    /* The caller passes the length up to '?': the query never takes part. */
    const char *target = "/user?admin=1";
    assert_true(path_pattern_match("/user", target, strlen("/user")));
    assert_false(path_pattern_match("/user", target, strlen(target)));
}

static void test_path_dot_segments_only_match_catch_all(void **state)
{
    (void)state;
    assert_false(pmatch("/repos/*", "/repos/../user"));
    assert_false(pmatch("/repos/*", "/repos/%2e%2e/user"));
    assert_false(pmatch("/repos/*", "/repos/.%2E/user"));
    assert_false(pmatch("/repos/*", "/repos/..%2fuser"));
    assert_false(pmatch("/repos/*", "/repos/..\\user"));
    assert_false(pmatch("/repos/*", "/repos/./x"));
    assert_false(pmatch("/repos/*", "/repos/x/.."));
    assert_true(pmatch("/repos/*", "/repos/..x/y"));
    assert_true(pmatch("/repos/*", "/repos/x.y/.z"));
    assert_true(pmatch("*", "/repos/../user"));
    assert_true(pmatch("/*", "/repos/../user"));
}

static void test_path_validation(void **state)
{
    (void)state;
    const char *err = NULL;
    assert_int_equal(path_pattern_validate("", &err), -1);
    assert_int_equal(path_pattern_validate("repos/*", &err), -1);
    assert_int_equal(path_pattern_validate("/a?b=1", &err), -1);
    assert_non_null(strstr(err, "query"));
    assert_int_equal(path_pattern_validate("/a\r\n", &err), -1);
    assert_int_equal(path_pattern_validate("/a b", &err), -1);
    assert_int_equal(path_pattern_validate("/a#x", &err), -1);
    assert_int_equal(path_pattern_validate("/ok/*/fine", &err), 0);
    assert_int_equal(path_pattern_validate("*", &err), 0);
}

static void test_path_no_exponential_backtracking(void **state)
{
    (void)state;
    char path[4097];
    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    /* Would take astronomically long with a naive recursive matcher. */
    assert_false(pmatch("/*a*a*a*a*a*a*a*a*a*a*a*a*b", path));
    assert_true(pmatch("/*a*a*a*a*a*a*a*a*a*a*a*a*a", path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_is_case_insensitive),
        cmocka_unit_test(test_wildcard_matches_any_depth_but_not_apex),
        cmocka_unit_test(test_star_matches_everything),
        cmocka_unit_test(test_ports_are_stripped_and_not_matched),
        cmocka_unit_test(test_trailing_dot_dropped),
        cmocka_unit_test(test_ipv4_literals_match_only_themselves),
        cmocka_unit_test(test_ipv4_alternative_spellings_are_canonical),
        cmocka_unit_test(test_ipv6_literals),
        cmocka_unit_test(test_invalid_patterns_rejected),
        cmocka_unit_test(test_normalize_rejects_bad_input),
        cmocka_unit_test(test_within),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_path_star_crosses_slashes),
        cmocka_unit_test(test_path_exact_and_case),
        cmocka_unit_test(test_path_query_is_left_to_caller),
        cmocka_unit_test(test_path_dot_segments_only_match_catch_all),
        cmocka_unit_test(test_path_validation),
        cmocka_unit_test(test_path_no_exponential_backtracking),
    };
    return cmocka_run_group_tests_name("glob", tests, NULL, NULL);
}
