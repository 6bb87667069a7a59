/* scrub: keeps injected credentials from coming back to the sandbox in responses (issue 6).
 *
 * An origin that echoes request headers (httpbin's /headers, a debug endpoint, an error page
 * quoting the request) would hand the sandbox the very credential the proxy injected. For each
 * request with injected credentials, the data path builds a scrub set of those values (and of
 * the forms an echo may show: the token after an auth scheme, the password of Basic
 * credentials) and redacts every occurrence in the response head and in an identity-encoded
 * body, in place and with '*' of the same length, so Content-Length and chunk framing stay
 * valid.
 *
 * Bodies arrive in pieces: a value split across two reads is caught by holding back the end of a
 * piece while it is the beginning of a value (scrub_apply's return), which is never more than the
 * longest value minus one byte and only while it could still become one, so a streamed response
 * (SSE) is not held back between events. Limits, documented in docs/SECURITY.md: compressed
 * bodies are not inspected; a value split by chunked framing is not seen. */
#ifndef AUTHPROXY_SCRUB_H
#define AUTHPROXY_SCRUB_H

#include <stdbool.h>
#include <stddef.h>

/* Values shorter than this are not scrubbed: redacting every "1" of a body would corrupt it,
 * and such values are not credentials. */
#define SCRUB_MIN_LEN 8

struct scrub;

/* An empty set. Free with scrub_free (which zeroes the values). */
struct scrub *scrub_new(void);
void scrub_free(struct scrub *s);

/* Adds an injected header value: the value itself; when it is "<scheme> <token>" also the
 * token; for "Basic <base64>" also the decoded "user:password" and the password. Parts shorter
 * than SCRUB_MIN_LEN are left out. */
void scrub_add_credential(struct scrub *s, const char *value);

/* True if the set holds nothing (nothing to scrub: the caller can skip the work). */
bool scrub_empty(const struct scrub *s);

/* Redacts every value of s occurring in buf[0..len), in place. Returns how many bytes at the end
 * of buf must not be sent yet because they are a proper prefix of a value that more data could
 * complete: the caller sends buf[0..len - ret) and presents the rest again, with more bytes,
 * next time. With final (no more data will follow) it returns 0. *redacted (may be NULL) gets
 * the number of occurrences redacted. */
size_t scrub_apply(const struct scrub *s, char *buf, size_t len, bool final, size_t *redacted);

#endif
