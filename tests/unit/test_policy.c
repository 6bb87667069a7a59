/* Unit tests for policy: compiling proxy_config (validation, secret resolution and host binding)
 * and the decision order of SPEC §3. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "policy.h"

/* ---- a secret source for the tests ---- */

struct tsecret {
    const char *name;
    const char *value;
    const char *bind[3]; /* explicit binding; none: the well-known default (or unrestricted) */
    struct host_pattern compiled[3];
    size_t n;
};

/* A real service-account key (gcp rules are checked with gcp_sa_parse when compiled), made in
 * setup_secrets. */
static char *sa_json;

static struct tsecret tsecrets[] = {
    {.name = "DEMO_TOKEN", .value = "demo-SECRET-1"},
    {.name = "A", .value = "alpha-SECRET"},
    {.name = "B", .value = "beta-SECRET"},
    {.name = "OPENAI_API_KEY", .value = "sk-openai-SECRET"},
    {.name = "ANTHROPIC_API_KEY", .value = "sk-ant-SECRET"},
    {.name = "GITHUB_TOKEN", .value = "ghp_SECRET"},
    {.name = "BOUND", .value = "bound-SECRET", .bind = {"*.example.com", "example.org"}},
    {.name = "CRLF", .value = "evil-SECRET\r\nX-Injected: 1"},
    {.name = "AWS_ID", .value = "AKIA-SECRET"},
    {.name = "AWS_KEY", .value = "aws-key-SECRET"},
    {.name = "SA", .value = NULL}, /* sa_json, set by setup_secrets */
};

/* A service-account JSON with a fresh 2048-bit RSA key, as Google issues them (PKCS#8 PEM). */
static char *make_service_account_json(void)
{
    EVP_PKEY *key = EVP_RSA_gen(2048);
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    assert_non_null(key);
    assert_int_equal(PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    long len = BIO_get_mem_data(bio, &pem);
    json_t *o = json_pack("{s:s, s:s, s:s%}", "type", "service_account", "client_email",
                          "svc@p.iam.gserviceaccount.com", "private_key", pem, (size_t)len);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    BIO_free(bio);
    EVP_PKEY_free(key);
    return text;
}

static const char *tsecret_get(void *ctx, const char *key, const struct host_pattern **hosts,
                               size_t *n_hosts)
{
    (void)ctx;
    for (size_t i = 0; i < sizeof(tsecrets) / sizeof(tsecrets[0]); i++)
        if (strcmp(tsecrets[i].name, key) == 0) {
            *hosts = tsecrets[i].compiled;
            *n_hosts = tsecrets[i].n;
            return tsecrets[i].value;
        }
    return NULL;
}

static const struct secret_source tsource = {tsecret_get, NULL};

static int setup_secrets(void **state)
{
    (void)state;
    sa_json = make_service_account_json();
    for (size_t i = 0; i < sizeof(tsecrets) / sizeof(tsecrets[0]); i++)
        if (strcmp(tsecrets[i].name, "SA") == 0)
            tsecrets[i].value = sa_json;
    for (size_t i = 0; i < sizeof(tsecrets) / sizeof(tsecrets[0]); i++) {
        struct tsecret *s = &tsecrets[i];
        const char *hosts[3];
        size_t n = 0;
        const char *err;
        while (n < 3 && s->bind[n] != NULL) {
            hosts[n] = s->bind[n];
            n++;
        }
        if (n == 0)
            n = policy_default_secret_hosts(s->name, hosts, 3);
        for (size_t j = 0; j < n; j++)
            if (host_pattern_compile(hosts[j], &s->compiled[j], &err) != 0)
                return -1;
        s->n = n;
    }
    return 0;
}

static int teardown_secrets(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(tsecrets) / sizeof(tsecrets[0]); i++)
        for (size_t j = 0; j < tsecrets[i].n; j++)
            host_pattern_free(&tsecrets[i].compiled[j]);
    free(sa_json);
    return 0;
}

/* ---- helpers ---- */

static void print_errs(const struct errlist *e)
{
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "    error: %s\n", e->msgs[i]);
}

/* Compiles JSON text; asserts it parses as JSON. Errors go to errs. */
static struct policy *compile_errs(const char *text, struct errlist *errs)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (j == NULL)
        fail_msg("test JSON does not parse: %s (line %d)", jerr.text, jerr.line);
    struct policy *p = policy_compile(j, &tsource, "proxy_config", 7, errs);
    json_decref(j);
    return p;
}

/* Compiles JSON text that must be valid. */
static struct policy *compile_ok(const char *text)
{
    struct errlist errs = {0};
    struct policy *p = compile_errs(text, &errs);
    if (p == NULL || errs.n != 0) {
        print_errs(&errs);
        fail_msg("config rejected");
    }
    errlist_free(&errs);
    return p;
}

/* Asserts the config is rejected and some message contains every one of the needles (up to
 * three; NULL ends). Also asserts no message holds any secret value. */
static void expect_error(const char *text, const char *n1, const char *n2, const char *n3)
{
    struct errlist errs = {0};
    struct policy *p = compile_errs(text, &errs);
    if (p != NULL) {
        policy_unref(p);
        fail_msg("config accepted, expected an error containing \"%s\"", n1);
    }
    assert_true(errs.n > 0);
    bool found = false;
    for (size_t i = 0; i < errs.n && !found; i++)
        found = strstr(errs.msgs[i], n1) && (!n2 || strstr(errs.msgs[i], n2)) &&
                (!n3 || strstr(errs.msgs[i], n3));
    for (size_t i = 0; i < errs.n; i++)
        if (strstr(errs.msgs[i], "SECRET") != NULL) {
            print_errs(&errs);
            fail_msg("an error message holds a secret value");
        }
    if (!found) {
        print_errs(&errs);
        fail_msg("no error contains \"%s\" / \"%s\" / \"%s\"", n1, n2 ? n2 : "", n3 ? n3 : "");
    }
    errlist_free(&errs);
}

