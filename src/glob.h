/* glob: host and path patterns of proxy_config (SPEC §3).
 *
 * Host patterns are compiled once per config into a tagged form so matching a request is a
 * suffix or equality compare, never a backtracking glob. Hosts are compared case-insensitively
 * and without a port. "api.openai.com" matches exactly that name; "*.github.com" matches any
 * name ending in ".github.com" at any depth but not "github.com"; "*" matches every host; an
 * IP literal matches only itself. Path patterns use '*' for any run of characters, '/'
 * included, and are matched against the path without its query string. */
#ifndef AUTHPROXY_GLOB_H
#define AUTHPROXY_GLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum host_pattern_kind {
    HOST_PATTERN_EXACT = 1, /* text is the whole name */
    HOST_PATTERN_SUFFIX, /* text is ".github.com": any name with that suffix and a label before */
    HOST_PATTERN_ANY,    /* "*" */
};

struct host_pattern {
    enum host_pattern_kind kind;
    char *text; /* lower-case, owned; NULL for ANY */
    size_t len;
};

/* Compiles src. Returns 0, or -1 with *err set to a static description of what is wrong
 * (empty, a '*' anywhere but a leading "*." label, a port, characters not allowed in a
 * host name). */
int host_pattern_compile(const char *src, struct host_pattern *out, const char **err);
void host_pattern_free(struct host_pattern *p);

/* host must already be normalised (host_normalize). */
bool host_pattern_match(const struct host_pattern *p, const char *host, size_t host_len);

/* True if every host that inner matches is also matched by outer: the check behind secret host
 * binding ("a rule may use OPENAI_API_KEY only for hosts within api.openai.com"). */
bool host_pattern_within(const struct host_pattern *inner, const struct host_pattern *outer);

/* Writes the pattern as a user would write it ("*", "*.github.com", "api.openai.com") into buf,
 * truncated to size - 1; returns buf. For messages. */
const char *host_pattern_format(const struct host_pattern *p, char *buf, size_t size);

/* Normalises a host as it appears in a Host header, an absolute URI authority, a CONNECT
 * target or SNI: strips an optional ":port" (returned in *port, 0 if absent), strips brackets
 * of an IPv6 literal, lower-cases, drops one trailing dot. Writes a NUL-terminated result to
 * out. Returns 0, or -1 if the input is not a valid host[:port] (empty, bad characters, port
 * not 1..65535, result longer than out_size - 1). */
int host_normalize(const char *in, size_t in_len, char *out, size_t out_size, uint16_t *port);

/* Canonical form (glob.c): IPv4 in any URL form ("127.1", "0x7f.0.0.1") becomes dotted-quad and
 * an IPv4-mapped IPv6 literal becomes its IPv4 address, so an IP written another way cannot
 * side-step a deny_list entry; a name ending in a numeric label that is not a valid IPv4
 * address is refused. Patterns are canonicalised the same way. */

/* True if s[0..len) is a DNS host name as authproxy accepts one: letters, digits, '-' and
 * '_', labels of 1..63 characters not starting or ending with '-', at most 253 characters, no
 * trailing dot. Shared by certificate minting and upstream verification. */
bool host_name_valid(const char *s, size_t len);

/* Path glob. Returns 0 if pattern is acceptable (starts with '/' or '*'; no control characters,
 * spaces, '?' or '#', since the query string is never matched), else -1 with *err set. */
int path_pattern_validate(const char *pattern, const char **err);
/* Matches without backtracking blow-up (linear in pattern x path in the worst case). The match
 * is case-sensitive, on the raw path as sent (no percent-decoding). A path containing a "." or
 * ".." segment (also percent-encoded, or with '\' or %2F/%5C as separator) matches only the
 * catch-all patterns "*" and "/" followed by "*": the upstream would resolve it to another path,
 * so a path-scoped rule must not apply to it (not injecting fails closed). */
bool path_pattern_match(const char *pattern, const char *path, size_t path_len);

#endif
