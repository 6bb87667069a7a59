// fuzz-sources: src/dns_msg.c
// fuzz-pkgs: openssl
/* libFuzzer harness for dns_msg. The input is one DNS message as the sandbox resolver receives it
 * (a UDP datagram, or a TCP frame's payload), so the seed corpus is queries. Besides memory safety
 * it checks what the resolver depends on, aborting when one fails:
 *
 * - the result is one of the four; DROP only for a message shorter than a header or with QR set;
 *   refusals leave no name behind;
 * - an accepted name's text is faithful: unescaping it gives back the wire labels (case folded),
 *   and a name not flagged unusual is plain dotted LDH/underscore text without empty labels;
 * - responses built for it (REFUSED, empty NOERROR, A/AAAA answers) fit the size limit, echo the
 *   question bytes, carry the announced number of well-formed answers, and are never accepted
 *   back as a query;
 * - TCP framing gives back the message it was framed with.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "dns_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t fuzz_lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c - 'A' + 'a') : c;
}

/* Turns the text name back into wire labels and compares with the question's QNAME. */
static void fuzz_check_name(const uint8_t *msg, const struct dns_query *q)
{
    uint8_t wire[DNS_MAX_NAME_WIRE + 8];
    size_t w = 0, label_at = 0;
    const char *t = q->name;
    size_t labels = 0;

    CHECK(strlen(q->name) == q->name_len && q->name_len <= DNS_MAX_NAME_TEXT);
    if (q->name_len > 0) {
        label_at = w++;
        for (size_t i = 0; i < q->name_len; i++) {
            uint8_t c = (uint8_t)t[i];
            if (c == '.') {
                CHECK(w - label_at - 1 > 0);
                wire[label_at] = (uint8_t)(w - label_at - 1);
                labels++;
                label_at = w++;
                continue;
            }
            if (c == '\\') {
                CHECK(q->name_unusual);
                CHECK(i + 3 < q->name_len);
                unsigned v = (unsigned)(t[i + 1] - '0') * 100 + (unsigned)(t[i + 2] - '0') * 10 +
                             (unsigned)(t[i + 3] - '0');
                CHECK(v <= 255);
                c = (uint8_t)v;
                i += 3;
            } else {
                CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_');
            }
            CHECK(w < DNS_MAX_NAME_WIRE);
            wire[w++] = c;
        }
        CHECK(w - label_at - 1 > 0);
        wire[label_at] = (uint8_t)(w - label_at - 1);
        labels++;
    }
    wire[w++] = 0;
    CHECK(labels == q->labels);
    CHECK(w <= DNS_MAX_NAME_WIRE);
    CHECK(DNS_HEADER_LEN + w + 4 == q->question_end);
    for (size_t i = 0; i < w; i++)
        CHECK(fuzz_lower(msg[DNS_HEADER_LEN + i]) == wire[i]);
}

