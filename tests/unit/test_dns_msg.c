/* Unit tests for dns_msg: the queries the sandbox resolver accepts, each refusal class (and how it
 * is answered), name limits and escaping, responses (REFUSED, NXDOMAIN, empty NOERROR, A/AAAA
 * answers, EDNS, truncation) decoded back, and TCP framing.
 *
 * With DNS_WRITE_CORPUS=DIR set, sample queries are also written to DIR as fuzzing seeds (that is
 * how fuzz/corpus/dns/ was made). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dns_msg.h"

struct qb {
    uint8_t b[2048];
    size_t n;
};

static void put8(struct qb *q, unsigned v)
{
    q->b[q->n++] = (uint8_t)v;
}

static void put16(struct qb *q, unsigned v)
{
    put8(q, v >> 8);
    put8(q, v);
}

static void putmem(struct qb *q, const void *p, size_t n)
{
    if (n == 0)
        return;
    memcpy(q->b + q->n, p, n);
    q->n += n;
}

/* Appends a name in wire form from dotted text (no escapes; "" is the root). */
static void put_name(struct qb *q, const char *text)
{
    const char *p = text;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        put8(q, (unsigned)l);
        putmem(q, p, l);
        p += l;
        if (*p == '.')
            p++;
    }
    put8(q, 0);
}

/* Starts a query: header with the given flags and counts. */
static void put_header(struct qb *q, unsigned id, unsigned flags, unsigned qd, unsigned an,
                       unsigned ns, unsigned ar)
{
    q->n = 0;
    put16(q, id);
    put16(q, flags);
    put16(q, qd);
    put16(q, an);
    put16(q, ns);
    put16(q, ar);
}

/* A standard recursive query for name/type, class IN. */
static void make_query(struct qb *q, unsigned id, const char *name, unsigned qtype)
{
    put_header(q, id, 0x0100, 1, 0, 0, 0);
    put_name(q, name);
    put16(q, qtype);
    put16(q, DNS_CLASS_IN);
}

/* Appends an OPT record: udp size, version, DO flag, and raw option bytes. */
static void put_opt(struct qb *q, unsigned size, unsigned version, bool dnssec_ok, const void *opts,
                    size_t opts_len)
{
    put8(q, 0);
    put16(q, DNS_TYPE_OPT);
    put16(q, size);
    put8(q, 0);
    put8(q, version);
    put16(q, dnssec_ok ? 0x8000 : 0);
    put16(q, (unsigned)opts_len);
    putmem(q, opts, opts_len);
}

static int parse(const struct qb *q, struct dns_query *out)
{
    /* exact-size heap copy, so ASan catches any read past the message */
    uint8_t *copy = malloc(q->n ? q->n : 1);
    assert_non_null(copy);
    memcpy(copy, q->b, q->n);
    int rc = dns_query_parse(copy, q->n, out);
    free(copy);
    return rc;
}

static void maybe_write_seed(const char *name, const struct qb *q)
{
    const char *dir = getenv("DNS_WRITE_CORPUS");
    if (!dir)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(q->b, 1, q->n, f), q->n);
    fclose(f);
}

/* ---------------------------------------------------------------- accepted queries */