static const struct policy_rule *inject_rule(const struct policy *p, const char *host,
                                             const char *path)
{
    struct policy_request_decision d;
    policy_decide_request(p, host, path, strlen(path), true, &d);
    if (d.action != POLICY_INJECT)
        fail_msg("%s%s: expected INJECT, got action %d", host, path, (int)d.action);
    return d.rule;
}

static enum policy_request_action action_for(const struct policy *p, const char *host,
                                             const char *path, bool tls)
{
    struct policy_request_decision d;
    policy_decide_request(p, host, path, strlen(path), tls, &d);
    return d.action;
}

static const char *header_value(const struct policy_rule *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

/* ---- decisions ---- */

static void test_rules_first_match_wins_in_order(void **state)
{
    (void)state;
    struct policy *p = compile_ok(
        "{\"rules\": ["
        " {\"name\": \"wide\", \"match_hosts\": [\"*.example.com\"], \"match_paths\": [\"/a/*\"],"
        "  \"headers\": [{\"name\": \"X-Rule\", \"type\": \"plaintext\", \"value\": \"wide\"}]},"
        " {\"name\": \"api\", \"match_hosts\": [\"api.example.com\"],"
        "  \"headers\": [{\"name\": \"X-Rule\", \"type\": \"plaintext\", \"value\": \"api\"}]},"
        " {\"name\": \"late\", \"match_hosts\": [\"api.example.com\"],"
        "  \"headers\": [{\"name\": \"X-Rule\", \"type\": \"plaintext\", \"value\": \"late\"}]}"
        "]}");
    assert_string_equal(inject_rule(p, "api.example.com", "/a/x")->name, "wide");
    assert_string_equal(inject_rule(p, "api.example.com", "/b")->name, "api");
    assert_string_equal(inject_rule(p, "www.example.com", "/a/deep/path")->name, "wide");
    assert_int_equal(action_for(p, "www.example.com", "/b", true), POLICY_FORWARD);
    assert_int_equal(action_for(p, "example.com", "/a/x", true), POLICY_FORWARD);
    policy_unref(p);
}

static void test_disabled_rules_are_skipped(void **state)
{
    (void)state;
    struct policy *p = compile_ok(
        "{\"rules\": ["
        " {\"name\": \"off\", \"enabled\": false, \"match_hosts\": [\"api.example.com\"],"
        "  \"headers\": [{\"name\": \"X-Rule\", \"type\": \"plaintext\", \"value\": \"off\"}]},"
        " {\"name\": \"on\", \"enabled\": true, \"match_hosts\": [\"api.example.com\"],"
        "  \"headers\": [{\"name\": \"X-Rule\", \"type\": \"plaintext\", \"value\": \"on\"}]},"
        " {\"name\": \"off2\", \"enabled\": false, \"match_hosts\": [\"cb.example.com\"]}"
        "],"
        " \"callbacks\": [{\"match_hosts\": [\"cb.example.com\"], \"url\": "
        "\"https://auth.example/x\"}]}");
    assert_string_equal(inject_rule(p, "api.example.com", "/")->name, "on");
    /* A disabled rule for the host does not keep the callback away. */
    assert_int_equal(action_for(p, "cb.example.com", "/", true), POLICY_CALLBACK);
    policy_unref(p);
}

static void test_rule_for_host_suppresses_callbacks_even_on_path_mismatch(void **state)
{
    (void)state;
    struct policy *p = compile_ok(
        "{\"rules\": [{\"name\": \"gh\", \"match_hosts\": [\"api.github.com\"],"
        "  \"match_paths\": [\"/repos/*\"],"
        "  \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\","
        "                \"value\": \"Bearer {GITHUB_TOKEN}\"}]}],"
        " \"callbacks\": ["
        "  {\"match_hosts\": [\"*.github.com\"], \"url\": \"https://auth.example/first\"},"
        "  {\"match_hosts\": [\"*\"], \"url\": \"https://auth.example/second\"}]}");
    assert_int_equal(action_for(p, "api.github.com", "/repos/x/y", true), POLICY_INJECT);
    assert_int_equal(action_for(p, "api.github.com", "/user", true), POLICY_FORWARD);

    struct policy_request_decision d;
    policy_decide_request(p, "uploads.github.com", "/", 1, true, &d);
    assert_int_equal(d.action, POLICY_CALLBACK);
    assert_string_equal(d.callback->url, "https://auth.example/first");
    assert_int_equal(d.callback->ttl_seconds, 300);
    policy_decide_request(p, "other.example", "/", 1, true, &d);
    assert_int_equal(d.action, POLICY_CALLBACK);
    assert_string_equal(d.callback->url, "https://auth.example/second");
    policy_unref(p);
}

static void test_access_control_and_no_proxy(void **state)
{
    (void)state;
    struct policy_host_decision d;
    struct policy *p = compile_ok(
        "{\"no_proxy\": [\"localhost\", \"127.0.0.1\", \"internal.example.com\"],"
        " \"access_control\": {\"allow_list\": [\"api.openai.com\", \"*.github.com\", "
        "\"github.com\","
        "                                      \"localhost\", \"internal.example.com\"],"
        "                      \"deny_list\": [\"evil.github.com\", \"internal.example.com\"]}}");
    /* deny beats allow */
    policy_decide_host(p, "evil.github.com", &d);
    assert_int_equal(d.verdict, POLICY_HOST_DENY);
    assert_string_equal(d.decided_by, "deny_list");
    /* a non-empty allow_list refuses everything else */
    policy_decide_host(p, "example.net", &d);
    assert_int_equal(d.verdict, POLICY_HOST_DENY);
    assert_string_equal(d.decided_by, "allow_list");
    policy_decide_host(p, "api.github.com", &d);
    assert_int_equal(d.verdict, POLICY_HOST_INSPECT);
    assert_null(d.decided_by);
    /* no_proxy hosts are still under access_control */
    policy_decide_host(p, "localhost", &d);
    assert_int_equal(d.verdict, POLICY_HOST_BYPASS);
    assert_string_equal(d.decided_by, "no_proxy");
    policy_decide_host(p, "127.0.0.1", &d);
    assert_int_equal(d.verdict, POLICY_HOST_DENY);
    assert_string_equal(d.decided_by, "allow_list");
    policy_decide_host(p, "internal.example.com", &d);
    assert_int_equal(d.verdict, POLICY_HOST_DENY);
    assert_string_equal(d.decided_by, "deny_list");
    policy_unref(p);

    /* Without an allow_list, everything not denied is allowed; no_proxy bypasses. */
    p = compile_ok(
        "{\"no_proxy\": [\"127.0.0.1\"], \"access_control\": {\"deny_list\": [\"*.bad\"]}}");
    policy_decide_host(p, "127.0.0.1", &d);
    assert_int_equal(d.verdict, POLICY_HOST_BYPASS);
    policy_decide_host(p, "x.bad", &d);
    assert_int_equal(d.verdict, POLICY_HOST_DENY);
    policy_decide_host(p, "good.example", &d);
    assert_int_equal(d.verdict, POLICY_HOST_INSPECT);
    policy_unref(p);
}

static void test_plaintext_refused_unless_allowed(void **state)
{
    (void)state;
    struct policy_request_decision d;
    struct policy *p = compile_ok(
        "{\"rules\": ["
        " {\"name\": \"tls-only\", \"match_hosts\": [\"a.example\"],"
        "  \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": "
        "\"{A}\"}]},"
        " {\"name\": \"plain-ok\", \"allow_plaintext\": true, \"match_hosts\": [\"b.example\"],"
        "  \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": "
        "\"{B}\"}]}],"
        " \"callbacks\": ["
        "  {\"match_hosts\": [\"c.example\"], \"url\": \"https://auth.example/\"},"
        "  {\"match_hosts\": [\"d.example\"], \"url\": \"http://auth.example/\", "
        "\"allow_plaintext\": true}]}");
    policy_decide_request(p, "a.example", "/", 1, false, &d);
    assert_int_equal(d.action, POLICY_REFUSE_PLAINTEXT);
    assert_string_equal(d.rule->name, "tls-only");
    assert_int_equal(action_for(p, "a.example", "/", true), POLICY_INJECT);
    assert_int_equal(action_for(p, "b.example", "/", false), POLICY_INJECT);
    policy_decide_request(p, "c.example", "/", 1, false, &d);
    assert_int_equal(d.action, POLICY_REFUSE_PLAINTEXT);
    assert_non_null(d.callback);
    assert_string_equal(d.rule->name, "callbacks");
    assert_int_equal(d.rule->n_headers, 0);
    assert_int_equal(action_for(p, "c.example", "/", true), POLICY_CALLBACK);
    assert_int_equal(action_for(p, "d.example", "/", false), POLICY_CALLBACK);
    /* Nothing to inject: plain HTTP is simply forwarded. */
    assert_int_equal(action_for(p, "e.example", "/", false), POLICY_FORWARD);
    policy_unref(p);
}

static void test_empty_policy_forwards(void **state)
{
    (void)state;
    struct policy_host_decision hd;
    struct policy *p = policy_new_empty(3);
    assert_int_equal(policy_version(p), 3);
    policy_decide_host(p, "anything.example", &hd);
    assert_int_equal(hd.verdict, POLICY_HOST_INSPECT);
    assert_int_equal(action_for(p, "anything.example", "/", false), POLICY_FORWARD);
    policy_unref(p);

    struct errlist errs = {0};
    p = policy_compile(NULL, &tsource, NULL, 1, &errs);
    assert_non_null(p);
    assert_int_equal(errs.n, 0);
    policy_unref(p);
}

static void test_refcount(void **state)
{
    (void)state;
    struct policy *p = compile_ok("{\"rules\": []}");
    assert_int_equal(policy_version(p), 7);
    assert_ptr_equal(policy_ref(p), p);
    policy_unref(p);
    /* Still alive: ASan would flag this use if the first unref had freed it. */
    assert_int_equal(action_for(p, "x.example", "/", true), POLICY_FORWARD);
    policy_unref(p);
}

/* ---- header values and secrets ---- */

static void test_header_templates_resolve(void **state)
{
    (void)state;
    struct policy *p = compile_ok(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"api.example.com\"], \"headers\": ["
        " {\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": \"Bearer "
        "{DEMO_TOKEN}\"},"
        " {\"name\": \"X-Both\", \"type\": \"workspace_secret\", \"value\": \"{A}:{B}/{A}\"},"
        " {\"name\": \"X-Dollar\", \"type\": \"workspace_secret\", \"value\": \"k=${B}\"},"
        " {\"name\": \"X-Plain\", \"type\": \"plaintext\", \"value\": \"{A} stays literal\"},"
        " {\"name\": \"X-Opaque\", \"type\": \"opaque\", \"value\": \"write-only\"}]}]}");
    const struct policy_rule *r = inject_rule(p, "api.example.com", "/v1");
    assert_int_equal(r->n_headers, 5);
    assert_string_equal(r->headers[0].name, "Authorization");
    assert_string_equal(header_value(r, "Authorization"), "Bearer demo-SECRET-1");
    assert_string_equal(header_value(r, "X-Both"), "alpha-SECRET:beta-SECRET/alpha-SECRET");
    assert_string_equal(header_value(r, "X-Dollar"), "k=beta-SECRET");
    assert_string_equal(header_value(r, "X-Plain"), "{A} stays literal");
    assert_string_equal(header_value(r, "X-Opaque"), "write-only");
    policy_unref(p);
}

static void test_secret_binding_well_known_defaults(void **state)
{
    (void)state;
    /* OPENAI_API_KEY has no configs: it defaults to api.openai.com. */
    expect_error(
        "{\"rules\": [{\"name\": \"steal\", \"match_hosts\": [\"evil.example.com\"], \"headers\": ["
        " {\"name\": \"Authorization\", \"type\": \"workspace_secret\","
        "  \"value\": \"Bearer {OPENAI_API_KEY}\"}]}]}",
        "proxy_config.rules[0].headers[0].value", "OPENAI_API_KEY", "evil.example.com");
    /* Every pattern must lie within the binding, not just one. */
    expect_error("{\"rules\": [{\"name\": \"mixed\", \"match_hosts\": [\"api.openai.com\", "
                 "\"*.openai.com\"],"
                 " \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\","
                 "  \"value\": \"Bearer {OPENAI_API_KEY}\"}]}]}",
                 "OPENAI_API_KEY", "\"*.openai.com\"", NULL);
    expect_error("{\"rules\": [{\"name\": \"gh\", \"match_hosts\": [\"*.com\"], \"headers\": ["
                 " {\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": "
                 "\"{GITHUB_TOKEN}\"}]}]}",
                 "GITHUB_TOKEN", "*.com", NULL);
    expect_error("{\"rules\": [{\"name\": \"ant\", \"match_hosts\": [\"*\"], \"headers\": ["
                 " {\"name\": \"x-api-key\", \"type\": \"workspace_secret\", \"value\": "
                 "\"{ANTHROPIC_API_KEY}\"}]}]}",
                 "ANTHROPIC_API_KEY", "\"*\"", NULL);

    struct policy *p =
        compile_ok("{\"rules\": ["
                   " {\"name\": \"openai\", \"match_hosts\": [\"API.OpenAI.com\"], \"headers\": ["
                   "  {\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": "
                   "\"Bearer {OPENAI_API_KEY}\"}]},"
                   " {\"name\": \"gh\", \"match_hosts\": [\"github.com\", \"*.github.com\", "
                   "\"api.github.com\"], \"headers\": ["
                   "  {\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": "
                   "\"token {GITHUB_TOKEN}\"}]},"
                   " {\"name\": \"anywhere\", \"match_hosts\": [\"*\"], \"headers\": ["
                   "  {\"name\": \"X-Demo\", \"type\": \"workspace_secret\", \"value\": "
                   "\"{DEMO_TOKEN}\"}]}]}");
    assert_string_equal(header_value(inject_rule(p, "api.openai.com", "/v1/chat"), "Authorization"),
                        "Bearer sk-openai-SECRET");
    assert_string_equal(header_value(inject_rule(p, "codeload.github.com", "/"), "Authorization"),
                        "token ghp_SECRET");
    policy_unref(p);
}

static void test_secret_binding_explicit(void **state)
{
    (void)state;
    struct policy *p = compile_ok("{\"rules\": [{\"name\": \"b\", \"match_hosts\": "
                                  "[\"api.example.com\", \"*.x.example.com\", \"example.org\"],"
                                  " \"headers\": [{\"name\": \"Authorization\", \"type\": "
                                  "\"workspace_secret\", \"value\": \"{BOUND}\"}]}]}");
    policy_unref(p);
    expect_error("{\"rules\": [{\"name\": \"b\", \"match_hosts\": [\"example.com\"],"
                 " \"headers\": [{\"name\": \"Authorization\", \"type\": \"workspace_secret\", "
                 "\"value\": \"{BOUND}\"}]}]}",
                 "secret BOUND may only be sent to *.example.com, example.org", "\"example.com\"",
                 NULL);
    /* Legacy inject_headers are held to the same binding. */
    expect_error("{\"rules\": [{\"name\": \"legacy\", \"match_hosts\": [\"evil.example.net\"],"
                 " \"inject_headers\": {\"Authorization\": \"Bearer ${OPENAI_API_KEY}\"}}]}",
                 "proxy_config.rules[0].inject_headers.Authorization", "OPENAI_API_KEY", NULL);
}

static void test_legacy_inject_headers(void **state)
{
    (void)state;
    struct policy *p = compile_ok(
        "{\"rules\": [{\"name\": \"anthropic-api\", \"match_hosts\": [\"api.anthropic.com\"],"
        " \"inject_headers\": {\"x-api-key\": \"${ANTHROPIC_API_KEY}\", \"anthropic-version\": "
        "\"2023-06-01\","
        "                      \"X-Braces\": \"{not a reference}\"}}]}");
    const struct policy_rule *r = inject_rule(p, "api.anthropic.com", "/v1/messages");
    assert_int_equal(r->n_headers, 3);
    assert_string_equal(header_value(r, "x-api-key"), "sk-ant-SECRET");
    assert_string_equal(header_value(r, "anthropic-version"), "2023-06-01");
    assert_string_equal(header_value(r, "X-Braces"), "{not a reference}");
    policy_unref(p);
    expect_error("{\"rules\": [{\"name\": \"l\", \"match_hosts\": [\"a.example\"],"
                 " \"inject_headers\": {\"Authorization\": \"Bearer ${NOPE}\"}}]}",
                 "proxy_config.rules[0].inject_headers.Authorization",
                 "unknown workspace secret NOPE", NULL);
}

static void test_config_upgrade_converts_legacy(void **state)
{
    (void)state;
    json_t *legacy = json_loads(
        "{\"rules\": [{\"name\": \"o\", \"match_hosts\": [\"api.openai.com\"],"
        " \"inject_headers\": {\"Authorization\": \"Bearer ${OPENAI_API_KEY}\", \"X-V\": \"1\"}}],"
        " \"no_proxy\": [\"localhost\"]}",
        0, NULL);
    json_t *up = policy_config_upgrade(legacy);
    json_t *rule = json_array_get(json_object_get(up, "rules"), 0);
    assert_null(json_object_get(rule, "inject_headers"));
    json_t *h = json_object_get(rule, "headers");
    assert_int_equal(json_array_size(h), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(h, 0), "type")),
                        "workspace_secret");
    assert_string_equal(json_string_value(json_object_get(json_array_get(h, 0), "value")),
                        "Bearer {OPENAI_API_KEY}");
    assert_string_equal(json_string_value(json_object_get(json_array_get(h, 1), "type")),
                        "plaintext");
    /* The original is untouched, and the upgraded form compiles to the same headers. */
    assert_non_null(
        json_object_get(json_array_get(json_object_get(legacy, "rules"), 0), "inject_headers"));
    struct errlist errs = {0};
    struct policy *p = policy_compile(up, &tsource, "proxy_config", 1, &errs);
    assert_non_null(p);
    assert_string_equal(header_value(inject_rule(p, "api.openai.com", "/"), "Authorization"),
                        "Bearer sk-openai-SECRET");
    policy_unref(p);
    json_decref(up);
    json_decref(legacy);
}

