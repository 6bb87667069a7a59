/* Unit tests for jws: what a verifier of authproxy's tokens relies on — base64url exactly as RFC
 * 4648/7515 define it, tokens byte-identical to an independent implementation's, signatures that
 * verify only under the right key and algorithm, and RFC 7638 key ids.
 *
 * Known answers come from the RFCs (RFC 4648 §10 base64 vectors, RFC 8037 appendix A Ed25519
 * key, thumbprint and JWS) and from Python's `cryptography` package (an independent Ed25519
 * implementation) for a token with authproxy's header; the script is quoted at KAT_TOKEN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "jws.h"
#include "util.h"

/* RFC 8037 A.1 / A.2: the example Ed25519 key (d private, x public). */
#define RFC8037_D "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
#define RFC8037_X "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
/* RFC 8037 A.3: its RFC 7638 thumbprint. */
#define RFC8037_THUMBPRINT "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
/* RFC 8037 A.4: {"alg":"EdDSA"} over "Example of Ed25519 signing". */
#define RFC8037_JWS                                                                                \
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-"        \
    "09PGcvMg"                                                                                     \
    "3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"

/* Produced by Python `cryptography` 48 with the RFC 8037 key:
 *   h = b'{"alg":"EdDSA","kid":"test-kid","typ":"JWT"}'
 *   c = b'{"sub":"langsmith-sandbox-callback","iat":1700000000,"aud":"https://a.example/cb"}'
 *   inp = b64u(h) + "." + b64u(c); token = inp + "." + b64u(key.sign(inp.encode()))
 * Ed25519 is deterministic, so any correct implementation produces exactly these bytes. */
#define KAT_TOKEN                                                                                  \
    "eyJhbGciOiJFZERTQSIsImtpZCI6InRlc3Qta2lkIiwidHlwIjoiSldUIn0."                                 \
    "eyJzdWIiOiJsYW5nc21pdGgtc2FuZGJve"                                                            \
    "C1jYWxsYmFjayIsImlhdCI6MTcwMDAwMDAwMCwiYXVkIjoiaHR0cHM6Ly9hLmV4YW1wbGUvY2IifQ."               \
    "LYblwjY8gMVyGYr"                                                                              \
    "Xs3VCrAhkgQ-AdJTKuqrjOCFL44HAzxGrezuuI13PMuiOW_oiN3gW29BhpFpwOyoujoRDAg"

static EVP_PKEY *rfc8037_key(void)
{
    unsigned char *d;
    size_t n;
    assert_int_equal(jws_b64url_decode(RFC8037_D, strlen(RFC8037_D), &d, &n), 0);
    assert_int_equal(n, 32);
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, d, n);
    assert_non_null(key);
    secure_zero(d, n);
    free(d);
    return key;
}

static void check_b64(const char *raw, size_t raw_len, const char *enc)
{
    char *e = jws_b64url_encode(raw, raw_len);
    assert_string_equal(e, enc);
    free(e);
    unsigned char *d;
    size_t n;
    assert_int_equal(jws_b64url_decode(enc, strlen(enc), &d, &n), 0);
    assert_int_equal(n, raw_len);
    assert_memory_equal(d, raw, raw_len);
    assert_int_equal(d[n], '\0');
    free(d);
}

static void test_b64url_vectors(void **state)
{
    (void)state;
    /* RFC 4648 §10, padding removed (RFC 7515 §2). */
    check_b64("", 0, "");
    check_b64("f", 1, "Zg");
    check_b64("fo", 2, "Zm8");
    check_b64("foo", 3, "Zm9v");
    check_b64("foob", 4, "Zm9vYg");
    check_b64("fooba", 5, "Zm9vYmE");
    check_b64("foobar", 6, "Zm9vYmFy");
    /* The URL-safe characters: standard base64 of fb ff bf is "+/+/". */
    check_b64("\xfb\xff\xbf", 3, "-_-_");
    check_b64("\x00\x00", 2, "AAA");
}

static void test_b64url_decode_is_strict(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Zg==",          /* padding */
        "Z",             /* impossible length */
        "Zh",            /* non-zero trailing bits: a second encoding of "f" */
        "Zm9=",  "+/+/", /* standard alphabet */
        "Zm 9v", "Zm9v\n", "Zm9v.",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        unsigned char *d = NULL;
        size_t n = 0;
        assert_int_equal(jws_b64url_decode(bad[i], strlen(bad[i]), &d, &n), -1);
        assert_null(d);
    }
}

static void test_thumbprint_rfc8037(void **state)
{
    (void)state;
    EVP_PKEY *key = rfc8037_key();
    char *x = jws_ed25519_x(key), *tp = jws_ed25519_thumbprint(key);
    assert_string_equal(x, RFC8037_X);
    assert_string_equal(tp, RFC8037_THUMBPRINT);
    free(x);
    free(tp);
    EVP_PKEY_free(key);
}