static void test_parse_basic(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    make_query(&q, 0xbeef, "WWW.Example.COM", DNS_TYPE_A);
    maybe_write_seed("a-www-example-com", &q);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_int_equal(dq.id, 0xbeef);
    assert_true(dq.rd);
    assert_false(dq.cd);
    assert_string_equal(dq.name, "www.example.com");
    assert_int_equal(dq.name_len, strlen("www.example.com"));
    assert_int_equal(dq.labels, 3);
    assert_false(dq.name_unusual);
    assert_int_equal(dq.qtype, DNS_TYPE_A);
    assert_int_equal(dq.qclass, DNS_CLASS_IN);
    assert_false(dq.has_edns);
    assert_int_equal(dq.question_end, q.n);
    assert_int_equal(dns_query_udp_limit(&dq), 512);

    make_query(&q, 1, "_dmarc.my-host.example", DNS_TYPE_HTTPS);
    maybe_write_seed("https-underscore", &q);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_string_equal(dq.name, "_dmarc.my-host.example");
    assert_false(dq.name_unusual);
    assert_int_equal(dq.qtype, DNS_TYPE_HTTPS);

    /* the root */
    make_query(&q, 2, "", DNS_TYPE_NS);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_string_equal(dq.name, "");
    assert_int_equal(dq.labels, 0);

    /* AD and CD are meaningful in queries (dig sets AD by default) */
    put_header(&q, 3, 0x0100 | 0x0020 | 0x0010, 1, 0, 0, 0);
    put_name(&q, "a.b");
    put16(&q, DNS_TYPE_AAAA);
    put16(&q, DNS_CLASS_IN);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_true(dq.cd);

    /* no RD is fine; class is reported for the caller to refuse */
    put_header(&q, 4, 0, 1, 0, 0, 0);
    put_name(&q, "version.bind");
    put16(&q, DNS_TYPE_TXT);
    put16(&q, 3); /* CH */
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_false(dq.rd);
    assert_int_equal(dq.qclass, 3);
}

static void test_parse_edns(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    /* a cookie option as dig sends it */
    const uint8_t cookie[] = {0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8};
    make_query(&q, 7, "api.openai.com", DNS_TYPE_AAAA);
    q.b[11] = 1;
    put_opt(&q, 4096, 0, true, cookie, sizeof cookie);
    maybe_write_seed("aaaa-edns-cookie", &q);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_true(dq.has_edns);
    assert_true(dq.edns_do);
    assert_int_equal(dq.edns_udp_size, 4096);
    assert_int_equal(dns_query_udp_limit(&dq), DNS_OUR_EDNS_SIZE);
    assert_string_equal(dq.name, "api.openai.com");

    /* a payload size below 512 counts as 512 */
    make_query(&q, 7, "x.y", DNS_TYPE_A);
    q.b[11] = 1;
    put_opt(&q, 100, 0, false, NULL, 0);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_int_equal(dq.edns_udp_size, 512);
    assert_int_equal(dns_query_udp_limit(&dq), 512);
    make_query(&q, 7, "x.y", DNS_TYPE_A);
    q.b[11] = 1;
    put_opt(&q, 800, 0, false, NULL, 0);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_int_equal(dns_query_udp_limit(&dq), 800);
}

/* ---------------------------------------------------------------- refusals */

static void test_refuse_header(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;

    /* shorter than a header: nothing to answer */
    make_query(&q, 9, "a.b", DNS_TYPE_A);
    for (size_t n = 0; n < DNS_HEADER_LEN; n++) {
        struct qb t = q;
        t.n = n;
        assert_int_equal(parse(&t, &dq), DNS_PARSE_DROP);
    }
    /* a response is never answered (no reflection loops) */
    make_query(&q, 9, "a.b", DNS_TYPE_A);
    q.b[2] |= 0x80;
    assert_int_equal(parse(&q, &dq), DNS_PARSE_DROP);
    /* opcodes other than QUERY: NOTIMP, with id and opcode kept for the error response */
    const unsigned opcodes[] = {1, 2, 4, 5, 15};
    for (size_t i = 0; i < sizeof opcodes / sizeof opcodes[0]; i++) {
        make_query(&q, 0x1234, "a.b", DNS_TYPE_A);
        q.b[2] = (uint8_t)(q.b[2] | opcodes[i] << 3);
        assert_int_equal(parse(&q, &dq), DNS_PARSE_NOTIMP);
        assert_int_equal(dq.id, 0x1234);
        assert_int_equal(dq.opcode, opcodes[i]);
        assert_true(dq.rd);
    }
    /* AA, TC, RA, Z, a non-zero RCODE */
    const unsigned bits[] = {0x0400, 0x0200, 0x0080, 0x0040, 0x0001, 0x000f};
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        make_query(&q, 5, "a.b", DNS_TYPE_A);
        q.b[2] = (uint8_t)(q.b[2] | bits[i] >> 8);
        q.b[3] = (uint8_t)(q.b[3] | (bits[i] & 0xff));
        assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
        assert_int_equal(dq.id, 5);
    }
    /* section counts */
    const unsigned counts[][4] = {{0, 0, 0, 0}, {2, 0, 0, 0}, {1, 1, 0, 0},
                                  {1, 0, 1, 0}, {1, 0, 0, 2}, {0xffff, 0, 0, 0}};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        put_header(&q, 5, 0x0100, counts[i][0], counts[i][1], counts[i][2], counts[i][3]);
        put_name(&q, "a.b");
        put16(&q, DNS_TYPE_A);
        put16(&q, DNS_CLASS_IN);
        assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    }
    /* two questions actually present */
    put_header(&q, 5, 0x0100, 2, 0, 0, 0);
    for (int i = 0; i < 2; i++) {
        put_name(&q, "a.b");
        put16(&q, DNS_TYPE_A);
        put16(&q, DNS_CLASS_IN);
    }
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
}

