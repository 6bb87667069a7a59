/* Unit tests for audit: the hash chain of the audit log (audit.h) as written through
 * audit_open/audit_write, continued across reopen and after a torn line, and audit_verify's
 * detection of edited, removed, reordered, truncated and foreign lines with the right line
 * number. The expected "prev" values are computed here from the file's bytes with OpenSSL's
 * SHA-256, following the format audit.h documents. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/sha.h>

#include "audit.h"
#include "util.h"

#define MAX_LINES 64

struct fixture {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof(*fx));
    strcpy(fx->dir, "/tmp/test_audit.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof(fx->path), "%s/audit.log", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    unlink(fx->path);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* Appends n records through the real API (open, write, close); hosts are "h<first+i>.test". */
static void write_records_path(const char *path, int first, int n, const char *url_path)
{
    struct audit_log *a = audit_open(path);
    assert_non_null(a);
    for (int i = 0; i < n; i++) {
        char host[32];
        snprintf(host, sizeof(host), "h%d.test", first + i);
        const char *inj[] = {"Authorization"};
        struct audit_record r = {
            .client = "127.0.0.1:5555",
            .method = "GET",
            .scheme = "https",
            .host = host,
            .port = 443,
            .path = url_path,
            .decision = "allowed",
            .decided_by = "rule-1",
            .injected = inj,
            .n_injected = 1,
            .status = 200,
            .upstream_status = 200,
            .policy_version = 7,
        };
        audit_write(a, &r);
    }
    audit_close(a);
}

static void write_records(const char *path, int first, int n)
{
    write_records_path(path, first, n, "/v1/x");
}

/* The file's lines, each with its newline if it has one; returns the count. */
static size_t read_lines(const char *path, char *lines[MAX_LINES])
{
    size_t len;
    char *text = read_file(path, 1 << 24, &len);
    assert_non_null(text);
    size_t n = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl + 1 : end;
        assert_true(n < MAX_LINES);
        lines[n++] = xstrndup(p, (size_t)(stop - p));
        p = stop;
    }
    free(text);
    return n;
}

/* Writes the given lines (already newline-terminated or not) as the whole file. */
static void write_lines(const char *path, char *const *lines, size_t n)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++)
        fputs(lines[i], f);
    assert_int_equal(fclose(f), 0);
}

static void free_lines(char **lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
}

static void sha_hex(const char *p, size_t n, char out[65])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)p, n, md);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* Hash of a line as the chain defines it: its bytes without the newline. */
static void line_hash(const char *line, char out[65])
{
    size_t n = strlen(line);
    if (n > 0 && line[n - 1] == '\n')
        n--;
    sha_hex(line, n, out);
}

static int verify_path(const char *path, struct audit_verify_result *res)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int rc = audit_verify(f, res);
    fclose(f);
    return rc;
}

static void assert_verify_fails(const char *path, uint64_t line, const char *why)
{
    struct audit_verify_result res;
    int rc = verify_path(path, &res);
    if (rc != 1 || res.bad_line != line || strstr(res.reason, why) == NULL)
        fail_msg("expected failure at line %llu (%s); got rc %d, line %llu: %s",
                 (unsigned long long)line, why, rc, (unsigned long long)res.bad_line, res.reason);
}

static void assert_verify_ok(const char *path, uint64_t lines)
{
    struct audit_verify_result res;
    int rc = verify_path(path, &res);
    if (rc != 0 || res.lines != lines)
        fail_msg("expected %llu intact lines; got rc %d, %llu lines: %s", (unsigned long long)lines,
                 rc, (unsigned long long)res.lines, res.reason);
}

static json_int_t seq_of(const char *line)
{
    json_t *o = json_loads(line, JSON_DECODE_ANY, NULL);
    assert_true(json_is_object(o));
    json_int_t s = json_integer_value(json_object_get(o, "seq"));
    json_decref(o);
    return s;
}