static void test_env_vars_stored(void **state)
{
    (void)state;
    size_t n;
    struct policy *p = compile_ok("{\"rules\": [{\"name\": \"gh\", \"match_hosts\": "
                                  "[\"api.github.com\"], \"match_paths\": [],"
                                  " \"env_vars\": {\"GH_TOKEN\": \"placeholder\"}}]}");
    const struct policy_rule *r = policy_rules(p, &n);
    assert_int_equal(n, 1);
    assert_int_equal(r[0].n_env_vars, 1);
    assert_string_equal(r[0].env_vars[0].name, "GH_TOKEN");
    assert_string_equal(r[0].env_vars[0].value, "placeholder");
    assert_int_equal(r[0].n_headers, 0);
    policy_unref(p);
}

static void test_aws_and_gcp_rules(void **state)
{
    (void)state;
    size_t n;
    struct policy *p = compile_ok(
        "{\"rules\": ["
        " {\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"
        "   \"access_key_id\": {\"type\": \"workspace_secret\", \"value\": \"{AWS_ID}\"},"
        "   \"secret_access_key\": {\"type\": \"opaque\", \"value\": \"opaque-key\"}}},"
        " {\"name\": \"gcp\", \"type\": \"gcp\", \"gcp\": {"
        "   \"service_account_json\": {\"type\": \"workspace_secret\", \"value\": \"{SA}\"}}}]}");
    const struct policy_rule *r = policy_rules(p, &n);
    assert_int_equal(n, 2);
    assert_int_equal(r[0].type, POLICY_RULE_AWS);
    assert_string_equal(r[0].aws.access_key_id, "AKIA-SECRET");
    assert_string_equal(r[0].aws.secret_access_key, "opaque-key");
    assert_null(r[0].aws.session_token);
    assert_int_equal(r[1].type, POLICY_RULE_GCP);
    assert_string_equal(r[1].gcp.service_account_json, sa_json);
    assert_int_equal(r[1].gcp.n_scopes, 1);
    assert_string_equal(r[1].gcp.scopes[0], "https://www.googleapis.com/auth/cloud-platform");
    /* Built-in host matching. */
    assert_ptr_equal(inject_rule(p, "s3.us-east-1.amazonaws.com", "/b/k"), &r[0]);
    assert_ptr_equal(inject_rule(p, "storage.googleapis.com", "/"), &r[1]);
    assert_int_equal(action_for(p, "amazonaws.com", "/", true), POLICY_FORWARD);
    policy_unref(p);

    expect_error("{\"rules\": [{\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"
                 " \"access_key_id\": {\"type\": \"plaintext\", \"value\": \"AKIA\"},"
                 " \"secret_access_key\": {\"type\": \"opaque\", \"value\": \"k\"}}}]}",
                 "proxy_config.rules[0].aws.access_key_id.type", "\"plaintext\" is not accepted",
                 NULL);
    expect_error("{\"rules\": [{\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"
                 " \"access_key_id\": {\"type\": \"opaque\", \"value\": \"AKIA\"}}}]}",
                 "proxy_config.rules[0].aws.secret_access_key", "missing", NULL);
    expect_error("{\"rules\": [{\"name\": \"aws\", \"type\": \"aws\"}]}",
                 "proxy_config.rules[0].aws", "required", NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"g\", \"type\": \"gcp\", \"gcp\": {"
        " \"service_account_json\": {\"type\": \"workspace_secret\", \"value\": \"{A}\"}}}]}",
        "proxy_config.rules[0].gcp.service_account_json", "service account JSON", NULL);
    /* The fields are there but the key is not a key: refused when applied, not per request. */
    expect_error("{\"rules\": [{\"name\": \"g\", \"type\": \"gcp\", \"gcp\": {"
                 " \"service_account_json\": {\"type\": \"opaque\", \"value\": "
                 "\"{\\\"client_email\\\": \\\"a@b.c\\\", \\\"private_key\\\": \\\"PEM-SECRET\\\"}\"}}}]}",
                 "proxy_config.rules[0].gcp.service_account_json", "private_key", NULL);
    expect_error("{\"rules\": [{\"name\": \"g\", \"type\": \"gcp\", \"gcp\": {"
                 " \"service_account_json\": {\"type\": \"workspace_secret\", \"value\": \"{SA}\"},"
                 " \"scopes\": [\"has space\"]}}]}",
                 "proxy_config.rules[0].gcp.scopes[0]", "OAuth scope", NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"g\", \"type\": \"gcp\", \"gcp\": {"
        " \"service_account_json\": {\"type\": \"opaque\", \"value\": \"{}\"}, \"scopes\": []}}]}",
        "proxy_config.rules[0].gcp.scopes", "non-empty", NULL);
    /* A provider credential is held to its secret's binding against the built-in hosts. */
    expect_error("{\"rules\": [{\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"
                 " \"access_key_id\": {\"type\": \"workspace_secret\", \"value\": \"{BOUND}\"},"
                 " \"secret_access_key\": {\"type\": \"opaque\", \"value\": \"k\"}}}]}",
                 "proxy_config.rules[0].aws.access_key_id.value", "BOUND", "*.amazonaws.com");
}

