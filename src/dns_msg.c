/* dns_msg: DNS query parsing and response building for the sandbox resolver. See dns_msg.h. */
#include "dns_msg.h"

#include <string.h>

/* Header flag bits (RFC 1035 §4.1.1, RFC 2535/4035 for AD and CD). */
#define DNS_F_QR      0x8000
#define DNS_F_AA      0x0400
#define DNS_F_TC      0x0200
#define DNS_F_RD      0x0100
#define DNS_F_RA      0x0080
#define DNS_F_Z       0x0040
#define DNS_F_AD      0x0020
#define DNS_F_CD      0x0010
#define DNS_F_RCODE   0x000f
#define DNS_OPCODE(f) (((f) >> 11) & 0xf)

#define DNS_EDNS_DO      0x8000
#define DNS_OPT_RR_LEN   11          /* root owner, type, class, ttl, rdlength (no options) */
#define DNS_ANSWER_FIXED 12          /* name pointer, type, class, ttl, rdlength */
#define DNS_TTL_MAX      0x7fffffffu /* RFC 2181 §8 */

static uint16_t dns_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static void dns_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void dns_put32(uint8_t *p, uint32_t v)
{
    dns_put16(p, (uint16_t)(v >> 16));
    dns_put16(p + 2, (uint16_t)v);
}

/* Appends one name byte to the text form, lower-cased; bytes outside [a-z0-9-_] are written as
 * "\DDD" and mark the name unusual. The buffer is sized for the worst case (dns_msg.h). */
static void dns_text_byte(struct dns_query *q, uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        c = (uint8_t)(c - 'A' + 'a');
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
        q->name[q->name_len++] = (char)c;
        return;
    }
    q->name[q->name_len++] = '\\';
    q->name[q->name_len++] = (char)('0' + c / 100);
    q->name[q->name_len++] = (char)('0' + c / 10 % 10);
    q->name[q->name_len++] = (char)('0' + c % 10);
    q->name_unusual = true;
}

/* Reads the QNAME at msg[*off..len) into q->name. Only plain labels are allowed: a compression
 * pointer or an extended label type in a question has no legitimate use and is where parsers
 * loop or over-read. Enforces 63 bytes a label and 255 bytes a name. Advances *off past the
 * root label; returns false on any violation. */
static bool dns_read_qname(const uint8_t *msg, size_t len, size_t *off, struct dns_query *q)
{
    size_t wire = 0;
    for (;;) {
        if (*off >= len)
            return false;
        uint8_t l = msg[(*off)++];
        if (l & 0xc0)
            return false;
        wire += 1 + (size_t)l;
        if (wire > DNS_MAX_NAME_WIRE)
            return false;
        if (l == 0)
            break;
        if (len - *off < l)
            return false;
        if (q->labels > 0)
            q->name[q->name_len++] = '.';
        for (size_t i = 0; i < l; i++)
            dns_text_byte(q, msg[*off + i]);
        *off += l;
        q->labels++;
    }
    q->name[q->name_len] = '\0';
    return true;
}

/* Reads the one record the additional section may hold: an EDNS0 OPT record (RFC 6891 §6.1)
 * with the root as owner, version 0 and well-formed options (which are not interpreted).
 * Advances *off past it; returns false otherwise. */
static bool dns_read_opt(const uint8_t *msg, size_t len, size_t *off, struct dns_query *q)
{
    size_t o = *off;
    if (len - o < DNS_OPT_RR_LEN || msg[o] != 0)
        return false;
    if (dns_get16(msg + o + 1) != DNS_TYPE_OPT)
        return false;
    uint16_t size = dns_get16(msg + o + 3);
    uint8_t ext_rcode = msg[o + 5], version = msg[o + 6];
    uint16_t eflags = dns_get16(msg + o + 7);
    size_t rdlen = dns_get16(msg + o + 9);
    o += DNS_OPT_RR_LEN;
    if (ext_rcode != 0 || version != 0 || len - o < rdlen)
        return false;
    size_t end = o + rdlen;
    while (o < end) {
        if (end - o < 4)
            return false;
        size_t olen = dns_get16(msg + o + 2);
        o += 4;
        if (end - o < olen)
            return false;
        o += olen;
    }
    q->has_edns = true;
    q->edns_udp_size = size < DNS_UDP_MIN_SIZE ? DNS_UDP_MIN_SIZE : size;
    q->edns_do = (eflags & DNS_EDNS_DO) != 0;
    *off = end;
    return true;
}

