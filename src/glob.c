/* glob: host and path patterns (SPEC §3). See glob.h for the contract.
 *
 * Canonical host form, shared by patterns and requests so that a comparison is a plain
 * case-insensitive string compare:
 *   - DNS names: lower-case, one trailing dot dropped, labels of [a-z0-9_-], 1..63 bytes each,
 *     253 bytes in all.
 *   - IPv4: a name whose last label is a number ("127.1", "0x7f.0.0.1", "2130706433") is an IPv4
 *     address to every resolver that follows the URL standard or inet_aton(); it is rewritten to
 *     dotted-quad, or refused when it is not a valid address. Without this, deny_list
 *     "10.0.0.1" could be side-stepped with "Host: 0xa.1".
 *   - IPv6: brackets stripped, rewritten by inet_ntop(); an IPv4-mapped address (::ffff:a.b.c.d)
 *     becomes the IPv4 address it reaches, for the same reason. Zone ids are refused. */
#include "glob.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define GLOB_NAME_MAX  253
#define GLOB_LABEL_MAX 63
/* Large enough for any canonical result: a 253-byte name, or an inet_ntop() IPv6 string. */
#define GLOB_BODY_CAP (GLOB_NAME_MAX + 1)

static bool glob_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool glob_is_hex(char c)
{
    return glob_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static unsigned glob_hex_value(char c)
{
    if (glob_is_digit(c))
        return (unsigned)(c - '0');
    return (unsigned)(ascii_lower(c) - 'a' + 10);
}

/* One part of a URL-standard IPv4 address: decimal, octal ("017") or hex ("0x1f"), into *out.
 * Returns 0, or -1 if it is not a number or exceeds 2^32-1. */
static int glob_ipv4_part(const char *s, size_t len, uint64_t *out)
{
    unsigned base = 10;
    uint64_t v = 0;
    if (len == 0)
        return -1;
    if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        len -= 2;
    } else if (len >= 2 && s[0] == '0') {
        base = 8;
        s++;
        len--;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned d;
        if (base == 16 && glob_is_hex(s[i]))
            d = glob_hex_value(s[i]);
        else if (glob_is_digit(s[i]) && (unsigned)(s[i] - '0') < base)
            d = (unsigned)(s[i] - '0');
        else
            return -1;
        v = v * base + d;
        if (v > 0xffffffffu)
            return -1;
    }
    *out = v;
    return 0;
}

/* True if the name's last label is a number in the URL standard's sense ("ends in a number"):
 * such a name is an IPv4 address, never a DNS name. */
static bool glob_ends_in_number(const char *s, size_t len)
{
    const char *dot = NULL;
    for (size_t i = len; i > 0; i--)
        if (s[i - 1] == '.') {
            dot = s + i - 1;
            break;
        }
    const char *last = dot ? dot + 1 : s;
    size_t n = len - (size_t)(last - s);
    if (n == 0)
        return false;
    bool all_digits = true;
    for (size_t i = 0; i < n; i++)
        if (!glob_is_digit(last[i]))
            all_digits = false;
    if (all_digits)
        return true;
    if (n >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X')) {
        for (size_t i = 2; i < n; i++)
            if (!glob_is_hex(last[i]))
                return false;
        return true;
    }
    return false;
}

/* Writes addr (host byte order) as dotted-quad. */
static int glob_format_ipv4(uint32_t addr, char *out, size_t out_size)
{
    int w =
        snprintf(out, out_size, "%u.%u.%u.%u", (unsigned)(addr >> 24) & 255,
                 (unsigned)(addr >> 16) & 255, (unsigned)(addr >> 8) & 255, (unsigned)addr & 255);
    return (w < 0 || (size_t)w >= out_size) ? -1 : 0;
}

/* Parses an IPv4 address as URL parsers and inet_aton() do (1 to 4 parts, the last one filling
 * the remaining bytes) and writes its dotted-quad form to out (at least 16 bytes). */
