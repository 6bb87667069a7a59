/* Unit tests for clienthello: real ClientHellos written by an OpenSSL client into a memory BIO
 * (SNI, ALPN, TLS 1.0 to 1.3), every truncation, re-fragmentation across records, and
 * hand-crafted malformed hellos for each strictness rule the transparent listener relies on.
 *
 * With CLIENTHELLO_WRITE_CORPUS=DIR set, the real hellos are also written to DIR as fuzzing seeds
 * (that is how fuzz/corpus/clienthello/ was made). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "clienthello.h"

/* ---------------------------------------------------------------- real hellos from OpenSSL */

struct hello {
    uint8_t *b;
    size_t n;
};

/* Runs an OpenSSL client handshake into memory BIOs until it waits for the server, and returns
 * the bytes it wrote (its ClientHello). sni/alpn may be NULL; versions are TLS1_x_VERSION or 0. */
static struct hello real_hello(const char *sni, const char *alpn_wire, size_t alpn_len, int min_v,
                               int max_v)
{
    struct hello h = {NULL, 0};
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    /* TLS 1.0 hellos need the legacy ciphers that security level 0 allows. */
    SSL_CTX_set_security_level(ctx, 0);
    assert_int_equal(SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0"), 1);
    if (min_v)
        assert_int_equal(SSL_CTX_set_min_proto_version(ctx, min_v), 1);
    if (max_v)
        assert_int_equal(SSL_CTX_set_max_proto_version(ctx, max_v), 1);
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    assert_non_null(rbio);
    assert_non_null(wbio);
    SSL_set_bio(ssl, rbio, wbio); /* ssl owns both BIOs now */
    if (sni)
        assert_int_equal(SSL_set_tlsext_host_name(ssl, sni), 1);
    if (alpn_wire)
        assert_int_equal(
            SSL_set_alpn_protos(ssl, (const unsigned char *)alpn_wire, (unsigned)alpn_len), 0);
    SSL_set_connect_state(ssl);
    int rc = SSL_connect(ssl);
    assert_int_equal(rc, -1);
    assert_int_equal(SSL_get_error(ssl, rc), SSL_ERROR_WANT_READ);
    char *data = NULL;
    long n = BIO_get_mem_data(wbio, &data);
    assert_true(n > 0);
    h.n = (size_t)n;
    h.b = malloc(h.n);
    assert_non_null(h.b);
    memcpy(h.b, data, h.n);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return h;
}

#define ALPN_H2_H11 "\x02h2\x08http/1.1"

/* Writes a seed file when CLIENTHELLO_WRITE_CORPUS names a directory. */
static void maybe_write_seed(const char *name, const uint8_t *b, size_t n)
{
    const char *dir = getenv("CLIENTHELLO_WRITE_CORPUS");
    if (!dir)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* Re-frames a single-record hello into records carrying at most frag bytes of the handshake
 * message each. Returns a heap buffer the caller frees; *n_out is its length. */
static uint8_t *refragment(const struct hello *h, size_t frag, size_t *n_out)
{
    assert_true(h->n >= 5);
    size_t rlen = (size_t)h->b[3] << 8 | h->b[4];
    assert_int_equal(rlen + 5, h->n); /* the fixture is one record */
    const uint8_t *msg = h->b + 5;
    size_t records = (rlen + frag - 1) / frag;
    uint8_t *out = malloc(rlen + 5 * records);
    assert_non_null(out);
    size_t o = 0;
    for (size_t off = 0; off < rlen; off += frag) {
        size_t n = rlen - off < frag ? rlen - off : frag;
        out[o++] = 22;
        out[o++] = h->b[1];
        out[o++] = h->b[2];
        out[o++] = (uint8_t)(n >> 8);
        out[o++] = (uint8_t)n;
        memcpy(out + o, msg + off, n);
        o += n;
    }
    *n_out = o;
    return out;
}

static void test_real_tls13_sni_alpn(void **state)
{
    (void)state;
    struct hello h =
        real_hello("API.OpenAI.com", ALPN_H2_H11, sizeof ALPN_H2_H11 - 1, TLS1_2_VERSION, 0);
    maybe_write_seed("tls13-sni-alpn", h.b, h.n);
    struct clienthello_info ci;
    assert_int_equal(clienthello_parse(h.b, h.n, &ci), CLIENTHELLO_OK);
    assert_true(ci.is_handshake);
    assert_true(ci.is_client_hello);
    assert_int_equal(ci.wire_len, h.n);
    assert_true(ci.has_sni);
    assert_false(ci.sni_is_ip);
    assert_string_equal(ci.sni, "api.openai.com"); /* lower-cased */
    assert_int_equal(ci.sni_len, strlen("api.openai.com"));
    assert_true(ci.has_alpn);
    assert_true(ci.alpn_h2);
    assert_true(ci.alpn_http11);
    assert_int_equal(ci.alpn_count, 2);
    assert_int_equal(ci.alpn_len, sizeof ALPN_H2_H11 - 1);
    assert_memory_equal(ci.alpn, ALPN_H2_H11, ci.alpn_len);
    assert_true(ci.has_supported_versions);
    assert_int_equal(ci.legacy_version, 0x0303);
    assert_int_equal(ci.max_version, 0x0304);
    assert_int_equal(ci.min_version, 0x0303);
    assert_true(ci.record_version >= 0x0301 && ci.record_version <= 0x0303);
    assert_false(ci.offers_ech);
    free(h.b);
}

static void test_real_tls12_http11_only(void **state)
{
    (void)state;
    struct hello h = real_hello("example.com", "\x08http/1.1", 9, TLS1_2_VERSION, TLS1_2_VERSION);
    maybe_write_seed("tls12-sni-http11", h.b, h.n);
    struct clienthello_info ci;
    assert_int_equal(clienthello_parse(h.b, h.n, &ci), CLIENTHELLO_OK);
    assert_string_equal(ci.sni, "example.com");
    assert_false(ci.alpn_h2);
    assert_true(ci.alpn_http11);
    assert_int_equal(ci.max_version, 0x0303);
    assert_int_equal(ci.legacy_version, 0x0303);
    free(h.b);
}

/* A TLS 1.0-only client is reported as such, so the caller can refuse TLS < 1.2. */
static void test_real_tls10(void **state)
{
    (void)state;
    struct hello h = real_hello("old.example", NULL, 0, TLS1_VERSION, TLS1_VERSION);
    maybe_write_seed("tls10-sni", h.b, h.n);
    struct clienthello_info ci;
    assert_int_equal(clienthello_parse(h.b, h.n, &ci), CLIENTHELLO_OK);
    assert_string_equal(ci.sni, "old.example");
    assert_int_equal(ci.max_version, 0x0301);
    assert_true(ci.max_version < 0x0303);
    assert_false(ci.has_alpn);
    free(h.b);
}

static void test_real_no_sni(void **state)
{
    (void)state;
    struct hello h = real_hello(NULL, ALPN_H2_H11, sizeof ALPN_H2_H11 - 1, 0, 0);
    maybe_write_seed("tls13-no-sni", h.b, h.n);
    struct clienthello_info ci;
    assert_int_equal(clienthello_parse(h.b, h.n, &ci), CLIENTHELLO_OK);
    assert_false(ci.has_sni);
    assert_false(ci.sni_is_ip);
    assert_string_equal(ci.sni, "");
    free(h.b);
}

/* IP literals in SNI (forbidden by RFC 6066, sent anyway by some clients) are not names. */
static void test_real_ip_in_sni(void **state)
{
    (void)state;
    const char *ips[] = {"127.0.0.1", "169.254.169.254", "::1",           "[fe80::1]",
                         "0x7f.1",    "2130706433",      "foo.0x7f000001"};
    for (size_t i = 0; i < sizeof ips / sizeof ips[0]; i++) {
        struct hello h = real_hello(ips[i], NULL, 0, 0, 0);
        if (i == 0)
            maybe_write_seed("tls13-ip-sni", h.b, h.n);
        struct clienthello_info ci;
        assert_int_equal(clienthello_parse(h.b, h.n, &ci), CLIENTHELLO_OK);
        assert_false(ci.has_sni);
        assert_true(ci.sni_is_ip);
        assert_string_equal(ci.sni, "");
        free(h.b);
    }
}

/* Every strict prefix of a valid hello asks for more, with a need the full hello satisfies. */
static void test_truncated_every_byte(void **state)
{
    (void)state;
    struct hello h = real_hello("api.openai.com", ALPN_H2_H11, sizeof ALPN_H2_H11 - 1, 0, 0);
    struct clienthello_info ci;
    for (size_t n = 0; n < h.n; n++) {
        uint8_t *copy = malloc(n ? n : 1); /* exact-size copy: ASan catches any over-read */
        assert_non_null(copy);
        memcpy(copy, h.b, n);
        assert_int_equal(clienthello_parse(copy, n, &ci), CLIENTHELLO_NEED_MORE);
        assert_true(ci.need > n);
        assert_true(ci.need <= h.n);
        free(copy);
    }
    free(h.b);
}

/* The same hello split across records parses to the same name; prefixes still ask for more. */
static void test_fragmented(void **state)
{
    (void)state;
    struct hello h = real_hello("Frag.Example.org", ALPN_H2_H11, sizeof ALPN_H2_H11 - 1, 0, 0);
    size_t frags[] = {1000, 300, 100, 50, 7};
    struct clienthello_info ci;
    for (size_t k = 0; k < sizeof frags / sizeof frags[0]; k++) {
        size_t n = 0;
        uint8_t *f = refragment(&h, frags[k], &n);
        size_t records = (h.n - 5 + frags[k] - 1) / frags[k];
        int rc = clienthello_parse(f, n, &ci);
        if (records > CLIENTHELLO_MAX_RECORDS) {
            assert_int_equal(rc, CLIENTHELLO_INVALID);
        } else {
            if (frags[k] == 100)
                maybe_write_seed("tls13-fragmented-100", f, n);
            assert_int_equal(rc, CLIENTHELLO_OK);
            assert_string_equal(ci.sni, "frag.example.org");
            assert_true(ci.alpn_h2);
            assert_int_equal(ci.wire_len, n);
            for (size_t p = 0; p < n; p++) {
                assert_int_equal(clienthello_parse(f, p, &ci), CLIENTHELLO_NEED_MORE);
                assert_true(ci.need > p && ci.need <= n);
            }
        }
        free(f);
    }
    /* A non-handshake record in the middle of a fragmented hello is refused. */
    size_t n = 0;
    uint8_t *f = refragment(&h, 100, &n);
    f[105] = 23;
    assert_int_equal(clienthello_parse(f, n, &ci), CLIENTHELLO_INVALID);
    free(f);
    free(h.b);
}

/* Data after the hello's last record (a 0-RTT record, say) is not examined; data inside that
 * record after the hello is refused. */
static void test_trailing_data(void **state)
{
    (void)state;
    struct hello h = real_hello("example.com", NULL, 0, 0, 0);
    struct clienthello_info ci;
    uint8_t *b = malloc(h.n + 8);
    assert_non_null(b);
    memcpy(b, h.b, h.n);
    memcpy(b + h.n, "\x17\x03\x03\x00\x03xyz", 8);
    assert_int_equal(clienthello_parse(b, h.n + 8, &ci), CLIENTHELLO_OK);
    assert_int_equal(ci.wire_len, h.n);
    /* grow the record by one byte: the hello no longer fills it */
    memcpy(b, h.b, h.n);
    b[h.n] = 0;
    size_t rlen = ((size_t)b[3] << 8 | b[4]) + 1;
    b[3] = (uint8_t)(rlen >> 8);
    b[4] = (uint8_t)rlen;
    assert_int_equal(clienthello_parse(b, h.n + 1, &ci), CLIENTHELLO_INVALID);
    /* even before the extra byte has arrived */
    assert_int_equal(clienthello_parse(b, h.n, &ci), CLIENTHELLO_INVALID);
    free(b);
    free(h.b);
}

/* ---------------------------------------------------------------- hand-crafted hellos */

struct buf {
    uint8_t b[70000];
    size_t n;
};

static void put8(struct buf *b, unsigned v)
{
    b->b[b->n++] = (uint8_t)v;
}

static void put16(struct buf *b, unsigned v)
{
    put8(b, v >> 8);
    put8(b, v);
}

static void putmem(struct buf *b, const void *p, size_t n)
{
    memcpy(b->b + b->n, p, n);
    b->n += n;
}

/* Appends one extension. */
static void put_ext(struct buf *b, unsigned type, const void *body, size_t n)
{
    put16(b, type);
    put16(b, (unsigned)n);
    putmem(b, body, n);
}

/* Appends a well-formed server_name extension with one host_name entry. */
static void put_sni(struct buf *b, const char *name)
{
    size_t n = strlen(name);
    put16(b, 0);
    put16(b, (unsigned)(n + 5));
    put16(b, (unsigned)(n + 3));
    put8(b, 0);
    put16(b, (unsigned)n);
    putmem(b, name, n);
}

/* Wraps an extensions block (NULL: none at all) in a TLS 1.2-style ClientHello, handshake
 * header and one record. Returns the parse result; *ci is filled. */
static int craft_parse(const struct buf *exts, struct clienthello_info *ci)
{
    static struct buf body, rec;
    body.n = 0;
    put16(&body, 0x0303);
    for (int i = 0; i < 32; i++)
        put8(&body, (unsigned)i);
    put8(&body, 0);       /* session id */
    put16(&body, 4);      /* cipher suites */
    put16(&body, 0x1301); /* TLS_AES_128_GCM_SHA256 */
    put16(&body, 0xc02f); /* ECDHE-RSA-AES128-GCM-SHA256 */
    put8(&body, 1);       /* compression methods */
    put8(&body, 0);
    if (exts) {
        put16(&body, (unsigned)exts->n);
        putmem(&body, exts->b, exts->n);
    }
    rec.n = 0;
    put8(&rec, 22);
    put16(&rec, 0x0301);
    put16(&rec, (unsigned)(body.n + 4));
    put8(&rec, 1);
    put8(&rec, (unsigned)(body.n >> 16));
    put16(&rec, (unsigned)body.n);
    putmem(&rec, body.b, body.n);
    return clienthello_parse(rec.b, rec.n, ci);
}

/* Parses a hello whose only extension is server_name for name. */
static int sni_rc(const char *name, struct clienthello_info *ci)
{
    static struct buf e;
    e.n = 0;
    put_sni(&e, name);
    return craft_parse(&e, ci);
}

static void test_crafted_minimal(void **state)
{
    (void)state;
    struct clienthello_info ci;
    assert_int_equal(craft_parse(NULL, &ci), CLIENTHELLO_OK); /* no extensions block */
    assert_false(ci.has_sni);
    assert_int_equal(ci.max_version, 0x0303);
    static struct buf e;
    e.n = 0;
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK); /* empty extensions block */
}

static void test_sni_names(void **state)
{
    (void)state;
    struct clienthello_info ci;
    assert_int_equal(sni_rc("Registry.NPMJS.org", &ci), CLIENTHELLO_OK);
    assert_string_equal(ci.sni, "registry.npmjs.org");
    assert_int_equal(sni_rc("x", &ci), CLIENTHELLO_OK);
    assert_int_equal(sni_rc("my_host.internal", &ci), CLIENTHELLO_OK);
    assert_int_equal(sni_rc("xn--bcher-kva.example", &ci), CLIENTHELLO_OK);
    assert_int_equal(sni_rc("1password.com", &ci), CLIENTHELLO_OK); /* digits first are fine */
    assert_string_equal(ci.sni, "1password.com");

    /* label and name length limits */
    char name[400];
    memset(name, 'a', 63);
    strcpy(name + 63, ".com");
    assert_int_equal(sni_rc(name, &ci), CLIENTHELLO_OK);
    memset(name, 'a', 64);
    strcpy(name + 64, ".com");
    assert_int_equal(sni_rc(name, &ci), CLIENTHELLO_INVALID);
    /* 253 bytes: three labels of 63 and one of 61, joined by dots */
    size_t o = 0;
    for (int l = 0; l < 3; l++) {
        memset(name + o, 'b', 63);
        o += 63;
        name[o++] = '.';
    }
    memset(name + o, 'c', 61);
    o += 61;
    name[o] = '\0';
    assert_int_equal(strlen(name), 253);
    assert_int_equal(sni_rc(name, &ci), CLIENTHELLO_OK);
    assert_int_equal(ci.sni_len, 253);
    name[o++] = 'c';
    name[o] = '\0';
    assert_int_equal(sni_rc(name, &ci), CLIENTHELLO_INVALID); /* 254 */
    memset(name, 'a', 300);
    name[300] = '\0';
    assert_int_equal(sni_rc(name, &ci), CLIENTHELLO_INVALID);

    const char *bad[] = {"",       ".",         "example.com.",  ".example.com", "a..b",
                         "-a.com", "a-.com",    "a b.com",       "a/b.com",      "a%2e.com",
                         "é.com",  "a.com\x01", "*.example.com", "a:b:c:g",      "user@host"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(sni_rc(bad[i], &ci), CLIENTHELLO_INVALID);
        assert_false(ci.has_sni);
        assert_non_null(ci.error);
    }
    /* a NUL inside the name (the classic "good.com\0evil.com" certificate trick) */
    static struct buf e;
    e.n = 0;
    put16(&e, 0);
    put16(&e, 5 + 9);
    put16(&e, 3 + 9);
    put8(&e, 0);
    put16(&e, 9);
    putmem(&e, "a.com\0b.c", 9);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
}

static void test_sni_structure(void **state)
{
    (void)state;
    struct clienthello_info ci;
    static struct buf e;

    /* two host_name entries */
    e.n = 0;
    put16(&e, 0);
    put16(&e, 2 + 8 + 8);
    put16(&e, 8 + 8);
    put8(&e, 0);
    put16(&e, 5);
    putmem(&e, "a.com", 5);
    put8(&e, 0);
    put16(&e, 5);
    putmem(&e, "b.com", 5);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);

    /* two server_name extensions */
    e.n = 0;
    put_sni(&e, "a.com");
    put_sni(&e, "b.com");
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);

    /* entry type other than host_name */
    e.n = 0;
    put16(&e, 0);
    put16(&e, 10);
    put16(&e, 8);
    put8(&e, 1);
    put16(&e, 5);
    putmem(&e, "a.com", 5);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);

    /* list length shorter / longer than the entry, name length past the list */
    const char *cases[] = {
        "0000 000a 0007 00 0005 612e636f6d",
        "0000 000a 0009 00 0005 612e636f6d",
        "0000 000a 0008 00 0006 612e636f6d",
        "0000 000a 0008 00 0004 612e636f6d",
        "0000 0000",
        "0000 0002 0000",
        "0000 000b 0008 00 0005 612e636f6d 00",
        "0000 0003 0001 00",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        e.n = 0;
        for (const char *p = cases[i]; *p;) {
            if (*p == ' ') {
                p++;
                continue;
            }
            unsigned v;
            assert_int_equal(sscanf(p, "%2x", &v), 1);
            put8(&e, v);
            p += 2;
        }
        assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
    }
}

