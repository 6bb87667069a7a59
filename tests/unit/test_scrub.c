/* scrub: injected credentials redacted from responses, also when split across reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scrub.h"
#include "util.h"

static char *apply_whole(const struct scrub *s, const char *in, size_t *count)
{
    char *buf = xstrdup(in);
    assert_int_equal(scrub_apply(s, buf, strlen(buf), true, count), 0);
    return buf;
}

static void test_value_and_token_are_redacted_with_equal_length(void **state)
{
    (void)state;
    struct scrub *s = scrub_new();
    scrub_add_credential(s, "Bearer sk-live-0123456789");
    size_t n;
    char *out = apply_whole(s,
                            "{\"headers\": {\"Authorization\": \"Bearer sk-live-0123456789\"}, "
                            "\"echo\": \"sk-live-0123456789\"}",
                            &n);
    assert_int_equal(n, 2);
    assert_null(strstr(out, "sk-live"));
    assert_string_equal(out, "{\"headers\": {\"Authorization\": \"*************************\"}, "
                             "\"echo\": \"******************\"}");
    free(out);
    scrub_free(s);
}

static void test_basic_credentials_decoded_forms(void **state)
{
    (void)state;
    struct scrub *s = scrub_new();
    /* base64("x-access-token:ghp_abcdef123456") */
    scrub_add_credential(s, "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX2FiY2RlZjEyMzQ1Ng==");
    size_t n;
    char *out = apply_whole(s, "user=x-access-token:ghp_abcdef123456 pw=ghp_abcdef123456 "
                               "raw=eC1hY2Nlc3MtdG9rZW46Z2hwX2FiY2RlZjEyMzQ1Ng==",
                            &n);
    assert_int_equal(n, 3);
    assert_null(strstr(out, "ghp_"));
    assert_null(strstr(out, "eC1hY2Nl"));
    free(out);
    scrub_free(s);
}

static void test_short_values_and_unrelated_text_are_left_alone(void **state)
{
    (void)state;
    struct scrub *s = scrub_new();
    scrub_add_credential(s, "1");
    scrub_add_credential(s, "Tok abc"); /* 7 bytes, and its token 3 */
    assert_true(scrub_empty(s));
    scrub_add_credential(s, "secret-value-xyz");
    size_t n;
    char *out = apply_whole(s, "nothing to see; secret-value-xy and ecret-value-xyz", &n);
    assert_int_equal(n, 0);
    assert_string_equal(out, "nothing to see; secret-value-xy and ecret-value-xyz");
    free(out);
    scrub_free(s);
}

/* Feeding the text in two pieces, cut anywhere, gives what feeding it whole gives: the tail that
 * could begin a value is held back and presented again with the next piece. */
static void test_split_anywhere_equals_whole(void **state)
{
    (void)state;
    struct scrub *s = scrub_new();
    scrub_add_credential(s, "Bearer tok-1234567890");
    scrub_add_credential(s, "abcabcabx-key");
    const char *text = "a tok-1234567890 b abcabcabcabx-key c Bearer tok-1234567890 tok-12345";
    size_t whole_n;
    char *whole = apply_whole(s, text, &whole_n);
    size_t len = strlen(text);
    for (size_t cut = 0; cut <= len; cut++) {
        char out[256] = {0};
        size_t out_len = 0, total = 0, n;
        char buf[256];
        memcpy(buf, text, cut);
        size_t have = cut;
        size_t hold = scrub_apply(s, buf, have, false, &n);
        total += n;
        memcpy(out, buf, have - hold);
        out_len = have - hold;
        memmove(buf, buf + have - hold, hold);
        memcpy(buf + hold, text + cut, len - cut);
        have = hold + len - cut;
        assert_int_equal(scrub_apply(s, buf, have, true, &n), 0);
        total += n;
        memcpy(out + out_len, buf, have);
        out_len += have;
        assert_int_equal(out_len, len);
        assert_memory_equal(out, whole, len);
        assert_int_equal(total, whole_n);
    }
    free(whole);
    scrub_free(s);
}

static void test_hold_back_only_what_could_become_a_value(void **state)
{
    (void)state;
    struct scrub *s = scrub_new();
    scrub_add_credential(s, "sk-proj-999999");
    char sse[] = "data: {\"delta\": \"hello\"}\n\n";
    assert_int_equal(scrub_apply(s, sse, strlen(sse), false, NULL), 0);
    char partial[] = "data: sk-pro";
    assert_int_equal(scrub_apply(s, partial, strlen(partial), false, NULL), 6);
    scrub_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_value_and_token_are_redacted_with_equal_length),
        cmocka_unit_test(test_basic_credentials_decoded_forms),
        cmocka_unit_test(test_short_values_and_unrelated_text_are_left_alone),
        cmocka_unit_test(test_split_anywhere_equals_whole),
        cmocka_unit_test(test_hold_back_only_what_could_become_a_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