/* ---- validation: one test per error class, each naming the JSON path ---- */

static void test_error_unknown_keys(void **state)
{
    (void)state;
    expect_error("{\"rulez\": []}", "proxy_config.rulez: unknown key", "rules", NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"], \"headerz\": []}]}",
        "proxy_config.rules[0].headerz: unknown key", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"plaintext\", \"value\": \"v\", "
                 "\"extra\": 1}]}]}",
                 "proxy_config.rules[0].headers[0].extra: unknown key", NULL, NULL);
    expect_error("{\"access_control\": {\"allow\": []}}",
                 "proxy_config.access_control.allow: unknown key", NULL, NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"https://x.example/\","
        " \"ttl\": 60}]}",
        "proxy_config.callbacks[0].ttl: unknown key", NULL, NULL);
}

static void test_error_wrong_shapes(void **state)
{
    (void)state;
    expect_error("[]", "proxy_config: expected an object", NULL, NULL);
    expect_error("{\"rules\": {}}", "proxy_config.rules: expected an array", NULL, NULL);
    expect_error("{\"rules\": [\"r\"]}", "proxy_config.rules[0]: expected a rule object", NULL,
                 NULL);
    expect_error("{\"rules\": [{\"match_hosts\": [\"a.example\"]}]}",
                 "proxy_config.rules[0].name: expected a non-empty string", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"\", \"match_hosts\": [\"a.example\"]}]}",
                 "proxy_config.rules[0].name: expected a non-empty string", NULL, NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"enabled\": \"yes\", \"match_hosts\": [\"a.example\"]}]}",
        "proxy_config.rules[0].enabled: expected a boolean", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"allow_plaintext\": 1, \"match_hosts\": "
                 "[\"a.example\"]}]}",
                 "proxy_config.rules[0].allow_plaintext: expected a boolean", NULL, NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"type\": \"oauth\", \"match_hosts\": [\"a.example\"]}]}",
        "proxy_config.rules[0].type: expected \"headers\", \"aws\" or \"gcp\", found \"oauth\"",
        NULL, NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"], \"headers\": {}}]}",
        "proxy_config.rules[0].headers: expected an array", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"env_vars\": {\"GH_TOKEN\": 1}}]}",
                 "proxy_config.rules[0].env_vars.GH_TOKEN: expected a string", NULL, NULL);
    expect_error("{\"no_proxy\": \"localhost\"}", "proxy_config.no_proxy: expected an array", NULL,
                 NULL);
    expect_error("{\"access_control\": {\"deny_list\": \"x\"}}",
                 "proxy_config.access_control.deny_list: expected an array", NULL, NULL);
}

