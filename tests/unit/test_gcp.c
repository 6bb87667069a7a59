/* Unit tests for gcp: what a `type: "gcp"` rule relies on — a Google key file read correctly or
 * refused with a message naming the field (and never the key), an assertion Google accepts
 * (RS256 over exactly the claims of its server-to-server flow), and a token response accepted
 * only when it is what it must be.
 *
 * Known answer: KAT_ASSERTION was produced by Python's `cryptography` 48 (an independent RSA
 * implementation; RSASSA-PKCS1-v1_5 is deterministic) from KAT_PEM:
 *   h = {"alg":"RS256","kid":"4f1d2e3c5b6a79880123456789abcdef01234567","typ":"JWT"}
 *   c = {"iss":"authproxy-test@example-project.iam.gserviceaccount.com","scope":"https://www.
 *        googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/devstorage.read_only",
 *        "aud":"https://oauth2.googleapis.com/token","iat":1700000000,"exp":1700003600}
 *   both json.dumps(separators=(',', ':')); inp = b64u(h) + "." + b64u(c);
 *   token = inp + "." + b64u(key.sign(inp, PKCS1v15(), SHA256()))
 * KAT_PEM is a throwaway test key generated for this file; it protects nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "gcp.h"
#include "jws.h"
#include "util.h"

#define KAT_PEM                                                                                    \
    "-----BEGIN PRIVATE KEY-----\n"                                                                \
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDVN7mD7/8S7EEu\n"                           \
    "JO+3CgeCXqMlSB4SzkD3gVnpI+LgrY9KoeQFKy85v5AiZQfN72ppahA1X4HEvMM9\n"                           \
    "ohzOCFRPSb7E59p6SwQWmHgR7jrp5Bss5fJd890aCdh04iiI6dTI3CE6TpnWtO9Y\n"                           \
    "aFX6h4ouCTnEOh+R5S/aASt3p1Am9J6Bv3Orok5hfIOejwMNeoOQP4nRbbxkMRmJ\n"                           \
    "0jNGi5a2E352V/ZLm55BSgfwZHHFgwvWlETUsas3wQmscvBFPWpLr9XRBO116y0K\n"                           \
    "GDSgT3Xaws3GcNP/6ZDvx29p4yv4HaWr3IBHH9gmCvKSrUnoSzGl179j3zeltMhL\n"                           \
    "Rs1+ej6jAgMBAAECggEAAPlpMMdTTQgDsPOBvFf1DGMImLqDpueWFX1b9f7HSIPl\n"                           \
    "tYANrIlphNnF5KaAIbBYJsCjfylWVtdq2LqChmzN/5PzOgZtROGBT2rNIsXCPa0o\n"                           \
    "ImRdtjTe6rTXkg+3NfsGlk1pcBjJpdj4AQJaKMhchu/Dp7++j8j2K4N22tem2s60\n"                           \
    "rtnwYkWJDhF80NwGx6flhy39J3Mgh4tcWntDlAeQbf+Zxp6g2UpqeOc6Yn7+iuVV\n"                           \
    "C4v+p6EuisrxwYhGtiXYwbq5RKdNj3RELHxsQsu5oidhJwEZ2kO6wATHVEG5Qfh2\n"                           \
    "hpd+hwbKQ9h+Sty3nLHXQwnrYxleELbkH/4syr1EoQKBgQDyoQUL0TZ49RpmcA+4\n"                           \
    "B0pml07bGcKlUFeeokxnlqY/j1FwP2tAdFhaeBW13XZ3rFc6bJXal7z114YTzwZU\n"                           \
    "6ZBGFqAiuBqbnxwVDOTxCOa79z2fCW7p2z2JMsXwZ96UezFYVmj9QB8Wm+V8SMS5\n"                           \
    "QQP0cQ2MMZeY8ZtSCawNbJHQIQKBgQDg98YWW5NxXbHEdPzs87nHSIOoTp7iHfIE\n"                           \
    "TCkPMX4OMcKKBFAKC++avokIFvuE8B/q2xfwp4tTr46PNvhgCyp+9r2iSvvzzjzI\n"                           \
    "u1xgn79Z2nKTRJzsNREQR7Fe7+I7DAuPMpbr2eKI82HrlLxWwFUBZlHqGybOYv4F\n"                           \
    "ZIR8O3AGQwKBgB42oOs8zTy4wOXatIplFgW6d85e4dc2LwMJENyhbOhjT2/b5d4r\n"                           \
    "3si9RW7VOihi5KXY2bxTwusWQJL857vxLc8ciCpqpJ2WbafNaED/q8PiYOEKCq7C\n"                           \
    "Z2JLWUy7koMI6Dco44AN2RE2rpgQc7bh+r0YyugXUNpx07aej7dIOswhAoGAHixd\n"                           \
    "XyZNMklUzHq8abOO2VG6htp0qPNHQJhOcYE73P+Djith6NcM/f5MNs+OUJg8T62v\n"                           \
    "GlH+d+z1+/NtgMQ+oOTLLndML7kbofivPS5v5cdM0r/DJFNBxKM5APi/qRfGfSBV\n"                           \
    "6bBBmAi8u3IpiKEnRZbJqdKWc9wHIgYHVvpJ3i0CgYEAr6NKaL+T91HAM3AWQneb\n"                           \
    "ZXssmMMBwNC3F4hQgb9jKgiHN8uqblZDvCodGXyS9yynxCzs1keIUORc7j/aFkNa\n"                           \
    "bWqq1fYDVl1MAXH2J+0fQSzPVlvn/8RpvW9mczq1fGP3cXALVRXEdN1oFhiVCv6g\n"                           \
    "XzqwVTtUIRLeHfgVbaJKFJs=\n"                                                                   \
    "-----END PRIVATE KEY-----\n"
#define KAT_ASSERTION                                                                              \
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjRmMWQyZTNjNWI2YTc5ODgwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1NjciLCJ0eX"   \
    "AiOiJKV1QifQ.eyJpc3MiOiJhdXRocHJveHktdGVzdEBleGFtcGxlLXByb2plY3QuaWFtLmdzZXJ2aWNlYWNjb3Vud"   \
    "C5jb20iLCJzY29wZSI6Imh0dHBzOi8vd3d3Lmdvb2dsZWFwaXMuY29tL2F1dGgvY2xvdWQtcGxhdGZvcm0gaHR0cHM"   \
    "6Ly93d3cuZ29vZ2xlYXBpcy5jb20vYXV0aC9kZXZzdG9yYWdlLnJlYWRfb25seSIsImF1ZCI6Imh0dHBzOi8vb2F1d"   \
    "GgyLmdvb2dsZWFwaXMuY29tL3Rva2VuIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9.NOwIpSxcdD"   \
    "-O8XEFTSQz1ptWKwE-KnULCCeMfXUqI-wZDjb6bgL3jH7YDa1D5K7lDvjtR5nFrwam-QD48cyXXrH2I5B9YO2EJFq0"   \
    "webk0R_UG7UZCGBZy0VhBkOVtjmjn9SR9umluIeLBJ_QAI7W0CHq3KGd-2_zJISkVrLZ6KszqBqT-UqjIqKpLTOqQq"   \
    "hn7VzQmG8gSVac3PN7Oy_4KGhP-6Ho7ecpk-dVnKbdaCOKGyDSh6qJKS5KcoVcaQElV54eqwYov3P2gpSFAOEgA8D-"   \
    "CYD-nk_rwnCbcwY29SNRVM0L-z4UGKtDW_g969emOGkV6w-OHgh63eFhtmTgYQ"
#define KAT_EMAIL "authproxy-test@example-project.iam.gserviceaccount.com"
#define KAT_KID   "4f1d2e3c5b6a79880123456789abcdef01234567"

static const char *const KAT_SCOPES[] = {
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_only",
};

/* PEM text of key: PKCS#8 (as Google issues), or the traditional PKCS#1 form. Heap. */
static char *pem_of(EVP_PKEY *key, bool pkcs8)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_non_null(b);
    if (pkcs8)
        assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    else
        assert_int_equal(PEM_write_bio_PrivateKey_traditional(b, key, NULL, NULL, 0, NULL, NULL),
                         1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *pem = xstrndup(data, (size_t)n);
    BIO_free(b);
    return pem;
}