static void test_verify_rfc8037_vector(void **state)
{
    (void)state;
    EVP_PKEY *key = rfc8037_key();
    json_t *claims = (json_t *)1, *header = (json_t *)1;
    /* The RFC's payload is text, not a claims object: the signature verifies (so the answer is
     * about the payload), while a changed payload fails the signature. */
    assert_int_equal(jws_verify_compact(key, RFC8037_JWS, &claims, &header), JWS_ERR_FORMAT);
    assert_null(claims);
    assert_null(header);
    char *t = xstrdup(RFC8037_JWS);
    t[strlen("eyJhbGciOiJFZERTQSJ9.")] = 'S'; /* "RX" -> "SX": another payload */
    assert_int_equal(jws_verify_compact(key, t, &claims, NULL), JWS_ERR_SIGNATURE);
    free(t);
    EVP_PKEY_free(key);
}

static json_t *kat_claims(void)
{
    json_t *c = json_object();
    json_object_set_new(c, "sub", json_string("langsmith-sandbox-callback"));
    json_object_set_new(c, "iat", json_integer(1700000000));
    json_object_set_new(c, "aud", json_string("https://a.example/cb"));
    return c;
}

static void test_sign_matches_independent_implementation(void **state)
{
    (void)state;
    EVP_PKEY *key = rfc8037_key();
    json_t *c = kat_claims();
    char *tok;
    assert_int_equal(jws_sign_compact(key, JWS_ALG_EDDSA, "test-kid", c, &tok), JWS_OK);
    /* Header member order alg, kid, typ; compact JSON; '/' not escaped; the same signature. */
    assert_string_equal(tok, KAT_TOKEN);
    free(tok);
    json_decref(c);
    EVP_PKEY_free(key);
}

static void test_verify_with_public_jwk(void **state)
{
    (void)state;
    json_t *jwk = json_pack("{s:s, s:s, s:s}", "kty", "OKP", "crv", "Ed25519", "x", RFC8037_X);
    EVP_PKEY *pub = jws_ed25519_from_jwk(jwk);
    assert_non_null(pub);
    json_t *claims, *header;
    assert_int_equal(jws_verify_compact(pub, KAT_TOKEN, &claims, &header), JWS_OK);
    assert_string_equal(json_string_value(json_object_get(claims, "aud")), "https://a.example/cb");
    assert_int_equal(json_integer_value(json_object_get(claims, "iat")), 1700000000);
    assert_string_equal(json_string_value(json_object_get(header, "kid")), "test-kid");
    assert_string_equal(json_string_value(json_object_get(header, "typ")), "JWT");
    json_decref(claims);
    json_decref(header);
    EVP_PKEY_free(pub);

    /* Not Ed25519 JWKs. */
    json_t *bad[] = {
        json_pack("{s:s, s:s, s:s}", "kty", "EC", "crv", "Ed25519", "x", RFC8037_X),
        json_pack("{s:s, s:s, s:s}", "kty", "OKP", "crv", "X25519", "x", RFC8037_X),
        json_pack("{s:s, s:s, s:s}", "kty", "OKP", "crv", "Ed25519", "x", "Zm9v"),
        json_pack("{s:s, s:s}", "kty", "OKP", "crv", "Ed25519"),
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        assert_null(jws_ed25519_from_jwk(bad[i]));
        json_decref(bad[i]);
    }
    json_decref(jwk);
}

static void test_tampering_detected(void **state)
{
    (void)state;
    EVP_PKEY *key = rfc8037_key();
    json_t *claims = NULL;
    size_t dot1 = strchr(KAT_TOKEN, '.') - KAT_TOKEN;
    size_t dot2 = strrchr(KAT_TOKEN, '.') - KAT_TOKEN;
    /* One changed character in each part (keeping base64url canonical where it matters). */
    size_t at[] = {dot1 - 3, dot1 + 5, dot2 + 5};
    for (size_t i = 0; i < ARRAY_LEN(at); i++) {
        char *t = xstrdup(KAT_TOKEN);
        t[at[i]] = t[at[i]] == 'A' ? 'B' : 'A';
        int rc = jws_verify_compact(key, t, &claims, NULL);
        assert_true(rc == JWS_ERR_SIGNATURE || rc == JWS_ERR_FORMAT);
        assert_null(claims);
        free(t);
    }
    /* Another key's signature. */
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_int_equal(jws_verify_compact(other, KAT_TOKEN, &claims, NULL), JWS_ERR_SIGNATURE);
    EVP_PKEY_free(other);
    EVP_PKEY_free(key);
}

static void test_malformed_tokens(void **state)
{
    (void)state;
    EVP_PKEY *key = rfc8037_key();
    json_t *claims = NULL;
    char *no_sig = xstrndup(KAT_TOKEN, strrchr(KAT_TOKEN, '.') - KAT_TOKEN);
    char *extra = xasprintf("%s.AAAA", KAT_TOKEN);
    char *padded = xasprintf("%s=", KAT_TOKEN);
    const char *bad[] = {"", ".", "..", "a.b", no_sig, extra, padded,
                         /* header "[]" (not an object), claims {} */
                         "W10.e30.AAAA"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        assert_int_equal(jws_verify_compact(key, bad[i], &claims, NULL), JWS_ERR_FORMAT);
        assert_null(claims);
    }
    free(no_sig);
    free(extra);
    free(padded);
    EVP_PKEY_free(key);
}

