// fuzz-sources: src/http1.c src/glob.c src/util.c src/log.c
/* libFuzzer harness for http1. The input is used as a raw message, so the seed corpus is plain
 * HTTP text. For each input it checks properties the proxy depends on, and aborts when one fails:
 *
 * - request parsing: an accepted head ends with CRLF CRLF inside max_head, its pointers stay in
 *   the buffer, every shorter prefix is INCOMPLETE (the incremental contract), and a limit one
 *   byte short gives 431;
 * - the forwarded request head (with a credential override) has no bare CR/LF or controls, holds
 *   exactly one Authorization field (ours), no hop-by-hop field, and parses again to the same
 *   method, target and body framing;
 * - response parsing and the relayed head, likewise, for GET, HEAD and CONNECT;
 * - the chunked validator gives the same verdict and the same consumed count whether the body
 *   arrives at once, one byte at a time, or in input-derived splits (also for the body that
 *   follows an accepted chunked request head).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "fuzz.h"
#include "http1.h"

#define FUZZ_MAX_HEAD 8192

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool fuzz_is_result(int rc)
{
    return rc == HTTP1_INCOMPLETE || rc == HTTP1_OK || rc == HTTP1_ERR_BAD ||
           rc == HTTP1_ERR_TOO_LARGE || rc == HTTP1_ERR_URI_TOO_LONG ||
           rc == HTTP1_ERR_NOT_IMPLEMENTED || rc == HTTP1_ERR_VERSION;
}

/* A cheap deterministic hash of the input, to derive splits and flags without consuming bytes. */
static uint32_t fuzz_hash(const uint8_t *d, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 16777619u;
    return h;
}

/* Copies an evbuffer into a heap buffer (caller frees). */
static char *fuzz_drain(struct evbuffer *b, size_t *len)
{
    *len = evbuffer_get_length(b);
    char *s = malloc(*len + 1);
    CHECK(s != NULL);
    evbuffer_copyout(b, s, *len);
    s[*len] = '\0';
    return s;
}

/* Every CR is followed by LF, every LF preceded by CR, no other control except HTAB. */
static void fuzz_check_clean_head(const char *s, size_t n)
{
    CHECK(n >= 4 && memcmp(s + n - 4, "\r\n\r\n", 4) == 0);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r')
            CHECK(i + 1 < n && s[i + 1] == '\n');
        else if (c == '\n')
            CHECK(i > 0 && s[i - 1] == '\r');
        else
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
    }
}

/* Counts field lines whose name is name (case-insensitive) in a head. */
static int fuzz_count_field(const char *s, size_t n, const char *name)
{
    size_t nl = strlen(name);
    int count = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (s[i] == '\r' && s[i + 1] == '\n' && i + 2 + nl < n &&
            strncasecmp(s + i + 2, name, nl) == 0 && s[i + 2 + nl] == ':')
            count++;
    return count;
}

static void fuzz_check_headers_within(const struct http1_header *h, size_t n, const char *buf,
                                      size_t head_len)
{
    CHECK(n <= HTTP1_MAX_HEADERS);
    for (size_t i = 0; i < n; i++) {
        CHECK(h[i].name >= buf && h[i].name + h[i].name_len <= buf + head_len);
        CHECK(h[i].value >= buf && h[i].value + h[i].value_len <= buf + head_len);
        CHECK(h[i].name_len > 0);
    }
}

/* Feeds body with splits after positions chosen by seed (0: at once, 1: byte by byte). */
static int fuzz_chunked(const char *body, size_t len, uint32_t seed, size_t *total)
{
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t pos = 0;
    int rc = HTTP1_INCOMPLETE;
    *total = 0;
    while (pos < len) {
        size_t step;
        if (seed == 0)
            step = len - pos;
        else if (seed == 1)
            step = 1;
        else {
            seed = seed * 1103515245u + 12345u;
            step = 1 + (seed >> 16) % 17;
            if (step > len - pos)
                step = len - pos;
        }
        size_t consumed = 0;
        rc = http1_chunked_feed(&c, body + pos, step, &consumed);
        CHECK(consumed <= step);
        *total += consumed;
        if (rc != HTTP1_INCOMPLETE)
            break;
        CHECK(consumed == step);
        pos += step;
    }
    CHECK(rc == HTTP1_INCOMPLETE || rc == HTTP1_OK || rc == HTTP1_ERR_BAD);
    return rc;
}