static void test_extensions_structure(void **state)
{
    (void)state;
    struct clienthello_info ci;
    static struct buf e;

    /* duplicate unknown extension */
    e.n = 0;
    put_ext(&e, 0x1234, "", 0);
    put_ext(&e, 0x1234, "", 0);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
    /* distinct GREASE extensions are fine */
    e.n = 0;
    put_ext(&e, 0x0a0a, "", 0);
    put_sni(&e, "ok.com");
    put_ext(&e, 0xfafa, "\0", 1);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    assert_string_equal(ci.sni, "ok.com");
    /* extension body past the block */
    e.n = 0;
    put16(&e, 0x1234);
    put16(&e, 10);
    put8(&e, 0);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
    /* a dangling byte after the last extension */
    e.n = 0;
    put_sni(&e, "ok.com");
    put8(&e, 0);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
    /* pre_shared_key must be last */
    e.n = 0;
    put_ext(&e, 41, "", 0);
    put_sni(&e, "ok.com");
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
    e.n = 0;
    put_sni(&e, "ok.com");
    put_ext(&e, 41, "", 0);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    /* ECH is reported */
    e.n = 0;
    put_ext(&e, 0xfe0d, "x", 1);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    assert_true(ci.offers_ech);
}

static void test_alpn(void **state)
{
    (void)state;
    struct clienthello_info ci;
    static struct buf e;

    e.n = 0;
    put_ext(&e, 16, "\x00\x03\x02h2", 5);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    assert_true(ci.alpn_h2);
    assert_false(ci.alpn_http11);
    assert_int_equal(ci.alpn_count, 1);
    /* "h2c" and "http/1.10" are not h2 / http/1.1 */
    e.n = 0;
    put_ext(&e, 16, "\x00\x0e\x03h2c\x09http/1.10", 16);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    assert_false(ci.alpn_h2);
    assert_false(ci.alpn_http11);
    assert_int_equal(ci.alpn_count, 2);

    struct {
        const char *body;
        size_t n;
    } bad[] = {
        {"\x00\x00", 2},           /* empty list */
        {"\x00\x01\x00", 3},       /* empty name */
        {"\x00\x04\x02h2\x00", 5}, /* empty name after a good one */
        {"\x00\x03\x03h2", 5},     /* name past the list */
        {"\x00\x04\x02h2", 5},     /* list past the extension */
        {"\x00\x03\x02h2x", 6},    /* bytes after the list */
        {"", 0},                   /* no list at all */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.n = 0;
        put_ext(&e, 16, bad[i].body, bad[i].n);
        assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
        assert_false(ci.has_alpn);
    }
    /* list longer than the limit */
    static uint8_t big[2 + CLIENTHELLO_MAX_ALPN + 10];
    size_t n = (CLIENTHELLO_MAX_ALPN / 10 + 1) * 10; /* just over the limit, in 10-byte names */
    big[0] = (uint8_t)(n >> 8);
    big[1] = (uint8_t)n;
    for (size_t o = 2; o < n + 2; o += 10) {
        big[o] = 9;
        memset(big + o + 1, 'p', 9);
    }
    e.n = 0;
    put_ext(&e, 16, big, 2 + n);
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
}