static int glob_ipv4_canonical(const char *s, size_t len, char *out, size_t out_size)
{
    uint64_t parts[4];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        if (n == 4 || glob_ipv4_part(s + start, i - start, &parts[n]) == -1)
            return -1;
        n++;
        start = i + 1;
    }
    uint64_t addr = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (parts[i] > 255)
            return -1;
        addr |= parts[i] << (8 * (3 - i));
    }
    uint64_t last_max = (n == 1) ? 0xffffffffu : ((uint64_t)1 << (8 * (5 - n))) - 1;
    if (parts[n - 1] > last_max)
        return -1;
    addr |= parts[n - 1];
    return glob_format_ipv4((uint32_t)addr, out, out_size);
}

/* Parses an IPv6 literal (no brackets) into its canonical text: inet_ntop() form, or the IPv4
 * dotted-quad for an IPv4-mapped address. */
static int glob_ipv6_canonical(const char *s, size_t len, char *out, size_t out_size)
{
    char tmp[INET6_ADDRSTRLEN];
    struct in6_addr a6;
    if (len == 0 || len >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET6, tmp, &a6) != 1)
        return -1;
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        const unsigned char *b = a6.s6_addr + 12;
        return glob_format_ipv4((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
                                    b[3],
                                out, out_size);
    }
    return inet_ntop(AF_INET6, &a6, out, (socklen_t)out_size) ? 0 : -1;
}

/* Validates a DNS name already lower-cased and without trailing dot. */
static int glob_check_name(const char *s, size_t len, const char **err)
{
    size_t label = 0;
    if (len == 0) {
        *err = "empty host name";
        return -1;
    }
    if (len > GLOB_NAME_MAX) {
        *err = "host name longer than 253 characters";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0) {
                *err = "empty label in host name";
                return -1;
            }
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || glob_is_digit(c) || c == '-' || c == '_')) {
            *err = "character not allowed in a host name";
            return -1;
        }
        if (++label > GLOB_LABEL_MAX) {
            *err = "label longer than 63 characters in host name";
            return -1;
        }
    }
    if (label == 0) {
        *err = "empty label in host name";
        return -1;
    }
    return 0;
}

/* Canonicalises a host without port: "[v6]", a bare v6 literal, an IPv4 address in any URL
 * form, or a DNS name. Writes the canonical text to out (GLOB_BODY_CAP bytes) and whether it
 * is an IP literal. */
static int glob_host_body(const char *s, size_t len, char *out, bool *is_ip, const char **err)
{
    char name[GLOB_BODY_CAP + 1];
    *is_ip = false;
    if (len == 0) {
        *err = "empty host";
        return -1;
    }
    if (s[0] == '[' || memchr(s, ':', len) != NULL) {
        if (s[0] == '[') {
            if (len < 2 || s[len - 1] != ']') {
                *err = "unterminated '[' in IPv6 literal";
                return -1;
            }
            s++;
            len -= 2;
        }
        if (glob_ipv6_canonical(s, len, out, GLOB_BODY_CAP) == -1) {
            *err = "not a valid IPv6 address";
            return -1;
        }
        *is_ip = true;
        return 0;
    }
    if (len > GLOB_NAME_MAX + 1) {
        *err = "host name longer than 253 characters";
        return -1;
    }
    for (size_t i = 0; i < len; i++)
        name[i] = ascii_lower(s[i]);
    if (name[len - 1] == '.')
        len--;
    if (len > 0 && glob_ends_in_number(name, len)) {
        if (glob_ipv4_canonical(name, len, out, GLOB_BODY_CAP) == -1) {
            *err = "not a valid IPv4 address";
            return -1;
        }
        *is_ip = true;
        return 0;
    }
    if (glob_check_name(name, len, err) == -1)
        return -1;
    memcpy(out, name, len);
    out[len] = '\0';
    return 0;
}

