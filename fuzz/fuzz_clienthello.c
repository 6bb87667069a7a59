// fuzz-sources: src/clienthello.c
// fuzz-pkgs: openssl
/* libFuzzer harness for clienthello. The input is the bytes a transparent connection starts with,
 * so the seed corpus is real ClientHellos written by OpenSSL (see tests/unit/test_clienthello.c).
 * Besides memory safety it checks the properties the transparent listener depends on, aborting
 * when one fails:
 *
 * - the result is one of the four; NEED_MORE always asks for more than it was given;
 * - an accepted hello spans at most the input; every strict prefix of it is NEED_MORE with a need
 *   the full hello satisfies (the incremental contract), and bytes after it change nothing;
 * - an accepted SNI is a lower-case DNS host name of at most 253 bytes, with no trailing dot,
 *   never together with the IP-literal flag; the ALPN flags match the copied list;
 * - the same hello split into two records at an input-derived point parses to the same name
 *   and ALPN (a proxy that read only the first record would see another name).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "clienthello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The checks every accepted hello must pass on its own. */
static void fuzz_check_info(const struct clienthello_info *ci, size_t size)
{
    CHECK(ci->wire_len > 0 && ci->wire_len <= size);
    CHECK(ci->is_handshake && ci->is_client_hello);
    CHECK(ci->max_version >= ci->min_version);
    CHECK(ci->max_version >= 0x0300 && ci->max_version <= 0x0304);
    CHECK(!(ci->has_sni && ci->sni_is_ip));
    CHECK(strlen(ci->sni) == ci->sni_len);
    if (ci->has_sni) {
        CHECK(ci->sni_len >= 1 && ci->sni_len <= CLIENTHELLO_MAX_SNI);
        CHECK(ci->sni[ci->sni_len - 1] != '.' && ci->sni[0] != '.');
        for (size_t i = 0; i < ci->sni_len; i++) {
            char c = ci->sni[i];
            CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                  c == '.');
            if (c == '.')
                CHECK(ci->sni[i + 1] != '.');
        }
    } else {
        CHECK(ci->sni_len == 0);
    }
    CHECK(ci->alpn_len <= CLIENTHELLO_MAX_ALPN);
    if (ci->has_alpn) {
        bool h2 = false, h11 = false;
        size_t count = 0, o = 0;
        while (o < ci->alpn_len) {
            size_t n = ci->alpn[o];
            CHECK(n > 0 && o + 1 + n <= ci->alpn_len);
            h2 |= n == 2 && memcmp(ci->alpn + o + 1, "h2", 2) == 0;
            h11 |= n == 8 && memcmp(ci->alpn + o + 1, "http/1.1", 8) == 0;
            count++;
            o += 1 + n;
        }
        CHECK(count == ci->alpn_count && count > 0);
        CHECK(h2 == ci->alpn_h2 && h11 == ci->alpn_http11);
    } else {
        CHECK(ci->alpn_len == 0 && !ci->alpn_h2 && !ci->alpn_http11);
    }
}

/* Parses a heap copy of exactly n bytes, so ASan sees any read past the end. */
static int fuzz_parse_copy(const uint8_t *data, size_t n, struct clienthello_info *ci)
{
    uint8_t *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    if (n)
        memcpy(copy, data, n);
    int rc = clienthello_parse(copy, n, ci);
    free(copy);
    return rc;
}

static void fuzz_same_result(const struct clienthello_info *a, const struct clienthello_info *b)
{
    CHECK(a->has_sni == b->has_sni && a->sni_is_ip == b->sni_is_ip);
    CHECK(strcmp(a->sni, b->sni) == 0);
    CHECK(a->has_alpn == b->has_alpn && a->alpn_len == b->alpn_len);
    CHECK(memcmp(a->alpn, b->alpn, a->alpn_len) == 0);
    CHECK(a->max_version == b->max_version && a->min_version == b->min_version);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct clienthello_info ci, ci2;
    int rc = clienthello_parse(data, size, &ci);
    CHECK(rc == CLIENTHELLO_NEED_MORE || rc == CLIENTHELLO_OK || rc == CLIENTHELLO_NOT_TLS ||
          rc == CLIENTHELLO_INVALID);
    if (rc == CLIENTHELLO_NEED_MORE)
        CHECK(ci.need > size);
    if (rc == CLIENTHELLO_INVALID)
        CHECK(ci.error != NULL && !ci.has_sni && !ci.has_alpn);
    if (rc == CLIENTHELLO_NOT_TLS)
        CHECK(size > 0 && data[0] != 22 && !(data[0] & 0x80));
    if (rc != CLIENTHELLO_OK)
        return 0;

    fuzz_check_info(&ci, size);
    size_t wire = ci.wire_len;

    /* Prefixes: all of them for small hellos, a stride for large ones (keeps the fuzzer fast). */
    size_t step = wire <= 600 ? 1 : wire / 300;
    for (size_t p = 0; p < wire; p += step) {
        CHECK(fuzz_parse_copy(data, p, &ci2) == CLIENTHELLO_NEED_MORE);
        CHECK(ci2.need > p && ci2.need <= wire);
    }
    CHECK(fuzz_parse_copy(data, wire - 1, &ci2) == CLIENTHELLO_NEED_MORE);

    /* Exactly the hello's bytes give the same answer as the hello plus what followed it. */
    CHECK(fuzz_parse_copy(data, wire, &ci2) == CLIENTHELLO_OK);
    fuzz_same_result(&ci, &ci2);

    /* A single-record hello split in two records means the same. */
    size_t rlen = (size_t)data[3] << 8 | data[4];
    if (wire == 5 + rlen && rlen >= 2) {
        size_t k = 1 + (size > wire ? data[wire] : data[wire - 1]) % (rlen - 1);
        uint8_t *two = malloc(wire + 5);
        CHECK(two != NULL);
        memcpy(two, data, 5 + k);
        two[3] = (uint8_t)(k >> 8);
        two[4] = (uint8_t)k;
        memcpy(two + 5 + k, data, 5);
        two[5 + k + 3] = (uint8_t)((rlen - k) >> 8);
        two[5 + k + 4] = (uint8_t)(rlen - k);
        memcpy(two + 10 + k, data + 5 + k, rlen - k);
        CHECK(clienthello_parse(two, wire + 5, &ci2) == CLIENTHELLO_OK);
        CHECK(ci2.wire_len == wire + 5);
        fuzz_same_result(&ci, &ci2);
        free(two);
    }
    return 0;
}
