/* Unit tests for config: the standalone configuration file (SPEC §8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

/* Every secret value in these tests contains this marker; no error may. */
#define MARK "SECRET"

static void print_errs(const struct errlist *e)
{
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "    error: %s\n", e->msgs[i]);
}

static struct config *parse(const char *text, struct errlist *errs)
{
    return config_parse(text, strlen(text), "test.json", 5, errs);
}

static struct config *parse_ok(const char *text)
{
    struct errlist errs = {0};
    struct config *c = parse(text, &errs);
    if (c == NULL || errs.n != 0) {
        print_errs(&errs);
        fail_msg("config rejected");
    }
    errlist_free(&errs);
    return c;
}

/* Asserts text is rejected with a message starting "test.json: " that contains n1 and n2, and
 * that no message holds a secret value. */
static void expect_error(const char *text, const char *n1, const char *n2)
{
    struct errlist errs = {0};
    struct config *c = parse(text, &errs);
    bool found = false;
    if (c != NULL) {
        config_free(c);
        fail_msg("config accepted, expected an error containing \"%s\"", n1);
    }
    for (size_t i = 0; i < errs.n; i++) {
        if (strncmp(errs.msgs[i], "test.json: ", 11) != 0) {
            print_errs(&errs);
            fail_msg("error %zu does not start with the file name", i);
        }
        if (strstr(errs.msgs[i], MARK) != NULL) {
            print_errs(&errs);
            fail_msg("error %zu holds a secret value", i);
        }
        found = found || (strstr(errs.msgs[i], n1) && (n2 == NULL || strstr(errs.msgs[i], n2)));
    }
    if (!found) {
        print_errs(&errs);
        fail_msg("no error contains \"%s\" / \"%s\"", n1, n2 ? n2 : "");
    }
    errlist_free(&errs);
}

static const char *rule_header(const struct config *c, const char *host, const char *name)
{
    struct policy_request_decision d;
    policy_decide_request(c->policy, host, "/", 1, true, &d);
    if (d.action != POLICY_INJECT)
        fail_msg("%s: expected INJECT, got %d", host, (int)d.action);
    for (size_t i = 0; i < d.rule->n_headers; i++)
        if (strcmp(d.rule->headers[i].name, name) == 0)
            return d.rule->headers[i].value;
    return NULL;
}

static void test_full_config(void **state)
{
    (void)state;
    char ca[] = "/tmp/authproxy-test-ca-XXXXXX";
    int fd = mkstemp(ca);
    assert_true(fd >= 0);
    close(fd);
    char *text =
        xasprintf("{\"secrets\": {\"OPENAI_API_KEY\": \"sk-" MARK "\","
                  "              \"INTERNAL\": {\"value\": \"int-" MARK
                  "\", \"configs\": [{\"host\": \"*.corp.example\"}]}},"
                  " \"proxy_config\": {\"rules\": ["
                  "   {\"name\": \"openai\", \"match_hosts\": [\"api.openai.com\"], \"headers\": ["
                  "     {\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": "
                  "\"Bearer {OPENAI_API_KEY}\"}]},"
                  "   {\"name\": \"corp\", \"match_hosts\": [\"git.corp.example\"], \"headers\": ["
                  "     {\"name\": \"X-Token\", \"type\": \"workspace_secret\", \"value\": "
                  "\"{INTERNAL}\"}]}],"
                  "   \"no_proxy\": [\"localhost\"], \"access_control\": {}},"
                  " \"dns_remap\": {\"API.OpenAI.com.\": \"127.0.0.1:8443\", \"mirror.example\": "
                  "\"mirror.internal\","
                  "               \"v6.example\": \"[::1]:9000\"},"
                  " \"upstream_ca_file\": \"%s\","
                  " \"limits\": {\"max_header_bytes\": 2048, \"header_timeout_ms\": 1000,"
                  "            \"idle_timeout_ms\": 2000, \"connect_timeout_ms\": 3000}}",
                  ca);
    struct config *c = parse_ok(text);
    assert_int_equal(policy_version(c->policy), 5);
    assert_string_equal(rule_header(c, "api.openai.com", "Authorization"), "Bearer sk-" MARK);
    assert_string_equal(rule_header(c, "git.corp.example", "X-Token"), "int-" MARK);

    const struct dns_remap_entry *e = config_find_remap(c, "api.openai.com");
    assert_non_null(e);
    assert_string_equal(e->host, "127.0.0.1");
    assert_int_equal(e->port, 8443);
    e = config_find_remap(c, "mirror.example");
    assert_non_null(e);
    assert_string_equal(e->host, "mirror.internal");
    assert_int_equal(e->port, 0);
    e = config_find_remap(c, "v6.example");
    assert_non_null(e);
    assert_string_equal(e->host, "::1");
    assert_int_equal(e->port, 9000);
    assert_null(config_find_remap(c, "other.example"));

    assert_string_equal(c->upstream_ca_file, ca);
    assert_int_equal(c->limits.max_header_bytes, 2048);
    assert_int_equal(c->limits.header_timeout_ms, 1000);
    assert_int_equal(c->limits.idle_timeout_ms, 2000);
    assert_int_equal(c->limits.connect_timeout_ms, 3000);
    config_free(c);
    free(text);
    unlink(ca);
}

