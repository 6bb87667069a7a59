/* Unit tests for api_json: the pure parts of the control API — masking of opaque values, the
 * opaque keep-merge of PATCH, legacy template conversion, request validation and the response
 * shapes the hosted SDKs read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"
#include "seal.h"

#define SEALED_A SEAL_TEXT_PREFIX "AAAAsealedA"
#define SEALED_B SEAL_TEXT_PREFIX "AAAAsealedB"

/* ---- helpers ---- */

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (v == NULL)
        fail_msg("bad test JSON at %d:%d: %s", e.line, e.column, e.text);
    return v;
}

/* Whether errs holds a message containing needle. */
static bool has_err(const struct errlist *errs, const char *needle)
{
    for (size_t i = 0; i < errs->n; i++)
        if (strstr(errs->msgs[i], needle) != NULL)
            return true;
    return false;
}

#define assert_err(errs, needle)                                                                   \
    do {                                                                                           \
        if (!has_err((errs), (needle))) {                                                          \
            for (size_t i_ = 0; i_ < (errs)->n; i_++)                                              \
                print_message("  error: %s\n", (errs)->msgs[i_]);                                  \
            fail_msg("no error mentioning \"%s\"", (needle));                                      \
        }                                                                                          \
    } while (0)

/* Whether s occurs anywhere in the serialisation of v. */
static bool json_contains(const json_t *v, const char *s)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    bool found = strstr(text, s) != NULL;
    free(text);
    return found;
}

static const char *str_at(const json_t *doc, const char *path)
{
    /* path: a sequence of object keys and [i] indexes, e.g. "rules[0].headers[1].value" */
    const json_t *v = doc;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *tok = strtok(buf, "."); tok != NULL && v != NULL; tok = strtok(NULL, ".")) {
        char *br = strchr(tok, '[');
        if (br != NULL)
            *br = '\0';
        if (*tok)
            v = json_object_get(v, tok);
        while (br != NULL && v != NULL) {
            v = json_array_get(v, strtoul(br + 1, NULL, 10));
            br = strchr(br + 1, '[');
        }
    }
    return json_string_value(v);
}

/* ---- masking ---- */

static void test_mask_hides_every_opaque_value_and_keeps_the_rest(void **state)
{
    (void)state;
    json_t *stored =
        J("{\"rules\": ["
          " {\"name\": \"r\", \"match_hosts\": [\"api.example.com\"], \"headers\": ["
          "   {\"name\": \"Authorization\", \"type\": \"workspace_secret\","
          "    \"value\": \"Bearer {OPENAI_API_KEY}\"},"
          "   {\"name\": \"X-Org\", \"type\": \"plaintext\", \"value\": \"org-1\"},"
          "   {\"name\": \"X-Opaque\", \"type\": \"opaque\", \"value\": \"" SEALED_A "\"}]},"
          " {\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"
          "   \"access_key_id\": {\"type\": \"workspace_secret\", \"value\": \"{AWS_ID}\"},"
          "   \"secret_access_key\": {\"type\": \"opaque\", \"value\": \"" SEALED_B "\"}}},"
          " {\"name\": \"gcp\", \"type\": \"gcp\", \"gcp\": {"
          "   \"service_account_json\": {\"type\": \"opaque\", \"value\": \"" SEALED_A "\"}}}],"
          " \"callbacks\": [{\"match_hosts\": [\"*.internal\"], \"url\": \"https://a/b\","
          "   \"request_headers\": [{\"name\": \"X-Shared\", \"type\": \"opaque\","
          "   \"value\": \"" SEALED_B "\"}]}],"
          " \"no_proxy\": [\"localhost\"]}");
    char *before = json_dumps(stored, JSON_COMPACT);
    json_t *m = api_json_mask(stored);

    assert_false(json_contains(m, SEAL_TEXT_PREFIX));
    /* The masked form the SPEC names, for headers and credentials alike. */
    const json_t *h = json_array_get(
        json_object_get(json_array_get(json_object_get(m, "rules"), 0), "headers"), 2);
    assert_string_equal(json_string_value(json_object_get(h, "name")), "X-Opaque");
    assert_string_equal(json_string_value(json_object_get(h, "type")), "opaque");
    assert_true(json_is_true(json_object_get(h, "is_set")));
    assert_null(json_object_get(h, "value"));
    const json_t *cred =
        json_object_get(json_object_get(json_array_get(json_object_get(m, "rules"), 1), "aws"),
                        "secret_access_key");
    assert_true(json_is_true(json_object_get(cred, "is_set")));
    assert_null(json_object_get(cred, "value"));
    assert_true(json_is_true(json_object_get(
        json_array_get(
            json_object_get(json_array_get(json_object_get(m, "callbacks"), 0), "request_headers"),
            0),
        "is_set")));
    /* Non-secret values are returned as written. */
    assert_string_equal(str_at(m, "rules[0].headers[0].value"), "Bearer {OPENAI_API_KEY}");
    assert_string_equal(str_at(m, "rules[0].headers[1].value"), "org-1");
    assert_string_equal(str_at(m, "rules[1].aws.access_key_id.value"), "{AWS_ID}");
    assert_string_equal(str_at(m, "no_proxy[0]"), "localhost");
    /* The stored document is untouched. */
    char *after = json_dumps(stored, JSON_COMPACT);
    assert_string_equal(before, after);
    free(before);
    free(after);
    json_decref(m);
    json_decref(stored);
}

