/* dns_msg: the DNS message codec of the sandbox resolver (RFC 1035, EDNS0 per RFC 6891).
 *
 * Pure functions of their input bytes: no I/O, no allocation. The resolver (UDP and TCP) parses
 * each query with dns_query_parse, decides from the name and type, and writes its answer with
 * dns_build_response into a caller buffer. Upstream answers are not parsed here: the proxy resolves
 * names itself and only hands this module addresses.
 *
 * Strictness is the point: a sandbox may use DNS as a covert channel or to smuggle a name past
 * policy, so anything a resolver does not need is refused rather than interpreted: responses (QR
 * set), opcodes other than QUERY, qdcount != 1, answer or authority records, additional records
 * other than a single EDNS0 OPT, compression pointers or extended label types in the question,
 * reserved header bits, and any byte after the last record. */
#ifndef AUTHPROXY_DNS_MSG_H
#define AUTHPROXY_DNS_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_HEADER_LEN    12
#define DNS_MAX_NAME_WIRE 255 /* RFC 1035 §3.1, the terminating root label included */
#define DNS_MAX_LABEL     63
/* Text form: each wire byte becomes at most 4 characters ("\DDD"), plus dots and the NUL. */
#define DNS_MAX_NAME_TEXT (4 * DNS_MAX_NAME_WIRE)
#define DNS_UDP_MIN_SIZE  512  /* RFC 1035 UDP limit; EDNS sizes below it count as 512 */
#define DNS_OUR_EDNS_SIZE 1232 /* the UDP payload size we advertise (DNS flag day 2020) */
#define DNS_TCP_MAX_MSG   65535

enum dns_rrtype {
    DNS_TYPE_A = 1,
    DNS_TYPE_NS = 2,
    DNS_TYPE_CNAME = 5,
    DNS_TYPE_SOA = 6,
    DNS_TYPE_PTR = 12,
    DNS_TYPE_MX = 15,
    DNS_TYPE_TXT = 16,
    DNS_TYPE_AAAA = 28,
    DNS_TYPE_OPT = 41,
    DNS_TYPE_SVCB = 64,
    DNS_TYPE_HTTPS = 65,
    DNS_TYPE_ANY = 255,
};

#define DNS_CLASS_IN 1

enum dns_rcode {
    DNS_RCODE_NOERROR = 0,
    DNS_RCODE_FORMERR = 1,
    DNS_RCODE_SERVFAIL = 2,
    DNS_RCODE_NXDOMAIN = 3,
    DNS_RCODE_NOTIMP = 4,
    DNS_RCODE_REFUSED = 5,
};

/* dns_query_parse results. The negative ones say how the resolver answers a refused message. */
enum dns_parse_result {
    DNS_PARSE_OK = 0,
    DNS_PARSE_DROP = -1,    /* no answer at all: shorter than a header, or a response (QR set;
                               answering responses lets two resolvers loop or reflect) */
    DNS_PARSE_FORMERR = -2, /* malformed or odd: answer with dns_build_error(FORMERR) */
    DNS_PARSE_NOTIMP = -3,  /* opcode other than QUERY: answer with dns_build_error(NOTIMP) */
};

struct dns_query {
    uint16_t id;
    uint8_t opcode; /* echoed in error responses (0 = QUERY when parsing succeeded) */
    bool rd;        /* recursion desired, echoed in the response */
    bool cd;        /* checking disabled, echoed */

    /* QNAME as text: lower-cased labels joined by '.', no trailing dot, "" for the root. Bytes
     * other than letters, digits, '-' and '_' are written as "\DDD" (decimal, as in zone files),
     * so the text is unambiguous: a '.' or NUL inside a label cannot pass for a separator or an
     * end. name_unusual is set when any such byte was present; the resolver should refuse those
     * names (the caller decides). */
    char name[DNS_MAX_NAME_TEXT + 1];
    size_t name_len;
    bool name_unusual;
    size_t labels;

    uint16_t qtype;
    uint16_t qclass; /* reported, not checked: the caller refuses anything but IN */

    /* EDNS0: has_edns when the additional section held an OPT record (version 0 only; others are
     * refused with FORMERR). edns_udp_size is the client's payload size, at least 512. */
    bool has_edns;
    uint16_t edns_udp_size;
    bool edns_do; /* DNSSEC OK */

    /* Offsets in the query of the question section [DNS_HEADER_LEN, question_end): the response
     * copies these bytes verbatim, which keeps a client's 0x20 case randomisation intact. */
    size_t question_end;
};

/* Parses a query message msg[0..len) (one UDP datagram, or one TCP frame without its length
 * prefix). Returns a dns_parse_result; *q is zeroed first and, for FORMERR and NOTIMP, holds at
 * least id, opcode and rd for the error response (the name is not to be trusted then). Never
 * reads outside msg. */
int dns_query_parse(const uint8_t *msg, size_t len, struct dns_query *q);

/* The largest response the client accepts over UDP: its EDNS size capped at ours, else 512. */
size_t dns_query_udp_limit(const struct dns_query *q);

/* An address to answer with: family 4 (A, 4 bytes used) or 6 (AAAA, 16 bytes). */
struct dns_addr {
    int family;
    uint8_t addr[16];
};

/* Writes a response to the query msg (which dns_query_parse accepted into *q) into out[0..cap):
 * the query's id and question, QR, RA and the query's RD and CD, the given rcode, and an OPT
 * record when the query had one. For NOERROR, n addresses become answers, each a pointer to the
 * question name, the given TTL, and A or AAAA data; every address must match the question type
 * (family 4 for A, 6 for AAAA) and none are allowed for other types (an empty NOERROR, e.g. for
 * HTTPS/SVCB so that clients do not try QUIC). Other rcodes take no addresses. When the answers
 * would exceed max_size (dns_query_udp_limit for UDP, DNS_TCP_MAX_MSG for TCP) they are left out
 * and TC is set, so the client retries over TCP. Returns the length written, or -1 if the
 * arguments break these rules or cap is too small (nothing useful is in out then). */
int dns_build_response(const uint8_t *msg, const struct dns_query *q, enum dns_rcode rcode,
                       const struct dns_addr *addrs, size_t n, uint32_t ttl, size_t max_size,
                       uint8_t *out, size_t cap);

/* Writes a header-only error response (no question, no records) with q's id and RD, for a query
 * dns_query_parse refused with FORMERR or NOTIMP (rcode FORMERR, NOTIMP, REFUSED or SERVFAIL).
 * Returns DNS_HEADER_LEN, or -1 if cap is smaller. */
int dns_build_error(const struct dns_query *q, enum dns_rcode rcode, uint8_t *out, size_t cap);

/* TCP framing (RFC 1035 §4.2.2, RFC 7766): each message is preceded by its length, 2 bytes big
 * endian. dns_tcp_frame finds the first message in a stream buffer: returns 1 with *msg and
 * *msg_len set and *frame_len = 2 + msg_len (bytes to drain), 0 if more bytes are needed, or -1
 * if the frame can never be a query (length below a header). */
int dns_tcp_frame(const uint8_t *buf, size_t len, const uint8_t **msg, size_t *msg_len,
                  size_t *frame_len);

/* Writes the 2-byte length prefix for a message of msg_len bytes; -1 if it exceeds 65535. */
int dns_tcp_prefix(size_t msg_len, uint8_t out[2]);

/* A short static name for a record type ("A", "HTTPS"; "other" for types not listed in
 * enum dns_rrtype), for audit lines. */
const char *dns_type_name(uint16_t qtype);

#endif
