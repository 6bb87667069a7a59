/* jsonw: writes one JSON object, member by member, into a growing buffer - for the audit line,
 * which every request writes.
 *
 * Why not jansson here: building a json_t object for each record (a hash table, a heap string
 * per member) and dumping it was a tenth of the proxy's CPU per intercepted request in
 * profiles (docs/BENCHMARKS.md). jansson still reads and checks the lines (audit verify, the
 * tests), and does all other JSON.
 *
 * Output is compact, ASCII only (like jansson's JSON_ENSURE_ASCII): '"', '\\' and control
 * characters escaped, every non-ASCII character as \uXXXX (a surrogate pair above U+FFFF).
 * Bytes that are not valid UTF-8 (overlong forms, surrogates, truncated sequences, values
 * above U+10FFFF) each become U+FFFD, so any input gives a valid JSON string. Allocation
 * failure aborts (util.h's policy). */
#ifndef AUTHPROXY_JSONW_H
#define AUTHPROXY_JSONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct jsonw {
    char *buf; /* NUL-terminated text so far; the caller owns it after jsonw_finish */
    size_t len;
    size_t cap;
    bool first; /* no member written yet */
};

/* Starts an object ("{"), with room for about cap_hint bytes. */
void jsonw_begin(struct jsonw *w, size_t cap_hint);
/* "key": the string s as JSON, or null when s is NULL. key is written as given (a literal
 * without characters that need escaping). */
void jsonw_str(struct jsonw *w, const char *key, const char *s);
/* "key": v */
void jsonw_u64(struct jsonw *w, const char *key, uint64_t v);
/* "key": v, or null when v is 0 */
void jsonw_u64_or_null(struct jsonw *w, const char *key, uint64_t v);
/* "key": v/1000 as a decimal with three places (micro- to milliseconds, exactly). */
void jsonw_thousandths(struct jsonw *w, const char *key, uint64_t v);
/* "key": [the n strings] */
void jsonw_str_array(struct jsonw *w, const char *key, const char *const *s, size_t n);
/* Ends the object ("}") and returns its text (NUL-terminated; *len_out its length when not
 * NULL). The caller frees it; w is spent. */
char *jsonw_finish(struct jsonw *w, size_t *len_out);

#endif
