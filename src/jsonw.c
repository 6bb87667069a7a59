#include "jsonw.h"

#include <stdint.h>
#include <string.h>

#include "util.h"

/* Makes room for n more bytes and the terminating NUL. */
static void jsonw_reserve(struct jsonw *w, size_t n)
{
    if (w->len + n + 1 <= w->cap)
        return;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < w->len + n + 1)
        cap *= 2;
    w->buf = xrealloc(w->buf, cap);
    w->cap = cap;
}

static void jsonw_raw(struct jsonw *w, const char *s, size_t n)
{
    jsonw_reserve(w, n);
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

/* ,"key": (the comma from the second member on) */
static void jsonw_key(struct jsonw *w, const char *key)
{
    size_t klen = strlen(key);
    jsonw_reserve(w, klen + 4);
    if (!w->first)
        w->buf[w->len++] = ',';
    w->first = false;
    w->buf[w->len++] = '"';
    memcpy(w->buf + w->len, key, klen);
    w->len += klen;
    w->buf[w->len++] = '"';
    w->buf[w->len++] = ':';
    w->buf[w->len] = '\0';
}

static void jsonw_u16_escape(struct jsonw *w, unsigned cp)
{
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\',        'u', hex[(cp >> 12) & 15], hex[(cp >> 8) & 15], hex[(cp >> 4) & 15],
                 hex[cp & 15]};
    jsonw_raw(w, e, sizeof(e));
}

/* s as a JSON string (see jsonw.h for the escaping). */
static void jsonw_string(struct jsonw *w, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    jsonw_reserve(w, n + 2);
    w->buf[w->len++] = '"';
    size_t i = 0;
    while (i < n) {
        /* The common case: a run of printable ASCII needing no escape, copied at once. */
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\')
            run++;
        if (run > i) {
            jsonw_raw(w, (const char *)s + i, run - i);
            i = run;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode(s + i, n - i, &cp);
        if (len == 0) {
            cp = 0xfffd;
            len = 1;
        }
        i += len;
        switch (cp) {
        case '"':
            jsonw_raw(w, "\\\"", 2);
            break;
        case '\\':
            jsonw_raw(w, "\\\\", 2);
            break;
        case '\b':
            jsonw_raw(w, "\\b", 2);
            break;
        case '\f':
            jsonw_raw(w, "\\f", 2);
            break;
        case '\n':
            jsonw_raw(w, "\\n", 2);
            break;
        case '\r':
            jsonw_raw(w, "\\r", 2);
            break;
        case '\t':
            jsonw_raw(w, "\\t", 2);
            break;
        default:
            if (cp < 0x10000) {
                jsonw_u16_escape(w, cp);
            } else {
                cp -= 0x10000;
                jsonw_u16_escape(w, 0xd800 | (cp >> 10));
                jsonw_u16_escape(w, 0xdc00 | (cp & 0x3ff));
            }
        }
    }
    jsonw_raw(w, "\"", 1);
}

static void jsonw_number(struct jsonw *w, uint64_t v)
{
    /* Digits from the right: an audit line has several numbers, and snprintf's format
     * machinery was most of the line's formatting cost. */
    char digits[20]; /* UINT64_MAX has 20 */
    size_t i = sizeof(digits);
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    jsonw_raw(w, digits + i, sizeof(digits) - i);
}

/* See jsonw.h. */
void jsonw_begin(struct jsonw *w, size_t cap_hint)
{
    w->buf = NULL;
    w->len = 0;
    w->cap = 0;
    w->first = true;
    jsonw_reserve(w, cap_hint);
    jsonw_raw(w, "{", 1);
}

/* See jsonw.h. */
void jsonw_str(struct jsonw *w, const char *key, const char *s)
{
    jsonw_key(w, key);
    if (s == NULL)
        jsonw_raw(w, "null", 4);
    else
        jsonw_string(w, s);
}

/* See jsonw.h. */
void jsonw_u64(struct jsonw *w, const char *key, uint64_t v)
{
    jsonw_key(w, key);
    jsonw_number(w, v);
}

/* See jsonw.h. */
void jsonw_u64_or_null(struct jsonw *w, const char *key, uint64_t v)
{
    jsonw_key(w, key);
    if (v == 0)
        jsonw_raw(w, "null", 4);
    else
        jsonw_number(w, v);
}

/* See jsonw.h. */
void jsonw_thousandths(struct jsonw *w, const char *key, uint64_t v)
{
    jsonw_key(w, key);
    jsonw_number(w, v / 1000);
    unsigned frac = (unsigned)(v % 1000);
    char text[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10),
                    (char)('0' + frac % 10)};
    jsonw_raw(w, text, sizeof(text));
}

/* See jsonw.h. */
void jsonw_str_array(struct jsonw *w, const char *key, const char *const *s, size_t n)
{
    jsonw_key(w, key);
    jsonw_raw(w, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            jsonw_raw(w, ",", 1);
        jsonw_string(w, s[i]);
    }
    jsonw_raw(w, "]", 1);
}

/* See jsonw.h. */
char *jsonw_finish(struct jsonw *w, size_t *len_out)
{
    jsonw_raw(w, "}", 1);
    if (len_out != NULL)
        *len_out = w->len;
    char *text = w->buf;
    w->buf = NULL;
    return text;
}
