/* clienthello: strict parsing of a peeked TLS ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2,
 * RFC 6066 §3, RFC 7301 §3.1). See clienthello.h for the contract. */
#include "clienthello.h"

#include <string.h>

#define CH_CONTENT_HANDSHAKE 22
#define CH_RECORD_HEADER     5
#define CH_RECORD_MAX        16384 /* TLSPlaintext.length limit, 2^14 */
#define CH_HS_HEADER         4
#define CH_HS_CLIENT_HELLO   1

#define CH_EXT_SERVER_NAME        0
#define CH_EXT_ALPN               16
#define CH_EXT_PRE_SHARED_KEY     41
#define CH_EXT_SUPPORTED_VERSIONS 43
#define CH_EXT_ECH                0xfe0d

#define CH_VERSION_MIN_KNOWN 0x0300
#define CH_VERSION_MAX_KNOWN 0x0304

/* A bounded cursor over a byte range. Every read checks the bound, so a length field can never
 * make the parser step outside the range that encloses it. */
struct ch_reader {
    const uint8_t *p;
    size_t len;
    size_t off;
};

static bool ch_rd_u8(struct ch_reader *r, uint8_t *v)
{
    if (r->len - r->off < 1)
        return false;
    *v = r->p[r->off++];
    return true;
}

static bool ch_rd_u16(struct ch_reader *r, uint16_t *v)
{
    if (r->len - r->off < 2)
        return false;
    *v = (uint16_t)(r->p[r->off] << 8 | r->p[r->off + 1]);
    r->off += 2;
    return true;
}

/* Takes the next n bytes as their own reader (the enclosing length of a vector). */
static bool ch_rd_sub(struct ch_reader *r, size_t n, struct ch_reader *sub)
{
    if (r->len - r->off < n)
        return false;
    sub->p = r->p + r->off;
    sub->len = n;
    sub->off = 0;
    r->off += n;
    return true;
}

static bool ch_rd_done(const struct ch_reader *r)
{
    return r->off == r->len;
}

/* Records why the input was refused; returns CLIENTHELLO_INVALID for a tail call. */
static int ch_invalid(struct clienthello_info *out, const char *why)
{
    out->error = why;
    return CLIENTHELLO_INVALID;
}

static bool ch_is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static bool ch_is_hex(uint8_t c)
{
    return ch_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* True if a label is a number the way inet_aton reads one (decimal, octal or 0x-hex): a host
 * name whose last label is such a number is an IPv4 literal in disguise ("0x7f.1", "2130706433").
 * Mirrors http1_parse_authority's rule so both paths classify a name the same way. */
static bool ch_label_is_number(const uint8_t *l, size_t n)
{
    size_t i = 0;
    if (n >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X')) {
        for (i = 2; i < n; i++)
            if (!ch_is_hex(l[i]))
                return false;
        return true;
    }
    for (i = 0; i < n; i++)
        if (!ch_is_digit(l[i]))
            return false;
    return n > 0;
}

/* Validates the SNI host_name bytes and fills out->sni / sni_is_ip. Accepts a DNS host name:
 * labels of 1..63 letters, digits, '-' or '_', not starting or ending with '-', 253 bytes at
 * most, no trailing dot (RFC 6066 §3). An IP literal (IPv6 characters with a ':' in them, or a
 * numeric last label) is not an error: it is reported as sni_is_ip with no name. Returns false
 * for anything else. */
static bool ch_check_host(const uint8_t *name, size_t len, struct clienthello_info *out)
{
    size_t i = 0, label_start = 0;

    if (len == 0)
        return false;
    if (memchr(name, ':', len)) {
        for (i = 0; i < len; i++)
            if (!ch_is_hex(name[i]) && name[i] != ':' && name[i] != '.' && name[i] != '[' &&
                name[i] != ']')
                return false;
        out->sni_is_ip = true;
        return true;
    }
    if (len > CLIENTHELLO_MAX_SNI)
        return false;
    for (i = 0; i <= len; i++) {
        if (i == len || name[i] == '.') {
            size_t n = i - label_start;
            if (n == 0 || n > 63)
                return false; /* empty label (leading, trailing or double dot) or too long */
            if (name[label_start] == '-' || name[i - 1] == '-')
                return false;
            label_start = i + 1;
            continue;
        }
        uint8_t c = name[i];
        if (!(ch_is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
              c == '_'))
            return false;
    }
    /* label_start is now len + 1: the last label is name[last .. len) */
    size_t last = len;
    while (last > 0 && name[last - 1] != '.')
        last--;
    if (ch_label_is_number(name + last, len - last)) {
        out->sni_is_ip = true;
        return true;
    }
    for (i = 0; i < len; i++)
        out->sni[i] =
            (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] - 'A' + 'a') : (char)name[i];
    out->sni[len] = '\0';
    out->sni_len = len;
    out->has_sni = true;
    return true;
}