static void test_mask_nulls_a_sealed_string_outside_an_opaque_slot(void **state)
{
    (void)state;
    json_t *doc = J("{\"weird\": [\"" SEALED_A "\"], \"ok\": \"x\"}");
    json_t *m = api_json_mask(doc);
    assert_true(json_is_null(json_array_get(json_object_get(m, "weird"), 0)));
    assert_string_equal(json_string_value(json_object_get(m, "ok")), "x");
    json_decref(m);
    json_decref(doc);
    m = api_json_mask(NULL);
    assert_true(json_is_object(m) && json_object_size(m) == 0);
    json_decref(m);
}

/* ---- PATCH keep-merge ---- */

#define OLD_CONFIG                                                                                 \
    "{\"rules\": [{\"name\": \"gh\", \"match_hosts\": [\"api.github.com\"], \"headers\": ["        \
    "   {\"name\": \"Authorization\", \"type\": \"opaque\", \"value\": \"" SEALED_A "\"},"         \
    "   {\"name\": \"X-Plain\", \"type\": \"plaintext\", \"value\": \"p\"}]},"                     \
    " {\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"                                           \
    "   \"access_key_id\": {\"type\": \"opaque\", \"value\": \"" SEALED_B "\"}}}],"                \
    " \"callbacks\": [{\"match_hosts\": [\"a.test\"], \"url\": \"https://cb\","                    \
    "   \"request_headers\": [{\"name\": \"X-Shared\", \"type\": \"opaque\","                      \
    "   \"value\": \"" SEALED_B "\"}]}]}"

static void test_keep_fills_an_opaque_header_repeated_without_value(void **state)
{
    (void)state;
    struct errlist errs = {0};
    json_t *old = J(OLD_CONFIG);
    /* The read-back form (is_set) and a differently cased header name both keep. */
    json_t *cfg = J("{\"rules\": [{\"name\": \"gh\", \"match_hosts\": [\"api.github.com\"],"
                    " \"headers\": [{\"name\": \"authorization\", \"type\": \"opaque\","
                    " \"is_set\": true}]}]}");
    assert_true(api_json_opaque_keep(cfg, old, &errs));
    assert_int_equal(errs.n, 0);
    assert_string_equal(str_at(cfg, "rules[0].headers[0].value"), SEALED_A);
    assert_null(json_object_get(
        json_array_get(json_object_get(json_array_get(json_object_get(cfg, "rules"), 0), "headers"),
                       0),
        "is_set"));
    json_decref(cfg);
    json_decref(old);
}

static void test_keep_leaves_a_new_value_alone(void **state)
{
    (void)state;
    struct errlist errs = {0};
    json_t *old = J(OLD_CONFIG);
    json_t *cfg = J("{\"rules\": [{\"name\": \"gh\", \"match_hosts\": [\"api.github.com\"],"
                    " \"headers\": [{\"name\": \"Authorization\", \"type\": \"opaque\","
                    " \"value\": \"Bearer new-token\"}]}]}");
    assert_true(api_json_opaque_keep(cfg, old, &errs));
    assert_string_equal(str_at(cfg, "rules[0].headers[0].value"), "Bearer new-token");
    json_decref(cfg);
    json_decref(old);
}

static void test_keep_matches_by_rule_name_and_refuses_without_a_counterpart(void **state)
{
    (void)state;
    struct errlist errs = {0};
    json_t *old = J(OLD_CONFIG);
    /* Another rule name: the stored value belongs to "gh", not to "github". A stored plaintext
     * header of the same name never lends its value to an opaque one. */
    json_t *cfg = J("{\"rules\": [{\"name\": \"github\", \"match_hosts\": [\"api.github.com\"],"
                    " \"headers\": [{\"name\": \"Authorization\", \"type\": \"opaque\"}]},"
                    " {\"name\": \"gh\", \"match_hosts\": [\"api.github.com\"],"
                    " \"headers\": [{\"name\": \"X-Plain\", \"type\": \"opaque\"}]}]}");
    assert_false(api_json_opaque_keep(cfg, old, &errs));
    assert_err(&errs, "proxy_config.rules[0].headers[0].value: required");
    assert_err(&errs, "proxy_config.rules[1].headers[0].value: required");
    assert_null(str_at(cfg, "rules[0].headers[0].value"));
    assert_null(str_at(cfg, "rules[1].headers[0].value"));
    errlist_free(&errs);
    json_decref(cfg);
    json_decref(old);
}

static void test_keep_on_create_has_nothing_to_keep(void **state)
{
    (void)state;
    struct errlist errs = {0};
    json_t *cfg = J("{\"rules\": [{\"name\": \"gh\", \"headers\": [{\"name\": \"A\","
                    " \"type\": \"opaque\", \"value\": null}]}]}");
    assert_false(api_json_opaque_keep(cfg, NULL, &errs));
    assert_err(&errs, "rules[0].headers[0].value: required");
    errlist_free(&errs);
    json_decref(cfg);
}