static void test_error_host_patterns(void **state)
{
    (void)state;
    expect_error("{\"rules\": [{\"name\": \"r\"}]}", "proxy_config.rules[0].match_hosts: required",
                 NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": []}]}",
                 "proxy_config.rules[0].match_hosts: expected at least one host pattern", NULL,
                 NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"ok.example\", \"api.*.com\"]}]}",
        "proxy_config.rules[0].match_hosts[1]: invalid host pattern \"api.*.com\"", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example:443\"]}]}",
                 "proxy_config.rules[0].match_hosts[0]", "port", NULL);
    expect_error("{\"no_proxy\": [\"localhost\", 5]}",
                 "proxy_config.no_proxy[1]: expected a non-empty string", NULL, NULL);
    expect_error("{\"access_control\": {\"allow_list\": [\"\"]}}",
                 "proxy_config.access_control.allow_list[0]", NULL, NULL);
}

static void test_error_path_patterns(void **state)
{
    (void)state;
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"], "
                 "\"match_paths\": [\"v1/*\"]}]}",
                 "proxy_config.rules[0].match_paths[0]: invalid path pattern \"v1/*\"", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"], "
                 "\"match_paths\": [\"/a?b\"]}]}",
                 "proxy_config.rules[0].match_paths[0]", "query", NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"], "
                 "\"match_paths\": \"/a\"}]}",
                 "proxy_config.rules[0].match_paths: expected an array", NULL, NULL);
}

