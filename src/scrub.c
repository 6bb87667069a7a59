#include "scrub.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util.h"

/* A handful of values per request: a flat array, longest first (so a whole value is redacted
 * before a shorter part of it is looked for). */
#define SCRUB_MAX_VALUES 32

struct scrub {
    char *values[SCRUB_MAX_VALUES]; /* secret material: zeroed on free */
    size_t lens[SCRUB_MAX_VALUES];
    size_t n;
};

struct scrub *scrub_new(void)
{
    return xcalloc(1, sizeof(struct scrub));
}

void scrub_free(struct scrub *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        secret_free(s->values[i]);
    free(s);
}

bool scrub_empty(const struct scrub *s)
{
    return s == NULL || s->n == 0;
}

/* Adds v[0..len) unless it is too short, already present, or the set is full (then the values
 * already held, the whole header values first, still protect). Keeps the array longest first. */
static void add_value(struct scrub *s, const char *v, size_t len)
{
    if (len < SCRUB_MIN_LEN || s->n == SCRUB_MAX_VALUES)
        return;
    for (size_t i = 0; i < s->n; i++)
        if (s->lens[i] == len && memcmp(s->values[i], v, len) == 0)
            return;
    size_t at = s->n;
    while (at > 0 && s->lens[at - 1] < len)
        at--;
    memmove(&s->values[at + 1], &s->values[at], (s->n - at) * sizeof(s->values[0]));
    memmove(&s->lens[at + 1], &s->lens[at], (s->n - at) * sizeof(s->lens[0]));
    s->values[at] = xstrndup(v, len);
    s->lens[at] = len;
    s->n++;
}

/* "Basic <base64>": the decoded "user:password" and the password. */
static void add_basic(struct scrub *s, const char *b64, size_t len)
{
    if (len == 0 || len % 4 != 0 || len > 4096)
        return;
    unsigned char *dec = xmalloc(len / 4 * 3 + 1);
    int n = EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)len);
    if (n > 0) {
        while (n > 0 && len > 0 && b64[len - 1] == '=') { /* padding decodes as zeros */
            n--;
            len--;
        }
        add_value(s, (const char *)dec, (size_t)n);
        const unsigned char *colon = memchr(dec, ':', (size_t)n);
        if (colon != NULL)
            add_value(s, (const char *)colon + 1, (size_t)n - (size_t)(colon + 1 - dec));
    }
    secure_zero(dec, len / 4 * 3 + 1);
    free(dec);
}

void scrub_add_credential(struct scrub *s, const char *value)
{
    size_t len = strlen(value);
    add_value(s, value, len);
    const char *sp = memchr(value, ' ', len);
    if (sp == NULL)
        return;
    const char *token = sp + 1;
    while (*token == ' ')
        token++;
    size_t tlen = len - (size_t)(token - value);
    add_value(s, token, tlen);
    if ((size_t)(sp - value) == 5 && ascii_case_eq(value, 5, "Basic", 5))
        add_basic(s, token, tlen);
}

size_t scrub_apply(const struct scrub *s, char *buf, size_t len, bool final, size_t *redacted)
{
    size_t count = 0, hold = 0;
    if (s == NULL)
        goto out;
    for (size_t i = 0; i < s->n; i++) {
        const char *v = s->values[i];
        size_t vlen = s->lens[i];
        char *p = buf;
        size_t left = len;
        char *hit;
        while (left >= vlen && (hit = memmem(p, left, v, vlen)) != NULL) {
            memset(hit, '*', vlen);
            count++;
            left -= (size_t)(hit + vlen - p);
            p = hit + vlen;
        }
    }
    if (final)
        goto out;
    /* The longest tail that is a proper prefix of a value may still become one. */
    for (size_t i = 0; i < s->n; i++) {
        size_t k = s->lens[i] - 1 < len ? s->lens[i] - 1 : len;
        for (; k > hold; k--)
            if (memcmp(buf + len - k, s->values[i], k) == 0) {
                hold = k;
                break;
            }
    }
out:
    if (redacted)
        *redacted = count;
    return hold;
}
