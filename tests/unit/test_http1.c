/* Unit tests for http1: every refusal the proxy relies on to stop request smuggling, the
 * accepted forms, keep-alive and body framing, incremental parsing, the chunked validator and the
 * serialisers (hop-by-hop removal, credential overrides). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "http1.h"

#define MAX_HEAD 16384

/* Parses a NUL-terminated request with the default limit; returns the parser's result. */
static int req_parse(const char *s, struct http1_request *req, size_t *head_len)
{
    size_t hl = 0;
    int rc = http1_parse_request(s, strlen(s), MAX_HEAD, req, &hl);
    if (head_len)
        *head_len = hl;
    return rc;
}

/* The parser's result for a request head, for the refusal tables. */
static int req_rc(const char *s)
{
    struct http1_request req;
    return req_parse(s, &req, NULL);
}

static int resp_parse(const char *s, const char *method, struct http1_response *resp)
{
    size_t hl;
    return http1_parse_response(s, strlen(s), MAX_HEAD, method, strlen(method), resp, &hl);
}

/* Copies an evbuffer's contents into a NUL-terminated heap string; the caller frees it. */
static char *evbuf_str(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    assert_non_null(s);
    evbuffer_copyout(b, s, n);
    s[n] = '\0';
    return s;
}

/* Counts case-insensitive occurrences of a field line prefix "\r\nName:" in a head. */
static int count_field(const char *head, const char *name)
{
    int count = 0;
    size_t nlen = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, nlen) == 0 && p[2 + nlen] == ':')
            count++;
    return count;
}

/* ---------------------------------------------------------------- valid requests */

static void test_req_origin_form(void **state)
{
    (void)state;
    const char *s = "GET /v1/models?x=1 HTTP/1.1\r\nHost: api.openai.com\r\n"
                    "User-Agent:  curl/8  \r\nAccept: */*\r\n\r\nBODY";
    struct http1_request req;
    size_t hl;
    assert_int_equal(req_parse(s, &req, &hl), HTTP1_OK);
    assert_int_equal(hl, strlen(s) - 4);
    assert_int_equal(req.method_len, 3);
    assert_memory_equal(req.method, "GET", 3);
    assert_int_equal(req.target_len, strlen("/v1/models?x=1"));
    assert_memory_equal(req.target, "/v1/models?x=1", req.target_len);
    assert_int_equal(req.version_minor, 1);
    assert_int_equal(req.n_headers, 3);
    assert_non_null(req.host);
    assert_int_equal(req.host->value_len, strlen("api.openai.com"));
    assert_memory_equal(req.host->value, "api.openai.com", req.host->value_len);
    /* OWS around the value is trimmed */
    assert_int_equal(req.headers[1].value_len, 6);
    assert_memory_equal(req.headers[1].value, "curl/8", 6);
    assert_int_equal(req.body_kind, HTTP1_BODY_NONE);
    assert_true(req.keep_alive);
    assert_false(req.is_connect);
    assert_false(req.expect_continue);
    assert_false(req.upgrade_websocket);
}