static void assert_limits_equal(const struct config_limits *a, const struct config_limits *b)
{
    assert_int_equal(a->max_header_bytes, b->max_header_bytes);
    assert_int_equal(a->header_timeout_ms, b->header_timeout_ms);
    assert_int_equal(a->idle_timeout_ms, b->idle_timeout_ms);
    assert_int_equal(a->connect_timeout_ms, b->connect_timeout_ms);
}

static void test_defaults(void **state)
{
    (void)state;
    struct config_limits d;
    config_limits_default(&d);
    assert_int_equal(d.max_header_bytes, 65536);
    assert_int_equal(d.header_timeout_ms, 30000);
    assert_int_equal(d.idle_timeout_ms, 300000);
    assert_int_equal(d.connect_timeout_ms, 10000);

    struct config *c = parse_ok("{}");
    assert_non_null(c->policy);
    assert_null(c->upstream_ca_file);
    assert_int_equal(c->n_remaps, 0);
    assert_limits_equal(&c->limits, &d);
    struct policy_host_decision hd;
    policy_decide_host(c->policy, "anything.example", &hd);
    assert_int_equal(hd.verdict, POLICY_HOST_INSPECT);
    config_free(c);

    c = config_new_default(9);
    assert_int_equal(policy_version(c->policy), 9);
    assert_limits_equal(&c->limits, &d);
    config_free(c);

    /* Partial limits keep the other defaults. */
    c = parse_ok("{\"limits\": {\"idle_timeout_ms\": 5}}");
    assert_int_equal(c->limits.idle_timeout_ms, 5);
    assert_int_equal(c->limits.max_header_bytes, 65536);
    config_free(c);
}

static void test_secret_well_known_default_binding(void **state)
{
    (void)state;
    /* OPENAI_API_KEY without configs may only go to api.openai.com. */
    expect_error("{\"secrets\": {\"OPENAI_API_KEY\": \"sk-" MARK "\"},"
                 " \"proxy_config\": {\"rules\": [{\"name\": \"steal\", \"match_hosts\": "
                 "[\"evil.example.com\"],"
                 "  \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\","
                 "                 \"value\": \"Bearer {OPENAI_API_KEY}\"}]}]}}",
                 "test.json: proxy_config.rules[0].headers[0].value: secret OPENAI_API_KEY",
                 "\"evil.example.com\"");
    /* Explicit configs replace the default. */
    struct config *c =
        parse_ok("{\"secrets\": {\"OPENAI_API_KEY\": {\"value\": \"sk-" MARK
                 "\", \"configs\": [{\"host\": \"*\"}]}},"
                 " \"proxy_config\": {\"rules\": [{\"name\": \"gw\", \"match_hosts\": "
                 "[\"llm-gateway.example\"],"
                 "  \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\","
                 "                 \"value\": \"Bearer {OPENAI_API_KEY}\"}]}]}}");
    assert_string_equal(rule_header(c, "llm-gateway.example", "Authorization"), "Bearer sk-" MARK);
    config_free(c);
    /* A secret bound by configs is held to it. */
    expect_error("{\"secrets\": {\"T\": {\"value\": \"t-" MARK
                 "\", \"configs\": [{\"host\": \"a.example\"}]}},"
                 " \"proxy_config\": {\"rules\": [{\"name\": \"r\", \"match_hosts\": "
                 "[\"a.example\", \"b.example\"],"
                 "  \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
                 "\"{T}\"}]}]}}",
                 "secret T may only be sent to a.example", "\"b.example\"");
}