/* Signs header.claims (given as JSON text) with key outside jws_sign_compact, so headers that
 * authproxy never writes can be tested. */
static char *raw_token(EVP_PKEY *key, const EVP_MD *md, const char *header, const char *claims)
{
    char *h = jws_b64url_encode(header, strlen(header));
    char *c = jws_b64url_encode(claims, strlen(claims));
    char *input = xasprintf("%s.%s", h, c);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char sig[512];
    size_t n = sizeof(sig);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, md, NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &n, (const unsigned char *)input, strlen(input)), 1);
    char *s = jws_b64url_encode(sig, n);
    char *tok = xasprintf("%s.%s", input, s);
    EVP_MD_CTX_free(ctx);
    free(h);
    free(c);
    free(input);
    free(s);
    return tok;
}

static void test_algorithm_is_the_keys(void **state)
{
    (void)state;
    EVP_PKEY *ed = rfc8037_key();
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    assert_non_null(rsa);
    json_t *c = kat_claims(), *claims = NULL;
    char *tok = NULL;

    /* Signing: the algorithm must fit the key. */
    assert_int_equal(jws_sign_compact(ed, JWS_ALG_RS256, NULL, c, &tok), JWS_ERR_ALG);
    assert_null(tok);
    assert_int_equal(jws_sign_compact(rsa, JWS_ALG_EDDSA, NULL, c, &tok), JWS_ERR_ALG);
    assert_int_equal(jws_sign_compact(ed, "none", NULL, c, &tok), JWS_ERR_ALG);
    assert_int_equal(jws_sign_compact(ed, "HS256", NULL, c, &tok), JWS_ERR_ALG);

    /* RS256 round trip, no kid: header {"alg":"RS256","typ":"JWT"}. */
    json_t *header = NULL;
    assert_int_equal(jws_sign_compact(rsa, JWS_ALG_RS256, NULL, c, &tok), JWS_OK);
    assert_int_equal(strncmp(tok, "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.", 37), 0);
    assert_int_equal(jws_verify_compact(rsa, tok, &claims, &header), JWS_OK);
    assert_true(json_equal(claims, c));
    assert_null(json_object_get(header, "kid"));
    json_decref(claims);
    json_decref(header);
    /* An RS256 token presented to an Ed25519 key, and the reverse. */
    assert_int_equal(jws_verify_compact(ed, tok, &claims, NULL), JWS_ERR_ALG);
    free(tok);
    assert_int_equal(jws_verify_compact(rsa, KAT_TOKEN, &claims, NULL), JWS_ERR_ALG);

    /* Validly signed, but a header naming another algorithm, none, or an extension. */
    static const char *const headers[] = {
        "{\"alg\":\"none\"}",  "{\"alg\":\"HS256\"}",
        "{\"typ\":\"JWT\"}",   "{\"alg\":\"EdDSA\",\"crit\":[\"b64\"],\"b64\":false}",
        "{\"alg\":\"RS256\"}",
    };
    for (size_t i = 0; i < ARRAY_LEN(headers); i++) {
        char *t = raw_token(ed, NULL, headers[i], "{}");
        assert_int_equal(jws_verify_compact(ed, t, &claims, NULL), JWS_ERR_ALG);
        assert_null(claims);
        free(t);
    }
    /* Duplicate members are refused rather than resolved one way or the other. */
    char *t = raw_token(ed, NULL, "{\"alg\":\"EdDSA\",\"alg\":\"EdDSA\"}", "{}");
    assert_int_equal(jws_verify_compact(ed, t, &claims, NULL), JWS_ERR_FORMAT);
    free(t);
    /* The control: the same construction with a plain header verifies. */
    t = raw_token(ed, NULL, "{\"alg\":\"EdDSA\"}", "{\"a\":1}");
    assert_int_equal(jws_verify_compact(ed, t, &claims, NULL), JWS_OK);
    assert_int_equal(json_integer_value(json_object_get(claims, "a")), 1);
    json_decref(claims);
    free(t);

    /* Claims must be an object. */
    json_t *arr = json_array();
    assert_int_equal(jws_sign_compact(ed, JWS_ALG_EDDSA, NULL, arr, &tok), JWS_ERR_INTERNAL);
    json_decref(arr);

    json_decref(c);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_decode_is_strict),
        cmocka_unit_test(test_thumbprint_rfc8037),
        cmocka_unit_test(test_verify_rfc8037_vector),
        cmocka_unit_test(test_sign_matches_independent_implementation),
        cmocka_unit_test(test_verify_with_public_jwk),
        cmocka_unit_test(test_tampering_detected),
        cmocka_unit_test(test_malformed_tokens),
        cmocka_unit_test(test_algorithm_is_the_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