int host_pattern_compile(const char *src, struct host_pattern *out, const char **err)
{
    char body[GLOB_BODY_CAP];
    bool is_ip;
    size_t len = src ? strlen(src) : 0;
    memset(out, 0, sizeof(*out));
    if (len == 0) {
        *err = "empty host pattern";
        return -1;
    }
    if (len == 1 && src[0] == '*') {
        out->kind = HOST_PATTERN_ANY;
        return 0;
    }
    bool wildcard = len > 2 && src[0] == '*' && src[1] == '.';
    const char *rest = wildcard ? src + 2 : src;
    size_t rest_len = wildcard ? len - 2 : len;
    if (memchr(rest, '*', rest_len) != NULL || (!wildcard && src[0] == '*')) {
        *err = "'*' is only allowed alone or as a whole leading label, as in \"*.example.com\"";
        return -1;
    }
    const char *colon = memchr(rest, ':', rest_len);
    const char *rbracket = memchr(rest, ']', rest_len);
    if ((colon && memchr(colon + 1, ':', rest_len - (size_t)(colon + 1 - rest)) == NULL) ||
        (rbracket && rbracket != rest + rest_len - 1)) {
        *err = "a host pattern has no port (ports are not matched)";
        return -1;
    }
    if (glob_host_body(rest, rest_len, body, &is_ip, err) == -1)
        return -1;
    if (wildcard && is_ip) {
        *err = "a wildcard cannot precede an IP address";
        return -1;
    }
    if (wildcard) {
        out->kind = HOST_PATTERN_SUFFIX;
        out->text = xasprintf(".%s", body);
    } else {
        out->kind = HOST_PATTERN_EXACT;
        out->text = xstrdup(body);
    }
    out->len = strlen(out->text);
    return 0;
}

void host_pattern_free(struct host_pattern *p)
{
    if (p == NULL)
        return;
    free(p->text);
    p->text = NULL;
    p->len = 0;
}

bool host_pattern_match(const struct host_pattern *p, const char *host, size_t host_len)
{
    switch (p->kind) {
    case HOST_PATTERN_ANY:
        return true;
    case HOST_PATTERN_EXACT:
        return ascii_case_eq(p->text, p->len, host, host_len);
    case HOST_PATTERN_SUFFIX:
        return host_len > p->len &&
               ascii_case_eq(host + host_len - p->len, p->len, p->text, p->len);
    }
    return false;
}

bool host_pattern_within(const struct host_pattern *inner, const struct host_pattern *outer)
{
    if (outer->kind == HOST_PATTERN_ANY)
        return true;
    switch (inner->kind) {
    case HOST_PATTERN_ANY:
        return false;
    case HOST_PATTERN_EXACT:
        return host_pattern_match(outer, inner->text, inner->len);
    case HOST_PATTERN_SUFFIX:
        /* "*.a.x.com" lies within "*.x.com" (and within itself), never within an exact name. */
        return outer->kind == HOST_PATTERN_SUFFIX && inner->len >= outer->len &&
               ascii_case_eq(inner->text + inner->len - outer->len, outer->len, outer->text,
                             outer->len);
    }
    return false;
}

const char *host_pattern_format(const struct host_pattern *p, char *buf, size_t size)
{
    if (size == 0)
        return buf;
    switch (p->kind) {
    case HOST_PATTERN_ANY:
        snprintf(buf, size, "*");
        break;
    case HOST_PATTERN_SUFFIX:
        snprintf(buf, size, "*%s", p->text);
        break;
    case HOST_PATTERN_EXACT:
        snprintf(buf, size, "%s", p->text);
        break;
    default:
        buf[0] = '\0';
    }
    return buf;
}

/* Parses a decimal port 1..65535 (at most 5 digits). */
static int glob_parse_port(const char *s, size_t len, uint16_t *port)
{
    unsigned v = 0;
    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!glob_is_digit(s[i]))
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

int host_normalize(const char *in, size_t in_len, char *out, size_t out_size, uint16_t *port)
{
    char body[GLOB_BODY_CAP];
    const char *err;
    bool is_ip;
    size_t host_len = in_len;
    uint16_t p = 0;
    if (in_len == 0)
        return -1;
    if (in[0] == '[') {
        const char *rb = memchr(in, ']', in_len);
        if (rb == NULL)
            return -1;
        host_len = (size_t)(rb - in) + 1;
    } else {
        const char *colon = memchr(in, ':', in_len);
        /* One colon: host:port. Two or more: a bare IPv6 literal, which cannot carry a port. */
        if (colon && memchr(colon + 1, ':', in_len - (size_t)(colon + 1 - in)) == NULL)
            host_len = (size_t)(colon - in);
    }
    if (host_len < in_len) {
        if (in[host_len] != ':' ||
            glob_parse_port(in + host_len + 1, in_len - host_len - 1, &p) == -1)
            return -1;
    }
    if (glob_host_body(in, host_len, body, &is_ip, &err) == -1)
        return -1;
    size_t n = strlen(body);
    if (n + 1 > out_size)
        return -1;
    memcpy(out, body, n + 1);
    if (port)
        *port = p;
    return 0;
}

