/* jws: compact JWS signing and verification, base64url, Ed25519 JWKs. Contracts: jws.h. */
#include "jws.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/sha.h>

#include "util.h"

#define ED25519_RAW_LEN 32

const char *jws_strerror(int status)
{
    switch (status) {
    case JWS_OK:
        return "ok";
    case JWS_ERR_FORMAT:
        return "not a compact JWS with JSON object header and claims";
    case JWS_ERR_ALG:
        return "signature algorithm unknown or not the key's";
    case JWS_ERR_SIGNATURE:
        return "signature does not verify";
    case JWS_ERR_INTERNAL:
        return "internal cryptographic failure";
    default:
        return "unknown jws error";
    }
}

/* ---- base64url ---------------------------------------------------------------------------- */

char *jws_b64url_encode(const void *data, size_t len)
{
    size_t cap = 4 * ((len + 2) / 3) + 1;
    char *out = xmalloc(cap);
    /* EVP_EncodeBlock takes an int length; everything encoded here is far below that. */
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    for (int i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
        else if (out[i] == '=') {
            out[i] = '\0';
            break;
        }
    }
    return out;
}

int jws_b64url_decode(const char *s, size_t len, unsigned char **out, size_t *out_len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t rem = len % 4;
    if (rem == 1 || len > (size_t)INT_MAX - 4) /* EVP_DecodeBlock takes an int */
        return -1;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || memchr(alphabet, s[i], sizeof(alphabet) - 1) == NULL)
            return -1;
    /* Translate to the standard alphabet with padding and let OpenSSL decode. */
    size_t pad = rem == 0 ? 0 : 4 - rem, std_len = len + pad;
    char *std = xmalloc(std_len + 1);
    for (size_t i = 0; i < len; i++)
        std[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    memset(std + len, '=', pad);
    std[std_len] = '\0';
    unsigned char *buf = xmalloc(std_len / 4 * 3 + 1);
    int n = EVP_DecodeBlock(buf, (const unsigned char *)std, (int)std_len);
    secure_zero(std, std_len);
    free(std);
    char *again = NULL;
    if (n < 0 || (size_t)n < pad)
        goto fail;
    n -= (int)pad; /* EVP_DecodeBlock counts padding as zero bytes */
    /* Canonical form only (the unused low bits of the last character are zero): the bytes must
     * encode back to exactly s. */
    again = jws_b64url_encode(buf, (size_t)n);
    if (strlen(again) != len || memcmp(again, s, len) != 0)
        goto fail;
    secure_zero(again, len);
    free(again);
    buf[n] = '\0';
    *out = buf;
    *out_len = (size_t)n;
    return 0;
fail:
    if (again != NULL) {
        secure_zero(again, strlen(again));
        free(again);
    }
    secure_zero(buf, std_len / 4 * 3 + 1);
    free(buf);
    return -1;
}

/* ---- signing ------------------------------------------------------------------------------ */

/* The one algorithm this module uses with key, or NULL for any other key type. */
static const char *alg_for_key(EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "ED25519"))
        return JWS_ALG_EDDSA;
    if (EVP_PKEY_is_a(key, "RSA"))
        return JWS_ALG_RS256;
    return NULL;
}

/* Signs in[0..len) with key under alg (already checked to fit the key). JWS_OK with *sig (heap)
 * and *sig_len, or JWS_ERR_INTERNAL. */
static int sign_bytes(EVP_PKEY *key, const char *alg, const char *in, size_t len,
                      unsigned char **sig, size_t *sig_len)
{
    /* Ed25519 hashes internally (PureEdDSA): no digest; RS256 is PKCS#1 v1.5 over SHA-256,
     * OpenSSL's default RSA padding. */
    const EVP_MD *md = strcmp(alg, JWS_ALG_RS256) == 0 ? EVP_sha256() : NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *buf = NULL;
    size_t n = 0;
    int rc = JWS_ERR_INTERNAL;
    if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &n, (const unsigned char *)in, len) != 1)
        goto out;
    buf = xmalloc(n);
    if (EVP_DigestSign(ctx, buf, &n, (const unsigned char *)in, len) != 1)
        goto out;
    *sig = buf;
    *sig_len = n;
    buf = NULL;
    rc = JWS_OK;
out:
    if (rc != JWS_OK)
        ERR_clear_error();
    free(buf);
    EVP_MD_CTX_free(ctx);
    return rc;
}