static void test_lines_carry_seq_and_prev_last_and_chain_from_genesis(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 5);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    assert_int_equal(n, 5);
    static const char *const fields[] = {
        "ts",          "sandbox",         "workspace",      "client",
        "method",      "scheme",          "host",           "port",
        "path",        "decision",        "decided_by",     "injected_headers",
        "status",      "upstream_status", "bytes_in",       "bytes_out",
        "duration_ms", "error",           "policy_version", "seq",
        "prev"};
    char want_prev[65] = AUDIT_GENESIS_HEX;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_loads(lines[i], 0, NULL);
        assert_true(json_is_object(o));
        /* existing fields keep their names and order; seq and prev come last */
        assert_int_equal(json_object_size(o), ARRAY_LEN(fields));
        const char *at = lines[i];
        for (size_t f = 0; f < ARRAY_LEN(fields); f++) {
            char quoted[40];
            snprintf(quoted, sizeof(quoted), "\"%s\":", fields[f]);
            const char *p = strstr(at, quoted);
            if (p == NULL)
                fail_msg("line %zu: field %s missing or out of order: %s", i + 1, fields[f],
                         lines[i]);
            at = p;
        }
        assert_int_equal(json_integer_value(json_object_get(o, "seq")), (json_int_t)i + 1);
        assert_string_equal(json_string_value(json_object_get(o, "prev")), want_prev);
        char host[32];
        snprintf(host, sizeof(host), "h%zu.test", i + 1);
        assert_string_equal(json_string_value(json_object_get(o, "host")), host);
        json_decref(o);
        line_hash(lines[i], want_prev);
    }
    struct audit_verify_result res;
    assert_int_equal(verify_path(fx->path, &res), 0);
    assert_int_equal(res.lines, 5);
    assert_int_equal(res.bad_line, 0);
    assert_string_equal(res.last_hash, want_prev); /* the anchor is the last line's hash */
    free_lines(lines, n);
}

static void test_empty_file_is_intact(void **state)
{
    struct fixture *fx = *state;
    write_lines(fx->path, NULL, 0);
    assert_verify_ok(fx->path, 0);
}

static void test_edited_line_is_named(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 6);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    char *h = strstr(lines[2], "\"h3.test\"");
    assert_non_null(h);
    h[2] = '9'; /* one byte of the host: still valid JSON, still a plausible record */
    write_lines(fx->path, lines, n);
    assert_verify_fails(fx->path, 3, "edited");
    free_lines(lines, n);
}

static void test_edited_seq_is_named(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 4);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    char *s = strstr(lines[1], "\"seq\":2,");
    assert_non_null(s);
    s[6] = '7';
    write_lines(fx->path, lines, n);
    assert_verify_fails(fx->path, 2, "edited");
    free_lines(lines, n);
}

static void test_editing_the_last_line_changes_only_the_anchor(void **state)
{
    /* The documented limit: nothing follows the last line, so only its hash, compared with a
     * copy kept elsewhere, shows the edit. */
    struct fixture *fx = *state;
    write_records(fx->path, 1, 3);
    struct audit_verify_result before, after;
    assert_int_equal(verify_path(fx->path, &before), 0);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    char *h = strstr(lines[2], "\"h3.test\"");
    h[2] = '9';
    write_lines(fx->path, lines, n);
    assert_int_equal(verify_path(fx->path, &after), 0);
    assert_string_not_equal(before.last_hash, after.last_hash);
    free_lines(lines, n);
}

/* Writes lines[order[0]], lines[order[1]], ... as the file and asserts verify names `line`. */
static void assert_reassembly_fails(const char *path, char **lines, const int *order, size_t n,
                                    uint64_t line, const char *why)
{
    char *picked[MAX_LINES];
    for (size_t i = 0; i < n; i++)
        picked[i] = lines[order[i]];
    write_lines(path, picked, n);
    assert_verify_fails(path, line, why);
}

#define REASSEMBLY_FAILS(path, lines, line, why, ...)                                              \
    assert_reassembly_fails(path, lines, (const int[]){__VA_ARGS__},                               \
                            sizeof((const int[]){__VA_ARGS__}) / sizeof(int), line, why)

static void test_removed_lines_are_named(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 6);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    REASSEMBLY_FAILS(fx->path, lines, 3, "removed: 1 line missing", 0, 1, 3, 4, 5);
    REASSEMBLY_FAILS(fx->path, lines, 3, "removed: 2 lines missing", 0, 1, 4, 5);
    REASSEMBLY_FAILS(fx->path, lines, 1, "removed", 1, 2, 3, 4, 5);
    free_lines(lines, n);
}

static void test_reordered_lines_are_named(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 6);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    REASSEMBLY_FAILS(fx->path, lines, 3, "reordered", 0, 1, 3, 2, 4, 5); /* swapped */
    REASSEMBLY_FAILS(fx->path, lines, 2, "reordered", 0, 2, 3, 4, 1, 5); /* moved later */
    REASSEMBLY_FAILS(fx->path, lines, 4, "reordered or duplicated", 0, 1, 2, 1, 3);
    free_lines(lines, n);
}

static void test_truncated_last_line_is_named(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 4);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    lines[3][strlen(lines[3]) / 2] = '\0';
    write_lines(fx->path, lines, n);
    assert_verify_fails(fx->path, 4, "truncated last line");
    free_lines(lines, n);
}