static void test_keep_credentials_by_rule_and_type_and_callbacks_by_index(void **state)
{
    (void)state;
    struct errlist errs = {0};
    json_t *old = J(OLD_CONFIG);
    json_t *cfg = J("{\"rules\": [{\"name\": \"aws\", \"type\": \"aws\", \"aws\": {"
                    "  \"access_key_id\": {\"type\": \"opaque\", \"is_set\": true}}}],"
                    " \"callbacks\": [{\"match_hosts\": [\"a.test\"], \"url\": \"https://cb\","
                    "  \"request_headers\": [{\"name\": \"X-Shared\", \"type\": \"opaque\"}]}]}");
    assert_true(api_json_opaque_keep(cfg, old, &errs));
    assert_string_equal(str_at(cfg, "rules[0].aws.access_key_id.value"), SEALED_B);
    assert_string_equal(str_at(cfg, "callbacks[0].request_headers[0].value"), SEALED_B);
    json_decref(cfg);

    /* Same rule name, other type: a provider credential does not move between rule types. A
     * callback at another index has no counterpart. */
    cfg = J("{\"rules\": [{\"name\": \"aws\", \"type\": \"gcp\", \"gcp\": {"
            "  \"service_account_json\": {\"type\": \"opaque\"}}}],"
            " \"callbacks\": [{}, {\"request_headers\": [{\"name\": \"X-Shared\","
            "  \"type\": \"opaque\"}]}]}");
    assert_false(api_json_opaque_keep(cfg, old, &errs));
    assert_err(&errs, "proxy_config.rules[0].gcp.service_account_json.value: required");
    assert_err(&errs, "proxy_config.callbacks[1].request_headers[0].value: required");
    errlist_free(&errs);
    json_decref(cfg);
    json_decref(old);
}

/* ---- sealing ---- */

struct fake_seal {
    int calls;
    int fail_at;
};

static int fake_seal(void *ctx, const char *plaintext, char **sealed)
{
    struct fake_seal *f = ctx;
    if (++f->calls == f->fail_at)
        return -5;
    *sealed = xasprintf(SEAL_TEXT_PREFIX "<%s>", plaintext);
    return 0;
}

static void test_seal_opaque_seals_only_plaintext_opaque_values(void **state)
{
    (void)state;
    struct fake_seal f = {0, 0};
    json_t *cfg =
        J("{\"rules\": [{\"headers\": ["
          " {\"name\": \"A\", \"type\": \"opaque\", \"value\": \"one\"},"
          " {\"name\": \"B\", \"type\": \"opaque\", \"value\": \"" SEALED_A "\"},"
          " {\"name\": \"C\", \"type\": \"plaintext\", \"value\": \"three\"}],"
          " \"aws\": {\"secret_access_key\": {\"type\": \"opaque\", \"value\": \"two\"}}}]}");
    assert_int_equal(api_json_seal_opaque(cfg, fake_seal, &f), 0);
    assert_int_equal(f.calls, 2);
    assert_string_equal(str_at(cfg, "rules[0].headers[0].value"), SEAL_TEXT_PREFIX "<one>");
    assert_string_equal(str_at(cfg, "rules[0].headers[1].value"), SEALED_A);
    assert_string_equal(str_at(cfg, "rules[0].headers[2].value"), "three");
    assert_string_equal(str_at(cfg, "rules[0].aws.secret_access_key.value"),
                        SEAL_TEXT_PREFIX "<two>");
    json_decref(cfg);

    struct fake_seal g = {0, 1};
    cfg = J("{\"h\": [{\"type\": \"opaque\", \"value\": \"x\"}]}");
    assert_int_equal(api_json_seal_opaque(cfg, fake_seal, &g), -5);
    json_decref(cfg);
}

/* ---- request bodies ---- */

static void test_parse_body_reports_position_never_content(void **state)
{
    (void)state;
    struct errlist errs = {0};
    const char *bad = "{\"value\": \"sk-SECRET-VALUE";
    assert_null(api_json_parse_body(bad, strlen(bad), &errs));
    assert_err(&errs, "body: not valid JSON (line 1");
    for (size_t i = 0; i < errs.n; i++)
        assert_null(strstr(errs.msgs[i], "SECRET"));
    errlist_free(&errs);

    assert_null(api_json_parse_body("[1]", 3, &errs));
    assert_err(&errs, "body: expected a JSON object, found an array");
    errlist_free(&errs);
    assert_null(api_json_parse_body("", 0, &errs));
    assert_err(&errs, "empty body");
    errlist_free(&errs);
    /* Two "value"s in one object must not mean whichever the parser kept. */
    const char *dup = "{\"value\": \"a\", \"value\": \"b\"}";
    assert_null(api_json_parse_body(dup, strlen(dup), &errs));
    errlist_free(&errs);

    json_t *ok = api_json_parse_body("{\"a\": 1}", 8, &errs);
    assert_non_null(ok);
    assert_int_equal(errs.n, 0);
    json_decref(ok);
}