static void test_error_header_type(void **state)
{
    (void)state;
    expect_error(
        "{\"rules\": [{\"name\": \"ok\", \"match_hosts\": [\"a.example\"]},"
        " {\"name\": \"r\", \"match_hosts\": [\"b.example\"],"
        "  \"headers\": [{\"name\": \"X\", \"type\": \"foo\", \"value\": \"v\"}]}]}",
        "proxy_config.rules[1].headers[0].type: expected \"workspace_secret\", \"plaintext\" "
        "or \"opaque\", found \"foo\"",
        NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"b.example\"],"
                 "  \"headers\": [{\"name\": \"X\", \"value\": \"v\"}]}]}",
                 "proxy_config.rules[0].headers[0].type: expected a non-empty string", NULL, NULL);
}

static void test_error_header_name(void **state)
{
    (void)state;
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
        " \"headers\": [{\"name\": \"Bad Name\", \"type\": \"plaintext\", \"value\": \"v\"}]}]}",
        "proxy_config.rules[0].headers[0].name", "not an HTTP token", NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X:\", \"type\": \"plaintext\", \"value\": \"v\"}]}]}",
                 "proxy_config.rules[0].headers[0].name", "not an HTTP token", NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"Host\", \"type\": \"plaintext\", \"value\": "
                 "\"x.example\"}]}]}",
                 "proxy_config.rules[0].headers[0].name", "cannot be injected", NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
        " \"headers\": [{\"name\": \"X-A\", \"type\": \"plaintext\", \"value\": \"1\"},"
        "               {\"name\": \"x-a\", \"type\": \"plaintext\", \"value\": \"2\"}]}]}",
        "proxy_config.rules[0].headers", "given twice", NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [], \"inject_headers\": {}}]}",
                 "proxy_config.rules[0]", "not both", NULL);
}