int dns_query_parse(const uint8_t *msg, size_t len, struct dns_query *q)
{
    memset(q, 0, sizeof *q);
    if (len < DNS_HEADER_LEN)
        return DNS_PARSE_DROP;
    uint16_t flags = dns_get16(msg + 2);
    q->id = dns_get16(msg);
    q->opcode = (uint8_t)DNS_OPCODE(flags);
    q->rd = (flags & DNS_F_RD) != 0;
    q->cd = (flags & DNS_F_CD) != 0;
    if (flags & DNS_F_QR)
        return DNS_PARSE_DROP;
    if (q->opcode != 0)
        return DNS_PARSE_NOTIMP;
    /* AA, TC, RA, Z and RCODE have no meaning in a query; AD and CD do (RFC 6840 §5.7). */
    if (flags & (DNS_F_AA | DNS_F_TC | DNS_F_RA | DNS_F_Z | DNS_F_RCODE))
        return DNS_PARSE_FORMERR;
    uint16_t qd = dns_get16(msg + 4), an = dns_get16(msg + 6), ns = dns_get16(msg + 8),
             ar = dns_get16(msg + 10);
    if (qd != 1 || an != 0 || ns != 0 || ar > 1)
        return DNS_PARSE_FORMERR;

    size_t off = DNS_HEADER_LEN;
    if (!dns_read_qname(msg, len, &off, q) || len - off < 4)
        goto formerr;
    q->qtype = dns_get16(msg + off);
    q->qclass = dns_get16(msg + off + 2);
    off += 4;
    q->question_end = off;
    if (q->qtype == DNS_TYPE_OPT)
        goto formerr; /* a pseudo-type, never a question */
    if (ar == 1 && !dns_read_opt(msg, len, &off, q))
        goto formerr;
    if (off != len)
        goto formerr; /* trailing bytes: a covert channel at best */
    return DNS_PARSE_OK;

formerr:
    /* Keep only what the error response needs; a half-read name must not be acted on. */
    {
        struct dns_query keep = {.id = q->id, .opcode = q->opcode, .rd = q->rd, .cd = q->cd};
        *q = keep;
    }
    return DNS_PARSE_FORMERR;
}

size_t dns_query_udp_limit(const struct dns_query *q)
{
    if (!q->has_edns)
        return DNS_UDP_MIN_SIZE;
    return q->edns_udp_size < DNS_OUR_EDNS_SIZE ? q->edns_udp_size : DNS_OUR_EDNS_SIZE;
}

/* Writes the 12-byte header of a response. */
static void dns_put_header(uint8_t *out, const struct dns_query *q, enum dns_rcode rcode, bool tc,
                           uint16_t qd, uint16_t an, uint16_t ar)
{
    uint16_t flags = (uint16_t)(DNS_F_QR | (q->opcode & 0xf) << 11 | DNS_F_RA | (rcode & 0xf));
    if (q->rd)
        flags |= DNS_F_RD;
    if (q->cd)
        flags |= DNS_F_CD;
    if (tc)
        flags |= DNS_F_TC;
    dns_put16(out, q->id);
    dns_put16(out + 2, flags);
    dns_put16(out + 4, qd);
    dns_put16(out + 6, an);
    dns_put16(out + 8, 0);
    dns_put16(out + 10, ar);
}