static void test_foreign_lines_are_named(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 4);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    char junk[] = "not json at all\n";
    char *inserted[] = {lines[0], lines[1], junk, lines[2], lines[3]};
    write_lines(fx->path, inserted, ARRAY_LEN(inserted));
    assert_verify_fails(fx->path, 3, "not a JSON object");
    char *at_end[] = {lines[0], lines[1], lines[2], lines[3], junk};
    write_lines(fx->path, at_end, ARRAY_LEN(at_end));
    assert_verify_fails(fx->path, 5, "not a JSON object");
    char legacy[] = "{\"ts\":\"2024-01-01T00:00:00Z\",\"host\":\"old.test\"}\n";
    char *unchained[] = {legacy, lines[0]};
    write_lines(fx->path, unchained, ARRAY_LEN(unchained));
    assert_verify_fails(fx->path, 1, "no \"seq\"/\"prev\"");
    free_lines(lines, n);
}

static void test_reopening_continues_the_chain(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 3);
    write_records(fx->path, 4, 2);
    assert_verify_ok(fx->path, 5);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    assert_int_equal(n, 5);
    assert_int_equal(seq_of(lines[3]), 4);
    char h[65];
    line_hash(lines[2], h);
    assert_non_null(strstr(lines[3], h));
    free_lines(lines, n);
}

static void test_reopening_after_long_lines_reads_back_far_enough(void **state)
{
    /* Lines longer than the first tail read (4 KiB) must still be found whole. */
    struct fixture *fx = *state;
    char *big = xmalloc(20001);
    big[0] = '/';
    memset(big + 1, 'a', 19999);
    big[20000] = '\0';
    write_records_path(fx->path, 1, 3, big);
    write_records_path(fx->path, 4, 1, big);
    write_records(fx->path, 5, 1);
    assert_verify_ok(fx->path, 5);
    free(big);
}

static void test_torn_tail_is_kept_and_the_chain_resumes_after_it(void **state)
{
    struct fixture *fx = *state;
    write_records(fx->path, 1, 4);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    lines[3][40] = '\0'; /* a crash in the middle of writing line 4 */
    write_lines(fx->path, lines, n);
    assert_verify_fails(fx->path, 4, "truncated last line");

    write_records(fx->path, 5, 2);
    char *after[MAX_LINES];
    size_t m = read_lines(fx->path, after);
    assert_int_equal(m, 6);
    assert_int_equal(strncmp(after[3], lines[3], 40), 0);
    assert_int_equal(strlen(after[3]), 41); /* the fragment, ended by a newline */
    char h[65];
    line_hash(after[3], h);
    assert_non_null(strstr(after[4], h));  /* line 5 chains to the fragment's bytes */
    assert_int_equal(seq_of(after[4]), 5); /* the fragment keeps seq 4 */
    struct audit_verify_result res;
    assert_int_equal(verify_path(fx->path, &res), 1);
    assert_int_equal(res.bad_line, 4);
    assert_non_null(strstr(res.reason, "incomplete line"));
    assert_non_null(strstr(res.reason, "intact to the end"));

    /* Past the torn line the chain is still checked: an edit of line 5 is named too. */
    char *h5 = strstr(after[4], "\"h5.test\"");
    assert_non_null(h5);
    h5[2] = '9';
    write_lines(fx->path, after, m);
    struct audit_verify_result res2;
    assert_int_equal(verify_path(fx->path, &res2), 1);
    assert_int_equal(res2.bad_line, 4);
    assert_non_null(strstr(res2.reason, "line 5: edited"));
    free_lines(after, m);
    free_lines(lines, n);
}

static void test_a_write_cut_short_is_recovered_by_the_next_write(void **state)
{
    /* RLIMIT_FSIZE makes write(2) stop part-way through record 3 (a disk filling up looks the
     * same); record 4 must end that fragment and chain to it, without a reopen. */
    struct fixture *fx = *state;
    struct audit_log *a = audit_open(fx->path);
    assert_non_null(a);
    struct audit_record r = {.host = "h.test", .decision = "allowed"};
    audit_write(a, &r);
    audit_write(a, &r);
    struct stat st;
    assert_int_equal(stat(fx->path, &st), 0);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size + 100;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    audit_write(a, &r); /* 100 bytes land, then EFBIG */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    audit_write(a, &r);
    audit_close(a);

    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    assert_int_equal(n, 4);
    assert_int_equal(strlen(lines[2]), 101); /* the fragment and the newline that ended it */
    char h[65];
    line_hash(lines[2], h);
    assert_non_null(strstr(lines[3], h));
    assert_int_equal(seq_of(lines[3]), 4);
    assert_verify_fails(fx->path, 3, "intact to the end");
    free_lines(lines, n);
}