static void test_error_header_value(void **state)
{
    (void)state;
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"plaintext\", \"value\": "
                 "\"a\\r\\nEvil: 1\"}]}]}",
                 "proxy_config.rules[0].headers[0].value", "control character", NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"opaque\", \"value\": \"a\\nb\"}]}]}",
                 "proxy_config.rules[0].headers[0].value", "control character", NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
                 "\"{A}\\r\\n\"}]}]}",
                 "proxy_config.rules[0].headers[0].value", "control character", NULL);
    /* After resolution too: the secret holds CR LF. The message names it, not its value. */
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
                 "\"Bearer {CRLF}\"}]}]}",
                 "proxy_config.rules[0].headers[0].value", "secret CRLF holds a control character",
                 NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"plaintext\", \"value\": 5}]}]}",
                 "proxy_config.rules[0].headers[0].value: expected a string, found an integer",
                 NULL, NULL);
}

static void test_error_templates(void **state)
{
    (void)state;
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
                 "\"Bearer {NOPE}\"}]}]}",
                 "proxy_config.rules[0].headers[0].value: unknown workspace secret NOPE", NULL,
                 NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
                 "\"Bearer {A\"}]}]}",
                 "proxy_config.rules[0].headers[0].value: unterminated '{' at character 8", NULL,
                 NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
        " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": \"{1A}\"}]}]}",
        "proxy_config.rules[0].headers[0].value: invalid secret reference", NULL, NULL);
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
        " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": \"{}\"}]}]}",
        "proxy_config.rules[0].headers[0].value: invalid secret reference", NULL, NULL);
    expect_error("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a.example\"],"
                 " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
                 "\"fixed\"}]}]}",
                 "proxy_config.rules[0].headers[0].value", "at least one {KEY}", NULL);
    /* Disabled rules are validated too: the config is still wrong. */
    expect_error(
        "{\"rules\": [{\"name\": \"r\", \"enabled\": false, \"match_hosts\": [\"a.example\"],"
        " \"headers\": [{\"name\": \"X\", \"type\": \"workspace_secret\", \"value\": "
        "\"{NOPE}\"}]}]}",
        "proxy_config.rules[0].headers[0].value: unknown workspace secret NOPE", NULL, NULL);
}

static void test_error_callbacks(void **state)
{
    (void)state;
    expect_error("{\"callbacks\": [{\"match_hosts\": [], \"url\": \"https://x.example/\"}]}",
                 "proxy_config.callbacks[0].match_hosts: expected at least one host pattern", NULL,
                 NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"ftp://x.example/\"}]}",
        "proxy_config.callbacks[0].url", "http:// or https://", NULL);
    expect_error("{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": "
                 "\"https://u:p@x.example/\"}]}",
                 "proxy_config.callbacks[0].url", "user information", NULL);
    expect_error("{\"callbacks\": [{\"match_hosts\": [\"a.example\"]}]}",
                 "proxy_config.callbacks[0].url: required", NULL, NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"https://x.example/\","
        " \"ttl_seconds\": 30}]}",
        "proxy_config.callbacks[0].ttl_seconds: expected an integer from 60 to 3600, found 30",
        NULL, NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"https://x.example/\","
        " \"ttl_seconds\": 3601}]}",
        "proxy_config.callbacks[0].ttl_seconds", "found 3601", NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"https://x.example/\","
        " \"ttl_seconds\": \"300\"}]}",
        "proxy_config.callbacks[0].ttl_seconds", "found a string", NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"https://x.example/\","
        " \"full_request\": \"true\"}]}",
        "proxy_config.callbacks[0].full_request: expected a boolean", NULL, NULL);
    expect_error(
        "{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"https://x.example/\","
        " \"request_headers\": [{\"name\": \"X-S\", \"type\": \"workspace_secret\", \"value\": "
        "\"{A}\"}]}]}",
        "proxy_config.callbacks[0].request_headers[0].type", "not allowed here", NULL);

    struct policy *p = compile_ok("{\"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": "
                                  "\"https://auth.example:8443/cb?x=1\","
                                  " \"ttl_seconds\": 60, \"full_request\": true,"
                                  " \"request_headers\": [{\"name\": \"X-Shared-Secret\", "
                                  "\"type\": \"opaque\", \"value\": \"s3\"},"
                                  "                       {\"name\": \"X-Plain\", \"type\": "
                                  "\"plaintext\", \"value\": \"p\"}]}]}");
    size_t n;
    const struct policy_callback *cb = policy_callbacks(p, &n);
    assert_int_equal(n, 1);
    assert_int_equal(cb->ttl_seconds, 60);
    assert_true(cb->full_request);
    assert_int_equal(cb->n_request_headers, 2);
    assert_string_equal(cb->request_headers[0].value, "s3");
    policy_unref(p);
}