/* server_name (RFC 6066 §3): a ServerNameList holding exactly one host_name entry. */
static int ch_ext_server_name(struct ch_reader *ext, struct clienthello_info *out)
{
    struct ch_reader list, name;
    uint16_t list_len = 0, name_len = 0;
    uint8_t type = 0;

    if (!ch_rd_u16(ext, &list_len) || !ch_rd_sub(ext, list_len, &list) || !ch_rd_done(ext))
        return ch_invalid(out, "server_name: bad list length");
    if (!ch_rd_u8(&list, &type) || !ch_rd_u16(&list, &name_len) ||
        !ch_rd_sub(&list, name_len, &name))
        return ch_invalid(out, "server_name: bad entry length");
    if (type != 0)
        return ch_invalid(out, "server_name: entry is not host_name");
    if (!ch_rd_done(&list))
        return ch_invalid(out, "server_name: more than one entry");
    if (!ch_check_host(name.p, name.len, out))
        return ch_invalid(out, "server_name: not a valid host name");
    return CLIENTHELLO_OK;
}

/* application_layer_protocol_negotiation (RFC 7301 §3.1): a non-empty list of non-empty names. */
static int ch_ext_alpn(struct ch_reader *ext, struct clienthello_info *out)
{
    struct ch_reader list, proto;
    uint16_t list_len = 0;
    uint8_t plen = 0;

    if (!ch_rd_u16(ext, &list_len) || !ch_rd_sub(ext, list_len, &list) || !ch_rd_done(ext))
        return ch_invalid(out, "alpn: bad list length");
    if (list_len < 2)
        return ch_invalid(out, "alpn: empty list");
    if (list_len > CLIENTHELLO_MAX_ALPN)
        return ch_invalid(out, "alpn: list too long");
    while (!ch_rd_done(&list)) {
        if (!ch_rd_u8(&list, &plen) || plen == 0 || !ch_rd_sub(&list, plen, &proto))
            return ch_invalid(out, "alpn: bad protocol name length");
        if (plen == 2 && memcmp(proto.p, "h2", 2) == 0)
            out->alpn_h2 = true;
        if (plen == 8 && memcmp(proto.p, "http/1.1", 8) == 0)
            out->alpn_http11 = true;
        out->alpn_count++;
    }
    memcpy(out->alpn, list.p, list.len);
    out->alpn_len = list.len;
    out->has_alpn = true;
    return CLIENTHELLO_OK;
}

/* supported_versions in a ClientHello (RFC 8446 §4.2.1): 2..254 bytes of versions. Values outside
 * SSL 3.0..TLS 1.3 (GREASE, drafts) are skipped; at least one known version must remain. */
static int ch_ext_supported_versions(struct ch_reader *ext, struct clienthello_info *out)
{
    struct ch_reader list;
    uint8_t list_len = 0;
    uint16_t v = 0;

    if (!ch_rd_u8(ext, &list_len) || !ch_rd_sub(ext, list_len, &list) || !ch_rd_done(ext))
        return ch_invalid(out, "supported_versions: bad list length");
    if (list_len < 2 || list_len % 2 != 0)
        return ch_invalid(out, "supported_versions: bad list length");
    out->max_version = 0;
    out->min_version = 0xffff;
    while (ch_rd_u16(&list, &v)) {
        if (v < CH_VERSION_MIN_KNOWN || v > CH_VERSION_MAX_KNOWN)
            continue;
        if (v > out->max_version)
            out->max_version = v;
        if (v < out->min_version)
            out->min_version = v;
    }
    if (out->max_version == 0)
        return ch_invalid(out, "supported_versions: no known version offered");
    out->has_supported_versions = true;
    return CLIENTHELLO_OK;
}