static void test_supported_versions(void **state)
{
    (void)state;
    struct clienthello_info ci;
    static struct buf e;

    e.n = 0;
    put_ext(&e, 43, "\x06\x3a\x3a\x03\x04\x03\x03", 7); /* GREASE, 1.3, 1.2 */
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    assert_true(ci.has_supported_versions);
    assert_int_equal(ci.max_version, 0x0304);
    assert_int_equal(ci.min_version, 0x0303);
    e.n = 0;
    put_ext(&e, 43, "\x04\x03\x01\x03\x02", 5); /* only 1.0 and 1.1 */
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);
    assert_int_equal(ci.max_version, 0x0302);

    struct {
        const char *body;
        size_t n;
    } bad[] = {
        {"\x00", 1},             /* empty */
        {"\x03\x03\x04\x03", 4}, /* odd */
        {"\x02\x1a\x1a", 3},     /* only GREASE */
        {"\x04\x03\x04", 3},     /* past the extension */
        {"\x02\x03\x04\x00", 4}, /* bytes after */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.n = 0;
        put_ext(&e, 43, bad[i].body, bad[i].n);
        assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_INVALID);
    }
}

/* Mutates one byte of a real hello at a given offset and expects a refusal. */
static int mutated_rc(const struct hello *h, size_t off, uint8_t v)
{
    uint8_t *b = malloc(h->n);
    assert_non_null(b);
    memcpy(b, h->b, h->n);
    b[off] = v;
    struct clienthello_info ci;
    int rc = clienthello_parse(b, h->n, &ci);
    free(b);
    return rc;
}