/* The verdict and the consumed count must not depend on how the body is split. */
static void fuzz_chunked_all_splits(const char *body, size_t len, uint32_t seed)
{
    size_t t0, t1, t2;
    int r0 = fuzz_chunked(body, len, 0, &t0);
    int r1 = fuzz_chunked(body, len, 1, &t1);
    int r2 = fuzz_chunked(body, len, seed | 2u, &t2);
    CHECK(r0 == r1 && r0 == r2);
    CHECK(t0 == t1 && t0 == t2);
    if (r0 == HTTP1_INCOMPLETE)
        CHECK(t0 == len);
    else
        CHECK(t0 <= len);
    if (r0 == HTTP1_OK)
        CHECK(t0 >= 5 && memcmp(body + t0 - 2, "\r\n", 2) == 0);
}

static void fuzz_request(const char *buf, size_t size, uint32_t seed)
{
    static struct http1_request req, again; /* large: keep off the stack */
    size_t head_len = 0;
    int rc = http1_parse_request(buf, size, FUZZ_MAX_HEAD, &req, &head_len);
    CHECK(fuzz_is_result(rc));
    if (size > FUZZ_MAX_HEAD)
        CHECK(rc != HTTP1_INCOMPLETE);
    if (rc != HTTP1_OK)
        return;

    CHECK(head_len >= 4 && head_len <= size && head_len <= FUZZ_MAX_HEAD);
    CHECK(memcmp(buf + head_len - 4, "\r\n\r\n", 4) == 0);
    CHECK(req.version_minor == 0 || req.version_minor == 1);
    CHECK(req.version_minor == 0 || req.host != NULL);
    CHECK(req.method >= buf && req.method + req.method_len <= buf + head_len);
    CHECK(req.target >= buf && req.target + req.target_len <= buf + head_len);
    CHECK(req.body_kind == HTTP1_BODY_NONE || req.body_kind == HTTP1_BODY_LENGTH ||
          req.body_kind == HTTP1_BODY_CHUNKED);
    CHECK(req.body_kind != HTTP1_BODY_LENGTH || req.content_length <= (uint64_t)INT64_MAX);
    fuzz_check_headers_within(req.headers, req.n_headers, buf, head_len);
    struct http1_target target;
    CHECK(http1_parse_target(req.method, req.method_len, req.target, req.target_len, &target) == 0);
    CHECK(req.is_connect == (target.form == HTTP1_TARGET_AUTHORITY));

    /* incremental contract: shorter prefixes are INCOMPLETE; a tighter limit is 431 */
    size_t step = head_len <= 256 ? 1 : head_len / 64;
    for (size_t n = 0; n < head_len; n += step) {
        size_t hl;
        CHECK(http1_parse_request(buf, n, FUZZ_MAX_HEAD, &again, &hl) == HTTP1_INCOMPLETE);
    }
    size_t hl2;
    CHECK(http1_parse_request(buf, head_len, head_len, &again, &hl2) == HTTP1_OK);
    CHECK(http1_parse_request(buf, size, head_len - 1, &again, &hl2) == HTTP1_ERR_TOO_LARGE);

    if (req.body_kind == HTTP1_BODY_CHUNKED)
        fuzz_chunked_all_splits(buf + head_len, size - head_len, seed);
    if (req.is_connect)
        return;

    /* the forwarded head */
    struct http1_header_override ov[3] = {
        {"Authorization", "Bearer sk-fuzz-secret"}, {"X-Extra", "v"}, {"Host", "example.com"}};
    size_t n_ov = req.host == NULL ? 3 : 2; /* HTTP/1.0 without Host: upstream needs one */
    const char *ot = target.form == HTTP1_TARGET_ORIGIN ? req.target : "/";
    size_t ot_len = target.form == HTTP1_TARGET_ORIGIN ? req.target_len : 1;
    struct evbuffer *out = evbuffer_new();
    CHECK(out != NULL);
    CHECK(http1_write_request_head(out, &req, ot, ot_len, ov, n_ov) == 0);
    size_t olen;
    char *o = fuzz_drain(out, &olen);
    evbuffer_free(out);
    fuzz_check_clean_head(o, olen);
    CHECK(fuzz_count_field(o, olen, "authorization") == 1);
    CHECK(fuzz_count_field(o, olen, "proxy-authorization") == 0);
    CHECK(fuzz_count_field(o, olen, "keep-alive") == 0);
    CHECK(fuzz_count_field(o, olen, "te") == 0);
    CHECK(fuzz_count_field(o, olen, "content-length") <= 1);
    CHECK(fuzz_count_field(o, olen, "transfer-encoding") ==
          (req.body_kind == HTTP1_BODY_CHUNKED ? 1 : 0));
    CHECK(fuzz_count_field(o, olen, "upgrade") == (req.upgrade_websocket ? 1 : 0));
    CHECK(fuzz_count_field(o, olen, "connection") == (req.upgrade_websocket ? 1 : 0));
    CHECK(fuzz_count_field(o, olen, "host") == 1);

    size_t ohl;
    int rc2 = http1_parse_request(o, olen, olen, &again, &ohl);
    /* Our own fields can push a request near the field limit over it; nothing else may fail. */
    if (rc2 == HTTP1_ERR_TOO_LARGE)
        CHECK(req.n_headers + n_ov + 3 > HTTP1_MAX_HEADERS);
    else {
        CHECK(rc2 == HTTP1_OK);
        CHECK(ohl == olen);
        CHECK(again.method_len == req.method_len &&
              memcmp(again.method, req.method, req.method_len) == 0);
        CHECK(again.target_len == ot_len && memcmp(again.target, ot, ot_len) == 0);
        CHECK(again.body_kind == req.body_kind);
        CHECK(again.content_length == req.content_length);
        CHECK(again.upgrade_websocket == req.upgrade_websocket);
        if (req.version_minor == 1)
            CHECK(again.expect_continue == req.expect_continue);
    }
    free(o);
}