/* The extensions block: every extension once, pre_shared_key last, the ones we read checked. */
static int ch_extensions(struct ch_reader *exts, struct clienthello_info *out)
{
    uint64_t seen[65536 / 64];
    bool after_psk = false;

    memset(seen, 0, sizeof seen);
    while (!ch_rd_done(exts)) {
        uint16_t type = 0, elen = 0;
        struct ch_reader ext;
        int rc = CLIENTHELLO_OK;

        if (!ch_rd_u16(exts, &type) || !ch_rd_u16(exts, &elen) || !ch_rd_sub(exts, elen, &ext))
            return ch_invalid(out, "extension: bad length");
        if (seen[type / 64] & (UINT64_C(1) << (type % 64)))
            return ch_invalid(out, "extension: duplicate");
        seen[type / 64] |= UINT64_C(1) << (type % 64);
        if (after_psk)
            return ch_invalid(out, "extension: pre_shared_key is not the last one");
        switch (type) {
        case CH_EXT_SERVER_NAME:
            rc = ch_ext_server_name(&ext, out);
            break;
        case CH_EXT_ALPN:
            rc = ch_ext_alpn(&ext, out);
            break;
        case CH_EXT_SUPPORTED_VERSIONS:
            rc = ch_ext_supported_versions(&ext, out);
            break;
        case CH_EXT_PRE_SHARED_KEY:
            after_psk = true;
            break;
        case CH_EXT_ECH:
            out->offers_ech = true;
            break;
        default:
            break;
        }
        if (rc != CLIENTHELLO_OK)
            return rc;
    }
    return CLIENTHELLO_OK;
}

/* The ClientHello body (after the 4-byte handshake header), already reassembled. */
static int ch_body(const uint8_t *body, size_t len, struct clienthello_info *out)
{
    struct ch_reader r = {body, len, 0}, skip, comp, exts;
    uint16_t cs_len = 0, ext_len = 0;
    uint8_t sid_len = 0, comp_len = 0;

    if (!ch_rd_u16(&r, &out->legacy_version))
        return ch_invalid(out, "truncated legacy_version");
    if (out->legacy_version < CH_VERSION_MIN_KNOWN || out->legacy_version > CH_VERSION_MAX_KNOWN)
        return ch_invalid(out, "legacy_version out of range");
    if (!ch_rd_sub(&r, 32, &skip))
        return ch_invalid(out, "truncated random");
    if (!ch_rd_u8(&r, &sid_len) || sid_len > 32 || !ch_rd_sub(&r, sid_len, &skip))
        return ch_invalid(out, "bad legacy_session_id length");
    if (!ch_rd_u16(&r, &cs_len) || cs_len < 2 || cs_len % 2 != 0 || !ch_rd_sub(&r, cs_len, &skip))
        return ch_invalid(out, "bad cipher_suites length");
    if (!ch_rd_u8(&r, &comp_len) || comp_len < 1 || !ch_rd_sub(&r, comp_len, &comp))
        return ch_invalid(out, "bad compression_methods length");
    if (!memchr(comp.p, 0, comp.len))
        return ch_invalid(out, "compression_methods without null");
    out->max_version = out->min_version = out->legacy_version;
    if (ch_rd_done(&r))
        return CLIENTHELLO_OK; /* no extensions block (allowed before TLS 1.3) */
    if (!ch_rd_u16(&r, &ext_len) || !ch_rd_sub(&r, ext_len, &exts))
        return ch_invalid(out, "bad extensions length");
    if (!ch_rd_done(&r))
        return ch_invalid(out, "bytes after the extensions");
    return ch_extensions(&exts, out);
}