static void test_headers_and_first_bytes(void **state)
{
    (void)state;
    struct clienthello_info ci;
    struct hello h = real_hello("example.com", NULL, 0, 0, 0);

    assert_int_equal(mutated_rc(&h, 1, 2), CLIENTHELLO_INVALID);   /* record version 2.x */
    assert_int_equal(mutated_rc(&h, 2, 0), CLIENTHELLO_INVALID);   /* SSL 3.0 record */
    assert_int_equal(mutated_rc(&h, 2, 5), CLIENTHELLO_INVALID);   /* 3.5 */
    assert_int_equal(mutated_rc(&h, 5, 2), CLIENTHELLO_INVALID);   /* ServerHello */
    assert_int_equal(mutated_rc(&h, 0, 23), CLIENTHELLO_NOT_TLS);  /* application data */
    assert_int_equal(mutated_rc(&h, 0, 'G'), CLIENTHELLO_NOT_TLS); /* HTTP */
    assert_int_equal(mutated_rc(&h, 6, 1), CLIENTHELLO_INVALID);   /* hs length > record */
    assert_int_equal(mutated_rc(&h, 9, 2), CLIENTHELLO_INVALID);   /* legacy_version 2.x */
    assert_int_equal(mutated_rc(&h, 43, 33), CLIENTHELLO_INVALID); /* session id > 32 */

    /* HTTP and other plaintext: NOT_TLS from the first byte */
    assert_int_equal(clienthello_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &ci),
                     CLIENTHELLO_NOT_TLS);
    assert_int_equal(clienthello_parse((const uint8_t *)"G", 1, &ci), CLIENTHELLO_NOT_TLS);
    assert_int_equal(clienthello_parse((const uint8_t *)"", 0, &ci), CLIENTHELLO_NEED_MORE);
    assert_int_equal(ci.need, 1);
    /* SSLv2-compatible hello (two-byte header with the high bit set): refused, not HTTP */
    const uint8_t v2[] = {0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10};
    assert_int_equal(clienthello_parse(v2, sizeof v2, &ci), CLIENTHELLO_INVALID);
    assert_int_equal(clienthello_parse(v2, 1, &ci), CLIENTHELLO_INVALID);
    /* record length 0 and over 2^14 */
    const uint8_t r0[] = {22, 3, 1, 0, 0};
    assert_int_equal(clienthello_parse(r0, sizeof r0, &ci), CLIENTHELLO_INVALID);
    const uint8_t rbig[] = {22, 3, 1, 0x40, 0x01};
    assert_int_equal(clienthello_parse(rbig, sizeof rbig, &ci), CLIENTHELLO_INVALID);
    /* a handshake length over the limit is refused before its bytes arrive */
    const uint8_t hbig[] = {22, 3, 1, 0x40, 0x00, 1, 0x00, 0x40, 0x00};
    assert_int_equal(clienthello_parse(hbig, sizeof hbig, &ci), CLIENTHELLO_INVALID);
    const uint8_t hok[] = {22, 3, 1, 0x40, 0x00, 1, 0x00, 0x3f, 0xfc};
    assert_int_equal(clienthello_parse(hok, sizeof hok, &ci), CLIENTHELLO_NEED_MORE);
    assert_int_equal(ci.need, 5 + 0x4000);
    /* garbage after 0x16 is refused at once, not left waiting */
    assert_int_equal(clienthello_parse((const uint8_t *)"\x16GET", 4, &ci), CLIENTHELLO_INVALID);
    free(h.b);
}

