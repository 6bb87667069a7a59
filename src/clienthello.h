/* clienthello: strict, read-only parsing of a TLS ClientHello peeked from a transparent connection.
 *
 * The transparent listener learns the name a sandbox wants from the ClientHello's SNI before it
 * decides anything, and it must not consume the bytes (the TLS terminator reads them again). So
 * this is a pure function of the bytes received so far: no I/O, no allocation, callable again
 * with more bytes after CLIENTHELLO_NEED_MORE.
 *
 * Strictness is the point: the name decides policy and credentials, so anything two parsers could
 * read differently is refused. Checked: record type 22 (handshake), record version 0x0301..0x0304,
 * record length 1..2^14, handshake type 1, every length field exactly consistent with the one
 * enclosing it (no trailing bytes anywhere, including after the ClientHello in its last record),
 * a non-empty even cipher-suite list, compression methods containing null, no duplicate extension,
 * pre_shared_key only as the last extension, at most one server_name extension holding exactly
 * one entry of type host_name, a well-formed ALPN list without empty names, a well-formed
 * supported_versions list offering at least one known version.
 *
 * Fragmentation: RFC 8446 §5.1 lets a ClientHello span several handshake records. That is
 * supported (an SNI split across records is a known censorship-evasion trick, and a proxy that
 * only looked at the first record would see no name), with limits: the handshake message is at
 * most CLIENTHELLO_MAX_LEN bytes and spans at most CLIENTHELLO_MAX_RECORDS records; beyond either
 * the result is CLIENTHELLO_INVALID. So a caller never needs to buffer more than
 * CLIENTHELLO_MAX_WIRE bytes before it gets a verdict. */
#ifndef AUTHPROXY_CLIENTHELLO_H
#define AUTHPROXY_CLIENTHELLO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLIENTHELLO_MAX_LEN     16384 /* handshake message bytes, its 4-byte header included */
#define CLIENTHELLO_MAX_RECORDS 64
#define CLIENTHELLO_MAX_WIRE    (CLIENTHELLO_MAX_LEN + 5 * CLIENTHELLO_MAX_RECORDS)
#define CLIENTHELLO_MAX_SNI     253 /* DNS host name, no trailing dot */
#define CLIENTHELLO_MAX_ALPN    512 /* bytes of the ALPN protocol_name_list we accept */

enum clienthello_result {
    CLIENTHELLO_NEED_MORE =
        0,              /* a prefix of a possibly valid ClientHello; out->need says how much */
    CLIENTHELLO_OK = 1, /* a complete, valid ClientHello; out is filled */
    CLIENTHELLO_NOT_TLS = -1, /* the first byte is not a TLS handshake record: try HTTP */
    CLIENTHELLO_INVALID = -2, /* TLS-looking but malformed, too large, or SSLv2-style: refuse */
};

struct clienthello_info {
    /* CLIENTHELLO_NEED_MORE: the least total input length (> len) at which calling again can make
     * progress (the end of the current record, or of the next record header). Zero otherwise. */
    size_t need;
    /* CLIENTHELLO_OK: bytes of input the ClientHello's records span (the data after it, e.g.
     * 0-RTT records, is not examined). Nothing is consumed; this is for information. */
    size_t wire_len;
    /* CLIENTHELLO_INVALID: a static string naming the rule broken, for logs and audit. On
     * INVALID only error, is_handshake, is_client_hello and record_version are meaningful. */
    const char *error;

    bool is_handshake;    /* the first record is a handshake record with a sane header */
    bool is_client_hello; /* ... and its handshake message type is ClientHello (1) */

    uint16_t record_version; /* of the first record, 0x0301..0x0304 */
    uint16_t legacy_version; /* ClientHello.legacy_version, 0x0300..0x0304 */
    bool has_supported_versions;
    /* The highest and lowest TLS version the client offers: from supported_versions when
     * present (GREASE and unknown values ignored), else legacy_version for both. A caller that
     * requires TLS 1.2 or later refuses when max_version < 0x0303. */
    uint16_t max_version;
    uint16_t min_version;

    /* SNI. has_sni: a host name was present and valid (sni is lower-cased, NUL-terminated, no
     * trailing dot). sni_is_ip: the name was an IP literal (IPv6, or a last label that is
     * all-digit or 0x-hex as inet_aton would read it); then has_sni is false and sni empty,
     * because RFC 6066 forbids literal addresses in SNI and the policy is written for names. */
    bool has_sni;
    bool sni_is_ip;
    char sni[CLIENTHELLO_MAX_SNI + 1];
    size_t sni_len;

    /* ALPN: has_alpn when the extension was present. alpn holds its protocol_name_list in wire
     * format (length-prefixed names, as SSL_CTX_set_alpn_protos and SSL_select_next_proto take
     * it); alpn_count names. Flags for the two protocols the proxy cares about. */
    bool has_alpn;
    bool alpn_h2;
    bool alpn_http11;
    size_t alpn_count;
    size_t alpn_len;
    uint8_t alpn[CLIENTHELLO_MAX_ALPN];

    bool offers_ech; /* encrypted_client_hello (0xfe0d): the SNI above is only the outer name */
};

/* Parses the ClientHello at the start of buf[0..len), which the caller has peeked (not consumed).
 * Returns a clienthello_result; fills *out (always zeroed first). Never reads outside buf. A
 * complete valid ClientHello gives NEED_MORE for every strict prefix of it, so a caller can call
 * this after each read. The first byte decides NOT_TLS (not 0x16 and no SSLv2 length header, so
 * possibly HTTP) against INVALID (0x16 followed by garbage, or a byte with the high bit set, which
 * is an SSLv2 record header and never the start of an HTTP request). Uses about 24 KiB of stack
 * (reassembly buffer, extension bitmap). */
int clienthello_parse(const uint8_t *buf, size_t len, struct clienthello_info *out);

/* A short static description of a result, for logs. */
const char *clienthello_result_str(int rc);

#endif