static void test_sealed_prefix_in_user_input_is_refused_with_its_path(void **state)
{
    (void)state;
    struct errlist errs = {0};
    json_t *body = J("{\"proxy_config\": {\"rules\": [{\"headers\": [{\"value\": \"" SEALED_A
                     "\"}]}]}, \"env_vars\": {\"X\": \"fine\"}}");
    assert_false(api_json_check_no_sealed(body, "body", &errs));
    assert_err(&errs, "body.proxy_config.rules[0].headers[0].value: values starting with");
    assert_int_equal(errs.n, 1);
    errlist_free(&errs);
    json_decref(body);
    body = J("{\"a\": \"apseal\", \"b\": [\"x apseal:\"]}");
    assert_true(api_json_check_no_sealed(body, "body", &errs));
    json_decref(body);
}

static void test_names(void **state)
{
    (void)state;
    char long_name[API_BOX_NAME_MAX + 2];
    assert_null(api_json_name_problem("demo"));
    assert_null(api_json_name_problem("snapshot-builder-0123abcd.v1_x"));
    assert_non_null(api_json_name_problem(""));
    assert_non_null(api_json_name_problem("-lead"));
    assert_non_null(api_json_name_problem("a b"));
    assert_non_null(api_json_name_problem("a:b")); /* would break name:token in a proxy URL */
    assert_non_null(api_json_name_problem("a/b"));
    assert_non_null(api_json_name_problem("a@b"));
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    assert_non_null(api_json_name_problem(long_name));
    long_name[API_BOX_NAME_MAX] = '\0';
    assert_null(api_json_name_problem(long_name));
}

static void test_box_request_valid_create_and_sdk_fields(void **state)
{
    (void)state;
    struct errlist errs = {0};
    struct api_box_req r;
    /* What the hosted SDKs send, unknown extras included. */
    json_t *body = J("{\"wait_for_ready\": true, \"timeout\": 30, \"name\": \"demo\","
                     " \"idle_ttl_seconds\": 0, \"delete_after_stop_seconds\": 600,"
                     " \"vcpus\": 2, \"mem_bytes\": 536870912, \"fs_capacity_bytes\": 0,"
                     " \"labels\": {\"a\": \"b\"}, \"persistent\": false,"
                     " \"proxy_config\": {\"rules\": []}, \"env_vars\": {\"GH_TOKEN\": \"x\"}}");
    assert_true(api_json_box_request(body, true, &r, &errs));
    assert_int_equal(errs.n, 0);
    assert_string_equal(r.name, "demo");
    assert_true(r.has_cpu);
    assert_int_equal(r.cpu_millicores, 2000);
    assert_true(r.has_mem && r.mem_bytes == 536870912);
    assert_true(r.has_idle_ttl && r.idle_ttl_seconds == 0);
    assert_false(r.has_ttl);
    assert_non_null(r.proxy_config);
    assert_non_null(r.env_vars);
    json_decref(body);

    /* No name: the server generates one (the SDKs leave it to the server). */
    body = J("{\"snapshot_name\": \"tpl\"}");
    assert_true(api_json_box_request(body, true, &r, &errs));
    assert_null(r.name);
    assert_string_equal(r.template_name, "tpl");
    json_decref(body);
}

static void test_box_request_errors_name_the_field(void **state)
{
    (void)state;
    struct errlist errs = {0};
    struct api_box_req r;
    json_t *body = J("{\"name\": \"bad name\", \"idle_ttl_seconds\": 90, \"ttl_seconds\": -60,"
                     " \"mem_bytes\": -1, \"vcpus\": 1, \"cpu_millicores\": 500,"
                     " \"proxy_config\": [], \"env_vars\": {\"1X\": \"v\"},"
                     " \"mount_config\": {}, \"template_name\": \"a\", \"snapshot_id\": \"b\"}");
    assert_false(api_json_box_request(body, true, &r, &errs));
    assert_err(&errs, "name: only letters");
    assert_err(&errs, "idle_ttl_seconds: must be a multiple of 60");
    assert_err(&errs, "ttl_seconds: expected an integer from 0");
    assert_err(&errs, "mem_bytes: expected an integer from 0");
    assert_err(&errs, "cpu_millicores: disagrees with vcpus");
    assert_err(&errs, "proxy_config: expected an object, found an array");
    assert_err(&errs, "env_vars.1X: invalid variable name");
    assert_err(&errs, "mount_config: not supported");
    assert_err(&errs, "template_name: give at most one");
    errlist_free(&errs);
    json_decref(body);

    body = J("{\"name\": 5}");
    assert_false(api_json_box_request(body, true, &r, &errs));
    assert_err(&errs, "name: expected a string");
    errlist_free(&errs);
    json_decref(body);
}

