/* jsonw: the audit line's JSON writer. Every string it writes must read back, through jansson,
 * as exactly the string given (valid UTF-8), the output must be ASCII, and bytes that are not
 * UTF-8 must still give valid JSON (U+FFFD each). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "jsonw.h"

/* {"s": s} written by jsonw, parsed back by jansson; returns the parsed object (caller
 * decrefs) and checks the text is ASCII. */
static json_t *round_trip(const char *s)
{
    struct jsonw w;
    jsonw_begin(&w, 16);
    jsonw_str(&w, "s", s);
    size_t len;
    char *text = jsonw_finish(&w, &len);
    assert_int_equal(strlen(text), len);
    for (size_t i = 0; i < len; i++)
        assert_true((unsigned char)text[i] >= 0x20 && (unsigned char)text[i] < 0x80);
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    if (o == NULL)
        fail_msg("jansson rejects %s: %s", text, err.text);
    free(text);
    return o;
}

/* Appends the UTF-8 form of cp to s at *n. */
static void put_utf8(char *s, size_t *n, unsigned cp)
{
    if (cp < 0x80) {
        s[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        s[(*n)++] = (char)(0xc0 | cp >> 6);
        s[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        s[(*n)++] = (char)(0xe0 | cp >> 12);
        s[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        s[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        s[(*n)++] = (char)(0xf0 | cp >> 18);
        s[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        s[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        s[(*n)++] = (char)(0x80 | (cp & 0x3f));
    }
}

/* Random strings of every kind of character (controls, quote, backslash, DEL, two- to
 * four-byte UTF-8, the edges of the surrogate gap) read back unchanged. */
static void test_any_utf8_string_reads_back_exactly(void **state)
{
    (void)state;
    static const unsigned edges[] = {1,     0x1f,   '"',    '\\',   '/',    0x7f,    0x80,    0x7ff,
                                     0x800, 0xd7ff, 0xe000, 0xfffd, 0xffff, 0x10000, 0x10ffff};
    srand(12345);
    for (int round = 0; round < 3000; round++) {
        char s[400];
        size_t n = 0;
        int chars = rand() % 60;
        for (int i = 0; i < chars; i++) {
            unsigned cp;
            switch (rand() % 4) {
            case 0:
                cp = edges[rand() % (sizeof(edges) / sizeof(edges[0]))];
                break;
            case 1:
                cp = 1 + (unsigned)rand() % 0x7f;
                break;
            case 2:
                cp = 0x80 + (unsigned)rand() % (0xd800 - 0x80);
                break;
            default:
                cp = 0x10000 + (unsigned)rand() % 0x100000;
                break;
            }
            put_utf8(s, &n, cp);
        }
        s[n] = '\0';
        json_t *o = round_trip(s);
        json_t *v = json_object_get(o, "s");
        assert_true(json_is_string(v));
        assert_int_equal(json_string_length(v), n);
        assert_memory_equal(json_string_value(v), s, n);
        json_decref(o);
    }
}

/* Bytes that are not UTF-8 each read back as U+FFFD; what is valid around them is kept. */
static void test_invalid_utf8_becomes_replacement_characters(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"a\xc0\xaf"
         "b",
         "a\xef\xbf\xbd\xef\xbf\xbd"
         "b"},                                                                    /* overlong '/' */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                 /* a surrogate */
        {"x\xe2\x82", "x\xef\xbf\xbd\xef\xbf\xbd"},                               /* truncated */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > 10FFFF */
        {"\xff\xe2\x82\xac", "\xef\xbf\xbd\xe2\x82\xac"}, /* a bad byte, then the euro sign */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *o = round_trip(cases[i].in);
        assert_string_equal(json_string_value(json_object_get(o, "s")), cases[i].out);
        json_decref(o);
    }
}

/* A whole record: members in order, null for NULL strings and zero optional numbers, the
 * array, exact thousandths. */
static void test_a_record_reads_back_member_by_member(void **state)
{
    (void)state;
    const char *hdrs[] = {"Authorization", "X-Api-Key"};
    struct jsonw w;
    jsonw_begin(&w, 0);
    jsonw_str(&w, "host", "api.example.test");
    jsonw_str(&w, "sandbox", NULL);
    jsonw_u64_or_null(&w, "port", 0);
    jsonw_u64_or_null(&w, "status", 200);
    jsonw_u64(&w, "bytes", INT64_MAX);
    jsonw_thousandths(&w, "ms", 1234567);
    jsonw_thousandths(&w, "zero", 5);
    jsonw_str_array(&w, "injected", hdrs, 2);
    jsonw_str_array(&w, "none", NULL, 0);
    char *text = jsonw_finish(&w, NULL);
    assert_string_equal(text, "{\"host\":\"api.example.test\",\"sandbox\":null,\"port\":null,"
                              "\"status\":200,\"bytes\":9223372036854775807,\"ms\":1234.567,"
                              "\"zero\":0.005,\"injected\":[\"Authorization\",\"X-Api-Key\"],"
                              "\"none\":[]}");
    json_t *o = json_loads(text, 0, NULL);
    assert_non_null(o);
    assert_true(json_real_value(json_object_get(o, "ms")) == 1234.567);
    json_decref(o);
    free(text);
}

/* Numbers at the edges of their digits: zero, powers of ten, the largest u64; thousandths
 * whose fraction has leading or trailing zeros. */
static void test_numbers_at_digit_edges(void **state)
{
    (void)state;
    struct jsonw w;
    jsonw_begin(&w, 0);
    jsonw_u64(&w, "a", 0);
    jsonw_u64(&w, "b", 9);
    jsonw_u64(&w, "c", 10);
    jsonw_u64(&w, "d", 1000000);
    jsonw_u64(&w, "e", UINT64_MAX);
    jsonw_thousandths(&w, "f", 0);
    jsonw_thousandths(&w, "g", 1000);
    jsonw_thousandths(&w, "h", 1050);
    jsonw_thousandths(&w, "i", 999);
    char *text = jsonw_finish(&w, NULL);
    assert_string_equal(text, "{\"a\":0,\"b\":9,\"c\":10,\"d\":1000000,"
                              "\"e\":18446744073709551615,\"f\":0.000,\"g\":1.000,"
                              "\"h\":1.050,\"i\":0.999}");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_any_utf8_string_reads_back_exactly),
        cmocka_unit_test(test_invalid_utf8_becomes_replacement_characters),
        cmocka_unit_test(test_a_record_reads_back_member_by_member),
        cmocka_unit_test(test_numbers_at_digit_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