int jws_sign_compact(EVP_PKEY *key, const char *alg, const char *kid, const json_t *claims,
                     char **out)
{
    json_t *header = json_object();
    char *header_json = NULL, *claims_json = NULL, *h64 = NULL, *c64 = NULL, *s64 = NULL;
    char *input = NULL;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    int rc = JWS_ERR_ALG;
    *out = NULL;
    const char *key_alg = alg_for_key(key);
    if (alg == NULL || key_alg == NULL || strcmp(alg, key_alg) != 0)
        goto out;
    rc = JWS_ERR_INTERNAL;
    if (!json_is_object(claims))
        goto out;
    /* Insertion order is the serialisation order (jansson >= 2.8): alg, kid, typ. */
    json_object_set_new(header, "alg", json_string(alg));
    if (kid != NULL)
        json_object_set_new(header, "kid", json_string(kid));
    json_object_set_new(header, "typ", json_string("JWT"));
    header_json = json_dumps(header, JSON_COMPACT);
    claims_json = json_dumps(claims, JSON_COMPACT);
    if (header_json == NULL || claims_json == NULL)
        goto out;
    h64 = jws_b64url_encode(header_json, strlen(header_json));
    c64 = jws_b64url_encode(claims_json, strlen(claims_json));
    input = xasprintf("%s.%s", h64, c64);
    if ((rc = sign_bytes(key, alg, input, strlen(input), &sig, &sig_len)) != JWS_OK)
        goto out;
    s64 = jws_b64url_encode(sig, sig_len);
    *out = xasprintf("%s.%s", input, s64);
    rc = JWS_OK;
out:
    json_decref(header);
    free(header_json);
    free(claims_json);
    free(h64);
    free(c64);
    free(s64);
    free(input);
    free(sig);
    return rc;
}

/* ---- verification ------------------------------------------------------------------------- */

/* Decodes one base64url part holding a JSON object. NULL if it is anything else. */
static json_t *decode_json_part(const char *s, size_t len)
{
    unsigned char *raw = NULL;
    size_t raw_len = 0;
    if (jws_b64url_decode(s, len, &raw, &raw_len) != 0)
        return NULL;
    json_t *j = json_loadb((const char *)raw, raw_len, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

int jws_verify_compact(EVP_PKEY *key, const char *token, json_t **claims, json_t **header)
{
    json_t *hdr = NULL, *payload = NULL;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    EVP_MD_CTX *ctx = NULL;
    int rc = JWS_ERR_FORMAT;
    *claims = NULL;
    if (header != NULL)
        *header = NULL;

    size_t len = strnlen(token, JWS_MAX_TOKEN + 1);
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (len > JWS_MAX_TOKEN || dot2 == NULL ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        goto out;
    if ((hdr = decode_json_part(token, (size_t)(dot1 - token))) == NULL)
        goto out;
    if (jws_b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), &sig, &sig_len) != 0)
        goto out;

    rc = JWS_ERR_ALG;
    const char *key_alg = alg_for_key(key);
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    if (key_alg == NULL || alg == NULL || strcmp(alg, key_alg) != 0 ||
        json_object_get(hdr, "crit") != NULL)
        goto out;

    rc = JWS_ERR_INTERNAL;
    const EVP_MD *md = strcmp(alg, JWS_ALG_RS256) == 0 ? EVP_sha256() : NULL;
    if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) != 1)
        goto out;
    rc = JWS_ERR_SIGNATURE;
    if (EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)token, (size_t)(dot2 - token)) !=
        1)
        goto out;

    rc = JWS_ERR_FORMAT;
    if ((payload = decode_json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1))) == NULL)
        goto out;
    *claims = payload;
    payload = NULL;
    if (header != NULL) {
        *header = hdr;
        hdr = NULL;
    }
    rc = JWS_OK;
out:
    ERR_clear_error();
    EVP_MD_CTX_free(ctx);
    json_decref(hdr);
    json_decref(payload);
    free(sig);
    return rc;
}

/* ---- Ed25519 JWKs ------------------------------------------------------------------------- */

char *jws_ed25519_x(EVP_PKEY *key)
{
    unsigned char raw[ED25519_RAW_LEN];
    size_t n = sizeof(raw);
    if (!EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_get_raw_public_key(key, raw, &n) != 1 ||
        n != sizeof(raw)) {
        ERR_clear_error();
        return NULL;
    }
    return jws_b64url_encode(raw, n);
}

char *jws_ed25519_thumbprint(EVP_PKEY *key)
{
    char *x = jws_ed25519_x(key);
    if (x == NULL)
        return NULL;
    /* RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace. */
    char *canonical = xasprintf("{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"%s\"}", x);
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)canonical, strlen(canonical), digest);
    free(canonical);
    free(x);
    return jws_b64url_encode(digest, sizeof(digest));
}

EVP_PKEY *jws_ed25519_from_jwk(const json_t *jwk)
{
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    const json_t *xj = json_object_get(jwk, "x");
    unsigned char *raw = NULL;
    size_t raw_len = 0;
    EVP_PKEY *key = NULL;
    if (kty == NULL || crv == NULL || !json_is_string(xj) || strcmp(kty, "OKP") != 0 ||
        strcmp(crv, "Ed25519") != 0 ||
        jws_b64url_decode(json_string_value(xj), json_string_length(xj), &raw, &raw_len) != 0)
        goto out;
    if (raw_len == ED25519_RAW_LEN)
        key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, raw_len);
    if (key == NULL)
        ERR_clear_error();
out:
    free(raw);
    return key;
}