static void test_all_problems_reported_at_once(void **state)
{
    (void)state;
    struct errlist errs = {0};
    struct policy *p =
        compile_errs("{\"rules\": [{\"name\": \"r\", \"match_hosts\": [\"a:1\"],"
                     "  \"headers\": [{\"name\": \"X\", \"type\": \"foo\", \"value\": \"v\"}]}],"
                     " \"no_proxy\": [\"*.\"], \"bogus\": true,"
                     " \"callbacks\": [{\"match_hosts\": [\"a.example\"], \"url\": \"x\"}]}",
                     &errs);
    assert_null(p);
    assert_int_equal(errs.n, 5);
    errlist_free(&errs);
}

static void test_no_secret_value_in_errors(void **state)
{
    (void)state;
    /* Every secret of the test source contains "SECRET"; expect_error asserts no message holds
     * it. Here: many secret-related mistakes at once. */
    struct errlist errs = {0};
    struct policy *p = compile_errs(
        "{\"rules\": ["
        " {\"name\": \"a\", \"match_hosts\": [\"evil.example\"], \"headers\": ["
        "  {\"name\": \"Authorization\", \"type\": \"workspace_secret\", \"value\": \"Bearer "
        "{OPENAI_API_KEY}\"},"
        "  {\"name\": \"X-Crlf\", \"type\": \"workspace_secret\", \"value\": \"{CRLF}\"},"
        "  {\"name\": \"X-Bad\", \"type\": \"opaque\", \"value\": \"opaque-SECRET\\n\"},"
        "  {\"name\": \"X-Bad2\", \"type\": \"plaintext\", \"value\": \"plain-SECRET\\r\"},"
        "  {\"name\": \"X-Bound\", \"type\": \"workspace_secret\", \"value\": "
        "\"{BOUND}{GITHUB_TOKEN}\"}]},"
        " {\"name\": \"b\", \"type\": \"aws\", \"aws\": {"
        "  \"access_key_id\": {\"type\": \"plaintext\", \"value\": \"AKIA-SECRET\"},"
        "  \"secret_access_key\": {\"type\": \"opaque\", \"value\": \"aws-SECRET\\r\\n\"}}},"
        " {\"name\": \"c\", \"type\": \"gcp\", \"gcp\": {"
        "  \"service_account_json\": {\"type\": \"opaque\", \"value\": \"{\\\"SECRET\\\": 1\"}}}]}",
        &errs);
    assert_null(p);
    assert_true(errs.n >= 7);
    for (size_t i = 0; i < errs.n; i++)
        if (strstr(errs.msgs[i], "SECRET") != NULL) {
            print_errs(&errs);
            fail_msg("error %zu holds a secret value", i);
        }
    errlist_free(&errs);
}

static void test_default_secret_hosts(void **state)
{
    (void)state;
    const char *out[4];
    assert_int_equal(policy_default_secret_hosts("OPENAI_API_KEY", out, 4), 1);
    assert_string_equal(out[0], "api.openai.com");
    assert_int_equal(policy_default_secret_hosts("ANTHROPIC_API_KEY", out, 4), 1);
    assert_string_equal(out[0], "api.anthropic.com");
    assert_int_equal(policy_default_secret_hosts("GH_TOKEN", out, 4), 2);
    assert_string_equal(out[0], "github.com");
    assert_string_equal(out[1], "*.github.com");
    assert_int_equal(policy_default_secret_hosts("GITHUB_TOKEN", out, 1), 1);
    assert_int_equal(policy_default_secret_hosts("MY_TOKEN", out, 4), 0);
    assert_int_equal(policy_default_secret_hosts("openai_api_key", out, 4), 0);
}

static void test_error_helpers(void **state)
{
    (void)state;
    char buf[80], *s;
    assert_string_equal(policy_quote("a\"b\\c\n", buf, sizeof(buf)), "\"a\\\"b\\\\c?\"");
    policy_quote("0123456789012345678901234567890123456789012345678901234567890123456789", buf,
                 sizeof(buf));
    assert_true(strlen(buf) < sizeof(buf));
    assert_non_null(strstr(buf, "...\""));
    s = policy_path_key("secrets", "OPENAI_API_KEY");
    assert_string_equal(s, "secrets.OPENAI_API_KEY");
    free(s);
    s = policy_path_key("dns_remap", "api.openai.com");
    assert_string_equal(s, "dns_remap[\"api.openai.com\"]");
    free(s);
    s = policy_path_key("", "bogus");
    assert_string_equal(s, "bogus");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_first_match_wins_in_order),
        cmocka_unit_test(test_disabled_rules_are_skipped),
        cmocka_unit_test(test_rule_for_host_suppresses_callbacks_even_on_path_mismatch),
        cmocka_unit_test(test_access_control_and_no_proxy),
        cmocka_unit_test(test_plaintext_refused_unless_allowed),
        cmocka_unit_test(test_empty_policy_forwards),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_header_templates_resolve),
        cmocka_unit_test(test_secret_binding_well_known_defaults),
        cmocka_unit_test(test_secret_binding_explicit),
        cmocka_unit_test(test_legacy_inject_headers),
        cmocka_unit_test(test_config_upgrade_converts_legacy),
        cmocka_unit_test(test_env_vars_stored),
        cmocka_unit_test(test_aws_and_gcp_rules),
        cmocka_unit_test(test_error_unknown_keys),
        cmocka_unit_test(test_error_wrong_shapes),
        cmocka_unit_test(test_error_host_patterns),
        cmocka_unit_test(test_error_path_patterns),
        cmocka_unit_test(test_error_header_type),
        cmocka_unit_test(test_error_header_name),
        cmocka_unit_test(test_error_header_value),
        cmocka_unit_test(test_error_templates),
        cmocka_unit_test(test_error_callbacks),
        cmocka_unit_test(test_all_problems_reported_at_once),
        cmocka_unit_test(test_no_secret_value_in_errors),
        cmocka_unit_test(test_default_secret_hosts),
        cmocka_unit_test(test_error_helpers),
    };
    return cmocka_run_group_tests_name("policy", tests, setup_secrets, teardown_secrets);
}
