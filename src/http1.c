/* http1: strict HTTP/1.1 parsing and serialisation (RFC 9112, RFC 9110). See http1.h for the
 * contract. Choices the header leaves open, written down here once:
 *
 * - Transfer-Encoding must be exactly one "chunked" (case-insensitive). Otherwise, following
 *   RFC 9112 §6.1 and §7: when chunked is not the final coding ("xchunked", "gzip", "identity",
 *   "chunked;q=1", "chunked, gzip"), appears more than once ("chunked, chunked", also as two
 *   fields) or the list has an empty element, it is 400 (HTTP1_ERR_BAD); when an otherwise valid
 *   list has codings we do not implement before the final chunked ("gzip, chunked"), it is 501
 *   (HTTP1_ERR_NOT_IMPLEMENTED). The same applies to responses (the proxy answers 502 for both).
 *   Transfer-Encoding in an HTTP/1.0 message and Transfer-Encoding together with Content-Length
 *   are 400 (ambiguous framing).
 * - Versions: "HTTP/" DIGIT "." DIGIT other than 1.0 and 1.1 is 505; anything else is 400.
 * - The request-target may contain VCHAR only (no SP, controls, obs-text or '#').
 * - Host (and the authority of absolute- and authority-form targets) must parse with
 *   http1_parse_authority, which is narrower than RFC 3986 on purpose (see http1.h).
 * - A CONNECT request must not have a body: Transfer-Encoding or a non-zero Content-Length is 400.
 * - HTTP1_ERR_URI_TOO_LONG is never returned: a long request line counts against max_head (431),
 *   as the header's contract for max_head says.
 * - The serialisers re-emit Content-Length as one canonical field (duplicates and lists such as
 *   "5, 5" collapse to "Content-Length: 5"), so the next hop never sees a list it might parse
 *   differently. Host is never removed because Connection names it.
 */
#include "http1.h"

#include "glob.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "util.h"

#define HTTP1_CL_MAX           INT64_MAX /* Content-Length and chunk sizes must fit 63 bits */
#define HTTP1_CHUNK_LINE_MAX   4096      /* chunk-size line including extensions */
#define HTTP1_TRAILER_MAX      8192      /* whole trailer section */
#define HTTP1_CHUNK_MAX_DIGITS 16

/* ---- character classes (RFC 9110 §5.6.2, RFC 5234) ---- */

/* tchar: the characters of a token (method, field name, transfer coding, ...). */
static bool http1_is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A byte allowed inside a field value: VCHAR, obs-text, SP and HTAB. */
static bool http1_is_value_byte(unsigned char c)
{
    return c == '\t' || c == ' ' || (c >= 0x21 && c != 0x7f);
}

/* A control character that may never appear in a message head (CR and LF are handled apart,
 * HTAB is legal in field values and is refused by the grammar elsewhere). */
static bool http1_is_forbidden_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0x7f;
}

static bool http1_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int http1_hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* True if s[0..len) is a non-empty token. */
static bool http1_is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!http1_is_tchar((unsigned char)s[i]))
            return false;
    return true;
}

/* Case-insensitive comparison of s[0..len) with the NUL-terminated lower-case lit. */
static bool http1_name_is(const char *s, size_t len, const char *lit)
{
    return ascii_case_eq(s, len, lit, strlen(lit));
}

/* True if the field name s[0..len) names the same field as lit for a CGI/WSGI origin: case
 * ignored and '_' read as '-' (both become HTTP_X_API_KEY there). A sandbox's "X_Api_Key" must
 * not reach the origin beside an injected "X-Api-Key" as a second credential. */
static bool http1_name_is_cgi(const char *s, size_t len, const char *lit)
{
    if (strlen(lit) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        char a = s[i] == '_' ? '-' : ascii_lower(s[i]);
        char b = lit[i] == '_' ? '-' : ascii_lower(lit[i]);
        if (a != b)
            return false;
    }
    return true;
}

/* ---- lists (RFC 9110 §5.6.1) ---- */

/* Iterates the elements of a comma-separated list. *pos is the cursor (start at 0). Each call
 * yields the next element with OWS trimmed (possibly empty); returns false at the end. */
static bool http1_list_next(const char *v, size_t vlen, size_t *pos, const char **elem,
                            size_t *elem_len)
{
    if (*pos > vlen)
        return false;
    size_t start = *pos;
    const char *comma = memchr(v + start, ',', vlen - start);
    size_t end = comma ? (size_t)(comma - v) : vlen;
    *pos = end + 1; /* past the comma, or vlen + 1 at the end */
    while (start < end && http1_is_ows(v[start]))
        start++;
    while (end > start && http1_is_ows(v[end - 1]))
        end--;
    *elem = v + start;
    *elem_len = end - start;
    return true;
}

/* http1_list_has_token with a counted token. */
static bool http1_list_has_token_n(const char *value, size_t value_len, const char *token,
                                   size_t token_len)
{
    size_t pos = 0;
    const char *e;
    size_t elen;
    while (http1_list_next(value, value_len, &pos, &e, &elen))
        if (ascii_case_eq(e, elen, token, token_len))
            return true;
    return false;
}

/* Exported: see http1.h. */
bool http1_list_has_token(const char *value, size_t value_len, const char *token)
{
    if (value == NULL || token == NULL)
        return false;
    return http1_list_has_token_n(value, value_len, token, strlen(token));
}

/* Exported: see http1.h. */
const struct http1_header *http1_find_header(const struct http1_header *headers, size_t n,
                                             const char *name)
{
    size_t name_len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (ascii_case_eq(headers[i].name, headers[i].name_len, name, name_len))
            return &headers[i];
    return NULL;
}