static void test_crafted_body_fields(void **state)
{
    (void)state;
    struct clienthello_info ci;
    /* body fields are at fixed offsets in craft_parse's hello: record 5 + hs header 4 */
    static struct buf e;
    e.n = 0;
    put_sni(&e, "ok.com");
    assert_int_equal(craft_parse(&e, &ci), CLIENTHELLO_OK);

    struct hello h;
    /* rebuild the same bytes by hand to mutate them */
    static struct buf rec;
    rec.n = 0;
    put8(&rec, 22);
    put16(&rec, 0x0301);
    size_t body_n = 2 + 32 + 1 + 2 + 4 + 2 + 2 + e.n;
    put16(&rec, (unsigned)(body_n + 4));
    put8(&rec, 1);
    put8(&rec, 0);
    put16(&rec, (unsigned)body_n);
    put16(&rec, 0x0303);
    for (int i = 0; i < 32; i++)
        put8(&rec, 0);
    put8(&rec, 0);
    put16(&rec, 4);
    put16(&rec, 0x1301);
    put16(&rec, 0xc02f);
    put8(&rec, 1);
    put8(&rec, 0);
    put16(&rec, (unsigned)e.n);
    putmem(&rec, e.b, e.n);
    h.b = rec.b;
    h.n = rec.n;
    assert_int_equal(clienthello_parse(h.b, h.n, &ci), CLIENTHELLO_OK);
    const size_t cs = 9 + 2 + 32 + 1, comp = cs + 6, ext = comp + 2;
    assert_int_equal(mutated_rc(&h, cs + 1, 3), CLIENTHELLO_INVALID);   /* odd cipher list */
    assert_int_equal(mutated_rc(&h, cs + 1, 0), CLIENTHELLO_INVALID);   /* empty cipher list */
    assert_int_equal(mutated_rc(&h, comp, 0), CLIENTHELLO_INVALID);     /* no compression */
    assert_int_equal(mutated_rc(&h, comp + 1, 1), CLIENTHELLO_INVALID); /* deflate only */
    assert_int_equal(mutated_rc(&h, ext + 1, (uint8_t)(e.n - 1)), CLIENTHELLO_INVALID);
    assert_int_equal(mutated_rc(&h, ext + 1, (uint8_t)(e.n + 1)), CLIENTHELLO_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_tls13_sni_alpn),
        cmocka_unit_test(test_real_tls12_http11_only),
        cmocka_unit_test(test_real_tls10),
        cmocka_unit_test(test_real_no_sni),
        cmocka_unit_test(test_real_ip_in_sni),
        cmocka_unit_test(test_truncated_every_byte),
        cmocka_unit_test(test_fragmented),
        cmocka_unit_test(test_trailing_data),
        cmocka_unit_test(test_crafted_minimal),
        cmocka_unit_test(test_sni_names),
        cmocka_unit_test(test_sni_structure),
        cmocka_unit_test(test_extensions_structure),
        cmocka_unit_test(test_alpn),
        cmocka_unit_test(test_supported_versions),
        cmocka_unit_test(test_headers_and_first_bytes),
        cmocka_unit_test(test_crafted_body_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