static void test_box_patch_refuses_creation_only_fields(void **state)
{
    (void)state;
    struct errlist errs = {0};
    struct api_box_req r;
    json_t *body = J("{\"vcpus\": 4, \"template_name\": \"x\", \"name\": \"new-name\"}");
    assert_false(api_json_box_request(body, false, &r, &errs));
    assert_err(&errs, "vcpus: cannot be changed after creation");
    assert_err(&errs, "template_name: cannot be changed after creation");
    errlist_free(&errs);
    json_decref(body);

    body = J("{\"name\": \"new-name\", \"ttl_seconds\": 3600, \"proxy_config\": null}");
    assert_true(api_json_box_request(body, false, &r, &errs));
    assert_string_equal(r.name, "new-name");
    assert_true(r.has_ttl && r.ttl_seconds == 3600);
    assert_true(json_is_null(r.proxy_config)); /* PATCH null: reset to {} */
    json_decref(body);
}

/* ---- templates and quantities ---- */

static void test_quantities(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(api_json_parse_cpu("500m", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(api_json_parse_cpu("2", &v), 0);
    assert_int_equal(v, 2000);
    assert_int_equal(api_json_parse_cpu("0.5", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(api_json_parse_cpu("1.5m", &v), -1);
    assert_int_equal(api_json_parse_cpu("-1", &v), -1);
    assert_int_equal(api_json_parse_cpu("1 ", &v), -1);
    assert_int_equal(api_json_parse_cpu("5000", &v), -1);
    assert_int_equal(api_json_parse_bytes("512Mi", &v), 0);
    assert_int_equal(v, 512LL << 20);
    assert_int_equal(api_json_parse_bytes("2Gi", &v), 0);
    assert_int_equal(v, 2LL << 30);
    assert_int_equal(api_json_parse_bytes("1.5Gi", &v), 0);
    assert_int_equal(v, 3LL << 29);
    assert_int_equal(api_json_parse_bytes("1G", &v), 0);
    assert_int_equal(v, 1000000000LL);
    assert_int_equal(api_json_parse_bytes("1048576", &v), 0);
    assert_int_equal(v, 1048576);
    assert_int_equal(api_json_parse_bytes("12Xi", &v), -1);
    assert_int_equal(api_json_parse_bytes("", &v), -1);
    assert_int_equal(api_json_parse_bytes("99999999999Pi", &v), -1);
}

/* The seed document's "Multiple API example", verbatim. */
#define SEED_MULTI                                                                                 \
    "{\"name\": \"multi-api-sandbox\", \"image\": \"python:3.12-slim\","                           \
    " \"resources\": {\"cpu\": \"500m\", \"memory\": \"512Mi\", \"storage\": \"2Gi\"},"            \
    " \"proxy_config\": {\"rules\": ["                                                             \
    "  {\"name\": \"openai-api\", \"match_hosts\": [\"api.openai.com\"],"                          \
    "   \"inject_headers\": {\"Authorization\": \"Bearer ${OPENAI_API_KEY}\"}},"                   \
    "  {\"name\": \"anthropic-api\", \"match_hosts\": [\"api.anthropic.com\"],"                    \
    "   \"inject_headers\": {\"x-api-key\": \"${ANTHROPIC_API_KEY}\","                             \
    "                        \"anthropic-version\": \"2023-06-01\"}},"                             \
    "  {\"name\": \"github-api\", \"match_hosts\": [\"api.github.com\"],"                          \
    "   \"match_paths\": [\"/repos/*\", \"/user\"],"                                               \
    "   \"inject_headers\": {\"Authorization\": \"Bearer ${GITHUB_TOKEN}\"}}],"                    \
    "  \"no_proxy\": [\"localhost\", \"127.0.0.1\"]}}"

static void test_legacy_template_is_stored_in_the_current_format(void **state)
{
    (void)state;
    struct errlist errs = {0};
    const char *name = NULL;
    json_t *req = J(SEED_MULTI);
    json_t *body = api_json_template_body(req, &name, &errs);
    assert_non_null(body);
    assert_int_equal(errs.n, 0);
    assert_string_equal(name, "multi-api-sandbox");
    assert_false(json_contains(body, "inject_headers"));
    assert_false(json_contains(body, "${"));
    const json_t *pc = json_object_get(body, "proxy_config");
    assert_string_equal(str_at(pc, "rules[0].headers[0].name"), "Authorization");
    assert_string_equal(str_at(pc, "rules[0].headers[0].type"), "workspace_secret");
    assert_string_equal(str_at(pc, "rules[0].headers[0].value"), "Bearer {OPENAI_API_KEY}");
    assert_string_equal(str_at(pc, "rules[1].headers[0].value"), "{ANTHROPIC_API_KEY}");
    assert_string_equal(str_at(pc, "rules[1].headers[1].name"), "anthropic-version");
    assert_string_equal(str_at(pc, "rules[1].headers[1].type"), "plaintext");
    assert_string_equal(str_at(pc, "rules[1].headers[1].value"), "2023-06-01");
    assert_string_equal(str_at(pc, "rules[2].match_paths[1]"), "/user");
    assert_string_equal(str_at(pc, "no_proxy[1]"), "127.0.0.1");
    assert_string_equal(str_at(body, "image"), "python:3.12-slim");
    assert_string_equal(str_at(body, "resources.memory"), "512Mi");

    int64_t cpu, mem, fs;
    api_json_template_resources(body, &cpu, &mem, &fs);
    assert_int_equal(cpu, 500);
    assert_int_equal(mem, 512LL << 20);
    assert_int_equal(fs, 2LL << 30);

    /* The response shape: the SDK's SandboxTemplate fields, config masked and current. */
    struct store_template t = {
        .id = "t-1", .name = "multi-api-sandbox", .created_at = 0, .updated_at = 60};
    json_t *out = api_json_template(&t, body);
    assert_string_equal(str_at(out, "name"), "multi-api-sandbox");
    assert_string_equal(str_at(out, "resources.cpu"), "500m");
    assert_string_equal(str_at(out, "proxy_config.rules[0].headers[0].value"),
                        "Bearer {OPENAI_API_KEY}");
    assert_string_equal(str_at(out, "updated_at"), "1970-01-01T00:01:00Z");
    json_decref(out);
    json_decref(body);
    json_decref(req);
}

static void test_template_body_errors(void **state)
{
    (void)state;
    struct errlist errs = {0};
    const char *name;
    json_t *req = J("{\"resources\": {\"cpu\": \"lots\", \"memory\": \"12Xi\", \"gpu\": 1},"
                    " \"volume_mounts\": [{\"volume_name\": \"v\"}], \"proxy_config\": 3}");
    assert_null(api_json_template_body(req, &name, &errs));
    assert_err(&errs, "name: required");
    assert_err(&errs, "resources");
    assert_err(&errs, "volume_mounts: volumes are not supported");
    assert_err(&errs, "proxy_config: expected an object");
    errlist_free(&errs);
    json_decref(req);

    req = J("{\"name\": \"t\", \"resources\": {\"cpu\": \"lots\", \"memory\": \"12Xi\"}}");
    assert_null(api_json_template_body(req, &name, &errs));
    assert_err(&errs, "resources.cpu: expected a CPU quantity");
    assert_err(&errs, "resources.memory: expected a byte quantity");
    errlist_free(&errs);
    json_decref(req);
}

/* ---- secrets ---- */

static void test_secret_request_validation(void **state)
{
    (void)state;
    struct errlist errs = {0};
    struct api_secret_req r;
    json_t *body = J("{\"value\": \"sk-1\", \"configs\": [{\"host\": \"api.openai.com\"}]}");
    assert_true(api_json_secret_request(body, &r, &errs));
    assert_string_equal(r.value, "sk-1");
    assert_true(r.has_configs && r.configs != NULL);
    json_decref(body);

    body = J("{\"configs\": null}");
    assert_true(api_json_secret_request(body, &r, &errs));
    assert_null(r.value); /* keep the stored value */
    assert_true(r.has_configs);
    assert_null(r.configs); /* back to the default binding */
    json_decref(body);

    /* A misspelt "configs" would silently drop a restriction: refused. */
    body = J("{\"value\": \"\", \"config\": [{\"host\": \"x\"}]}");
    assert_false(api_json_secret_request(body, &r, &errs));
    assert_err(&errs, "config");
    assert_err(&errs, "value: must not be empty");
    errlist_free(&errs);
    json_decref(body);

    body = J("{\"value\": 5, \"configs\": []}");
    assert_false(api_json_secret_request(body, &r, &errs));
    assert_err(&errs, "value: expected a string");
    assert_err(&errs, "configs: expected a non-empty array");
    errlist_free(&errs);
    json_decref(body);

    body = J("{\"configs\": [{\"host\": \"api.*.com\"}, {\"hots\": \"x\"}, \"y\"]}");
    assert_false(api_json_secret_request(body, &r, &errs));
    assert_err(&errs, "configs[0].host: invalid host pattern");
    assert_err(&errs, "configs[1]");
    assert_err(&errs, "configs[2]: expected an object");
    errlist_free(&errs);
    json_decref(body);

    assert_null(api_json_secret_key_problem("OPENAI_API_KEY"));
    assert_non_null(api_json_secret_key_problem("1ABC"));
    assert_non_null(api_json_secret_key_problem("A-B"));
    assert_non_null(api_json_secret_key_problem(""));
}

static void test_value_less_rebind_may_only_narrow(void **state)
{
    (void)state;
    json_t *one = J("[{\"host\": \"api.example.test\"}]");
    json_t *wild = J("[{\"host\": \"*.example.test\"}]");
    json_t *other = J("[{\"host\": \"evil.test\"}]");
    json_t *any = J("[{\"host\": \"*\"}]");
    assert_true(api_json_binding_within("K", one, wild));
    assert_false(api_json_binding_within("K", wild, one));
    assert_false(api_json_binding_within("K", other, one));
    assert_false(api_json_binding_within("K", any, one));
    assert_true(api_json_binding_within("K", other, any));
    /* Defaults: OPENAI_API_KEY is bound to api.openai.com; a key without a default is
     * unrestricted, so anything narrows it. */
    assert_true(api_json_binding_within("OPENAI_API_KEY", NULL, NULL));
    assert_false(api_json_binding_within("OPENAI_API_KEY", other, NULL));
    assert_true(api_json_binding_within("CUSTOM", other, NULL));
    assert_false(api_json_binding_within("CUSTOM", NULL, one));
    json_decref(one);
    json_decref(wild);
    json_decref(other);
    json_decref(any);
}

static void test_secret_json_never_has_a_value_and_shows_hosts(void **state)
{
    (void)state;
    struct store_secret s = {.name = "OPENAI_API_KEY", .created_at = 1, .updated_at = 2};
    json_t *o = api_json_secret(&s);
    assert_string_equal(str_at(o, "key"), "OPENAI_API_KEY");
    assert_null(json_object_get(o, "value"));
    assert_true(json_is_null(json_object_get(o, "configs")));
    assert_string_equal(str_at(o, "hosts[0]"), "api.openai.com");
    json_decref(o);
    s.name = "CUSTOM";
    s.hosts_json = "[{\"host\":\"*.example.test\"}]";
    o = api_json_secret(&s);
    assert_string_equal(str_at(o, "hosts[0]"), "*.example.test");
    assert_string_equal(str_at(o, "configs[0].host"), "*.example.test");
    json_decref(o);
}

/* ---- box response ---- */

static void test_box_json_is_what_the_sdk_reads(void **state)
{
    (void)state;
    struct store_box b = {.id = "0b6e3c52-0000-4000-8000-000000000001",
                          .name = "demo",
                          .status = "ready",
                          .proxy_config =
                              "{\"rules\":[{\"name\":\"r\",\"headers\":[{\"name\":\"X\","
                              "\"type\":\"opaque\",\"value\":\"" SEALED_A "\"}]}]}",
                          .env_vars = NULL,
                          .cpu_millicores = 500,
                          .mem_bytes = 1024,
                          .idle_ttl_seconds = 600,
                          .created_at = 0,
                          .updated_at = 0};
    json_t *o = api_json_box(&b, NULL);
    assert_string_equal(str_at(o, "id"), b.id);
    assert_string_equal(str_at(o, "name"), "demo");
    assert_string_equal(str_at(o, "status"), "ready");
    assert_true(json_is_null(json_object_get(o, "dataplane_url")));
    assert_true(json_is_real(json_object_get(o, "vcpus")));
    assert_int_equal(json_integer_value(json_object_get(o, "mem_bytes")), 1024);
    assert_true(json_is_null(json_object_get(o, "fs_capacity_bytes")));
    assert_int_equal(json_integer_value(json_object_get(o, "idle_ttl_seconds")), 600);
    assert_string_equal(str_at(o, "created_at"), "1970-01-01T00:00:00Z");
    assert_false(json_contains(o, SEAL_TEXT_PREFIX));
    assert_null(json_object_get(o, "proxy_token")); /* only ever in the create response */
    json_decref(o);
    o = api_json_box(&b, "http://127.0.0.1:8081/dataplane");
    assert_string_equal(str_at(o, "dataplane_url"),
                        "http://127.0.0.1:8081/dataplane/0b6e3c52-0000-4000-8000-000000000001");
    json_decref(o);
}

static void test_join(void **state)
{
    (void)state;
    struct errlist errs = {0};
    char *d = api_json_join(&errs);
    assert_string_equal(d, "invalid request");
    free(d);
    errlist_add(&errs, "a: x");
    errlist_add(&errs, "b: y");
    d = api_json_join(&errs);
    assert_string_equal(d, "a: x; b: y");
    free(d);
    for (int i = 0; i < 500; i++)
        errlist_add(&errs, "proxy_config.rules[%d]: something long enough to add up", i);
    d = api_json_join(&errs);
    assert_true(strlen(d) <= 4096);
    assert_string_equal(d + strlen(d) - 3, "...");
    free(d);
    errlist_free(&errs);
}

/* The body the hosted SDK's sandbox.run() sends over HTTP (langsmith lib/sandbox/sandbox.mjs
 * _runHttp: command, timeout, shell, env?, cwd?), and the newer run_config spelling. */
static void test_exec_request_takes_the_sdk_body_and_names_bad_fields(void **state)
{
    (void)state;
    struct api_exec_req r;
    struct errlist errs = {0};
    json_t *b = J("{\"command\": \"echo hi\", \"timeout\": 60, \"shell\": \"/bin/bash\","
                  " \"env\": {\"X\": \"1\"}, \"cwd\": \"/workspace/src\"}");
    assert_true(api_json_exec_request(b, &r, &errs));
    assert_string_equal(r.command, "echo hi");
    assert_string_equal(r.shell, "/bin/bash");
    assert_string_equal(r.cwd, "/workspace/src");
    assert_true(r.timeout_s == 60.0);
    assert_string_equal(json_string_value(json_object_get(r.env, "X")), "1");
    json_decref(b);

    b = J("{\"command\": \"true\"}"); /* defaults */
    assert_true(api_json_exec_request(b, &r, &errs));
    assert_string_equal(r.shell, API_EXEC_SHELL_DEFAULT);
    assert_null(r.cwd);
    assert_null(r.env);
    assert_true(r.timeout_s == API_EXEC_TIMEOUT_DEFAULT);
    json_decref(b);

    b = J("{\"command\": \"true\", \"run_config\": {\"env_vars\": {\"Y\": \"2\"},"
          " \"work_dir\": \"/tmp\"}}");
    assert_true(api_json_exec_request(b, &r, &errs));
    assert_string_equal(r.cwd, "/tmp");
    assert_string_equal(json_string_value(json_object_get(r.env, "Y")), "2");
    json_decref(b);
    assert_int_equal(errs.n, 0);

    static const struct {
        const char *body, *needle;
    } bad[] = {
        {"{}", "command: required"},
        {"{\"command\": \"\"}", "command:"},
        {"{\"command\": 5}", "command:"},
        {"{\"command\": \"true\", \"timeout\": 0}", "timeout:"},
        {"{\"command\": \"true\", \"timeout\": 86401}", "timeout:"},
        {"{\"command\": \"true\", \"timeout\": \"60\"}", "timeout:"},
        {"{\"command\": \"true\", \"shell\": \"bash\"}", "shell:"},
        {"{\"command\": \"true\", \"cwd\": \"src\"}", "cwd:"},
        {"{\"command\": \"true\", \"env\": {\"A B\": \"x\"}}", "env"},
        {"{\"command\": \"true\", \"env\": {\"A\": 1}}", "env.A"},
        {"{\"command\": \"true\", \"env\": {}, \"run_config\": {}}", "run_config:"},
        {"{\"command\": \"true\", \"run_config\": {\"user\": \"root\"}}", "run_config.user"},
        {"{\"command\": \"true\", \"run_config\": {\"work_dir\": \"x\"}}", "run_config.work_dir"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct errlist e = {0};
        b = J(bad[i].body);
        if (api_json_exec_request(b, &r, &e))
            fail_msg("accepted %s", bad[i].body);
        assert_err(&e, bad[i].needle);
        errlist_free(&e);
        json_decref(b);
    }
}

/* Command output is bytes; a JSON string must be UTF-8. Valid text passes byte for byte (NULs
 * and 4-byte characters included), anything else becomes U+FFFD, one per bad byte. Cases after
 * the Unicode standard's table 3-7 (well-formed byte sequences). */
static void test_text_keeps_utf8_and_replaces_the_rest(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *want;
        size_t want_len;
    } cases[] = {
        {"plain\n", 6, "plain\n", 6},
        {"a\0b", 3, "a\0b", 3},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9},
        {"\xff", 1, "\xef\xbf\xbd", 3},
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd", 6},                 /* overlong '/' */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 9}, /* surrogate */
        {"\xf4\x90\x80\x80", 4,                                         /* above U+10FFFF */
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 12},
        {"ok\xe2\x82", 4, "ok\xef\xbf\xbd\xef\xbf\xbd", 8}, /* cut short at the end */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *s = api_json_text(cases[i].in, cases[i].len);
        assert_int_equal(json_string_length(s), cases[i].want_len);
        assert_memory_equal(json_string_value(s), cases[i].want, cases[i].want_len);
        json_decref(s);
    }
}

int main(void)
{
    util_install_zeroing_json_allocator();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask_hides_every_opaque_value_and_keeps_the_rest),
        cmocka_unit_test(test_mask_nulls_a_sealed_string_outside_an_opaque_slot),
        cmocka_unit_test(test_keep_fills_an_opaque_header_repeated_without_value),
        cmocka_unit_test(test_keep_leaves_a_new_value_alone),
        cmocka_unit_test(test_keep_matches_by_rule_name_and_refuses_without_a_counterpart),
        cmocka_unit_test(test_keep_on_create_has_nothing_to_keep),
        cmocka_unit_test(test_keep_credentials_by_rule_and_type_and_callbacks_by_index),
        cmocka_unit_test(test_seal_opaque_seals_only_plaintext_opaque_values),
        cmocka_unit_test(test_parse_body_reports_position_never_content),
        cmocka_unit_test(test_sealed_prefix_in_user_input_is_refused_with_its_path),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_box_request_valid_create_and_sdk_fields),
        cmocka_unit_test(test_box_request_errors_name_the_field),
        cmocka_unit_test(test_box_patch_refuses_creation_only_fields),
        cmocka_unit_test(test_quantities),
        cmocka_unit_test(test_legacy_template_is_stored_in_the_current_format),
        cmocka_unit_test(test_template_body_errors),
        cmocka_unit_test(test_secret_request_validation),
        cmocka_unit_test(test_value_less_rebind_may_only_narrow),
        cmocka_unit_test(test_secret_json_never_has_a_value_and_shows_hosts),
        cmocka_unit_test(test_box_json_is_what_the_sdk_reads),
        cmocka_unit_test(test_join),
        cmocka_unit_test(test_exec_request_takes_the_sdk_body_and_names_bad_fields),
        cmocka_unit_test(test_text_keeps_utf8_and_replaces_the_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