/* A service-account JSON document like the ones Google hands out. Heap. */
static char *sa_json(const char *pem, const char *kid, const char *token_uri)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "service_account", "project_id",
                          "example-project", "private_key", pem, "client_email", KAT_EMAIL,
                          "client_id", "123456789012345678901");
    if (kid != NULL)
        json_object_set_new(j, "private_key_id", json_string(kid));
    if (token_uri != NULL)
        json_object_set_new(j, "token_uri", json_string(token_uri));
    char *s = json_dumps(j, 0);
    json_decref(j);
    return s;
}

static struct gcp_sa *parse_ok(const char *json)
{
    struct gcp_sa *sa = NULL;
    char *err = NULL;
    if (gcp_sa_parse(json, &sa, &err) != 0)
        fail_msg("gcp_sa_parse: %s", err);
    return sa;
}

static void test_assertion_matches_independent_implementation(void **state)
{
    (void)state;
    char *json = sa_json(KAT_PEM, KAT_KID, "https://oauth2.googleapis.com/token");
    struct gcp_sa *sa = parse_ok(json);
    assert_string_equal(gcp_sa_client_email(sa), KAT_EMAIL);
    assert_string_equal(gcp_sa_token_uri(sa), "https://oauth2.googleapis.com/token");
    assert_string_equal(gcp_sa_private_key_id(sa), KAT_KID);
    char *jwt = NULL, *err = NULL;
    assert_int_equal(gcp_build_assertion(sa, KAT_SCOPES, 2, 1700000000, &jwt, &err), 0);
    assert_string_equal(jwt, KAT_ASSERTION);
    secret_free(jwt);
    gcp_sa_free(sa);
    free(json);
}