/* True if any field called name has token in its list value. */
static bool http1_fields_have_token(const struct http1_header *h, size_t n, const char *name,
                                    const char *token)
{
    for (size_t i = 0; i < n; i++)
        if (http1_name_is(h[i].name, h[i].name_len, name) &&
            http1_list_has_token(h[i].value, h[i].value_len, token))
            return true;
    return false;
}

/* ---- locating and tokenising a head ---- */

/* Scans what has arrived of a head, cheaply enough to run on every read: one pass over at most
 * max_head bytes, no parsing. Refuses as soon as a byte can never be valid (a CR not followed by
 * LF, an LF not preceded by CR, a control character) so a client cannot park a bad head in our
 * buffer. skip_empty_lines: requests may be preceded by CRLFs (RFC 9112 §2.2).
 * Returns HTTP1_OK with [*start, *end) the head (ending with CRLF CRLF), HTTP1_INCOMPLETE,
 * HTTP1_ERR_BAD, or HTTP1_ERR_TOO_LARGE when max_head bytes hold no complete head. */
static int http1_scan_head(const char *buf, size_t len, size_t max_head, bool skip_empty_lines,
                           size_t *start, size_t *end)
{
    size_t limit = len < max_head ? len : max_head;
    size_t i = 0;
    if (skip_empty_lines)
        while (i + 1 < limit && buf[i] == '\r' && buf[i + 1] == '\n')
            i += 2;
    size_t first = i, line_start = i;
    for (; i < limit; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\r') {
            if (i + 1 >= limit)
                break; /* the LF may be in the next read */
            if (buf[i + 1] != '\n')
                return HTTP1_ERR_BAD;
            if (i == line_start) {
                if (line_start == first)
                    return HTTP1_ERR_BAD; /* empty start line */
                *start = first;
                *end = i + 2;
                return HTTP1_OK;
            }
            i++;
            line_start = i + 1;
        } else if (c == '\n' || http1_is_forbidden_ctl(c)) {
            return HTTP1_ERR_BAD;
        }
    }
    return len > max_head ? HTTP1_ERR_TOO_LARGE : HTTP1_INCOMPLETE;
}

/* Returns the end of the line starting at p (the position of its CR). The head was scanned by
 * http1_scan_head, so every line ends with CRLF before end. */
static const char *http1_line_end(const char *p, const char *end)
{
    const char *cr = memchr(p, '\r', (size_t)(end - p));
    return cr ? cr : end;
}

/* Parses the field lines in [p, end) (end points at the final empty line's CR). Returns
 * HTTP1_OK, HTTP1_ERR_BAD (obs-fold, whitespace before the colon, a name that is not a token, a
 * control character in a value) or HTTP1_ERR_TOO_LARGE (more than HTTP1_MAX_HEADERS fields). */
static int http1_parse_fields(const char *p, const char *end, struct http1_header *headers,
                              size_t *n_headers)
{
    size_t n = 0;
    while (p < end) {
        const char *eol = http1_line_end(p, end);
        if (http1_is_ows(*p))
            return HTTP1_ERR_BAD; /* obs-fold, or whitespace before the first field */
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL || !http1_is_token(p, (size_t)(colon - p)))
            return HTTP1_ERR_BAD;
        const char *v = colon + 1, *vend = eol;
        while (v < vend && http1_is_ows(*v))
            v++;
        while (vend > v && http1_is_ows(vend[-1]))
            vend--;
        for (const char *q = v; q < vend; q++)
            if (!http1_is_value_byte((unsigned char)*q))
                return HTTP1_ERR_BAD;
        if (n == HTTP1_MAX_HEADERS)
            return HTTP1_ERR_TOO_LARGE;
        headers[n].name = p;
        headers[n].name_len = (size_t)(colon - p);
        headers[n].value = v;
        headers[n].value_len = (size_t)(vend - v);
        n++;
        p = eol + 2;
    }
    *n_headers = n;
    return HTTP1_OK;
}

/* Parses "HTTP/" DIGIT "." DIGIT. Returns HTTP1_OK with *minor set for 1.0 and 1.1,
 * HTTP1_ERR_VERSION for any other well-formed version, HTTP1_ERR_BAD for anything else. */
static int http1_parse_version(const char *s, size_t len, int *minor)
{
    if (len != 8 || memcmp(s, "HTTP/", 5) != 0 || s[5] < '0' || s[5] > '9' || s[6] != '.' ||
        s[7] < '0' || s[7] > '9')
        return HTTP1_ERR_BAD;
    if (s[5] != '1' || (s[7] != '0' && s[7] != '1'))
        return HTTP1_ERR_VERSION;
    *minor = s[7] - '0';
    return HTTP1_OK;
}

/* ---- framing fields shared by requests and responses ---- */

struct http1_framing {
    bool has_cl;
    uint64_t cl;
    bool has_te;
    int te_result; /* HTTP1_OK: exactly one transfer coding, "chunked"; else the refusal */
    bool conn_close;
    bool conn_keep_alive;
};

/* Parses one Content-Length field value: a list of decimal numbers, all equal, each fitting in
 * 63 bits. Returns 0 with *out set, or -1. */
static int http1_parse_content_length(const char *v, size_t vlen, uint64_t *out)
{
    size_t pos = 0;
    const char *e;
    size_t elen;
    bool have = false;
    uint64_t first = 0;
    while (http1_list_next(v, vlen, &pos, &e, &elen)) {
        if (elen == 0)
            return -1;
        uint64_t val = 0;
        for (size_t i = 0; i < elen; i++) {
            if (e[i] < '0' || e[i] > '9')
                return -1;
            uint64_t d = (uint64_t)(e[i] - '0');
            if (val > ((uint64_t)HTTP1_CL_MAX - d) / 10)
                return -1;
            val = val * 10 + d;
        }
        if (have && val != first)
            return -1;
        first = val;
        have = true;
    }
    *out = first;
    return 0;
}