static void test_refuse_truncated_and_trailing(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    make_query(&q, 5, "registry.npmjs.org", DNS_TYPE_A);
    q.b[11] = 1;
    put_opt(&q, 1232, 0, false, "\x00\x0c\x00\x02\x00\x00", 6); /* padding option */
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    for (size_t n = DNS_HEADER_LEN; n < q.n; n++) {
        struct qb t = q;
        t.n = n;
        assert_int_equal(parse(&t, &dq), DNS_PARSE_FORMERR);
        assert_string_equal(dq.name, ""); /* nothing half-parsed is left for the caller */
        assert_int_equal(dq.id, 5);
    }
    /* one trailing byte, with and without EDNS */
    put8(&q, 0);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    make_query(&q, 5, "registry.npmjs.org", DNS_TYPE_A);
    put8(&q, 'x');
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* an OPT present but arcount 0 is trailing garbage too */
    make_query(&q, 5, "a.b", DNS_TYPE_A);
    put_opt(&q, 1232, 0, false, NULL, 0);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
}

static void test_refuse_bad_opt(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;

    /* version 1 */
    make_query(&q, 5, "a.b", DNS_TYPE_A);
    q.b[11] = 1;
    put_opt(&q, 1232, 1, false, NULL, 0);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* option length past the rdata; rdata past the message; a dangling option byte */
    const struct {
        const char *opts;
        size_t n;
    } bad[] = {{"\x00\x0a\x00\x09\x01\x02\x03\x04\x05\x06\x07\x08", 12},
               {"\x00", 1},
               {"\x00\x0a\x00\x00\x00", 5}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        make_query(&q, 5, "a.b", DNS_TYPE_A);
        q.b[11] = 1;
        put_opt(&q, 1232, 0, false, bad[i].opts, bad[i].n);
        assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    }
    make_query(&q, 5, "a.b", DNS_TYPE_A);
    q.b[11] = 1;
    put_opt(&q, 1232, 0, false, "\x00\x0a\x00\x02\x01\x02", 6);
    q.n -= 6;
    q.b[q.n - 1] = 6; /* rdlength 6 but the message ends */
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* owner not the root */
    make_query(&q, 5, "a.b", DNS_TYPE_A);
    q.b[11] = 1;
    put8(&q, 1);
    put8(&q, 'x');
    put_opt(&q, 1232, 0, false, NULL, 0); /* owner "x." */
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* an additional record that is not OPT (an A record) */
    make_query(&q, 5, "a.b", DNS_TYPE_A);
    q.b[11] = 1;
    put8(&q, 0);
    put16(&q, DNS_TYPE_A);
    put16(&q, DNS_CLASS_IN);
    put16(&q, 0);
    put16(&q, 60);
    put16(&q, 4);
    putmem(&q, "\x7f\x00\x00\x01", 4);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* an extended RCODE in a query */
    make_query(&q, 5, "a.b", DNS_TYPE_A);
    q.b[11] = 1;
    put_opt(&q, 1232, 0, false, NULL, 0);
    q.b[q.n - 6] = 1;
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* OPT as the question type */
    make_query(&q, 5, "a.b", DNS_TYPE_OPT);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
}