static void test_assertion_verifies_with_the_public_key(void **state)
{
    (void)state;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    assert_non_null(key);
    char *pem = pem_of(key, true);
    /* No token_uri, no private_key_id: the default endpoint, no kid. */
    char *json = sa_json(pem, NULL, NULL);
    struct gcp_sa *sa = parse_ok(json);
    assert_string_equal(gcp_sa_token_uri(sa), GCP_DEFAULT_TOKEN_URI);
    assert_null(gcp_sa_private_key_id(sa));
    const char *scopes[] = {"https://www.googleapis.com/auth/cloud-platform"};
    char *jwt = NULL, *err = NULL;
    assert_int_equal(gcp_build_assertion(sa, scopes, 1, 1234567890, &jwt, &err), 0);

    /* Only the public half: what Google holds. */
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, key), 1);
    EVP_PKEY *pub = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(pub);
    json_t *claims = NULL, *header = NULL;
    assert_int_equal(jws_verify_compact(pub, jwt, &claims, &header), JWS_OK);
    json_t *want = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", KAT_EMAIL, "scope", scopes[0],
                             "aud", GCP_DEFAULT_TOKEN_URI, "iat", (json_int_t)1234567890, "exp",
                             (json_int_t)1234567890 + 3600);
    assert_true(json_equal(claims, want));
    assert_int_equal(json_object_size(header), 2); /* alg and typ */
    assert_string_equal(json_string_value(json_object_get(header, "alg")), "RS256");
    json_decref(want);
    json_decref(claims);
    json_decref(header);

    /* Another key's public half does not verify it. */
    EVP_PKEY *other = EVP_RSA_gen(2048);
    assert_int_equal(jws_verify_compact(other, jwt, &claims, NULL), JWS_ERR_SIGNATURE);
    EVP_PKEY_free(other);

    /* The traditional PKCS#1 PEM form is read too. */
    char *pem1 = pem_of(key, false);
    assert_non_null(strstr(pem1, "BEGIN RSA PRIVATE KEY"));
    char *json1 = sa_json(pem1, "k", NULL);
    gcp_sa_free(parse_ok(json1));
    free(json1);
    secret_free(pem1);

    secret_free(jwt);
    EVP_PKEY_free(pub);
    gcp_sa_free(sa);
    free(json);
    secret_free(pem);
    EVP_PKEY_free(key);
}

/* gcp_sa_parse must fail with an error containing field (and not leak) and set nothing. */
static void parse_fails(const char *json, const char *field, const char *leak)
{
    struct gcp_sa *sa = (struct gcp_sa *)1;
    char *err = NULL;
    assert_int_equal(gcp_sa_parse(json, &sa, &err), -1);
    assert_null(sa);
    assert_non_null(err);
    if (strstr(err, field) == NULL)
        fail_msg("error \"%s\" does not name \"%s\"", err, field);
    assert_null(strstr(err, "BEGIN"));
    if (leak != NULL)
        assert_null(strstr(err, leak));
    free(err);
}