/* Reads Content-Length, Transfer-Encoding and Connection from the fields. Returns HTTP1_OK, or
 * HTTP1_ERR_BAD for an invalid or conflicting Content-Length. Transfer-Encoding is only recorded
 * here; the callers decide (their rules differ by message kind). */
static int http1_read_framing(const struct http1_header *h, size_t n, struct http1_framing *f)
{
    memset(f, 0, sizeof(*f));
    size_t te_elems = 0, te_chunked = 0;
    bool te_last_chunked = false, te_empty = false;
    for (size_t i = 0; i < n; i++) {
        if (http1_name_is(h[i].name, h[i].name_len, "content-length")) {
            uint64_t v;
            if (http1_parse_content_length(h[i].value, h[i].value_len, &v) == -1)
                return HTTP1_ERR_BAD;
            if (f->has_cl && v != f->cl)
                return HTTP1_ERR_BAD;
            f->has_cl = true;
            f->cl = v;
        } else if (http1_name_is(h[i].name, h[i].name_len, "transfer-encoding")) {
            f->has_te = true;
            size_t pos = 0;
            const char *e;
            size_t elen;
            while (http1_list_next(h[i].value, h[i].value_len, &pos, &e, &elen)) {
                te_elems++;
                te_last_chunked = http1_name_is(e, elen, "chunked");
                te_chunked += te_last_chunked;
                te_empty |= elen == 0;
            }
        } else if (http1_name_is(h[i].name, h[i].name_len, "connection")) {
            if (http1_list_has_token(h[i].value, h[i].value_len, "close"))
                f->conn_close = true;
            if (http1_list_has_token(h[i].value, h[i].value_len, "keep-alive"))
                f->conn_keep_alive = true;
        }
    }
    /* RFC 9112 §6.1, §7: chunked must be the final coding (else 400) and applied once; a coding
     * we do not implement before a final chunked ("gzip, chunked") is 501. */
    if (te_elems == 1 && te_chunked == 1)
        f->te_result = HTTP1_OK;
    else if (!te_last_chunked || te_chunked > 1 || te_empty)
        f->te_result = HTTP1_ERR_BAD;
    else
        f->te_result = HTTP1_ERR_NOT_IMPLEMENTED;
    return HTTP1_OK;
}

/* ---- authorities and request-targets ---- */

/* Validates a reg-name or IPv4 address (see struct http1_authority); sets *is_ip for IPv4. */
static bool http1_valid_reg_name(const char *h, size_t len, bool *is_ip)
{
    *is_ip = false;
    if (len == 0 || len > 254)
        return false;
    size_t name_len = h[len - 1] == '.' ? len - 1 : len; /* one trailing dot is allowed */
    size_t label_start = 0, last_label = 0;
    if (name_len == 0)
        return false;
    for (size_t i = 0; i <= name_len; i++) {
        if (i == name_len || h[i] == '.') {
            if (i == label_start || i - label_start > 63)
                return false;
            last_label = label_start;
            label_start = i + 1;
            continue;
        }
        unsigned char c = (unsigned char)h[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '_'))
            return false;
    }
    /* The last label decides whether the name is meant as a number: then it must be a
     * canonical dotted quad (inet_pton refuses octal, hex, short forms and a trailing dot). */
    bool numeric = true;
    for (size_t i = last_label; i < name_len; i++)
        if (h[i] < '0' || h[i] > '9')
            numeric = false;
    if (name_len - last_label >= 2 && h[last_label] == '0' &&
        (h[last_label + 1] == 'x' || h[last_label + 1] == 'X'))
        numeric = true;
    if (!numeric)
        return true;
    char tmp[16];
    unsigned char addr[4];
    if (len >= sizeof(tmp))
        return false;
    memcpy(tmp, h, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET, tmp, addr) != 1)
        return false;
    *is_ip = true;
    return true;
}

/* Exported: see http1.h. */
int http1_parse_authority(const char *s, size_t len, bool require_port, struct http1_authority *out)
{
    memset(out, 0, sizeof(*out));
    out->port = -1;
    size_t host_end; /* index just past the host part */
    if (len > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (rb == NULL)
            return -1;
        size_t ilen = (size_t)(rb - s) - 1;
        char tmp[INET6_ADDRSTRLEN + 1];
        unsigned char addr[16];
        if (ilen == 0 || ilen >= sizeof(tmp))
            return -1;
        memcpy(tmp, s + 1, ilen);
        tmp[ilen] = '\0';
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return -1;
        out->host = s + 1;
        out->host_len = ilen;
        out->is_ip = true;
        host_end = ilen + 2;
    } else {
        const char *colon = memchr(s, ':', len);
        host_end = colon ? (size_t)(colon - s) : len;
        if (!http1_valid_reg_name(s, host_end, &out->is_ip))
            return -1;
        out->host = s;
        out->host_len = host_end;
    }
    if (host_end == len)
        return require_port ? -1 : 0;
    if (s[host_end] != ':')
        return -1;
    size_t pdigits = len - host_end - 1;
    if (pdigits == 0 || pdigits > 5)
        return -1;
    int port = 0;
    for (size_t i = host_end + 1; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        port = port * 10 + (s[i] - '0');
    }
    if (port == 0 || port > 65535)
        return -1;
    out->port = port;
    return 0;
}