static void test_names(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    char name[600];

    /* label of 63 accepted, 64 refused (0x40 is also an extended label type) */
    memset(name, 'a', 63);
    strcpy(name + 63, ".com");
    make_query(&q, 1, name, DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    memset(name, 'a', 64);
    strcpy(name + 64, ".com");
    make_query(&q, 1, name, DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);

    /* 255 wire bytes accepted: 3 labels of 63, one of 61 (4*1 + 250 + 1 root) */
    size_t o = 0;
    for (int l = 0; l < 3; l++) {
        memset(name + o, 'b', 63);
        o += 63;
        name[o++] = '.';
    }
    memset(name + o, 'c', 61);
    name[o + 61] = '\0';
    make_query(&q, 1, name, DNS_TYPE_A);
    assert_int_equal(q.n - DNS_HEADER_LEN - 4, 255);
    maybe_write_seed("a-max-name", &q);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_int_equal(dq.name_len, 253);
    assert_string_equal(dq.name, name);
    /* 256 refused */
    name[o + 61] = 'c';
    name[o + 62] = '\0';
    make_query(&q, 1, name, DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* many one-byte labels: 127 labels = 255 bytes accepted, 128 refused */
    o = 0;
    for (int l = 0; l < 127; l++) {
        name[o++] = 'x';
        name[o++] = '.';
    }
    name[o - 1] = '\0';
    make_query(&q, 1, name, DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_int_equal(dq.labels, 127);
    name[o - 1] = '.';
    name[o] = 'x';
    name[o + 1] = '\0';
    make_query(&q, 1, name, DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
}

static void test_name_escaping(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;

    /* a '.' inside a label cannot pass for a separator: "evil.com" as one label is not evil.com */
    put_header(&q, 1, 0x0100, 1, 0, 0, 0);
    put8(&q, 8);
    putmem(&q, "evil.com", 8);
    put8(&q, 0);
    put16(&q, DNS_TYPE_A);
    put16(&q, DNS_CLASS_IN);
    maybe_write_seed("a-dot-in-label", &q);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_string_equal(dq.name, "evil\\046com");
    assert_true(dq.name_unusual);
    assert_int_equal(dq.labels, 1);

    /* NUL, backslash, space, high bytes; upper case folded */
    put_header(&q, 1, 0x0100, 1, 0, 0, 0);
    put8(&q, 6);
    putmem(&q,
           "A\0\\ \xff"
           "b",
           6);
    put8(&q, 3);
    putmem(&q, "COM", 3);
    put8(&q, 0);
    put16(&q, DNS_TYPE_A);
    put16(&q, DNS_CLASS_IN);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_string_equal(dq.name, "a\\000\\092\\032\\255b.com");
    assert_int_equal(dq.name_len, strlen(dq.name));
    assert_true(dq.name_unusual);

    /* worst case: every byte escaped, 255 wire bytes */
    put_header(&q, 1, 0x0100, 1, 0, 0, 0);
    for (int l = 0; l < 3; l++) {
        put8(&q, 63);
        for (int i = 0; i < 63; i++)
            put8(&q, 0xff);
    }
    put8(&q, 61);
    for (int i = 0; i < 61; i++)
        put8(&q, '.');
    put8(&q, 0);
    put16(&q, DNS_TYPE_A);
    put16(&q, DNS_CLASS_IN);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    assert_int_equal(dq.name_len, 4 * 250 + 3);
    assert_int_equal(strlen(dq.name), dq.name_len);
}

static void test_refuse_pointers(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;

    /* a compression pointer to itself (a loop), to the header, forward, after a label */
    const unsigned ptrs[][2] = {{0xc0, 12}, {0xc0, 0}, {0xc0, 20}, {0xff, 0xff}};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
        put_header(&q, 1, 0x0100, 1, 0, 0, 0);
        put8(&q, ptrs[i][0]);
        put8(&q, ptrs[i][1]);
        put16(&q, DNS_TYPE_A);
        put16(&q, DNS_CLASS_IN);
        assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    }
    put_header(&q, 1, 0x0100, 1, 0, 0, 0);
    put8(&q, 1);
    put8(&q, 'a');
    put8(&q, 0xc0);
    put8(&q, 12);
    put16(&q, DNS_TYPE_A);
    put16(&q, DNS_CLASS_IN);
    maybe_write_seed("pointer-loop", &q);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    /* extended label types 0x40 and 0x80 */
    const unsigned ext[] = {0x41, 0x80, 0xbf};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        put_header(&q, 1, 0x0100, 1, 0, 0, 0);
        put8(&q, ext[i]);
        for (unsigned j = 0; j < 70; j++)
            put8(&q, 'a');
        put8(&q, 0);
        put16(&q, DNS_TYPE_A);
        put16(&q, DNS_CLASS_IN);
        assert_int_equal(parse(&q, &dq), DNS_PARSE_FORMERR);
    }
}

/* ---------------------------------------------------------------- responses */

/* What a client sees in a response; decoded independently of the builder. */
struct decoded {
    unsigned id, flags, qd, an, ns, ar;
    size_t answers_off; /* offset just after the question */
    unsigned rcode;
};

static struct decoded decode(const uint8_t *r, size_t n, size_t question_len)
{
    struct decoded d;
    assert_true(n >= DNS_HEADER_LEN);
    d.id = (unsigned)(r[0] << 8 | r[1]);
    d.flags = (unsigned)(r[2] << 8 | r[3]);
    d.qd = (unsigned)(r[4] << 8 | r[5]);
    d.an = (unsigned)(r[6] << 8 | r[7]);
    d.ns = (unsigned)(r[8] << 8 | r[9]);
    d.ar = (unsigned)(r[10] << 8 | r[11]);
    d.rcode = d.flags & 0xf;
    d.answers_off = DNS_HEADER_LEN + question_len;
    return d;
}

static void test_build_refused_nxdomain_empty(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    uint8_t out[600];
    /* mixed case as a 0x20-randomising client sends it: the response echoes it exactly */
    make_query(&q, 0x4242, "ExAmPle.CoM", DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    size_t qlen = dq.question_end - DNS_HEADER_LEN;
    const enum dns_rcode rcodes[] = {DNS_RCODE_REFUSED, DNS_RCODE_NXDOMAIN, DNS_RCODE_NOERROR,
                                     DNS_RCODE_SERVFAIL};
    for (size_t i = 0; i < sizeof rcodes / sizeof rcodes[0]; i++) {
        int n = dns_build_response(q.b, &dq, rcodes[i], NULL, 0, 60, 512, out, sizeof out);
        assert_int_equal(n, DNS_HEADER_LEN + qlen);
        struct decoded d = decode(out, (size_t)n, qlen);
        assert_int_equal(d.id, 0x4242);
        assert_int_equal(d.rcode, rcodes[i]);
        assert_true(d.flags & 0x8000);         /* QR */
        assert_true(d.flags & 0x0100);         /* RD echoed */
        assert_true(d.flags & 0x0080);         /* RA */
        assert_int_equal(d.flags & 0x7800, 0); /* opcode QUERY */
        assert_int_equal(d.flags & 0x0200, 0); /* not truncated */
        assert_int_equal(d.qd, 1);
        assert_int_equal(d.an + d.ns + d.ar, 0);
        assert_memory_equal(out + DNS_HEADER_LEN, q.b + DNS_HEADER_LEN, qlen);
        /* our own response, fed back as a query, is never answered */
        struct dns_query back;
        assert_int_equal(dns_query_parse(out, (size_t)n, &back), DNS_PARSE_DROP);
    }
    /* HTTPS and SVCB get an empty NOERROR; addresses are refused for them */
    make_query(&q, 1, "api.openai.com", DNS_TYPE_HTTPS);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    int n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, NULL, 0, 60, 512, out, sizeof out);
    assert_true(n > 0);
    assert_int_equal(decode(out, (size_t)n, 0).an, 0);
    struct dns_addr v4 = {4, {127, 0, 0, 1}};
    assert_int_equal(
        dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, &v4, 1, 60, 512, out, sizeof out), -1);
}

static void test_build_answers(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    uint8_t out[2048];
    struct dns_addr v4[2] = {{4, {10, 0, 0, 1}}, {4, {93, 184, 216, 34}}};
    struct dns_addr v6 = {6, {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}};

    make_query(&q, 77, "api.openai.com", DNS_TYPE_A);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    size_t qlen = dq.question_end - DNS_HEADER_LEN;
    int n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, v4, 2, 300, 512, out, sizeof out);
    assert_int_equal(n, DNS_HEADER_LEN + qlen + 2 * 16);
    struct decoded d = decode(out, (size_t)n, qlen);
    assert_int_equal(d.an, 2);
    assert_int_equal(d.ar, 0);
    assert_int_equal(d.rcode, 0);
    const uint8_t *a = out + d.answers_off;
    const uint8_t rr0[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 10, 0, 0, 1};
    const uint8_t rr1[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 93, 184, 216, 34};
    assert_memory_equal(a, rr0, sizeof rr0);
    assert_memory_equal(a + 16, rr1, sizeof rr1);

    /* AAAA with EDNS: the OPT record follows the answers */
    make_query(&q, 78, "api.openai.com", DNS_TYPE_AAAA);
    q.b[11] = 1;
    put_opt(&q, 4096, 0, true, NULL, 0);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    qlen = dq.question_end - DNS_HEADER_LEN;
    n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, &v6, 1, 0, dns_query_udp_limit(&dq), out,
                           sizeof out);
    assert_int_equal(n, DNS_HEADER_LEN + qlen + 28 + 11);
    d = decode(out, (size_t)n, qlen);
    assert_int_equal(d.an, 1);
    assert_int_equal(d.ar, 1);
    a = out + d.answers_off;
    assert_memory_equal(a, "\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x00\x00\x10", 12);
    assert_memory_equal(a + 12, v6.addr, 16);
    const uint8_t opt[] = {0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(a + 28, opt, sizeof opt);

    /* wrong family for the question, addresses with an error rcode, TTL with the top bit */
    assert_int_equal(
        dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, v4, 1, 60, 512, out, sizeof out), -1);
    assert_int_equal(
        dns_build_response(q.b, &dq, DNS_RCODE_NXDOMAIN, &v6, 1, 60, 512, out, sizeof out), -1);
    assert_int_equal(
        dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, &v6, 1, 0x80000000u, 512, out, sizeof out),
        -1);
    /* buffer too small */
    assert_int_equal(dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, &v6, 1, 60, 512, out, 20), -1);
    /* a query that was not accepted */
    struct dns_query zero;
    memset(&zero, 0, sizeof zero);
    assert_int_equal(
        dns_build_response(q.b, &zero, DNS_RCODE_REFUSED, NULL, 0, 60, 512, out, sizeof out), -1);
}