static void test_error_top_level(void **state)
{
    (void)state;
    expect_error("{\"secret\": {}}", "test.json: secret: unknown key", "secrets");
    expect_error("[1]", "test.json: expected a JSON object at the top level", NULL);
    expect_error("{\"proxy_config\": {\"rules\": 1}}",
                 "test.json: proxy_config.rules: expected an array", NULL);
    expect_error("{\"upstream_ca_file\": \"/nonexistent/ca.pem\"}",
                 "test.json: upstream_ca_file: cannot read /nonexistent/ca.pem", NULL);
    expect_error("{\"upstream_ca_file\": 1}", "test.json: upstream_ca_file: expected", NULL);
}

static void test_error_invalid_json(void **state)
{
    (void)state;
    expect_error("{\n  \"secrets\": {\n    \"A\": \"x\",,\n  }\n}",
                 "test.json: invalid JSON at line 3", "column");
    /* A syntax error right inside a secret: jansson's "near '<token>'" must not leak it. */
    expect_error("{\"secrets\": {\"A\": \"sk-" MARK "\x01\"}}", "test.json: invalid JSON at line 1",
                 NULL);
    expect_error("{\"secrets\": {\"A\": \"sk-" MARK "", "test.json: invalid JSON", NULL);
    expect_error("{\"a\": 1, \"a\": 2}", "test.json: invalid JSON", NULL);
    expect_error("", "test.json: invalid JSON", NULL);
}

static void test_error_secrets(void **state)
{
    (void)state;
    expect_error("{\"secrets\": []}", "test.json: secrets: expected an object", NULL);
    expect_error("{\"secrets\": {\"A\": 5}}",
                 "test.json: secrets.A: expected a string or an object", NULL);
    expect_error("{\"secrets\": {\"A\": {\"value\": \"v-" MARK "\", \"hosts\": []}}}",
                 "test.json: secrets.A.hosts: unknown key", NULL);
    expect_error("{\"secrets\": {\"A\": {\"configs\": [{\"host\": \"a.example\"}]}}}",
                 "test.json: secrets.A.value: required", NULL);
    expect_error("{\"secrets\": {\"A\": {\"value\": \"v-" MARK "\", \"configs\": []}}}",
                 "test.json: secrets.A.configs: expected a non-empty array", NULL);
    expect_error("{\"secrets\": {\"A\": {\"value\": \"v-" MARK
                 "\", \"configs\": [{\"host\": \"a:1\"}]}}}",
                 "test.json: secrets.A.configs[0].host: invalid host pattern", NULL);
    expect_error("{\"secrets\": {\"A\": {\"value\": \"v-" MARK
                 "\", \"configs\": [\"a.example\"]}}}",
                 "test.json: secrets.A.configs[0]: expected an object", NULL);
    expect_error("{\"secrets\": {\"bad-name\": \"v-" MARK "\"}}",
                 "test.json: secrets.bad-name: invalid secret name", NULL);
    expect_error("{\"secrets\": {\"a.b\": \"v-" MARK "\"}}",
                 "test.json: secrets[\"a.b\"]: invalid secret name", NULL);
    expect_error("{\"secrets\": {\"A\": \"\"}}", "test.json: secrets.A: the value is empty", NULL);
}