/* Checks a response built for q: header, echoed question, answers as announced. */
static void fuzz_check_response(const uint8_t *msg, const struct dns_query *q, const uint8_t *r,
                                int n, size_t max_size, unsigned rcode, size_t n_addrs)
{
    CHECK(n >= DNS_HEADER_LEN && (size_t)n <= max_size);
    CHECK(r[0] == msg[0] && r[1] == msg[1]);
    CHECK(r[2] & 0x80);
    CHECK((r[3] & 0xf) == rcode);
    unsigned qd = (unsigned)(r[4] << 8 | r[5]), an = (unsigned)(r[6] << 8 | r[7]);
    unsigned ns = (unsigned)(r[8] << 8 | r[9]), ar = (unsigned)(r[10] << 8 | r[11]);
    CHECK(qd == 1 && ns == 0 && ar == (q->has_edns ? 1u : 0u));
    bool tc = (r[2] & 0x02) != 0;
    CHECK(tc ? an == 0 : an == n_addrs);
    size_t qlen = q->question_end - DNS_HEADER_LEN;
    CHECK(memcmp(r + DNS_HEADER_LEN, msg + DNS_HEADER_LEN, qlen) == 0);
    size_t o = DNS_HEADER_LEN + qlen;
    for (unsigned i = 0; i < an; i++) {
        CHECK((size_t)n - o >= 12);
        CHECK(r[o] == 0xc0 && r[o + 1] == DNS_HEADER_LEN);
        size_t rdlen = (size_t)(r[o + 10] << 8 | r[o + 11]);
        CHECK(rdlen == (q->qtype == DNS_TYPE_A ? 4u : 16u));
        o += 12 + rdlen;
    }
    CHECK(o + (q->has_edns ? 11u : 0u) == (size_t)n);
    struct dns_query back;
    CHECK(dns_query_parse(r, (size_t)n, &back) == DNS_PARSE_DROP);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct dns_query q;
    static uint8_t out[DNS_TCP_MAX_MSG];
    static struct dns_addr addrs[64];

    /* an exact-size copy so ASan sees reads past the end */
    uint8_t *msg = malloc(size ? size : 1);
    CHECK(msg != NULL);
    if (size)
        memcpy(msg, data, size);
    int rc = dns_query_parse(msg, size, &q);
    CHECK(rc == DNS_PARSE_OK || rc == DNS_PARSE_DROP || rc == DNS_PARSE_FORMERR ||
          rc == DNS_PARSE_NOTIMP);
    if (rc == DNS_PARSE_DROP)
        CHECK(size < DNS_HEADER_LEN || (msg[2] & 0x80));
    if (rc != DNS_PARSE_OK && rc != DNS_PARSE_DROP) {
        CHECK(q.name_len == 0 && q.name[0] == '\0' && q.question_end == 0);
        CHECK(dns_build_error(&q, rc == DNS_PARSE_NOTIMP ? DNS_RCODE_NOTIMP : DNS_RCODE_FORMERR,
                              out, sizeof out) == DNS_HEADER_LEN);
        struct dns_query back;
        CHECK(dns_query_parse(out, DNS_HEADER_LEN, &back) == DNS_PARSE_DROP);
    }
    if (rc == DNS_PARSE_OK) {
        fuzz_check_name(msg, &q);
        size_t limit = dns_query_udp_limit(&q);
        CHECK(limit >= DNS_UDP_MIN_SIZE && limit <= DNS_OUR_EDNS_SIZE);

        int n = dns_build_response(msg, &q, DNS_RCODE_REFUSED, NULL, 0, 0, limit, out, sizeof out);
        fuzz_check_response(msg, &q, out, n, limit, DNS_RCODE_REFUSED, 0);
        n = dns_build_response(msg, &q, DNS_RCODE_NOERROR, NULL, 0, 60, limit, out, sizeof out);
        fuzz_check_response(msg, &q, out, n, limit, DNS_RCODE_NOERROR, 0);

        size_t n_addrs = size % 65;
        int fam = q.qtype == DNS_TYPE_A ? 4 : 6;
        for (size_t i = 0; i < n_addrs; i++) {
            addrs[i].family = fam;
            memset(addrs[i].addr, (int)i, sizeof addrs[i].addr);
        }
        size_t max = (size & 1) ? DNS_TCP_MAX_MSG : limit;
        n = dns_build_response(msg, &q, DNS_RCODE_NOERROR, addrs, n_addrs, 300, max, out,
                               sizeof out);
        bool may_answer =
            (q.qtype == DNS_TYPE_A || q.qtype == DNS_TYPE_AAAA) && q.qclass == DNS_CLASS_IN;
        if (n_addrs > 0 && !may_answer)
            CHECK(n == -1);
        else
            fuzz_check_response(msg, &q, out, n, max, DNS_RCODE_NOERROR, n_addrs);
    }

    /* TCP framing round trip */
    if (size >= DNS_HEADER_LEN && size <= DNS_TCP_MAX_MSG) {
        uint8_t *framed = malloc(size + 2);
        CHECK(framed != NULL);
        CHECK(dns_tcp_prefix(size, framed) == 0);
        memcpy(framed + 2, msg, size);
        const uint8_t *m = NULL;
        size_t mlen = 0, flen = 0;
        CHECK(dns_tcp_frame(framed, size + 2, &m, &mlen, &flen) == 1);
        CHECK(m == framed + 2 && mlen == size && flen == size + 2);
        CHECK(dns_tcp_frame(framed, size + 1, &m, &mlen, &flen) == 0);
        free(framed);
    }
    free(msg);
    return 0;
}