static void test_build_truncation(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    static uint8_t out[4096];
    struct dns_addr v6[40];
    for (int i = 0; i < 40; i++) {
        memset(&v6[i], 0, sizeof v6[i]);
        v6[i].family = 6;
        v6[i].addr[15] = (uint8_t)i;
    }
    make_query(&q, 9, "many.example", DNS_TYPE_AAAA);
    assert_int_equal(parse(&q, &dq), DNS_PARSE_OK);
    size_t qlen = dq.question_end - DNS_HEADER_LEN;
    /* 40 * 28 bytes do not fit in 512: TC and no answers */
    int n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, v6, 40, 60, dns_query_udp_limit(&dq),
                               out, sizeof out);
    assert_int_equal(n, DNS_HEADER_LEN + qlen);
    struct decoded d = decode(out, (size_t)n, qlen);
    assert_true(d.flags & 0x0200);
    assert_int_equal(d.an, 0);
    /* 17 fit exactly in 512 with this question; 18 do not */
    size_t fit = (512 - DNS_HEADER_LEN - qlen) / 28;
    n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, v6, fit, 60, 512, out, sizeof out);
    assert_int_equal(decode(out, (size_t)n, qlen).an, fit);
    assert_true((size_t)n <= 512);
    n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, v6, fit + 1, 60, 512, out, sizeof out);
    assert_true(decode(out, (size_t)n, qlen).flags & 0x0200);
    /* over TCP all 40 fit */
    n = dns_build_response(q.b, &dq, DNS_RCODE_NOERROR, v6, 40, 60, DNS_TCP_MAX_MSG, out,
                           sizeof out);
    d = decode(out, (size_t)n, qlen);
    assert_int_equal(d.an, 40);
    assert_int_equal(d.flags & 0x0200, 0);
    assert_int_equal(n, DNS_HEADER_LEN + qlen + 40 * 28);
}