/* Exported: see http1.h. The target's bytes were already limited to VCHAR minus '#' by the
 * request parser; this function checks them again so it is safe on any input. */
int http1_parse_target(const char *method, size_t method_len, const char *target, size_t target_len,
                       struct http1_target *out)
{
    memset(out, 0, sizeof(*out));
    if (target_len == 0)
        return -1;
    for (size_t i = 0; i < target_len; i++) {
        unsigned char c = (unsigned char)target[i];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return -1;
    }
    if (method_len == 7 && memcmp(method, "CONNECT", 7) == 0) {
        out->form = HTTP1_TARGET_AUTHORITY;
        return http1_parse_authority(target, target_len, true, &out->authority);
    }
    if (target[0] == '/') {
        out->form = HTTP1_TARGET_ORIGIN;
        out->path = target;
        out->path_len = target_len;
        return 0;
    }
    if (target_len == 1 && target[0] == '*') {
        if (!(method_len == 7 && memcmp(method, "OPTIONS", 7) == 0))
            return -1;
        out->form = HTTP1_TARGET_ASTERISK;
        return 0;
    }
    size_t skip;
    if (target_len > 7 && ascii_case_eq(target, 7, "http://", 7)) {
        skip = 7;
    } else if (target_len > 8 && ascii_case_eq(target, 8, "https://", 8)) {
        skip = 8;
        out->https = true;
    } else {
        return -1;
    }
    out->form = HTTP1_TARGET_ABSOLUTE;
    size_t a = skip, e = skip;
    while (e < target_len && target[e] != '/' && target[e] != '?')
        e++;
    if (http1_parse_authority(target + a, e - a, false, &out->authority) == -1)
        return -1;
    out->path = target + e;
    out->path_len = target_len - e;
    return 0;
}

/* ---- requests ---- */

/* Exported: see http1.h. */
int http1_parse_request(const char *buf, size_t len, size_t max_head, struct http1_request *req,
                        size_t *head_len)
{
    size_t start, end;
    memset(req, 0, sizeof(*req));
    int rc = http1_scan_head(buf, len, max_head, true, &start, &end);
    if (rc != HTTP1_OK)
        return rc;

    const char *p = buf + start, *head_end = buf + end - 2; /* at the final empty line */
    const char *eol = http1_line_end(p, head_end);

    /* request-line = method SP request-target SP HTTP-version */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (sp1 == NULL || !http1_is_token(p, (size_t)(sp1 - p)))
        return HTTP1_ERR_BAD;
    const char *t = sp1 + 1;
    const char *sp2 = memchr(t, ' ', (size_t)(eol - t));
    if (sp2 == NULL || sp2 == t)
        return HTTP1_ERR_BAD;
    req->method = p;
    req->method_len = (size_t)(sp1 - p);
    req->target = t;
    req->target_len = (size_t)(sp2 - t);
    rc = http1_parse_version(sp2 + 1, (size_t)(eol - sp2 - 1), &req->version_minor);
    if (rc != HTTP1_OK)
        return rc;
    struct http1_target target;
    if (http1_parse_target(req->method, req->method_len, req->target, req->target_len, &target) ==
        -1)
        return HTTP1_ERR_BAD;
    req->is_connect = target.form == HTTP1_TARGET_AUTHORITY;

    rc = http1_parse_fields(eol + 2, head_end, req->headers, &req->n_headers);
    if (rc != HTTP1_OK)
        return rc;

    /* Host: exactly one in HTTP/1.1, at most one in HTTP/1.0, always a valid authority. */
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct http1_header *h = &req->headers[i];
        if (!http1_name_is(h->name, h->name_len, "host"))
            continue;
        struct http1_authority auth;
        if (req->host != NULL || http1_parse_authority(h->value, h->value_len, false, &auth) == -1)
            return HTTP1_ERR_BAD;
        req->host = h;
    }
    if (req->host == NULL && req->version_minor == 1)
        return HTTP1_ERR_BAD;

    struct http1_framing f;
    rc = http1_read_framing(req->headers, req->n_headers, &f);
    if (rc != HTTP1_OK)
        return rc;
    if (f.has_te) {
        if (req->version_minor == 0 || f.has_cl || req->is_connect)
            return HTTP1_ERR_BAD;
        if (f.te_result != HTTP1_OK)
            return f.te_result;
        req->body_kind = HTTP1_BODY_CHUNKED;
    } else if (f.has_cl) {
        if (req->is_connect) {
            if (f.cl != 0)
                return HTTP1_ERR_BAD;
        } else {
            req->body_kind = HTTP1_BODY_LENGTH;
            req->content_length = f.cl;
        }
    }

    if (req->version_minor == 1)
        req->keep_alive = !f.conn_close;
    else
        req->keep_alive = f.conn_keep_alive && !f.conn_close;

    /* Expect and Upgrade mean nothing in HTTP/1.0 (RFC 9110 §10.1.1, §7.8). */
    if (req->version_minor == 1) {
        const struct http1_header *ex = http1_find_header(req->headers, req->n_headers, "expect");
        req->expect_continue =
            ex != NULL && http1_name_is(ex->value, ex->value_len, "100-continue");
        req->upgrade_websocket =
            req->method_len == 3 && memcmp(req->method, "GET", 3) == 0 &&
            http1_fields_have_token(req->headers, req->n_headers, "connection", "upgrade") &&
            http1_fields_have_token(req->headers, req->n_headers, "upgrade", "websocket");
    }
    *head_len = end;
    return HTTP1_OK;
}

/* ---- responses ---- */