static void test_malformed_service_accounts(void **state)
{
    (void)state;
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *small = EVP_RSA_gen(1024);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    char *pem = pem_of(rsa, true), *small_pem = pem_of(small, true), *ed_pem = pem_of(ed, true);

    /* Encrypted PEM: refused (and never a passphrase prompt). */
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PKCS8PrivateKey(b, rsa, EVP_aes_256_cbc(), NULL, 0, NULL,
                                                   (void *)"passphrase"),
                     1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *enc_pem = xstrndup(data, (size_t)n);
    BIO_free(b);

    /* Syntax: the message gives a position, never the text around it (it may be key). */
    parse_fails("{\"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIEsecretsecret", "valid JSON",
                "MIIEsecret");
    parse_fails("[]", "object", NULL);
    parse_fails("{\"client_email\": \"a@b\", \"client_email\": \"c@d\"}", "valid JSON", NULL);

    struct {
        const char *type, *email, *key, *uri, *kid;
        const char *field;
    } cases[] = {
        {"authorized_user", KAT_EMAIL, pem, NULL, NULL, "authorized_user"},
        {NULL, NULL, pem, NULL, NULL, "client_email"},
        {NULL, "", pem, NULL, NULL, "client_email"},
        {NULL, "a b@example.com", pem, NULL, NULL, "client_email"},
        {NULL, KAT_EMAIL, NULL, NULL, NULL, "private_key"},
        {NULL, KAT_EMAIL, "not a key at all MIIEsecret", NULL, NULL, "private_key"},
        {NULL, KAT_EMAIL, ed_pem, NULL, NULL, "not an RSA key"},
        {NULL, KAT_EMAIL, small_pem, NULL, NULL, "1024-bit"},
        {NULL, KAT_EMAIL, enc_pem, NULL, NULL, "private_key"},
        {NULL, KAT_EMAIL, pem, "http://oauth2.googleapis.com/token", NULL, "token_uri"},
        {NULL, KAT_EMAIL, pem, "https://", NULL, "token_uri"},
        {NULL, KAT_EMAIL, pem, "", NULL, "token_uri"},
        {NULL, KAT_EMAIL, pem, NULL, "", "private_key_id"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        json_t *j = json_object();
        if (cases[i].type)
            json_object_set_new(j, "type", json_string(cases[i].type));
        if (cases[i].email)
            json_object_set_new(j, "client_email", json_string(cases[i].email));
        if (cases[i].key)
            json_object_set_new(j, "private_key", json_string(cases[i].key));
        if (cases[i].uri)
            json_object_set_new(j, "token_uri", json_string(cases[i].uri));
        if (cases[i].kid)
            json_object_set_new(j, "private_key_id", json_string(cases[i].kid));
        char *s = json_dumps(j, 0);
        parse_fails(s, cases[i].field, "MIIE");
        free(s);
        json_decref(j);
    }
    /* Wrong member types. */
    parse_fails("{\"client_email\": 7}", "client_email", NULL);
    char *s = xasprintf("{\"client_email\": \"a@b\", \"private_key\": [\"x\"]}");
    parse_fails(s, "private_key", NULL);
    free(s);

    secret_free(pem);
    secret_free(small_pem);
    secret_free(ed_pem);
    secret_free(enc_pem);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(small);
    EVP_PKEY_free(ed);
}

static void test_scopes(void **state)
{
    (void)state;
    struct gcp_sa *sa;
    char *json = sa_json(KAT_PEM, NULL, NULL);
    sa = parse_ok(json);
    free(json);
    const char *bad_sets[][2] = {
        {"https://www.googleapis.com/auth/cloud-platform", "two words"},
        {"", NULL},
        {"quo\"te", NULL},
        {"back\\slash", NULL},
        {"tab\there", NULL},
        {"caf\xc3\xa9", NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad_sets); i++) {
        size_t n = bad_sets[i][1] ? 2 : 1;
        char *jwt = (char *)1, *err = NULL;
        assert_int_equal(gcp_build_assertion(sa, bad_sets[i], n, 1700000000, &jwt, &err), -1);
        assert_null(jwt);
        assert_non_null(strstr(err, "scope"));
        free(err);
    }
    char *jwt = NULL, *err = NULL;
    assert_int_equal(gcp_build_assertion(sa, KAT_SCOPES, 0, 1700000000, &jwt, &err), -1);
    free(err);
    assert_true(gcp_scope_valid("https://www.googleapis.com/auth/cloud-platform"));
    assert_false(gcp_scope_valid(NULL));
    gcp_sa_free(sa);
}

static void test_token_request_body(void **state)
{
    (void)state;
    char *body = gcp_token_request_body("aGVh.Y2xh-_.c2ln");
    assert_string_equal(body, "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
                              "&assertion=aGVh.Y2xh-_.c2ln");
    secret_free(body);
    /* Anything that would need form encoding is not an assertion. */
    assert_null(gcp_token_request_body("a.b.c&scope=x"));
    assert_null(gcp_token_request_body("a.b.c=="));
    assert_null(gcp_token_request_body("a+b.c.d"));
}

#define TOKEN "ya29.a0AfB_byC-x~y+z/w=="

static void token_fails(const char *body, const char *what)
{
    char *tok = (char *)1, *err = NULL;
    unsigned exp = 7;
    assert_int_equal(gcp_parse_token_response(body, strlen(body), &tok, &exp, &err), -1);
    assert_ptr_equal(tok, (char *)1);
    assert_int_equal(exp, 7);
    if (strstr(err, what) == NULL)
        fail_msg("error \"%s\" for %s does not say \"%s\"", err, body, what);
    assert_null(strstr(err, "ya29"));
    free(err);
}

static void test_token_response(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{\"access_token\": \"" TOKEN "\", \"expires_in\": 3599, \"token_type\": \"Bearer\"}",
        "{\"access_token\": \"" TOKEN "\", \"expires_in\": 3599, \"token_type\": \"bearer\"}",
        "{\"access_token\": \"" TOKEN "\", \"expires_in\": 3599}",
        "{\"token_type\": \"BEARER\", \"expires_in\": 3599, \"access_token\": \"" TOKEN
        "\", \"scope\": \"x\"}",
    };
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        char *tok = NULL, *err = NULL;
        unsigned exp = 0;
        assert_int_equal(gcp_parse_token_response(good[i], strlen(good[i]), &tok, &exp, &err), 0);
        assert_string_equal(tok, TOKEN);
        assert_int_equal(exp, 3599);
        secret_free(tok);
    }
    /* Only len bytes count. */
    char *tok = NULL, *err = NULL;
    unsigned exp = 0;
    const char *trailing = "{\"access_token\": \"t\", \"expires_in\": 1}garbage";
    assert_int_equal(gcp_parse_token_response(trailing, strlen(trailing) - 7, &tok, &exp, &err), 0);
    assert_string_equal(tok, "t");
    secret_free(tok);

    token_fails("", "not a JSON object");
    token_fails("{\"access_token\": \"" TOKEN "\"", "not a JSON object");
    token_fails("[\"" TOKEN "\"]", "not a JSON object");
    token_fails("{\"access_token\": \"" TOKEN "\", \"access_token\": \"" TOKEN
                "\", \"expires_in\": 1}",
                "not a JSON object");
    token_fails("{\"expires_in\": 3599}", "access_token");
    token_fails("{\"access_token\": \"\", \"expires_in\": 3599}", "access_token");
    token_fails("{\"access_token\": 5, \"expires_in\": 3599}", "access_token");
    token_fails("{\"access_token\": \"ya29 x\", \"expires_in\": 3599}", "access_token");
    token_fails("{\"access_token\": \"ya29=x\", \"expires_in\": 3599}", "access_token");
    token_fails("{\"access_token\": \"ya29\\r\\nX-Injected: 1\", \"expires_in\": 3599}",
                "access_token");
    /* (jansson refuses the NUL itself, without JSON_ALLOW_NUL) */
    token_fails("{\"access_token\": \"ya29\\u0000x\", \"expires_in\": 3599}", "gcp token response");
    token_fails("{\"access_token\": \"" TOKEN "\"}", "expires_in");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": 0}", "expires_in");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": -5}", "expires_in");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": \"3599\"}", "expires_in");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": 3599.5}", "expires_in");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": 8589934592}", "expires_in");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": 3599, \"token_type\": \"MAC\"}",
                "MAC");
    token_fails("{\"access_token\": \"" TOKEN "\", \"expires_in\": 3599, \"token_type\": null}",
                "token_type");
    token_fails("{\"error\": \"invalid_grant\", \"error_description\": \"Invalid JWT Signature.\"}",
                "invalid_grant: Invalid JWT Signature.");
    token_fails("{\"error\": \"invalid_scope\\n\"}", "invalid_scope?");

    /* An over-long token. */
    char *big = xmalloc(GCP_MAX_TOKEN_LEN + 64);
    int o = snprintf(big, 64, "{\"access_token\": \"ya29");
    memset(big + o, 'a', GCP_MAX_TOKEN_LEN);
    snprintf(big + o + GCP_MAX_TOKEN_LEN, 40, "\", \"expires_in\": 1}");
    token_fails(big, "access_token");
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_assertion_matches_independent_implementation),
        cmocka_unit_test(test_assertion_verifies_with_the_public_key),
        cmocka_unit_test(test_malformed_service_accounts),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_token_request_body),
        cmocka_unit_test(test_token_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