static void test_build_error(void **state)
{
    (void)state;
    struct qb q;
    struct dns_query dq;
    uint8_t out[64];
    make_query(&q, 0x5151, "a.b", DNS_TYPE_A);
    q.b[2] = (uint8_t)(q.b[2] | 5 << 3); /* UPDATE */
    assert_int_equal(parse(&q, &dq), DNS_PARSE_NOTIMP);
    assert_int_equal(dns_build_error(&dq, DNS_RCODE_NOTIMP, out, sizeof out), DNS_HEADER_LEN);
    struct decoded d = decode(out, DNS_HEADER_LEN, 0);
    assert_int_equal(d.id, 0x5151);
    assert_int_equal(d.rcode, DNS_RCODE_NOTIMP);
    assert_int_equal((d.flags >> 11) & 0xf, 5);
    assert_true(d.flags & 0x8000);
    assert_int_equal(d.qd + d.an + d.ns + d.ar, 0);
    assert_int_equal(dns_build_error(&dq, DNS_RCODE_FORMERR, out, 11), -1);
}

static void test_tcp_framing(void **state)
{
    (void)state;
    struct qb q;
    uint8_t stream[1024];
    const uint8_t *msg = NULL;
    size_t mlen = 0, flen = 0;
    make_query(&q, 3, "tcp.example", DNS_TYPE_A);
    assert_int_equal(dns_tcp_prefix(q.n, stream), 0);
    memcpy(stream + 2, q.b, q.n);
    assert_int_equal(dns_tcp_prefix(q.n, stream + 2 + q.n), 0);
    memcpy(stream + 4 + q.n, q.b, q.n);
    size_t total = 2 * (2 + q.n);
    /* partial frames need more */
    for (size_t n = 0; n < 2 + q.n; n++)
        assert_int_equal(dns_tcp_frame(stream, n, &msg, &mlen, &flen), 0);
    /* two pipelined frames come out one at a time */
    assert_int_equal(dns_tcp_frame(stream, total, &msg, &mlen, &flen), 1);
    assert_int_equal(mlen, q.n);
    assert_int_equal(flen, 2 + q.n);
    assert_ptr_equal(msg, stream + 2);
    struct dns_query dq;
    assert_int_equal(dns_query_parse(msg, mlen, &dq), DNS_PARSE_OK);
    assert_int_equal(dns_tcp_frame(stream + flen, total - flen, &msg, &mlen, &flen), 1);
    assert_int_equal(dns_query_parse(msg, mlen, &dq), DNS_PARSE_OK);
    assert_string_equal(dq.name, "tcp.example");
    /* a frame too short for a header can never be a query */
    assert_int_equal(dns_tcp_frame((const uint8_t *)"\x00\x0b", 2, &msg, &mlen, &flen), -1);
    assert_int_equal(dns_tcp_frame((const uint8_t *)"\x00\x00", 2, &msg, &mlen, &flen), -1);
    assert_int_equal(dns_tcp_prefix(65536, stream), -1);
    assert_int_equal(dns_tcp_prefix(65535, stream), 0);
    assert_memory_equal(stream, "\xff\xff", 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_basic),
        cmocka_unit_test(test_parse_edns),
        cmocka_unit_test(test_refuse_header),
        cmocka_unit_test(test_refuse_truncated_and_trailing),
        cmocka_unit_test(test_refuse_bad_opt),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_name_escaping),
        cmocka_unit_test(test_refuse_pointers),
        cmocka_unit_test(test_build_refused_nxdomain_empty),
        cmocka_unit_test(test_build_answers),
        cmocka_unit_test(test_build_truncation),
        cmocka_unit_test(test_build_error),
        cmocka_unit_test(test_tcp_framing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