/* A batch: nothing reaches the file until the flush, then its records are lines chained in the
 * order they were added, continuing from lines written one by one, and the file verifies. A
 * control character and a non-ASCII path arrive escaped (the line stays one line). */
static void test_a_batch_writes_its_records_chained_at_the_flush(void **state)
{
    struct fixture *fx = *state;
    struct audit_log *a = audit_open(fx->path);
    assert_non_null(a);
    struct audit_record one = {.host = "one.test", .decision = "allowed"};
    audit_write(a, &one);
    struct audit_batch b;
    audit_batch_init(&b, a);
    const char *hosts[] = {"two.test", "three.test", "four.test"};
    for (int i = 0; i < 3; i++) {
        struct audit_record r = {.host = hosts[i], .path = "/a\nb/\xc3\xa9", .decision = "allowed"};
        assert_int_equal(audit_batch_add(&b, &r), i == 0); /* true only for the first */
    }
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    assert_int_equal(n, 1); /* kept until the flush */
    free_lines(lines, n);
    audit_batch_flush(&b);
    audit_batch_flush(&b); /* an empty batch writes nothing */
    audit_write(a, &one);
    audit_batch_free(&b);
    audit_close(a);

    n = read_lines(fx->path, lines);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(seq_of(lines[i]), (json_int_t)i + 1);
        json_t *o = json_loads(lines[i], 0, NULL);
        assert_non_null(o);
        const char *host = json_string_value(json_object_get(o, "host"));
        assert_string_equal(host, i == 0 || i == 4 ? "one.test" : hosts[i - 1]);
        if (i >= 1 && i <= 3)
            assert_string_equal(json_string_value(json_object_get(o, "path")), "/a\nb/\xc3\xa9");
        json_decref(o);
    }
    free_lines(lines, n);
    assert_verify_ok(fx->path, 5);
}

/* A batch without a log (auditing off) keeps nothing. */
static void test_a_batch_without_a_log_keeps_nothing(void **state)
{
    (void)state;
    struct audit_batch b;
    audit_batch_init(&b, NULL);
    struct audit_record r = {.host = "h.test", .decision = "allowed"};
    assert_false(audit_batch_add(&b, &r));
    assert_int_equal(b.n, 0);
    audit_batch_free(&b);
}

static void test_legacy_file_restarts_numbering_chained_to_its_last_line(void **state)
{
    struct fixture *fx = *state;
    char legacy[] = "{\"ts\":\"2024-01-01T00:00:00Z\",\"host\":\"old.test\"}\n";
    char *one[] = {legacy};
    write_lines(fx->path, one, 1);
    write_records(fx->path, 1, 1);
    char *lines[MAX_LINES];
    size_t n = read_lines(fx->path, lines);
    assert_int_equal(n, 2);
    assert_int_equal(seq_of(lines[1]), 1);
    char h[65];
    line_hash(legacy, h);
    assert_non_null(strstr(lines[1], h));
    assert_verify_fails(fx->path, 1, "not a chained audit line");
    free_lines(lines, n);
}

static void test_a_second_writer_is_refused_while_the_first_holds_the_file(void **state)
{
    struct fixture *fx = *state;
    struct audit_log *a = audit_open(fx->path);
    assert_non_null(a);
    errno = 0;
    assert_null(audit_open(fx->path));
    assert_int_equal(errno, EBUSY);
    audit_close(a);
    struct audit_log *b = audit_open(fx->path);
    assert_non_null(b);
    audit_close(b);
}

static void test_null_path_disables_auditing(void **state)
{
    (void)state;
    assert_null(audit_open(NULL));
    struct audit_record r = {.host = "x"};
    audit_write(NULL, &r); /* no-op */
    audit_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lines_carry_seq_and_prev_last_and_chain_from_genesis,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_file_is_intact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_batch_writes_its_records_chained_at_the_flush, setup,
                                        teardown),
        cmocka_unit_test(test_a_batch_without_a_log_keeps_nothing),
        cmocka_unit_test_setup_teardown(test_edited_line_is_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edited_seq_is_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_editing_the_last_line_changes_only_the_anchor, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_removed_lines_are_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reordered_lines_are_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_last_line_is_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_lines_are_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopening_continues_the_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopening_after_long_lines_reads_back_far_enough,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_is_kept_and_the_chain_resumes_after_it,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_write_cut_short_is_recovered_by_the_next_write,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_legacy_file_restarts_numbering_chained_to_its_last_line, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_a_second_writer_is_refused_while_the_first_holds_the_file, setup, teardown),
        cmocka_unit_test(test_null_path_disables_auditing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