static void test_error_dns_remap(void **state)
{
    (void)state;
    expect_error("{\"dns_remap\": []}", "test.json: dns_remap: expected an object", NULL);
    expect_error("{\"dns_remap\": {\"a.example\": \"127.0.0.1:70000\"}}",
                 "test.json: dns_remap[\"a.example\"]: expected \"host\", \"host:port\"", "70000");
    expect_error("{\"dns_remap\": {\"a.example\": 8443}}",
                 "test.json: dns_remap[\"a.example\"]: expected a string", NULL);
    expect_error("{\"dns_remap\": {\"a.example:443\": \"127.0.0.1\"}}",
                 "test.json: dns_remap[\"a.example:443\"]: the key must be a host name", NULL);
    expect_error("{\"dns_remap\": {\"*.example\": \"127.0.0.1\"}}",
                 "test.json: dns_remap[\"*.example\"]: the key must be a host name", NULL);
    expect_error("{\"dns_remap\": {\"a.example\": \"127.0.0.1\", \"A.example.\": \"127.0.0.2\"}}",
                 "test.json: dns_remap[\"A.example.\"]", "twice");
}

static void test_error_limits(void **state)
{
    (void)state;
    expect_error("{\"limits\": {\"max_header_bytes\": 100}}",
                 "test.json: limits.max_header_bytes: expected an integer from 1024 to 1048576",
                 "100");
    expect_error("{\"limits\": {\"max_header_bytes\": 2000000}}",
                 "test.json: limits.max_header_bytes", NULL);
    expect_error("{\"limits\": {\"header_timeout_ms\": 0}}", "test.json: limits.header_timeout_ms",
                 "found 0");
    expect_error("{\"limits\": {\"idle_timeout_ms\": -5}}", "test.json: limits.idle_timeout_ms",
                 NULL);
    expect_error("{\"limits\": {\"connect_timeout_ms\": \"10s\"}}",
                 "test.json: limits.connect_timeout_ms", "found a string");
    expect_error("{\"limits\": {\"max_body_bytes\": 1}}",
                 "test.json: limits.max_body_bytes: unknown key", NULL);
    expect_error("{\"limits\": 5}", "test.json: limits: expected an object", NULL);
}

static void test_no_secret_value_in_errors(void **state)
{
    (void)state;
    /* A deliberately bad config full of secrets and mistakes around them. */
    struct errlist errs = {0};
    const char *text =
        "{\"secrets\": {\"OPENAI_API_KEY\": \"sk-" MARK "-1\","
        "              \"CRLF\": \"a-" MARK "\\r\\nX: y\","
        "              \"B\": {\"value\": \"b-" MARK
        "\", \"configs\": [{\"host\": \"b.example\"}], \"x\": 1},"
        "              \"GITHUB_TOKEN\": {\"value\": 5}},"
        " \"proxy_config\": {\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"evil.example\"], "
        "\"headers\": ["
        "   {\"name\": \"A\", \"type\": \"workspace_secret\", \"value\": \"{OPENAI_API_KEY}\"},"
        "   {\"name\": \"B\", \"type\": \"workspace_secret\", \"value\": \"{CRLF}\"},"
        "   {\"name\": \"C\", \"type\": \"workspace_secret\", \"value\": \"{B}{GITHUB_TOKEN}\"},"
        "   {\"name\": \"D\", \"type\": \"opaque\", \"value\": \"d-" MARK "\\u0001\"}]}]},"
        " \"dns_remap\": {\"x.example\": \"bad host\"}, \"limits\": {\"max_header_bytes\": 1}}";
    struct config *c = parse(text, &errs);
    assert_null(c);
    assert_true(errs.n >= 7);
    for (size_t i = 0; i < errs.n; i++)
        if (strstr(errs.msgs[i], MARK) != NULL) {
            print_errs(&errs);
            fail_msg("error %zu holds a secret value", i);
        }
    errlist_free(&errs);
}