static void test_req_other_forms(void **state)
{
    (void)state;
    struct http1_request req;
    assert_int_equal(
        req_parse("GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_false(req.is_connect);
    assert_int_equal(
        req_parse("GET HTTPS://Example.com:8443?q HTTP/1.1\r\nHost: example.com\r\n\r\n", &req,
                  NULL),
        HTTP1_OK);
    assert_int_equal(
        req_parse("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n", &req,
                  NULL),
        HTTP1_OK);
    assert_true(req.is_connect);
    assert_int_equal(req.body_kind, HTTP1_BODY_NONE);
    assert_int_equal(
        req_parse("CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n", &req, NULL), HTTP1_OK);
    assert_int_equal(req_parse("OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n", &req, NULL),
                     HTTP1_OK);
    /* HTTP/1.0 may omit Host */
    assert_int_equal(req_parse("GET / HTTP/1.0\r\n\r\n", &req, NULL), HTTP1_OK);
    assert_null(req.host);
    assert_int_equal(req.version_minor, 0);
    /* any token is a method */
    assert_int_equal(req_rc("PROPFIND /dav HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_OK);
    /* HTAB inside a value, obs-text in a value */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb\r\nX-B: caf\xc3\xa9\r\n\r\n"),
                     HTTP1_OK);
    /* an empty value */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\n\r\n"), HTTP1_OK);
}

static void test_req_leading_empty_lines(void **state)
{
    (void)state;
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    struct http1_request req;
    size_t hl;
    assert_int_equal(req_parse(s, &req, &hl), HTTP1_OK);
    assert_int_equal(hl, strlen(s));
    assert_memory_equal(req.method, "GET", 3);
    /* a bare LF as an empty line is still refused */
    assert_int_equal(req_rc("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
}

static void test_req_bodies(void **state)
{
    (void)state;
    struct http1_request req;
    assert_int_equal(
        req_parse("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_int_equal(req.body_kind, HTTP1_BODY_LENGTH);
    assert_int_equal(req.content_length, 42);
    assert_int_equal(
        req_parse("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_int_equal(req.body_kind, HTTP1_BODY_LENGTH);
    assert_int_equal(req.content_length, 0);
    assert_int_equal(
        req_parse("POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_int_equal(req.body_kind, HTTP1_BODY_CHUNKED);
    assert_int_equal(
        req_parse("POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_int_equal(req.body_kind, HTTP1_BODY_CHUNKED);
    /* identical duplicates are one length */
    assert_int_equal(req_parse("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                               "Content-Length: 5\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    assert_int_equal(req.content_length, 5);
    assert_int_equal(
        req_parse("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_int_equal(req.body_kind, HTTP1_BODY_LENGTH);
    assert_int_equal(req.content_length, 5);
    /* the largest 63-bit length */
    assert_int_equal(req_parse("POST /x HTTP/1.1\r\nHost: h\r\n"
                               "Content-Length: 9223372036854775807\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    assert_true(req.content_length == 9223372036854775807ull);
    /* CONNECT with an explicit zero length has no body */
    assert_int_equal(
        req_parse("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 0\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_int_equal(req.body_kind, HTTP1_BODY_NONE);
}

/* ---------------------------------------------------------------- refusals */

static void test_req_refuse_framing(void **state)
{
    (void)state;
    /* both Content-Length and Transfer-Encoding, in either order */
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n"),
                     HTTP1_ERR_BAD);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                            "Content-Length: 5\r\n\r\n"),
                     HTTP1_ERR_BAD);
    /* differing Content-Length, as two fields or as a list */
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                            "Content-Length: 6\r\n\r\n"),
                     HTTP1_ERR_BAD);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n"),
                     HTTP1_ERR_BAD);
    /* Content-Length that is not digits only */
    static const char *const bad_cl[] = {"+5", "-1", "5a",   "0x5", "5.0",  "",
                                         "5,", ",5", "5,,5", "5 5", "\"5\""};
    for (size_t i = 0; i < sizeof(bad_cl) / sizeof(bad_cl[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n",
                 bad_cl[i]);
        assert_int_equal(req_rc(buf), HTTP1_ERR_BAD);
    }
    /* Content-Length over 63 bits, and a 64-bit overflow */
    assert_int_equal(
        req_rc("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775808\r\n\r\n"),
        HTTP1_ERR_BAD);
    assert_int_equal(
        req_rc("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551621\r\n\r\n"),
        HTTP1_ERR_BAD);
    /* Transfer-Encoding in HTTP/1.0 */
    assert_int_equal(req_rc("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     HTTP1_ERR_BAD);
    /* CONNECT with a body */
    assert_int_equal(req_rc("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 5\r\n\r\n"),
                     HTTP1_ERR_BAD);
    assert_int_equal(
        req_rc("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HTTP1_ERR_BAD);
}

static void test_req_refuse_transfer_codings(void **state)
{
    (void)state;
    /* chunked not final, applied twice, or a malformed list: 400 (RFC 9112 §6.1, §7) */
    static const char *const bad[] = {"chunked, chunked",
                                      "xchunked",
                                      "chunked;q=1",
                                      "identity",
                                      "gzip",
                                      "chunked,",
                                      ", chunked",
                                      "",
                                      "chunkedx",
                                      "chunked gzip",
                                      "chunked, gzip",
                                      "gzip,, chunked"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n",
                 bad[i]);
        assert_int_equal(req_rc(buf), HTTP1_ERR_BAD);
    }
    /* two fields that each say chunked are "chunked, chunked" */
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n"),
                     HTTP1_ERR_BAD);
    /* a well-formed list ending in chunked, with codings we do not implement: 501 */
    static const char *const unimpl[] = {"gzip, chunked", "deflate,chunked", "x-custom , CHUNKED"};
    for (size_t i = 0; i < sizeof(unimpl) / sizeof(unimpl[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n",
                 unimpl[i]);
        assert_int_equal(req_rc(buf), HTTP1_ERR_NOT_IMPLEMENTED);
    }
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n"),
                     HTTP1_ERR_NOT_IMPLEMENTED);
}

static void test_req_refuse_line_endings_and_controls(void **state)
{
    (void)state;
    /* bare LF as a line ending, in the request line and in a field */
    assert_int_equal(req_rc("GET / HTTP/1.1\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\n\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\nb\r\n\r\n"), HTTP1_ERR_BAD);
    /* bare CR */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    /* control characters in values and names; HTAB is only allowed inside values */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fz\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\x1bz\r\n\r\n"), HTTP1_ERR_BAD);
    const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0z\r\n\r\n";
    struct http1_request req;
    size_t hl;
    assert_int_equal(http1_parse_request(nul, sizeof(nul) - 1, MAX_HEAD, &req, &hl), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX\x01Y: a\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX\tY: a\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: a\r\n\r\n"), HTTP1_ERR_BAD);
    /* obs-fold, with SP and with HTAB, and whitespace before the first field */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), HTTP1_ERR_BAD);
    /* whitespace between field name and colon */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost\t: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\n"),
                     HTTP1_ERR_BAD);
    /* a line without a colon, an empty name */
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n"), HTTP1_ERR_BAD);
}

static void test_req_refuse_host(void **state)
{
    (void)state;
    assert_int_equal(req_rc("GET / HTTP/1.1\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nX: y\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), HTTP1_ERR_BAD);
    /* invalid Host values: lists, userinfo, spaces, bad ports, numeric tricks, empty */
    static const char *const bad[] = {"evil.com,api.openai.com",
                                      "user@h",
                                      "a b",
                                      "h:",
                                      "h:0",
                                      "h:65536",
                                      "h:8x",
                                      "h:123456",
                                      "",
                                      "0x7f.1",
                                      "2130706433",
                                      "127.1",
                                      "01.2.3.4",
                                      "a..b",
                                      ".a",
                                      "[::1",
                                      "[zz]:1",
                                      "h%41",
                                      "[::1]x",
                                      "1.2.3.4."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
        assert_int_equal(req_rc(buf), HTTP1_ERR_BAD);
    }
    static const char *const good[] = {"h",      "api.openai.com",    "api.openai.com.",
                                       "h:8080", "127.0.0.1",         "127.0.0.1:80",
                                       "[::1]",  "[2001:db8::1]:443", "my_host-1.example"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
        assert_int_equal(req_rc(buf), HTTP1_OK);
    }
}

static void test_req_refuse_request_line(void **state)
{
    (void)state;
    /* spaces and controls in the target */
    assert_int_equal(req_rc("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET /\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    /* method must be a token */
    assert_int_equal(req_rc(" / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("G(T / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GE\tT / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("G\xc3\x89T / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    /* target forms */
    assert_int_equal(req_rc("CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("CONNECT h: HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("CONNECT http://h:443/ HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("CONNECT u@h:443 HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET x HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET http:/h/ HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET http:// HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET http://user:pw@h/ HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET http://allowed.com@evil.com/ HTTP/1.1\r\nHost: h\r\n\r\n"),
                     HTTP1_ERR_BAD);
}

static void test_req_refuse_version(void **state)
{
    (void)state;
    assert_int_equal(req_rc("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), HTTP1_ERR_VERSION);
    assert_int_equal(req_rc("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), HTTP1_ERR_VERSION);
    assert_int_equal(req_rc("GET / HTTP/0.9\r\nHost: h\r\n\r\n"), HTTP1_ERR_VERSION);
    assert_int_equal(req_rc("GET / HTTP/3.0\r\nHost: h\r\n\r\n"), HTTP1_ERR_VERSION);
    assert_int_equal(req_rc("GET / HTTP/1.1x\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1.10\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / http/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTP/11\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
    assert_int_equal(req_rc("GET / HTTPS/1.1\r\nHost: h\r\n\r\n"), HTTP1_ERR_BAD);
}

static void test_req_refuse_too_large(void **state)
{
    (void)state;
    struct http1_request req;
    size_t hl;
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\n\r\n"; /* 27 bytes */
    size_t n = strlen(s);
    assert_int_equal(http1_parse_request(s, n, n, &req, &hl), HTTP1_OK);
    assert_int_equal(http1_parse_request(s, n, n - 1, &req, &hl), HTTP1_ERR_TOO_LARGE);
    /* no complete head within max_head bytes, however many have arrived */
    char big[600];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET /", 5);
    assert_int_equal(http1_parse_request(big, 500, 512, &req, &hl), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request(big, 512, 512, &req, &hl), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request(big, 513, 512, &req, &hl), HTTP1_ERR_TOO_LARGE);
    assert_int_equal(http1_parse_request(big, sizeof(big), 512, &req, &hl), HTTP1_ERR_TOO_LARGE);

    /* exactly HTTP1_MAX_HEADERS fields pass, one more is 431 */
    char *buf = malloc(64 * (HTTP1_MAX_HEADERS + 2) + 64);
    assert_non_null(buf);
    for (int extra = 0; extra <= 1; extra++) {
        size_t off = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (int i = 1; i < HTTP1_MAX_HEADERS + extra; i++)
            off += (size_t)sprintf(buf + off, "X-%d: v\r\n", i);
        sprintf(buf + off, "\r\n");
        assert_int_equal(http1_parse_request(buf, strlen(buf), 65536, &req, &hl),
                         extra ? HTTP1_ERR_TOO_LARGE : HTTP1_OK);
        if (!extra)
            assert_int_equal(req.n_headers, HTTP1_MAX_HEADERS);
    }
    free(buf);
}

/* ---------------------------------------------------------------- derived flags */

static void test_req_keep_alive(void **state)
{
    (void)state;
    struct {
        const char *head;
        bool keep_alive;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: x\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: foo\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http1_request req;
        assert_int_equal(req_parse(cases[i].head, &req, NULL), HTTP1_OK);
        assert_int_equal(req.keep_alive, cases[i].keep_alive);
    }
}

static void test_req_expect_and_upgrade(void **state)
{
    (void)state;
    struct http1_request req;
    assert_int_equal(req_parse("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                               "Content-Length: 3\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    assert_true(req.expect_continue);
    assert_int_equal(
        req_parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &req,
                  NULL),
        HTTP1_OK);
    assert_false(req.expect_continue);
    assert_int_equal(req_parse("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
                               "Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    assert_true(req.upgrade_websocket);
    assert_int_equal(
        req_parse("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", &req, NULL),
        HTTP1_OK);
    assert_false(req.upgrade_websocket);
    assert_int_equal(req_parse("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n"
                               "Upgrade: h2c\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    assert_false(req.upgrade_websocket);
}

/* ---------------------------------------------------------------- incremental parsing */

static void test_req_incremental(void **state)
{
    (void)state;
    const char *s = "\r\nPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
    size_t head = strlen(s) - 3;
    struct http1_request req;
    size_t hl;
    for (size_t n = 0; n < head; n++)
        assert_int_equal(http1_parse_request(s, n, MAX_HEAD, &req, &hl), HTTP1_INCOMPLETE);
    for (size_t n = head; n <= strlen(s); n++) {
        assert_int_equal(http1_parse_request(s, n, MAX_HEAD, &req, &hl), HTTP1_OK);
        assert_int_equal(hl, head);
    }
}

static void test_req_incremental_early_refusal(void **state)
{
    (void)state;
    struct http1_request req;
    size_t hl;
    /* a bare LF is refused as soon as it arrives, long before any CRLFCRLF */
    const char *lf = "GET / HTTP/1.1\nHost: h";
    size_t at = strlen("GET / HTTP/1.1");
    assert_int_equal(http1_parse_request(lf, at, MAX_HEAD, &req, &hl), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request(lf, at + 1, MAX_HEAD, &req, &hl), HTTP1_ERR_BAD);
    /* a CR is pending until the next byte shows whether it is a bare CR */
    const char *cr = "GET / HTTP/1.1\rX";
    assert_int_equal(http1_parse_request(cr, at + 1, MAX_HEAD, &req, &hl), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request(cr, at + 2, MAX_HEAD, &req, &hl), HTTP1_ERR_BAD);
    /* control characters */
    assert_int_equal(http1_parse_request("GET /\x01", 6, MAX_HEAD, &req, &hl), HTTP1_ERR_BAD);
    assert_int_equal(http1_parse_request("GET / HTTP/1.1\r\nX: \0", 21, MAX_HEAD, &req, &hl),
                     HTTP1_ERR_BAD);
    /* refusal wins over "too large" when the bad byte is within the limit */
    char big[300];
    memset(big, 'a', sizeof(big));
    big[10] = '\n';
    assert_int_equal(http1_parse_request(big, sizeof(big), 100, &req, &hl), HTTP1_ERR_BAD);
}

/* ---------------------------------------------------------------- responses */

static void test_resp_framing(void **state)
{
    (void)state;
    struct http1_response r;
    const char *cl = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
    assert_int_equal(resp_parse(cl, "GET", &r), HTTP1_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.reason_len, 2);
    assert_int_equal(r.body_kind, HTTP1_BODY_LENGTH);
    assert_int_equal(r.content_length, 12);
    assert_true(r.keep_alive);
    /* HEAD: no body, but the length is kept for relaying */
    assert_int_equal(resp_parse(cl, "HEAD", &r), HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_NONE);
    assert_true(r.has_content_length);
    assert_int_equal(r.content_length, 12);
    assert_int_equal(
        resp_parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD", &r), HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_NONE);
    /* 1xx, 204, 304: never a body */
    static const char *const nobody[] = {
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"};
    for (size_t i = 0; i < sizeof(nobody) / sizeof(nobody[0]); i++) {
        assert_int_equal(resp_parse(nobody[i], "GET", &r), HTTP1_OK);
        assert_int_equal(r.body_kind, HTTP1_BODY_NONE);
        assert_true(r.keep_alive);
    }
    /* 2xx to CONNECT: a tunnel, no body; a refusal to CONNECT has one */
    assert_int_equal(resp_parse("HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT", &r),
                     HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_NONE);
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "CONNECT", &r),
                     HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_NONE);
    assert_int_equal(resp_parse("HTTP/1.1 407 Auth\r\nContent-Length: 9\r\n\r\n", "CONNECT", &r),
                     HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_LENGTH);
    /* chunked */
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", &r),
                     HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_CHUNKED);
    assert_true(r.keep_alive);
    /* neither: until close, not reusable */
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\n\r\n", "GET", &r), HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_UNTIL_CLOSE);
    assert_false(r.keep_alive);
    /* "GET" is not "HEAD" by prefix or case */
    assert_int_equal(resp_parse(cl, "head", &r), HTTP1_OK);
    assert_int_equal(r.body_kind, HTTP1_BODY_LENGTH);
}

static void test_resp_keep_alive_and_status_line(void **state)
{
    (void)state;
    struct http1_response r;
    assert_int_equal(
        resp_parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "GET", &r),
        HTTP1_OK);
    assert_false(r.keep_alive);
    assert_int_equal(resp_parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", &r),
                     HTTP1_OK);
    assert_false(r.keep_alive);
    assert_int_equal(r.version_minor, 0);
    assert_int_equal(
        resp_parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", "GET",
                   &r),
        HTTP1_OK);
    assert_true(r.keep_alive);
    /* empty reason, with and without the SP */
    assert_int_equal(resp_parse("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", "GET", &r), HTTP1_OK);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.reason_len, 0);
    assert_int_equal(resp_parse("HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", "GET", &r), HTTP1_OK);
    assert_int_equal(
        resp_parse("HTTP/1.1 599 Custom\tthing\r\nContent-Length: 0\r\n\r\n", "GET", &r), HTTP1_OK);
    /* bad status lines */
    static const char *const bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n",      "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",      "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",    "HTTP/1.1 200 O\x01K\r\n\r\n",
        "HTTP/1.1x 200 OK\r\n\r\n",    "HTTP/1.1\r\n\r\n",
        "\r\nHTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(resp_parse(bad[i], "GET", &r), HTTP1_ERR_BAD);
    assert_int_equal(resp_parse("HTTP/2.0 200 OK\r\n\r\n", "GET", &r), HTTP1_ERR_VERSION);
}

static void test_resp_refusals(void **state)
{
    (void)state;
    struct http1_response r;
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                "GET", &r),
                     HTTP1_ERR_BAD);
    /* ambiguous even where the body is known to be empty */
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                "HEAD", &r),
                     HTTP1_ERR_BAD);
    assert_int_equal(
        resp_parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "GET", &r),
        HTTP1_ERR_BAD);
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", "GET", &r),
                     HTTP1_OK);
    assert_int_equal(r.content_length, 5);
    assert_int_equal(resp_parse("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", &r),
                     HTTP1_ERR_BAD);
    assert_int_equal(
        resp_parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "GET", &r),
        HTTP1_ERR_NOT_IMPLEMENTED);
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", &r),
                     HTTP1_ERR_BAD);
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "GET", &r), HTTP1_ERR_BAD);
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "GET", &r), HTTP1_ERR_BAD);
    /* incremental and size limit */
    const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    size_t hl;
    for (size_t n = 0; n < strlen(s); n++)
        assert_int_equal(http1_parse_response(s, n, MAX_HEAD, "GET", 3, &r, &hl), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_response(s, strlen(s), MAX_HEAD, "GET", 3, &r, &hl), HTTP1_OK);
    assert_int_equal(hl, strlen(s));
    assert_int_equal(http1_parse_response(s, strlen(s), 10, "GET", 3, &r, &hl),
                     HTTP1_ERR_TOO_LARGE);
}

/* ---------------------------------------------------------------- chunked bodies */

/* Feeds body in pieces given by cuts (ascending offsets); returns the final result and the total
 * consumed through *total. Stops at the first non-INCOMPLETE result. */
static int chunked_feed_split(const char *body, size_t len, const size_t *cuts, size_t n_cuts,
                              size_t *total)
{
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t pos = 0;
    *total = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        size_t consumed = 0;
        int rc = http1_chunked_feed(&c, body + pos, end - pos, &consumed);
        *total += consumed;
        if (rc != HTTP1_INCOMPLETE)
            return rc;
        assert_int_equal(consumed, end - pos);
        pos = end;
    }
    return HTTP1_INCOMPLETE;
}

static int chunked_whole(const char *body, size_t *total)
{
    return chunked_feed_split(body, strlen(body), NULL, 0, total);
}

static const char *const valid_bodies[] = {
    "0\r\n\r\n",
    "5\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "A\r\n0123456789\r\n0000\r\n\r\n",
    "a;name=value\r\n0123456789\r\n0;x\r\n\r\n",
    "5 ;ext\r\nhello\r\n0\r\n\r\n",
    "5;a=\"quoted \\\" \\\\ ; x\";b ; c = d\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:\tv 2\r\n\r\n",
    "0000000000000005\r\nhello\r\n0\r\n\r\n",
    "3\r\n\r\n\r\r\n0\r\n\r\n", /* data is opaque: CR/LF inside data are fine */
};

static void test_chunked_valid_whole(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(valid_bodies) / sizeof(valid_bodies[0]); i++) {
        size_t total;
        assert_int_equal(chunked_whole(valid_bodies[i], &total), HTTP1_OK);
        assert_int_equal(total, strlen(valid_bodies[i]));
    }
}

static void test_chunked_valid_every_split(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(valid_bodies) / sizeof(valid_bodies[0]); i++) {
        const char *b = valid_bodies[i];
        size_t len = strlen(b), total;
        /* one byte at a time */
        size_t *cuts = malloc(len * sizeof(size_t));
        assert_non_null(cuts);
        for (size_t k = 1; k < len; k++)
            cuts[k - 1] = k;
        assert_int_equal(chunked_feed_split(b, len, cuts, len - 1, &total), HTTP1_OK);
        assert_int_equal(total, len);
        /* every single cut point */
        for (size_t k = 0; k <= len; k++) {
            size_t cut = k;
            assert_int_equal(chunked_feed_split(b, len, &cut, 1, &total), HTTP1_OK);
            assert_int_equal(total, len);
        }
        /* random splits */
        srand(1234 + (unsigned)i);
        for (int round = 0; round < 200; round++) {
            size_t n = 0;
            for (size_t k = 1; k < len; k++)
                if (rand() % 3 == 0)
                    cuts[n++] = k;
            assert_int_equal(chunked_feed_split(b, len, cuts, n, &total), HTTP1_OK);
            assert_int_equal(total, len);
        }
        free(cuts);
    }
}

static void test_chunked_stops_at_end(void **state)
{
    (void)state;
    const char *s = "5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    struct http1_chunked c;
    size_t consumed;
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_feed(&c, s, strlen(s), &consumed), HTTP1_OK);
    assert_int_equal(consumed, strlen("5\r\nhello\r\n0\r\n\r\n"));
    /* once done, more bytes are not part of the body */
    assert_int_equal(http1_chunked_feed(&c, "x", 1, &consumed), HTTP1_OK);
    assert_int_equal(consumed, 0);
}

static void test_chunked_large_chunk_skipped(void **state)
{
    (void)state;
    /* A chunk of 1 MiB fed in 64 KiB reads: each feed consumes its whole buffer. */
    struct http1_chunked c;
    size_t consumed;
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_feed(&c, "100000\r\n", 8, &consumed), HTTP1_INCOMPLETE);
    assert_int_equal(consumed, 8);
    char *data = calloc(1, 65536);
    assert_non_null(data);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(http1_chunked_feed(&c, data, 65536, &consumed), HTTP1_INCOMPLETE);
        assert_int_equal(consumed, 65536);
    }
    free(data);
    assert_int_equal(http1_chunked_feed(&c, "\r\n0\r\n\r\n", 7, &consumed), HTTP1_OK);
    assert_int_equal(consumed, 7);
    /* the largest size is accepted (and then waits for data) */
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_feed(&c, "7fffffffffffffff\r\nab", 20, &consumed),
                     HTTP1_INCOMPLETE);
    assert_int_equal(consumed, 20);
}

static void test_chunked_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "g\r\n",                              /* not hex */
        "\r\n",                               /* empty size */
        ";ext\r\n",                           /* extension without size */
        " 5\r\n",                             /* leading whitespace */
        "+5\r\n",                             /* sign */
        "0x5\r\n",                            /* C-style hex */
        "00000000000000005\r\n",              /* 17 digits */
        "8000000000000000\r\n",               /* over 2^63 - 1 */
        "ffffffffffffffff\r\n",               /* 64-bit maximum */
        "5 \r\nhello\r\n0\r\n\r\n",           /* whitespace not followed by ';' */
        "5\nhello\r\n0\r\n\r\n",              /* bare LF after size */
        "5\rhello\r\n0\r\n\r\n",              /* bare CR after size */
        "5\r\nhelloX\r\n0\r\n\r\n",           /* data longer than the size */
        "5\r\nhello\n0\r\n\r\n",              /* LF only after data */
        "5\r\nhello0\r\n\r\n",                /* no CRLF after data */
        "5;\r\nhello\r\n0\r\n\r\n",           /* empty extension name */
        "5;a=\r\nhello\r\n0\r\n\r\n",         /* empty extension value */
        "5;a b\r\nhello\r\n0\r\n\r\n",        /* whitespace inside extension */
        "5;a=\"x\r\nhello\r\n0\r\n\r\n",      /* unterminated quoted string */
        "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", /* control in quoted string */
        "5;a=b \r\nhello\r\n0\r\n\r\n",       /* trailing whitespace after extension */
        "5;(=b\r\nhello\r\n0\r\n\r\n",        /* name not a token */
        "0\r\nX: a\r\n b\r\n\r\n",            /* obs-fold in trailers */
        "0\r\nX : a\r\n\r\n",                 /* whitespace before colon */
        "0\r\nNoColon\r\n\r\n",               /* no colon */
        "0\r\nX: a\x01\r\n\r\n",              /* control in trailer value */
        "0\r\nX: a\nY: b\r\n\r\n",            /* bare LF in trailers */
        "0\r\nX: a\r\n\n",                    /* bare LF as final line */
        "0\r\nContent-Length: 5\r\n\r\n",     /* framing field in trailers */
        "0\r\ntransfer-encoding: chunked\r\n\r\n",
        "0\r\nHOST: evil\r\n\r\n",
        "0\r\n\rX", /* bare CR as final line */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t total;
        assert_int_equal(chunked_whole(bad[i], &total), HTTP1_ERR_BAD);
        assert_true(total < strlen(bad[i]));
        /* split at every byte too: the verdict must not depend on the reads */
        size_t len = strlen(bad[i]);
        size_t cuts[64];
        for (size_t k = 1; k < len && k <= 64; k++)
            cuts[k - 1] = k;
        assert_int_equal(chunked_feed_split(bad[i], len, cuts, len - 1 < 64 ? len - 1 : 64, &total),
                         HTTP1_ERR_BAD);
    }
    /* names that merely start like a forbidden one are fine */
    size_t total;
    assert_int_equal(
        chunked_whole("0\r\nHostname: x\r\nContent-Lengths: 1\r\nHos: y\r\n\r\n", &total),
        HTTP1_OK);
}

static void test_chunked_limits_and_sticky_error(void **state)
{
    (void)state;
    struct http1_chunked c;
    size_t consumed;
    /* trailers over 8 KiB */
    size_t n = 9000;
    char *big = malloc(n + 32);
    assert_non_null(big);
    strcpy(big, "0\r\nX: ");
    size_t off = strlen(big);
    memset(big + off, 'a', n);
    strcpy(big + off + n, "\r\n\r\n");
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_feed(&c, big, strlen(big), &consumed), HTTP1_ERR_BAD);
    /* a chunk-size line with endless extensions */
    strcpy(big, "5;x=");
    memset(big + 4, 'a', n);
    strcpy(big + 4 + n, "\r\n");
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_feed(&c, big, strlen(big), &consumed), HTTP1_ERR_BAD);
    free(big);
    /* the error is sticky and consumed stops before the offending byte */
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_feed(&c, "5\r\nhelloX", 9, &consumed), HTTP1_ERR_BAD);
    assert_int_equal(consumed, 8);
    assert_int_equal(http1_chunked_feed(&c, "\r\n0\r\n\r\n", 7, &consumed), HTTP1_ERR_BAD);
    assert_int_equal(consumed, 0);
}

/* ---------------------------------------------------------------- serialisers */

static void test_write_request_hop_by_hop(void **state)
{
    (void)state;
    const char *s =
        "POST http://h/x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Foo, Host\r\n"
        "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Authenticate: x\r\nTE: trailers\r\n"
        "Trailer: X-Sum\r\nUpgrade: h2c\r\nX-Foo: dropme\r\nX-Bar: keep\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    struct http1_request req;
    assert_int_equal(req_parse(s, &req, NULL), HTTP1_OK);
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/x", 2, NULL, 0), 0);
    char *h = evbuf_str(out);
    assert_true(strncmp(h, "POST /x HTTP/1.1\r\n", 18) == 0);
    static const char *const gone[] = {"Connection",
                                       "Keep-Alive",
                                       "Proxy-Connection",
                                       "Proxy-Authorization",
                                       "Proxy-Authenticate",
                                       "TE",
                                       "Trailer",
                                       "Upgrade",
                                       "X-Foo"};
    for (size_t i = 0; i < sizeof(gone) / sizeof(gone[0]); i++)
        assert_int_equal(count_field(h, gone[i]), 0);
    assert_null(strstr(h, "c2VjcmV0"));
    assert_int_equal(count_field(h, "Host"), 1); /* never dropped via Connection */
    assert_int_equal(count_field(h, "X-Bar"), 1);
    assert_int_equal(count_field(h, "Transfer-Encoding"), 1);
    assert_non_null(strstr(h, "\r\nTransfer-Encoding: chunked\r\n\r\n"));
    /* the output is itself a valid, equivalent request */
    struct http1_request again;
    size_t hl;
    assert_int_equal(http1_parse_request(h, strlen(h), MAX_HEAD, &again, &hl), HTTP1_OK);
    assert_int_equal(hl, strlen(h));
    assert_int_equal(again.body_kind, HTTP1_BODY_CHUNKED);
    free(h);
    evbuffer_free(out);
}

static void test_write_request_overrides(void **state)
{
    (void)state;
    /* the sandbox sends its own credential twice, in other cases, and names it in Connection */
    const char *s = "GET /v1 HTTP/1.1\r\nHost: api.openai.com\r\nauthorization: Bearer fake1\r\n"
                    "X-Keep: 1\r\nAUTHORIZATION: Bearer fake2\r\nConnection: Authorization\r\n"
                    "Content-Length: 5, 5\r\nContent-Length: 5\r\n\r\n";
    struct http1_request req;
    assert_int_equal(req_parse(s, &req, NULL), HTTP1_OK);
    struct http1_header_override ov[] = {{"Authorization", "Bearer sk-real"},
                                         {"OpenAI-Organization", "org-1"}};
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/v1", 3, ov, 2), 0);
    char *h = evbuf_str(out);
    assert_int_equal(count_field(h, "Authorization"), 1);
    assert_non_null(strstr(h, "\r\nAuthorization: Bearer sk-real\r\n"));
    assert_null(strstr(h, "fake"));
    assert_int_equal(count_field(h, "OpenAI-Organization"), 1);
    assert_int_equal(count_field(h, "X-Keep"), 1);
    /* Content-Length collapsed to one canonical field */
    assert_int_equal(count_field(h, "Content-Length"), 1);
    assert_non_null(strstr(h, "\r\nContent-Length: 5\r\n"));
    assert_int_equal(count_field(h, "Connection"), 0);
    free(h);
    evbuffer_free(out);

    /* without Connection naming it, the override alone replaces both client copies */
    assert_int_equal(req_parse("GET /v1 HTTP/1.1\r\nHost: h\r\naUtHoRiZaTiOn: Bearer fake1\r\n"
                               "Authorization: Bearer fake2\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/v1", 3, ov, 1), 0);
    h = evbuf_str(out);
    assert_string_equal(h, "GET /v1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sk-real\r\n\r\n");
    free(h);
    evbuffer_free(out);

    /* a later override of the same name replaces an earlier one */
    struct http1_header_override twice[] = {{"X-Api-Key", "one"}, {"x-api-key", "two"}};
    assert_int_equal(req_parse(s, &req, NULL), HTTP1_OK);
    out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/v1", 3, twice, 2), 0);
    h = evbuf_str(out);
    assert_int_equal(count_field(h, "X-Api-Key"), 1);
    assert_non_null(strstr(h, "x-api-key: two\r\n"));
    free(h);
    evbuffer_free(out);

    /* "X_Api_Key" is "X-Api-Key" to a CGI/WSGI origin: replaced as well */
    struct http1_header_override key[] = {{"X-Api-Key", "real"}};
    assert_int_equal(req_parse("GET /v1 HTTP/1.1\r\nHost: h\r\nX_Api_Key: fake\r\n"
                               "x-api_KEY: fake2\r\nX-Api-Keys: other\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/v1", 3, key, 1), 0);
    h = evbuf_str(out);
    assert_string_equal(h, "GET /v1 HTTP/1.1\r\nHost: h\r\nX-Api-Keys: other\r\nX-Api-Key: real\r\n\r\n");
    free(h);
    evbuffer_free(out);

    /* a NULL value removes every client copy and adds nothing (AWS re-signing drops the
     * sandbox's X-Amz-Security-Token when the rule has none) */
    struct http1_header_override drop[] = {{"X-Amz-Security-Token", NULL}};
    assert_int_equal(req_parse("GET /v1 HTTP/1.1\r\nHost: h\r\nx-amz-security-token: fake\r\n"
                               "X-Keep: 1\r\nX-AMZ-SECURITY-TOKEN: fake2\r\n\r\n",
                               &req, NULL),
                     HTTP1_OK);
    out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/v1", 3, drop, 1), 0);
    h = evbuf_str(out);
    assert_string_equal(h, "GET /v1 HTTP/1.1\r\nHost: h\r\nX-Keep: 1\r\n\r\n");
    free(h);
    evbuffer_free(out);
    /* a removal still needs a valid, non-framing name */
    struct http1_header_override bad_drop[] = {{"Content-Length", NULL}};
    out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/v1", 3, bad_drop, 1), -1);
    evbuffer_free(out);
}

static void test_write_request_bad_overrides(void **state)
{
    (void)state;
    struct http1_request req;
    assert_int_equal(req_parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &req, NULL), HTTP1_OK);
    static const struct http1_header_override bad[] = {
        {"Authorization", "Bearer x\r\nX-Injected: 1"},
        {"Authorization", "Bearer x\n"},
        {"Authorization", "Bearer x\r"},
        {"Authorization", "Bearer \x01x"},
        {"Authorization", "Bearer \x7fx"},
        {"Bad Name", "v"},
        {"Bad:Name", "v"},
        {"", "v"},
        {"X\r\nY", "v"},
        {"Content-Length", "0"},
        {"transfer-encoding", "chunked"},
        {"Connection", "close"},
        {"Upgrade", "x"},
        {NULL, "v"},
    };
    /* (a NULL value is a removal for http1_write_request_head, but never a valid field) */
    struct http1_header_override no_value = {"X", NULL};
    assert_false(http1_override_valid(&no_value));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct evbuffer *out = evbuffer_new();
        struct http1_header_override ov[2] = {{"X-Good", "fine"}, bad[i]};
        assert_int_equal(http1_write_request_head(out, &req, "/", 1, ov, 2), -1);
        assert_int_equal(evbuffer_get_length(out), 0);
        assert_false(http1_override_valid(&bad[i]));
        evbuffer_free(out);
    }
    struct http1_header_override ok = {"X-Tab", "a\tb"};
    assert_true(http1_override_valid(&ok));
    /* a bad origin target is refused too */
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/a b", 4, NULL, 0), -1);
    assert_int_equal(http1_write_request_head(out, &req, "/a\r\n", 4, NULL, 0), -1);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

static void test_write_request_websocket(void **state)
{
    (void)state;
    const char *s =
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, X-Foo\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\nX-Foo: 1\r\n\r\n";
    struct http1_request req;
    assert_int_equal(req_parse(s, &req, NULL), HTTP1_OK);
    assert_true(req.upgrade_websocket);
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/ws", 3, NULL, 0), 0);
    char *h = evbuf_str(out);
    assert_int_equal(count_field(h, "Connection"), 1);
    assert_int_equal(count_field(h, "Upgrade"), 1);
    assert_non_null(strstr(h, "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"));
    assert_int_equal(count_field(h, "Sec-WebSocket-Key"), 1);
    assert_int_equal(count_field(h, "X-Foo"), 0);
    struct http1_request again;
    size_t hl;
    assert_int_equal(http1_parse_request(h, strlen(h), MAX_HEAD, &again, &hl), HTTP1_OK);
    assert_true(again.upgrade_websocket);
    free(h);
    evbuffer_free(out);
}

static void test_write_request_http10(void **state)
{
    (void)state;
    /* HTTP/1.0 in, HTTP/1.1 out: the caller supplies Host; an HTTP/1.0 Expect is not forwarded */
    struct http1_request req;
    assert_int_equal(
        req_parse("POST /f HTTP/1.0\r\nExpect: 100-continue\r\nConnection: keep-alive\r\n"
                  "Content-Length: 2\r\n\r\n",
                  &req, NULL),
        HTTP1_OK);
    struct http1_header_override ov[] = {{"Host", "example.com"}};
    struct evbuffer *out = evbuffer_new();
    assert_int_equal(http1_write_request_head(out, &req, "/f", 2, ov, 1), 0);
    char *h = evbuf_str(out);
    assert_string_equal(h, "POST /f HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\n");
    free(h);
    evbuffer_free(out);
}

static void test_write_response_head(void **state)
{
    (void)state;
    const char *s =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Secret\r\n"
        "Keep-Alive: timeout=5\r\nX-Secret: s\r\nProxy-Authenticate: Basic\r\n"
        "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\nUpgrade: h2\r\n\r\n";
    struct http1_response r;
    assert_int_equal(resp_parse(s, "GET", &r), HTTP1_OK);
    struct evbuffer *out = evbuffer_new();
    http1_write_response_head(out, &r, false);
    char *h = evbuf_str(out);
    assert_true(strncmp(h, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_int_equal(count_field(h, "Content-Type"), 1);
    assert_int_equal(count_field(h, "Keep-Alive"), 0);
    assert_int_equal(count_field(h, "X-Secret"), 0);
    assert_int_equal(count_field(h, "Proxy-Authenticate"), 0);
    assert_int_equal(count_field(h, "Trailer"), 0);
    assert_int_equal(count_field(h, "Upgrade"), 0);
    assert_int_equal(count_field(h, "Transfer-Encoding"), 1);
    assert_int_equal(count_field(h, "Connection"), 1);
    assert_non_null(strstr(h, "\r\nConnection: close\r\n"));
    struct http1_response again;
    size_t hl;
    assert_int_equal(http1_parse_response(h, strlen(h), MAX_HEAD, "GET", 3, &again, &hl), HTTP1_OK);
    assert_int_equal(again.body_kind, HTTP1_BODY_CHUNKED);
    assert_false(again.keep_alive);
    free(h);
    evbuffer_free(out);

    /* a kept-alive client; HTTP/1.0 upstream status line becomes HTTP/1.1 */
    assert_int_equal(resp_parse("HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\n", "GET", &r),
                     HTTP1_OK);
    out = evbuffer_new();
    http1_write_response_head(out, &r, true);
    h = evbuf_str(out);
    assert_string_equal(h, "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n"
                           "Connection: keep-alive\r\n\r\n");
    free(h);
    evbuffer_free(out);

    /* HEAD response keeps its Content-Length; an empty reason gets the standard one */
    assert_int_equal(resp_parse("HTTP/1.1 200\r\nContent-Length: 5, 5\r\n\r\n", "HEAD", &r),
                     HTTP1_OK);
    out = evbuffer_new();
    http1_write_response_head(out, &r, true);
    h = evbuf_str(out);
    assert_string_equal(h,
                        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n");
    free(h);
    evbuffer_free(out);

    /* a body until close always says close */
    assert_int_equal(resp_parse("HTTP/1.1 200 OK\r\n\r\n", "GET", &r), HTTP1_OK);
    out = evbuffer_new();
    http1_write_response_head(out, &r, true);
    h = evbuf_str(out);
    assert_string_equal(h, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    free(h);
    evbuffer_free(out);
}

static void test_write_response_101(void **state)
{
    (void)state;
    const char *s =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: xyz\r\nKeep-Alive: 1\r\n\r\n";
    struct http1_response r;
    assert_int_equal(resp_parse(s, "GET", &r), HTTP1_OK);
    struct evbuffer *out = evbuffer_new();
    http1_write_response_head(out, &r, false);
    char *h = evbuf_str(out);
    assert_string_equal(h, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Accept: xyz\r\n\r\n");
    free(h);
    evbuffer_free(out);

    /* other interim responses lose their hop-by-hop fields and get no Connection of ours */
    assert_int_equal(resp_parse("HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n", "POST", &r),
                     HTTP1_OK);
    out = evbuffer_new();
    http1_write_response_head(out, &r, false);
    h = evbuf_str(out);
    assert_string_equal(h, "HTTP/1.1 100 Continue\r\n\r\n");
    free(h);
    evbuffer_free(out);
}

/* ---------------------------------------------------------------- helpers */

static void test_list_and_find(void **state)
{
    (void)state;
    const char *v = "keep-alive, Close ,\tUpgrade";
    assert_true(http1_list_has_token(v, strlen(v), "close"));
    assert_true(http1_list_has_token(v, strlen(v), "upgrade"));
    assert_true(http1_list_has_token(v, strlen(v), "KEEP-ALIVE"));
    assert_false(http1_list_has_token(v, strlen(v), "clos"));
    assert_false(http1_list_has_token(v, strlen(v), "keep"));
    assert_false(http1_list_has_token("", 0, "close"));
    assert_false(http1_list_has_token(NULL, 0, "close"));
    struct http1_request req;
    assert_int_equal(req_parse("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n", &req, NULL),
                     HTTP1_OK);
    const struct http1_header *f = http1_find_header(req.headers, req.n_headers, "X-a");
    assert_non_null(f);
    assert_memory_equal(f->value, "1", 1);
    assert_null(http1_find_header(req.headers, req.n_headers, "X-B"));
    assert_string_equal(http1_reason_phrase(403), "Forbidden");
    assert_string_equal(http1_reason_phrase(502), "Bad Gateway");
    assert_string_equal(http1_reason_phrase(431), "Request Header Fields Too Large");
    assert_non_null(http1_reason_phrase(799));
}

static void test_parse_target_and_authority(void **state)
{
    (void)state;
    struct http1_target t;
    const char *abs = "https://API.example.com:8443/v1?x=1";
    assert_int_equal(http1_parse_target("GET", 3, abs, strlen(abs), &t), 0);
    assert_int_equal(t.form, HTTP1_TARGET_ABSOLUTE);
    assert_true(t.https);
    assert_int_equal(t.authority.host_len, strlen("API.example.com"));
    assert_memory_equal(t.authority.host, "API.example.com", t.authority.host_len);
    assert_int_equal(t.authority.port, 8443);
    assert_int_equal(t.path_len, strlen("/v1?x=1"));
    assert_int_equal(http1_parse_target("GET", 3, "http://h", 8, &t), 0);
    assert_int_equal(t.path_len, 0);
    assert_int_equal(t.authority.port, -1);
    assert_int_equal(http1_parse_target("CONNECT", 7, "[::1]:443", 9, &t), 0);
    assert_int_equal(t.form, HTTP1_TARGET_AUTHORITY);
    assert_true(t.authority.is_ip);
    assert_int_equal(t.authority.host_len, 3);
    assert_int_equal(http1_parse_target("OPTIONS", 7, "*", 1, &t), 0);
    assert_int_equal(t.form, HTTP1_TARGET_ASTERISK);
    struct http1_authority a;
    assert_int_equal(http1_parse_authority("10.0.0.1:80", 11, true, &a), 0);
    assert_true(a.is_ip);
    assert_int_equal(a.port, 80);
    assert_int_equal(http1_parse_authority("10.0.0.1", 8, true, &a), -1);
    assert_int_equal(http1_parse_authority("[fe80::1%25eth0]:80", 19, true, &a), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_origin_form),
        cmocka_unit_test(test_req_other_forms),
        cmocka_unit_test(test_req_leading_empty_lines),
        cmocka_unit_test(test_req_bodies),
        cmocka_unit_test(test_req_refuse_framing),
        cmocka_unit_test(test_req_refuse_transfer_codings),
        cmocka_unit_test(test_req_refuse_line_endings_and_controls),
        cmocka_unit_test(test_req_refuse_host),
        cmocka_unit_test(test_req_refuse_request_line),
        cmocka_unit_test(test_req_refuse_version),
        cmocka_unit_test(test_req_refuse_too_large),
        cmocka_unit_test(test_req_keep_alive),
        cmocka_unit_test(test_req_expect_and_upgrade),
        cmocka_unit_test(test_req_incremental),
        cmocka_unit_test(test_req_incremental_early_refusal),
        cmocka_unit_test(test_resp_framing),
        cmocka_unit_test(test_resp_keep_alive_and_status_line),
        cmocka_unit_test(test_resp_refusals),
        cmocka_unit_test(test_chunked_valid_whole),
        cmocka_unit_test(test_chunked_valid_every_split),
        cmocka_unit_test(test_chunked_stops_at_end),
        cmocka_unit_test(test_chunked_large_chunk_skipped),
        cmocka_unit_test(test_chunked_invalid),
        cmocka_unit_test(test_chunked_limits_and_sticky_error),
        cmocka_unit_test(test_write_request_hop_by_hop),
        cmocka_unit_test(test_write_request_overrides),
        cmocka_unit_test(test_write_request_bad_overrides),
        cmocka_unit_test(test_write_request_websocket),
        cmocka_unit_test(test_write_request_http10),
        cmocka_unit_test(test_write_response_head),
        cmocka_unit_test(test_write_response_101),
        cmocka_unit_test(test_list_and_find),
        cmocka_unit_test(test_parse_target_and_authority),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