/* Exported: see http1.h. */
int http1_parse_response(const char *buf, size_t len, size_t max_head, const char *request_method,
                         size_t request_method_len, struct http1_response *resp, size_t *head_len)
{
    size_t start, end;
    memset(resp, 0, sizeof(*resp));
    int rc = http1_scan_head(buf, len, max_head, false, &start, &end);
    if (rc != HTTP1_OK)
        return rc;

    const char *p = buf + start, *head_end = buf + end - 2;
    const char *eol = http1_line_end(p, head_end);

    /* status-line = HTTP-version SP status-code SP [ reason-phrase ]; the second SP is also
     * accepted missing when there is no reason, as many servers send it that way. */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (sp1 == NULL)
        return HTTP1_ERR_BAD;
    rc = http1_parse_version(p, (size_t)(sp1 - p), &resp->version_minor);
    if (rc != HTTP1_OK)
        return rc;
    const char *s = sp1 + 1;
    if (eol - s < 3 || s[0] < '1' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
        s[2] > '9')
        return HTTP1_ERR_BAD;
    resp->status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    const char *r = s + 3;
    if (r < eol) {
        if (*r != ' ')
            return HTTP1_ERR_BAD;
        r++;
    }
    for (const char *q = r; q < eol; q++)
        if (!http1_is_value_byte((unsigned char)*q))
            return HTTP1_ERR_BAD;
    resp->reason = r;
    resp->reason_len = (size_t)(eol - r);

    rc = http1_parse_fields(eol + 2, head_end, resp->headers, &resp->n_headers);
    if (rc != HTTP1_OK)
        return rc;

    struct http1_framing f;
    rc = http1_read_framing(resp->headers, resp->n_headers, &f);
    if (rc != HTTP1_OK)
        return rc;
    /* Ambiguous framing is refused even where the body is known to be empty: the message comes
     * from a peer that disagrees with itself, and we would relay the fields. */
    if (f.has_te && (f.has_cl || resp->version_minor == 0))
        return HTTP1_ERR_BAD;
    resp->has_content_length = f.has_cl;
    resp->content_length = f.cl;

    bool is_head = request_method_len == 4 && memcmp(request_method, "HEAD", 4) == 0;
    bool is_connect = request_method_len == 7 && memcmp(request_method, "CONNECT", 7) == 0;
    bool keep_alive =
        resp->version_minor == 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
    if (is_head || resp->status < 200 || resp->status == 204 || resp->status == 304 ||
        (is_connect && resp->status < 300)) {
        resp->body_kind = HTTP1_BODY_NONE;
    } else if (f.has_te) {
        if (f.te_result != HTTP1_OK)
            return f.te_result;
        resp->body_kind = HTTP1_BODY_CHUNKED;
    } else if (f.has_cl) {
        resp->body_kind = HTTP1_BODY_LENGTH;
    } else {
        resp->body_kind = HTTP1_BODY_UNTIL_CLOSE;
        keep_alive = false;
    }
    resp->keep_alive = keep_alive;
    *head_len = end;
    return HTTP1_OK;
}

/* ---- serialisers ---- */

/* Appends bytes; an evbuffer only fails to grow when memory is exhausted, and the project's
 * policy for that is to abort (util.h). */
static void http1_put(struct evbuffer *out, const char *s, size_t n)
{
    if (evbuffer_add(out, s, n) != 0)
        abort();
}

static void http1_put_str(struct evbuffer *out, const char *s)
{
    http1_put(out, s, strlen(s));
}

static void http1_put_field(struct evbuffer *out, const char *name, size_t name_len,
                            const char *value, size_t value_len)
{
    http1_put(out, name, name_len);
    http1_put(out, ": ", 2);
    http1_put(out, value, value_len);
    http1_put(out, "\r\n", 2);
}

static void http1_put_content_length(struct evbuffer *out, uint64_t n)
{
    if (evbuffer_add_printf(out, "Content-Length: %" PRIu64 "\r\n", n) < 0)
        abort(); /* out of memory: see http1_put */
}

/* The fields RFC 9110 §7.6.1 (and practice) make hop-by-hop, plus nothing else. */
static bool http1_is_hop_by_hop(const char *name, size_t len)
{
    /* With their lengths: this runs for every header of every request, and a strlen per
     * candidate was a visible share of the proxy's user-space time. */
#define HOP(lit) {lit, sizeof(lit) - 1}
    static const struct {
        const char *name;
        size_t len;
    } names[] = {HOP("connection"),         HOP("keep-alive"),         HOP("proxy-connection"),
                 HOP("proxy-authorization"), HOP("proxy-authenticate"), HOP("te"),
                 HOP("trailer"),            HOP("transfer-encoding"),  HOP("upgrade")};
#undef HOP
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (names[i].len == len && ascii_case_eq(name, len, names[i].name, len))
            return true;
    return false;
}

/* True if a Connection field among h[0..n) lists name as a connection option. */
static bool http1_named_by_connection(const struct http1_header *h, size_t n, const char *name,
                                      size_t name_len)
{
    for (size_t i = 0; i < n; i++)
        if (http1_name_is(h[i].name, h[i].name_len, "connection") &&
            http1_list_has_token_n(h[i].value, h[i].value_len, name, name_len))
            return true;
    return false;
}