static void fuzz_response(const char *buf, size_t size, const char *method, bool keep_alive)
{
    static struct http1_response resp, again;
    size_t head_len = 0;
    int rc =
        http1_parse_response(buf, size, FUZZ_MAX_HEAD, method, strlen(method), &resp, &head_len);
    CHECK(fuzz_is_result(rc));
    if (rc != HTTP1_OK)
        return;
    CHECK(head_len >= 4 && head_len <= size && head_len <= FUZZ_MAX_HEAD);
    CHECK(memcmp(buf + head_len - 4, "\r\n\r\n", 4) == 0);
    CHECK(resp.status >= 100 && resp.status <= 999);
    fuzz_check_headers_within(resp.headers, resp.n_headers, buf, head_len);
    if (resp.body_kind == HTTP1_BODY_UNTIL_CLOSE)
        CHECK(!resp.keep_alive);
    if (strcmp(method, "HEAD") == 0 || resp.status < 200 || resp.status == 204 ||
        resp.status == 304)
        CHECK(resp.body_kind == HTTP1_BODY_NONE);

    struct evbuffer *out = evbuffer_new();
    CHECK(out != NULL);
    http1_write_response_head(out, &resp, keep_alive);
    size_t olen;
    char *o = fuzz_drain(out, &olen);
    evbuffer_free(out);
    fuzz_check_clean_head(o, olen);
    CHECK(fuzz_count_field(o, olen, "content-length") <= 1);
    CHECK(fuzz_count_field(o, olen, "keep-alive") == 0);
    CHECK(fuzz_count_field(o, olen, "proxy-authenticate") == 0);
    size_t ohl;
    int rc2 = http1_parse_response(o, olen, olen, method, strlen(method), &again, &ohl);
    if (rc2 == HTTP1_ERR_TOO_LARGE)
        CHECK(resp.n_headers + 2 > HTTP1_MAX_HEADERS);
    else {
        CHECK(rc2 == HTTP1_OK);
        CHECK(again.status == resp.status);
        CHECK(again.body_kind == resp.body_kind);
        if (resp.body_kind == HTTP1_BODY_LENGTH)
            CHECK(again.content_length == resp.content_length);
        if (resp.status >= 200)
            CHECK(again.keep_alive == (keep_alive && resp.body_kind != HTTP1_BODY_UNTIL_CLOSE));
    }
    free(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    uint32_t seed = fuzz_hash(data, size);
    fuzz_request(buf, size, seed);
    fuzz_response(buf, size, "GET", seed & 1);
    fuzz_response(buf, size, "HEAD", seed & 2);
    fuzz_response(buf, size, "CONNECT", seed & 4);
    fuzz_chunked_all_splits(buf, size, seed);

    /* helpers on arbitrary text must not crash, and must agree with themselves */
    struct http1_authority a;
    if (http1_parse_authority(buf, size, false, &a) == 0) {
        CHECK(a.host >= buf && a.host + a.host_len <= buf + size && a.host_len > 0);
        CHECK(a.port == -1 || (a.port >= 1 && a.port <= 65535));
    }
    (void)http1_list_has_token(buf, size, "close");

    /* http1_parse_url (callback and token URLs): an accepted URL has a non-empty host without
     * brackets or spaces, a port, and an origin-form target inside the URL (or "/") */
    if (size < 2048) {
        char *url = malloc(size + 1);
        memcpy(url, buf, size);
        url[size] = '\0';
        bool tls;
        char host[256];
        uint16_t port = 0;
        const char *target = NULL;
        if (http1_parse_url(url, &tls, host, sizeof(host), &port, &target) == 0) {
            CHECK(host[0] != '\0' && strpbrk(host, " []/@?#") == NULL && port > 0);
            CHECK(target[0] == '/');
            CHECK(strcmp(target, "/") == 0 || (target > url && target < url + size));
        }
        free(url);
    }
    return 0;
}