int dns_build_response(const uint8_t *msg, const struct dns_query *q, enum dns_rcode rcode,
                       const struct dns_addr *addrs, size_t n, uint32_t ttl, size_t max_size,
                       uint8_t *out, size_t cap)
{
    if (rcode > DNS_RCODE_REFUSED || ttl > DNS_TTL_MAX)
        return -1;
    if (q->question_end <= DNS_HEADER_LEN || q->opcode != 0)
        return -1; /* not a query dns_query_parse accepted */
    if (n > 0) {
        int want = q->qtype == DNS_TYPE_A ? 4 : q->qtype == DNS_TYPE_AAAA ? 6 : 0;
        if (rcode != DNS_RCODE_NOERROR || want == 0 || q->qclass != DNS_CLASS_IN)
            return -1;
        for (size_t i = 0; i < n; i++)
            if (addrs[i].family != want)
                return -1;
        if (n > DNS_TCP_MAX_MSG)
            return -1; /* ancount is 16 bits; the size check below would catch it too */
    }
    size_t qlen = q->question_end - DNS_HEADER_LEN;
    size_t opt = q->has_edns ? DNS_OPT_RR_LEN : 0;
    size_t base = DNS_HEADER_LEN + qlen + opt;
    size_t rdlen = q->qtype == DNS_TYPE_A ? 4 : 16;
    size_t total = base + n * (DNS_ANSWER_FIXED + rdlen);
    bool tc = false;
    if (max_size > DNS_TCP_MAX_MSG)
        max_size = DNS_TCP_MAX_MSG;
    if (total > max_size) {
        tc = true; /* RFC 2181 §9: the client retries over TCP */
        n = 0;
        total = base;
    }
    if (total > max_size || total > cap)
        return -1;

    dns_put_header(out, q, rcode, tc, 1, (uint16_t)n, q->has_edns ? 1 : 0);
    memcpy(out + DNS_HEADER_LEN, msg + DNS_HEADER_LEN, qlen);
    size_t o = DNS_HEADER_LEN + qlen;
    for (size_t i = 0; i < n; i++) {
        dns_put16(out + o, 0xc000 | DNS_HEADER_LEN); /* pointer to the question's name */
        dns_put16(out + o + 2, q->qtype);
        dns_put16(out + o + 4, DNS_CLASS_IN);
        dns_put32(out + o + 6, ttl);
        dns_put16(out + o + 10, (uint16_t)rdlen);
        memcpy(out + o + DNS_ANSWER_FIXED, addrs[i].addr, rdlen);
        o += DNS_ANSWER_FIXED + rdlen;
    }
    if (q->has_edns) {
        out[o] = 0; /* root owner */
        dns_put16(out + o + 1, DNS_TYPE_OPT);
        dns_put16(out + o + 3, DNS_OUR_EDNS_SIZE);
        dns_put32(out + o + 5, 0); /* extended rcode 0, version 0, DO clear: we do no DNSSEC */
        dns_put16(out + o + 9, 0);
        o += DNS_OPT_RR_LEN;
    }
    return (int)o;
}

int dns_build_error(const struct dns_query *q, enum dns_rcode rcode, uint8_t *out, size_t cap)
{
    if (cap < DNS_HEADER_LEN || rcode > DNS_RCODE_REFUSED)
        return -1;
    dns_put_header(out, q, rcode, false, 0, 0, 0);
    return DNS_HEADER_LEN;
}

int dns_tcp_frame(const uint8_t *buf, size_t len, const uint8_t **msg, size_t *msg_len,
                  size_t *frame_len)
{
    if (len < 2)
        return 0;
    size_t n = dns_get16(buf);
    if (n < DNS_HEADER_LEN)
        return -1;
    if (len - 2 < n)
        return 0;
    *msg = buf + 2;
    *msg_len = n;
    *frame_len = 2 + n;
    return 1;
}

int dns_tcp_prefix(size_t msg_len, uint8_t out[2])
{
    if (msg_len > DNS_TCP_MAX_MSG)
        return -1;
    dns_put16(out, (uint16_t)msg_len);
    return 0;
}

const char *dns_type_name(uint16_t qtype)
{
    switch (qtype) {
    case DNS_TYPE_A:
        return "A";
    case DNS_TYPE_NS:
        return "NS";
    case DNS_TYPE_CNAME:
        return "CNAME";
    case DNS_TYPE_SOA:
        return "SOA";
    case DNS_TYPE_PTR:
        return "PTR";
    case DNS_TYPE_MX:
        return "MX";
    case DNS_TYPE_TXT:
        return "TXT";
    case DNS_TYPE_AAAA:
        return "AAAA";
    case DNS_TYPE_OPT:
        return "OPT";
    case DNS_TYPE_SVCB:
        return "SVCB";
    case DNS_TYPE_HTTPS:
        return "HTTPS";
    case DNS_TYPE_ANY:
        return "ANY";
    default:
        return "other";
    }
}