int clienthello_parse(const uint8_t *buf, size_t len, struct clienthello_info *out)
{
    uint8_t hs[CLIENTHELLO_MAX_LEN]; /* the handshake message, reassembled from its records */
    size_t hs_got = 0, hs_total = 0; /* hs_total stays 0 until the 4-byte header is in */
    size_t pos = 0;
    unsigned records = 0;

    memset(out, 0, sizeof *out);
    if (len == 0) {
        out->need = 1;
        return CLIENTHELLO_NEED_MORE;
    }
    if (buf[0] != CH_CONTENT_HANDSHAKE) {
        if (buf[0] & 0x80)
            return ch_invalid(out, "SSLv2-style record header");
        return CLIENTHELLO_NOT_TLS;
    }
    for (;;) {
        size_t have = len - pos;
        /* The record header is checked as far as it has arrived, so garbage is refused early. */
        if (have >= 1 && buf[pos] != CH_CONTENT_HANDSHAKE)
            return ch_invalid(out, "non-handshake record inside the ClientHello");
        if (have >= 2 && buf[pos + 1] != 3)
            return ch_invalid(out, "record version out of range");
        if (have >= 3 && (buf[pos + 2] < 1 || buf[pos + 2] > 4))
            return ch_invalid(out, "record version out of range");
        if (have < CH_RECORD_HEADER) {
            out->need = pos + CH_RECORD_HEADER;
            return CLIENTHELLO_NEED_MORE;
        }
        size_t rlen = (size_t)buf[pos + 3] << 8 | buf[pos + 4];
        if (rlen == 0 || rlen > CH_RECORD_MAX)
            return ch_invalid(out, "record length out of range");
        if (records == 0) {
            out->record_version = (uint16_t)(buf[1] << 8 | buf[2]);
            out->is_handshake = true;
        }
        if (++records > CLIENTHELLO_MAX_RECORDS)
            return ch_invalid(out, "ClientHello spans too many records");

        const uint8_t *frag = buf + pos + CH_RECORD_HEADER;
        size_t frag_have = have - CH_RECORD_HEADER < rlen ? have - CH_RECORD_HEADER : rlen;
        size_t i = 0;
        while (i < frag_have) {
            if (hs_total == 0) {
                hs[hs_got++] = frag[i++];
                if (hs_got == 1) {
                    if (hs[0] != CH_HS_CLIENT_HELLO)
                        return ch_invalid(out, "handshake message is not a ClientHello");
                    out->is_client_hello = true;
                }
                if (hs_got == CH_HS_HEADER) {
                    hs_total = CH_HS_HEADER + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
                    if (hs_total > CLIENTHELLO_MAX_LEN)
                        return ch_invalid(out, "ClientHello too large");
                }
                continue;
            }
            size_t n = frag_have - i < hs_total - hs_got ? frag_have - i : hs_total - hs_got;
            if (n == 0)
                return ch_invalid(out, "bytes after the ClientHello in its record");
            memcpy(hs + hs_got, frag + i, n);
            hs_got += n;
            i += n;
        }
        bool complete = hs_total != 0 && hs_got == hs_total;
        if (frag_have < rlen) {
            if (complete) /* the record claims more bytes than the hello has */
                return ch_invalid(out, "bytes after the ClientHello in its record");
            out->need = pos + CH_RECORD_HEADER + rlen;
            return CLIENTHELLO_NEED_MORE;
        }
        pos += CH_RECORD_HEADER + rlen;
        if (complete)
            break;
    }

    int rc = ch_body(hs + CH_HS_HEADER, hs_total - CH_HS_HEADER, out);
    if (rc != CLIENTHELLO_OK) {
        /* Leave no half-parsed name or ALPN behind for a careless caller to act on. */
        struct clienthello_info keep = {.error = out->error,
                                        .is_handshake = true,
                                        .is_client_hello = true,
                                        .record_version = out->record_version};
        *out = keep;
        return rc;
    }
    out->wire_len = pos;
    return CLIENTHELLO_OK;
}

const char *clienthello_result_str(int rc)
{
    switch (rc) {
    case CLIENTHELLO_NEED_MORE:
        return "need more";
    case CLIENTHELLO_OK:
        return "ok";
    case CLIENTHELLO_NOT_TLS:
        return "not TLS";
    case CLIENTHELLO_INVALID:
        return "invalid ClientHello";
    default:
        return "unknown";
    }
}