int path_pattern_validate(const char *pattern, const char **err)
{
    if (pattern == NULL || pattern[0] == '\0') {
        *err = "empty path pattern";
        return -1;
    }
    if (pattern[0] != '/' && pattern[0] != '*') {
        *err = "a path pattern starts with '/' or '*'";
        return -1;
    }
    for (const unsigned char *p = (const unsigned char *)pattern; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            *err = "control character in path pattern";
            return -1;
        }
        if (*p == ' ') {
            *err = "space in path pattern (a request path has none; write %20)";
            return -1;
        }
        if (*p == '?' || *p == '#') {
            *err = "'?' or '#' in path pattern: paths are matched without the query string";
            return -1;
        }
    }
    return 0;
}

/* Length of a path separator at path[i] as a server might read it: '/', '\' or their
 * percent-encodings; 0 if none. */
static size_t glob_sep_len(const char *s, size_t i, size_t n)
{
    if (i < n && (s[i] == '/' || s[i] == '\\'))
        return 1;
    if (i + 2 < n && s[i] == '%' &&
        ((s[i + 1] == '2' && ascii_lower(s[i + 2]) == 'f') ||
         (s[i + 1] == '5' && ascii_lower(s[i + 2]) == 'c')))
        return 3;
    return 0;
}

/* Length of a '.' or "%2e" at path[i]; 0 if none. */
static size_t glob_dot_len(const char *s, size_t i, size_t n)
{
    if (i < n && s[i] == '.')
        return 1;
    if (i + 2 < n && s[i] == '%' && s[i + 1] == '2' && ascii_lower(s[i + 2]) == 'e')
        return 3;
    return 0;
}

/* True if the path holds a "." or ".." segment, literal or percent-encoded. Servers resolve
 * those, so "/repos/../user" reaches /user although it begins with "/repos/". */
static bool glob_has_dot_segment(const char *s, size_t n)
{
    size_t i = 0;
    bool at_start = true;
    while (i < n) {
        size_t sep = glob_sep_len(s, i, n);
        if (sep) {
            i += sep;
            at_start = true;
            continue;
        }
        if (at_start) {
            size_t d1 = glob_dot_len(s, i, n);
            if (d1) {
                size_t k = i + d1;
                if (k == n || glob_sep_len(s, k, n))
                    return true;
                size_t d2 = glob_dot_len(s, k, n);
                if (d2 && (k + d2 == n || glob_sep_len(s, k + d2, n)))
                    return true;
            }
        }
        at_start = false;
        i++;
    }
    return false;
}

/* Iterative glob with one backtrack point: '*' re-extends by one character at a time, so the
 * cost is bounded by pattern length x path length, never exponential. A path with dot segments
 * only matches the catch-all patterns ("*", and "/" followed by "*"): a path-scoped rule must not
 * be stretched to a path the upstream will resolve outside its scope; refusing to match fails
 * closed (no credential is injected). */
bool path_pattern_match(const char *pattern, const char *path, size_t path_len)
{
    size_t p = 0, s = 0, star = SIZE_MAX, mark = 0;
    if (strcmp(pattern, "*") == 0 || strcmp(pattern, "/*") == 0)
        return strcmp(pattern, "*") == 0 || (path_len > 0 && path[0] == '/');
    if (glob_has_dot_segment(path, path_len))
        return false;
    while (s < path_len) {
        if (pattern[p] == '*') {
            star = p++;
            mark = s;
        } else if (pattern[p] != '\0' && pattern[p] == path[s]) {
            p++;
            s++;
        } else if (star != SIZE_MAX) {
            p = star + 1;
            s = ++mark;
        } else {
            return false;
        }
    }
    while (pattern[p] == '*')
        p++;
    return pattern[p] == '\0';
}

/* Letters, digits, '-' and '_' (seen in real host names), labels of 1..63 characters that do
 * not start or end with '-', at most 253 characters, no trailing dot (stripped before). */
bool host_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && c != '-' && c != '_')
            return false;
        if (c == '-' && label == 0)
            return false;
        if (++label > 63)
            return false;
    }
    return s[len - 1] != '-';
}