/* Exported: see http1.h. */
bool http1_override_valid(const struct http1_header_override *o)
{
    static const char *const owned[] = {"content-length",   "transfer-encoding",
                                        "connection",       "keep-alive",
                                        "proxy-connection", "te",
                                        "trailer",          "upgrade"};
    if (o == NULL || o->name == NULL || o->value == NULL)
        return false;
    size_t nlen = strlen(o->name);
    if (!http1_is_token(o->name, nlen))
        return false;
    for (size_t i = 0; i < ARRAY_LEN(owned); i++)
        if (http1_name_is(o->name, nlen, owned[i]))
            return false;
    for (const char *v = o->value; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* Exported: see http1.h. Field order: the client's surviving fields as sent, the overrides in
 * the given order (when a name is given twice, the later override wins), then the framing fields
 * this module owns. Beyond the header's list, the client's Content-Length fields are replaced by
 * one canonical field, and Expect is dropped from an HTTP/1.0 request. The request line always
 * says HTTP/1.1, so for an HTTP/1.0 client without Host the caller must pass a Host override.
 * origin_target must be VCHAR only (checked: -1 otherwise). */
int http1_write_request_head(struct evbuffer *out, const struct http1_request *req,
                             const char *origin_target, size_t origin_target_len,
                             const struct http1_header_override *overrides, size_t n_overrides)
{
    if (origin_target == NULL || origin_target_len == 0 || req->method_len == 0)
        return -1;
    for (size_t i = 0; i < origin_target_len; i++) {
        unsigned char c = (unsigned char)origin_target[i];
        if (c <= 0x20 || c >= 0x7f)
            return -1;
    }
    for (size_t i = 0; i < n_overrides; i++) {
        struct http1_header_override probe = {overrides[i].name, ""}; /* a removal: name only */
        if (!http1_override_valid(overrides[i].value ? &overrides[i] : &probe))
            return -1;
    }

    http1_put(out, req->method, req->method_len);
    http1_put(out, " ", 1);
    http1_put(out, origin_target, origin_target_len);
    http1_put_str(out, " HTTP/1.1\r\n");

    for (size_t i = 0; i < req->n_headers; i++) {
        const struct http1_header *h = &req->headers[i];
        if (http1_is_hop_by_hop(h->name, h->name_len) ||
            http1_name_is(h->name, h->name_len, "content-length"))
            continue;
        /* An HTTP/1.0 client's Expect must be ignored (RFC 9110 §10.1.1); forwarded in our
         * HTTP/1.1 request it would make the origin send a 1xx that the client cannot take. */
        if (req->version_minor == 0 && http1_name_is(h->name, h->name_len, "expect"))
            continue;
        /* Connection may name end-to-end fields for removal, but never Host: removing it would
         * only turn a valid request into one the origin must refuse. */
        if (!http1_name_is(h->name, h->name_len, "host") &&
            http1_named_by_connection(req->headers, req->n_headers, h->name, h->name_len))
            continue;
        bool overridden = false;
        for (size_t k = 0; k < n_overrides && !overridden; k++)
            overridden = http1_name_is_cgi(h->name, h->name_len, overrides[k].name);
        if (!overridden)
            http1_put_field(out, h->name, h->name_len, h->value, h->value_len);
    }
    for (size_t i = 0; i < n_overrides; i++) {
        bool superseded = false;
        for (size_t k = i + 1; k < n_overrides && !superseded; k++)
            superseded =
                http1_name_is(overrides[k].name, strlen(overrides[k].name), overrides[i].name);
        if (!superseded && overrides[i].value != NULL)
            http1_put_field(out, overrides[i].name, strlen(overrides[i].name), overrides[i].value,
                            strlen(overrides[i].value));
    }
    if (req->body_kind == HTTP1_BODY_CHUNKED)
        http1_put_str(out, "Transfer-Encoding: chunked\r\n");
    else if (req->body_kind == HTTP1_BODY_LENGTH)
        http1_put_content_length(out, req->content_length);
    if (req->upgrade_websocket)
        http1_put_str(out, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    http1_put(out, "\r\n", 2);
    return 0;
}

/* Exported: see http1.h. Beyond the header's contract: an empty upstream reason is replaced by
 * the standard phrase; Content-Length is re-emitted once, canonically; a body delimited by close
 * always gets "Connection: close"; a kept-alive connection gets "Connection: keep-alive" (an
 * HTTP/1.0 client needs it to reuse the connection); an interim (1xx) response gets no
 * Connection field of ours, since the final response decides (and a 101 keeps the upstream's). */
void http1_write_response_head(struct evbuffer *out, const struct http1_response *resp,
                               bool client_keep_alive)
{
    if (evbuffer_add_printf(out, "HTTP/1.1 %03d ", resp->status) < 0)
        abort(); /* out of memory: see http1_put */
    if (resp->reason_len > 0)
        http1_put(out, resp->reason, resp->reason_len);
    else
        http1_put_str(out, http1_reason_phrase(resp->status));
    http1_put(out, "\r\n", 2);

    bool is_101 = resp->status == 101;
    for (size_t i = 0; i < resp->n_headers; i++) {
        const struct http1_header *h = &resp->headers[i];
        bool keep;
        if (is_101 && (http1_name_is(h->name, h->name_len, "connection") ||
                       http1_name_is(h->name, h->name_len, "upgrade")))
            keep = true;
        else
            keep = !http1_is_hop_by_hop(h->name, h->name_len) &&
                   !http1_name_is(h->name, h->name_len, "content-length") &&
                   !http1_named_by_connection(resp->headers, resp->n_headers, h->name, h->name_len);
        if (keep)
            http1_put_field(out, h->name, h->name_len, h->value, h->value_len);
    }
    if (resp->body_kind == HTTP1_BODY_CHUNKED)
        http1_put_str(out, "Transfer-Encoding: chunked\r\n");
    else if (resp->has_content_length)
        http1_put_content_length(out, resp->content_length);
    if (resp->status >= 200) {
        if (!client_keep_alive || resp->body_kind == HTTP1_BODY_UNTIL_CLOSE)
            http1_put_str(out, "Connection: close\r\n");
        else
            http1_put_str(out, "Connection: keep-alive\r\n");
    }
    http1_put(out, "\r\n", 2);
}

/* ---- chunked bodies ---- */

enum http1_chunked_state {
    CH_SIZE_START = 0, /* first hex digit of a chunk-size */
    CH_SIZE,           /* more hex digits */
    CH_SIZE_WS,        /* BWS after the size: only ';' may follow */
    CH_EXT_NAME_START, /* after ';' */
    CH_EXT_NAME,
    CH_EXT_NAME_WS, /* BWS after a name: '=' or ';' */
    CH_EXT_VAL_START,
    CH_EXT_VAL_TOKEN,
    CH_EXT_QUOTED,
    CH_EXT_QUOTED_ESC,
    CH_EXT_VAL_DONE, /* right after a value: SP, ';' or CR */
    CH_EXT_VAL_WS,   /* BWS after a value: only ';' */
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START, /* start of a trailer line, or the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF,
    CH_DONE,
    CH_ERROR,
};

/* Trailer fields that must not appear: a recipient that merges trailers into the header
 * section would re-frame or re-route the message (RFC 9110 §6.5.1). */
static const char *const http1_forbidden_trailers[] = {"content-length", "transfer-encoding",
                                                       "host"};

/* Exported: see http1.h. */
void http1_chunked_init(struct http1_chunked *c)
{
    memset(c, 0, sizeof(*c));
    c->state = CH_SIZE_START;
}

/* Advances the trailer-name matcher: digits holds a bitmask of forbidden names still matching,
 * line_len the position in the name. */
static void http1_trailer_name_step(struct http1_chunked *c, unsigned char ch)
{
    for (size_t k = 0; k < ARRAY_LEN(http1_forbidden_trailers); k++) {
        const char *n = http1_forbidden_trailers[k];
        if ((c->digits & (1u << k)) &&
            (c->line_len >= strlen(n) || ascii_lower((char)ch) != n[c->line_len]))
            c->digits &= ~(1u << k);
    }
    c->line_len++;
}

static bool http1_trailer_name_forbidden(const struct http1_chunked *c)
{
    for (size_t k = 0; k < ARRAY_LEN(http1_forbidden_trailers); k++)
        if ((c->digits & (1u << k)) && c->line_len == strlen(http1_forbidden_trailers[k]))
            return true;
    return false;
}

/* One byte of the size line (size, extensions, their CRLF). Returns the next state. */
static int http1_chunked_size_byte(struct http1_chunked *c, unsigned char ch)
{
    bool ws = ch == ' ' || ch == '\t';
    if (++c->line_len > HTTP1_CHUNK_LINE_MAX)
        return CH_ERROR;
    switch (c->state) {
    case CH_SIZE_START:
    case CH_SIZE: {
        int d = http1_hex_value(ch);
        if (d >= 0) {
            if (++c->digits > HTTP1_CHUNK_MAX_DIGITS)
                return CH_ERROR;
            uint64_t v = (c->remaining << 4) | (uint64_t)d; /* no wrap: at most 16 digits */
            if (v > (uint64_t)HTTP1_CL_MAX)
                return CH_ERROR;
            c->remaining = v;
            return CH_SIZE;
        }
        if (c->state == CH_SIZE_START)
            return CH_ERROR;
        return ch == ';' ? CH_EXT_NAME_START : ch == '\r' ? CH_SIZE_LF : ws ? CH_SIZE_WS : CH_ERROR;
    }
    case CH_SIZE_WS:
        return ws ? CH_SIZE_WS : ch == ';' ? CH_EXT_NAME_START : CH_ERROR;
    case CH_EXT_NAME_START:
        return ws ? CH_EXT_NAME_START : http1_is_tchar(ch) ? CH_EXT_NAME : CH_ERROR;
    case CH_EXT_NAME:
        if (http1_is_tchar(ch))
            return CH_EXT_NAME;
        return ws           ? CH_EXT_NAME_WS
               : ch == '='  ? CH_EXT_VAL_START
               : ch == ';'  ? CH_EXT_NAME_START
               : ch == '\r' ? CH_SIZE_LF
                            : CH_ERROR;
    case CH_EXT_NAME_WS:
        return ws          ? CH_EXT_NAME_WS
               : ch == '=' ? CH_EXT_VAL_START
               : ch == ';' ? CH_EXT_NAME_START
                           : CH_ERROR;
    case CH_EXT_VAL_START:
        return ws                   ? CH_EXT_VAL_START
               : ch == '"'          ? CH_EXT_QUOTED
               : http1_is_tchar(ch) ? CH_EXT_VAL_TOKEN
                                    : CH_ERROR;
    case CH_EXT_VAL_TOKEN:
        if (http1_is_tchar(ch))
            return CH_EXT_VAL_TOKEN;
        return ws           ? CH_EXT_VAL_WS
               : ch == ';'  ? CH_EXT_NAME_START
               : ch == '\r' ? CH_SIZE_LF
                            : CH_ERROR;
    case CH_EXT_QUOTED:
        /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
        if (ch == '"')
            return CH_EXT_VAL_DONE;
        if (ch == '\\')
            return CH_EXT_QUOTED_ESC;
        return (ws || (ch >= 0x21 && ch != 0x7f)) ? CH_EXT_QUOTED : CH_ERROR;
    case CH_EXT_QUOTED_ESC:
        return (ws || (ch >= 0x21 && ch != 0x7f)) ? CH_EXT_QUOTED : CH_ERROR;
    case CH_EXT_VAL_DONE:
        return ws           ? CH_EXT_VAL_WS
               : ch == ';'  ? CH_EXT_NAME_START
               : ch == '\r' ? CH_SIZE_LF
                            : CH_ERROR;
    case CH_EXT_VAL_WS:
        return ws ? CH_EXT_VAL_WS : ch == ';' ? CH_EXT_NAME_START : CH_ERROR;
    default:
        return CH_ERROR;
    }
}

/* One byte of the trailer section (after the last chunk's size line), including its final
 * CRLF. Returns the next state. */
static int http1_chunked_trailer_byte(struct http1_chunked *c, unsigned char ch)
{
    if (++c->trailer_bytes > HTTP1_TRAILER_MAX)
        return CH_ERROR;
    switch (c->state) {
    case CH_TRAILER_START:
        if (ch == '\r')
            return CH_END_LF;
        if (!http1_is_tchar(ch))
            return CH_ERROR; /* obs-fold, or garbage */
        c->digits = (1u << ARRAY_LEN(http1_forbidden_trailers)) - 1;
        c->line_len = 0;
        http1_trailer_name_step(c, ch);
        return CH_TRAILER_NAME;
    case CH_TRAILER_NAME:
        if (http1_is_tchar(ch)) {
            http1_trailer_name_step(c, ch);
            return CH_TRAILER_NAME;
        }
        if (ch == ':')
            return http1_trailer_name_forbidden(c) ? CH_ERROR : CH_TRAILER_VALUE;
        return CH_ERROR; /* includes whitespace before the colon */
    case CH_TRAILER_VALUE:
        if (ch == '\r')
            return CH_TRAILER_LF;
        return http1_is_value_byte(ch) ? CH_TRAILER_VALUE : CH_ERROR;
    case CH_TRAILER_LF:
        return ch == '\n' ? CH_TRAILER_START : CH_ERROR;
    case CH_END_LF:
        return ch == '\n' ? CH_DONE : CH_ERROR;
    default:
        return CH_ERROR;
    }
}

/* Exported: see http1.h. On HTTP1_ERR_BAD, *consumed is the number of bytes before the one that
 * broke the framing; the validator stays in error for later calls (consumed 0). After HTTP1_OK
 * later calls return HTTP1_OK with consumed 0. */
int http1_chunked_feed(struct http1_chunked *c, const char *buf, size_t len, size_t *consumed)
{
    size_t i = 0;
    int rc = HTTP1_INCOMPLETE;
    if (c->state == CH_DONE) {
        rc = HTTP1_OK;
        goto out;
    }
    if (c->state == CH_ERROR) {
        rc = HTTP1_ERR_BAD;
        goto out;
    }
    while (i < len) {
        unsigned char ch = (unsigned char)buf[i];
        int next;
        switch (c->state) {
        case CH_DATA: {
            /* Skip data in O(1): it is forwarded verbatim and never inspected. */
            uint64_t avail = len - i;
            uint64_t take = c->remaining < avail ? c->remaining : avail;
            i += (size_t)take;
            c->remaining -= take;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        case CH_SIZE_LF:
            if (ch != '\n') {
                next = CH_ERROR;
            } else if (c->remaining == 0) {
                c->trailer_bytes = 0;
                next = CH_TRAILER_START;
            } else {
                next = CH_DATA;
            }
            break;
        case CH_DATA_CR:
            next = ch == '\r' ? CH_DATA_LF : CH_ERROR;
            break;
        case CH_DATA_LF:
            if (ch == '\n') {
                c->remaining = 0;
                c->digits = 0;
                c->line_len = 0;
                next = CH_SIZE_START;
            } else {
                next = CH_ERROR;
            }
            break;
        case CH_TRAILER_START:
        case CH_TRAILER_NAME:
        case CH_TRAILER_VALUE:
        case CH_TRAILER_LF:
        case CH_END_LF:
            next = http1_chunked_trailer_byte(c, ch);
            break;
        default:
            next = http1_chunked_size_byte(c, ch);
            break;
        }
        if (next == CH_ERROR) {
            c->state = CH_ERROR;
            rc = HTTP1_ERR_BAD;
            goto out;
        }
        c->state = next;
        i++;
        if (next == CH_DONE) {
            rc = HTTP1_OK;
            goto out;
        }
    }
out:
    *consumed = i;
    return rc;
}

/* Exported: see http1.h. */
const char *http1_reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        break;
    }
    if (status >= 100 && status < 200)
        return "Informational";
    if (status >= 200 && status < 300)
        return "Success";
    if (status >= 300 && status < 400)
        return "Redirection";
    if (status >= 400 && status < 500)
        return "Client Error";
    return "Server Error";
}

int http1_parse_url(const char *url, bool *tls, char *host, size_t host_size, uint16_t *port,
                    const char **target)
{
    size_t len = strlen(url);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f || url[i] == '#')
            return -1;
    const char *rest;
    if (strncasecmp(url, "https://", 8) == 0) {
        *tls = true;
        rest = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        *tls = false;
        rest = url + 7;
    } else {
        return -1;
    }
    size_t alen = strcspn(rest, "/?");
    if (alen == 0 || memchr(rest, '@', alen) != NULL)
        return -1;
    struct http1_authority a;
    if (http1_parse_authority(rest, alen, false, &a) != 0)
        return -1;
    uint16_t ignored = 0;
    if (host_normalize(rest, alen, host, host_size, &ignored) != 0)
        return -1;
    *port = a.port > 0 ? (uint16_t)a.port : (*tls ? 443 : 80);
    *target = rest[alen] == '\0' ? "/" : rest + alen;
    if (**target == '?')
        return -1; /* "http://h?q": a path is required before a query */
    return 0;
}