/* Runs config_load_file with stderr captured; returns what was logged (caller frees). */
static char *load_capturing_stderr(const char *path, struct config **out, struct errlist *errs)
{
    char logpath[] = "/tmp/authproxy-test-log-XXXXXX";
    int logfd = mkstemp(logpath);
    assert_true(logfd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(logfd, 2);
    *out = config_load_file(path, 1, errs);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(logfd);
    char *logged = read_file(logpath, 1 << 20, NULL);
    unlink(logpath);
    assert_non_null(logged);
    return logged;
}

static void test_load_file_and_permission_warning(void **state)
{
    (void)state;
    char path[] = "/tmp/authproxy-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text =
        "{\"secrets\": {\"A\": \"a-" MARK "\"}, \"proxy_config\": {\"rules\": ["
        "{\"name\": \"r\", \"match_hosts\": [\"a.example\"], \"headers\": [{\"name\": "
        "\"X\", \"type\": \"workspace_secret\", \"value\": \"{A}\"}]}]}}";
    assert_int_equal(write_all(fd, text, strlen(text)), 0);
    close(fd);

    struct errlist errs = {0};
    struct config *c;
    assert_int_equal(chmod(path, 0644), 0);
    char *logged = load_capturing_stderr(path, &c, &errs);
    assert_non_null(c);
    assert_int_equal(errs.n, 0);
    assert_non_null(strstr(logged, "warn"));
    assert_non_null(strstr(logged, path));
    assert_null(strstr(logged, MARK));
    assert_string_equal(rule_header(c, "a.example", "X"), "a-" MARK);
    config_free(c);
    free(logged);

    assert_int_equal(chmod(path, 0600), 0);
    logged = load_capturing_stderr(path, &c, &errs);
    assert_non_null(c);
    assert_null(strstr(logged, path));
    config_free(c);
    free(logged);
    unlink(path);

    c = config_load_file("/nonexistent/authproxy.json", 1, &errs);
    assert_null(c);
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.msgs[0], "/nonexistent/authproxy.json: cannot read"));
    errlist_free(&errs);
}

/* examples/demo.json is what `make run` serves. Its upstream_ca_file (var/demo/ca.crt, made by
 * scripts/run-demo.sh) is relative to the project root, so the test loads it from a scratch
 * directory that has such a file. Unit tests run from the project root. */
static void test_demo_config_is_valid(void **state)
{
    (void)state;
    struct errlist errs = {0};
    char cwd[4096], dir[] = "/tmp/authproxy-test-demo-XXXXXX";
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    char *demo = xasprintf("%s/examples/demo.json", cwd);
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chdir(dir), 0);
    assert_int_equal(mkdir("var", 0700), 0);
    assert_int_equal(mkdir("var/demo", 0700), 0);
    int fd = open("var/demo/ca.crt", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
    struct config *c = config_load_file(demo, 1, &errs);
    unlink("var/demo/ca.crt");
    rmdir("var/demo");
    rmdir("var");
    assert_int_equal(chdir(cwd), 0);
    rmdir(dir);
    if (c == NULL) {
        print_errs(&errs);
        fail_msg("examples/demo.json is rejected");
    }
    assert_string_equal(rule_header(c, "api.example.test", "Authorization"),
                        "Bearer demo-token-not-a-real-secret");
    struct policy_request_decision d;
    policy_decide_request(c->policy, "uploads.example.test", "/get", 4, true, &d);
    assert_int_equal(d.action, POLICY_INJECT);
    assert_string_equal(d.rule->name, "demo-httpbin");
    assert_string_equal(d.rule->headers[0].value, "injected-by-authproxy");
    struct policy_host_decision hd;
    policy_decide_host(c->policy, "localhost", &hd);
    assert_int_equal(hd.verdict, POLICY_HOST_BYPASS);
    policy_decide_host(c->policy, "evil.example.test", &hd);
    assert_int_equal(hd.verdict, POLICY_HOST_DENY);
    assert_string_equal(hd.decided_by, "deny_list");
    const struct dns_remap_entry *e = config_find_remap(c, "api.example.test");
    assert_non_null(e);
    assert_string_equal(e->host, "127.0.0.1");
    assert_int_equal(e->port, 9443);
    assert_string_equal(c->upstream_ca_file, "var/demo/ca.crt");
    config_free(c);
    free(demo);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_secret_well_known_default_binding),
        cmocka_unit_test(test_error_top_level),
        cmocka_unit_test(test_error_invalid_json),
        cmocka_unit_test(test_error_secrets),
        cmocka_unit_test(test_error_dns_remap),
        cmocka_unit_test(test_error_limits),
        cmocka_unit_test(test_no_secret_value_in_errors),
        cmocka_unit_test(test_load_file_and_permission_warning),
        cmocka_unit_test(test_demo_config_is_valid),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
