// fuzz-sources: src/glob.c src/util.c src/log.c
/* libFuzzer harness for glob. Input: four '\n'-separated fields: host pattern, host, path
 * pattern, path. Beyond "no crash", it checks the properties the policy relies on:
 *   - host_normalize is idempotent and its output is accepted as an exact pattern;
 *   - a compiled pattern's own text matches it, and within() is reflexive;
 *   - within(exact host, p) agrees with match(p, host);
 *   - path "*" matches everything. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "glob.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Splits off the next field; returns its length and advances *p / *left. */
static size_t fuzz_field(const char **p, size_t *left, const char **field)
{
    const char *nl = memchr(*p, '\n', *left);
    size_t n = nl ? (size_t)(nl - *p) : *left;
    *field = *p;
    *p += nl ? n + 1 : n;
    *left -= nl ? n + 1 : n;
    return n;
}

static void fuzz_hosts(const char *pat, size_t pat_len, const char *raw, size_t raw_len)
{
    char *pat_z = xstrndup(pat, pat_len);
    char host[256], again[256];
    uint16_t port, port2;
    struct host_pattern p, q;
    const char *err;
    bool have_p = host_pattern_compile(pat_z, &p, &err) == 0;
    bool have_host = host_normalize(raw, raw_len, host, sizeof(host), &port) == 0;

    if (have_p) {
        if (!host_pattern_within(&p, &p))
            abort();
        if (p.kind == HOST_PATTERN_EXACT && !host_pattern_match(&p, p.text, p.len))
            abort();
        if (p.kind == HOST_PATTERN_SUFFIX) {
            char *sub = xasprintf("a%s", p.text);
            if (!host_pattern_match(&p, sub, strlen(sub)) ||
                host_pattern_match(&p, p.text + 1, p.len - 1))
                abort();
            free(sub);
        }
    }
    if (have_host) {
        if (host_normalize(host, strlen(host), again, sizeof(again), &port2) != 0 ||
            strcmp(host, again) != 0 || port2 != 0)
            abort();
        if (host_pattern_compile(host, &q, &err) != 0 || q.kind != HOST_PATTERN_EXACT)
            abort();
        if (have_p && host_pattern_within(&q, &p) != host_pattern_match(&p, host, strlen(host)))
            abort();
        host_pattern_free(&q);
    }
    if (have_p)
        host_pattern_free(&p);
    free(pat_z);
}

static void fuzz_paths(const char *pat, size_t pat_len, const char *path, size_t path_len)
{
    char *pat_z = xstrndup(pat, pat_len);
    const char *err;
    if (path_pattern_validate(pat_z, &err) == 0) {
        bool m = path_pattern_match(pat_z, path, path_len);
        if (strcmp(pat_z, "*") == 0 && !m)
            abort();
    }
    free(pat_z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *pat, *host, *ppat, *path;
    size_t left = size;
    size_t pat_len = fuzz_field(&p, &left, &pat);
    size_t host_len = fuzz_field(&p, &left, &host);
    size_t ppat_len = fuzz_field(&p, &left, &ppat);
    size_t path_len = fuzz_field(&p, &left, &path);
    if (memchr(pat, '\0', pat_len) == NULL)
        fuzz_hosts(pat, pat_len, host, host_len);
    if (memchr(ppat, '\0', ppat_len) == NULL)
        fuzz_paths(ppat, ppat_len, path, path_len);
    return 0;
}
